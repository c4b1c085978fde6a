//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/status` (JSON),
//! `/` (an HTML status page in the spirit of HAProxy's stats page),
//! `/healthz`, `/ready` (200 once every listener has its first discovery
//! answer, 503 naming what it waits for), and the runtime API under `/v1/`
//! (`api`). Everything is read on request from what the server
//! last published (`status::Live`); nothing here is on a
//! forwarding path.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::api::Api;
use crate::config::{Protocol, Refusal, RefusalReason};
use crate::control::Control;
use crate::metrics::{self, LiveFamily, Metrics};
use crate::status::{Live, Status};

/// Seconds between refreshes of the HTML page.
const PAGE_REFRESH_SECONDS: u32 = 2;
/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head, and how long an idle
/// keep-alive connection is kept.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, however busy.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the endpoint reads from.
pub(crate) struct Admin {
    metrics: Arc<Metrics>,
    /// What the server last published.
    pub(crate) live: Live,
    /// Where the API's changes go.
    control: Control,
    /// The endpoint's own address.
    addr: SocketAddr,
}

impl Admin {
    pub(crate) fn new(metrics: Arc<Metrics>, control: Control, addr: SocketAddr) -> Admin {
        Admin {
            metrics,
            live: Live::new(),
            control,
            addr,
        }
    }

    /// The Prometheus exposition: recorder series plus live per-backend ones.
    pub(crate) fn render_metrics(&self) -> String {
        let status = self.live.status();
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
        if let Some(catalog) = &status.catalog {
            families.push(catalog_refused(&catalog.refused));
        }
        families.extend(metrics::process_families());
        self.metrics.render(&families)
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path().starts_with("/v1/") {
            let api = Api {
                live: &self.live,
                control: &self.control,
                admin_addr: self.addr,
            };
            return crate::api::respond(&api, req).await;
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
                let json = serde_json::to_string_pretty(&self.live.status()).unwrap_or_default();
                (StatusCode::OK, "application/json", json)
            }
            "/" => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                html(&self.live.status()),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
            "/ready" => {
                let (status, readiness) = self.live.readiness();
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
pub(crate) async fn serve(
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

/// `sluice_catalog_refused{reason}`: the catalog's claims refused now, every
/// reason shown (0 too), so that an alert can watch one series.
fn catalog_refused(refused: &[Refusal]) -> LiveFamily {
    let mut family = LiveFamily::new(
        metrics::CATALOG_REFUSED,
        "gauge",
        "Claims of the Consul catalog's services not served now, by reason.",
    );
    for reason in RefusalReason::ALL {
        let count = refused.iter().filter(|r| r.reason == reason).count();
        let labels = vec![(metrics::LABEL_REASON, reason.label().to_string())];
        family.series.push((labels, count as f64));
    }
    family
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
