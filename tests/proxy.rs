//! The TCP proxy in-process: retries, half-close both ways, idle timeout,
//! connection limit and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{FakeDns, Sluice, Srv, backend_port, connect, dns_config, echo_backends, raw_connect};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

/// An address where nothing listens (connections are refused), kept
/// bound (not listening) by the returned socket, so that no other test's
/// listener or outgoing connection takes the port meanwhile.
fn dead_addr() -> (SocketAddr, socket2::Socket) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (addr, socket)
}

fn static_config(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[listeners.test]\nbind = \"127.0.0.1:0\"\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn dead_backend_is_retried_transparently() {
    let live = echo_backends(2).await;
    let (dead, _held) = dead_addr();
    let sluice = Sluice::start(&static_config(&[live[0].addr, dead, live[1].addr], "")).await;
    for _ in 0..30 {
        let port = backend_port(sluice.addr()).await;
        assert_ne!(port, dead.port());
    }
}

#[tokio::test]
async fn failed_priority_group_fails_over_to_the_next() {
    let dns = FakeDns::start().await;
    let backup = echo_backends(1).await;
    let (dead, _held) = dead_addr();
    dns.set(
        "redis",
        vec![
            Srv {
                priority: 1,
                ..Srv::new(dead)
            },
            Srv {
                priority: 2,
                ..Srv::new(backup[0].addr)
            },
        ],
    );
    let sluice = Sluice::start(&dns_config(&dns, "redis", "")).await;
    assert_eq!(backend_port(sluice.addr()).await, backup[0].addr.port());
}

/// The forwarding tests run on every data path: copying that turns to
/// splice(2) for bulk (the default), splice alone, copying alone, and the
/// older `splice` key.
const DATA_PATHS: [&str; 4] = [
    "data_path = \"auto\"",
    "data_path = \"splice\"",
    "data_path = \"copy\"",
    "splice = false",
];

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    for mode in DATA_PATHS {
        let b = echo_backends(1).await;
        let sluice = Sluice::start(&static_config(&[b[0].addr], mode)).await;
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert_eq!(reply, format!("{}\nhello", b[0].addr.port()), "{mode}");
    }
}

/// A backend that runs `script` on its first connection.
async fn scripted_backend<F, Fut>(script: F) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { script(listener.accept().await.unwrap().0).await });
    (addr, task)
}

#[tokio::test]
async fn backend_half_close_still_receives_the_client() {
    for mode in DATA_PATHS {
        // The backend says its piece, closes its side, then reads everything.
        let (backend, received) = scripted_backend(|mut stream| async move {
            stream.write_all(b"bye").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        })
        .await;
        let sluice = Sluice::start(&static_config(&[backend], mode)).await;
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let mut greeting = Vec::new();
        stream.read_to_end(&mut greeting).await.unwrap();
        assert_eq!(greeting, b"bye", "{mode}");
        let payload = vec![7u8; 1 << 20];
        stream.write_all(&payload).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(received.await.unwrap(), payload, "{mode}");
    }
}

#[tokio::test]
async fn backend_closing_first_ends_the_client_cleanly() {
    for mode in DATA_PATHS {
        let (backend, _) = scripted_backend(|mut stream| async move {
            stream.write_all(b"bye").await.unwrap();
            Vec::new() // dropped: a full close, both directions
        })
        .await;
        let sluice = Sluice::start(&static_config(&[backend], mode)).await;
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye", "{mode}");
    }
}

#[tokio::test]
async fn a_backend_reset_resets_the_client() {
    for mode in DATA_PATHS {
        let (backend, _) = scripted_backend(|stream| async move {
            let mut buf = [0u8; 5];
            let mut stream = stream;
            stream.read_exact(&mut buf).await.unwrap();
            stream.set_zero_linger().unwrap();
            Vec::new() // dropped with linger 0: RST
        })
        .await;
        let sluice = Sluice::start(&static_config(&[backend], mode)).await;
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut rest = Vec::new();
        let err = stream
            .read_to_end(&mut rest)
            .await
            .expect_err("a reset, not a clean close");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{mode}");
    }
}

/// Everything a client reads until its connection ends, reset or not.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn a_backend_that_answers_then_resets_still_has_its_answer_delivered() {
    // Redis's "protocol desync" case: the backend reads a little, answers
    // with an error line and closes with input unread (a reset). Directly,
    // the client's write fails and it still reads the line; so through sluice.
    const ANSWER: &[u8] = b"-ERR Protocol error: too big inline request\r\n";
    for mode in DATA_PATHS {
        for round in 0..20 {
            let (backend, _) = scripted_backend(|mut stream| async move {
                let mut head = [0u8; 16];
                stream.read_exact(&mut head).await.unwrap();
                stream.write_all(ANSWER).await.unwrap();
                Vec::new() // dropped with unread input: RST
            })
            .await;
            let sluice = Sluice::start(&static_config(&[backend], mode)).await;
            let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
            let chunk = [b'x'; 1024];
            let mut written = 0;
            while stream.write_all(&chunk).await.is_ok() {
                written += chunk.len();
                assert!(written < 64 << 20, "writes never failed ({mode})");
            }
            let got = read_until_closed(&mut stream).await;
            assert_eq!(got, ANSWER, "round {round} ({mode})");
        }
    }
}

#[tokio::test]
async fn a_client_that_sends_then_resets_still_has_its_bytes_delivered() {
    for mode in DATA_PATHS {
        let (backend, received) =
            scripted_backend(|mut stream| async move { read_until_closed(&mut stream).await }).await;
        let sluice = Sluice::start(&static_config(&[backend], mode)).await;
        let stream = TcpStream::connect(sluice.addr()).await.unwrap();
        // Small enough to leave the client at once (loopback's window takes
        // it), so it is in sluice's hands before the reset follows it.
        let payload: Vec<u8> = (0..32u32 << 10).map(|i| (i % 253) as u8).collect();
        let mut stream = stream;
        stream.write_all(&payload).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);
        let got = received.await.unwrap();
        assert!(
            got == payload,
            "{mode}: {} of {} bytes arrived",
            got.len(),
            payload.len()
        );
    }
}

#[tokio::test]
async fn many_small_writes_all_arrive_in_order_without_a_stall() {
    for mode in DATA_PATHS {
        // Many small writes, queued before sluice reads them.
        let (backend, _) = scripted_backend(|stream| async move {
            stream.set_nodelay(true).unwrap();
            let mut stream = stream;
            for i in 0..2000u32 {
                stream.write_all(&i.to_be_bytes()).await.unwrap();
            }
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            rest
        })
        .await;
        let config = static_config(&[backend], &format!("{mode}\nidle_timeout = \"30s\""));
        let sluice = Sluice::start(&config).await;
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let mut got = vec![0u8; 2000 * 4];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut got)).await;
        assert!(read.is_ok(), "stalled with data still queued ({mode})");
        let want: Vec<u8> = (0..2000u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(got, want, "{mode}");
    }
}

#[tokio::test]
async fn large_transfer_arrives_intact_and_is_counted_exactly() {
    for mode in DATA_PATHS {
        let b = echo_backends(1).await;
        let config = format!("metrics = \"127.0.0.1:0\"\n{}", static_config(&[b[0].addr], mode));
        let sluice = Sluice::start(&config).await;
        let stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let greeting = format!("{}\n", b[0].addr.port());
        assert_eq!(&got[..greeting.len()], greeting.as_bytes());
        let body = &got[greeting.len()..];
        let first_diff = body.iter().zip(&payload).position(|(a, b)| a != b);
        assert!(
            body == &payload[..],
            "payload corrupted ({mode}): {} bytes for {}, first difference at {first_diff:?}",
            body.len(),
            payload.len()
        );

        let (_, text) = common::http_get(sluice.metrics.unwrap(), "/metrics").await;
        let series =
            |direction: &str| format!("sluice_bytes_total{{listener=\"test\",direction=\"{direction}\"}}");
        let up = common::sample(&text, &series("client_to_backend"));
        let down = common::sample(&text, &series("backend_to_client"));
        assert_eq!(up, Some(payload.len() as f64), "{mode}");
        assert_eq!(down, Some(got.len() as f64), "{mode}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let b = echo_backends(1).await;
    let sluice = Sluice::start(&static_config(&[b[0].addr], "idle_timeout = \"5s\"")).await;

    let (mut busy, _) = connect(sluice.addr()).await;
    let (mut idle, _) = connect(sluice.addr()).await;
    for _ in 0..4 {
        sleep(Duration::from_secs(3)).await;
        busy.get_mut().write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        busy.read_line(&mut line).await.unwrap();
        assert_eq!(
            line, "ping\n",
            "a connection with traffic every 3s outlives a 5s idle timeout"
        );
    }
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).await.unwrap(),
        0,
        "idle connection was closed"
    );
}

#[tokio::test(start_paused = true)]
async fn clients_over_max_connections_wait_instead_of_being_refused() {
    let b = echo_backends(1).await;
    let sluice = Sluice::start(&static_config(&[b[0].addr], "max_connections = 1")).await;
    let (first, _) = connect(sluice.addr()).await;

    let mut second = raw_connect(sluice.addr()).await;
    let mut line = String::new();
    let early = timeout(Duration::from_secs(5), second.read_line(&mut line)).await;
    assert!(
        early.is_err(),
        "second client was served while the first was open: {line:?}"
    );

    drop(first);
    second.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), b[0].addr.port().to_string());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_accepting_and_drains_open_connections() {
    let b = echo_backends(1).await;
    let sluice = Sluice::start(&static_config(&[b[0].addr], "")).await;
    let addr = sluice.addr();
    let (mut open, _) = connect(addr).await;
    sluice.shutdown.cancel();
    tokio::task::yield_now().await;

    // The open connection keeps working during the grace period ...
    sleep(Duration::from_secs(10)).await;
    open.get_mut().write_all(b"late\n").await.unwrap();
    let mut line = String::new();
    open.read_line(&mut line).await.unwrap();
    assert_eq!(line, "late\n");
    assert!(
        !sluice.done.is_finished(),
        "run() returned while a connection was open"
    );
    // ... no new one is accepted ...
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still accepting after shutdown"
    );
    // ... and closing it lets run() return.
    drop(open);
    timeout(Duration::from_secs(1), sluice.done)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_closes_connections_that_outstay_it() {
    let b = echo_backends(1).await;
    let config = format!("shutdown_grace = \"20s\"\n{}", static_config(&[b[0].addr], ""));
    let sluice = Sluice::start(&config).await;
    let (mut open, _) = connect(sluice.addr()).await;
    sluice.shutdown.cancel();
    timeout(Duration::from_secs(21), sluice.done)
        .await
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(open.read_to_end(&mut rest).await.unwrap(), 0);
}

#[tokio::test]
async fn port_in_use_names_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let config = format!("[listeners.graphite]\nbind = \"{addr}\"\nbackends = [\"127.0.0.1:1\"]\n");
    let config = sluice::Config::parse(&config, "test.toml", &Default::default()).unwrap();
    let err = sluice::Server::bind(config)
        .await
        .err()
        .expect("bind must fail")
        .to_string();
    assert!(
        err.starts_with(&format!("listener 'graphite': cannot bind {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn a_refusing_backend_is_logged_once_not_once_per_client() {
    let (dead, _held) = dead_addr();
    let (logs, _capture) = common::Logs::capture();
    let sluice = Sluice::start(&static_config(&[dead], "")).await;
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    }
    assert_eq!(logs.count("backend ejected"), 1, "{}", logs.text());
    assert_eq!(logs.count("no backend accepted"), 1, "{}", logs.text());
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_is_sluice_itself_is_never_used() {
    let dns = FakeDns::start().await;
    let good = echo_backends(1).await;
    let (logs, _capture) = common::Logs::capture();
    // A wildcard bind, reached through another loopback address than the
    // one clients use: only the machine's local addresses can tell.
    let config = dns_config(&dns, "web", "").replace("127.0.0.1:0", "0.0.0.0:0");
    let sluice = Sluice::start(&format!("metrics = \"127.0.0.1:0\"\n{config}")).await;
    let port = sluice.addr().port();
    let entry = SocketAddr::from(([127, 0, 0, 1], port));
    let itself = SocketAddr::from(([127, 0, 0, 2], port));
    dns.set_backends("web", &[itself]);
    sleep(Duration::from_secs(2)).await;

    for _ in 0..50 {
        let mut stream = TcpStream::connect(entry).await.unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        assert!(got.is_empty(), "a loop answered: {got:?}");
    }
    // A loop would have accepted its own connections too, hop after hop.
    let (_, text) = common::http_get(sluice.metrics.unwrap(), "/metrics").await;
    let accepted = common::sample(&text, "sluice_listener_connections_total{listener=\"web\"}");
    assert_eq!(accepted, Some(50.0), "connections accepted for 50 clients");

    dns.set_backends("web", &[itself, good[0].addr]);
    sleep(Duration::from_secs(5)).await;
    for _ in 0..4 {
        assert_eq!(backend_port(entry).await, good[0].addr.port());
    }
    assert_eq!(logs.count("own listening sockets"), 1, "{}", logs.text());
}

/// Writes a line on an open connection; whether it came back.
async fn echoes(conn: &mut tokio::io::BufReader<TcpStream>) -> bool {
    if conn.get_mut().write_all(b"still\n").await.is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(conn.read_line(&mut line).await, Ok(n) if n > 0) && line == "still\n"
}

#[tokio::test(start_paused = true)]
async fn a_removed_backends_connections_drain_for_drain_timeout_only_if_set() {
    for (drain, closes) in [("drain_timeout = \"3s\"", true), ("", false)] {
        let dns = FakeDns::start().await;
        let b = echo_backends(2).await;
        dns.set_backends("redis", &[b[0].addr]);
        let sluice = Sluice::start(&dns_config(&dns, "redis", drain)).await;
        let (mut open, port) = connect(sluice.addr()).await;
        assert_eq!(port, b[0].addr.port());

        dns.set_backends("redis", &[b[1].addr]);
        // Seen within a refresh (1s); the drain counts from then.
        sleep(Duration::from_millis(2500)).await;
        assert!(echoes(&mut open).await, "{drain}: ended before its drain timeout");
        assert_eq!(backend_port(sluice.addr()).await, b[1].addr.port());
        sleep(Duration::from_secs(3)).await;
        assert_eq!(!echoes(&mut open).await, closes, "{drain:?}");
    }
}
