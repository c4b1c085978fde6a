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
/// through its own Consul DNS stand-in) behind it.
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
             service = \"redis\"\naccess_log = true\n",
            dns.addr()
        ),
    );
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let sluice = Sluice::start(&args, 1);
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

    let web = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: sluice\n    \
             static_configs: [{{targets: ['{metrics}']}}]\n"
        ),
    )
    .unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );
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
