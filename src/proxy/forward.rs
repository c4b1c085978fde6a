//! TCP byte forwarding between a client and its backend. Both directions run
//! concurrently in one task on socket readiness (tokio `AsyncFd` guards, so a
//! short read clears readiness instead of paying a read that returns EAGAIN);
//! bytes go through splice(2) pipes on Linux (`super::splice`) or a per-worker
//! user-space buffer, either taken only while data flows, so an idle
//! connection holds neither. Half-close is explicit: EOF on one side becomes
//! `shutdown(Write)` on the other while the reverse goes on. A reset on one
//! side is passed on once whatever that side had sent is delivered.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::Counter;
use socket2::SockRef;
use tokio::io::Ready;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::time::{Instant, sleep_until};

use super::Activity;
use crate::metrics::ListenerMetrics;

/// Bytes moved per read.
const CHUNK: usize = 64 * 1024;

/// A TCP socket driven through tokio's readiness guards, which let the
/// forwarding loops skip reads that would only return EAGAIN.
pub type Sock = AsyncFd<StdTcpStream>;

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their write side.
    Closed,
    /// Nothing moved either way for `idle_timeout`.
    Idle,
    /// Its backend or listener was removed and `drain_timeout` ran out.
    Drained,
    /// A read or write failed (a reset, say); both sides were reset.
    Error(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
            End::Drained => f.write_str("drained"),
            End::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What [`forward`] did.
#[derive(Debug)]
pub struct Transfer {
    /// Client → backend bytes.
    pub up: u64,
    /// Backend → client bytes.
    pub down: u64,
    pub end: End,
}

/// Forwards between `client` and `backend` until both directions have ended,
/// one fails, nothing moves for `idle`, or `drain_over` resolves.
pub async fn forward(
    client: &Sock,
    backend: &Sock,
    idle: Duration,
    zero_copy: bool,
    metrics: &ListenerMetrics,
    drain_over: impl Future<Output = ()>,
) -> Transfer {
    let meter = Activity::new();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        let up = Tally {
            meter: &meter,
            bytes: &up,
            total: &metrics.bytes_up,
        };
        let down = Tally {
            meter: &meter,
            bytes: &down,
            total: &metrics.bytes_down,
        };
        both_ways(
            direction(client, backend, up, zero_copy),
            direction(backend, client, down, zero_copy),
        )
        .await
    };
    let idle_watch = async {
        loop {
            let deadline = meter.deadline(idle);
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        result = both => match result {
            Ok(()) => End::Closed,
            Err(e) => {
                // Pass the abort on: a reset, not a clean FIN, on both sides.
                for stream in [client, backend] {
                    let _ = SockRef::from(stream.get_ref()).set_linger(Some(Duration::ZERO));
                }
                End::Error(e)
            }
        },
        _ = idle_watch => End::Idle,
        _ = drain_over => End::Drained,
    };
    Transfer {
        up: up.load(Relaxed),
        down: down.load(Relaxed),
        end,
    }
}

/// A direction that failed: reading from its source, or writing to its
/// destination (then the destination's socket is the broken one).
#[derive(Debug)]
pub(super) enum Failure {
    Read(io::Error),
    Write(io::Error),
}

impl Failure {
    fn into_error(self) -> io::Error {
        match self {
            Failure::Read(e) | Failure::Write(e) => e,
        }
    }
}

/// Runs both directions of a connection to their end. When one fails, the
/// socket it failed on is broken; whatever that socket had already received
/// is still delivered (a backend that answers and then resets must have its
/// answer reach the client, as it would directly): the direction reading from
/// the broken socket goes on until that socket is exhausted, the other is
/// abandoned. The result is the first failure, if any.
async fn both_ways(
    up: impl Future<Output = Result<(), Failure>>,
    down: impl Future<Output = Result<(), Failure>>,
) -> io::Result<()> {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut first: Option<io::Error> = None;
    while !(up_done && down_done) {
        let ended = tokio::select! {
            result = &mut up, if !up_done => {
                up_done = true;
                result
            }
            result = &mut down, if !down_done => {
                down_done = true;
                result
            }
        };
        if let Err(failure) = ended {
            // A failed write broke the destination, which the other direction
            // reads from: let it deliver what that socket still holds. A
            // failed read broke the source, which the other direction writes
            // to: nothing more can be delivered.
            let other_reads_broken = matches!(failure, Failure::Write(_));
            first.get_or_insert(failure.into_error());
            if !other_reads_broken {
                break;
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Where one direction counts what it moves.
pub(super) struct Tally<'a> {
    meter: &'a Activity,
    bytes: &'a AtomicU64,
    total: &'a Counter,
}

impl Tally<'_> {
    pub(super) fn moved(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Relaxed);
        self.total.increment(n as u64);
        self.meter.touch();
    }
}

/// EOF from one side: pass it on as a FIN, keeping the other direction open.
pub(super) fn half_close(to: &Sock) -> Result<(), Failure> {
    match SockRef::from(to.get_ref()).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(Failure::Write(e)),
        _ => Ok(()),
    }
}

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

pub(super) type ReadGuard<'a> = AsyncFdReadyGuard<'a, StdTcpStream>;

/// One direction, zero-copy where the platform and the listener allow.
async fn direction(from: &Sock, to: &Sock, tally: Tally<'_>, zero_copy: bool) -> Result<(), Failure> {
    #[cfg(target_os = "linux")]
    if zero_copy {
        return super::splice::forward(from, to, &tally).await;
    }
    let _ = zero_copy;
    // Boxed: the splice path is the default, so its future sets the size.
    Box::pin(copy(from, to, &tally)).await
}

thread_local! {
    /// Each worker's copy buffer, used without an await in between, so no
    /// connection ever holds one.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// What one read-and-write burst left to do.
enum Burst {
    More,
    Eof,
    /// The destination is full: these bytes wait for it.
    Backlog(Vec<u8>),
}

/// Copies `from` → `to` through user space until EOF, then half-closes `to`.
pub(super) async fn copy(from: &Sock, to: &Sock, tally: &Tally<'_>) -> Result<(), Failure> {
    loop {
        let mut ready = from.readable().await.map_err(Failure::Read)?;
        let burst = SCRATCH.with_borrow_mut(|buf| relay(&mut ready, to, buf, tally))?;
        drop(ready);
        match burst {
            Burst::More => {}
            Burst::Eof => return half_close(to),
            Burst::Backlog(rest) => write_all(to, &rest, tally).await?,
        }
    }
}

/// Reads once into `buf` and writes it on at once, as far as `to` takes it.
fn relay(ready: &mut ReadGuard<'_>, to: &Sock, buf: &mut [u8], tally: &Tally<'_>) -> Result<Burst, Failure> {
    let n = match ready.try_io(|fd| fd.get_ref().read(buf)) {
        Ok(result) => result.map_err(Failure::Read)?,
        Err(_would_block) => return Ok(Burst::More),
    };
    if n == 0 {
        return Ok(Burst::Eof);
    }
    forget_readiness_if_emptied(ready, n, buf.len());
    let mut sent = 0;
    while sent < n {
        match to.get_ref().write(&buf[sent..n]) {
            Ok(k) => {
                sent += k;
                tally.moved(k);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Burst::Backlog(buf[sent..n].to_vec()));
            }
            Err(e) => return Err(Failure::Write(e)),
        }
    }
    Ok(Burst::More)
}

async fn write_all(to: &Sock, mut data: &[u8], tally: &Tally<'_>) -> Result<(), Failure> {
    while !data.is_empty() {
        let mut ready = to.writable().await.map_err(Failure::Write)?;
        if let Ok(written) = ready.try_io(|fd| fd.get_ref().write(data)) {
            let n = written.map_err(Failure::Write)?;
            data = &data[n..];
            tally.moved(n);
        }
    }
    Ok(())
}
