//! Test support: a fake Consul-like DNS server built with hickory-proto that
//! tests change at runtime, backends that say who they are, and a helper that
//! runs sluice in-process on port 0.
#![allow(dead_code)] // each test binary uses a different part

pub use sluice_test_support::http;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How the fake server treats every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer,
    /// Never reply.
    Silent,
    ServFail,
    NxDomain,
    /// Reply with bytes that are not a DNS message.
    Garbage,
    /// Reply with the answer under another transaction ID (a forgery).
    WrongId,
    Refused,
}

/// One SRV record: target `host-<ip>.node.dc1.consul.` (or `target`) with
/// the IP as glue unless `glue` is false (then only an A query finds it).
#[derive(Debug, Clone, Copy)]
pub struct Srv {
    pub addr: SocketAddr,
    pub priority: u16,
    pub glue: bool,
    pub target: Option<&'static str>,
}

impl Srv {
    pub fn new(addr: SocketAddr) -> Self {
        Srv {
            addr,
            priority: 1,
            glue: true,
            target: None,
        }
    }

    fn target(&self) -> Name {
        match self.target {
            Some(name) => Name::from_ascii(name).unwrap(),
            None => target_name(self.addr.ip()),
        }
    }
}

#[derive(Default)]
struct Zone {
    services: HashMap<String, Vec<Srv>>,
    mode: Option<Mode>,
    /// Modes for queries of one name, or of one record type.
    name_modes: HashMap<String, Mode>,
    type_modes: HashMap<RecordType, Mode>,
}

/// A DNS server on 127.0.0.1 (UDP and TCP on one port) that answers SRV
/// queries like Consul, truncating UDP answers larger than the client's
/// EDNS payload.
#[derive(Clone)]
pub struct FakeDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    /// Queries for anything but SRV (target lookups).
    pub target_queries: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub tcp_connections: Arc<AtomicUsize>,
}

fn target_name(ip: IpAddr) -> Name {
    let label = ip.to_string().replace(['.', ':'], "-");
    Name::from_ascii(format!("host-{label}.node.dc1.consul.")).unwrap()
}

impl FakeDns {
    pub async fn start() -> FakeDns {
        // TCP must share the UDP port (a truncated answer is retried there).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let dns = FakeDns {
            addr: udp.local_addr().unwrap(),
            zone: Arc::default(),
            udp_queries: Arc::default(),
            tcp_queries: Arc::default(),
            target_queries: Arc::default(),
            tcp_connections: Arc::default(),
        };
        let server = dns.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 65535];
            loop {
                let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                server.udp_queries.fetch_add(1, Relaxed);
                if let Some(reply) = server.reply(&buf[..n], true) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let server = dns.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                server.tcp_connections.fetch_add(1, Relaxed);
                let server = server.clone();
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut query = vec![0; usize::from(len)];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        server.tcp_queries.fetch_add(1, Relaxed);
                        let Some(reply) = server.reply(&query, false) else {
                            continue;
                        };
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend(reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        dns
    }

    /// Replaces the records of `service` (`<service>.service.consul.`).
    pub fn set(&self, service: &str, records: Vec<Srv>) {
        let name = format!("{service}.service.consul.");
        self.zone.lock().unwrap().services.insert(name, records);
    }

    pub fn set_backends(&self, service: &str, addrs: &[SocketAddr]) {
        self.set(service, addrs.iter().copied().map(Srv::new).collect());
    }

    pub fn remove(&self, service: &str) {
        let name = format!("{service}.service.consul.");
        self.zone.lock().unwrap().services.remove(&name);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = Some(mode);
    }

    /// How queries for `name` (fully qualified) are treated, whatever the mode.
    pub fn set_name_mode(&self, name: &str, mode: Mode) {
        self.zone
            .lock()
            .unwrap()
            .name_modes
            .insert(name.to_ascii_lowercase(), mode);
    }

    /// How queries of `kind` are treated, whatever the mode.
    pub fn set_type_mode(&self, kind: RecordType, mode: Mode) {
        self.zone.lock().unwrap().type_modes.insert(kind, mode);
    }

    fn reply(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let zone = self.zone.lock().unwrap();
        let mode = zone.mode.unwrap_or(Mode::Answer);
        let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.add_queries(request.queries.clone());
        if let Some(edns) = &request.edns {
            reply.set_edns(edns.clone());
        }
        let question = request.queries.first()?;
        let qname = question.name().to_ascii().to_ascii_lowercase();
        if question.query_type() != RecordType::SRV {
            self.target_queries.fetch_add(1, Relaxed);
        }
        let mode = zone
            .name_modes
            .get(&qname)
            .or(zone.type_modes.get(&question.query_type()))
            .copied()
            .unwrap_or(mode);
        let forged = mode == Mode::WrongId;
        match if forged { Mode::Answer } else { mode } {
            Mode::Silent => return None,
            Mode::Garbage => return Some(vec![0xde, 0xad, 0xbe, 0xef]),
            Mode::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
            Mode::NxDomain => reply.metadata.response_code = ResponseCode::NXDomain,
            Mode::Refused => reply.metadata.response_code = ResponseCode::Refused,
            Mode::WrongId => unreachable!("answered, then forged"),
            Mode::Answer => match question.query_type() {
                RecordType::SRV => match zone.services.get(&qname) {
                    Some(records) => {
                        for srv in records {
                            let target = srv.target();
                            let rdata = SRV::new(srv.priority, 1, srv.addr.port(), target.clone());
                            reply.add_answer(Record::from_rdata(
                                question.name().clone(),
                                0,
                                RData::SRV(rdata),
                            ));
                            if let (true, IpAddr::V4(ip)) = (srv.glue, srv.addr.ip()) {
                                reply.add_additional(Record::from_rdata(target, 0, RData::A(A::from(ip))));
                            }
                        }
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                },
                RecordType::A => {
                    let ip = zone
                        .services
                        .values()
                        .flatten()
                        .find(|s| s.target().to_ascii().eq_ignore_ascii_case(&qname))
                        .map(|s| s.addr.ip());
                    match ip {
                        Some(IpAddr::V4(ip)) => {
                            reply.add_answer(Record::from_rdata(
                                question.name().clone(),
                                0,
                                RData::A(A::from(ip)),
                            ));
                        }
                        _ => reply.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                _ => {}
            },
        }
        if forged {
            reply.metadata.id = request.metadata.id.wrapping_add(1);
        }
        let bytes = reply.to_vec().ok()?;
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()));
        if udp && bytes.len() > limit {
            return reply.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// A backend on 127.0.0.1:0 that sends its port as a first line, then echoes
/// until EOF and half-closes.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> EchoBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (count, stopped) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = stopped.cancelled() => return,
                };
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let greeting = format!("{}\n", addr.port());
                    if stream.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        EchoBackend { addr, accepted, stop }
    }

    /// Stops accepting (the port closes); open connections keep running.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A started echo backend per count, all on 127.0.0.1.
pub async fn echo_backends(count: usize) -> Vec<EchoBackend> {
    let mut backends = Vec::new();
    for _ in 0..count {
        backends.push(EchoBackend::start().await);
    }
    backends
}

/// Connects through `addr` and returns the stream and the backend's port line.
pub async fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, u16) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no greeting, got {line:?}"));
    (reader, port)
}

/// The backend port a fresh connection through `addr` reaches.
pub async fn backend_port(addr: SocketAddr) -> u16 {
    connect(addr).await.1
}

/// sluice running in-process.
pub struct Sluice {
    pub addrs: Vec<(String, SocketAddr)>,
    /// The /metrics and /status endpoint, when the config has `metrics`.
    pub metrics: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Sluice {
    /// Runs `config_toml` (listeners should bind 127.0.0.1:0).
    pub async fn start(config_toml: &str) -> Sluice {
        let config = sluice::Config::parse(config_toml, "test.toml", &Default::default()).unwrap();
        let server = sluice::Server::bind(config).await.unwrap();
        let addrs = server.local_addrs();
        let metrics = server.metrics_addr();
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(server.run(shutdown.clone()));
        Sluice {
            addrs,
            metrics,
            shutdown,
            done,
        }
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }
}

/// A config with one listener for `service` discovered through `dns`.
pub fn dns_config(dns: &FakeDns, service: &str, extra: &str) -> String {
    format!(
        "dns = \"{}\"\nrefresh = \"1s\"\n[listeners.{service}]\nbind = \"127.0.0.1:0\"\nservice = \"{service}\"\n{extra}\n",
        dns.addr
    )
}

/// A plain connection through `addr`, nothing read yet.
pub async fn raw_connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

/// One HTTP/1.0 exchange with `addr`.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> http::Answer {
    let request = http::request(method, path, headers, body);
    http::exchange_async(addr, &request).await.unwrap()
}

/// GET `path` over HTTP/1.0; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let answer = http(addr, "GET", path, &[], "").await;
    (answer.status_line().to_string(), answer.body)
}

/// A UDP backend on 127.0.0.1:0: answers `who` with its port, echoes anything
/// else, and counts what it received.
pub struct UdpEcho {
    pub addr: SocketAddr,
    pub received: Arc<AtomicUsize>,
}

impl UdpEcho {
    pub async fn start() -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 65536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                count.fetch_add(1, Relaxed);
                let reply = if &buf[..n] == b"who" {
                    addr.port().to_string().into_bytes()
                } else {
                    buf[..n].to_vec()
                };
                let _ = socket.send_to(&reply, from).await;
            }
        });
        UdpEcho { addr, received }
    }
}

/// The value of the series `series` (name and labels) in a Prometheus exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A backend that answers health checks (`PING`) with `+PONG` while healthy
/// and `-ERR` while sick, and answers any other first line (client traffic)
/// with its port, counting those clients.
pub struct CheckedBackend {
    pub addr: SocketAddr,
    pub clients: Arc<AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl CheckedBackend {
    pub async fn start() -> CheckedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (count, up) = (clients.clone(), healthy.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (count, up) = (count.clone(), up.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let reply = if line.trim() == "PING" {
                        if up.load(Relaxed) {
                            "+PONG\r\n".to_string()
                        } else {
                            "-ERR\r\n".to_string()
                        }
                    } else {
                        count.fetch_add(1, Relaxed);
                        format!("{}\n", addr.port())
                    };
                    let _ = reader.get_mut().write_all(reply.as_bytes()).await;
                });
            }
        });
        CheckedBackend {
            addr,
            clients,
            healthy,
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Relaxed);
    }
}

/// One client request through `addr` to a [`CheckedBackend`]: its port.
pub async fn request(addr: SocketAddr) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"hello\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad reply {reply:?}"))
}

/// Log lines of sluice written on this thread while the guard lives (use a
/// current-thread test runtime, `#[tokio::test]`'s default, so that every
/// task logs here). One global subscriber serves every test of the binary:
/// per-thread default subscribers miss events whose interest another test
/// thread cached first.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Stops capturing when dropped.
pub struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURING.set(None);
    }
}

/// Writes to the capture of the thread it runs on, if any.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with_borrow(|logs| {
            if let Some(logs) = logs {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> (Logs, Capture) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("sluice=debug")
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
        });
        let logs = Logs::default();
        CAPTURING.set(Some(logs.clone()));
        (logs, Capture)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (up to 5s) for a line containing `needle`: a connection's last
    /// line comes after its client saw the end.
    pub async fn wait_for(&self, needle: &str) -> bool {
        let appeared = async {
            while self.count(needle) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), appeared)
            .await
            .is_ok()
    }
}
