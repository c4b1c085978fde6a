//! Observing sluice with real tools: promtool accepts the exposition, a
//! real Prometheus scrapes it, the status page renders in headless Chromium,
//! and the access log has one line per connection.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// sluice with the metrics endpoint and access log on, one redis (found
/// through its own Consul DNS stand-in) behind it, and a UDP listener.
struct Observed {
    sluice: Sluice,
    /// The metrics endpoint, `ip:port`.
    metrics: String,
    /// The log line that announced the endpoint.
    announced: String,
    redis_port: u16,
    dir: tempfile::TempDir,
    _redis: Proc,
    _dns: ConsulDns,
}

fn observed_sluice(extra_args: &[&str]) -> Observed {
    let dns = ConsulDns::start();
    let redis_port = free_port();
    let redis = redis(redis_port);
    dns.add("redis", "node1", redis_port);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nmetrics = \"127.0.0.1:0\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\n\
             service = \"redis\"\naccess_log = true\n\
             [listeners.statsd]\nbind = \"127.0.0.1:0\"\nprotocol = \"udp\"\nbackends = [\"127.0.0.1:9\"]\n",
            dns.addr()
        ),
    );
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let sluice = Sluice::start(&args, 2);
    let announced = sluice.wait_for_log("serving /metrics");
    let metrics = log_field(&announced, "addr");
    sluice.wait_for_log("backends changed");
    Observed {
        sluice,
        metrics,
        announced,
        redis_port,
        dir,
        _redis: redis,
        _dns: dns,
    }
}

#[test]
fn promtool_accepts_the_exposition_and_access_log_has_one_line_per_connection() {
    let Observed {
        sluice,
        metrics,
        redis_port: port,
        dir,
        ..
    } = &observed_sluice(&[]);

    let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
    assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");
    drop(stream);
    let line = sluice.wait_for_log("sluice::access");
    for field in [
        "client=127.0.0.1:",
        &format!("backend=127.0.0.1:{port}"),
        "up=6",
        "down=7",
        "ended=closed",
    ] {
        assert!(line.contains(field), "access log lacks {field}: {line}");
    }

    let exposition = http_get(metrics, "/metrics");
    assert!(
        exposition.contains("sluice_listener_connections_total{listener=\"redis\"} 1"),
        "{exposition}"
    );
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &exposition).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .expect("promtool (apt-get install prometheus)");
    let report = printed(&out);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// A real Prometheus scraping `target` every second; its web address.
fn prometheus(dir: &Path, target: &str) -> (Proc, String) {
    let web = format!("127.0.0.1:{}", free_port());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: sluice\n    \
             static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    (Proc(prometheus), web)
}

#[test]
fn a_real_prometheus_scrapes_sluice() {
    let Observed {
        sluice,
        metrics,
        announced,
        dir,
        ..
    } = &observed_sluice(&["--log-format", "json"]);
    // --log-format json: one JSON object per line.
    let fields: serde_json::Value = serde_json::from_str(announced).unwrap();
    assert_eq!(fields["fields"]["addr"], metrics.as_str());
    let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
    assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");

    let (_prometheus, web) = prometheus(dir.path(), metrics);
    let deadline = Instant::now() + 3 * STARTUP;
    loop {
        // Prometheus answers 503 until its storage is ready.
        let targets = try_http_get(&web, "/api/v1/targets");
        let result = try_http_get(&web, "/api/v1/query?query=sluice_listener_connections_total");
        if let (Ok(targets), Ok(result)) = (targets, result)
            && targets.contains("\"health\":\"up\"")
            && result.contains("\"listener\":\"redis\"")
        {
            assert!(result.contains("\"1\"]"), "one connection counted: {result}");
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never scraped sluice");
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let Observed {
        metrics,
        redis_port: port,
        dir,
        ..
    } = &observed_sluice(&[]);

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let chromium = |extra: &[String]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("chromium").display()
            ))
            .args(extra)
            .arg(format!("http://{metrics}/"))
            .output()
            .expect("chromium (apt-get install chromium)")
    };
    let dom = chromium(&["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<h2 id=\"redis\">redis</h2>"),
        "listener heading missing: {dom}"
    );
    assert!(
        dom.contains(&format!("<td>127.0.0.1:{port}</td>")),
        "backend row missing: {dom}"
    );
    let shot = chromium(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1100,500".into(),
    ]);
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 1000,
        "empty screenshot"
    );
}

/// Every PromQL expression of the Grafana dashboard, with its variables
/// set to "everything" and `$__rate_interval` to a minute.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/sluice.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$listener", ".*");
            queries.push((panel["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    queries
}

/// `text` for a URL's query string.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let Observed {
        sluice, metrics, dir, ..
    } = &observed_sluice(&[]);
    let (_prometheus, web) = prometheus(dir.path(), metrics);
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = Instant::now() + 3 * STARTUP;
    let mut empty: Vec<&(String, String)> = queries.iter().collect();
    let mut found = Vec::new();
    while !empty.is_empty() {
        // Traffic between scrapes, so that every rate has something to show.
        let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
        assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");
        drop(stream);
        empty.retain(|(title, expr)| {
            let answer = try_http_get(&web, &format!("/api/v1/query?query={}", url_encoded(expr)));
            let series = answer
                .ok()
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|json| json["data"]["result"].as_array().map(Vec::len))
                .unwrap_or(0);
            if series > 0 {
                found.push(format!("{series:>3} series  {title}: {expr}"));
            }
            series == 0
        });
        assert!(
            Instant::now() < deadline,
            "dashboard queries without series: {empty:#?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    found.sort();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard-check.txt"), found.join("\n") + "\n").unwrap();
}
