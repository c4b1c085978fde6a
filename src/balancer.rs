//! Backends as one listener sees them, and the choice among them.
//!
//! [`Upstream`] follows a discovery source and turns each snapshot into a
//! [`Pool`]: the backends grouped by SRV priority plus what the algorithm
//! precomputes (cumulative weights, the Maglev table), published as one
//! immutable value so the set and its selector never disagree. Each backend's
//! state (counters, passive ejection, the token its connections drain on) is
//! owned here and changes only through the [`Lease`] a connection or flow
//! holds: [`Upstream::choose`] hands one out, [`Lease::connected`] and
//! [`Lease::failed`] record the outcome, dropping it ends the connection.
//! TCP and UDP use this same API. Admin reads [`BackendView`] snapshots.

use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

use crate::alarm::Alarm;
use crate::config::{Balance, HealthCheck, Listener};
use crate::discovery::{Backend, BackendSet, Snapshot};
use crate::health::{Checks, Ejected, Ejection, Health};
use crate::net::OwnSockets;

/// Maglev lookup table size: a prime well above any backend count.
const MAGLEV_TABLE_SIZE: usize = 65_537;

/// The state of one backend as one listener sees it, kept across snapshots
/// while its address stays in the set. Changed only through [`Lease`].
#[derive(Debug)]
struct BackendState {
    addr: SocketAddr,
    /// The active check's verdict, when the listener has one.
    health: Option<Arc<Health>>,
    /// Connections (or flows) open now.
    active: AtomicUsize,
    /// Connections established since the backend appeared.
    total: AtomicU64,
    connect_failures: AtomicU64,
    ejection: Ejection,
    /// Cancelled when the backend leaves the set: its connections start draining.
    removed: CancellationToken,
}

impl BackendState {
    /// Neither failing its health check nor ejected for connect failures.
    fn available(&self) -> bool {
        self.health.as_ref().is_none_or(|h| h.is_up()) && !self.ejection.is_ejected()
    }
}

/// A backend of a pool: where the SRV record puts it, and its state.
#[derive(Debug, Clone)]
struct Member {
    backend: Backend,
    state: Arc<BackendState>,
}

impl Member {
    fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    fn weight(&self) -> u64 {
        u64::from(self.backend.weight.max(1))
    }

    /// Whether `self` is less loaded than `other`, by active connections per weight.
    fn lighter_than(&self, other: &Member) -> bool {
        let load = |m: &Member| (m.state.active.load(Relaxed) as u64 + 1) as u128;
        load(self) * (other.weight() as u128) < load(other) * (self.weight() as u128)
    }

    fn view(&self) -> BackendView {
        let state = &self.state;
        BackendView {
            addr: self.addr(),
            priority: self.backend.priority,
            weight: self.backend.weight,
            available: state.available(),
            active: state.active.load(Relaxed),
            total: state.total.load(Relaxed),
            connect_failures: state.connect_failures.load(Relaxed),
            ejections: state.ejection.count(),
        }
    }
}

/// What /status and /metrics show of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub addr: SocketAddr,
    pub priority: u16,
    pub weight: u16,
    /// Neither down by its health check nor ejected.
    pub available: bool,
    pub active: usize,
    pub total: u64,
    pub connect_failures: u64,
    pub ejections: u64,
}

/// Backends of one SRV priority.
#[derive(Debug)]
struct Group {
    members: Vec<Member>,
    /// `cumulative[i]` = sum of weights of members `0..=i`.
    cumulative: Vec<u64>,
    /// Maglev: table slot → member index (empty for other algorithms).
    maglev: Vec<u32>,
    /// Round-robin steps through the weight points this far apart, a
    /// stride coprime to the total: every point once per round, so each
    /// member gets its weight's share, interleaved rather than in blocks
    /// (SRV weights of 50 and 50 alternate instead of 50 in a row).
    stride: u64,
}

impl Group {
    fn new(members: Vec<Member>, balance: Balance) -> Group {
        let cumulative: Vec<u64> = members
            .iter()
            .scan(0, |sum, m| {
                *sum += m.weight();
                Some(*sum)
            })
            .collect();
        let maglev = if balance == Balance::Maglev {
            maglev_table(&members)
        } else {
            Vec::new()
        };
        let total = cumulative.last().copied().unwrap_or(0);
        Group {
            members,
            cumulative,
            maglev,
            stride: coprime_stride(total),
        }
    }

    fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The member of round-robin's `turn`.
    fn in_turn(&self, turn: u64) -> usize {
        let total = self.total_weight();
        let point = u128::from(turn % total) * u128::from(self.stride) % u128::from(total);
        self.by_weight(point as u64)
    }

    /// The member whose weight range holds `point` (in `0..total_weight`).
    fn by_weight(&self, point: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= point)
    }

    fn random(&self) -> usize {
        self.by_weight(fastrand::u64(..self.total_weight()))
    }
}

/// One snapshot of a listener's backends, ready to choose from.
#[derive(Debug, Default)]
pub struct Pool {
    /// Non-empty groups, lowest (preferred) priority first.
    groups: Vec<Group>,
}

impl Pool {
    /// Builds the pool for `set`, keeping the state of addresses `previous`
    /// had; with `checks`, each new backend gets its (shared) active check.
    fn build(
        set: &BackendSet,
        previous: Option<&Pool>,
        balance: Balance,
        checks: Option<(&Checks, &HealthCheck)>,
    ) -> Pool {
        let member = |b: &Backend| {
            let kept = previous.and_then(|p| p.members().find(|m| m.addr() == b.addr));
            let state = kept.map_or_else(
                || {
                    Arc::new(BackendState {
                        addr: b.addr,
                        health: checks.map(|(checks, check)| checks.health(b.addr, check)),
                        active: AtomicUsize::new(0),
                        total: AtomicU64::new(0),
                        connect_failures: AtomicU64::new(0),
                        ejection: Ejection::default(),
                        removed: CancellationToken::new(),
                    })
                },
                |m| m.state.clone(),
            );
            Member { backend: *b, state }
        };
        let groups = set
            .backends()
            .chunk_by(|a, b| a.priority == b.priority)
            .map(|chunk| Group::new(chunk.iter().map(member).collect(), balance))
            .collect();
        Pool { groups }
    }

    fn members(&self) -> impl Iterator<Item = &Member> {
        self.groups.iter().flat_map(|g| &g.members)
    }

    /// Every backend, for /status and /metrics.
    pub fn views(&self) -> Vec<BackendView> {
        self.members().map(Member::view).collect()
    }
}

/// Chooses a backend for each new connection.
#[derive(Debug)]
struct Balancer {
    balance: Balance,
    next: AtomicUsize,
}

impl Balancer {
    fn new(balance: Balance) -> Self {
        Balancer {
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// A backend for `client`, skipping those in `avoid`: an available one
    /// from the preferred priority group, else from the next group; when no
    /// backend at all is available, any other one (better than refusing).
    fn pick<'a>(&self, pool: &'a Pool, client: IpAddr, avoid: &[SocketAddr]) -> Option<&'a Member> {
        let allowed = |m: &Member| !avoid.contains(&m.addr());
        let healthy = |m: &Member| allowed(m) && m.state.available();
        let usable: &dyn Fn(&Member) -> bool = if pool.members().any(healthy) {
            &healthy
        } else {
            &allowed
        };
        pool.groups.iter().find_map(|g| self.pick_in(g, client, usable))
    }

    fn pick_in<'a>(
        &self,
        group: &'a Group,
        client: IpAddr,
        usable: &dyn Fn(&Member) -> bool,
    ) -> Option<&'a Member> {
        let members = &group.members;
        if !members.iter().any(usable) {
            return None; // before any counter moves, so turns stay fair
        }
        let n = members.len();
        // The first usable member at or after `start`.
        let usable_from = |start: usize| (0..n).map(|i| (start + i) % n).find(|&i| usable(&members[i]));
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let turn = self.next.fetch_add(1, Relaxed) as u64;
                usable_from(group.in_turn(turn))?
            }
            Balance::Random => usable_from(group.random())?,
            Balance::LeastConn => {
                // Start at a rotating offset so ties spread instead of piling on member 0.
                let start = self.next.fetch_add(1, Relaxed) % n;
                let first = usable_from(start)?;
                (0..n)
                    .map(|i| (start + i) % n)
                    .filter(|&i| usable(&members[i]))
                    .fold(first, |best, i| {
                        if members[i].lighter_than(&members[best]) {
                            i
                        } else {
                            best
                        }
                    })
            }
            Balance::P2c => {
                let a = usable_from(group.random())?;
                let b = usable_from(group.random())?;
                if members[b].lighter_than(&members[a]) {
                    b
                } else {
                    a
                }
            }
            Balance::Maglev => {
                let slot = (stable_hash(&client, 0) % group.maglev.len() as u64) as usize;
                usable_from(group.maglev[slot] as usize)?
            }
        };
        Some(&members[chosen])
    }
}

/// The largest number coprime to `total` at or below `total` × 0.618 (the
/// golden ratio spreads consecutive multiples evenly), 1 for tiny totals.
fn coprime_stride(total: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let start = (total as f64 * 0.618) as u64;
    (1..=start.max(1))
        .rev()
        .find(|&s| gcd(s, total) == 1)
        .unwrap_or(1)
}

/// A hash that is the same in every sluice process (Maglev must agree across restarts).
fn stable_hash<T: Hash>(value: &T, seed: u64) -> u64 {
    // FNV-1a: tiny, stable, and good enough to spread addresses.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325 ^ seed);
    value.hash(&mut h);
    // Finalise (splitmix64) so nearby inputs land far apart.
    let mut z = h.finish();
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016): each member walks its
/// own permutation of the slots, members taking turns, so every member owns
/// about the same share and a change moves few slots.
fn maglev_table(members: &[Member]) -> Vec<u32> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE];
    if members.is_empty() {
        return table;
    }
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|mem| {
            (
                stable_hash(&mem.addr(), 1) % m,
                stable_hash(&mem.addr(), 2) % (m - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let slot = loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    break slot;
                }
            };
            table[slot] = i as u32;
            filled += 1;
            if filled == MAGLEV_TABLE_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// What an upstream's leases share.
#[derive(Debug)]
struct Shared {
    eject_after: u32,
    /// Clients find no backend to take them (logged once, not per client).
    unreachable: Alarm,
}

/// A listener's backends: follows discovery, rebuilding the [`Pool`] on each
/// snapshot, and hands out [`Lease`]s.
#[derive(Debug)]
pub struct Upstream {
    balancer: Balancer,
    pools: watch::Receiver<Option<Arc<Pool>>>,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Follows `discovery` for `listener` for as long as the upstream lives
    /// and the source runs. With `seed` (the upstream this one replaces, for
    /// the same source), backends it had keep their state. Backends that
    /// leave the set have their connections drain; backends that are one of
    /// sluice's `own` sockets are left out (logged once), and the pool is
    /// rebuilt when those change too.
    pub fn follow(
        listener: &Listener,
        mut discovery: watch::Receiver<Snapshot>,
        checks: Option<Arc<Checks>>,
        seed: Option<&Upstream>,
        mut own: watch::Receiver<Arc<OwnSockets>>,
    ) -> (Upstream, impl Future<Output = ()> + Send + use<>) {
        let (tx, pools) = watch::channel(None::<Arc<Pool>>);
        let mut seed = seed.and_then(Upstream::current);
        let (protocol, balance, health) = (listener.protocol(), listener.balance, listener.health.clone());
        let follow = async move {
            let mut looping: Vec<SocketAddr> = Vec::new();
            loop {
                let snapshot = discovery.borrow_and_update().clone();
                let own_sockets = own.borrow_and_update().clone();
                if let Some(set) = snapshot {
                    let (set, loops) = set.partition(|b| !own_sockets.reached_by(protocol, b.addr));
                    for addr in loops.iter().filter(|a| !looping.contains(a)) {
                        warn!(backend = %addr, "backend is one of sluice's own listening sockets, never used");
                    }
                    looping = loops;
                    let previous = tx.borrow().clone().or_else(|| seed.take());
                    let checks = checks.as_deref().zip(health.as_ref());
                    let pool = Pool::build(&set, previous.as_deref(), balance, checks);
                    for gone in previous.iter().flat_map(|p| p.members()) {
                        if !pool.members().any(|m| Arc::ptr_eq(&m.state, &gone.state)) {
                            gone.state.removed.cancel();
                        }
                    }
                    tx.send_replace(Some(Arc::new(pool)));
                }
                tokio::select! {
                    changed = discovery.changed() => if changed.is_err() { return },
                    // The sockets sluice listens on changed (a reload).
                    changed = own.changed() => if changed.is_err() { return },
                    // Nobody holds this upstream any more.
                    _ = tx.closed() => return,
                }
            }
        };
        let upstream = Upstream {
            balancer: Balancer::new(balance),
            pools,
            shared: Arc::new(Shared {
                eject_after: listener.eject_after,
                unreachable: Alarm::new(),
            }),
        };
        (upstream, follow)
    }

    /// The current pool; `None` before the first discovery answer.
    pub fn current(&self) -> Option<Arc<Pool>> {
        self.pools.borrow().clone()
    }

    /// Completes once the first discovery answer is in (static lists at once).
    pub fn resolved(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut pools = self.pools.clone();
        async move {
            let _ = pools.wait_for(Option::is_some).await;
        }
    }

    /// The current pool, waiting up to `wait` for the first discovery answer.
    pub async fn ready(&self, wait: Duration) -> Option<Arc<Pool>> {
        if let Some(pool) = self.current() {
            return Some(pool);
        }
        let mut pools = self.pools.clone();
        let ready = tokio::time::timeout(wait, pools.wait_for(Option::is_some)).await;
        ready.ok()?.ok()?.clone()
    }

    /// A backend of `pool` for `client`, other than those in `avoid`.
    pub fn choose(&self, pool: &Pool, client: IpAddr, avoid: &[SocketAddr]) -> Option<Lease> {
        let member = self.balancer.pick(pool, client, avoid)?;
        Some(Lease {
            state: member.state.clone(),
            shared: self.shared.clone(),
            open: false,
        })
    }

    /// No backend took a client: says so once, then at most once a minute.
    pub fn unreachable(&self, client: SocketAddr, why: impl Display) {
        if let Some(repeated) = self.shared.unreachable.raise() {
            warn!(%client, repeated, "{why}, closing connections");
        }
    }

    /// Every current backend: its connections drain, as if it had left the
    /// set (a reload gave the listener another source).
    pub fn retire(&self) {
        for member in self.current().iter().flat_map(|p| p.members()) {
            member.state.removed.cancel();
        }
    }
}

/// A backend chosen for one connection or flow. Counted in the backend's
/// `active` from [`Lease::connected`] until dropped.
#[derive(Debug)]
pub struct Lease {
    state: Arc<BackendState>,
    shared: Arc<Shared>,
    open: bool,
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// The backend took the connection (or flow): counted, and a standing
    /// ejection or unreachability ends, said once.
    pub fn connected(&mut self) {
        let state = &self.state;
        state.total.fetch_add(1, Relaxed);
        if !self.open {
            state.active.fetch_add(1, Relaxed);
            self.open = true;
        }
        if state.ejection.succeeded() {
            info!(backend = %state.addr, "backend accepts connections again");
        }
        if self.shared.unreachable.clear() {
            info!("connections reach backends again");
        }
    }

    /// The backend refused or did not answer: counted, and it is ejected
    /// after `eject_after` failures in a row (logged as [`Alarm`] says).
    pub fn failed(&self, error: impl Display) {
        let state = &self.state;
        state.connect_failures.fetch_add(1, Relaxed);
        match state.ejection.failed(self.shared.eject_after) {
            Some(Ejected { period, repeated }) => {
                warn!(backend = %state.addr, ?period, repeated, %error, "backend ejected after repeated connect failures");
            }
            None => debug!(backend = %state.addr, %error, "backend failed"),
        }
    }

    /// As [`Lease::removed`], owning what it waits on.
    pub fn removed_owned(&self) -> WaitForCancellationFutureOwned {
        self.state.removed.clone().cancelled_owned()
    }

    /// Resolves once the backend has left the set.
    pub fn removed(&self) -> WaitForCancellationFuture<'_> {
        self.state.removed.cancelled()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.open {
            self.state.active.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn set(specs: &[(&str, u16, u16)]) -> BackendSet {
        BackendSet::new(
            specs
                .iter()
                .map(|(addr, priority, weight)| Backend {
                    addr: addr.parse().unwrap(),
                    priority: *priority,
                    weight: *weight,
                })
                .collect(),
        )
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// How many of `n` picks each backend port got.
    fn tally(balance: Balance, pool: &Pool, n: u32) -> HashMap<u16, u32> {
        let balancer = Balancer::new(balance);
        let mut counts = HashMap::new();
        for i in 0..n {
            let m = balancer.pick(pool, client(i), &[]).unwrap();
            *counts.entry(m.addr().port()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn round_robin_cycles_and_honours_weight() {
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 1), ("10.0.0.1:3", 1, 2)]),
            None,
            Balance::RoundRobin,
            None,
        );
        assert_eq!(
            tally(Balance::RoundRobin, &pool, 400),
            HashMap::from([(1, 100), (2, 100), (3, 200)])
        );
    }

    #[test]
    fn round_robin_interleaves_large_weights() {
        // Kubernetes' SRV weights: 100 / number of pods each.
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 0, 50), ("10.0.0.1:2", 0, 50)]),
            None,
            Balance::RoundRobin,
            None,
        );
        let balancer = Balancer::new(Balance::RoundRobin);
        let picks: Vec<u16> = (0..100)
            .map(|i| balancer.pick(&pool, client(i), &[]).unwrap().addr().port())
            .collect();
        let longest_run = picks.chunk_by(|a, b| a == b).map(<[u16]>::len).max().unwrap();
        assert!(longest_run <= 2, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 50);
        for total in [1, 2, 3, 4, 100, 65_535, 1 << 40] {
            let stride = coprime_stride(total);
            assert!(stride >= 1 && stride <= total.max(1), "{total}: {stride}");
        }
    }

    #[test]
    fn random_and_p2c_reach_every_backend_by_weight() {
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 3)]),
            None,
            Balance::Random,
            None,
        );
        let counts = tally(Balance::Random, &pool, 4000);
        assert!((800..1200).contains(&counts[&1]), "{counts:?}");
        let counts = tally(Balance::P2c, &pool, 4000);
        assert_eq!(counts.len(), 2, "{counts:?}");
    }

    #[test]
    fn least_conn_prefers_the_idle_backend() {
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 1), ("10.0.0.1:3", 1, 1)]),
            None,
            Balance::LeastConn,
            None,
        );
        for (m, active) in pool.members().zip([5, 0, 2]) {
            m.state.active.store(active, Relaxed);
        }
        let balancer = Balancer::new(Balance::LeastConn);
        for _ in 0..10 {
            assert_eq!(balancer.pick(&pool, client(0), &[]).unwrap().addr().port(), 2);
        }
    }

    #[test]
    fn p2c_leans_to_the_lighter_backend() {
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 1)]),
            None,
            Balance::P2c,
            None,
        );
        pool.members().next().unwrap().state.active.store(10, Relaxed);
        // Only a draw of the busy one twice (1 in 4) picks it.
        let light = tally(Balance::P2c, &pool, 1000)[&2];
        assert!(light > 650, "lighter backend got {light} of 1000");
    }

    #[test]
    fn tried_backends_are_skipped_then_next_priority_used() {
        let pool = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 1), ("10.0.0.9:9", 2, 1)]),
            None,
            Balance::RoundRobin,
            None,
        );
        let balancer = Balancer::new(Balance::RoundRobin);
        let first: Vec<SocketAddr> = pool.members().take(2).map(Member::addr).collect();
        for _ in 0..4 {
            assert_eq!(
                balancer.pick(&pool, client(0), &first[..1]).unwrap().addr(),
                first[1]
            );
            assert_eq!(balancer.pick(&pool, client(0), &first).unwrap().addr().port(), 9);
        }
        let all: Vec<SocketAddr> = pool.members().map(Member::addr).collect();
        assert!(balancer.pick(&pool, client(0), &all).is_none());
    }

    #[test]
    fn maglev_is_sticky_balanced_and_stable_under_change() {
        let specs: Vec<(String, u16, u16)> = (1..=5).map(|p| (format!("10.0.0.1:{p}"), 1, 1)).collect();
        let specs_ref: Vec<(&str, u16, u16)> = specs.iter().map(|(a, p, w)| (a.as_str(), *p, *w)).collect();
        let pool = Pool::build(&set(&specs_ref), None, Balance::Maglev, None);
        let balancer = Balancer::new(Balance::Maglev);
        let before: Vec<u16> = (0..2000)
            .map(|i| balancer.pick(&pool, client(i), &[]).unwrap().addr().port())
            .collect();
        let again: Vec<u16> = (0..2000)
            .map(|i| balancer.pick(&pool, client(i), &[]).unwrap().addr().port())
            .collect();
        assert_eq!(before, again);
        let counts = tally(Balance::Maglev, &pool, 5000);
        assert!(counts.values().all(|&c| (700..1300).contains(&c)), "{counts:?}");

        // Removing backend 5 moves only the clients that were on it (give or take).
        let smaller = Pool::build(&set(&specs_ref[..4]), Some(&pool), Balance::Maglev, None);
        let after: Vec<u16> = (0..2000)
            .map(|i| balancer.pick(&smaller, client(i), &[]).unwrap().addr().port())
            .collect();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != 5)
            .count();
        assert!(moved < 100, "{moved} clients moved needlessly");
    }

    #[test]
    fn counters_survive_a_rebuild() {
        let first = Pool::build(&set(&[("10.0.0.1:1", 1, 1)]), None, Balance::RoundRobin, None);
        first.members().next().unwrap().state.total.store(7, Relaxed);
        let second = Pool::build(
            &set(&[("10.0.0.1:1", 1, 1), ("10.0.0.1:2", 1, 1)]),
            Some(&first),
            Balance::RoundRobin,
            None,
        );
        let totals: Vec<u64> = second.members().map(|m| m.state.total.load(Relaxed)).collect();
        assert_eq!(totals, [7, 0]);
    }
}
