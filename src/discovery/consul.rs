//! Consul's health API as a discovery source (`discovery = "consul"`): one
//! blocking-query watch per distinct (service, tag, datacenter) on
//! `/v1/health/service/<service>?passing`, so a new instance is used, and a
//! critical one dropped, as soon as Consul knows, not at the next poll.
//!
//! Consul's rules for blocking queries are kept: the index comes from every
//! answer's `X-Consul-Index`; an index that goes backwards restarts from 0;
//! an index below 1 is never waited on; `wait` is jittered; an answer with
//! an unchanged index that came back early (a misbehaving server) slows the
//! loop down, to one request every 15 seconds at worst, and requests are at
//! least 100 ms apart anyway; errors back off from 250 ms up to 30 s. What
//! the watch learns goes through the same [`Publisher`] as DNS answers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::{Backend, BackendSet, Publisher, QueryState};
use crate::alarm::Alarm;
use crate::config::{ConsulQuery, ConsulSettings};

/// How long one request blocks, before jitter.
const WAIT: Duration = Duration::from_secs(300);
/// Consul adds up to wait/16 to every wait; the client waits longer still.
const WAIT_SLACK: Duration = Duration::from_secs(5);
/// Requests are at least this far apart (as consul-template's).
const MIN_GAP: Duration = Duration::from_millis(100);
/// An early answer with an unchanged index delays the next request by this
/// much, doubling up to [`MAX_SAME_INDEX_DELAY`].
const SAME_INDEX_DELAY: Duration = Duration::from_secs(1);
const MAX_SAME_INDEX_DELAY: Duration = Duration::from_secs(15);
/// Backoff after an error, doubling up to [`MAX_ERROR_BACKOFF`].
const ERROR_BACKOFF: Duration = Duration::from_millis(250);
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(30);
/// The largest answer read (thousands of instances fit).
const MAX_BODY: usize = 16 << 20;
/// Host-name addresses resolved at once, and how long each may take.
const RESOLVES_AT_ONCE: usize = 16;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry of Consul's answer; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
}

/// Why a request gave no usable answer.
#[derive(Debug)]
pub(super) enum WatchError {
    Connect(std::io::Error),
    Http(hyper::Error),
    Status(StatusCode, String),
    Body(String),
    Timeout(Duration),
}

impl fmt::Display for WatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchError::Connect(e) => write!(f, "cannot connect: {e}"),
            WatchError::Http(e) => write!(f, "HTTP: {e}"),
            WatchError::Status(status, body) => write!(f, "answered {status}: {}", body.trim()),
            WatchError::Body(e) => write!(f, "unreadable answer: {e}"),
            WatchError::Timeout(wait) => write!(f, "no answer within {wait:?}"),
        }
    }
}

/// One HTTP/1.1 connection to Consul, made when needed and kept.
pub(super) struct Connection {
    settings: ConsulSettings,
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// Where the connection's driver runs.
    tracker: TaskTracker,
}

impl Connection {
    pub(super) fn new(settings: ConsulSettings, tracker: TaskTracker) -> Connection {
        Connection {
            settings,
            sender: None,
            tracker,
        }
    }

    /// One health query for `query` at `index`: its `X-Consul-Index` and entries.
    async fn health(&mut self, query: &ConsulQuery, index: u64) -> Result<(u64, Vec<Entry>), WatchError> {
        let mut params = String::from("passing=true");
        if let Some(tag) = &query.tag {
            params.push_str(&format!("&tag={tag}"));
        }
        if let Some(dc) = &query.datacenter {
            params.push_str(&format!("&dc={dc}"));
        }
        let path = format!("/v1/health/service/{}", query.service);
        self.blocking_get(&path, &params, index).await
    }

    /// One blocking query of `path` with `params` at `index`: its
    /// `X-Consul-Index` and body.
    pub(super) async fn blocking_get<T: DeserializeOwned>(
        &mut self,
        path: &str,
        params: &str,
        index: u64,
    ) -> Result<(u64, T), WatchError> {
        let sender = match &mut self.sender {
            Some(sender) if sender.is_ready() => sender,
            _ => {
                let addr = &self.settings.addr;
                let stream = TcpStream::connect((addr.host.as_str(), addr.port))
                    .await
                    .map_err(WatchError::Connect)?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(WatchError::Http)?;
                // Drives the connection; ends when the sender is dropped.
                self.tracker.spawn(connection);
                self.sender.insert(sender)
            }
        };
        // Jittered, so the watches of many services do not return together.
        let wait = WAIT.mul_f64(0.9 + fastrand::f64() * 0.2);
        let uri = format!(
            "{}{path}?{params}&index={index}&wait={}ms",
            self.settings.addr.prefix,
            wait.as_millis()
        );
        let mut request = Request::get(uri).header(HOST, &self.settings.addr.host);
        if let Some(token) = &self.settings.token {
            request = request.header("X-Consul-Token", &token.0);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| WatchError::Body(e.to_string()))?;
        let limit = wait + wait / 16 + WAIT_SLACK;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(WatchError::Http)?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| WatchError::Body(e.to_string()))?
                .to_bytes();
            if status != StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(WatchError::Status(status, text));
            }
            let index = index.ok_or_else(|| WatchError::Body("no valid X-Consul-Index header".into()))?;
            let entries = serde_json::from_slice(&body).map_err(|e| WatchError::Body(e.to_string()))?;
            Ok((index, entries))
        };
        let result = timeout(limit, exchange)
            .await
            .unwrap_or(Err(WatchError::Timeout(limit)));
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// Watches `query` until `shutdown`, publishing each change through
/// `publisher` as it happens.
pub(crate) async fn watch(
    settings: ConsulSettings,
    query: ConsulQuery,
    mut publisher: Publisher,
    state: Arc<QueryState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut connection = Connection::new(settings, tracker);
    let mut pacing = Pacing::default();
    let unresolved = Alarm::new();
    loop {
        let started = Instant::now();
        let request = connection.health(&query, pacing.index);
        tokio::pin!(request);
        let answer = loop {
            // A blocking query may outlast an empty answer's grace: the
            // emptiness then takes effect without a new answer.
            let grace_ends = publisher.grace_ends();
            let grace = async {
                match grace_ends {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                answer = &mut request => break answer,
                _ = grace => publisher.empty(),
                _ = shutdown.cancelled() => return,
            }
        };
        let pause = pacing.after(started, answer.as_ref().map(|(index, _)| *index));
        match answer {
            Err(e) => publisher.failed(&e),
            Ok((new_index, entries)) => {
                state.set_index(new_index);
                let set = backends(&entries, &query, &unresolved).await;
                match set.is_empty() {
                    true => publisher.empty(),
                    false => publisher.found(set),
                }
            }
        }
        tokio::select! {
            _ = sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Consul's rules for a loop of blocking queries: which index the next one
/// waits on, and how long to pause before it.
pub(super) struct Pacing {
    /// The index the next request waits on.
    pub index: u64,
    error_backoff: Duration,
    same_index_delay: Duration,
}

impl Default for Pacing {
    fn default() -> Pacing {
        Pacing {
            index: 0,
            error_backoff: ERROR_BACKOFF,
            same_index_delay: SAME_INDEX_DELAY,
        }
    }
}

impl Pacing {
    /// After a request sent at `started` answered `answered` (its index, or
    /// an error): the pause before the next one.
    pub fn after<E>(&mut self, started: Instant, answered: Result<u64, E>) -> Duration {
        let pause = MIN_GAP.saturating_sub(started.elapsed());
        let Ok(new_index) = answered else {
            // Start over with a fresh read, after a growing pause.
            self.index = 0;
            let pause = pause.max(self.error_backoff);
            self.error_backoff = (self.error_backoff * 2).min(MAX_ERROR_BACKOFF);
            return pause;
        };
        self.error_backoff = ERROR_BACKOFF;
        let unchanged = self.index != 0 && new_index == self.index;
        let pause = if unchanged && started.elapsed() < WAIT / 2 {
            // Answered early with nothing new: not how Consul blocks.
            let pause = pause.max(self.same_index_delay);
            self.same_index_delay = (self.same_index_delay * 2).min(MAX_SAME_INDEX_DELAY);
            pause
        } else {
            self.same_index_delay = SAME_INDEX_DELAY;
            pause
        };
        self.index = next_index(self.index, new_index);
        pause
    }
}

/// The index the next request waits on: the one Consul answered with,
/// unless it went backwards (a restored snapshot, another server), which
/// starts over with a fresh read; and never 0 otherwise, which would not
/// block (a bug some Consul versions had).
fn next_index(current: u64, answered: u64) -> u64 {
    if answered < current { 0 } else { answered.max(1) }
}

/// The backends of Consul's answer: `Service.Address`, or the node's when
/// empty, at `Service.Port`, weighted by `Service.Weights.Passing`. Host
/// names are resolved (boundedly); what cannot be used is left out.
async fn backends(entries: &[Entry], query: &ConsulQuery, unresolved: &Alarm) -> BackendSet {
    let mut backends = Vec::new();
    let mut names = Vec::new();
    for entry in entries {
        let address = match entry.service.address.as_str() {
            "" => entry.node.address.as_str(),
            address => address,
        };
        let weight = entry
            .service
            .weights
            .as_ref()
            .map_or(1, |w| w.passing.clamp(1, u32::from(u16::MAX)) as u16);
        let port = entry.service.port;
        match address.parse::<IpAddr>() {
            Ok(ip) => backends.push(Backend {
                addr: SocketAddr::new(ip, port),
                priority: 0,
                weight,
            }),
            Err(_) => names.push((address.to_string(), port, weight)),
        }
    }
    let mut failed = Vec::new();
    let mut resolving = JoinSet::new();
    let mut pending = names.into_iter();
    loop {
        while resolving.len() < RESOLVES_AT_ONCE {
            let Some((name, port, weight)) = pending.next() else {
                break;
            };
            resolving.spawn(async move {
                let found = timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name.as_str(), port))).await;
                let addrs = found.ok().and_then(Result::ok).map(Iterator::collect::<Vec<_>>);
                (name, weight, addrs)
            });
        }
        let Some(joined) = resolving.join_next().await else {
            break;
        };
        let Ok((name, weight, found)) = joined else {
            continue;
        };
        match found {
            Some(addrs) if !addrs.is_empty() => {
                let each = addrs.into_iter().map(|addr| Backend {
                    addr,
                    priority: 0,
                    weight,
                });
                backends.extend(each);
            }
            _ => failed.push(name),
        }
    }
    let usable = |b: &Backend| crate::net::unusable_peer(b.addr).is_none();
    let dropped: Vec<SocketAddr> = backends.iter().filter(|b| !usable(b)).map(|b| b.addr).collect();
    backends.retain(usable);
    if failed.is_empty() && dropped.is_empty() {
        unresolved.clear();
    } else if let Some(repeated) = unresolved.raise() {
        let (query, unresolved, dropped) = (query.name(), failed.join(", "), super::Diff::list(&dropped));
        warn!(
            query,
            unresolved, dropped, repeated, "instances without a usable address are left out"
        );
    }
    BackendSet::new(backends)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> ConsulQuery {
        ConsulQuery {
            service: "web".into(),
            tag: None,
            datacenter: None,
            empty_grace: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn service_address_else_node_address_and_passing_weight() {
        let body = r#"[
          {"Node": {"Node": "a", "Address": "10.0.0.11", "TaggedAddresses": null, "Meta": null},
           "Service": {"ID": "web-1", "Service": "web", "Address": "10.0.1.5", "Port": 8080,
                       "Weights": {"Passing": 10, "Warning": 1}, "Tags": []},
           "Checks": []},
          {"Node": {"Node": "b", "Address": "10.0.0.12"},
           "Service": {"ID": "web-2", "Service": "web", "Address": "", "Port": 8081}},
          {"Node": {"Node": "c", "Address": "10.0.0.13"},
           "Service": {"ID": "web-3", "Service": "web", "Address": "0.0.0.0", "Port": 8082}}
        ]"#;
        let entries: Vec<Entry> = serde_json::from_str(body).unwrap();
        let set = backends(&entries, &query(), &Alarm::new()).await;
        let got: Vec<(String, u16)> = set
            .backends()
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.12:8081".to_string(), 1),
                ("10.0.1.5:8080".to_string(), 10)
            ]
        );
    }

    #[tokio::test]
    async fn host_name_addresses_are_resolved() {
        let body =
            r#"[{"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "localhost", "Port": 7000}}]"#;
        let entries: Vec<Entry> = serde_json::from_str(body).unwrap();
        let set = backends(&entries, &query(), &Alarm::new()).await;
        assert!(
            set.backends()
                .iter()
                .any(|b| b.addr == "127.0.0.1:7000".parse().unwrap()),
            "{set:?}"
        );
    }

    #[test]
    fn an_index_that_goes_backwards_starts_over_and_zero_becomes_one() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 0);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(7, 3), 0);
        assert_eq!(next_index(u64::MAX, 1), 0);
    }

    #[test]
    fn names_say_service_tag_and_datacenter() {
        let mut q = query();
        assert_eq!(q.name(), "consul:web");
        q.tag = Some("primary".into());
        q.datacenter = Some("dc2".into());
        assert_eq!(q.name(), "consul:primary.web@dc2");
    }
}
