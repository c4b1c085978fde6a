//! Health in-process: active checks take a failing backend out of selection
//! and bring it back, every backend down still serves, passive ejection
//! backs off, and connections to removed backends drain.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{CheckedBackend, EchoBackend, FakeDns, Sluice, connect, http_get, request, sample};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::sleep;

const CHECK: &str = "[listeners.app.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n\
                     send = \"PING\\r\\n\"\nexpect = \"+PONG\"\n";

fn config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "metrics = \"127.0.0.1:0\"\n[listeners.app]\nbind = \"127.0.0.1:0\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

async fn ports(addr: SocketAddr, n: usize) -> BTreeSet<u16> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(request(addr).await);
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn failing_check_takes_a_backend_out_and_passing_brings_it_back() {
    let (a, b) = (CheckedBackend::start().await, CheckedBackend::start().await);
    let sluice = Sluice::start(&config(&[a.addr, b.addr], CHECK)).await;
    assert_eq!(ports(sluice.addr(), 4).await.len(), 2);

    a.set_healthy(false);
    sleep(Duration::from_secs(5)).await;
    let before = a.clients.load(Relaxed);
    assert_eq!(ports(sluice.addr(), 6).await, BTreeSet::from([b.addr.port()]));
    assert_eq!(
        a.clients.load(Relaxed),
        before,
        "a backend failing its check got clients"
    );
    let (_, status) = http_get(sluice.metrics.unwrap(), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let down: Vec<&str> = status["listeners"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["healthy"] == false)
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    assert_eq!(down, [a.addr.to_string()]);

    a.set_healthy(true);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(ports(sluice.addr(), 4).await.len(), 2, "back after `rise` passes");
}

#[tokio::test(start_paused = true)]
async fn with_every_backend_down_sluice_still_tries_them() {
    let (a, b) = (CheckedBackend::start().await, CheckedBackend::start().await);
    let sluice = Sluice::start(&config(&[a.addr, b.addr], CHECK)).await;
    a.set_healthy(false);
    b.set_healthy(false);
    sleep(Duration::from_secs(5)).await;
    let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    assert_eq!(
        sample(&text, "sluice_backends{listener=\"app\",state=\"unhealthy\"}"),
        Some(2.0)
    );
    assert_eq!(
        ports(sluice.addr(), 4).await.len(),
        2,
        "better a sick backend than a refusal"
    );
}

#[tokio::test(start_paused = true)]
async fn connect_failures_eject_with_backoff_and_success_restores() {
    let live = EchoBackend::start().await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let sluice = Sluice::start(&config(&[dead, live.addr], "eject_after = 2")).await;
    let failures = format!("sluice_backend_connect_failures_total{{listener=\"app\",backend=\"{dead}\"}}");
    let failures = || async {
        let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
        sample(&text, &failures).unwrap()
    };
    for _ in 0..20 {
        assert_eq!(common::backend_port(sluice.addr()).await, live.addr.port());
    }
    assert_eq!(failures().await, 2.0, "ejected after 2 failures, not tried again");

    // After the 1s ejection one try is allowed; it fails and ejects for 2s.
    sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        common::backend_port(sluice.addr()).await;
    }
    assert_eq!(failures().await, 3.0);

    // The instance comes back: once the ejection is over it gets clients again.
    let revived = EchoBackend::start_on(dead).await;
    sleep(Duration::from_millis(2100)).await;
    let seen: BTreeSet<u16> = {
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            seen.insert(common::backend_port(sluice.addr()).await);
        }
        seen
    };
    assert_eq!(seen, BTreeSet::from([dead.port(), live.addr.port()]));
    assert!(revived.accepted.load(Relaxed) >= 2);
}

#[tokio::test(start_paused = true)]
async fn connections_to_a_removed_backend_drain_after_drain_timeout() {
    let dns = FakeDns::start().await;
    let (a, b) = (EchoBackend::start().await, EchoBackend::start().await);
    dns.set_backends("app", &[a.addr]);
    let config = format!(
        "dns = \"{}\"\nrefresh = \"1s\"\n[listeners.app]\nbind = \"127.0.0.1:0\"\nservice = \"app\"\n\
         drain_timeout = \"5s\"\n",
        dns.addr
    );
    let sluice = Sluice::start(&config).await;
    let (mut old, port) = connect(sluice.addr()).await;
    assert_eq!(port, a.addr.port());

    dns.set_backends("app", &[b.addr]);
    sleep(Duration::from_secs(3)).await;
    old.get_mut().write_all(b"still\n").await.unwrap();
    let mut line = String::new();
    old.read_line(&mut line).await.unwrap();
    assert_eq!(
        line, "still\n",
        "draining connections keep working until drain_timeout"
    );

    sleep(Duration::from_secs(4)).await;
    let mut rest = Vec::new();
    assert_eq!(
        old.read_to_end(&mut rest).await.unwrap_or(0),
        0,
        "closed after drain_timeout"
    );
}
