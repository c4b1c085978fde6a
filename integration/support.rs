//! What the end-to-end tests stand on: free ports, BIND as the Consul DNS
//! stand-in (`consul-dns.sh`) and as a Kubernetes cluster DNS
//! (`cluster-dns.sh`), redis, the sluice binary with its log lines as
//! readiness signals, and HTTP through the shared test client.

pub use sluice_test_support::http;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
/// Generous bound for a program to come up on a busy CI machine.
pub const STARTUP: Duration = Duration::from_secs(20);

/// A port free for both TCP and UDP on 127.0.0.1 right now. Only for programs
/// that cannot bind port 0 and report it (BIND, redis, carbon).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + STARTUP;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/consul-dns.sh")
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/cluster-dns.sh")
}

/// `SCRIPT VERB DIR`, how both DNS stand-ins' command lines begin.
fn dns_command(script: &Path, verb: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(script);
    cmd.arg(verb).arg(dir);
    cmd
}

/// A DNS stand-in started in a directory of its own, on `port`.
fn start_dns(script: &Path, port: u16) -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    run(dns_command(script, "start", dir.path()).arg(port.to_string()));
    (dir, port)
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", printed(&out));
}

/// What a finished command printed, stdout then stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// BIND answering like Consul DNS, in its own directory and port.
pub struct ConsulDns {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl ConsulDns {
    pub fn start() -> ConsulDns {
        Self::start_on(free_port())
    }

    /// On `port`, e.g. one sluice was told before the server started.
    pub fn start_on(port: u16) -> ConsulDns {
        let (dir, port) = start_dns(&script(), port);
        ConsulDns { dir, port }
    }

    pub fn change(&self, verb: &str, service: &str, node: &str, port: u16) {
        run(dns_command(&script(), verb, self.dir.path()).args([
            service,
            node,
            "127.0.0.1",
            &port.to_string(),
        ]));
    }

    pub fn add(&self, service: &str, node: &str, port: u16) {
        self.change("add", service, node, port);
    }

    pub fn del(&self, service: &str, node: &str, port: u16) {
        self.change("del", service, node, port);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ConsulDns {
    fn drop(&mut self) {
        let _ = dns_command(&script(), "stop", self.dir.path()).status();
    }
}

/// BIND answering like a Kubernetes cluster DNS (CoreDNS) for headless
/// Services in `cluster.local`, in its own directory and port.
pub struct ClusterDns {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl ClusterDns {
    pub fn start() -> ClusterDns {
        let (dir, port) = start_dns(&cluster_script(), free_port());
        ClusterDns { dir, port }
    }

    /// Makes `ip:port` a ready endpoint of the headless `service` in
    /// `namespace`, on its TCP port named `redis`.
    pub fn add(&self, service: &str, namespace: &str, ip: &str, port: u16) {
        self.change("add", service, namespace, ip, port);
    }

    pub fn del(&self, service: &str, namespace: &str, ip: &str, port: u16) {
        self.change("del", service, namespace, ip, port);
    }

    fn change(&self, verb: &str, service: &str, namespace: &str, ip: &str, port: u16) {
        run(dns_command(&cluster_script(), verb, self.dir.path()).args([
            service,
            namespace,
            ip,
            &port.to_string(),
        ]));
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ClusterDns {
    fn drop(&mut self) {
        let _ = dns_command(&cluster_script(), "stop", self.dir.path()).status();
    }
}

/// A child process killed when the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn redis(port: u16) -> Proc {
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
pub fn redis_command(stream: &mut TcpStream, command: &str) -> String {
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
pub fn redis_port_behind(addr: SocketAddr) -> u16 {
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
pub struct Sluice {
    pub child: Proc,
    pub addrs: Vec<SocketAddr>,
    log: mpsc::Receiver<String>,
    /// Lines read so far, and whether a wait has returned each already.
    seen: std::cell::RefCell<Vec<(String, bool)>>,
}

impl Sluice {
    pub fn start(args: &[&str], listeners: usize) -> Sluice {
        Self::start_with_env(args, listeners, &[])
    }

    /// As [`Sluice::start`], with these environment variables set.
    pub fn start_with_env(args: &[&str], listeners: usize, env: &[(&str, &str)]) -> Sluice {
        let mut child = Command::new(SLUICE)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
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
    pub fn wait_for_log(&self, needle: &str) -> String {
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

    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.0.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid]));
        self.child.0.wait().unwrap()
    }
}

/// The value of `field` in a log line, text (`field=value`) or JSON (`"field":"value"`).
pub fn log_field(line: &str, field: &str) -> String {
    let text = format!("{field}=");
    let json = format!("\"{field}\":\"");
    let (_, rest) = line
        .split_once(&text)
        .or_else(|| line.split_once(&json))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    rest.split(['"', ' ']).next().unwrap_or_default().to_string()
}

pub fn config_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// GET `path` from `addr` over HTTP/1.0 and return the body.
pub fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|head| panic!("GET {path}: {head}"))
}

/// The body of a 200 answer to GET `path`, or what came instead.
pub fn try_http_get(addr: &str, path: &str) -> Result<String, String> {
    let answer = http(addr, "GET", path, &[], "").map_err(|e| e.to_string())?;
    match answer.status {
        200 => Ok(answer.body),
        _ => Err(answer.head),
    }
}

/// One HTTP/1.0 exchange with `addr`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> std::io::Result<http::Answer> {
    http::exchange(addr, &http::request(method, path, headers, body), STARTUP)
}

/// A redis-benchmark run; panics with its output unless every request succeeded.
pub fn redis_benchmark(addr: SocketAddr, args: &[&str]) {
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
