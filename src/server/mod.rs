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

mod changes;
mod plan;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket as Socket2, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::Error;
use crate::admin::Admin;
use crate::balancer::Upstream;
use crate::config::{
    BackendSource, Config, ConsulSettings, DnsSettings, Listener, Mode, Origin, Protocol, Secret, Sources,
};
use crate::discovery::Registry;
use crate::discovery::dns::DnsClient;
use crate::health::Checks;
use crate::metrics::Metrics;
use crate::net::OwnSockets;
use crate::notify;
use crate::proxy::{self, Context, Listening};
use changes::Command;
use plan::Change;

/// Pending connections the kernel queues per listener while at `max_connections`.
const LISTEN_BACKLOG: i32 = 1024;
/// Room for UDP bursts (statsd flushes); the kernel caps it at net.core.rmem_max.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;
/// How often histogram samples are folded into buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A bound listening socket.
enum Socket {
    Tcp(Listening),
    Udp(UdpSocket),
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
            match listener.protocol() {
                Protocol::Tcp => listen_proxied(socket, listener.bind).map(Socket::Tcp),
                Protocol::Udp => {
                    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
                    socket.set_nonblocking(true)?;
                    socket.bind(&listener.bind.into())?;
                    UdpSocket::from_std(socket.into()).map(Socket::Udp)
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
            Socket::Tcp(s) => s.get_ref().local_addr(),
            Socket::Udp(s) => s.local_addr(),
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

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// New listeners with the address they bound.
    pub added: Vec<(String, SocketAddr)>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

pub use changes::{ApiChange, ApiError, Control};

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
        let admin_view =
            metrics_addr.map(|addr| Arc::new(Admin::new(metrics.clone(), control.clone(), addr)));
        let mut running = Running {
            listeners: HashMap::new(),
            own: watch::Sender::new(Arc::default()),
            dns: config.dns.clone(),
            consul: config.consul.clone(),
            metrics_addr: config.metrics,
            discovery: Registry::new(dns, config.consul.clone(), metrics.clone(), shutdown.clone()),
            checks: Arc::new(Checks::new(shutdown.clone())),
            admin: admin_view,
            metrics: metrics.clone(),
            sources: config.sources.clone(),
            runtime_file: config.runtime_file.clone(),
            api_token: config.api_token.clone(),
            shutdown_grace: config.shutdown_grace,
            shutdown: shutdown.clone(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        for (listener, socket) in config.listeners.iter().zip(sockets) {
            running.start(listener, socket);
        }
        running.publish();
        if let (Some(socket), Some(addr), Some(admin)) = (admin, metrics_addr, running.admin.clone()) {
            info!(%addr, "serving /metrics, /status and / over HTTP");
            tokio::spawn(crate::admin::serve(socket, admin, shutdown.clone()));
            tokio::spawn(upkeep(metrics, shutdown.clone()));
        }
        // Keeps the command channel open while we run.
        let _control = control;

        let mut first_answers = Some(Box::pin(running.first_answers()));
        loop {
            tokio::select! {
                Some(command) = commands.recv() => running.handle(command).await,
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

/// One listener as it runs, across reloads; what its connections see is its
/// current [`Context`].
struct Serving {
    config: Listener,
    /// The context new connections take; a reload swaps it.
    current: Arc<ArcSwap<Context>>,
    /// TCP: open connections allowed (`max_connections`).
    limit: Arc<Semaphore>,
    /// Stops accepting (cancelled by shutdown too).
    stop: CancellationToken,
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

struct Running {
    listeners: HashMap<String, Serving>,
    /// The sockets of `listeners`, which backends must not be.
    own: watch::Sender<Arc<OwnSockets>>,
    /// DNS as configured.
    dns: DnsSettings,
    /// Consul's address and token as configured.
    consul: ConsulSettings,
    /// As configured at start (the endpoint is not rebound on reload).
    metrics_addr: Option<SocketAddr>,
    discovery: Registry,
    checks: Arc<Checks>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<Admin>>,
    /// What the running configuration was made from: a change replaces one part.
    sources: Sources,
    /// Where the API's listeners are saved.
    runtime_file: Option<PathBuf>,
    /// What the API's changes need, as configured.
    api_token: Option<Secret>,
    shutdown_grace: Duration,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// An upstream for `listener`, following its backends; with `seed` (the
    /// upstream it replaces, same backends), backend state carries over.
    fn upstream(&mut self, listener: &Listener, span: &Span, seed: Option<&Upstream>) -> Upstream {
        let snapshots = self.discovery.subscribe(&listener.backends);
        let checks = listener.health.as_ref().map(|_| self.checks.clone());
        let own = self.own.subscribe();
        span.in_scope(|| Upstream::follow(listener, snapshots, checks, seed, own))
    }

    fn start(&mut self, listener: &Listener, socket: Socket) -> SocketAddr {
        let local_addr = socket.local_addr().unwrap_or(listener.bind);
        let span = info_span!("listener", name = %listener.name);
        let upstream = self.upstream(listener, &span, None);
        let metrics = self.metrics.listener(&listener.name);
        let ctx = Context::first(
            listener.clone(),
            local_addr,
            upstream,
            metrics,
            self.hard_stop.clone(),
            span,
        );
        let max_connections = match listener.mode {
            Mode::Tcp(tcp) => tcp.max_connections,
            Mode::Udp(_) => 0,
        };
        let serving = Serving {
            config: listener.clone(),
            current: Arc::new(ArcSwap::new(Arc::new(ctx))),
            limit: Arc::new(Semaphore::new(max_connections)),
            stop: self.shutdown.child_token(),
        };
        let (current, stop, span) = (
            serving.current.clone(),
            serving.stop.clone(),
            serving.current.load().span.clone(),
        );
        match socket {
            Socket::Tcp(socket) => {
                let serve =
                    proxy::tcp::serve(socket, current, serving.limit.clone(), stop, self.tracker.clone());
                self.tracker.spawn(serve.instrument(span.clone()));
            }
            Socket::Udp(socket) => {
                self.tracker
                    .spawn(proxy::udp::serve(socket, current, stop).instrument(span.clone()));
            }
        }
        span.in_scope(|| info!(addr = %local_addr, protocol = %listener.protocol(), "listening"));
        self.listeners.insert(listener.name.clone(), serving);
        local_addr
    }

    /// New settings for a listener on its socket: new connections get a
    /// new context; with other backends, the old ones' connections drain.
    fn update(&mut self, listener: Listener, same_backends: bool) {
        let Some(mut serving) = self.listeners.remove(&listener.name) else {
            return;
        };
        let previous = serving.current.load_full();
        let seed = same_backends.then_some(&previous.upstream);
        let upstream = self.upstream(&listener, &previous.span, seed);
        let metrics = self.metrics.listener(&listener.name);
        if let (Mode::Tcp(old), Mode::Tcp(new)) = (serving.config.mode, listener.mode) {
            resize(&serving.limit, old.max_connections, new.max_connections);
        }
        serving
            .current
            .store(Arc::new(previous.next(listener.clone(), upstream, metrics)));
        if !same_backends {
            previous.upstream.retire();
        }
        serving.config = listener;
        self.listeners.insert(serving.config.name.clone(), serving);
    }

    fn reload(&mut self, config: Config, origin: Origin) -> Result<ReloadReport, Error> {
        let running = self.listeners.values().map(|s| &s.config);
        let plan = plan::plan(running, &self.dns, &self.consul, &config);
        // A new DNS server, or the first listener that needs one.
        let dns = if plan.dns_changed || !self.discovery.has_dns() {
            Some(dns_client(&config)?)
        } else {
            None
        };
        // Bind whatever needs a new socket first: a failure there changes nothing.
        let mut fresh = Vec::new();
        for change in &plan.changes {
            if let Change::Start(listener) | Change::Rebind(listener) = change {
                fresh.push((listener.clone(), Socket::bind(listener)?));
            }
        }

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
            self.discovery.set_dns(dns);
        }
        if plan.consul_changed {
            self.discovery.set_consul(config.consul.clone());
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
            let addr = self.start(&listener, socket);
            report.added.push((listener.name, addr));
        }
        if self.metrics_addr != config.metrics {
            warn!("the metrics endpoint address only changes on restart");
        }
        self.dns = config.dns.clone();
        self.consul = config.consul.clone();
        self.discovery.retain(&config.listeners);
        self.shutdown_grace = config.shutdown_grace;
        self.api_token = config.api_token.clone();
        self.publish();
        report.added.sort();
        report.removed.sort();
        report.changed.sort();
        info!(
            ?origin,
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            "configuration reloaded"
        );
        Ok(report)
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
        if let Some(admin) = &self.admin {
            let mut listeners: Vec<Arc<Context>> =
                self.listeners.values().map(|l| l.current.load_full()).collect();
            listeners.sort_by(|a, b| a.config.name.cmp(&b.config.name));
            admin.publish(listeners, self.discovery.queries(), self.api_token.clone());
        }
        let own = OwnSockets::new(
            self.listeners
                .values()
                .map(|serving| (serving.config.protocol(), serving.current.load().local_addr)),
        );
        self.own.send_if_modified(|current| {
            let changed = **current != own;
            if changed {
                *current = Arc::new(own);
            }
            changed
        });
    }

    async fn shut_down(self) {
        self.tracker.close();
        let grace = self.shutdown_grace;
        info!(?grace, "shutting down, letting open connections finish");
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            warn!(
                open = self.tracker.len(),
                "shutdown grace over, closing the remaining connections"
            );
            self.hard_stop.cancel();
            // Connections wait on their backend's removal: remove them all,
            // and each sees the hard stop.
            for serving in self.listeners.values() {
                serving.current.load().upstream.retire();
            }
            self.tracker.wait().await;
        }
        info!("stopped");
    }
}

/// Resizes a connection limit; a lower one takes the free permits now and
/// the rest as connections close (new clients wait meanwhile, as at the limit).
fn resize(limit: &Arc<Semaphore>, old: usize, new: usize) {
    if new >= old {
        limit.add_permits(new - old);
        return;
    }
    let owed = (old - new) - limit.forget_permits(old - new);
    if owed > 0 {
        let limit = limit.clone();
        tokio::spawn(async move {
            if let Ok(permits) = limit.acquire_many_owned(owed as u32).await {
                permits.forget();
            }
        });
    }
}

/// Folds histogram samples into buckets now and then, so they never pile up.
async fn upkeep(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = ticks.tick() => metrics.upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}
