//! The running server: binds the listeners, wires discovery → balancer →
//! proxy for each, applies reloads, and owns shutdown (stop accepting, drain
//! for `shutdown_grace`, then close).
//!
//! A reload is planned first (`plan`: which listeners stop, rebind, update
//! or start), then applied. It never touches what did not change: an
//! unchanged listener keeps its socket, context and connections; a changed
//! one keeps its socket and gives new connections the new settings; a
//! removed one stops accepting and its connections drain. Anything that
//! fails (a port in use, no DNS server) fails the whole reload before
//! anything is changed.

mod catalog;
mod changes;
mod plan;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket as Socket2, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::Error;
use crate::admin::Admin;
use crate::balancer::Upstream;
use crate::config::{BackendSource, Config, Listener, Mode, Origin, Protocol, TcpSettings, UdpSettings};
use crate::control::{Command, Control, ReloadReport};
use crate::discovery::Registry;
use crate::discovery::dns::DnsClient;
use crate::health::Checks;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::net::{OwnSockets, binds_overlap};
use crate::notify;
use crate::proxy::{self, Context, Listening, Settings};
use crate::status::CatalogView;
use plan::{Change, Plan};

/// Pending connections the kernel queues per listener while at `max_connections`.
const LISTEN_BACKLOG: i32 = 1024;
/// Room for UDP bursts (statsd flushes); the kernel caps it at net.core.rmem_max.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;
/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A bound listening socket, with the settings of the protocol it was bound for.
enum Socket {
    Tcp(Listening, TcpSettings),
    Udp(UdpSocket, UdpSettings),
}

impl Socket {
    fn bind(listener: &Listener) -> Result<Socket, Error> {
        let socket = Socket2::new(
            Domain::for_address(listener.bind),
            sock_type(listener.protocol()),
            None,
        );
        let bound = socket.and_then(|socket| {
            if listener.reuse_port {
                socket.set_reuse_port(true)?;
            }
            match listener.mode {
                Mode::Tcp(tcp) => listen_proxied(socket, listener.bind).map(|s| Socket::Tcp(s, tcp)),
                Mode::Udp(udp) => {
                    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
                    socket.set_nonblocking(true)?;
                    socket.bind(&listener.bind.into())?;
                    UdpSocket::from_std(socket.into()).map(|s| Socket::Udp(s, udp))
                }
            }
        });
        bound.map_err(|source| Error::Bind {
            listener: listener.name.clone(),
            addr: listener.bind,
            source,
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s, _) => s.get_ref().local_addr(),
            Socket::Udp(s, _) => s.local_addr(),
        }
    }
}

fn sock_type(protocol: Protocol) -> Type {
    match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    }
}

fn listen_tcp(socket: Socket2, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    // Restarting must not fail on the old process's TIME_WAIT connections.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A proxied listener, registered with the reactor for accept4.
fn listen_proxied(socket: Socket2, addr: SocketAddr) -> io::Result<Listening> {
    // Set once here, inherited by every accepted socket (Linux).
    let _ = socket.set_tcp_nodelay(true);
    proxy::register_listener(listen_tcp(socket, addr)?)
}

/// The DNS client `config` needs: none without DNS listeners.
fn dns_client(config: &Config) -> Result<Option<DnsClient>, Error> {
    let uses_dns = config
        .listeners
        .iter()
        .any(|l| matches!(l.backends, BackendSource::Dns(_)));
    if !uses_dns {
        return Ok(None);
    }
    DnsClient::new(&config.dns).map(Some).map_err(Error::NoDns)
}

/// Every listener bound, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    sockets: Vec<Socket>,
    admin: Option<TcpListener>,
    dns: Option<DnsClient>,
    commands: mpsc::Receiver<Command>,
    control: Control,
}

impl Server {
    /// Binds every listener; fails naming the listener whose address is taken.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let dns = dns_client(&config)?;
        let sockets = config
            .listeners
            .iter()
            .map(Socket::bind)
            .collect::<Result<_, _>>()?;
        let admin = match config.metrics {
            Some(addr) => {
                let socket = Socket2::new(Domain::for_address(addr), Type::STREAM, None);
                let bound = socket
                    .and_then(|s| listen_tcp(s, addr))
                    .and_then(TcpListener::from_std);
                Some(bound.map_err(|source| Error::BindMetrics { addr, source })?)
            }
            None => None,
        };
        let (tx, commands) = mpsc::channel(1);
        Ok(Server {
            config,
            sockets,
            admin,
            dns,
            commands,
            control: Control { commands: tx },
        })
    }

    /// A handle to reload the server once it runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Where the metrics/status endpoint listens, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Each listener's name and bound address (with the real port if it was 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.config
            .listeners
            .iter()
            .zip(&self.sockets)
            .map(|(l, socket)| (l.name.clone(), socket.local_addr().unwrap_or(l.bind)))
            .collect()
    }

    /// Serves until `shutdown` is cancelled, applying reloads meanwhile; then
    /// stops accepting and lets open connections finish for up to
    /// `shutdown_grace` before closing them.
    pub async fn run(self, shutdown: CancellationToken) {
        let metrics_addr = self.metrics_addr();
        let Server {
            config,
            sockets,
            admin,
            dns,
            mut commands,
            control,
        } = self;
        let metrics = Arc::new(Metrics::new(admin.is_some()));
        let tracker = TaskTracker::new();
        let services = Services {
            discovery: Registry::new(
                dns,
                config.consul.clone(),
                metrics.clone(),
                shutdown.clone(),
                tracker.clone(),
            ),
            checks: Arc::new(Checks::new(shutdown.clone(), tracker.clone())),
            admin: metrics_addr.map(|addr| Arc::new(Admin::new(metrics.clone(), control.clone(), addr))),
            metrics: metrics.clone(),
            own: watch::Sender::new(Arc::default()),
            shutdown: shutdown.clone(),
            hard_stop: CancellationToken::new(),
            tracker,
        };
        let mut running = Running::start(config, sockets, services);
        if let (Some(socket), Some(addr), Some(admin)) = (admin, metrics_addr, running.services.admin.clone())
        {
            info!(%addr, "serving /metrics, /status and / over HTTP");
            let tracker = &running.services.tracker;
            tracker.spawn(crate::admin::serve(
                socket,
                admin,
                shutdown.clone(),
                tracker.clone(),
            ));
            tracker.spawn(shutdown.clone().run_until_cancelled_owned(upkeep(metrics)));
        }
        // Keeps the command channel open while we run.
        let _control = control;

        let mut first_answers = Some(Box::pin(running.first_answers()));
        loop {
            let (answers, grace_ends) = running.catalog_waits();
            tokio::select! {
                Some(command) = commands.recv() => running.handle(command).await,
                () = catalog::next_event(answers, grace_ends) => running.refresh_catalog().await,
                () = async { first_answers.as_mut().expect("awaited only while set").await },
                    if first_answers.is_some() => {
                    first_answers = None;
                    let summary = running.summary();
                    info!(%summary, "ready");
                    notify::ready(&summary);
                }
                _ = shutdown.cancelled() => break,
            }
        }
        notify::stopping("stopping: open connections are finishing");
        running.shut_down().await;
    }
}

/// One listener as it runs, across reloads; its settings are those of its
/// current [`Context`].
struct Serving {
    current: Current,
    /// Stops accepting (cancelled by shutdown too).
    stop: CancellationToken,
    /// The accept (TCP) or receive (UDP) loop, which holds the socket.
    serving: JoinHandle<()>,
}

/// The context new connections or flows take; a reload swaps it.
enum Current {
    Tcp {
        current: Arc<ArcSwap<Context<TcpSettings>>>,
        /// Open connections allowed (`max_connections`).
        limit: Arc<Semaphore>,
    },
    Udp(Arc<ArcSwap<Context<UdpSettings>>>),
}

impl Current {
    fn load(&self) -> Arc<Context> {
        match self {
            Current::Tcp { current, .. } => current.load_full(),
            Current::Udp(current) => current.load_full(),
        }
    }

    /// Gives new connections `listener`'s settings; returns what a lower
    /// connection limit still has to take back as connections close.
    fn advance(
        &self,
        listener: Listener,
        upstream: Upstream,
        metrics: ListenerMetrics,
    ) -> Option<impl Future<Output = ()> + use<>> {
        match (self, listener.mode) {
            (Current::Tcp { current, limit }, Mode::Tcp(tcp)) => {
                let previous = current.load();
                let owed = resize(limit, previous.settings.max_connections, tcp.max_connections);
                current.store(Arc::new(previous.next(listener, tcp, upstream, metrics)));
                owed
            }
            (Current::Udp(current), Mode::Udp(udp)) => {
                current.store(Arc::new(current.load().next(listener, udp, upstream, metrics)));
                None
            }
            // The plan rebinds a listener whose protocol changed.
            _ => None,
        }
    }
}

impl Serving {
    /// Stops accepting; open connections drain (`drain_timeout`). The one
    /// way a listener ends before shutdown, whatever its protocol.
    fn retire(&self) {
        self.stop.cancel();
        // As if every backend had left: open connections and flows drain.
        self.current.load().upstream.retire();
    }
}

/// What every listener shares, made once when the server starts.
struct Services {
    discovery: Registry,
    checks: Arc<Checks>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin>>,
    /// The sockets sluice listens on, which backends must not be.
    own: watch::Sender<Arc<OwnSockets>>,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown grace is over: open connections close.
    hard_stop: CancellationToken,
    /// Every task the server starts, so that shutdown can wait for them.
    tracker: TaskTracker,
}

/// The server as it runs: the configuration in force and its listeners.
/// [`Running::apply`] is the one place either changes.
struct Running {
    /// What the listeners run with now, as validated (but the metrics
    /// address, which stays the one bound at start).
    config: Arc<Config>,
    listeners: HashMap<String, Serving>,
    services: Services,
    /// The watch of Consul's catalog, with `[catalog]`.
    catalog: Option<catalog::Feed>,
}

/// A reload whose every step that can fail is done: sockets bound and the
/// DNS client made, so that applying it cannot fail halfway.
struct Prepared {
    plan: Plan,
    /// A socket for each listener that starts or rebinds.
    fresh: Vec<(Listener, Socket)>,
    /// Discovery switches to this DNS client (`None`: no listener needs DNS).
    dns: Option<Option<DnsClient>>,
}

impl Running {
    /// Starts `config`'s listeners on the sockets [`Server::bind`] made.
    fn start(config: Config, sockets: Vec<Socket>, services: Services) -> Running {
        let nothing: [Listener; 0] = [];
        let prepared = Prepared {
            plan: plan::plan(&nothing, &config.dns, &config.consul, &config),
            fresh: config.listeners.iter().cloned().zip(sockets).collect(),
            dns: None,
        };
        let config = Arc::new(config);
        let mut running = Running {
            config: config.clone(),
            listeners: HashMap::new(),
            services,
            catalog: None,
        };
        running.apply(config, prepared);
        running
    }

    /// Replaces the running configuration with `config`, or changes
    /// nothing if it cannot be applied; counts the outcome as `origin`'s.
    async fn reload(&mut self, mut config: Config, origin: Origin) -> Result<ReloadReport, Error> {
        if config.metrics != self.config.metrics {
            warn!("the metrics endpoint address only changes on restart");
            config.metrics = self.config.metrics;
        }
        let prepared = match self.prepare(&config) {
            // A port this change takes from a listener it stops (a file
            // listener on a catalog listener's port): that one stops first.
            Err(Error::Bind { addr, source, .. })
                if source.kind() == io::ErrorKind::AddrInUse && self.release(&config, addr).await =>
            {
                self.prepare(&config)
            }
            prepared => prepared,
        };
        let result = prepared.map(|prepared| self.apply(Arc::new(config), prepared));
        self.services.metrics.config_change(origin, result.is_ok());
        match &result {
            Ok(report) => info!(
                ?origin,
                added = ?report.added,
                removed = ?report.removed,
                changed = ?report.changed,
                "configuration reloaded"
            ),
            Err(e) => warn!(error = %e, "reload failed, the running configuration stays"),
        }
        result
    }

    /// Stops the catalog's listeners that hold `addr` and that `config`
    /// refused (a file or API listener has the port now), and waits until
    /// their sockets are closed; whether there were any.
    async fn release(&mut self, config: &Config, addr: SocketAddr) -> bool {
        let kept = |name: &str| config.listeners.iter().any(|l| l.name == name);
        let holders: Vec<String> = self
            .listeners
            .iter()
            .filter(|(name, serving)| {
                let ctx = serving.current.load();
                let from_catalog = ctx.config.origin == Origin::Catalog;
                from_catalog && binds_overlap(ctx.local_addr, addr) && !kept(name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &holders {
            if let Some(serving) = self.listeners.remove(name) {
                serving.retire();
                let _ = serving.serving.await;
            }
        }
        !holders.is_empty()
    }

    /// Plans the change to `config` and does what could fail.
    fn prepare(&self, config: &Config) -> Result<Prepared, Error> {
        let running = &self.config;
        let plan = plan::plan(&running.listeners, &running.dns, &running.consul, config);
        // A new DNS server, or the first listener that needs one.
        let dns = if plan.dns_changed || !self.services.discovery.has_dns() {
            Some(dns_client(config)?)
        } else {
            None
        };
        let mut fresh = Vec::new();
        for change in &plan.changes {
            if let Change::Start(listener) | Change::Rebind(listener) = change {
                fresh.push((listener.clone(), Socket::bind(listener)?));
            }
        }
        Ok(Prepared { plan, fresh, dns })
    }

    /// Makes `config`, prepared, the running configuration.
    fn apply(&mut self, config: Arc<Config>, prepared: Prepared) -> ReloadReport {
        let Prepared { plan, fresh, dns } = prepared;
        let mut report = ReloadReport::default();
        for change in &plan.changes {
            let (Change::Stop(name) | Change::Rebind(Listener { name, .. })) = change else {
                continue;
            };
            if let Some(serving) = self.listeners.remove(name) {
                serving.retire();
            }
            if let Change::Stop(name) = change {
                report.removed.push(name.clone());
            }
        }
        // Before any new context subscribes to a source.
        if let Some(dns) = dns {
            self.services.discovery.set_dns(dns);
        }
        if plan.consul_changed {
            self.services.discovery.set_consul(config.consul.clone());
        }
        for change in plan.changes {
            if let Change::Update {
                listener,
                same_backends,
            } = change
            {
                report.changed.push(listener.name.clone());
                self.update(listener, same_backends);
            }
        }
        for (listener, socket) in fresh {
            let addr = self.serve(&listener, socket);
            report.added.push((listener.name, addr));
        }
        self.services.discovery.retain(&config.listeners);
        self.config = config;
        self.follow_catalog();
        self.publish();
        report.added.sort();
        report.removed.sort();
        report.changed.sort();
        report
    }

    /// An upstream for `listener`, following its backends; with `seed` (the
    /// upstream it replaces, same backends), backend state carries over.
    fn upstream(&mut self, listener: &Listener, span: &Span, seed: Option<&Upstream>) -> Upstream {
        let services = &mut self.services;
        let snapshots = services.discovery.subscribe(&listener.backends);
        let checks = listener.health.as_ref().map(|_| services.checks.clone());
        let own = services.own.subscribe();
        let (upstream, follow) = span.in_scope(|| Upstream::follow(listener, snapshots, checks, seed, own));
        // In the listener's span: its lines name the listener.
        let follow = services.shutdown.clone().run_until_cancelled_owned(follow);
        services.tracker.spawn(follow.instrument(span.clone()));
        upstream
    }

    /// Serves `listener` on its new `socket`.
    fn serve(&mut self, listener: &Listener, socket: Socket) -> SocketAddr {
        let local_addr = socket.local_addr().unwrap_or(listener.bind);
        let span = info_span!("listener", name = %listener.name);
        let upstream = self.upstream(listener, &span, None);
        let (stop, tracker) = (self.services.shutdown.child_token(), &self.services.tracker);
        let (current, serving) = match socket {
            Socket::Tcp(socket, tcp) => {
                let (current, limit) = (
                    self.first_context(listener, tcp, local_addr, upstream, &span),
                    Arc::new(Semaphore::new(tcp.max_connections)),
                );
                let serve = proxy::tcp::serve(
                    socket,
                    current.clone(),
                    limit.clone(),
                    stop.clone(),
                    tracker.clone(),
                );
                let serving = tracker.spawn(serve.instrument(span.clone()));
                (Current::Tcp { current, limit }, serving)
            }
            Socket::Udp(socket, udp) => {
                let current = self.first_context(listener, udp, local_addr, upstream, &span);
                let serve = proxy::udp::serve(socket, current.clone(), stop.clone(), tracker.clone());
                let serving = tracker.spawn(serve.instrument(span.clone()));
                (Current::Udp(current), serving)
            }
        };
        span.in_scope(|| {
            info!(addr = %local_addr, protocol = %listener.protocol(), "listening");
            let trusts_all = listener.access.trusted_proxies.is_none();
            if matches!(listener.mode, Mode::Tcp(tcp) if tcp.accept_proxy) && trusts_all {
                info!(
                    "accept_proxy: every peer's PROXY header is believed (set trusted_proxies to limit it)"
                );
            }
        });
        let serving = Serving {
            current,
            stop,
            serving,
        };
        self.listeners.insert(listener.name.clone(), serving);
        local_addr
    }

    /// A new listener's first context, with its protocol's `settings`,
    /// behind the swap that reloads replace it through.
    fn first_context<S: Settings>(
        &self,
        listener: &Listener,
        settings: S,
        local_addr: SocketAddr,
        upstream: Upstream,
        span: &Span,
    ) -> Arc<ArcSwap<Context<S>>> {
        let metrics = self.services.metrics.listener(&listener.name);
        let hard_stop = self.services.hard_stop.clone();
        let ctx = Context::first(
            listener.clone(),
            settings,
            local_addr,
            upstream,
            metrics,
            hard_stop,
            span.clone(),
        );
        Arc::new(ArcSwap::from_pointee(ctx))
    }

    /// New settings for a listener on its socket: new connections get a
    /// new context; with other backends, the old ones' connections drain.
    fn update(&mut self, listener: Listener, same_backends: bool) {
        let Some(previous) = self.listeners.get(&listener.name).map(|s| s.current.load()) else {
            return;
        };
        let seed = same_backends.then_some(&previous.upstream);
        let upstream = self.upstream(&listener, &previous.span, seed);
        let metrics = self.services.metrics.listener(&listener.name);
        let serving = &self.listeners[&listener.name];
        if let Some(owed) = serving.current.advance(listener, upstream, metrics) {
            let owed = self.services.shutdown.clone().run_until_cancelled_owned(owed);
            self.services.tracker.spawn(owed);
        }
        if !same_backends {
            previous.upstream.retire();
        }
    }

    /// Completes once every listener running now has had its first
    /// discovery answer (a listener removed meanwhile counts as done).
    fn first_answers(&self) -> impl Future<Output = ()> + Send + use<> {
        let answers: Vec<_> = self
            .listeners
            .values()
            .map(|s| s.current.load().upstream.resolved())
            .collect();
        async move {
            for answer in answers {
                answer.await;
            }
        }
    }

    /// One line for the service manager: listeners and backends.
    fn summary(&self) -> String {
        let backends: Vec<_> = self
            .listeners
            .values()
            .flat_map(|s| s.current.load().upstream.current())
            .flat_map(|pool| pool.views())
            .collect();
        let healthy = backends.iter().filter(|b| b.available).count();
        let listeners = self.listeners.len();
        format!(
            "serving {listeners} listener(s), {} backend(s), {healthy} healthy",
            backends.len()
        )
    }

    /// Shows the current listeners and queries on the status page, and
    /// tells every upstream which sockets are sluice's own.
    fn publish(&self) {
        let contexts = || self.listeners.values().map(|l| l.current.load());
        if let Some(admin) = &self.services.admin {
            let mut listeners: Vec<Arc<Context>> = contexts().collect();
            listeners.sort_by(|a, b| a.config.name.cmp(&b.config.name));
            let queries = self.services.discovery.queries();
            let catalog = self.config.catalog.as_ref().map(|_| CatalogView {
                pending: self.catalog_pending(),
                refused: self.config.catalog_refused.clone(),
            });
            let token = self.config.api_token.clone();
            admin.live.publish(listeners, queries, token, catalog);
        }
        let own = OwnSockets::new(contexts().map(|ctx| (ctx.config.protocol(), ctx.local_addr)));
        self.services.own.send_if_modified(|current| {
            let changed = **current != own;
            if changed {
                *current = Arc::new(own);
            }
            changed
        });
    }

    async fn shut_down(self) {
        let tracker = &self.services.tracker;
        tracker.close();
        let grace = self.config.shutdown_grace;
        info!(?grace, "shutting down, letting open connections finish");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                open = tracker.len(),
                "shutdown grace over, closing the remaining connections"
            );
            self.services.hard_stop.cancel();
            // Connections wait on their backend's removal: remove them all,
            // and each sees the hard stop.
            for serving in self.listeners.values() {
                serving.current.load().upstream.retire();
            }
            tracker.wait().await;
        }
        info!("stopped");
    }
}

/// Resizes a connection limit; a lower one takes the free permits now and
/// returns the task that takes the rest as connections close (new clients
/// wait meanwhile, as at the limit).
fn resize(limit: &Arc<Semaphore>, old: usize, new: usize) -> Option<impl Future<Output = ()> + use<>> {
    if new >= old {
        limit.add_permits(new - old);
        return None;
    }
    let owed = (old - new) - limit.forget_permits(old - new);
    let limit = limit.clone();
    (owed > 0).then_some(async move {
        if let Ok(permits) = limit.acquire_many_owned(owed as u32).await {
            permits.forget();
        }
    })
}

/// Folds histogram samples into buckets now and then, so they never pile up.
async fn upkeep(metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    loop {
        ticks.tick().await;
        metrics.upkeep();
    }
}
