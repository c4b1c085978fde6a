//! Proxying: what a listener's connections or flows share ([`Context`]), the
//! accept loop and connection life of each protocol (`tcp`, `udp`), and TCP
//! byte forwarding (`forward`, with the zero-copy `splice` path).

mod forward;
mod sock;
mod splice;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{Span, info};

pub use sock::{Listening, register_listener};

use crate::access::Refused;
use crate::alarm::Alarm;
use crate::balancer::Upstream;
use crate::config::{Listener, TcpSettings, UdpSettings};
use crate::metrics::ListenerMetrics;

/// A protocol's own listener settings ([`TcpSettings`], [`UdpSettings`]).
pub trait Settings: Send + Sync + 'static {}

impl Settings for TcpSettings {}
impl Settings for UdpSettings {}

/// One generation of a listener's settings, as its connections or flows see
/// them. A reload that changes the listener gives new connections a new one;
/// connections keep the one they started with.
///
/// Typed by protocol (`Context<TcpSettings>`), so the proxy reads its
/// settings without asking which protocol it is; `Context` alone is
/// either, for what reads only the rest (status, the server).
pub struct Context<S: Settings + ?Sized = dyn Settings> {
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
    /// Sources refused lately, by reason (logged once a minute, with a count).
    pub denied: Alarm,
    pub untrusted_proxies: Alarm,
    /// The protocol's settings, from `config.mode`.
    pub settings: S,
}

impl<S: Settings + ?Sized> Context<S> {
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
        settings: S,
        local_addr: SocketAddr,
        upstream: Upstream,
        metrics: ListenerMetrics,
        hard_stop: CancellationToken,
        span: Span,
    ) -> Context<S>
    where
        S: Sized,
    {
        Context {
            config,
            local_addr,
            upstream,
            metrics,
            active: Arc::default(),
            hard_stop,
            span,
            bad_headers: Alarm::new(),
            denied: Alarm::new(),
            untrusted_proxies: Alarm::new(),
            settings,
        }
    }

    /// Counts and (now and then) logs a source refused, with why.
    pub fn refuse(&self, source: SocketAddr, why: Refused) {
        let (counter, alarm) = match why {
            Refused::Denied => (&self.metrics.refused_denied, &self.denied),
            Refused::UntrustedProxy => (&self.metrics.refused_untrusted_proxy, &self.untrusted_proxies),
        };
        counter.increment(1);
        if let Some(repeated) = alarm.raise() {
            info!(target: "sluice::access", client = %source, reason = %why, repeated, "refused");
        }
    }

    /// The context that follows this one after a reload: new settings, the
    /// same socket, open-connection count, removal token and log span.
    pub fn next(
        &self,
        config: Listener,
        settings: S,
        upstream: Upstream,
        metrics: ListenerMetrics,
    ) -> Context<S>
    where
        S: Sized,
    {
        Context {
            config,
            local_addr: self.local_addr,
            upstream,
            metrics,
            active: self.active.clone(),
            hard_stop: self.hard_stop.clone(),
            span: self.span.clone(),
            bad_headers: Alarm::new(),
            denied: Alarm::new(),
            untrusted_proxies: Alarm::new(),
            settings,
        }
    }
}

/// Why a connection or flow ends when its timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// Its backend or listener was removed, and `drain_timeout` is over.
    Drained,
}

/// The one timer a TCP connection or UDP flow keeps: it fires at the idle
/// deadline as last known or at the drain's end, whichever comes first, and
/// is moved only when it fires (not per message).
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    drain_ends: Option<Instant>,
}

impl Expiry {
    /// Its backend was removed: it may go on for `drain_timeout` (`None`:
    /// until it ends by itself or idles).
    pub(crate) fn drain(&mut self, drain_timeout: Option<Duration>, timer: Pin<&mut Sleep>) {
        if let Some(grace) = drain_timeout {
            let ends = Instant::now() + grace;
            self.drain_ends = Some(ends);
            if ends < timer.deadline() {
                timer.reset(ends);
            }
        }
    }

    /// The timer fired: why it ends now, or `None` with the timer moved to
    /// the next deadline. `idle_ends`: the idle deadline as of the last byte.
    pub(crate) fn fired(&self, idle_ends: Instant, timer: Pin<&mut Sleep>) -> Option<Expired> {
        let now = Instant::now();
        if self.drain_ends.is_some_and(|ends| ends <= now) {
            return Some(Expired::Drained);
        }
        if idle_ends <= now {
            return Some(Expired::Idle);
        }
        timer.reset(self.drain_ends.map_or(idle_ends, |ends| ends.min(idle_ends)));
        None
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
