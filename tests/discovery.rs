//! Discovery end to end, in-process: a fake DNS server changes under a running
//! sluice and new connections follow. Time is paused, so "within two refresh
//! intervals" is exact, not a race.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{FakeDns, Mode, Sluice, Srv, backend_port, connect, dns_config, echo_backends};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::sleep;

const REFRESH: Duration = Duration::from_secs(1);

/// Backend ports reached by `n` fresh connections (round-robin: each equally).
async fn ports_seen(addr: SocketAddr, n: usize) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(backend_port(addr).await).or_default() += 1;
    }
    seen
}

fn ports(addrs: &[SocketAddr]) -> BTreeSet<u16> {
    addrs.iter().map(SocketAddr::port).collect()
}

fn keys(seen: &BTreeMap<u16, usize>) -> BTreeSet<u16> {
    seen.keys().copied().collect()
}

#[tokio::test(start_paused = true)]
async fn added_and_removed_backends_are_seen_within_two_refreshes() {
    let dns = FakeDns::start().await;
    let b: Vec<SocketAddr> = echo_backends(3).await.iter().map(|b| b.addr).collect();
    dns.set_backends("redis", &b[..2]);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;

    let seen = ports_seen(sluice.addr(), 6).await;
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        [3, 3],
        "round-robin over two: {seen:?}"
    );
    assert_eq!(keys(&seen), ports(&b[..2]));

    dns.set_backends("redis", &b);
    sleep(2 * REFRESH).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 6).await), ports(&b));

    dns.set_backends("redis", &b[1..]);
    sleep(2 * REFRESH).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 6).await), ports(&b[1..]));
}

#[tokio::test(start_paused = true)]
async fn port_change_moves_new_connections_and_keeps_established_ones() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    dns.set_backends("web", &[b[0].addr]);
    let sluice = Sluice::start(&dns_config(&dns, "web", "")).await;

    let (mut old, port) = connect(sluice.addr()).await;
    assert_eq!(port, b[0].addr.port());

    // Same IP, new port: the instance was rescheduled.
    dns.set_backends("web", &[b[1].addr]);
    sleep(2 * REFRESH).await;
    assert_eq!(backend_port(sluice.addr()).await, b[1].addr.port());

    // The connection made before the change still works end to end.
    old.get_mut().write_all(b"still here\n").await.unwrap();
    let mut line = String::new();
    old.read_line(&mut line).await.unwrap();
    assert_eq!(line, "still here\n");
}

#[tokio::test(start_paused = true)]
async fn dns_failures_keep_the_last_good_set() {
    let dns = FakeDns::start().await;
    let b: Vec<SocketAddr> = echo_backends(2).await.iter().map(|b| b.addr).collect();
    dns.set_backends("redis", &b);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 2).await), ports(&b));

    for mode in [Mode::Silent, Mode::ServFail, Mode::Garbage] {
        dns.set_mode(mode);
        sleep(10 * REFRESH).await;
        assert_eq!(keys(&ports_seen(sluice.addr(), 4).await), ports(&b), "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn nxdomain_empties_the_set_only_after_the_grace_period() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "empty_grace = \"5s\"")).await;
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());

    dns.set_mode(Mode::NxDomain);
    sleep(3 * REFRESH).await;
    assert_eq!(
        backend_port(sluice.addr()).await,
        b[0].addr.port(),
        "emptied before the grace period"
    );

    sleep(4 * REFRESH).await;
    let mut reader = common::raw_connect(sluice.addr()).await;
    let mut line = String::new();
    assert_eq!(
        reader.read_line(&mut line).await.unwrap(),
        0,
        "expected close, got {line:?}"
    );

    // A returning answer is applied at once.
    dns.set_mode(Mode::Answer);
    sleep(2 * REFRESH).await;
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
}

#[tokio::test(start_paused = true)]
async fn hundred_backends_truncated_over_udp_are_fetched_over_tcp() {
    let dns = FakeDns::start().await;
    let b: Vec<SocketAddr> = echo_backends(100).await.iter().map(|b| b.addr).collect();
    dns.set_backends("graphite", &b);
    let sluice = Sluice::start(&dns_config(&dns, "graphite", "")).await;

    let seen = ports_seen(sluice.addr(), 100).await;
    assert_eq!(keys(&seen), ports(&b), "every one of the 100 backends is used");
    assert!(
        dns.tcp_queries.load(Relaxed) > 0,
        "the truncated answer was retried over TCP"
    );
}

#[tokio::test(start_paused = true)]
async fn targets_without_glue_are_looked_up() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    let records = b
        .iter()
        .map(|b| Srv {
            glue: false,
            ..Srv::new(b.addr)
        })
        .collect();
    dns.set("redis", records);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    let want: Vec<SocketAddr> = b.iter().map(|b| b.addr).collect();
    assert_eq!(keys(&ports_seen(sluice.addr(), 4).await), ports(&want));
}

#[tokio::test(start_paused = true)]
async fn tcp_only_mode_never_uses_udp() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "tcp = true")).await;
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
    assert_eq!(dns.udp_queries.load(Relaxed), 0);
    assert!(dns.tcp_queries.load(Relaxed) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_before_the_first_answer_waits_for_it() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    dns.set_mode(Mode::Silent);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "connect_timeout = \"10s\"")).await;
    let addr = sluice.addr();
    let waiting = tokio::spawn(async move { backend_port(addr).await });
    sleep(REFRESH).await;
    assert!(!waiting.is_finished());
    dns.set_mode(Mode::Answer);
    assert_eq!(waiting.await.unwrap(), b[0].addr.port());
}

#[tokio::test(start_paused = true)]
async fn listeners_with_the_same_query_share_one_lookup() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    let config = format!(
        "dns = \"{}\"\nrefresh = \"1s\"\n\
         [listeners.a]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n\
         [listeners.b]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n",
        dns.addr
    );
    let sluice = Sluice::start(&config).await;
    for (_, addr) in &sluice.addrs {
        assert_eq!(backend_port(*addr).await, b[0].addr.port());
    }
    let before = dns.udp_queries.load(Relaxed);
    sleep(10 * REFRESH).await;
    let per_refresh = (dns.udp_queries.load(Relaxed) - before) as f64 / 10.0;
    assert!(
        (0.9..=1.1).contains(&per_refresh),
        "{per_refresh} queries per refresh"
    );
}
