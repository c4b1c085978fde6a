//! Proxying: what a listener's connections or flows share ([`Context`]), the
//! accept loop and connection life of each protocol (`tcp`, `udp`), and TCP
//! byte forwarding (`forward`, with the zero-copy `splice` path).

mod forward;
mod sock;
mod splice;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Span;

pub use forward::{End, Transfer};
pub use sock::{Listening, register_listener};

use crate::alarm::Alarm;
use crate::balancer::{Lease, Upstream};
use crate::config::Listener;
use crate::metrics::ListenerMetrics;

/// One generation of a listener's settings, as its connections or flows see
/// them. A reload that changes the listener gives new connections a new one;
/// connections keep the one they started with.
pub struct Context {
    pub config: Listener,
    /// The address really bound (`config.bind` may ask for port 0).
    pub local_addr: SocketAddr,
    pub upstream: Upstream,
    pub metrics: ListenerMetrics,
    /// Client connections (TCP) or flows (UDP) open now, across reloads.
    pub active: Arc<AtomicUsize>,
    /// Cancelled when the shutdown grace is over: open connections close.
    pub hard_stop: CancellationToken,
    /// The listener's log span: each line its tasks log names the listener.
    pub span: Span,
    /// Clients' PROXY headers refused lately (logged once, not per client).
    pub bad_headers: Alarm,
}

impl Context {
    /// What keeps this listener from being ready, if anything: the first
    /// answer of its discovery (a bound listener is ready once it has one).
    pub fn waiting_for(&self) -> Option<String> {
        let waiting = self.upstream.current().is_none();
        waiting.then(|| {
            format!(
                "listener '{}': the first answer of {}",
                self.config.name,
                self.config.backends.name()
            )
        })
    }

    /// The first context of a new listener.
    pub fn first(
        config: Listener,
        local_addr: SocketAddr,
        upstream: Upstream,
        metrics: ListenerMetrics,
        hard_stop: CancellationToken,
        span: Span,
    ) -> Context {
        Context {
            config,
            local_addr,
            upstream,
            metrics,
            active: Arc::default(),
            hard_stop,
            span,
            bad_headers: Alarm::new(),
        }
    }

    /// The context that follows this one after a reload: new settings, the
    /// same socket, open-connection count, removal token and log span.
    pub fn next(&self, config: Listener, upstream: Upstream, metrics: ListenerMetrics) -> Context {
        Context {
            config,
            local_addr: self.local_addr,
            upstream,
            metrics,
            active: self.active.clone(),
            hard_stop: self.hard_stop.clone(),
            span: self.span.clone(),
            bad_headers: Alarm::new(),
        }
    }

    /// Resolves once a flow on `lease` must end: its backend or this
    /// listener was removed (both cancel the lease's backend) and
    /// `drain_timeout` has passed.
    pub async fn drain_over(&self, lease: &Lease) {
        lease.removed().await;
        match self.config.drain_timeout {
            Some(grace) => tokio::time::sleep(grace).await,
            // Unlimited: the connection ends by itself or by idle timeout.
            None => std::future::pending().await,
        }
    }
}

/// When a connection or flow last moved a byte either way, for idle timeouts.
pub(crate) struct Activity {
    start: Instant,
    /// Ms since `start`.
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    /// When it goes idle if nothing moves before.
    pub(crate) fn deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed)) + idle
    }
}
