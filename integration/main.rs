//! End-to-end tests against real programs: BIND as the Consul DNS stand-in
//! (records changed with nsupdate through `consul-dns.sh`), redis-server and
//! carbon-cache as backends, and the `sluice` binary driven through its CLI.
//! `.ci/run` installs them (bind9, bind9-dnsutils, redis-server, graphite-carbon).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// Generous bound for a program to come up on a busy CI machine.
const STARTUP: Duration = Duration::from_secs(20);

/// A port free for both TCP and UDP on 127.0.0.1 right now. Only for programs
/// that cannot bind port 0 and report it (BIND, redis, carbon).
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + STARTUP;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/consul-dns.sh")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", printed(&out));
}

/// What a finished command printed, stdout then stderr.
fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// BIND answering like Consul DNS, in its own directory and port.
struct ConsulDns {
    dir: tempfile::TempDir,
    port: u16,
}

impl ConsulDns {
    fn start() -> ConsulDns {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        run(Command::new(script())
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string()));
        ConsulDns { dir, port }
    }

    fn change(&self, verb: &str, service: &str, node: &str, port: u16) {
        let dir = self.dir.path();
        run(Command::new(script()).args([verb]).arg(dir).args([
            service,
            node,
            "127.0.0.1",
            &port.to_string(),
        ]));
    }

    fn add(&self, service: &str, node: &str, port: u16) {
        self.change("add", service, node, port);
    }

    fn del(&self, service: &str, node: &str, port: u16) {
        self.change("del", service, node, port);
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ConsulDns {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}

/// A child process killed when the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16) -> Proc {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_for_port(port, "redis-server");
    Proc(child)
}

/// Sends one inline redis command and returns the reply's first chunk.
fn redis_command(stream: &mut TcpStream, command: &str) -> String {
    stream.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    match first.strip_prefix('$') {
        Some(len) => {
            let len: usize = len.trim().parse().unwrap();
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).unwrap();
            String::from_utf8_lossy(&body).into_owned()
        }
        None => first,
    }
}

/// The port of the redis instance a new connection through `addr` reaches.
fn redis_port_behind(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(STARTUP)).unwrap();
    let info = redis_command(&mut stream, "INFO server");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .unwrap_or_else(|| panic!("no tcp_port in {info:?}"));
    line.trim().parse().unwrap()
}

/// The sluice binary with its stderr collected; listeners' addresses are
/// read from its "listening" log lines (that is the readiness signal).
struct Sluice {
    child: Proc,
    addrs: Vec<SocketAddr>,
    log: mpsc::Receiver<String>,
    /// Lines read so far, and whether a wait has returned each already.
    seen: std::cell::RefCell<Vec<(String, bool)>>,
}

impl Sluice {
    fn start(args: &[&str], listeners: usize) -> Sluice {
        let mut child = Command::new(SLUICE)
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("sluice: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sluice = Sluice {
            child: Proc(child),
            addrs: Vec::new(),
            log,
            seen: Default::default(),
        };
        while sluice.addrs.len() < listeners {
            let line = sluice.wait_for_log("listening");
            sluice.addrs.push(log_field(&line, "addr").parse().unwrap());
        }
        sluice
    }

    /// The first log line containing `needle` that no wait has returned
    /// yet, whether it came before or after other awaited lines.
    fn wait_for_log(&self, needle: &str) -> String {
        let mut seen = self.seen.borrow_mut();
        if let Some((line, taken)) = seen.iter_mut().find(|(l, taken)| !taken && l.contains(needle)) {
            *taken = true;
            return line.clone();
        }
        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push((line.clone(), found));
                    if found {
                        return line;
                    }
                }
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn terminate(mut self) -> ExitStatus {
        let pid = self.child.0.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid]));
        self.child.0.wait().unwrap()
    }
}

/// The value of `field` in a log line, text (`field=value`) or JSON (`"field":"value"`).
fn log_field(line: &str, field: &str) -> String {
    let text = format!("{field}=");
    let json = format!("\"{field}\":\"");
    let (_, rest) = line
        .split_once(&text)
        .or_else(|| line.split_once(&json))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    rest.split(['"', ' ']).next().unwrap_or_default().to_string()
}

fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn redis_ping_through_sluice_reaches_all_three_instances() {
    let dns = ConsulDns::start();
    let ports = [free_port(), free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    dns.add("redis", "-", ports[2]); // Consul's address-style target
    let sluice = Sluice::start(&["--dns", &dns.addr(), "127.0.0.1:0:redis"], 1);
    sluice.wait_for_log("backends changed");

    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
        assert_eq!(redis_command(&mut stream, "PING"), "+PONG\r\n");
        seen.insert(redis_port_behind(sluice.addrs[0]));
    }
    assert_eq!(seen, BTreeSet::from(ports));
    assert!(sluice.terminate().success(), "SIGTERM must exit 0");
}

#[test]
fn instances_added_and_removed_with_nsupdate_are_seen_within_two_refreshes() {
    let refresh = Duration::from_millis(500);
    let dns = ConsulDns::start();
    let ports = [free_port(), free_port(), free_port()];
    let _redis: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nrefresh = \"500ms\"\n[listeners.redis]\nbind = \"127.0.0.1:0\"\nservice = \"redis\"\n",
            dns.addr()
        ),
    );
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    let addr = sluice.addrs[0];
    sluice.wait_for_log("backends changed");

    dns.add("redis", "node3", ports[2]);
    let added = Instant::now();
    while redis_port_behind(addr) != ports[2] {
        assert!(
            added.elapsed() < 2 * refresh,
            "new instance not used within 2× refresh"
        );
    }

    dns.del("redis", "node1", ports[0]);
    let removed = Instant::now();
    sluice.wait_for_log("removed=127.0.0.1");
    assert!(
        removed.elapsed() < 2 * refresh,
        "removal not applied within 2× refresh"
    );
    for _ in 0..12 {
        assert_ne!(
            redis_port_behind(addr),
            ports[0],
            "removed instance still gets new connections"
        );
    }
}

fn carbon(dir: &Path, port: u16) -> Proc {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("whisper")).unwrap();
    let conf = format!(
        "[cache]\nSTORAGE_DIR = {d}/\nLOCAL_DATA_DIR = {d}/whisper/\nCONF_DIR = {d}/\nLOG_DIR = {d}/\n\
         PID_DIR = {d}/\nDATABASE = whisper\nMAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = 1000\n\
         MAX_CREATES_PER_MINUTE = inf\nLINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {port}\n\
         ENABLE_UDP_LISTENER = True\nUDP_RECEIVER_INTERFACE = 127.0.0.1\nUDP_RECEIVER_PORT = {port}\n\
         PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {}\n\
         CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {}\n",
        free_port(),
        free_port()
    );
    std::fs::write(dir.join("carbon.conf"), conf).unwrap();
    std::fs::write(
        dir.join("storage-schemas.conf"),
        "[all]\npattern = .*\nretentions = 1s:1h\n",
    )
    .unwrap();
    let child = Command::new("carbon-cache")
        .arg(format!("--config={d}/carbon.conf"))
        .arg(format!("--pidfile={d}/carbon.pid"))
        .arg(format!("--logdir={d}"))
        .args(["--nodaemon", "start"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("carbon-cache (apt-get install graphite-carbon)");
    wait_for_port(port, "carbon-cache");
    Proc(child)
}

/// carbon-cache registered as "graphite" in its own Consul DNS stand-in,
/// behind sluice with the shorthand `listener`; everything lives until dropped.
struct Graphite {
    _dns: ConsulDns,
    dir: tempfile::TempDir,
    _carbon: Proc,
    sluice: Sluice,
}

fn graphite_behind_sluice(listener: &str) -> Graphite {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    let carbon_port = free_port();
    let carbon = carbon(dir.path(), carbon_port);
    dns.add("graphite", "carbon1", carbon_port);
    let sluice = Sluice::start(&["--dns", &dns.addr(), listener], 1);
    sluice.wait_for_log("backends changed");
    Graphite {
        _dns: dns,
        dir,
        _carbon: carbon,
        sluice,
    }
}

#[test]
fn metric_line_through_sluice_lands_in_carbons_whisper_file() {
    let Graphite { dir, sluice, .. } = &graphite_behind_sluice("127.0.0.1:0:graphite");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut stream = TcpStream::connect(sluice.addrs[0]).unwrap();
    stream
        .write_all(format!("sluice.integration.line 42 {now}\n").as_bytes())
        .unwrap();
    drop(stream);

    wait_for_whisper(dir.path(), "sluice.integration.line", now, 42);
}

/// Waits until carbon's whisper file for `metric` holds `value` at `time`.
fn wait_for_whisper(carbon_dir: &Path, metric: &str, time: u64, value: u32) {
    let wsp = carbon_dir.join("whisper").join(metric.replace('.', "/") + ".wsp");
    let want = format!("{value}.000000");
    let deadline = Instant::now() + STARTUP;
    loop {
        if wsp.exists() {
            let out = Command::new("whisper-fetch")
                .arg(format!("--from={}", time - 10))
                .arg(&wsp)
                .output()
                .expect("whisper-fetch (apt-get install python3-whisper)");
            let text = String::from_utf8_lossy(&out.stdout);
            if text
                .lines()
                .any(|l| l.starts_with(&time.to_string()) && l.ends_with(&want))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "metric never reached {}",
            wsp.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metric_datagram_through_sluice_lands_in_carbons_whisper_file() {
    let Graphite { dir, sluice, .. } = &graphite_behind_sluice("127.0.0.1:0/udp:graphite");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = format!("sluice.integration.udp 7 {now}\n");
    socket.send_to(line.as_bytes(), sluice.addrs[0]).unwrap();
    wait_for_whisper(dir.path(), "sluice.integration.udp", now, 7);
}

#[test]
fn dig_through_a_udp_listener_reaches_two_real_bind_servers() {
    let dns = ConsulDns::start();
    // Two DNS servers to balance over, each answering whoami differently.
    let servers = [ConsulDns::start(), ConsulDns::start()];
    for (server, port) in servers.iter().zip([1111, 2222]) {
        server.add("whoami", "node1", port);
        dns.add("dns", "-", server.port);
    }
    let sluice = Sluice::start(&["--dns", &dns.addr(), "127.0.0.1:0/udp:dns"], 1);
    sluice.wait_for_log("backends changed");

    let mut answers = BTreeSet::new();
    for _ in 0..6 {
        // dig picks a new source port per run: a new flow each time.
        let out = Command::new("dig")
            .args(["+short", "+tries=1", "+time=2", "@127.0.0.1", "-p"])
            .arg(sluice.addrs[0].port().to_string())
            .args(["whoami.service.consul", "SRV"])
            .output()
            .expect("dig (apt-get install bind9-dnsutils)");
        answers.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let want = BTreeSet::from([
        "1 1 1111 node1.node.dc1.consul.".to_string(),
        "1 1 2222 node1.node.dc1.consul.".to_string(),
    ]);
    assert_eq!(answers, want);
}

#[test]
fn check_flag_prints_problems_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_file(
        dir.path(),
        "[listeners.redis]\nbind = \"127.0.0.1:6379\"\nservice = \"redis\"\nmax_conections = 5\n",
    );
    let check = |path: &Path| {
        Command::new(SLUICE)
            .arg("--check")
            .arg("-c")
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4: unknown field `max_conections`", bad.display())),
        "{stderr}"
    );

    let good = config_file(
        dir.path(),
        "[listeners.redis]\nbind = \"127.0.0.1:6379\"\nservice = \"redis\"\n",
    );
    let out = check(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn port_in_use_is_a_clear_error_naming_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(SLUICE)
        .args(["--dns", "127.0.0.1:1", &format!("127.0.0.1:{port}:redis")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "listener '127.0.0.1:{port}:redis': cannot bind 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

/// GET `path` from `addr` over HTTP/1.0 and return the body.
fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|head| panic!("GET {path}: {head}"))
}

/// The body of a 200 answer to GET `path`, or what came instead.
fn try_http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(STARTUP)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    if head.starts_with("HTTP/1.") && head.contains(" 200 ") {
        Ok(body.to_string())
    } else {
        Err(head.to_string())
    }
}

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
        if let (Ok(targets), Ok(result)) = (targets, result) {
            if targets.contains("\"health\":\"up\"") && result.contains("\"listener\":\"redis\"") {
                assert!(result.contains("\"1\"]"), "one connection counted: {result}");
                break;
            }
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

/// A redis-benchmark run; panics with its output unless every request succeeded.
fn redis_benchmark(addr: SocketAddr, args: &[&str]) {
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-q",
            "--csv",
        ])
        .args(args)
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = printed(&out);
    assert!(
        out.status.success() && !text.to_lowercase().contains("error"),
        "redis-benchmark failed: {text}"
    );
    assert!(
        text.contains("\"PING_INLINE\"") || text.contains("\"PING_MBULK\""),
        "{text}"
    );
}

fn two_checked_redis(dns: &ConsulDns, dir: &Path, bind: &str) -> ([u16; 2], Vec<Proc>, PathBuf) {
    let ports = [free_port(), free_port()];
    let procs: Vec<Proc> = ports.iter().map(|&p| redis(p)).collect();
    dns.add("redis", "node1", ports[0]);
    dns.add("redis", "node2", ports[1]);
    let config = config_file(
        dir,
        &format!(
            "dns = \"{}\"\n[listeners.redis]\nbind = \"{bind}\"\nservice = \"redis\"\n\
             [listeners.redis.health]\ninterval = \"500ms\"\ntimeout = \"250ms\"\nfall = 2\nrise = 2\n\
             send = \"PING\\r\\n\"\nexpect = \"+PONG\"\n",
            dns.addr()
        ),
    );
    (ports, procs, config)
}

#[test]
fn a_killed_instance_still_in_dns_costs_clients_nothing() {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    let (ports, mut procs, config) = two_checked_redis(&dns, dir.path(), "127.0.0.1:0");
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    sluice.wait_for_log("backends changed");
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "2000", "-c", "20", "-k", "0"],
    );

    // Killed, still in DNS: at once (before any check notices) and after.
    drop(procs.remove(0));
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "5000", "-c", "20", "-k", "0"],
    );
    let down = sluice.wait_for_log("backend is down");
    assert!(down.contains(&format!("127.0.0.1:{}", ports[0])), "{down}");
    redis_benchmark(
        sluice.addrs[0],
        &["-t", "ping", "-n", "5000", "-c", "20", "-k", "0"],
    );
}

#[test]
fn ten_reloads_during_a_benchmark_lose_nothing() {
    let dns = ConsulDns::start();
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, as in real use: a reload keeps the socket of an unchanged bind.
    let bind = format!("127.0.0.1:{}", free_port());
    let (_ports, _procs, config) = two_checked_redis(&dns, dir.path(), &bind);
    let sluice = Sluice::start(&["--config", config.to_str().unwrap()], 1);
    sluice.wait_for_log("backends changed");
    let addr = sluice.addrs[0];
    let text = std::fs::read_to_string(&config).unwrap();

    let bench = thread::spawn(move || {
        redis_benchmark(addr, &["-t", "ping", "-n", "200000", "-c", "20"]);
        redis_benchmark(addr, &["-t", "ping", "-n", "20000", "-c", "20", "-k", "0"]);
    });
    let pid = sluice.child.0.id().to_string();
    for i in 0..10 {
        // Alternate the balance algorithm: a real change on every reload.
        let balance = if i % 2 == 0 { "least-conn" } else { "round-robin" };
        let next = text.replace(
            "service = \"redis\"",
            &format!("service = \"redis\"\nbalance = \"{balance}\""),
        );
        std::fs::write(&config, next).unwrap();
        run(Command::new("kill").args(["-HUP", &pid]));
        let line = sluice.wait_for_log("configuration reloaded");
        assert!(line.contains("changed=[\"redis\"]"), "{line}");
        thread::sleep(Duration::from_millis(100));
    }
    bench.join().expect("benchmark saw errors across reloads");

    // A broken file is refused and the running configuration stays.
    std::fs::write(&config, "[listeners.redis]\nbind = 1\n").unwrap();
    run(Command::new("kill").args(["-HUP", &pid]));
    let line = sluice.wait_for_log("reload rejected");
    assert!(line.contains("reload rejected"), "{line}");
    redis_benchmark(addr, &["-t", "ping", "-n", "2000", "-c", "10"]);
}

#[test]
fn upgrade_with_reuse_port_refuses_no_connection() {
    // Let the kernel hand connections queued on a closing listener to its
    // SO_REUSEPORT sibling instead of resetting them (Linux 5.14+).
    run(Command::new("sysctl").args(["-qw", "net.ipv4.tcp_migrate_req=1"]));
    let dns = ConsulDns::start();
    let port = free_port();
    let _redis = redis(port);
    dns.add("redis", "node1", port);
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let config = config_file(
        dir.path(),
        &format!(
            "dns = \"{}\"\nshutdown_grace = \"5s\"\n[listeners.redis]\nbind = \"127.0.0.1:{front}\"\n\
             service = \"redis\"\nreuse_port = true\n",
            dns.addr()
        ),
    );
    let args = ["--config", config.to_str().unwrap()];
    let old = Sluice::start(&args, 1);
    old.wait_for_log("backends changed");
    let addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let clients = thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let result = TcpStream::connect(addr)
                .map_err(|e| e.to_string())
                .and_then(|mut s| {
                    s.set_read_timeout(Some(STARTUP)).unwrap();
                    let reply = redis_command(&mut s, "PING");
                    if reply == "+PONG\r\n" { Ok(()) } else { Err(reply) }
                });
            match result {
                Ok(()) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    thread::sleep(Duration::from_millis(300));
    let new = Sluice::start(&args, 1);
    new.wait_for_log("backends changed");
    thread::sleep(Duration::from_millis(300));
    assert!(old.terminate().success());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = clients.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests made it");
}
