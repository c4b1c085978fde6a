//! The PROXY protocol in-process: the header sluice sends backends (v1 and
//! v2, IPv4 and IPv6, exact bytes), the header it accepts from a fronting
//! balancer (v1, v2, LOCAL, garbage, split, missing, wrong size), the chain
//! of both, the header's client used for balancing and logging, and health
//! checks on another port with a header.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::{Logs, Sluice, http_get, sample};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::sleep;

/// A backend that reports, per connection, the bytes it received before the
/// client's `end` marker, then answers `ok` and closes.
async fn recording_backend(bind: &str) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !got.ends_with(b"end") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"ok").await;
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

fn listener(bind: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        "metrics = \"127.0.0.1:0\"\n[listeners.pp]\nbind = \"{bind}\"\nbackends = [\"{backend}\"]\n{extra}\n"
    )
}

/// Sends `bytes` then `end` through `addr`; the reply, once the backend closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.write_all(b"end").await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    (local, reply)
}

#[tokio::test]
async fn v1_and_v2_headers_announce_the_client_exactly() {
    for (bind, version) in [
        ("127.0.0.1:0", "v1"),
        ("127.0.0.1:0", "v2"),
        ("[::1]:0", "v1"),
        ("[::1]:0", "v2"),
    ] {
        let (backend, mut received) = recording_backend(bind).await;
        let sluice = Sluice::start(&listener(
            bind,
            backend,
            &format!("proxy_protocol = \"{version}\""),
        ))
        .await;
        let (client, reply) = exchange(sluice.addr(), b"hi").await;
        assert_eq!(reply, b"ok");
        let got = received.recv().await.unwrap();
        let (server, want) = (sluice.addr(), {
            let (c, s) = (client, sluice.addr());
            match (version, c) {
                ("v1", SocketAddr::V4(_)) => {
                    format!("PROXY TCP4 {} {} {} {}\r\n", c.ip(), s.ip(), c.port(), s.port()).into_bytes()
                }
                ("v1", SocketAddr::V6(_)) => {
                    format!("PROXY TCP6 {} {} {} {}\r\n", c.ip(), s.ip(), c.port(), s.port()).into_bytes()
                }
                (_, SocketAddr::V4(c4)) => {
                    let SocketAddr::V4(s4) = s else { unreachable!() };
                    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
                    v2.extend(c4.ip().octets());
                    v2.extend(s4.ip().octets());
                    v2.extend(c4.port().to_be_bytes());
                    v2.extend(s4.port().to_be_bytes());
                    v2
                }
                (_, SocketAddr::V6(c6)) => {
                    let SocketAddr::V6(s6) = s else { unreachable!() };
                    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
                    v2.extend(c6.ip().octets());
                    v2.extend(s6.ip().octets());
                    v2.extend(c6.port().to_be_bytes());
                    v2.extend(s6.port().to_be_bytes());
                    v2
                }
            }
        });
        assert_eq!(&got[..want.len()], want, "{version} on {server}");
        assert_eq!(&got[want.len()..], b"hiend", "client bytes follow the header");
    }
}

/// Bytes a fronting balancer would put first, for each kind of header.
fn fronting_headers() -> Vec<(&'static str, Vec<u8>)> {
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend([10, 1, 2, 3, 10, 9, 9, 9, 0x11, 0x5c, 0x00, 0x50]); // 10.1.2.3:4444 → 10.9.9.9:80
    vec![
        ("v1", b"PROXY TCP4 10.1.2.3 10.9.9.9 4444 80\r\n".to_vec()),
        ("v2", v2),
        ("v2 LOCAL", b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec()),
    ]
}

#[tokio::test]
async fn accepted_headers_name_the_client_and_are_announced_on() {
    for (kind, header) in fronting_headers() {
        let (backend, mut received) = recording_backend("127.0.0.1:0").await;
        let extra = "accept_proxy = true\nproxy_protocol = \"v1\"\naccess_log = true";
        let (logs, _capture) = Logs::capture();
        let sluice = Sluice::start(&listener("127.0.0.1:0", backend, extra)).await;
        let mut first = header.clone();
        first.extend_from_slice(b"hi");
        let (client, reply) = exchange(sluice.addr(), &first).await;
        assert_eq!(reply, b"ok", "{kind}");
        let got = String::from_utf8_lossy(&received.recv().await.unwrap()).into_owned();
        if kind == "v2 LOCAL" {
            // The fronting balancer's own connection: nothing to announce.
            assert_eq!(got, "PROXY UNKNOWN\r\nhiend", "{kind}");
            let logged = logs.wait_for(&format!("client={client}")).await;
            assert!(logged, "{}", logs.text());
        } else {
            assert_eq!(got, "PROXY TCP4 10.1.2.3 10.9.9.9 4444 80\r\nhiend", "{kind}");
            assert!(logs.wait_for("client=10.1.2.3:4444").await, "{}", logs.text());
        }
    }
}

#[tokio::test]
async fn a_header_split_across_many_small_writes_is_read_whole() {
    let (backend, mut received) = recording_backend("127.0.0.1:0").await;
    let sluice = Sluice::start(&listener("127.0.0.1:0", backend, "accept_proxy = true")).await;
    for (kind, header) in fronting_headers() {
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        for byte in header {
            stream.write_all(&[byte]).await.unwrap();
            sleep(Duration::from_millis(2)).await;
        }
        stream.write_all(b"hiend").await.unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        assert_eq!(reply, b"ok", "{kind}");
        let passed = received.recv().await.unwrap();
        assert_eq!(passed, b"hiend", "{kind}: the header is not passed on");
    }
}

#[tokio::test(start_paused = true)]
async fn missing_malformed_and_oversized_headers_close_the_connection_and_count() {
    let (backend, _received) = recording_backend("127.0.0.1:0").await;
    let (logs, _capture) = Logs::capture();
    let extra = "accept_proxy = true\nconnect_timeout = \"3s\"";
    let sluice = Sluice::start(&listener("127.0.0.1:0", backend, extra)).await;
    let mut too_long = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xfd\xe8".to_vec(); // declares 65000 bytes
    too_long.extend(vec![0u8; 5000]);
    let wrong_size = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x0a\x01\x02\x03".to_vec(); // IPv4 needs 12
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("nothing at all", Vec::new()),
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("the wrong size", wrong_size),
        ("oversized", too_long),
    ];
    for (n, (what, bytes)) in cases.into_iter().enumerate() {
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        assert!(reply.is_empty(), "{what}: got {reply:?}");
        let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
        let errors = sample(&text, "sluice_proxy_protocol_errors_total{listener=\"pp\"}");
        assert_eq!(errors, Some((n + 1) as f64), "{what}");
    }
    assert_eq!(logs.count("PROXY header refused"), 1, "{}", logs.text());
}

#[tokio::test]
async fn maglev_hashes_the_announced_client_not_the_fronting_balancer() {
    let (a, mut got_a) = recording_backend("127.0.0.1:0").await;
    let (b, mut got_b) = recording_backend("127.0.0.1:0").await;
    let config = format!(
        "[listeners.pp]\nbind = \"127.0.0.1:0\"\nbackends = [\"{a}\", \"{b}\"]\nbalance = \"maglev\"\naccept_proxy = true\n"
    );
    let sluice = Sluice::start(&config).await;
    // Many clients, all through one fronting address: spread by their own.
    let mut reached = [0usize; 2];
    for i in 0..40u8 {
        let header = format!("PROXY TCP4 10.7.{i}.{i} 10.9.9.9 5000 80\r\n");
        for _ in 0..3 {
            let (_, reply) = exchange(sluice.addr(), header.as_bytes()).await;
            assert_eq!(reply, b"ok");
        }
        let mut on = [0usize; 2];
        for _ in 0..3 {
            tokio::select! {
                Some(_) = got_a.recv() => on[0] += 1,
                Some(_) = got_b.recv() => on[1] += 1,
            }
        }
        assert!(
            on == [3, 0] || on == [0, 3],
            "client 10.7.{i}.{i} was not sticky: {on:?}"
        );
        reached[usize::from(on[1] == 3)] += 1;
    }
    assert!(
        reached[0] > 5 && reached[1] > 5,
        "clients all on one backend: {reached:?}"
    );
}

/// A service port that counts its clients, and a health port that answers
/// `PING` with `+PONG` only after a v1 `PROXY UNKNOWN` header.
async fn service_with_health_port() -> (SocketAddr, u16, Arc<AtomicUsize>) {
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, health_port) = (service.local_addr().unwrap(), health.local_addr().unwrap().port());
    let clients = Arc::new(AtomicUsize::new(0));
    let counted = clients.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = service.accept().await.unwrap();
            counted.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let _ = stream.write_all(b"served\n").await;
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (stream, _) = health.accept().await.unwrap();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let (mut header, mut ping) = (String::new(), String::new());
                let _ = reader.read_line(&mut header).await;
                let _ = reader.read_line(&mut ping).await;
                let ok = header == "PROXY UNKNOWN\r\n" && ping.trim() == "PING";
                let reply: &[u8] = if ok { b"+PONG\r\n" } else { b"-ERR\r\n" };
                let _ = reader.get_mut().write_all(reply).await;
            });
        }
    });
    (addr, health_port, clients)
}

#[tokio::test(start_paused = true)]
async fn health_checks_on_another_port_send_a_header_when_asked() {
    for with_header in [true, false] {
        let (addr, health_port, clients) = service_with_health_port().await;
        let config = format!(
            "metrics = \"127.0.0.1:0\"\n[listeners.pp]\nbind = \"127.0.0.1:0\"\nbackends = [\"{addr}\"]\n\
             proxy_protocol = \"v1\"\n[listeners.pp.health]\ninterval = \"1s\"\nport = {health_port}\n\
             send = \"PING\\r\\n\"\nexpect = \"+PONG\"\nproxy_protocol = {with_header}\n"
        );
        let sluice = Sluice::start(&config).await;
        sleep(Duration::from_secs(10)).await;
        let (_, status) = http_get(sluice.metrics.unwrap(), "/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let healthy = status["listeners"][0]["backends"][0]["healthy"].as_bool();
        assert_eq!(healthy, Some(with_header), "header on checks: {with_header}");
        assert_eq!(
            clients.load(Relaxed),
            0,
            "checks went to the health port, not the service"
        );
    }
}

#[tokio::test]
async fn proxy_keys_are_for_tcp_listeners_only() {
    let config = "[listeners.u]\nbind = \"127.0.0.1:1\"\nprotocol = \"udp\"\nbackends = [\"127.0.0.1:2\"]\n\
                  proxy_protocol = \"v2\"\naccept_proxy = true\n";
    let err = sluice::Config::parse(config, "test.toml", &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "test.toml:5: listeners.u.proxy_protocol: a TCP setting, but this listener's protocol is udp"
        ),
        "{err}"
    );
    assert!(
        err.contains("test.toml:6: listeners.u.accept_proxy: a TCP setting"),
        "{err}"
    );
}
