//! Discovery: where backends come from. Owns the `BackendSet` snapshot type
//! and starts one task per distinct source, shared by every listener that uses
//! it. Each task publishes immutable snapshots on a `watch` channel; listeners
//! read the latest one and never wait on DNS.

pub(crate) mod catalog;
mod client;
pub(crate) mod consul;
pub mod dns;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::alarm::Alarm;

use crate::config::{BackendSource, ConsulSettings, Listener};
use crate::metrics::{Metrics, QueryMetrics};
use dns::DnsClient;

/// One address:port to forward to, as the SRV record gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Backend {
    pub addr: SocketAddr,
    /// SRV priority: lower is preferred; higher groups are failover.
    pub priority: u16,
    /// SRV weight within its priority group (0 counts as 1).
    pub weight: u16,
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Backend {
            addr,
            priority: 0,
            weight: 1,
        }
    }
}

/// An immutable set of backends, sorted by (priority, addr), one entry per addr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BackendSet {
    backends: Vec<Backend>,
}

impl BackendSet {
    /// Sorts and de-duplicates: an addr listed twice keeps its best priority.
    pub(crate) fn new(mut backends: Vec<Backend>) -> Self {
        backends.sort_by_key(|b| (b.addr, b.priority));
        backends.dedup_by_key(|b| b.addr);
        backends.sort_by_key(|b| (b.priority, b.addr));
        BackendSet { backends }
    }

    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backends that pass `keep`, and the addresses of those that do not.
    pub(crate) fn partition(&self, keep: impl Fn(&Backend) -> bool) -> (BackendSet, Vec<SocketAddr>) {
        let (kept, left): (Vec<Backend>, Vec<Backend>) = self.backends.iter().partition(|b| keep(b));
        (
            BackendSet { backends: kept },
            left.iter().map(|b| b.addr).collect(),
        )
    }

    /// What changed from `self` to `next`, keyed by addr.
    pub(crate) fn diff(&self, next: &BackendSet) -> Diff {
        // The usual refresh: nothing changed (both are sorted alike).
        if self == next {
            return Diff::default();
        }
        let old: HashMap<SocketAddr, &Backend> = self.backends.iter().map(|b| (b.addr, b)).collect();
        let new: HashMap<SocketAddr, &Backend> = next.backends.iter().map(|b| (b.addr, b)).collect();
        let mut diff = Diff::default();
        for b in &next.backends {
            match old.get(&b.addr) {
                None => diff.added.push(b.addr),
                Some(o) if *o != b => diff.changed.push(b.addr),
                Some(_) => {}
            }
        }
        diff.removed = self
            .backends
            .iter()
            .filter(|b| !new.contains_key(&b.addr))
            .map(|b| b.addr)
            .collect();
        diff
    }
}

/// Backends added, removed, or with a new priority/weight between two sets.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    pub changed: Vec<SocketAddr>,
}

impl Diff {
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Diff {
    /// `a,b,c` for logs.
    pub(crate) fn list(addrs: &[SocketAddr]) -> String {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The latest backends of a source; `None` until the first answer.
pub(crate) type Snapshot = Option<Arc<BackendSet>>;

/// What the status page shows of one SRV query, updated by its task.
#[derive(Debug)]
pub(crate) struct QueryState {
    pub name: String,
    health: Mutex<QueryHealth>,
    metrics: QueryMetrics,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct QueryHealth {
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    /// A Consul watch's last `X-Consul-Index`.
    pub index: Option<u64>,
}

impl QueryState {
    fn new(name: &str, metrics: QueryMetrics) -> Self {
        QueryState {
            name: name.to_string(),
            health: Mutex::default(),
            metrics,
        }
    }

    pub(crate) fn health(&self) -> QueryHealth {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_index(&self, index: u64) {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).index = Some(index);
    }

    fn record(&self, outcome: Result<bool, String>) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(found) => {
                let now = SystemTime::now();
                health.last_success = Some(now);
                health.last_error = None;
                self.metrics.last_success.set(crate::unix_seconds(now));
                if found {
                    &self.metrics.ok
                } else {
                    &self.metrics.empty
                }
                .increment(1);
            }
            Err(e) => {
                health.last_error = Some(e);
                self.metrics.error.increment(1);
            }
        }
    }
}

/// What a discovery task does with what it learns, whatever the source: the
/// policy both DNS and Consul share. A failure keeps the last good set (and
/// is logged once); an empty answer replaces a non-empty set only once it
/// has lasted `empty_grace`; a change is published, and logged as a diff.
pub(crate) struct Publisher {
    tx: watch::Sender<Snapshot>,
    state: Arc<QueryState>,
    empty_grace: Duration,
    empty_since: Option<Instant>,
    failing: Alarm,
}

impl Publisher {
    pub(crate) fn new(
        tx: watch::Sender<Snapshot>,
        state: Arc<QueryState>,
        empty_grace: Duration,
    ) -> Publisher {
        Publisher {
            tx,
            state,
            empty_grace,
            empty_since: None,
            failing: Alarm::new(),
        }
    }

    /// The source's answer, with backends.
    pub(crate) fn found(&mut self, set: BackendSet) {
        self.succeeded(true);
        self.empty_since = None;
        self.publish(set);
    }

    /// The source says there is no backend (NXDOMAIN, an empty list).
    pub(crate) fn empty(&mut self) {
        self.succeeded(false);
        let since = *self.empty_since.get_or_insert_with(Instant::now);
        let waited = since.elapsed();
        if self.has_backends() && waited < self.empty_grace {
            let query = self.state.name.as_str();
            debug!(
                query,
                ?waited,
                "empty answer, keeping the last set during the grace period"
            );
            return;
        }
        self.publish(BackendSet::default());
    }

    /// When the empty answer being held through its grace takes effect
    /// (by another call to [`Publisher::empty`]), if one is held.
    pub(crate) fn grace_ends(&self) -> Option<Instant> {
        let since = self.empty_since?;
        self.has_backends().then(|| since + self.empty_grace)
    }

    fn has_backends(&self) -> bool {
        self.tx.borrow().as_ref().is_some_and(|set| !set.is_empty())
    }

    /// No usable answer: the last good set stays.
    pub(crate) fn failed(&mut self, error: &dyn fmt::Display) {
        self.state.record(Err(error.to_string()));
        if let Some(repeated) = self.failing.raise() {
            let query = self.state.name.as_str();
            warn!(query, error = %error, repeated, "lookup failed, keeping the last good backends");
        }
    }

    fn succeeded(&mut self, found: bool) {
        self.state.record(Ok(found));
        if self.failing.clear() {
            info!(query = self.state.name.as_str(), "lookups succeed again");
        }
    }

    fn publish(&mut self, next: BackendSet) {
        let current = self.tx.borrow().clone();
        let empty = BackendSet::default();
        let diff = current.as_deref().unwrap_or(&empty).diff(&next);
        if current.is_some() && diff.is_empty() {
            return;
        }
        info!(
            query = self.state.name.as_str(),
            added = %Diff::list(&diff.added),
            removed = %Diff::list(&diff.removed),
            changed = %Diff::list(&diff.changed),
            total = next.backends().len(),
            "backends changed"
        );
        self.tx.send_replace(Some(Arc::new(next)));
    }
}

/// The running discovery tasks, one per distinct source, shared by every
/// listener that uses it. Reload subscribes the new listeners and retires
/// sources no listener uses any more.
pub(crate) struct Registry {
    dns: Option<DnsClient>,
    consul: ConsulSettings,
    metrics: Arc<Metrics>,
    sources: HashMap<BackendSource, Source>,
    shutdown: CancellationToken,
    /// Where the discovery tasks run.
    tracker: TaskTracker,
}

struct Source {
    snapshots: watch::Receiver<Snapshot>,
    /// Stops the DNS task (static sources have none).
    stop: CancellationToken,
    query: Option<Arc<QueryState>>,
}

impl Registry {
    pub(crate) fn new(
        dns: Option<DnsClient>,
        consul: ConsulSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Registry {
        if let Some(dns) = &dns {
            info!(servers = ?dns.servers(), "discovering backends through DNS");
        }
        Registry {
            dns,
            consul,
            metrics,
            sources: HashMap::new(),
            shutdown,
            tracker,
        }
    }

    /// Whether DNS sources have a client to ask.
    pub(crate) fn has_dns(&self) -> bool {
        self.dns.is_some()
    }

    /// Switches to another DNS server: every DNS source starts over.
    pub(crate) fn set_dns(&mut self, dns: Option<DnsClient>) {
        self.restart(|source| matches!(source, BackendSource::Dns(_)));
        if let Some(dns) = &dns {
            info!(servers = ?dns.servers(), "discovering backends through DNS");
        }
        self.dns = dns;
    }

    /// Switches to another Consul address or token: every watch starts over.
    pub(crate) fn set_consul(&mut self, consul: ConsulSettings) {
        self.restart(|source| matches!(source, BackendSource::Consul(_)));
        self.consul = consul;
    }

    /// Stops the sources that `restarts`, so the next subscriber starts them anew.
    fn restart(&mut self, restarts: impl Fn(&BackendSource) -> bool) {
        self.sources.retain(|source, running| {
            let stop = restarts(source);
            if stop {
                running.stop.cancel();
            }
            !stop
        });
    }

    /// The snapshots of `source`, starting its task if none runs.
    pub(crate) fn subscribe(&mut self, source: &BackendSource) -> watch::Receiver<Snapshot> {
        if let Some(running) = self.sources.get(source) {
            return running.snapshots.clone();
        }
        let stop = self.shutdown.child_token();
        let running = match (source, &self.dns) {
            (BackendSource::Dns(query), Some(client)) => {
                let (tx, snapshots) = watch::channel(None);
                let state = Arc::new(QueryState::new(&query.name, self.metrics.query(&query.name)));
                let publisher = Publisher::new(tx, state.clone(), query.empty_grace);
                let watching = dns::watch(client.clone(), query.clone(), publisher, stop.clone());
                self.tracker.spawn(watching);
                Source {
                    snapshots,
                    stop,
                    query: Some(state),
                }
            }
            (BackendSource::Consul(query), _) => {
                let (tx, snapshots) = watch::channel(None);
                let name = query.name();
                let state = Arc::new(QueryState::new(&name, self.metrics.query(&name)));
                let publisher = Publisher::new(tx, state.clone(), query.empty_grace);
                let watching = consul::watch(
                    self.consul.clone(),
                    query.clone(),
                    publisher,
                    state.clone(),
                    stop.clone(),
                    self.tracker.clone(),
                );
                self.tracker.spawn(watching);
                Source {
                    snapshots,
                    stop,
                    query: Some(state),
                }
            }
            (BackendSource::Static(addrs), _) => Source {
                snapshots: fixed(addrs),
                stop,
                query: None,
            },
            // Server::bind makes a client whenever a listener uses DNS.
            (BackendSource::Dns(_), None) => Source {
                snapshots: fixed(&[]),
                stop,
                query: None,
            },
        };
        let snapshots = running.snapshots.clone();
        self.sources.insert(source.clone(), running);
        snapshots
    }

    /// Stops the sources that no listener in `listeners` uses.
    pub(crate) fn retain(&mut self, listeners: &[Listener]) {
        self.sources.retain(|source, running| {
            let used = listeners.iter().any(|l| &l.backends == source);
            if !used {
                running.stop.cancel();
            }
            used
        });
    }

    /// The state of every DNS query, for the status page.
    pub(crate) fn queries(&self) -> Vec<Arc<QueryState>> {
        let mut queries: Vec<_> = self.sources.values().filter_map(|s| s.query.clone()).collect();
        queries.sort_by(|a, b| a.name.cmp(&b.name));
        queries
    }
}

/// A source that never changes.
fn fixed(addrs: &[SocketAddr]) -> watch::Receiver<Snapshot> {
    let set = BackendSet::new(addrs.iter().copied().map(Backend::new).collect());
    // The sender may drop: receivers keep the last value.
    watch::channel(Some(Arc::new(set))).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(addr: &str, priority: u16, weight: u16) -> Backend {
        Backend {
            addr: addr.parse().unwrap(),
            priority,
            weight,
        }
    }

    #[test]
    fn set_sorts_by_priority_and_keeps_best_duplicate() {
        let set = BackendSet::new(vec![
            b("10.0.0.2:80", 1, 1),
            b("10.0.0.1:80", 2, 1),
            b("10.0.0.1:80", 1, 5),
            b("10.0.0.1:81", 1, 1),
        ]);
        assert_eq!(
            set.backends(),
            [
                b("10.0.0.1:80", 1, 5),
                b("10.0.0.1:81", 1, 1),
                b("10.0.0.2:80", 1, 1)
            ]
        );
    }

    #[test]
    fn diff_reports_added_removed_and_changed() {
        let old = BackendSet::new(vec![b("10.0.0.1:80", 1, 1), b("10.0.0.2:80", 1, 1)]);
        let new = BackendSet::new(vec![b("10.0.0.2:80", 1, 3), b("10.0.0.3:80", 1, 1)]);
        let diff = old.diff(&new);
        assert_eq!(diff.added, ["10.0.0.3:80".parse().unwrap()]);
        assert_eq!(diff.removed, ["10.0.0.1:80".parse().unwrap()]);
        assert_eq!(diff.changed, ["10.0.0.2:80".parse().unwrap()]);
        assert!(old.diff(&old).is_empty());
    }
}
