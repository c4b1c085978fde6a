//! A stand-in for the parts of Consul's HTTP API that sluice uses, because
//! Consul itself cannot be installed here. It keeps a catalog in memory and
//! answers as a Consul 1.15+ agent does (see /work/notes/consul.md):
//!
//! - `GET /v1/health/service/:service` with `passing`, `tag` (repeatable, all
//!   must match), `dc`, `index` and `wait`. With `index` > 0 this is a blocking
//!   query: held until the service's index passes it, or for `wait` (default
//!   5m, at most 10m) plus up to wait/16 of jitter. 200s carry `X-Consul-Index`
//!   (never 0) and the `CheckServiceNode` array; errors are plain text.
//! - `GET /v1/catalog/services` with `dc`, `index` and `wait`: every
//!   service's name with the union of its instances' tags, blocking on the
//!   catalog's index, which registrations and deregistrations move (health
//!   changes do not).
//! - `PUT /v1/agent/service/register`, `…/deregister/:id` and
//!   `…/maintenance/:id?enable=`, so that the benchmark can drive it over HTTP.
//! - ACLs when started with a token: `?token=`, `X-Consul-Token` or
//!   `Authorization: Bearer`, else 403 "ACL not found".
//!
//! Tests also change the catalog directly, and can make the server misbehave
//! (never block) or go away (`stop`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Consul's `default_query_time` and `max_query_time`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
const DATACENTER: &str = "dc1";
const PASSING: &str = "passing";
const MAX_BODY: usize = 1 << 20;
const NOT_FOUND: &str = "Invalid URL path: not a recognized HTTP API endpoint";
const DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

type HttpResponse = Response<Full<Bytes>>;

/// One service instance on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,           // Service.ID, unique
    pub service: String,      // Service.Service
    pub address: String,      // Service.Address; "" means clients use node_address
    pub node: String,         // Node.Node
    pub node_address: String, // Node.Address
    pub port: u16,
    pub tags: Vec<String>,
    pub weight: u32, // Service.Weights.Passing (Warning is 1)
}

impl Instance {
    /// On node `node-<id>` at 127.0.0.1, no tags, weight 1.
    pub fn new(id: &str, service: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.to_owned(),
            service: service.to_owned(),
            address: address.to_owned(),
            node: format!("node-{id}"),
            node_address: "127.0.0.1".to_owned(),
            port,
            tags: Vec::new(),
            weight: 1,
        }
    }
}

/// The running stand-in; dropping it stops it.
pub struct ConsulStandin {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ConsulStandin {
    pub async fn start() -> ConsulStandin {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Every request must then carry `token` (ACLs on, default deny).
    pub async fn start_with_token(token: &str) -> ConsulStandin {
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0)), Some(token.to_owned())).await
    }

    pub async fn start_on(addr: SocketAddr) -> ConsulStandin {
        Self::serve(addr, None).await
    }

    async fn serve(addr: SocketAddr, token: Option<String>) -> ConsulStandin {
        // A stand-in started again on the address of one just stopped may find
        // that one's listener still open for a moment (its task drops it).
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => tries += 1,
                Err(e) => panic!("consul stand-in cannot listen on {addr}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = listener.local_addr().expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changes: watch::channel(()).0,
            stopped: watch::channel(false).0,
            token,
        });
        tokio::spawn(accept(listener, shared.clone()));
        ConsulStandin { addr, shared }
    }

    /// Adds or replaces the instance with this ID; its check is passing.
    pub fn register(&self, instance: Instance) {
        self.shared.update(|state| state.register(instance));
    }

    pub fn deregister(&self, id: &str) {
        self.shared.update(|state| state.deregister(id));
    }

    /// The service check's status: "passing", "warning" or "critical".
    pub fn set_status(&self, id: &str, status: &str) {
        self.shared.update(|state| {
            state.modify(
                id,
                |e| e.status == status,
                |e, index| {
                    e.status = status.to_owned();
                    e.check_index = index;
                },
            )
        });
    }

    /// The index of the last change, 0 before any. Answers carry this or the
    /// service's own index, floored to 1.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Health queries answered so far, errors included.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// When on, every health query answers at once, whatever its index, with
    /// the current index and data: a broken server.
    pub fn set_misbehaving(&self, on: bool) {
        self.shared.lock().misbehaving = on;
        self.shared.changes.send_replace(()); // release the held queries
    }

    /// Stops accepting and drops every connection, held queries included.
    pub fn stop(&self) {
        self.shared.stopped.send_replace(true);
    }
}

impl Drop for ConsulStandin {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled after every change; held queries then look at their service.
    changes: watch::Sender<()>,
    stopped: watch::Sender<bool>,
    token: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a change (it returns `None` for an unknown ID, else whether it
    /// changed anything) and wakes held queries. Returns whether the ID was known.
    fn update(&self, change: impl FnOnce(&mut State) -> Option<bool>) -> bool {
        let outcome = change(&mut self.lock());
        if outcome == Some(true) {
            self.changes.send_replace(());
        }
        outcome.is_some()
    }
}

struct Entry {
    instance: Instance,
    status: String,
    /// The reason, while in maintenance: Consul then adds a critical
    /// `_service_maintenance:<id>` check beside the service's own.
    maintenance: Option<String>,
    create_index: u64,
    modify_index: u64,
    check_index: u64,
    maintenance_index: u64,
}

#[derive(Default)]
struct State {
    index: u64,
    /// The index of the last registration or deregistration.
    catalog_index: u64,
    entries: BTreeMap<String, Entry>,
    /// By lower-case service name (Consul matches names without case): the
    /// index of its last change, kept after its last instance goes.
    service_index: HashMap<String, u64>,
    requests: usize,
    misbehaving: bool,
}

// As in Consul's state store, a write that changes nothing leaves the index alone.
impl State {
    /// The service's own index, else the global one; never 0 (Consul's floor).
    fn service_index(&self, service: &str) -> u64 {
        let own = self.service_index.get(&service.to_ascii_lowercase()).copied();
        own.unwrap_or(self.index).max(1)
    }

    fn bump(&mut self, service: &str) -> u64 {
        // Above the floor of 1 that answers before any change carry, so
        // that a query held at 1 sees the first change.
        self.index = self.index.max(1) + 1;
        self.service_index
            .insert(service.to_ascii_lowercase(), self.index);
        self.index
    }

    fn register(&mut self, instance: Instance) -> Option<bool> {
        let previous = self.entries.get(&instance.id);
        if previous.is_some_and(|e| e.instance == instance && e.status == PASSING) {
            return Some(false);
        }
        let old_service = previous.map(|e| e.instance.service.to_ascii_lowercase());
        let index = self.bump(&instance.service);
        if let Some(old) = old_service {
            self.service_index.insert(old, index); // renamed: its old watchers must see it leave
        }
        let entry = self.entries.entry(instance.id.clone()).or_insert_with(|| Entry {
            instance: instance.clone(),
            status: PASSING.to_owned(),
            maintenance: None,
            create_index: index,
            modify_index: index,
            check_index: index,
            maintenance_index: 0,
        });
        if entry.status != PASSING {
            entry.status = PASSING.to_owned();
            entry.check_index = index;
        }
        entry.instance = instance;
        entry.modify_index = index;
        self.catalog_index = index;
        Some(true)
    }

    fn deregister(&mut self, id: &str) -> Option<bool> {
        let entry = self.entries.remove(id)?;
        self.catalog_index = self.bump(&entry.instance.service);
        Some(true)
    }

    /// Applies `apply` to entry `id` at a new index, unless `unchanged`.
    fn modify(
        &mut self,
        id: &str,
        unchanged: impl FnOnce(&Entry) -> bool,
        apply: impl FnOnce(&mut Entry, u64),
    ) -> Option<bool> {
        let entry = self.entries.get(id)?;
        if unchanged(entry) {
            return Some(false);
        }
        let service = entry.instance.service.clone();
        let index = self.bump(&service);
        apply(self.entries.get_mut(id)?, index);
        Some(true)
    }

    fn set_maintenance(&mut self, id: &str, enable: bool, reason: &str) -> Option<bool> {
        let reason = if reason.is_empty() { DEFAULT_REASON } else { reason };
        self.modify(
            id,
            |e| e.maintenance.is_some() == enable,
            |e, index| {
                e.maintenance = enable.then(|| reason.to_owned());
                e.maintenance_index = index;
            },
        )
    }

    /// `/v1/catalog/services`: each service with its instances' tags.
    fn catalog(&self) -> Value {
        let mut services: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for entry in self.entries.values() {
            let tags = services.entry(&entry.instance.service).or_default();
            tags.extend(entry.instance.tags.iter().map(String::as_str));
        }
        for tags in services.values_mut() {
            tags.sort_unstable();
            tags.dedup();
        }
        json!(services)
    }

    /// The `CheckServiceNode` array; `tags` in lower case (Consul ignores case).
    fn health(&self, service: &str, tags: &[String], passing: bool) -> Value {
        let mut found: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.instance.service.eq_ignore_ascii_case(service))
            .filter(|e| {
                tags.iter()
                    .all(|t| e.instance.tags.iter().any(|have| have.to_lowercase() == *t))
            })
            // `passing` drops an entry if any of its checks is not passing.
            .filter(|e| !passing || (e.status == PASSING && e.maintenance.is_none()))
            .collect();
        found.sort_by(|a, b| (&a.instance.node, &a.instance.id).cmp(&(&b.instance.node, &b.instance.id)));
        Value::Array(found.into_iter().map(Entry::json).collect())
    }
}

impl Entry {
    fn json(&self) -> Value {
        let i = &self.instance;
        let target = if i.address.is_empty() {
            &i.node_address
        } else {
            &i.address
        };
        let output = match self.status.as_str() {
            PASSING => format!("TCP connect {target}:{}: Success", i.port),
            "critical" => format!("dial tcp {target}:{}: connect: connection refused", i.port),
            _ => String::new(),
        };
        let service_check = json!({
            "Node": i.node, "CheckID": format!("service:{}", i.id),
            "Name": format!("Service '{}' check", i.service), "Status": self.status, "Notes": "",
            "Output": output, "ServiceID": i.id, "ServiceName": i.service, "ServiceTags": i.tags,
            "Type": "tcp", "Interval": "10s", "Timeout": "10s", "ExposedPort": 0, "Definition": {},
            "CreateIndex": self.create_index, "ModifyIndex": self.check_index,
        });
        // The other checks differ from the service's own in a few fields.
        let variant = |fields: Value| {
            let mut check = service_check.clone();
            if let (Value::Object(check), Value::Object(fields)) = (&mut check, fields) {
                check.extend(fields);
            }
            check
        };
        let mut checks = Vec::new(); // in CheckID order, as Consul lists them
        if let Some(reason) = &self.maintenance {
            checks.push(variant(json!({
                "CheckID": format!("_service_maintenance:{}", i.id), "Name": "Service Maintenance Mode",
                "Status": "critical", "Notes": reason, "Output": "", "Type": "maintenance",
                "Interval": "", "Timeout": "",
                "CreateIndex": self.maintenance_index, "ModifyIndex": self.maintenance_index,
            })));
        }
        checks.push(variant(json!({
            "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": PASSING,
            "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "", "ServiceTags": [],
            "Type": "", "Interval": "", "Timeout": "", "ModifyIndex": self.create_index,
        })));
        checks.push(service_check);
        let mut service = json!({
            "ID": i.id, "Service": i.service, "Tags": i.tags, "Address": i.address, "Meta": {},
            "Weights": {"Passing": i.weight, "Warning": 1}, "EnableTagOverride": false,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}, "PeerName": "",
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        });
        if i.port != 0 {
            service["Port"] = json!(i.port); // omitempty in Consul
        }
        // The agent adds these only for an IP service address.
        if let Ok(ip) = i.address.parse::<IpAddr>() {
            let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
            let address = json!({"Address": i.address, "Port": i.port});
            service["TaggedAddresses"] = json!({
                format!("lan_{family}"): address, format!("wan_{family}"): address,
            });
        }
        let a = &i.node_address;
        json!({
            "Node": {
                "ID": node_id(&i.node), "Node": i.node, "Address": a, "Datacenter": DATACENTER,
                "TaggedAddresses": {"lan": a, "lan_ipv4": a, "wan": a, "wan_ipv4": a},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": self.create_index, "ModifyIndex": self.create_index,
            },
            "Service": service,
            "Checks": checks,
        })
    }
}

/// A stable, UUID-shaped node ID: two FNV-1a hashes of the name.
fn node_id(node: &str) -> String {
    let hash = |seed: u64| {
        node.bytes()
            .fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4));
    let (a1, a2, a3) = (a >> 32, (a >> 16) & 0xffff, a & 0xffff);
    format!(
        "{a1:08x}-{a2:04x}-{a3:04x}-{:04x}-{:012x}",
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.stopped.subscribe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors, say: try again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return, // drops the listener
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut stop = shared.stopped.subscribe();
            let service = {
                let shared = shared.clone();
                service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                })
            };
            let mut http = http1::Builder::new();
            http.header_read_timeout(None::<Duration>); // Consul keeps idle connections open
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stopped(&mut stop) => {} // drops the connection, mid-request or not
            }
        });
    }
}

/// Resolves once `stop` has been called, even before this was.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|on| *on).await;
}

enum Endpoint<'a> {
    Health(&'a str),
    Catalog,
    Register,
    Deregister(&'a str),
    Maintenance(&'a str),
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let mut response = route(shared, req).await;
    let policy = if shared.token.is_some() { "deny" } else { "allow" };
    let headers = response.headers_mut();
    headers.insert("x-consul-default-acl-policy", HeaderValue::from_static(policy));
    response
}

async fn route(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    // Go's server refuses a path with a bad escape before Consul sees it.
    let Some(path) = unescape(req.uri().path(), false) else {
        return text(StatusCode::BAD_REQUEST, "400 Bad Request");
    };
    let (endpoint, allow) = if let Some(service) = path.strip_prefix("/v1/health/service/") {
        (Endpoint::Health(service), "GET")
    } else if path == "/v1/catalog/services" {
        (Endpoint::Catalog, "GET")
    } else if path == "/v1/agent/service/register" {
        (Endpoint::Register, "PUT")
    } else if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
        (Endpoint::Deregister(id), "PUT")
    } else if let Some(id) = path.strip_prefix("/v1/agent/service/maintenance/") {
        (Endpoint::Maintenance(id), "PUT")
    } else {
        return text(StatusCode::NOT_FOUND, NOT_FOUND);
    };
    // Consul's wrapper answers a query string it cannot decode with an empty 500.
    let Some(query) = Query::parse(req.uri().query().unwrap_or("")) else {
        return respond(StatusCode::INTERNAL_SERVER_ERROR, None, Vec::new());
    };
    if req.method().as_str() != allow {
        let message = format!("method {} not allowed", req.method());
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, message);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
        return response;
    }
    let authorized = has_token(shared, &req, &query);
    match endpoint {
        Endpoint::Health(service) => {
            let response = health(shared, service, &query, authorized).await;
            shared.lock().requests += 1;
            response
        }
        Endpoint::Catalog => {
            let response = catalog(shared, &query, authorized).await;
            shared.lock().requests += 1;
            response
        }
        Endpoint::Register => register(shared, req, authorized).await,
        Endpoint::Deregister(id) => {
            if !authorized {
                forbidden()
            } else if shared.update(|state| state.deregister(id)) {
                ok()
            } else {
                unknown_id(id)
            }
        }
        Endpoint::Maintenance(id) => maintenance(shared, id, &query, authorized),
    }
}

async fn health(shared: &Shared, service: &str, query: &Query, authorized: bool) -> HttpResponse {
    let bad = |message: &str| text(StatusCode::BAD_REQUEST, message);
    if service.is_empty() {
        return bad("Missing service name");
    }
    if let Err(refused) = blocking(shared, query, authorized, |state| state.service_index(service)).await {
        return refused;
    }
    // Consul parses `passing` after running the query, so this 400 comes late too.
    let passing = match query.get("passing") {
        None => false,
        Some("") => true,
        Some(raw) => match parse_go_bool(raw) {
            Some(passing) => passing,
            None => return bad("Invalid value for ?passing"),
        },
    };
    let tags: Vec<String> = query.all("tag").map(str::to_lowercase).collect();
    let (index, body) = {
        let state = shared.lock();
        (
            state.service_index(service),
            state.health(service, &tags, passing).to_string(),
        )
    };
    answer(index, body)
}

/// `/v1/catalog/services`.
async fn catalog(shared: &Shared, query: &Query, authorized: bool) -> HttpResponse {
    let index_of = |state: &State| state.catalog_index.max(1);
    if let Err(refused) = blocking(shared, query, authorized, index_of).await {
        return refused;
    }
    let (index, body) = {
        let state = shared.lock();
        (index_of(&state), state.catalog().to_string())
    };
    answer(index, body)
}

/// What every blocking query does first: `wait` and `index` read, the token
/// and the datacenter checked, then held until `index_of` passes `index`.
#[allow(clippy::result_large_err)] // the refusal is the response itself, sent at once
async fn blocking(
    shared: &Shared,
    query: &Query,
    authorized: bool,
    index_of: impl Fn(&State) -> u64,
) -> Result<(), HttpResponse> {
    let bad = |message: &str| Err(text(StatusCode::BAD_REQUEST, message));
    let wait = match query.get("wait").filter(|w| !w.is_empty()).map(parse_go_duration) {
        None => None,
        Some(None) => return bad("Invalid wait time"),
        Some(nanos) => nanos,
    };
    // strconv.ParseUint: digits only, no sign; an empty value is ignored.
    let min_index = match query.get("index").filter(|i| !i.is_empty()) {
        None => 0,
        Some(raw) if raw.bytes().all(|b| b.is_ascii_digit()) => match raw.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return bad("Invalid index"),
        },
        Some(_) => return bad("Invalid index"),
    };
    if !authorized {
        return Err(forbidden());
    }
    if query
        .get("dc")
        .is_some_and(|dc| !dc.is_empty() && dc != DATACENTER)
    {
        return Err(text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter"));
    }
    if min_index > 0 {
        block(shared, index_of, min_index, query_time(wait)).await; // index 0 never blocks
    }
    Ok(())
}

/// A query's 200, with the headers Consul sends.
fn answer(index: u64, body: String) -> HttpResponse {
    let mut response = respond(StatusCode::OK, Some("application/json"), body.into_bytes());
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    headers.insert(
        "x-consul-effective-consistency",
        HeaderValue::from_static("leader"),
    );
    response
}

/// Holds until `index_of` passes `min_index`, or for `timeout`.
async fn block(shared: &Shared, index_of: impl Fn(&State) -> u64, min_index: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    // Subscribed before looking, so that a change in between still wakes us.
    let mut changes = shared.changes.subscribe();
    loop {
        let ready = {
            let state = shared.lock();
            state.misbehaving || index_of(&state) > min_index
        };
        if ready
            || !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            )
        {
            return;
        }
    }
}

/// Consul's `RPCQueryTimeout`: the default for none or ≤ 0, at most 10m, plus
/// up to 1/16 of random jitter.
fn query_time(wait_nanos: Option<i128>) -> Duration {
    let wait = match wait_nanos {
        Some(nanos) if nanos > 0 => Duration::from_nanos(nanos.min(MAX_WAIT.as_nanos() as i128) as u64),
        _ => DEFAULT_WAIT,
    };
    wait + (wait / 16).mul_f64(fastrand::f64())
}

async fn register(shared: &Shared, req: Request<Incoming>, authorized: bool) -> HttpResponse {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
    };
    match parse_registration(&body) {
        Err(reason) => text(StatusCode::BAD_REQUEST, reason),
        Ok(_) if !authorized => forbidden(),
        Ok(instance) => {
            shared.update(|state| state.register(instance));
            ok()
        }
    }
}

fn maintenance(shared: &Shared, id: &str, query: &Query, authorized: bool) -> HttpResponse {
    let Some(raw) = query.get("enable") else {
        return text(StatusCode::BAD_REQUEST, "Missing value for enable");
    };
    let Some(enable) = parse_go_bool(raw) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Invalid value for enable: {raw:?}"),
        );
    };
    let reason = query.get("reason").unwrap_or("");
    if !authorized {
        forbidden()
    } else if shared.update(|state| state.set_maintenance(id, enable, reason)) {
        ok()
    } else {
        unknown_id(id)
    }
}

/// An agent registration body (`api.AgentServiceRegistration`); fields not
/// listed are ignored, as Consul's Go decoder ignores unknown ones.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Registration {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    weights: Option<Weights>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Weights {
    passing: u32,
    warning: u32,
}

fn parse_registration(body: &[u8]) -> Result<Instance, String> {
    let r: Registration = serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    if r.name.is_empty() {
        return Err("Missing service name".into());
    }
    // Weights {0, 0} (or none) mean the default {1, 1}; else Passing must be ≥ 1.
    let weight = match r.weights {
        None
        | Some(Weights {
            passing: 0,
            warning: 0,
        }) => 1,
        Some(Weights { passing: 0, warning }) => {
            return Err(format!("Invalid Weights Passing: 0 Warning: {warning}"));
        }
        Some(weights) => weights.passing,
    };
    let id = if r.id.is_empty() { &r.name } else { &r.id };
    let mut instance = Instance::new(id, &r.name, &r.address, r.port);
    instance.tags = r.tags;
    instance.weight = weight;
    Ok(instance)
}

/// Consul's order: `?token=`, then `X-Consul-Token`, then `Authorization: Bearer`.
fn has_token(shared: &Shared, req: &Request<Incoming>, query: &Query) -> bool {
    let Some(expected) = &shared.token else {
        return true;
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let bearer = header("authorization")
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let given = query
        .get("token")
        .filter(|t| !t.is_empty())
        .or_else(|| header("x-consul-token").filter(|t| !t.is_empty()))
        .or(bearer);
    given == Some(expected.as_str())
}

fn forbidden() -> HttpResponse {
    text(StatusCode::FORBIDDEN, "ACL not found")
}

fn unknown_id(id: &str) -> HttpResponse {
    let message =
        format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name.");
    text(StatusCode::NOT_FOUND, message)
}

/// 200 with an empty body, as Consul's agent endpoints answer.
fn ok() -> HttpResponse {
    respond(StatusCode::OK, None, Vec::new())
}

fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    respond(
        status,
        Some("text/plain; charset=utf-8"),
        message.into().into_bytes(),
    )
}

fn respond(status: StatusCode, content_type: Option<&'static str>, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// A decoded query string, pairs in order, as Go's `url.ParseQuery` gives it.
struct Query(Vec<(String, String)>);

impl Query {
    /// `None` where Go's parser reports an error: a bad escape or a `;`.
    fn parse(raw: &str) -> Option<Query> {
        let pair = |text: &str| -> Option<(String, String)> {
            let (key, value) = text.split_once('=').unwrap_or((text, ""));
            let decoded = (unescape(key, true)?, unescape(value, true)?);
            (!text.contains(';')).then_some(decoded)
        };
        let pairs = raw.split('&').filter(|p| !p.is_empty()).map(pair);
        pairs.collect::<Option<Vec<_>>>().map(Query)
    }

    /// The first value, as Go's `Values.Get`.
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).next()
    }

    fn all<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding (`+` is a space in query strings); `None` on a bad escape.
fn unescape(text: &str, plus_is_space: bool) -> Option<String> {
    let (bytes, mut i) = (text.as_bytes(), 0);
    let mut out = Vec::with_capacity(bytes.len());
    while let Some(&b) = bytes.get(i) {
        i += 1;
        out.push(match b {
            b'%' => {
                let hex = bytes
                    .get(i..i + 2)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                i += 2;
                u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
            }
            b'+' if plus_is_space => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` in nanoseconds: "60000ms", "1m30s", "-1.5h",
/// "0". Every number needs a unit, except a bare "0".
fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        if number.matches('.').count() > 1 || !number.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        let split = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(split);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None, // missing or unknown unit
        };
        nanos += number.parse::<f64>().ok()? * scale;
        rest = next;
    }
    if nanos > i64::MAX as f64 {
        return None; // beyond Go's int64 of nanoseconds
    }
    Some(if negative { -(nanos as i128) } else { nanos as i128 })
}
