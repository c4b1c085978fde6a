//! The runtime API under `/v1/` on the admin endpoint:
//!
//! - `GET /v1/listeners` and `GET /v1/listeners/NAME`: every listener with
//!   its settings as written, its origin (`file` or `api`) and its state;
//! - `PUT /v1/listeners/NAME`: creates (201) or replaces (200) one of the
//!   API's listeners from a JSON object with the keys of a
//!   `[listeners.NAME]` table, validated as the file is;
//! - `DELETE /v1/listeners/NAME`: removes one; its connections drain.
//!
//! Changes need `Authorization: Bearer TOKEN`, compared in constant time,
//! and go through the server's one path for changes ([`crate::Control`]).
//! Errors are JSON: `{"error": "...", "problems": ["listeners.web.bind: ..."]}`.

use std::io;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::Error;
use crate::config::{Origin, Protocol};
use crate::control::{ApiChange, ApiError, Control};
use crate::net::binds_overlap;
use crate::status::{ListenerStatus, Live};

/// The largest request body read: a listener table is a few hundred bytes.
const MAX_BODY: usize = 64 << 10;
const NAME_RULE: &str = "listener names are 1 to 63 letters, digits, '-' or '_'";

type HttpResponse = Response<Full<Bytes>>;

/// One listener as the API shows it.
#[derive(Serialize)]
struct Described {
    name: String,
    origin: Origin,
    /// The `[listeners.NAME]` table as written.
    settings: toml::Table,
    /// As `/status` shows it: bound address, backends, connections.
    state: Option<ListenerStatus>,
}

#[derive(Serialize)]
struct Failure<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    problems: &'a [String],
}

/// What the API reads and where its changes go.
pub(crate) struct Api<'a> {
    pub live: &'a Live,
    pub control: &'a Control,
    /// The admin endpoint's address, a port sluice holds.
    pub admin_addr: SocketAddr,
}

pub(crate) async fn respond(api: &Api<'_>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path();
    let name = match path.strip_prefix("/v1/listeners") {
        Some("" | "/") => None,
        Some(rest) if rest.starts_with('/') => Some(rest[1..].to_string()),
        _ => return failure(StatusCode::NOT_FOUND, &format!("no API at {path}"), &[]),
    };
    let method = req.method().clone();
    match (&method, name) {
        (&Method::GET | &Method::HEAD, None) => {
            let listeners = describe(api, None);
            json(StatusCode::OK, &serde_json::json!({ "listeners": listeners }))
        }
        (&Method::GET | &Method::HEAD, Some(name)) => match describe(api, Some(&name)).pop() {
            Some(listener) => json(StatusCode::OK, &listener),
            None => failure(StatusCode::NOT_FOUND, &format!("no listener named '{name}'"), &[]),
        },
        (&Method::PUT, Some(name)) => put(api, &name, req).await,
        (&Method::DELETE, Some(name)) => delete(api, &name, &req).await,
        (_, None) => not_allowed("GET"),
        (_, Some(_)) => not_allowed("GET, PUT, DELETE"),
    }
}

async fn put(api: &Api<'_>, name: &str, req: Request<Incoming>) -> HttpResponse {
    if let Some(refused) = unauthorized(api, &req) {
        return refused;
    }
    if !valid_name(name) {
        return failure(StatusCode::BAD_REQUEST, NAME_RULE, &[]);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("the body is over {MAX_BODY} bytes");
            return failure(StatusCode::PAYLOAD_TOO_LARGE, &message, &[]);
        }
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
                &[],
            );
        }
    };
    let table = match listener_table(name, &body) {
        Ok(table) => table,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &e, &[]),
    };
    let protocol = match table.get("protocol").and_then(toml::Value::as_str) {
        Some("udp") => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    match api.control.set_listener(name, table).await {
        Ok(change) => {
            let status = match change {
                ApiChange::Created => StatusCode::CREATED,
                _ => StatusCode::OK,
            };
            let mut response = match describe(api, Some(name)).pop() {
                Some(listener) => json(status, &listener),
                None => json(status, &serde_json::json!({ "name": name })),
            };
            if change == ApiChange::Created {
                let location = HeaderValue::from_str(&format!("/v1/listeners/{name}"));
                response.headers_mut().extend(location.map(|l| (LOCATION, l)));
            }
            response
        }
        Err(e) => refusal(api, e, protocol).await,
    }
}

async fn delete(api: &Api<'_>, name: &str, req: &Request<Incoming>) -> HttpResponse {
    if let Some(refused) = unauthorized(api, req) {
        return refused;
    }
    match api.control.delete_listener(name).await {
        Ok(_) => json(StatusCode::OK, &serde_json::json!({ "deleted": name })),
        Err(e) => refusal(api, e, Protocol::Tcp).await,
    }
}

/// The refusal of a change without the configured token; without one
/// configured, changes are off.
fn unauthorized(api: &Api<'_>, req: &Request<Incoming>) -> Option<HttpResponse> {
    let Some(token) = api.live.api_token() else {
        let message = "changes through the API are off: set api_token_file = \"PATH\" in the configuration \
                       (or SLUICE_API_TOKEN in the environment), then send Authorization: Bearer <token>";
        return Some(failure(StatusCode::FORBIDDEN, message, &[]));
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let message = match presented {
        Some(presented) if token_matches(presented, &token.0) => return None,
        Some(_) => "wrong token",
        None => "changes need Authorization: Bearer <token>",
    };
    let mut response = failure(StatusCode::UNAUTHORIZED, message, &[]);
    let challenge = HeaderValue::from_static("Bearer realm=\"sluice\"");
    response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    Some(response)
}

/// Takes as long for a wrong token as for the right one (of its length), so
/// that timing tells an attacker nothing of its contents.
fn token_matches(presented: &str, token: &str) -> bool {
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

fn valid_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (1..=63).contains(&name.len()) && name.chars().all(allowed)
}

/// The request body as a `[listeners.NAME]` table.
fn listener_table(name: &str, body: &[u8]) -> Result<toml::Table, String> {
    const SHAPE: &str = "the body must be a JSON object with the keys of a [listeners.NAME] table, \
                         e.g. {\"bind\": \"0.0.0.0:7000\", \"service\": \"redis\"}";
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("{SHAPE}: {e}"))?;
    if !value.is_object() {
        return Err(SHAPE.into());
    }
    if let Some(key) = null_at(&value, &format!("listeners.{name}")) {
        return Err(format!("{key}: null is not a value; leave the key out"));
    }
    match toml::Value::try_from(value) {
        Ok(toml::Value::Table(table)) => Ok(table),
        Ok(_) => Err(SHAPE.into()),
        Err(e) => Err(format!("{SHAPE}: {e}")),
    }
}

/// The key of the first JSON null in `value` (TOML has no null).
fn null_at(value: &serde_json::Value, key: &str) -> Option<String> {
    match value {
        serde_json::Value::Null => Some(key.to_string()),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| null_at(v, &format!("{key}.{k}"))),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_at(v, &format!("{key}[{i}]"))),
        _ => None,
    }
}

/// The listener `name` (or all) with settings, origin and state.
fn describe(api: &Api<'_>, name: Option<&str>) -> Vec<Described> {
    let mut states = api.live.status().listeners;
    api.live
        .listeners()
        .into_iter()
        .filter(|l| name.is_none_or(|name| l.name == name))
        .map(|l| {
            let state = states
                .iter()
                .position(|s| s.name == l.name)
                .map(|i| states.swap_remove(i));
            Described {
                name: l.name,
                origin: l.origin,
                settings: l.written,
                state,
            }
        })
        .collect()
}

/// The answer to a change that did not happen (or, `NotSaved`, not lastingly).
async fn refusal(api: &Api<'_>, error: ApiError, protocol: Protocol) -> HttpResponse {
    let status = match &error {
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::DefinedInFile { .. }
        | ApiError::FromCatalog { .. }
        | ApiError::Invalid { conflict: true, .. } => StatusCode::CONFLICT,
        ApiError::Invalid { problems, .. } => {
            return failure(StatusCode::BAD_REQUEST, "invalid listener", problems);
        }
        ApiError::Apply(Error::Bind { addr, source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
            let addr = *addr;
            let holder = match own_holder(api, protocol, addr) {
                Some(own) => Some(own),
                None => {
                    let holder = tokio::task::spawn_blocking(move || crate::net::port_holder(protocol, addr));
                    holder.await.ok().flatten()
                }
            };
            let message = in_use(addr, holder.as_deref());
            return failure(StatusCode::CONFLICT, &message, &[]);
        }
        ApiError::Apply(Error::Bind { .. } | Error::NoDns(_) | Error::Invalid(_)) => StatusCode::BAD_REQUEST,
        ApiError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Apply(_) | ApiError::NotSaved { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let problems = match &error {
        ApiError::Invalid { problems, .. } => problems.as_slice(),
        _ => &[],
    };
    failure(status, &error.to_string(), problems)
}

/// What of sluice's own holds `addr`: a listener bound to port 0 (which no
/// configuration names) or the admin endpoint.
fn own_holder(api: &Api<'_>, protocol: Protocol, addr: SocketAddr) -> Option<String> {
    if protocol == Protocol::Tcp && binds_overlap(api.admin_addr, addr) {
        return Some("the admin endpoint (`metrics`)".into());
    }
    let holder = api.live.listener_bound_at(protocol, addr)?;
    Some(format!("listener '{holder}'"))
}

fn in_use(addr: SocketAddr, holder: Option<&str>) -> String {
    match holder {
        Some(holder) => format!("{addr} is in use by {holder}"),
        None => format!("{addr} is in use by another program"),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn failure(status: StatusCode, error: &str, problems: &[String]) -> HttpResponse {
    json(status, &Failure { error, problems })
}

fn not_allowed(allow: &'static str) -> HttpResponse {
    let message = format!("allowed here: {allow}");
    let mut response = failure(StatusCode::METHOD_NOT_ALLOWED, &message, &[]);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_whole() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        assert!(!token_matches("s3cret-tokeN", "s3cret-token"));
        assert!(!token_matches("s3cret", "s3cret-token"));
        assert!(!token_matches("", "s3cret-token"));
    }

    #[test]
    fn bodies_become_tables_or_say_what_is_wrong() {
        let table = listener_table("web", br#"{"bind": "0.0.0.0:7000", "health": {"fall": 2}}"#).unwrap();
        assert_eq!(table["bind"].as_str(), Some("0.0.0.0:7000"));
        assert_eq!(table["health"]["fall"].as_integer(), Some(2));
        let null = listener_table("web", br#"{"bind": "0.0.0.0:7000", "health": {"send": null}}"#);
        assert!(null.unwrap_err().starts_with("listeners.web.health.send: null"));
        for bad in [&b"[1]"[..], b"\"bind\"", b"{", b""] {
            let e = listener_table("web", bad).unwrap_err();
            assert!(e.starts_with("the body must be a JSON object"), "{e}");
        }
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("books-ms_2"));
        for bad in ["", "a.b", "a/b", "ä", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
