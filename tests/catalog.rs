//! Listeners from the Consul catalog (`[catalog]`), in-process against the
//! stand-in of test-support/src/consul_standin.rs: a registration's
//! `sluice.listen` tag opens its port with options from its other tags, and
//! what must not be served is refused with a reason, in /status and the
//! metrics; the file wins over the catalog; a flapping registration keeps
//! its port; a deregistered one drains; Consul gone keeps the listeners.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{EchoBackend, Sluice, echo_backends, http, http_get, sample};
use serde_json::Value;
use sluice_test_support::consul_standin::{ConsulStandin, Instance};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Far longer than any test: nothing here may depend on polling.
const PATIENCE: Duration = Duration::from_secs(10);

/// A port free on 127.0.0.1 now: a tag names its port, it cannot be 0.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(consul: &ConsulStandin, catalog: &str, rest: &str) -> String {
    format!(
        "metrics = \"127.0.0.1:0\"\nconsul = \"{}\"\nempty_grace = \"1s\"\n{rest}\n[catalog]\nbind = \"127.0.0.1\"\n{catalog}\n",
        consul.addr
    )
}

fn instance(id: &str, service: &str, backend: &EchoBackend, tags: &[String]) -> Instance {
    let mut instance = Instance::new(id, service, "127.0.0.1", backend.addr.port());
    instance.tags = tags.to_vec();
    instance
}

/// The backend port a fresh connection to `addr` reaches, if any.
async fn reached(addr: SocketAddr) -> Option<u16> {
    let stream = timeout(PATIENCE, TcpStream::connect(addr)).await.ok()?.ok()?;
    let (mut stream, mut line) = (BufReader::new(stream), String::new());
    timeout(PATIENCE, stream.read_line(&mut line)).await.ok()?.ok()?;
    line.trim().parse().ok()
}

/// Waits until a connection to 127.0.0.1:`port` reaches `backend` (or,
/// `None`, until nothing listens there).
async fn until_served(port: u16, backend: Option<u16>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    loop {
        let now = match backend {
            Some(_) => reached(addr).await,
            None => TcpStream::connect(addr).await.ok().map(|_| 0),
        };
        if now == backend {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "port {port}: {now:?}, want {backend:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

async fn status(sluice: &Sluice) -> Value {
    let (_, body) = http_get(sluice.metrics.unwrap(), "/status").await;
    serde_json::from_str(&body).unwrap()
}

/// Waits until /status shows `count` refused claims; returns them.
async fn until_refused(sluice: &Sluice, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let refused = status(sluice).await["catalog"]["refused"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if refused.len() == count {
            return refused;
        }
        assert!(started.elapsed() < PATIENCE, "refused: {refused:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_registration_with_a_listen_tag_is_served_with_the_options_of_its_tags() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(1).await;
    let port = free_port();
    let tags = [
        format!("sluice.listen={port}"),
        "sluice.balance=p2c".into(),
        "other".into(),
    ];
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    // No config edit: the registration alone opens the port.
    consul.register(instance("redis-1", "redis", &backends[0], &tags));
    until_served(port, Some(backends[0].addr.port())).await;

    let status = status(&sluice).await;
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "redis", "{status}");
    assert_eq!(listener["origin"], "catalog");
    assert_eq!(listener["balance"], "p2c");
    let (ready, _) = http_get(sluice.metrics.unwrap(), "/ready").await;
    assert!(ready.contains("200"), "{ready}");

    // The API may read it, not change it.
    let admin = sluice.metrics.unwrap();
    let answer = http(
        admin,
        "DELETE",
        "/v1/listeners/redis",
        &["Authorization: Bearer x"],
        "",
    )
    .await;
    assert!(answer.status == 409 || answer.status == 403, "{}", answer.body);
}

#[tokio::test]
async fn claims_that_must_not_be_served_are_refused_with_a_reason() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(1).await;
    let (allowed, file_port) = (free_port(), free_port());
    let file_listener = format!(
        "[listeners.mine]\nbind = \"127.0.0.1:{file_port}\"\nbackends = [\"{}\"]\n",
        backends[0].addr
    );
    // The file's port is one a claim may take: the file still wins it.
    let catalog = format!("ports = [\"{allowed}\", \"{file_port}\"]");
    let sluice = Sluice::start(&config(&consul, &catalog, &file_listener)).await;
    let b = &backends[0];
    let outside = (1024..u16::MAX)
        .find(|p| ![allowed, file_port].contains(p))
        .unwrap();
    consul.register(instance("a", "outside", b, &[format!("sluice.listen={outside}")]));
    consul.register(instance("b", "taken", b, &[format!("sluice.listen={file_port}")]));
    consul.register(instance(
        "c",
        "bad",
        b,
        &[
            format!("sluice.listen={allowed}"),
            "sluice.max_connections=0".into(),
        ],
    ));
    consul.register(instance(
        "d",
        "unknown",
        b,
        &[format!("sluice.listen={allowed}"), "sluice.backends=x".into()],
    ));
    let refused = until_refused(&sluice, 4).await;
    let reasons: Vec<(&str, &str)> = refused
        .iter()
        .map(|r| (r["service"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("bad", "invalid"),
            ("outside", "port"),
            ("taken", "conflict"),
            ("unknown", "invalid")
        ],
        "{refused:?}"
    );
    // The same message as the file would get, naming the key.
    let bad = refused[0]["message"].as_str().unwrap();
    assert!(bad.starts_with("listeners.bad.max_connections:"), "{bad}");

    // The file's listener keeps its port; nothing was opened for the others.
    until_served(file_port, Some(b.addr.port())).await;
    until_served(outside, None).await;
    let (_, metrics) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    assert_eq!(
        sample(&metrics, "sluice_catalog_refused{reason=\"invalid\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sluice_catalog_refused{reason=\"port\"}"),
        Some(1.0)
    );

    // A second service on a port the first one holds is refused, not swapped in.
    consul.register(instance("e", "first", b, &[format!("sluice.listen={allowed}")]));
    until_served(allowed, Some(b.addr.port())).await;
    consul.register(instance(
        "f",
        "aaa-second",
        b,
        &[format!("sluice.listen={allowed}")],
    ));
    let refused = until_refused(&sluice, 5).await;
    let second = refused.iter().find(|r| r["service"] == "aaa-second").unwrap();
    assert_eq!(second["reason"], "conflict", "{refused:?}");
    assert!(
        status(&sluice).await["listeners"]
            .to_string()
            .contains("\"first\"")
    );
}

#[tokio::test]
async fn a_flap_keeps_the_port_and_a_deregistration_closes_it_after_the_grace() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(1).await;
    let port = free_port();
    let tags = [format!("sluice.listen={port}")];
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    consul.register(instance("web-1", "web", &backends[0], &tags));
    until_served(port, Some(backends[0].addr.port())).await;

    // Gone and back within empty_grace (1s): the port never closed.
    consul.deregister("web-1");
    sleep(Duration::from_millis(200)).await;
    consul.register(instance("web-1", "web", &backends[0], &tags));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..20 {
        assert!(
            TcpStream::connect(addr).await.is_ok(),
            "the port closed during a flap"
        );
        sleep(Duration::from_millis(50)).await;
    }

    // Consul gone: the last catalog stays.
    consul.stop();
    sleep(Duration::from_millis(1500)).await;
    assert!(
        TcpStream::connect(addr).await.is_ok(),
        "Consul's absence closed the port"
    );
    drop(sluice);
}

#[tokio::test]
async fn a_deregistered_service_loses_its_listener_after_the_grace() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(1).await;
    let port = free_port();
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    consul.register(instance(
        "web-1",
        "web",
        &backends[0],
        &[format!("sluice.listen={port}/udp")],
    ));
    consul.register(instance(
        "tcp-1",
        "tcp",
        &backends[0],
        &[format!("sluice.listen={port}")],
    ));
    until_served(port, Some(backends[0].addr.port())).await;
    let listeners = status(&sluice).await["listeners"].to_string();
    assert!(listeners.contains("\"udp\""), "{listeners}");

    let deregistered = Instant::now();
    consul.deregister("tcp-1");
    until_served(port, None).await;
    assert!(
        deregistered.elapsed() >= Duration::from_millis(900),
        "closed before empty_grace"
    );
}

#[tokio::test]
async fn a_file_listener_added_on_a_catalog_port_takes_it() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(2).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config(&consul, "", "")).unwrap();
    let server = sluice::Server::bind(sluice::Config::load(Some(&path), &Default::default()).unwrap())
        .await
        .unwrap();
    let (control, metrics) = (server.control(), server.metrics_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    consul.register(instance(
        "web-1",
        "web",
        &backends[0],
        &[format!("sluice.listen={port}")],
    ));
    until_served(port, Some(backends[0].addr.port())).await;

    let mine = format!(
        "[listeners.mine]\nbind = \"127.0.0.1:{port}\"\nbackends = [\"{}\"]\n",
        backends[1].addr
    );
    std::fs::write(&path, config(&consul, "", &mine)).unwrap();
    let report = control.reload_file().await.unwrap();
    assert_eq!(report.removed, ["web"]);
    until_served(port, Some(backends[1].addr.port())).await;
    let (_, body) = http_get(metrics, "/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["catalog"]["refused"][0]["reason"], "conflict", "{status}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_port_another_program_holds_refuses_that_claim_only() {
    let consul = ConsulStandin::start().await;
    let backends = echo_backends(1).await;
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let port = free_port();
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    let b = &backends[0];
    consul.register(instance(
        "a",
        "blocked",
        b,
        &[format!("sluice.listen={held_port}")],
    ));
    consul.register(instance("b", "fine", b, &[format!("sluice.listen={port}")]));
    until_served(port, Some(b.addr.port())).await;
    let refused = until_refused(&sluice, 1).await;
    assert_eq!(refused[0]["service"], "blocked", "{refused:?}");
    assert_eq!(refused[0]["reason"], "conflict");
    assert!(
        refused[0]["message"].as_str().unwrap().contains("cannot bind"),
        "{refused:?}"
    );
    drop(held);
}

#[tokio::test]
async fn a_catalog_alone_is_a_configuration() {
    let config = "consul = \"127.0.0.1:8500\"\n[catalog]\nports = [\"2000-3000\", \"6379\"]\nbalance = \"least-conn\"\n";
    sluice::Config::parse(config, "test.toml", &Default::default()).unwrap();
    for (bad, says) in [
        ("[catalog]\nports = \"3000-2000\"\n", "catalog.ports"),
        ("[catalog]\nbind = \"nowhere\"\n", "catalog.bind"),
        ("[catalog]\nmax_connections = 0\n", "catalog.max_connections"),
        ("[catalog]\nbackends = [\"127.0.0.1:1\"]\n", "catalog.backends"),
        ("[catalog]\nnot_a_key = 1\n", "not_a_key"),
    ] {
        let e = sluice::Config::parse(bad, "test.toml", &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml:1") && e.contains(says), "{bad}: {e}");
    }
}
