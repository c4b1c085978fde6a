//! The admin endpoint in-process: /metrics counts what happened, /status
//! matches the configuration and discovery, removed backends leave both.

mod common;

use std::time::Duration;

use common::{FakeDns, Sluice, backend_port, echo_backends, http_get, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(dns: &FakeDns, extra: &str) -> String {
    format!(
        "dns = \"{}\"\nrefresh = \"1s\"\nmetrics = \"127.0.0.1:0\"\n\
         [listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n{extra}\n",
        dns.addr
    )
}

#[tokio::test(start_paused = true)]
async fn metrics_count_connections_bytes_and_backends() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    dns.set_backends("redis", &[b[0].addr, b[1].addr]);
    let sluice = Sluice::start(&config(&dns, "")).await;
    let admin = sluice.metrics.unwrap();

    for _ in 0..3 {
        let mut stream = TcpStream::connect(sluice.addr()).await.unwrap();
        stream.write_all(b"12345").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.unwrap();
    }
    let (_open, _) = common::connect(sluice.addr()).await;

    let (status, text) = http_get(admin, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let l = "listener=\"redis\"";
    assert_eq!(
        sample(&text, &format!("sluice_listener_connections_total{{{l}}}")),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("sluice_listener_active_connections{{{l}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("sluice_bytes_total{{{l},direction=\"client_to_backend\"}}")
        ),
        Some(15.0)
    );
    let greeting = format!("{}\n", b[0].addr.port()).len() as f64;
    let down = sample(
        &text,
        &format!("sluice_bytes_total{{{l},direction=\"backend_to_client\"}}"),
    )
    .unwrap();
    assert!(down >= 15.0 + 3.0 * greeting, "backend_to_client {down}");
    assert_eq!(
        sample(&text, &format!("sluice_backends{{{l},state=\"healthy\"}}")),
        Some(2.0)
    );
    let per_backend: f64 = b
        .iter()
        .map(|b| {
            sample(
                &text,
                &format!("sluice_backend_connections_total{{{l},backend=\"{}\"}}", b.addr),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(per_backend, 4.0);
    let q = "query=\"redis.service.consul.\"";
    assert!(
        sample(
            &text,
            &format!("sluice_discovery_lookups_total{{{q},result=\"ok\"}}")
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &text,
            &format!("sluice_discovery_last_success_timestamp_seconds{{{q}}}")
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        text.contains("sluice_connection_duration_seconds_bucket{listener=\"redis\""),
        "{text}"
    );
    assert!(text.contains(&format!(
        "sluice_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[tokio::test(start_paused = true)]
async fn status_matches_config_and_discovery_and_drops_removed_backends() {
    let dns = FakeDns::start().await;
    let b = echo_backends(2).await;
    dns.set_backends("redis", &[b[0].addr, b[1].addr]);
    let sluice = Sluice::start(&config(&dns, "balance = \"least-conn\"")).await;
    let admin = sluice.metrics.unwrap();
    backend_port(sluice.addr()).await;

    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "redis");
    assert_eq!(listener["bind"], sluice.addr().to_string());
    assert_eq!(listener["protocol"], "tcp");
    assert_eq!(listener["balance"], "least-conn");
    assert_eq!(listener["query"], "redis.service.consul.");
    let addresses: Vec<&str> = listener["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    let mut want = vec![b[0].addr.to_string(), b[1].addr.to_string()];
    want.sort();
    assert_eq!(addresses, want);
    assert!(status["queries"][0]["last_success"].as_f64().is_some());

    dns.set_backends("redis", &[b[1].addr]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = http_get(admin, "/status").await;
    assert!(
        !body.contains(&b[0].addr.to_string()),
        "removed backend still in /status: {body}"
    );
    let (_, text) = http_get(admin, "/metrics").await;
    assert!(
        !text.contains(&b[0].addr.to_string()),
        "removed backend still in /metrics"
    );
    assert!(text.contains(&b[1].addr.to_string()));

    let (_, page) = http_get(admin, "/").await;
    assert!(
        page.contains("<table>") && page.contains(&b[1].addr.to_string()),
        "{page}"
    );
    assert_eq!(http_get(admin, "/healthz").await.1, "ok\n");
    assert!(http_get(admin, "/nope").await.0.contains("404"));
}

#[tokio::test(start_paused = true)]
async fn slow_and_idle_admin_clients_cannot_hold_the_endpoint() {
    let dns = FakeDns::start().await;
    let b = echo_backends(1).await;
    dns.set_backends("redis", &[b[0].addr]);
    let sluice = Sluice::start(&config(&dns, "")).await;
    let admin = sluice.metrics.unwrap();

    // Slowloris: three times the connection cap, each a few header bytes in.
    let mut slow = Vec::new();
    for _ in 0..3 * sluice::admin::MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHo").await.unwrap();
        slow.push(stream);
    }
    // A real request still gets through within a header timeout or two ...
    let scrape = tokio::spawn(async move { http_get(admin, "/healthz").await });
    let waited = tokio::time::timeout(4 * sluice::admin::HEADER_TIMEOUT, scrape).await;
    let (status, body) = waited.expect("the endpoint stayed blocked").unwrap();
    assert!(status.contains("200") && body == "ok\n", "{status} {body}");
    // ... the proxy was never affected ...
    assert_eq!(backend_port(sluice.addr()).await, b[0].addr.port());
    // ... and every slow client has been closed.
    tokio::time::sleep(4 * sluice::admin::HEADER_TIMEOUT).await;
    for mut stream in slow {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a slow client is still connected");
    }
}

#[tokio::test(start_paused = true)]
async fn ready_waits_for_every_first_answer_and_head_works() {
    let dns = FakeDns::start().await;
    dns.set_mode(common::Mode::ServFail);
    let b = echo_backends(1).await;
    let extra = format!(
        "[listeners.fixed]\nbind = \"127.0.0.1:0\"\nbackends = [\"{}\"]\n",
        b[0].addr
    );
    let sluice = Sluice::start(&config(&dns, &extra)).await;
    let admin = sluice.metrics.unwrap();

    let (status, body) = http_get(admin, "/ready").await;
    assert!(status.contains("503"), "{status}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ready"], false);
    // The static list counts at once; the DNS listener waits.
    assert_eq!(
        body["waiting_for"],
        serde_json::json!(["listener 'redis': the first answer of redis.service.consul."])
    );
    let head = common::http(admin, "HEAD", "/ready", &[], "").await;
    assert_eq!((head.status, head.body.as_str()), (503, ""));

    // An empty answer is an answer.
    dns.set_mode(common::Mode::NxDomain);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = http_get(admin, "/ready").await;
    assert!(status.contains("200"), "{status}: {body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"ready": true, "listeners": 2})
    );
    for path in ["/healthz", "/ready", "/metrics", "/status"] {
        let head = common::http(admin, "HEAD", path, &[], "").await;
        assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD {path}");
    }
    let post = common::http(admin, "POST", "/healthz", &[], "").await;
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
}

#[tokio::test]
async fn process_series_and_udp_flows_as_active_connections() {
    let dns = FakeDns::start().await;
    let extra =
        "[listeners.statsd]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nbackends = [\"127.0.0.1:9\"]\n";
    let sluice = Sluice::start(&config(&dns, extra)).await;
    let (_, text) = http_get(sluice.metrics.unwrap(), "/metrics").await;
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"));
        assert!(
            value > 0.0 || series == "process_cpu_seconds_total",
            "{series} = {value}"
        );
    }
    assert_eq!(
        sample(&text, "sluice_listener_active_connections{listener=\"statsd\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "sluice_udp_flows_active{listener=\"statsd\"}"),
        Some(0.0)
    );
}
