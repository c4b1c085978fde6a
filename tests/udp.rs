//! UDP listeners in-process: flows are sticky and spread, expire, are evicted
//! at `max_flows`, survive backend removal until `drain_timeout`, move off a
//! refusing backend (which is ejected like a TCP one), are kept away from a
//! backend failing a UDP health check, and carry any datagram size unchanged.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use common::{FakeDns, Sluice, UdpEcho, http_get, sample};
use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout};

const REPLY_WAIT: Duration = Duration::from_millis(500);

fn udp_config(dns: &FakeDns, extra: &str) -> String {
    format!(
        "dns = \"{}\"\nrefresh = \"1s\"\nmetrics = \"127.0.0.1:0\"\n\
         [listeners.dns]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nservice = \"dns\"\n{extra}\n",
        dns.addr
    )
}

/// Two echo backends of the `dns` service behind a sluice UDP listener.
async fn two_echoes(extra: &str) -> (FakeDns, UdpEcho, UdpEcho, Sluice) {
    let dns = FakeDns::start().await;
    let (a, b) = (UdpEcho::start().await, UdpEcho::start().await);
    dns.set_backends("dns", &[a.addr, b.addr]);
    let sluice = Sluice::start(&udp_config(&dns, extra)).await;
    (dns, a, b, sluice)
}

/// An echo backend and a port that refuses (ICMP port unreachable), both
/// of the `dns` service, behind a sluice UDP listener.
async fn live_and_refusing(extra: &str) -> (FakeDns, UdpEcho, SocketAddr, Sluice) {
    let dns = FakeDns::start().await;
    let live = UdpEcho::start().await;
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    dns.set_backends("dns", &[dead, live.addr]);
    let sluice = Sluice::start(&udp_config(&dns, extra)).await;
    (dns, live, dead, sluice)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends `payload` through `sluice` and returns the reply, if one comes.
async fn ask(socket: &UdpSocket, sluice: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(payload, sluice).await.unwrap();
    let mut buf = vec![0; 65536];
    let (n, from) = timeout(REPLY_WAIT, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    assert_eq!(from, sluice, "replies come from the listener's address");
    buf.truncate(n);
    Some(buf)
}

/// The port of the backend a `who` through `sluice` reaches.
async fn who(socket: &UdpSocket, sluice: SocketAddr) -> u16 {
    let reply = ask(socket, sluice, b"who").await.expect("no reply");
    String::from_utf8(reply).unwrap().parse().unwrap()
}

async fn metric(sluice: &Sluice, series: &str) -> f64 {
    let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

const FLOWS: &str = "sluice_udp_flows_active{listener=\"dns\"}";
const FLOWS_OPENED: &str = "sluice_listener_connections_total{listener=\"dns\"}";

#[tokio::test]
async fn flows_are_sticky_and_spread_over_backends() {
    let (_dns, _a, _b, sluice) = two_echoes("").await;
    let (first, second) = (client().await, client().await);
    let port = who(&first, sluice.addr()).await;
    for _ in 0..5 {
        assert_eq!(
            who(&first, sluice.addr()).await,
            port,
            "a flow stays on its backend"
        );
    }
    let other = who(&second, sluice.addr()).await;
    assert_ne!(port, other, "round-robin puts the next flow on the other backend");
    assert_eq!(metric(&sluice, FLOWS).await, 2.0);
}

#[tokio::test(start_paused = true)]
async fn idle_flows_expire() {
    let (_dns, _a, _b, sluice) = two_echoes("udp_idle_timeout = \"5s\"").await;
    let socket = client().await;
    let port = who(&socket, sluice.addr()).await;
    sleep(Duration::from_secs(3)).await;
    assert_eq!(who(&socket, sluice.addr()).await, port);
    assert_eq!(metric(&sluice, FLOWS).await, 1.0);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(
        metric(&sluice, FLOWS).await,
        0.0,
        "flow idle for 6s of 5s still tracked"
    );
    assert_ne!(
        who(&socket, sluice.addr()).await,
        port,
        "a new flow takes the next backend"
    );
}

#[tokio::test]
async fn least_recently_used_flow_is_evicted_at_max_flows() {
    let dns = FakeDns::start().await;
    let a = UdpEcho::start().await;
    dns.set_backends("dns", &[a.addr]);
    let sluice = Sluice::start(&udp_config(&dns, "max_flows = 2")).await;
    let clients = [client().await, client().await, client().await];
    for c in &clients {
        who(c, sluice.addr()).await;
    }
    assert_eq!(metric(&sluice, FLOWS).await, 2.0);
    assert_eq!(metric(&sluice, FLOWS_OPENED).await, 3.0);
    // The newest flow is still there; the oldest was evicted and reopens.
    who(&clients[2], sluice.addr()).await;
    assert_eq!(metric(&sluice, FLOWS_OPENED).await, 3.0);
    who(&clients[0], sluice.addr()).await;
    assert_eq!(metric(&sluice, FLOWS_OPENED).await, 4.0);
    assert_eq!(metric(&sluice, FLOWS).await, 2.0);
}

#[tokio::test(start_paused = true)]
async fn removed_backend_keeps_its_flows_and_gets_no_new_ones() {
    let (dns, a, b, sluice) = two_echoes("").await;
    let old = client().await;
    let port = who(&old, sluice.addr()).await;
    let remaining = if port == a.addr.port() { b.addr } else { a.addr };
    dns.set_backends("dns", &[remaining]);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        who(&old, sluice.addr()).await,
        port,
        "existing flow kept its backend"
    );
    for _ in 0..3 {
        assert_eq!(who(&client().await, sluice.addr()).await, remaining.port());
    }
}

#[tokio::test]
async fn refused_backend_moves_the_flow_to_another() {
    let (_dns, live, _dead, sluice) = live_and_refusing("").await;
    // Whichever backend each new flow starts on, a client gets answers from
    // the live one after at most one lost datagram.
    for _ in 0..4 {
        let socket = client().await;
        let mut tries = 0;
        let reply = loop {
            tries += 1;
            if let Some(reply) = ask(&socket, sluice.addr(), b"who").await {
                break reply;
            }
            assert!(tries < 3, "still no answer after {tries} datagrams");
        };
        assert_eq!(reply, live.addr.port().to_string().into_bytes());
    }
}

#[tokio::test]
async fn largest_and_empty_datagrams_pass_unchanged() {
    let dns = FakeDns::start().await;
    let a = UdpEcho::start().await;
    dns.set_backends("dns", &[a.addr]);
    let sluice = Sluice::start(&udp_config(&dns, "")).await;
    let socket = client().await;
    let big: Vec<u8> = (0..65507u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(ask(&socket, sluice.addr(), &big).await.expect("no reply"), big);
    assert_eq!(ask(&socket, sluice.addr(), b"").await.expect("no reply"), b"");
}

#[tokio::test]
async fn fire_and_forget_spreads_datagrams_without_flows() {
    let (_dns, a, b, sluice) = two_echoes("udp_replies = false").await;
    let socket = client().await;
    for i in 0..10 {
        socket
            .send_to(format!("stat.{i}:1|c").as_bytes(), sluice.addr())
            .await
            .unwrap();
    }
    for _ in 0..100 {
        if a.received.load(Relaxed) + b.received.load(Relaxed) == 10 {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((a.received.load(Relaxed), b.received.load(Relaxed)), (5, 5));
    assert_eq!(metric(&sluice, FLOWS).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sources_keeps_the_table_at_max_flows() {
    const SOURCES: u32 = 100_000;
    let dns = FakeDns::start().await;
    let a = UdpEcho::start().await;
    dns.set_backends("dns", &[a.addr]);
    let sluice = Sluice::start(&udp_config(&dns, "max_flows = 1000")).await;
    let target = sluice.addr();
    // Every datagram from its own source (127.1.x.y), each waiting for its reply.
    let answered = tokio::task::spawn_blocking(move || {
        let mut answered = 0;
        let mut buf = [0u8; 16];
        for i in 0..SOURCES {
            let ip = Ipv4Addr::from(0x7f01_0000 + i);
            let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            socket.send_to(b"x", target).unwrap();
            if socket.recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
        answered
    })
    .await
    .unwrap();
    assert_eq!(answered, SOURCES);
    assert_eq!(metric(&sluice, FLOWS).await, 1000.0);
    assert_eq!(metric(&sluice, FLOWS_OPENED).await, f64::from(SOURCES));
}

#[tokio::test(start_paused = true)]
async fn flows_of_a_removed_backend_end_after_drain_timeout() {
    let dns = FakeDns::start().await;
    let (a, b) = (UdpEcho::start().await, UdpEcho::start().await);
    dns.set_backends("dns", &[a.addr]);
    let sluice = Sluice::start(&udp_config(&dns, "drain_timeout = \"5s\"")).await;
    let old = client().await;
    assert_eq!(who(&old, sluice.addr()).await, a.addr.port());
    dns.set_backends("dns", &[b.addr]);
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        who(&old, sluice.addr()).await,
        a.addr.port(),
        "draining, not yet ended"
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        who(&old, sluice.addr()).await,
        b.addr.port(),
        "a new flow after drain_timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_is_sluice_itself_never_gets_a_datagram() {
    let dns = FakeDns::start().await;
    let (logs, _capture) = common::Logs::capture();
    let config = udp_config(&dns, "").replace("127.0.0.1:0", "0.0.0.0:0");
    let sluice = Sluice::start(&config).await;
    let port = sluice.addr().port();
    dns.set_backends("dns", &[SocketAddr::from(([127, 0, 0, 2], port))]);
    sleep(Duration::from_secs(2)).await;
    let socket = client().await;
    let entry = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert_eq!(ask(&socket, entry, b"hello").await, None);
    sleep(Duration::from_secs(2)).await;
    let forwarded = "sluice_bytes_total{listener=\"dns\",direction=\"client_to_backend\"}";
    let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    assert_eq!(sample(&text, forwarded).unwrap_or(0.0), 0.0, "{text}");
    assert_eq!(logs.count("own listening sockets"), 1, "{}", logs.text());
}

#[tokio::test]
async fn a_refusing_backend_is_ejected_like_a_tcp_one() {
    let (_dns, _live, dead, sluice) = live_and_refusing("eject_after = 1").await;
    let mut lost = 0;
    for _ in 0..8 {
        let socket = client().await;
        while ask(&socket, sluice.addr(), b"who").await.is_none() {
            lost += 1;
        }
    }
    assert!(
        lost <= 1,
        "{lost} datagrams lost: the refusing backend was not ejected"
    );
    let ejections = format!("sluice_backend_ejections_total{{listener=\"dns\",backend=\"{dead}\"}}");
    assert_eq!(metric(&sluice, &ejections).await, 1.0);
}

/// A UDP backend answering `PING` with `PONG` while `up`, silent otherwise,
/// and anything else with its port.
async fn checked_udp_backend(up: Arc<AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let reply = match &buf[..n] {
                b"PING" if up.load(Relaxed) => b"PONG".to_vec(),
                b"PING" => continue,
                _ => addr.port().to_string().into_bytes(),
            };
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn a_udp_health_check_takes_a_silent_backend_out() {
    let dns = FakeDns::start().await;
    let (a_up, b_up) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (a, b) = (
        checked_udp_backend(a_up.clone()).await,
        checked_udp_backend(b_up).await,
    );
    dns.set_backends("dns", &[a, b]);
    let check = "[listeners.dns.health]\ninterval = \"1s\"\ntimeout = \"500ms\"\nsend = \"PING\"\nexpect = \"PONG\"\n";
    let sluice = Sluice::start(&udp_config(&dns, check)).await;
    a_up.store(false, Relaxed);
    sleep(Duration::from_secs(6)).await;
    for _ in 0..6 {
        assert_eq!(
            who(&client().await, sluice.addr()).await,
            b.port(),
            "a silent backend got a flow"
        );
    }
    let (_, status) = http_get(sluice.metrics.unwrap(), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let healthy: Vec<bool> = status["listeners"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["healthy"].as_bool().unwrap())
        .collect();
    assert_eq!(healthy.iter().filter(|h| !**h).count(), 1, "{status}");
}
