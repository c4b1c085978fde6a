//! sluice: a Layer-4 TCP load balancer whose backends come from DNS SRV
//! records (Consul's DNS interface first of all), refreshed and diffed
//! continuously.
//!
//! Data flows one way: config → discovery → balancer → proxy.
//!
//! - [`config`]: the TOML file and CLI shorthands, validated into a [`Config`].
//! - [`discovery`]: one task per distinct SRV query (or static list), each
//!   publishing immutable [`discovery::BackendSet`] snapshots on a watch channel.
//! - [`balancer`]: per-listener pools built from snapshots, and backend choice
//!   (round-robin, least-conn, random, p2c, maglev).
//! - [`proxy`]: accept loops and byte forwarding with half-close and idle timeout.
//! - [`metrics`]: metric names and the per-server Prometheus recorder.
//! - [`admin`]: the HTTP endpoint for /metrics, /status, / and /healthz.
//!
//! [`Server::bind`] binds every listener (so tests can use port 0 and read the
//! address back), [`Server::run`] serves until its shutdown token is cancelled,
//! then drains for `shutdown_grace`.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod discovery;
pub mod metrics;
pub mod proxy;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use socket2::{Domain, Socket as Socket2, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

use balancer::Upstream;
use config::{BackendSource, Listener, Protocol};
use discovery::dns::DnsClient;
use metrics::Metrics;

/// Pending connections the kernel queues per listener while we are at `max_connections`.
const LISTEN_BACKLOG: i32 = 1024;
const UDP_RECEIVE_BUFFER: usize = 4 << 20;
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener '{listener}': cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("no DNS server to ask: set `dns` in the config or pass --dns ({0})")]
    NoDns(io::Error),
    #[error("metrics endpoint: cannot bind {addr}: {source}")]
    BindMetrics { addr: SocketAddr, source: io::Error },
}

/// A bound listening socket.
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Udp(s) => s.local_addr(),
        }
    }
}

/// Every listener bound, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    listeners: Vec<Socket>,
    admin: Option<TcpListener>,
    dns: Option<DnsClient>,
}

impl Server {
    /// Binds every listener; fails naming the listener whose address is taken.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let uses_dns = config
            .listeners
            .iter()
            .any(|l| matches!(l.backends, BackendSource::Dns(_)));
        let dns = match (uses_dns, config.dns) {
            (false, _) => None,
            (true, Some(server)) => Some(DnsClient::new(server)),
            (true, None) => Some(DnsClient::system().map_err(Error::NoDns)?),
        };
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let bound = match l.protocol {
                    Protocol::Tcp => bind_tcp(l.bind).map(Socket::Tcp),
                    Protocol::Udp => bind_udp(l.bind).map(Socket::Udp),
                };
                bound.map_err(|source| Error::Bind {
                    listener: l.name.clone(),
                    addr: l.bind,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let admin = match config.metrics {
            Some(addr) => Some(bind_tcp(addr).map_err(|source| Error::BindMetrics { addr, source })?),
            None => None,
        };
        Ok(Server {
            config,
            listeners,
            admin,
            dns,
        })
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
            .zip(&self.listeners)
            .map(|(l, sock)| (l.name.clone(), sock.local_addr().unwrap_or(l.bind)))
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets open
    /// connections finish for up to `shutdown_grace` before closing them.
    pub async fn run(self, shutdown: CancellationToken) {
        let addrs = self.local_addrs();
        let metrics_addr = self.metrics_addr();
        let Server {
            config,
            listeners,
            admin,
            dns,
        } = self;
        if let Some(dns) = &dns {
            info!(server = %dns.server(), "discovering backends through DNS");
        }
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new(admin.is_some()));
        let discovered = discovery::start(&config.listeners, dns.as_ref(), &metrics, &shutdown, &tracker);
        let mut contexts = Vec::new();
        for (((listener, socket), snapshots), (_, addr)) in config
            .listeners
            .iter()
            .zip(listeners)
            .zip(discovered.snapshots)
            .zip(addrs)
        {
            let ctx = Arc::new(proxy::Context {
                config: Listener::clone(listener),
                local_addr: addr,
                upstream: Upstream::follow(listener.balance, snapshots, shutdown.clone()),
                metrics: metrics.listener(&listener.name),
                active: AtomicUsize::new(0),
                hard_stop: hard_stop.clone(),
            });
            contexts.push(ctx.clone());
            info!(listener = %listener.name, %addr, protocol = %listener.protocol, "listening");
            match socket {
                Socket::Tcp(socket) => {
                    tracker.spawn(proxy::tcp::serve(socket, ctx, shutdown.clone(), tracker.clone()));
                }
                Socket::Udp(socket) => {
                    tracker.spawn(proxy::udp::serve(socket, ctx, shutdown.clone()));
                }
            }
        }
        if let (Some(socket), Some(addr)) = (admin, metrics_addr) {
            let admin = Arc::new(admin::Admin {
                started: std::time::Instant::now(),
                metrics: metrics.clone(),
                listeners: contexts,
                queries: discovered.queries,
            });
            info!(%addr, "serving /metrics, /status and / over HTTP");
            tokio::spawn(admin::serve(socket, admin, shutdown.clone()));
            tokio::spawn(upkeep(metrics, shutdown.clone()));
        }

        shutdown.cancelled().await;
        tracker.close();
        let grace = config.shutdown_grace;
        info!(?grace, "shutting down, letting open connections finish");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                open = tracker.len(),
                "shutdown grace over, closing the remaining connections"
            );
            hard_stop.cancel();
            tracker.wait().await;
        }
        info!("stopped");
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

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket2::new(Domain::for_address(addr), Type::DGRAM, None)?;
    // Room for bursts (statsd flushes); the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket2::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Restarting must not fail on the old process's TIME_WAIT connections.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}
