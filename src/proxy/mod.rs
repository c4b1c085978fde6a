//! Proxying: per-protocol accept loops (`tcp`) and the byte forwarding they
//! share. Forwarding works on `&TcpStream` readiness (`readable` + `try_read`)
//! so both directions run concurrently in one task, a buffer is allocated
//! only once data flows, and half-close is explicit: EOF on one side becomes
//! `shutdown(Write)` on the other while the reverse direction keeps going.

pub mod tcp;
pub mod udp;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use metrics::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

use tokio_util::sync::CancellationToken;

use crate::balancer::{Member, Upstream};
use crate::config::Listener;
use crate::metrics::ListenerMetrics;

/// What a listener's tasks share.
pub struct Context {
    pub config: Listener,
    /// The address really bound (`config.bind` may ask for port 0).
    pub local_addr: SocketAddr,
    pub upstream: Upstream,
    pub metrics: ListenerMetrics,
    /// Client connections (TCP) or flows (UDP) open now, across reloads.
    pub active: Arc<AtomicUsize>,
    /// Cancelled when a reload removes the listener: its connections drain.
    pub removed: CancellationToken,
    /// Connections found no backend lately (so that is logged once).
    pub failing: AtomicBool,
    /// Cancelled when the shutdown grace is over: open connections close.
    pub hard_stop: CancellationToken,
}

impl Context {
    /// Resolves once the connection to `lease`'s backend must end: the
    /// backend or this listener was removed and `drain_timeout` has passed.
    pub async fn drained(&self, lease: &Lease) {
        tokio::select! {
            _ = lease.0.stats.removed.cancelled() => {}
            _ = self.removed.cancelled() => {}
        }
        match self.config.drain_timeout {
            Some(grace) => tokio::time::sleep(grace).await,
            // Unlimited: the connection ends by itself or by idle timeout.
            None => std::future::pending().await,
        }
    }
}

/// A backend in use by one connection or flow: counted in its `total` once
/// and in its `active` for as long as the lease lives.
#[derive(Debug)]
pub struct Lease(Member);

impl Lease {
    pub fn new(member: &Member) -> Lease {
        member.stats.total.fetch_add(1, Relaxed);
        member.stats.active.fetch_add(1, Relaxed);
        Lease(member.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}

/// Bytes moved per read; the same as HAProxy's default buffer.
const CHUNK: usize = 16 * 1024;

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

/// What [`forward`] did.
#[derive(Debug)]
pub struct Transfer {
    /// Client → backend bytes.
    pub up: u64,
    /// Backend → client bytes.
    pub down: u64,
    pub end: End,
}

/// Shared by both directions: byte counts and the time of the last activity.
struct Meter {
    start: Instant,
    last_activity_ms: AtomicU64,
}

impl Meter {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Relaxed)) + idle
    }
}

/// Forwards between `client` and `backend` until both directions have ended,
/// one fails, nothing moves for `idle`, or `drained` resolves.
pub async fn forward(
    client: &TcpStream,
    backend: &TcpStream,
    idle: Duration,
    metrics: &ListenerMetrics,
    drained: impl Future<Output = ()>,
) -> Transfer {
    let meter = Meter {
        start: Instant::now(),
        last_activity_ms: AtomicU64::new(0),
    };
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        tokio::try_join!(
            pipe(client, backend, &meter, &up, &metrics.bytes_up),
            pipe(backend, client, &meter, &down, &metrics.bytes_down)
        )
    };
    let idle_watch = async {
        loop {
            let deadline = meter.idle_deadline(idle);
            if Instant::now() >= deadline {
                return;
            }
            sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        result = both => match result {
            Ok(_) => End::Closed,
            Err(e) => {
                // Pass the abort on: a reset, not a clean FIN, on both sides.
                for stream in [client, backend] {
                    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
                }
                End::Error(e)
            }
        },
        _ = idle_watch => End::Idle,
        _ = drained => End::Drained,
    };
    Transfer {
        up: up.load(Relaxed),
        down: down.load(Relaxed),
        end,
    }
}

/// Copies `from` → `to` until EOF, then half-closes `to`.
async fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    meter: &Meter,
    bytes: &AtomicU64,
    total: &Counter,
) -> io::Result<()> {
    // Allocated on first data: an idle connection holds no buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.is_empty() {
            buf = vec![0; CHUNK];
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => match SockRef::from(to).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => return Err(e),
                _ => return Ok(()),
            },
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(k) => {
                    written += k;
                    meter.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.fetch_add(n as u64, Relaxed);
        total.increment(n as u64);
    }
}
