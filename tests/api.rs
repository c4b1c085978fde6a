//! The runtime API in-process: each method and status code, validation
//! errors naming the key, 401/403/409, the runtime file written and read
//! back, SIGHUP keeping the API's listeners, a deleted listener draining,
//! and the changes counted.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::http::Answer;
use common::{backend_port, connect, echo_backends, sample};
use serde_json::Value;
use sluice::config::Overrides;
use sluice::{Config, Control, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789";

/// sluice started from files in `dir`, as the binary starts: sluice.toml
/// (with the admin endpoint, `api_token_file` and `runtime_file` added).
struct Sluice {
    admin: SocketAddr,
    addrs: Vec<(String, SocketAddr)>,
    control: Control,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

fn write_config(dir: &Path, token: bool, rest: &str) -> PathBuf {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let token = if token { "api_token_file = \"token\"\n" } else { "" };
    let text = format!(
        "metrics = \"127.0.0.1:0\"\nruntime_file = \"runtime.toml\"\nshutdown_grace = \"1s\"\n{token}{rest}"
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Sluice {
    async fn start(config: &Path) -> Sluice {
        let config = Config::load(Some(config), &Overrides::default()).unwrap();
        let server = Server::bind(config).await.unwrap();
        let (admin, addrs, control) = (
            server.metrics_addr().unwrap(),
            server.local_addrs(),
            server.control(),
        );
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(server.run(shutdown.clone()));
        Sluice {
            admin,
            addrs,
            control,
            shutdown,
            done,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.done.await.unwrap();
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        common::http(self.admin, method, path, &headers, body).await
    }

    async fn put(&self, name: &str, body: &str) -> (u16, Value) {
        let answer = self
            .call("PUT", &format!("/v1/listeners/{name}"), Some(TOKEN), body)
            .await;
        (answer.status, serde_json::from_str(&answer.body).unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let answer = self.call("GET", path, None, "").await;
        (answer.status, serde_json::from_str(&answer.body).unwrap())
    }

    /// Where the listener `name` accepts, from the API's own answer.
    async fn bound(&self, name: &str) -> SocketAddr {
        let (_, listener) = self.get(&format!("/v1/listeners/{name}")).await;
        listener["state"]["bind"].as_str().unwrap().parse().unwrap()
    }
}

fn backends_body(bind: &str, backend: SocketAddr) -> String {
    format!(r#"{{"bind": "{bind}", "backends": ["{backend}"]}}"#)
}

#[tokio::test]
async fn put_creates_then_replaces_get_lists_and_delete_drains() {
    let dir = tempfile::tempdir().unwrap();
    let b = echo_backends(2).await;
    let file_listener = format!(
        "[listeners.from-file]\nbind = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
        b[0].addr
    );
    let sluice = Sluice::start(&write_config(dir.path(), true, &file_listener)).await;

    let (status, created) = sluice
        .put("books", &backends_body("127.0.0.1:0", b[0].addr))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    assert_eq!(created["settings"]["bind"], "127.0.0.1:0");
    let addr = sluice.bound("books").await;
    assert_eq!(backend_port(addr).await, b[0].addr.port());
    let (mut open, _) = connect(addr).await;

    let (status, replaced) = sluice
        .put("books", &backends_body("127.0.0.1:0", b[1].addr))
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(sluice.bound("books").await, addr, "same bind, same socket");
    assert_eq!(backend_port(addr).await, b[1].addr.port());

    let (status, list) = sluice.get("/v1/listeners").await;
    assert_eq!(status, 200);
    let origins: Vec<(&str, &str)> = list["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(origins, [("books", "api"), ("from-file", "file")]);
    assert_eq!(
        list["listeners"][1]["settings"]["backends"][0],
        b[0].addr.to_string()
    );

    let deleted = sluice
        .call("DELETE", "/v1/listeners/books", Some(TOKEN), "")
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    // The connection made before drains: it still works.
    open.get_mut().write_all(b"after delete\n").await.unwrap();
    let mut line = String::new();
    open.read_line(&mut line).await.unwrap();
    assert_eq!(line, "after delete\n");

    let again = sluice
        .call("DELETE", "/v1/listeners/books", Some(TOKEN), "")
        .await;
    assert_eq!(again.status, 404, "{}", again.body);
    assert_eq!(sluice.get("/v1/listeners/books").await.0, 404);
    let wrong = sluice
        .call("POST", "/v1/listeners/books", Some(TOKEN), "{}")
        .await;
    assert_eq!(
        (wrong.status, wrong.header("allow")),
        (405, Some("GET, PUT, DELETE"))
    );
    sluice.stop().await;
}

#[tokio::test]
async fn changes_need_the_token_and_without_one_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let b = echo_backends(1).await;
    let body = backends_body("127.0.0.1:0", b[0].addr);
    let sluice = Sluice::start(&write_config(dir.path(), true, "")).await;
    for (token, want) in [
        (None, 401),
        (Some("wrong-token-0123456789"), 401),
        (Some(TOKEN), 201),
    ] {
        let answer = sluice.call("PUT", "/v1/listeners/web", token, &body).await;
        assert_eq!(answer.status, want, "{token:?}: {}", answer.body);
        if want == 401 {
            assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"sluice\""));
        }
    }
    let lowercase = format!("authorization: bearer {TOKEN}");
    let answer = common::http(sluice.admin, "DELETE", "/v1/listeners/web", &[&lowercase], "").await;
    assert_eq!(
        answer.status, 200,
        "the scheme is case-insensitive: {}",
        answer.body
    );
    sluice.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&write_config(
        dir.path(),
        false,
        "[listeners.a]\nbind = \"127.0.0.1:0\"\nbackends = [\"127.0.0.1:9\"]\n",
    ))
    .await;
    let answer = sluice.call("PUT", "/v1/listeners/web", Some(TOKEN), &body).await;
    assert_eq!(answer.status, 403);
    assert!(
        answer.body.contains("api_token_file") && answer.body.contains("SLUICE_API_TOKEN"),
        "{}",
        answer.body
    );
    assert_eq!(sluice.get("/v1/listeners").await.0, 200, "reading needs no token");
    sluice.stop().await;
}

#[tokio::test]
async fn invalid_bodies_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&write_config(dir.path(), true, "")).await;
    for (body, want) in [
        (
            r#"{"bind": 7000}"#,
            "invalid type: integer `7000`, expected a string",
        ),
        (
            r#"{"bind": "127.0.0.1:0", "servce": "redis"}"#,
            "listeners.web.servce: unknown field `servce`",
        ),
        (
            r#"{"bind": "127.0.0.1:0", "service": "redis", "max_flows": 5}"#,
            "listeners.web.max_flows: a UDP setting",
        ),
        (
            r#"{"bind": "127.0.0.1:99999", "service": "redis"}"#,
            "listeners.web.bind: invalid address",
        ),
        (r#"{"service": "redis"}"#, "listeners.web: `bind` is required"),
        (
            r#"{"bind": "127.0.0.1:0", "health": {"interval": "0s"}, "service": "r"}"#,
            "listeners.web.health.interval: must be at least",
        ),
    ] {
        let (status, answer) = sluice.put("web", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let problems = answer["problems"].to_string();
        assert!(problems.contains(want), "{body}: {problems}");
    }
    // Keys are named even where the parser's message does not.
    let (_, answer) = sluice.put("web", r#"{"bind": 7000}"#).await;
    assert!(
        answer["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("listeners.web.bind: "),
        "{answer}"
    );
    for (body, want) in [
        ("not json", "must be a JSON object"),
        ("[]", "must be a JSON object"),
        (r#"{"bind": null}"#, "null is not a value"),
    ] {
        let (status, answer) = sluice.put("web", body).await;
        assert_eq!(status, 400);
        assert!(answer["error"].as_str().unwrap().contains(want), "{answer}");
    }
    let (status, _) = sluice
        .put("we.b", r#"{"bind": "127.0.0.1:0", "service": "r"}"#)
        .await;
    assert_eq!(status, 400, "a name that is not plain");
    assert_eq!(
        sluice.get("/v1/listeners").await.1["listeners"],
        Value::Array(vec![]),
        "nothing was added"
    );
    sluice.stop().await;
}

#[tokio::test]
async fn the_files_listeners_and_addresses_in_use_are_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let b = echo_backends(1).await;
    // A fixed port for the file's listener, so that a clash is visible
    // in the configuration (port 0 never clashes).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file_listener = format!(
        "[listeners.redis]\nbind = \"127.0.0.1:{port}\"\nbackends = [\"{}\"]\n",
        b[0].addr
    );
    let sluice = Sluice::start(&write_config(dir.path(), true, &file_listener)).await;

    let (status, answer) = sluice
        .put("redis", &backends_body("127.0.0.1:0", b[0].addr))
        .await;
    assert_eq!(status, 409);
    assert!(
        answer["error"].as_str().unwrap().contains("sluice.toml"),
        "{answer}"
    );
    let answer = sluice
        .call("DELETE", "/v1/listeners/redis", Some(TOKEN), "")
        .await;
    assert_eq!(answer.status, 409, "{}", answer.body);

    let (status, answer) = sluice
        .put("other", &backends_body(&format!("0.0.0.0:{port}"), b[0].addr))
        .await;
    assert_eq!(status, 409);
    assert!(
        answer["problems"][0]
            .as_str()
            .unwrap()
            .contains("in use by listener 'redis'"),
        "{answer}"
    );

    let (status, answer) = sluice
        .put("other", &backends_body(&sluice.admin.to_string(), b[0].addr))
        .await;
    assert_eq!(status, 409);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("in use by the admin endpoint"),
        "{answer}"
    );

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let (status, answer) = sluice
        .put("other", &backends_body(&addr.to_string(), b[0].addr))
        .await;
    assert_eq!(status, 409);
    let holder = format!("{addr} is in use by pid {}", std::process::id());
    assert!(answer["error"].as_str().unwrap().contains(&holder), "{answer}");
    sluice.stop().await;
}

#[tokio::test]
async fn the_runtime_file_keeps_the_apis_listeners_across_restarts_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let b = echo_backends(2).await;
    let config = write_config(dir.path(), true, "");
    let sluice = Sluice::start(&config).await;
    let (status, _) = sluice
        .put("books", &backends_body("127.0.0.1:0", b[0].addr))
        .await;
    assert_eq!(status, 201);
    let saved = std::fs::read_to_string(dir.path().join("runtime.toml")).unwrap();
    assert!(
        saved.contains("[listeners.books]") && saved.contains(&b[0].addr.to_string()),
        "{saved}"
    );

    // SIGHUP: the file gains a listener; the API's stays.
    let file_listener = format!(
        "[listeners.later]\nbind = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
        b[1].addr
    );
    write_config(dir.path(), true, &file_listener);
    let report = sluice.control.reload_file().await.unwrap();
    assert_eq!(report.removed, Vec::<String>::new());
    assert_eq!(
        report.added.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["later"]
    );
    let (_, list) = sluice.get("/v1/listeners").await;
    assert_eq!(list["listeners"].as_array().unwrap().len(), 2, "{list}");

    let (_, metrics) = common::http_get(sluice.admin, "/metrics").await;
    let changes = |origin: &str, result: &str| {
        let series = format!("sluice_config_changes_total{{origin=\"{origin}\",result=\"{result}\"}}");
        sample(&metrics, &series)
    };
    assert_eq!(changes("api", "ok"), Some(1.0));
    assert_eq!(changes("file", "ok"), Some(1.0));
    assert_eq!(changes("api", "error"), Some(0.0));
    sluice.stop().await;

    // A restart reads it back.
    let sluice = Sluice::start(&config).await;
    let names: Vec<&str> = sluice.addrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["later", "books"]);
    let (_, books) = sluice.get("/v1/listeners/books").await;
    assert_eq!(books["origin"], "api");
    assert_eq!(backend_port(sluice.bound("books").await).await, b[0].addr.port());
    sluice.stop().await;
}

#[tokio::test]
async fn a_broken_runtime_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        true,
        "[listeners.web]\nbind = \"127.0.0.1:0\"\nservice = \"web\"\n",
    );
    let runtime = dir.path().join("runtime.toml");
    for (text, want) in [
        (
            "[listeners.books]\nbind = \"127.0.0.1:0\"\nbalance = \"fastest\"\n",
            "runtime.toml:3: unknown variant `fastest`",
        ),
        (
            "refresh = \"1s\"\n",
            "runtime.toml:1: unknown field `refresh`, expected `listeners`",
        ),
        (
            "[listeners.web]\nbind = \"127.0.0.1:0\"\nservice = \"web\"\n",
            "runtime.toml:1: listeners.web: ",
        ),
    ] {
        std::fs::write(&runtime, text).unwrap();
        let e = Config::load(Some(&config), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}
