//! Backend health, two ways, both deciding whether the balancer may choose a backend:
//!
//! - active checks: one task per (backend, check) however many listeners
//!   share it, every `interval` (jittered so checks spread out): for TCP a
//!   connect, optionally sending `send` and expecting `expect` in the reply;
//!   for UDP a datagram `send` and a reply (containing `expect`, if set);
//!   `fall` failures in a row take a backend down, `rise` passes bring it back;
//! - passive ejection ([`Ejection`]): consecutive connect failures of real
//!   traffic eject a backend for a backoff that doubles while it keeps failing.
//!
//! State changes are logged once, when they happen, not per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::alarm::Alarm;
use crate::config::{HealthCheck, Protocol};

/// First ejection period; it doubles with each further failure.
const EJECT_BASE: Duration = Duration::from_secs(1);
/// Ejection never lasts longer than this.
const EJECT_MAX: Duration = Duration::from_secs(60);
/// Reply bytes read at most when looking for `expect`.
const EXPECT_WINDOW: usize = 4096;

/// The verdict of one backend's active check, shared by the listeners using it.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }
}

/// Running checks, keyed by backend and check, kept while any pool holds them.
pub struct Checks {
    running: Mutex<HashMap<(SocketAddr, HealthCheck), Weak<Health>>>,
    shutdown: CancellationToken,
    /// Where the check tasks run.
    tracker: TaskTracker,
}

impl Checks {
    pub fn new(shutdown: CancellationToken, tracker: TaskTracker) -> Checks {
        Checks {
            running: Mutex::default(),
            shutdown,
            tracker,
        }
    }

    /// The health of `addr` under `check`, starting its task if none runs.
    pub fn health(&self, addr: SocketAddr, check: &HealthCheck) -> Arc<Health> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr, check.clone());
        if let Some(health) = running.get(&key).and_then(Weak::upgrade) {
            return health;
        }
        running.retain(|_, weak| weak.strong_count() > 0);
        // Up until proven down, as HAProxy starts its servers.
        let health = Arc::new(Health {
            up: AtomicBool::new(true),
        });
        running.insert(key, Arc::downgrade(&health));
        self.tracker.spawn(check_loop(
            addr,
            check.clone(),
            Arc::downgrade(&health),
            self.shutdown.clone(),
        ));
        health
    }
}

/// Checks `addr` until no pool holds its health any more, or shutdown.
async fn check_loop(addr: SocketAddr, check: HealthCheck, health: Weak<Health>, shutdown: CancellationToken) {
    let jitter = |d: Duration| d.mul_f64(fastrand::f64());
    let mut streak: u32 = 0; // passes while down, failures while up
    tokio::select! {
        _ = sleep(jitter(check.interval)) => {}
        _ = shutdown.cancelled() => return,
    }
    loop {
        let result = probe(addr, &check).await;
        let Some(health) = health.upgrade() else { return };
        let up = health.is_up();
        match (&result, up) {
            (Ok(()), true) | (Err(_), false) => streak = 0,
            (Ok(()), false) => {
                streak += 1;
                if streak >= check.rise {
                    health.up.store(true, Relaxed);
                    info!(backend = %addr, passes = streak, "health check: backend is up again");
                    streak = 0;
                }
            }
            (Err(reason), true) => {
                streak += 1;
                if streak >= check.fall {
                    health.up.store(false, Relaxed);
                    warn!(backend = %addr, failures = streak, reason = %reason, "health check: backend is down");
                    streak = 0;
                }
            }
        }
        drop(health);
        // 0.75 to 1.25 intervals, so checks of many backends do not bunch up.
        let pause = check.interval.mul_f64(0.75) + jitter(check.interval / 2);
        tokio::select! {
            _ = sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One check within `timeout`. TCP: connect, then send and expect if
/// configured. UDP: send a datagram, and expect a reply (containing
/// `expect`, if configured); ICMP port unreachable fails it.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    // A sidecar's health port instead of the service's, if configured.
    let addr = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
    let attempt = async {
        match check.protocol {
            Protocol::Tcp => probe_tcp(addr, check).await,
            Protocol::Udp => probe_udp(addr, check).await,
        }
    };
    timeout(check.timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
}

async fn probe_tcp(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if let Some(version) = check.proxy_protocol {
        // An address-less header: the check is sluice's own connection.
        stream
            .write_all(&crate::proxy_protocol::header(version, None))
            .await
            .map_err(|e| format!("send PROXY header: {e}"))?;
    }
    if let Some(send) = &check.send {
        stream
            .write_all(send.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let Some(expect) = &check.expect else {
        return Ok(());
    };
    let mut reply = Vec::new();
    let mut chunk = [0u8; 512];
    while reply.len() < EXPECT_WINDOW {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        if contains(&reply, expect) {
            return Ok(());
        }
    }
    Err(unexpected(expect, &reply))
}

async fn probe_udp(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let socket = UdpSocket::bind(crate::net::any_addr_like(addr))
        .await
        .map_err(|e| format!("socket: {e}"))?;
    socket.connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let send = check.send.as_deref().unwrap_or_default();
    socket
        .send(send.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = vec![0; EXPECT_WINDOW];
    let n = socket.recv(&mut reply).await.map_err(|e| format!("read: {e}"))?;
    match &check.expect {
        Some(expect) if !contains(&reply[..n], expect) => Err(unexpected(expect, &reply[..n])),
        _ => Ok(()),
    }
}

fn contains(reply: &[u8], expect: &str) -> bool {
    reply.windows(expect.len()).any(|w| w == expect.as_bytes())
}

fn unexpected(expect: &str, reply: &[u8]) -> String {
    let got = String::from_utf8_lossy(&reply[..reply.len().min(64)]).into_owned();
    format!("expected {expect:?}, got {got:?}")
}

/// Passive ejection state of one backend for one listener.
#[derive(Debug)]
pub struct Ejection {
    born: Instant,
    consecutive_failures: AtomicU32,
    /// Ms since `born` until which the backend is skipped; 0: not ejected.
    until_ms: AtomicU64,
    /// Times it was ejected (not counting extensions while ejected).
    ejections: AtomicU64,
    /// Logs ejections once, not once per refused client.
    alarm: Alarm,
}

/// A failed connect that ejected its backend, and deserves a log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Ejected {
    pub period: Duration,
    /// Ejections since the last line that were not logged.
    pub repeated: u64,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            born: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            alarm: Alarm::new(),
        }
    }
}

impl Ejection {
    /// Times the backend was ejected.
    pub fn count(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.until_ms.load(Relaxed);
        until != 0 && (self.born.elapsed().as_millis() as u64) < until
    }

    /// Records a failed connect (`eject_after` 0 never ejects). A failure
    /// that ejects the backend, or ejects it again once its period is over,
    /// returns the new period when a line is due (see [`Alarm`]); one while
    /// it is ejected (every backend was down, so it was tried anyway) only
    /// extends the ejection.
    pub fn failed(&self, eject_after: u32) -> Option<Ejected> {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1);
        if eject_after == 0 || failures < eject_after {
            return None;
        }
        let already = self.is_ejected();
        let doublings = (failures - eject_after).min(6);
        let period = (EJECT_BASE * 2u32.pow(doublings)).min(EJECT_MAX);
        let until = self.born.elapsed() + period;
        self.until_ms.store(until.as_millis() as u64, Relaxed);
        if already {
            return None;
        }
        self.ejections.fetch_add(1, Relaxed);
        let repeated = self.alarm.raise()?;
        Some(Ejected { period, repeated })
    }

    /// Records a successful connect; true when it ends an ejection that was
    /// logged, so that its end is logged once too.
    pub fn succeeded(&self) -> bool {
        if self.consecutive_failures.load(Relaxed) == 0 {
            return false; // the common case: no write to a shared line
        }
        self.until_ms.store(0, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        self.alarm.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejection_backs_off_and_success_restores() {
        let e = Ejection::default();
        let ejected = |period, repeated| {
            Some(Ejected {
                period: Duration::from_secs(period),
                repeated,
            })
        };
        assert_eq!(e.failed(3), None);
        assert_eq!(e.failed(3), None);
        assert_eq!(e.failed(3), ejected(1, 0));
        assert!(e.is_ejected());
        assert_eq!(e.failed(3), None, "a failure while ejected only extends it");
        sleep(Duration::from_millis(2100)).await;
        assert!(!e.is_ejected(), "ejection ends after its period");
        assert_eq!(e.failed(3), None, "ejected again, but the line is not due yet");
        assert!(e.is_ejected());
        sleep(Duration::from_secs(60)).await;
        assert_eq!(
            e.failed(3),
            ejected(8, 1),
            "a minute on: one line, counting the ejection not logged"
        );
        assert!(e.succeeded());
        assert!(!e.succeeded(), "nothing to restore twice");
        assert!(!e.is_ejected());
        assert_eq!(e.failed(3), None, "a success starts the count over");
        assert_eq!(
            Ejection::default().failed(0),
            None,
            "eject_after = 0 never ejects"
        );
    }
}
