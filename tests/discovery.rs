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

#[tokio::test(start_paused = true)]
async fn a_target_that_cannot_be_resolved_is_skipped_and_the_rest_used() {
    // Consul returns a service registered with a host name as a target
    // outside its zone; that name's lookup may be refused.
    for mode in [Mode::Refused, Mode::ServFail] {
        let dns = FakeDns::start().await;
        let b = echo_backends(2).await;
        let elsewhere = Srv {
            glue: false,
            target: Some("db.example.org."),
            ..Srv::new("127.0.0.1:9".parse().unwrap())
        };
        dns.set_name_mode("db.example.org.", mode);
        dns.set("redis", vec![Srv::new(b[0].addr), elsewhere]);
        let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
        assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port(), "{mode:?}");

        // A later instance is still seen: the set is not frozen.
        dns.set("redis", vec![Srv::new(b[0].addr), Srv::new(b[1].addr), elsewhere]);
        sleep(2 * REFRESH).await;
        let want = [b[0].addr, b[1].addr];
        assert_eq!(
            keys(&ports_seen(sluice.addr(), 4).await),
            ports(&want),
            "{mode:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn unspecified_broadcast_and_multicast_addresses_never_become_backends() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    // 0.0.0.0:<b1> would reach b[1], which listens on 127.0.0.1.
    let hostile = ["0.0.0.0", "255.255.255.255", "224.0.0.1"]
        .map(|ip| Srv::new(SocketAddr::new(ip.parse().unwrap(), b[1].addr.port())));
    let mut records = vec![Srv::new(b[0].addr)];
    records.extend(hostile);
    dns.set("redis", records);
    let (logs, _guard) = common::Logs::capture();
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 6).await), ports(&[b[0].addr]));
    sleep(5 * REFRESH).await;
    assert_eq!(logs.count("cannot be a backend"), 1, "{}", logs.text());
}

#[tokio::test(start_paused = true)]
async fn glueless_targets_are_looked_up_a_bounded_number_at_a_time() {
    let dns = FakeDns::start().await;
    let records: Vec<Srv> = (0..1500u32)
        .map(|i| Srv {
            glue: false,
            ..Srv::new(SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 7000)))
        })
        .collect();
    dns.set("graphite", records);
    // Target lookups are never answered.
    dns.set_type_mode(hickory_proto::rr::RecordType::A, Mode::Silent);
    dns.set_type_mode(hickory_proto::rr::RecordType::AAAA, Mode::Silent);
    let _sluice = Sluice::start(&dns_config(&dns, "graphite", "")).await;
    sleep(REFRESH / 2).await;
    let first = dns.target_queries.load(Relaxed);
    assert!(first <= 2 * 16, "{first} target queries at once");
    sleep(10 * REFRESH).await;
    let per_refresh = dns.target_queries.load(Relaxed) / 10;
    assert!(per_refresh <= 4 * 16, "{per_refresh} target queries per refresh");
}

#[tokio::test(start_paused = true)]
async fn a_target_with_several_ports_is_looked_up_once_per_refresh() {
    let dns = FakeDns::start().await;
    let b = echo_backends(3).await;
    let records = b
        .iter()
        .map(|b| Srv {
            glue: false,
            target: Some("node1.node.dc1.consul."),
            ..Srv::new(b.addr)
        })
        .collect();
    dns.set("redis", records);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 3).await).len(), 3);
    let before = dns.target_queries.load(Relaxed);
    sleep(10 * REFRESH).await;
    // One A and one AAAA query per refresh.
    let per_refresh = (dns.target_queries.load(Relaxed) - before) as f64 / 10.0;
    assert!((1.8..=2.2).contains(&per_refresh), "{per_refresh}");
}

#[tokio::test(start_paused = true)]
async fn a_target_that_stops_resolving_keeps_its_last_address() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    let glueless = Srv {
        glue: false,
        ..Srv::new(b[1].addr)
    };
    dns.set("redis", vec![Srv::new(b[0].addr), glueless]);
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    let both = [b[0].addr, b[1].addr];
    assert_eq!(keys(&ports_seen(sluice.addr(), 4).await), ports(&both));
    dns.set_type_mode(hickory_proto::rr::RecordType::A, Mode::ServFail);
    sleep(5 * REFRESH).await;
    assert_eq!(keys(&ports_seen(sluice.addr(), 4).await), ports(&both));
}

#[tokio::test(start_paused = true)]
async fn failures_are_logged_once_per_change_not_per_refresh() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    let gone = Srv {
        glue: false,
        target: Some("gone.node.dc1.consul."),
        ..Srv::new("127.0.0.1:9".parse().unwrap())
    };
    dns.set_name_mode("gone.node.dc1.consul.", Mode::NxDomain);
    dns.set("redis", vec![Srv::new(b[0].addr), gone]);
    let (logs, _guard) = common::Logs::capture();
    let _sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    sleep(20 * REFRESH).await;
    assert_eq!(logs.count("left out"), 1, "{}", logs.text());

    // Lookups failing with a different text each time: still one line.
    dns.set_mode(Mode::ServFail);
    sleep(20 * REFRESH).await;
    dns.set_mode(Mode::Garbage);
    sleep(20 * REFRESH).await;
    assert_eq!(logs.count("lookup failed"), 1, "{}", logs.text());
    dns.set_mode(Mode::Answer);
    sleep(2 * REFRESH).await;
    assert_eq!(logs.count("lookups succeed again"), 1, "{}", logs.text());
}

#[tokio::test(start_paused = true)]
async fn forged_and_garbage_answers_are_reported_as_such() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    let config = dns_config(&dns, "redis", "") + "";
    let config = format!("metrics = \"127.0.0.1:0\"\n{config}");
    let sluice = Sluice::start(&config).await;
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
    for (mode, want) in [
        (Mode::WrongId, "reply with ID"),
        (Mode::Garbage, "not a DNS message"),
    ] {
        dns.set_mode(mode);
        sleep(5 * REFRESH).await;
        let (_, status) = common::http_get(sluice.metrics.unwrap(), "/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let error = status["queries"][0]["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{mode:?}: {error}");
    }
}

/// How long one DNS query waits for one server (the default `dns_timeout`).
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn a_dead_or_silent_first_dns_server_costs_a_timeout_not_the_set() {
    for first in ["dead", "silent"] {
        let live = FakeDns::start().await;
        let b = echo_backends(2).await;
        live.set_backends("redis", &[b[0].addr]);
        let first_addr = if first == "dead" {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        } else {
            let silent = FakeDns::start().await;
            silent.set_mode(Mode::Silent);
            silent.addr
        };
        let config = format!(
            "dns = [\"{first_addr}\", \"{}\"]\nrefresh = \"1s\"\n\
             [listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\nconnect_timeout = \"10s\"\n",
            live.addr
        );
        let sluice = Sluice::start(&config).await;
        assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port(), "{first}");

        live.set_backends("redis", &[b[1].addr]);
        sleep(2 * REFRESH + DNS_TIMEOUT).await;
        assert_eq!(
            keys(&ports_seen(sluice.addr(), 4).await),
            ports(&[b[1].addr]),
            "{first}"
        );
    }
}

// Real time: under a paused clock, 200 queries queued on one connection let
// the clock jump past hickory's timeouts while the fake server works.
#[tokio::test]
async fn tcp_only_lookups_of_many_services_share_one_connection() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    let mut config = format!("dns = \"{}\"\nrefresh = \"1s\"\ntcp = true\n", dns.addr);
    for i in 0..200 {
        dns.set_backends(&format!("svc{i}"), &[b[0].addr]);
        config.push_str(&format!(
            "[listeners.svc{i}]\nbind = \"127.0.0.1:0\"\nservice = \"svc{i}\"\n"
        ));
    }
    let sluice = Sluice::start(&config).await;
    sleep(5 * REFRESH).await;
    assert_eq!(backend_port(sluice.addrs[199].1).await, b[0].addr.port());
    let (queries, connections) = (dns.tcp_queries.load(Relaxed), dns.tcp_connections.load(Relaxed));
    assert!(queries >= 4 * 200, "{queries} queries");
    // One, or two when hickory's first connection races a second query.
    assert!(
        connections <= 2,
        "{connections} TCP connections for {queries} queries"
    );
    assert_eq!(dns.udp_queries.load(Relaxed), 0);
}
