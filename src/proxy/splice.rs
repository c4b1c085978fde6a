//! Linux zero-copy forwarding: splice(2) from the source socket into a pipe
//! and from the pipe into the destination socket, so the bytes never enter
//! user space. Driven by tokio readiness guards like the copy path, with the
//! same half-close and byte counting.
//!
//! A pipe is taken from a bounded pool only once data is ready, and given
//! back (empty) as soon as the source has nothing more to read, so an idle
//! connection holds no pipe. When no pipe can be had, or the socket cannot
//! be spliced, the direction falls back to copying.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use super::forward::{Failure, ReadGuard, Sock, Tally, copy, half_close};

/// Empty pipes kept for reuse.
const POOL_MAX: usize = 256;
/// Bytes moved per splice: the default pipe capacity.
const SPLICE_CHUNK: usize = 64 * 1024;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static PIPES_OPEN: AtomicUsize = AtomicUsize::new(0);
/// Pipes open at once, from the descriptor limit raised at start.
static PIPES_MAX: std::sync::LazyLock<usize> = std::sync::LazyLock::new(crate::limits::max_pipes);

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one while under [`PIPES_MAX`].
    fn take() -> Option<Pipe> {
        if let Some(pipe) = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(pipe);
        }
        // Beyond the budget's share of pipes, copy instead.
        if PIPES_OPEN.fetch_add(1, Relaxed) >= *PIPES_MAX {
            PIPES_OPEN.fetch_sub(1, Relaxed);
            return None;
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            PIPES_OPEN.fetch_sub(1, Relaxed);
            return None;
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Some(Pipe { read, write })
    }

    /// Returns an empty pipe to the pool (or closes it when the pool is full).
    fn give_back(self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES_OPEN.fetch_sub(1, Relaxed);
    }
}

/// One splice(2) call, non-blocking, moving at most `len` bytes.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are open for the duration of the call; null
    // offsets are required for sockets and pipes.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Forwards `from` → `to` through pipes until EOF, then half-closes `to`.
pub(super) async fn forward(from: &Sock, to: &Sock, tally: &Tally<'_>) -> Result<(), Failure> {
    loop {
        let mut ready = from.readable().await.map_err(Failure::Read)?;
        // The copy fallbacks are rare: boxed, they stay out of every connection's future.
        let Some(pipe) = Pipe::take() else {
            drop(ready);
            return Box::pin(copy(from, to, tally)).await;
        };
        let pumped = pump(&mut ready, to, &pipe, tally);
        drop(ready);
        match pumped? {
            Pumped::Again => pipe.give_back(),
            Pumped::Stuck(in_pipe) => {
                let flushed = flush_pipe(to, &pipe, in_pipe, tally).await;
                // On error the pipe may still hold data: closed, not reused.
                flushed?;
                pipe.give_back();
            }
            Pumped::Eof => {
                pipe.give_back();
                return half_close(to);
            }
            Pumped::Unsupported => {
                pipe.give_back();
                return Box::pin(copy(from, to, tally)).await;
            }
        }
    }
}

/// How one fill-and-drain burst ended.
enum Pumped {
    /// The pipe is empty; wait for the source again.
    Again,
    /// The destination is full with this many bytes still in the pipe.
    Stuck(usize),
    /// The source closed its write side; the pipe is empty.
    Eof,
    /// This socket cannot be spliced; nothing was lost, copy instead.
    Unsupported,
}

/// Fills the empty pipe from the source once and drains it into `to` as far
/// as `to` takes it now, without waiting.
fn pump(ready: &mut ReadGuard<'_>, to: &Sock, pipe: &Pipe, tally: &Tally<'_>) -> Result<Pumped, Failure> {
    // The pipe is empty here, so EAGAIN can only mean the socket is drained.
    let source = ready.get_ref().as_raw_fd();
    let filled = match ready.try_io(|_| splice(source, pipe.write.as_raw_fd(), SPLICE_CHUNK)) {
        Ok(result) => result,
        Err(_would_block) => return Ok(Pumped::Again),
    };
    let mut in_pipe = match filled {
        Ok(0) => return Ok(Pumped::Eof),
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Pumped::Unsupported),
        Err(e) => return Err(Failure::Read(e)),
    };
    // No `drained` shortcut here: a non-blocking splice makes one pass and
    // stops when the pipe's slots are full, so a short splice does not mean
    // the socket is empty. The next splice's EAGAIN clears readiness.
    while in_pipe > 0 {
        match splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe) {
            Ok(n) => {
                in_pipe -= n;
                tally.moved(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pumped::Stuck(in_pipe)),
            Err(e) => return Err(Failure::Write(e)),
        }
    }
    Ok(Pumped::Again)
}

/// Empties the pipe into `to`, waiting for room as needed.
async fn flush_pipe(to: &Sock, pipe: &Pipe, mut in_pipe: usize, tally: &Tally<'_>) -> Result<(), Failure> {
    while in_pipe > 0 {
        let mut ready = to.writable().await.map_err(Failure::Write)?;
        // The pipe holds data here, so EAGAIN means the socket is full.
        if let Ok(moved) = ready.try_io(|fd| splice(pipe.read.as_raw_fd(), fd.as_raw_fd(), in_pipe)) {
            let n = moved.map_err(Failure::Write)?;
            in_pipe -= n;
            tally.moved(n);
        }
    }
    Ok(())
}
