//! What the admin endpoint and the runtime API show of the running server:
//! the listeners and queries the server last published ([`Live`]), and the
//! bodies built from them for `/status`, `/ready` and the API's `state`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper::StatusCode;
use serde::Serialize;

use crate::config::{Balance, Listener, Origin, Protocol, Refusal, Secret};
use crate::discovery::QueryState;
use crate::net::binds_overlap;
use crate::proxy::Context;

/// The running listeners and queries; the server publishes anew on each
/// change, and every read sees one whole publication.
pub struct Live {
    started: Instant,
    view: ArcSwap<View>,
}

#[derive(Default)]
struct View {
    listeners: Vec<Arc<Context>>,
    queries: Vec<Arc<QueryState>>,
    api_token: Option<Secret>,
    catalog: Option<CatalogView>,
}

/// The catalog's state, with `[catalog]`.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogView {
    /// The catalog has not answered yet.
    #[serde(skip)]
    pub pending: bool,
    /// Claims not served, and why.
    pub refused: Vec<Refusal>,
}

/// The body of `/ready`.
#[derive(Debug, Serialize)]
pub(crate) struct Readiness {
    ready: bool,
    listeners: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    waiting_for: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: f64,
    pub listeners: Vec<ListenerStatus>,
    pub queries: Vec<QueryStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogView>,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    /// Where it was defined: the file, the API or the catalog.
    pub origin: Origin,
    pub bind: String,
    pub protocol: Protocol,
    /// The SRV name, or "static".
    pub query: String,
    pub balance: Balance,
    pub active_connections: usize,
    /// `false` until discovery has answered once.
    pub resolved: bool,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub priority: u16,
    pub weight: u16,
    pub healthy: bool,
    pub active_connections: usize,
    pub total_connections: u64,
    pub connect_failures: u64,
    pub ejections: u64,
}

#[derive(Debug, Serialize)]
pub struct QueryStatus {
    pub name: String,
    /// Unix time of the last successful lookup.
    pub last_success: Option<f64>,
    pub last_error: Option<String>,
    /// A Consul watch's last `X-Consul-Index`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

impl Live {
    pub(crate) fn new() -> Live {
        Live {
            started: Instant::now(),
            view: ArcSwap::default(),
        }
    }

    pub fn publish(
        &self,
        listeners: Vec<Arc<Context>>,
        queries: Vec<Arc<QueryState>>,
        api_token: Option<Secret>,
        catalog: Option<CatalogView>,
    ) {
        let view = View {
            listeners,
            queries,
            api_token,
            catalog,
        };
        self.view.store(Arc::new(view));
    }

    /// The listener bound where `addr` would bind (`protocol`), if any.
    pub(crate) fn listener_bound_at(&self, protocol: Protocol, addr: SocketAddr) -> Option<String> {
        let view = self.view.load();
        let holder = view
            .listeners
            .iter()
            .find(|ctx| ctx.config.protocol() == protocol && binds_overlap(ctx.local_addr, addr))?;
        Some(holder.config.name.clone())
    }

    /// 200 once every listener is bound (it is, once shown here) and has
    /// had its first discovery answer; 503 with what is awaited until then.
    pub(crate) fn readiness(&self) -> (StatusCode, Readiness) {
        let view = self.view.load();
        let catalog = view.catalog.as_ref().filter(|c| c.pending);
        let waiting_for: Vec<String> = catalog
            .map(|_| "the first answer of the Consul catalog".to_string())
            .into_iter()
            .chain(view.listeners.iter().filter_map(|ctx| ctx.waiting_for()))
            .collect();
        let ready = waiting_for.is_empty();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let listeners = view.listeners.len();
        let readiness = Readiness {
            ready,
            listeners,
            waiting_for,
        };
        (status, readiness)
    }

    /// The token the API's changes need, if configured.
    pub(crate) fn api_token(&self) -> Option<Secret> {
        self.view.load().api_token.clone()
    }

    /// The running listeners' settings, by name.
    pub(crate) fn listeners(&self) -> Vec<Listener> {
        self.view
            .load()
            .listeners
            .iter()
            .map(|ctx| ctx.config.clone())
            .collect()
    }

    pub fn status(&self) -> Status {
        let view = self.view.load();
        let listeners = view
            .listeners
            .iter()
            .map(|ctx| {
                let config = &ctx.config;
                let pool = ctx.upstream.current();
                let backends = pool
                    .iter()
                    .flat_map(|p| p.views())
                    .map(|b| BackendStatus {
                        address: b.addr.to_string(),
                        priority: b.priority,
                        weight: b.weight,
                        healthy: b.available,
                        active_connections: b.active,
                        total_connections: b.total,
                        connect_failures: b.connect_failures,
                        ejections: b.ejections,
                    })
                    .collect();
                ListenerStatus {
                    name: config.name.clone(),
                    origin: config.origin,
                    bind: ctx.local_addr.to_string(),
                    protocol: config.protocol(),
                    query: config.backends.name(),
                    balance: config.balance,
                    active_connections: ctx.active.load(Relaxed),
                    resolved: pool.is_some(),
                    backends,
                }
            })
            .collect();
        let queries = view
            .queries
            .iter()
            .map(|q| {
                let health = q.health();
                QueryStatus {
                    name: q.name.clone(),
                    last_success: health.last_success.map(crate::unix_seconds),
                    last_error: health.last_error,
                    index: health.index,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            listeners,
            queries,
            catalog: view.catalog.clone(),
        }
    }
}
