//! Linux zero-copy forwarding's pipes: splice(2) from the source socket into
//! a pipe and from the pipe into the destination socket, so the bytes never
//! enter user space (`super::forward` drives it).
//!
//! A pipe is taken from a bounded pool only once data is ready, and given
//! back (empty) as soon as the source has nothing more to read, so an idle
//! connection holds no pipe. When no pipe can be had, the direction copies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

/// Empty pipes kept for reuse.
const POOL_MAX: usize = 256;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static PIPES_OPEN: AtomicUsize = AtomicUsize::new(0);
/// Pipes open at once, from the descriptor limit raised at start.
static PIPES_MAX: std::sync::LazyLock<usize> = std::sync::LazyLock::new(crate::limits::max_pipes);

pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A pipe from the pool, or a new one while under [`PIPES_MAX`].
    pub(super) fn take() -> Option<Pipe> {
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
    pub(super) fn give_back(self) {
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

impl Pipe {
    /// Moves up to `len` bytes from `source` into the pipe.
    pub(super) fn fill_from(&self, source: &impl AsRawFd, len: usize) -> io::Result<usize> {
        splice(source.as_raw_fd(), self.write.as_raw_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe into `destination`.
    pub(super) fn drain_into(&self, destination: &impl AsRawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), destination.as_raw_fd(), len)
    }
}
