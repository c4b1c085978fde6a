//! Discovery through Consul's HTTP API (`discovery = "consul"`) in-process,
//! against the stand-in of test-support/src/consul_standin.rs: registrations and
//! failing checks seen as they happen, Consul's weights and addresses, ACL
//! tokens, a misbehaving or vanished agent, and empty answers.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{EchoBackend, Sluice, backend_port, echo_backends, http_get};
use sluice_test_support::consul_standin::{ConsulStandin, Instance};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Far longer than any test: nothing here may depend on polling.
const PATIENCE: Duration = Duration::from_secs(10);

fn config(consul: &ConsulStandin, global: &str, listener: &str) -> String {
    format!(
        "metrics = \"127.0.0.1:0\"\nconsul = \"{}\"\n{global}\n[listeners.web]\nbind = \"127.0.0.1:0\"\n\
         discovery = \"consul\"\nservice = \"web\"\nbalance = \"round-robin\"\n{listener}\n",
        consul.addr
    )
}

fn instance(id: &str, backend: &EchoBackend) -> Instance {
    Instance::new(id, "web", "127.0.0.1", backend.addr.port())
}

/// The backend port a fresh connection through `addr` reaches, if any.
async fn reached(addr: SocketAddr) -> Option<u16> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    line.trim().parse().ok()
}

/// How many of `count` fresh connections through `addr` reach each backend
/// port (0: none).
async fn spread(addr: SocketAddr, count: usize) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        *seen.entry(reached(addr).await.unwrap_or(0)).or_default() += 1;
    }
    seen
}

/// Waits until a round of connections reaches exactly `ports`; how long it took.
async fn until_ports(addr: SocketAddr, ports: &[u16]) -> Duration {
    let started = Instant::now();
    let mut want: Vec<u16> = ports.to_vec();
    want.sort_unstable();
    loop {
        let seen: Vec<u16> = spread(addr, 2 * ports.len()).await.into_keys().collect();
        if seen == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "still {seen:?}, want {want:?}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a connection through `addr` is closed without reaching a backend.
async fn refused(addr: SocketAddr) -> bool {
    timeout(PATIENCE, reached(addr)).await == Ok(None)
}

/// The first query of /status.
async fn query_status(sluice: &Sluice) -> serde_json::Value {
    let (_, body) = http_get(sluice.metrics.unwrap(), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["queries"][0].clone()
}

#[tokio::test]
async fn registrations_and_failing_checks_are_seen_as_they_happen() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(3).await;
    consul.register(instance("web-1", &b[0]));
    consul.register(instance("web-2", &b[1]));
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    until_ports(sluice.addr(), &[b[0].addr.port(), b[1].addr.port()]).await;

    // The watch blocks for minutes: only Consul's answer to the held query
    // can bring these changes within PATIENCE.
    consul.register(instance("web-3", &b[2]));
    let ports = [b[0].addr.port(), b[1].addr.port(), b[2].addr.port()];
    until_ports(sluice.addr(), &ports).await;
    consul.set_status("web-1", "critical");
    until_ports(sluice.addr(), &ports[1..]).await;
    consul.deregister("web-2");
    until_ports(sluice.addr(), &ports[2..]).await;

    let query = query_status(&sluice).await;
    assert_eq!(query["name"], "consul:web");
    assert_eq!(query["index"].as_u64(), Some(consul.index()), "{query}");
    assert!(query["last_error"].is_null(), "{query}");
}

#[tokio::test]
async fn consul_weights_and_addresses_are_used() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(2).await;
    consul.register(instance("light", &b[0]));
    // No service address: the node's address is the instance's.
    let mut heavy = instance("heavy", &b[1]);
    heavy.address = String::new();
    heavy.node_address = "127.0.0.1".into();
    heavy.weight = 3;
    consul.register(heavy);
    // Neither usable nor fatal: left out, the rest kept.
    let mut nowhere = Instance::new("nowhere", "web", "0.0.0.0", 9);
    nowhere.node = "elsewhere".into();
    consul.register(nowhere);
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    until_ports(sluice.addr(), &[b[0].addr.port(), b[1].addr.port()]).await;
    let seen = spread(sluice.addr(), 40).await;
    assert_eq!(
        seen,
        BTreeMap::from([(b[0].addr.port(), 10), (b[1].addr.port(), 30)])
    );
}

#[tokio::test]
async fn a_tag_and_a_datacenter_narrow_the_watch() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(2).await;
    let mut primary = instance("primary", &b[0]);
    primary.tags = vec!["primary".into()];
    consul.register(primary);
    consul.register(instance("replica", &b[1]));
    let sluice = Sluice::start(&config(&consul, "datacenter = \"dc1\"", "tag = \"primary\"")).await;
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;
    assert_eq!(query_status(&sluice).await["name"], "consul:primary.web@dc1");
}

#[tokio::test]
async fn the_acl_token_is_sent_and_a_refusal_is_reported() {
    let consul = ConsulStandin::start_with_token("s3cret").await;
    let b = echo_backends(1).await;
    consul.register(instance("web-1", &b[0]));
    let sluice = Sluice::start(&config(&consul, "consul_token = \"s3cret\"", "")).await;
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;

    let denied = Sluice::start(&config(&consul, "consul_token = \"wrong\"", "")).await;
    assert!(refused(denied.addr()).await);
    let started = Instant::now();
    let error = loop {
        let query = query_status(&denied).await;
        if let Some(error) = query["last_error"].as_str() {
            break error.to_string();
        }
        assert!(started.elapsed() < PATIENCE);
        sleep(Duration::from_millis(5)).await;
    };
    assert!(
        error.contains("403") && error.contains("ACL not found"),
        "{error}"
    );
    assert!(!error.contains("wrong"), "the token leaked into {error}");
}

#[tokio::test]
async fn a_vanished_agent_keeps_the_last_good_set_until_it_is_back() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(2).await;
    consul.register(instance("web-1", &b[0]));
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;

    let addr = consul.addr;
    drop(consul);
    let started = Instant::now();
    while query_status(&sluice).await["last_error"].is_null() {
        assert!(started.elapsed() < PATIENCE, "the lost agent went unnoticed");
        sleep(Duration::from_millis(5)).await;
    }
    // Keeps serving, and keeps trying.
    assert_eq!(
        spread(sluice.addr(), 4).await,
        BTreeMap::from([(b[0].addr.port(), 4)])
    );

    // A new agent on the same address, with its own (lower) index.
    let consul = ConsulStandin::start_on(addr).await;
    consul.register(instance("web-2", &b[1]));
    until_ports(sluice.addr(), &[b[1].addr.port()]).await;
}

#[tokio::test]
async fn an_agent_that_never_blocks_is_asked_less_and_less_often() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(1).await;
    consul.register(instance("web-1", &b[0]));
    let sluice = Sluice::start(&config(&consul, "", "")).await;
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;
    consul.set_misbehaving(true);
    let before = consul.requests();
    sleep(Duration::from_secs(4)).await;
    // 100 ms apart would be 40; with the delay doubling from 1 s, at most 4.
    let asked = consul.requests() - before;
    assert!((1..=4).contains(&asked), "{asked} requests in 4 s");
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
}

#[tokio::test]
async fn errors_back_off() {
    // An "agent" that hangs up on every request.
    let hangs_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hangs_up.local_addr().unwrap();
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hangs_up.accept().await {
            drop(stream);
            let _ = tx.send(Instant::now());
        }
    });
    let config = format!(
        "metrics = \"127.0.0.1:0\"\nconsul = \"{addr}\"\n[listeners.web]\nbind = \"127.0.0.1:0\"\n\
         discovery = \"consul\"\nservice = \"web\"\n"
    );
    let _sluice = Sluice::start(&config).await;
    let first = accepted.recv().await.unwrap();
    sleep(Duration::from_secs(4)).await;
    let mut gaps = Vec::new();
    let mut last = first;
    while let Ok(at) = accepted.try_recv() {
        gaps.push(at - last);
        last = at;
    }
    // 250 ms, 500 ms, 1 s, 2 s: at most 4 more in 4 s (40 if 100 ms apart).
    assert!((2..=4).contains(&gaps.len()), "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "not growing: {gaps:?}");
}

#[tokio::test]
async fn an_empty_service_empties_the_set_only_after_the_grace() {
    let consul = ConsulStandin::start().await;
    let b = echo_backends(1).await;
    consul.register(instance("web-1", &b[0]));
    let sluice = Sluice::start(&config(&consul, "", "empty_grace = \"2s\"")).await;
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;
    consul.set_status("web-1", "critical");
    let started = Instant::now();
    // Still served within the grace.
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
    while !refused(sluice.addr()).await {
        assert!(started.elapsed() < PATIENCE);
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Back as soon as it passes again.
    consul.set_status("web-1", "passing");
    until_ports(sluice.addr(), &[b[0].addr.port()]).await;
}
