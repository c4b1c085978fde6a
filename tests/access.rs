//! Access control with real source addresses (127.0.0.x): `allow`, `deny`
//! over `allow`, IPv4-mapped sources, UDP datagrams refused before a flow,
//! PROXY headers from trusted and untrusted peers, and config errors.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Sluice, UdpEcho, echo_backends, http_get, sample};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(5);

/// The backend port a connection from `source` through `addr` reaches,
/// after writing `first` (a PROXY header, say); `None` if it is closed.
async fn reached_from(source: &str, addr: SocketAddr, first: &[u8]) -> Option<u16> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    let mut stream = socket.connect(addr).await.ok()?;
    if !first.is_empty() {
        stream.write_all(first).await.ok()?;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    timeout(PATIENCE, reader.read_line(&mut line)).await.ok()?.ok()?;
    line.trim().parse().ok()
}

fn listener(backend: SocketAddr, extra: &str) -> String {
    format!(
        "metrics = \"127.0.0.1:0\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\nbackends = [\"{backend}\"]\n{extra}\n"
    )
}

async fn refused(sluice: &Sluice, reason: &str) -> f64 {
    let (_, metrics) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    let series = format!("sluice_connections_refused_total{{listener=\"redis\",reason=\"{reason}\"}}");
    sample(&metrics, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn deny_wins_over_allow_and_the_rest_is_refused_at_accept() {
    let backends = echo_backends(1).await;
    let port = backends[0].addr.port();
    let rules = "allow = [\"127.0.0.0/29\", \"::ffff:127.0.0.9\"]\ndeny = [\"127.0.0.3\"]";
    let sluice = Sluice::start(&listener(backends[0].addr, rules)).await;
    assert_eq!(reached_from("127.0.0.1", sluice.addr(), b"").await, Some(port));
    assert_eq!(
        reached_from("127.0.0.9", sluice.addr(), b"").await,
        Some(port),
        "mapped IPv4 matched as IPv4"
    );
    assert_eq!(
        reached_from("127.0.0.3", sluice.addr(), b"").await,
        None,
        "denied though allowed"
    );
    assert_eq!(
        reached_from("127.0.0.20", sluice.addr(), b"").await,
        None,
        "not allowed"
    );
    assert_eq!(refused(&sluice, "denied").await, 2.0);
}

#[tokio::test]
async fn top_level_rules_are_every_listeners_default() {
    let backends = echo_backends(1).await;
    let config = format!("deny = [\"127.0.0.2\"]\n{}", listener(backends[0].addr, ""));
    let sluice = Sluice::start(&config).await;
    assert_eq!(reached_from("127.0.0.2", sluice.addr(), b"").await, None);
    assert!(reached_from("127.0.0.1", sluice.addr(), b"").await.is_some());
}

#[tokio::test]
async fn a_proxy_header_is_believed_only_from_trusted_peers_and_judged_by_its_source() {
    let backends = echo_backends(1).await;
    let port = backends[0].addr.port();
    let rules = "accept_proxy = true\ntrusted_proxies = [\"127.0.0.5/32\"]\ndeny = [\"10.9.9.9\"]";
    let sluice = Sluice::start(&listener(backends[0].addr, rules)).await;
    let header = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 5555 6379\r\n").into_bytes();
    assert_eq!(
        reached_from("127.0.0.5", sluice.addr(), &header("10.0.0.1")).await,
        Some(port)
    );
    // A forged header from anyone else: refused before it is read.
    assert_eq!(
        reached_from("127.0.0.6", sluice.addr(), &header("10.0.0.1")).await,
        None
    );
    // From the trusted peer, the header's source is what deny judges.
    assert_eq!(
        reached_from("127.0.0.5", sluice.addr(), &header("10.9.9.9")).await,
        None
    );
    assert_eq!(refused(&sluice, "untrusted_proxy").await, 1.0);
    assert_eq!(refused(&sluice, "denied").await, 1.0);
}

#[tokio::test]
async fn a_refused_udp_source_is_dropped_before_any_flow() {
    let echo = UdpEcho::start().await;
    let config = format!(
        "metrics = \"127.0.0.1:0\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nbackends = [\"{}\"]\nallow = [\"127.0.0.1\"]\n",
        echo.addr
    );
    let sluice = Sluice::start(&config).await;
    let from = |ip: &str| UdpSocket::bind(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0));
    let allowed = from("127.0.0.1").await.unwrap();
    allowed.send_to(b"who", sluice.addr()).await.unwrap();
    let mut buf = [0; 64];
    let answered = timeout(PATIENCE, allowed.recv(&mut buf)).await;
    assert!(answered.is_ok(), "the allowed source got no answer");
    let stranger = from("127.0.0.7").await.unwrap();
    stranger.send_to(b"who", sluice.addr()).await.unwrap();
    assert!(
        timeout(Duration::from_millis(300), stranger.recv(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(refused(&sluice, "denied").await, 1.0);
    let (_, status) = http_get(sluice.metrics.unwrap(), "/status").await;
    assert!(
        status.contains("\"active_connections\": 1"),
        "one flow only: {status}"
    );
}

#[test]
fn bad_entries_are_errors_naming_key_and_line() {
    for (text, says) in [
        (
            "allow = [\"10.0.0.0/33\"]\n",
            "test.toml:1: allow: `10.0.0.0/33`: an IPv4 prefix is at most /32",
        ),
        (
            "[listeners.a]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\ndeny = [\"web\"]\n",
            "test.toml:4: listeners.a.deny: `web`",
        ),
    ] {
        let text = if text.starts_with("allow") {
            format!("{text}[listeners.a]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n")
        } else {
            text.to_string()
        };
        let e = sluice::Config::parse(&text, "test.toml", &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
    }
}
