//! TCP byte forwarding between a client and its backend: one state machine
//! ([`Relay`]) for both directions, polled on socket readiness (tokio
//! `AsyncFd`, each socket registered once). An idle connection holds its
//! two sockets and this small state: no buffer, no pipe, no per-direction
//! future (timers and drain are the connection task's, `super::tcp`).
//!
//! Each direction copies through a per-worker buffer, or splices through a
//! pipe taken from a pool only while data flows (`super::splice`); with
//! `data_path = "auto"` a direction copies until one read fills the buffer,
//! then splices: a request and its answer take one read and one write each,
//! bulk transfers never enter user space. Half-close is explicit: EOF on one
//! side becomes `shutdown(Write)` on the other while the reverse goes on
//! (the last EOF is passed on by closing). A reset on one side is passed on
//! once whatever that side had sent is delivered.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream as StdTcpStream};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Ready;
use tokio::io::unix::AsyncFdReadyGuard;
use tokio::time::Instant;

use super::sock::Sock;
use super::splice::Pipe;
use crate::config::DataPath;
use crate::metrics::ListenerMetrics;

/// Bytes moved per read or splice.
const CHUNK: usize = 64 * 1024;
/// Bursts one direction may make in one poll before letting other tasks run.
const BURSTS_PER_POLL: usize = 16;

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their write side.
    Closed,
    /// Nothing moved either way for `idle_timeout`.
    Idle,
    /// Its backend or listener was removed and `drain_timeout` ran out.
    Drained,
    /// The shutdown grace ran out.
    Stopped,
    /// A read or write failed (a reset, say); both sides were reset.
    Error(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
            End::Drained => f.write_str("drained"),
            End::Stopped => f.write_str("shutdown grace over"),
            End::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What a relay did.
#[derive(Debug)]
pub struct Transfer {
    /// Client → backend bytes.
    pub up: u64,
    /// Backend → client bytes.
    pub down: u64,
    pub end: End,
}

/// A direction that failed: reading from its source, or writing to its
/// destination (then the destination's socket is the broken one).
#[derive(Debug)]
enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// Where one direction is. Small (16 bytes), as every idle connection
/// holds two.
enum Flow {
    /// Waiting for the source.
    Open,
    /// The destination was full: these bytes wait for it.
    Backlog(Box<Backlog>),
    /// The destination was full with this many bytes in the pipe.
    Piped(Pipe, u32),
    /// Its EOF was passed on, or it failed.
    Done,
}

/// Bytes read that the destination has not taken yet.
struct Backlog {
    bytes: Box<[u8]>,
    sent: usize,
}

/// One direction: how it moves bytes, where it is, what it moved.
struct Direction {
    flow: Flow,
    /// Moves bytes with splice(2) rather than through user space.
    splicing: bool,
    /// `auto`: may still switch to splicing.
    may_splice: bool,
    /// Bytes moved.
    bytes: u64,
}

impl Direction {
    fn new(path: DataPath) -> Direction {
        Direction {
            flow: Flow::Open,
            splicing: path == DataPath::Splice,
            may_splice: path == DataPath::Auto,
            bytes: 0,
        }
    }
}

/// Both directions of one connection.
pub struct Relay {
    client: Sock,
    backend: Sock,
    up: Direction,
    down: Direction,
    /// The first failure; the relay ends on it once nothing more can be
    /// delivered.
    failure: Option<io::Error>,
    /// When a byte last moved either way.
    pub last_moved: Instant,
}

impl Relay {
    pub fn new(client: Sock, backend: Sock, path: DataPath) -> Relay {
        Relay {
            client,
            backend,
            up: Direction::new(path),
            down: Direction::new(path),
            failure: None,
            last_moved: Instant::now(),
        }
    }

    /// The client's address, read back from its socket.
    pub fn client_peer(&self) -> Option<SocketAddr> {
        self.client.get_ref().peer_addr().ok()
    }

    /// The transfer's totals, once it ended with `end`.
    pub fn finish(&self, end: End) -> Transfer {
        if matches!(end, End::Error(_)) {
            // Pass the abort on: a reset, not a clean FIN, on both sides.
            for sock in [&self.client, &self.backend] {
                let _ = SockRef::from(sock.get_ref()).set_linger(Some(Duration::ZERO));
            }
        }
        Transfer {
            up: self.up.bytes,
            down: self.down.bytes,
            end,
        }
    }

    /// Polls both directions; `Some` once the connection is over. When one
    /// fails, the socket it failed on is broken, and whatever that socket
    /// had already received is still delivered (a backend that answers and
    /// then resets must have its answer reach the client, as it would
    /// directly): the direction reading from the broken socket goes on
    /// until that socket is exhausted; a failed read ends everything.
    pub fn poll_directions(&mut self, cx: &mut TaskContext<'_>, metrics: &ListenerMetrics) -> Option<End> {
        let down_done = matches!(self.down.flow, Flow::Done);
        if let Err(e) = self.step(Side::Up, down_done, cx, metrics) {
            return Some(End::Error(e));
        }
        let up_done = matches!(self.up.flow, Flow::Done);
        if let Err(e) = self.step(Side::Down, up_done, cx, metrics) {
            return Some(End::Error(e));
        }
        let all_done = matches!(self.up.flow, Flow::Done) && matches!(self.down.flow, Flow::Done);
        all_done.then(|| self.failure.take().map_or(End::Closed, End::Error))
    }

    /// Polls one direction and counts what it moved; `Err` when the
    /// connection must end now.
    fn step(
        &mut self,
        side: Side,
        other_done: bool,
        cx: &mut TaskContext<'_>,
        metrics: &ListenerMetrics,
    ) -> Result<(), io::Error> {
        let (dir, from, to, total) = match side {
            Side::Up => (&mut self.up, &self.client, &self.backend, &metrics.bytes_up),
            Side::Down => (&mut self.down, &self.backend, &self.client, &metrics.bytes_down),
        };
        if matches!(dir.flow, Flow::Done) {
            return Ok(());
        }
        let before = dir.bytes;
        let polled = poll_direction(dir, from, to, other_done, cx);
        if dir.bytes != before {
            total.increment(dir.bytes - before);
            self.last_moved = Instant::now();
        }
        match polled {
            Poll::Pending | Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(Failure::Read(e))) => return Err(self.failure.take().unwrap_or(e)),
            Poll::Ready(Err(Failure::Write(e))) => {
                dir.flow = Flow::Done;
                self.failure.get_or_insert(e);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Side {
    /// Client → backend.
    Up,
    /// Backend → client.
    Down,
}

/// Moves `from` → `to` as far as both sockets allow now; `Ready(Ok)` once
/// EOF has been passed on.
fn poll_direction(
    dir: &mut Direction,
    from: &Sock,
    to: &Sock,
    other_done: bool,
    cx: &mut TaskContext<'_>,
) -> Poll<Result<(), Failure>> {
    for _ in 0..BURSTS_PER_POLL {
        match &mut dir.flow {
            Flow::Done => return Poll::Ready(Ok(())),
            Flow::Backlog(backlog) => {
                let mut ready = ready!(to.poll_write_ready(cx)).map_err(Failure::Write)?;
                let rest = &backlog.bytes[backlog.sent..];
                if let Ok(written) = ready.try_io(|sock| sock.get_ref().write(rest)) {
                    let n = written.map_err(Failure::Write)?;
                    backlog.sent += n;
                    dir.bytes += n as u64;
                    if backlog.sent == backlog.bytes.len() {
                        dir.flow = Flow::Open;
                    }
                }
            }
            Flow::Piped(pipe, in_pipe) => {
                let mut ready = ready!(to.poll_write_ready(cx)).map_err(Failure::Write)?;
                // The pipe holds data here, so EAGAIN means the socket is full.
                if let Ok(moved) = ready.try_io(|sock| pipe.drain_into(sock.get_ref(), *in_pipe as usize)) {
                    let n = moved.map_err(Failure::Write)?;
                    *in_pipe -= n as u32;
                    dir.bytes += n as u64;
                    if *in_pipe == 0
                        && let Flow::Piped(pipe, _) = std::mem::replace(&mut dir.flow, Flow::Open)
                    {
                        pipe.give_back();
                    }
                }
            }
            Flow::Open => {
                let mut ready = ready!(from.poll_read_ready(cx)).map_err(Failure::Read)?;
                let burst = if dir.splicing {
                    splice_burst(&mut ready, to, dir)?
                } else {
                    copy_burst(&mut ready, to, dir)?
                };
                if let Some(flow) = burst {
                    if matches!(flow, Flow::Done) && !other_done {
                        half_close(to)?;
                    }
                    dir.flow = flow;
                }
            }
        }
    }
    // A busy direction yields, so that other connections get their turn.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// EOF from one side: pass it on as a FIN, keeping the other direction open.
fn half_close(to: &Sock) -> Result<(), Failure> {
    match SockRef::from(to.get_ref()).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(Failure::Write(e)),
        _ => Ok(()),
    }
}

type ReadGuard<'a> = AsyncFdReadyGuard<'a, StdTcpStream>;

/// After a read that did not fill `buf`, the socket is very likely empty:
/// forget its readiness now instead of paying a read that returns EAGAIN.
/// Safe against lost wake-ups: data that arrives later is a new epoll edge,
/// and tokio only clears readiness it has not seen change since the guard.
/// A peer's FIN already seen must stay visible, so then nothing is cleared.
fn forget_readiness_if_emptied(ready: &mut ReadGuard<'_>, read: usize, wanted: usize) {
    if read < wanted && !ready.ready().is_read_closed() {
        ready.clear_ready_matching(Ready::READABLE);
    }
}

thread_local! {
    /// Each worker's copy buffer, used without an await in between, so no
    /// connection ever holds one.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// Reads once and writes it on at once, as far as `to` takes it; the new
/// flow, if it changed (`Done` at EOF, `Backlog` when `to` is full).
fn copy_burst(ready: &mut ReadGuard<'_>, to: &Sock, dir: &mut Direction) -> Result<Option<Flow>, Failure> {
    SCRATCH.with_borrow_mut(|buf| {
        let n = match ready.try_io(|sock| sock.get_ref().read(buf)) {
            Ok(read) => read.map_err(Failure::Read)?,
            Err(_would_block) => return Ok(None),
        };
        if n == 0 {
            return Ok(Some(Flow::Done));
        }
        forget_readiness_if_emptied(ready, n, buf.len());
        // A full buffer is a bulk transfer: splice from now on.
        if n == buf.len() && dir.may_splice {
            dir.splicing = true;
        }
        let mut sent = 0;
        while sent < n {
            match to.get_ref().write(&buf[sent..n]) {
                Ok(k) => {
                    sent += k;
                    dir.bytes += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let bytes = buf[sent..n].into();
                    return Ok(Some(Flow::Backlog(Box::new(Backlog { bytes, sent: 0 }))));
                }
                Err(e) => return Err(Failure::Write(e)),
            }
        }
        Ok(None)
    })
}

/// Fills a pipe from the source once and drains it into `to` as far as `to`
/// takes it now; the new flow, if it changed (`Piped` when `to` is full).
/// Without a pipe to be had, or on a socket that cannot be spliced, the
/// direction copies instead.
fn splice_burst(ready: &mut ReadGuard<'_>, to: &Sock, dir: &mut Direction) -> Result<Option<Flow>, Failure> {
    let Some(pipe) = Pipe::take() else {
        return copy_burst(ready, to, dir);
    };
    // The pipe is empty, so EAGAIN can only mean the socket is drained.
    let filled = match ready.try_io(|sock| pipe.fill_from(sock.get_ref(), CHUNK)) {
        Ok(filled) => filled,
        Err(_would_block) => {
            pipe.give_back();
            return Ok(None);
        }
    };
    let mut in_pipe = match filled {
        Ok(0) => {
            pipe.give_back();
            return Ok(Some(Flow::Done));
        }
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // This socket cannot be spliced; nothing was lost.
            pipe.give_back();
            dir.splicing = false;
            dir.may_splice = false;
            return Ok(None);
        }
        Err(e) => return Err(Failure::Read(e)),
    };
    // No "emptied" shortcut here: a non-blocking splice makes one pass and
    // stops when the pipe's slots are full, so a short splice does not mean
    // the socket is empty. The next splice's EAGAIN clears readiness.
    while in_pipe > 0 {
        match pipe.drain_into(to.get_ref(), in_pipe) {
            Ok(n) => {
                in_pipe -= n;
                dir.bytes += n as u64;
            }
            // At most CHUNK bytes are in the pipe.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Some(Flow::Piped(pipe, in_pipe as u32)));
            }
            // The pipe may still hold bytes: dropped, not reused.
            Err(e) => return Err(Failure::Write(e)),
        }
    }
    pipe.give_back();
    Ok(None)
}
