//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/status` (JSON),
//! `/` (an HTML status page in the spirit of HAProxy's stats page),
//! `/healthz`, `/ready` (200 once every listener has its first discovery
//! answer, 503 naming what it waits for), and the runtime API under `/v1/`
//! ([`crate::api`]).
//! Everything is read from the listeners' live state on request; nothing
//! here is on a forwarding path.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::Control;
use crate::config::{Balance, Listener, Protocol, Secret};
use crate::discovery::QueryState;
use crate::metrics::{self, LiveFamily, Metrics};
use crate::net::binds_overlap;
use crate::proxy::Context;

/// Seconds between refreshes of the HTML page.
const PAGE_REFRESH_SECONDS: u32 = 2;
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection is kept.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the endpoint reads from; the server publishes a new view on reload.
pub struct Admin {
    started: Instant,
    metrics: Arc<Metrics>,
    view: ArcSwap<View>,
    /// Where the API's changes go.
    pub(crate) control: Control,
    /// The endpoint's own address.
    pub(crate) addr: SocketAddr,
}

#[derive(Default)]
struct View {
    listeners: Vec<Arc<Context>>,
    queries: Vec<Arc<QueryState>>,
    api_token: Option<Secret>,
}

/// The body of `/ready`.
#[derive(Debug, Serialize)]
struct Readiness {
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
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
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

impl Admin {
    pub fn new(metrics: Arc<Metrics>, control: Control, addr: SocketAddr) -> Admin {
        Admin {
            started: Instant::now(),
            metrics,
            view: ArcSwap::default(),
            control,
            addr,
        }
    }

    pub fn publish(
        &self,
        listeners: Vec<Arc<Context>>,
        queries: Vec<Arc<QueryState>>,
        api_token: Option<Secret>,
    ) {
        let view = View {
            listeners,
            queries,
            api_token,
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
    fn readiness(&self) -> (StatusCode, Readiness) {
        let view = self.view.load();
        let waiting_for: Vec<String> = view
            .listeners
            .iter()
            .filter_map(|ctx| ctx.waiting_for())
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
        }
    }

    /// The Prometheus exposition: recorder series plus live per-backend ones.
    pub fn render_metrics(&self) -> String {
        let status = self.status();
        let mut active = LiveFamily::new(
            metrics::LISTENER_ACTIVE_CONNECTIONS,
            "gauge",
            "Client connections (UDP: flows) open now.",
        );
        let mut flows = LiveFamily::new(metrics::UDP_FLOWS_ACTIVE, "gauge", "UDP flows tracked now.");
        let mut backends = LiveFamily::new(metrics::BACKENDS, "gauge", "Backends in the set, by state.");
        let mut total = LiveFamily::new(
            metrics::BACKEND_CONNECTIONS_TOTAL,
            "counter",
            "Connections established to the backend.",
        );
        let mut open = LiveFamily::new(
            metrics::BACKEND_ACTIVE_CONNECTIONS,
            "gauge",
            "Connections open to the backend now.",
        );
        let mut failures = LiveFamily::new(
            metrics::BACKEND_CONNECT_FAILURES_TOTAL,
            "counter",
            "Failed connection attempts to the backend.",
        );
        let mut ejections = LiveFamily::new(
            metrics::BACKEND_EJECTIONS_TOTAL,
            "counter",
            "Times the backend was ejected after connect failures in a row.",
        );
        for l in &status.listeners {
            let listener = (metrics::LABEL_LISTENER, l.name.clone());
            let open_now = (vec![listener.clone()], l.active_connections as f64);
            // A UDP listener's flows are its connections, for dashboards
            // that sum over every listener; sluice_udp_flows_active as well.
            if l.protocol == Protocol::Udp {
                flows.series.push(open_now.clone());
            }
            active.series.push(open_now);
            let healthy = l.backends.iter().filter(|b| b.healthy).count();
            for (state, count) in [("healthy", healthy), ("unhealthy", l.backends.len() - healthy)] {
                let labels = vec![listener.clone(), (metrics::LABEL_STATE, state.to_string())];
                backends.series.push((labels, count as f64));
            }
            for b in &l.backends {
                let labels = vec![listener.clone(), (metrics::LABEL_BACKEND, b.address.clone())];
                total.series.push((labels.clone(), b.total_connections as f64));
                open.series.push((labels.clone(), b.active_connections as f64));
                failures.series.push((labels.clone(), b.connect_failures as f64));
                ejections.series.push((labels, b.ejections as f64));
            }
        }
        let mut families = vec![active, flows, backends, total, open, failures, ejections];
        families.extend(metrics::process_families());
        self.metrics.render(&families)
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path().starts_with("/v1/") {
            return crate::api::respond(self, req).await;
        }
        // HEAD answers as GET (hyper leaves the body out).
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = Response::new(Full::new(Bytes::from("GET or HEAD only\n")));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let (status, content_type, body) = match req.uri().path() {
            "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", self.render_metrics()),
            "/status" => {
                let json = serde_json::to_string_pretty(&self.status()).unwrap_or_default();
                (StatusCode::OK, "application/json", json)
            }
            "/" => (StatusCode::OK, "text/html; charset=utf-8", html(&self.status())),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
            "/ready" => {
                let (status, readiness) = self.readiness();
                let json = serde_json::to_string_pretty(&readiness).unwrap_or_default();
                (status, "application/json", json + "\n")
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// Serves HTTP/1 on `listener` until `shutdown`, within limits that keep a
/// misbehaving client from costing the proxy anything: at most
/// [`MAX_CONNECTIONS`] at once (more wait in the kernel's backlog), each
/// request head within [`HEADER_TIMEOUT`] (also how long an idle keep-alive
/// connection stays), and each connection at most [`CONNECTION_LIFETIME`].
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = shutdown.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        let http = http.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(req).await) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    // Finish the response under way, if the client reads it.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, connection).await;
                }
                _ = shutdown.cancelled() => {}
            }
            drop(slot);
        });
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The status page: one table per listener, no external assets.
fn html(status: &Status) -> String {
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{PAGE_REFRESH_SECONDS}\">\
         <title>sluice status</title><style>\
         body{{font:13px sans-serif;margin:1em;background:#f6f6f0}}\
         h1{{font-size:18px}} h2{{font-size:14px;margin:1.2em 0 .3em}}\
         table{{border-collapse:collapse;min-width:50em}}\
         th,td{{border:1px solid #999;padding:2px 8px;text-align:right}}\
         th{{background:#20304a;color:#fff}} td:first-child,th:first-child{{text-align:left}}\
         tr.up{{background:#c8f0c0}} tr.down{{background:#f4b0a8}} .meta{{color:#555}}\
         </style></head><body><h1>sluice {} &mdash; up {:.0}s</h1>",
        status.version, status.uptime_seconds
    );
    for l in &status.listeners {
        let _ = write!(
            page,
            "<h2 id=\"{name}\">{name}</h2><p class=\"meta\">{bind}/{protocol} &rarr; {query} \
             ({balance}), {active} open connection(s){pending}</p>\
             <table><tr><th>backend</th><th>priority</th><th>weight</th><th>status</th>\
             <th>active</th><th>total</th><th>connect failures</th></tr>",
            name = escape(&l.name),
            bind = escape(&l.bind),
            protocol = l.protocol,
            query = escape(&l.query),
            balance = l.balance,
            active = l.active_connections,
            pending = if l.resolved {
                ""
            } else {
                ", waiting for the first DNS answer"
            },
        );
        for b in &l.backends {
            let (class, state) = if b.healthy { ("up", "UP") } else { ("down", "DOWN") };
            let _ = write!(
                page,
                "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{state}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&b.address),
                b.priority,
                b.weight,
                b.active_connections,
                b.total_connections,
                b.connect_failures
            );
        }
        if l.backends.is_empty() {
            page.push_str("<tr><td colspan=\"7\">no backends</td></tr>");
        }
        page.push_str("</table>");
    }
    page.push_str(
        "<h2>DNS queries</h2><table><tr><th>query</th><th>last success</th><th>last error</th></tr>",
    );
    let now = crate::unix_seconds(SystemTime::now());
    for q in &status.queries {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&q.name),
            q.last_success
                .map_or("never".into(), |t| format!("{:.1}s ago", (now - t).max(0.0))),
            escape(q.last_error.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table></body></html>\n");
    page
}
