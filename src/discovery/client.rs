//! Asking DNS servers: [`DnsClient`] sends each query through hickory-resolver
//! (EDNS0, UDP with a TCP retry when truncated, or TCP only, where one
//! connection per server carries every query), with nothing cached, since
//! Consul's TTL is 0 and sluice polls at its own pace.
//!
//! sluice keeps the order of its servers itself: each has its own resolver,
//! a query goes to the server that answered last and on a timeout, an I/O
//! error, a bad response code or a malformed answer tries the next one, up
//! to `dns_attempts` tries. A dead first server therefore costs one timeout
//! once, not one per query. NXDOMAIN and empty answers are answers: they are
//! not retried elsewhere.
//!
//! Datagrams that are not the answer (forged IDs, garbage) are skipped by
//! hickory; the UDP sockets it uses are watched here, so that a query that
//! times out says what arrived instead.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::{
    DnsUdpSocket, RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};

use crate::config::{DNS_PORT, DnsSettings};

/// EDNS0 payload size we advertise; Consul and BIND answer up to this over UDP.
const EDNS_PAYLOAD: u16 = 4096;
/// Queries in flight on one TCP connection (IDs are 16 bits).
const MAX_QUERIES_PER_CONNECTION: usize = 4096;

/// Why a query got no usable answer. The last good set stays in place.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{name} {kind}: no answer within {timeout:?}")]
    Timeout {
        name: Name,
        kind: RecordType,
        timeout: Duration,
    },
    #[error("{name} {kind}: {source}")]
    Io {
        name: Name,
        kind: RecordType,
        source: Arc<io::Error>,
    },
    #[error("{name} {kind}: malformed answer: {reason}")]
    Malformed {
        name: Name,
        kind: RecordType,
        reason: String,
    },
    #[error("{name} {kind}: server answered {code}")]
    Rcode {
        name: Name,
        kind: RecordType,
        code: ResponseCode,
    },
}

/// Datagrams a server's UDP sockets received that were not the answer.
#[derive(Debug, Default)]
struct Ignored {
    count: usize,
    last: Option<String>,
}

/// One DNS server, with a resolver for each way of asking it.
#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    /// UDP, retried over TCP when the answer is truncated.
    udp: Resolver<Watching>,
    /// TCP only: one connection, kept, every query multiplexed on it.
    tcp: Resolver<Watching>,
    /// Whether a TCP query got through lately. Until one does, TCP queries
    /// go one at a time: hickory connects for each query that finds no
    /// connection, so 200 at once would open 200.
    tcp_connected: Arc<AtomicBool>,
    tcp_first: Arc<Semaphore>,
    ignored: Arc<Mutex<Ignored>>,
}

impl Server {
    fn new(addr: SocketAddr, settings: &DnsSettings) -> io::Result<Server> {
        let ignored = Arc::new(Mutex::default());
        let resolver = |connections: &[fn() -> ConnectionConfig]| {
            let connections = connections
                .iter()
                .map(|make| {
                    let mut connection = make();
                    connection.port = addr.port();
                    connection
                })
                .collect();
            let server = NameServerConfig::new(addr.ip(), true, connections);
            let mut options = ResolverOpts::default();
            options.timeout = settings.timeout;
            // sluice tries the next server itself.
            options.attempts = 0;
            options.num_concurrent_reqs = 1;
            options.cache_size = 0;
            options.use_hosts_file = ResolveHosts::Never;
            options.edns0 = true;
            options.edns_payload_len = EDNS_PAYLOAD;
            // Every service's query on the one TCP connection at once, rather
            // than hickory opening another connection past 32.
            options.max_active_requests = MAX_QUERIES_PER_CONNECTION;
            let provider = Watching {
                tokio: TokioRuntimeProvider::default(),
                ignored: ignored.clone(),
            };
            Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![server]), provider)
                .with_options(options)
                .build()
                .map_err(io::Error::other)
        };
        Ok(Server {
            addr,
            udp: resolver(&[ConnectionConfig::udp, ConnectionConfig::tcp])?,
            tcp: resolver(&[ConnectionConfig::tcp])?,
            tcp_connected: Arc::default(),
            tcp_first: Arc::new(Semaphore::new(1)),
            ignored,
        })
    }

    /// One try, given up at `deadline`: the reply, an empty one for
    /// NXDOMAIN / no records, or why not.
    async fn ask(
        &self,
        name: &Name,
        kind: RecordType,
        tcp: bool,
        deadline: Instant,
    ) -> Result<Message, LookupError> {
        let started = Instant::now();
        let result = if tcp {
            let first = match self.tcp_connected.load(Relaxed) {
                true => None,
                false => timeout_at(deadline, self.tcp_first.acquire()).await.ok(),
            };
            let result = timeout_at(deadline, self.tcp.lookup(name.clone(), kind)).await;
            // Any answer, even NXDOMAIN, came over a working connection.
            let got_through = matches!(&result, Ok(Ok(_)) | Ok(Err(NetError::Dns(_))));
            self.tcp_connected.store(got_through, Relaxed);
            drop(first);
            result
        } else {
            timeout_at(deadline, self.udp.lookup(name.clone(), kind)).await
        };
        let ignored = std::mem::take(&mut *self.ignored.lock().unwrap_or_else(PoisonError::into_inner));
        let (name, error) = (
            name.clone(),
            match result {
                Ok(Ok(lookup)) => return Ok(lookup.into()),
                Ok(Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })))) => {
                    return Ok(empty_reply(name, kind, response_code));
                }
                Ok(Err(e)) => e,
                Err(_deadline) => NetError::Timeout,
            },
        );
        Err(match error {
            NetError::Dns(DnsError::ResponseCode(code)) => LookupError::Rcode { name, kind, code },
            NetError::Timeout => {
                let timeout = started.elapsed();
                match ignored.last {
                    Some(last) => LookupError::Malformed {
                        name,
                        kind,
                        reason: format!(
                            "no valid answer within {timeout:?}; {} reply datagram(s) ignored, the last: {last}",
                            ignored.count
                        ),
                    },
                    None => LookupError::Timeout { name, kind, timeout },
                }
            }
            NetError::Io(source) => LookupError::Io { name, kind, source },
            other => LookupError::Malformed {
                name,
                kind,
                reason: other.to_string(),
            },
        })
    }
}

/// What hickory reports as "no records": a reply with that code and no answers.
fn empty_reply(name: &Name, kind: RecordType, code: ResponseCode) -> Message {
    let mut reply = Message::new(0, MessageType::Response, OpCode::Query);
    reply.add_query(Query::query(name.clone(), kind));
    reply.metadata.response_code = code;
    reply
}

/// Asks a list of DNS servers, in order of preference. Cheap to clone.
#[derive(Clone)]
pub(crate) struct DnsClient {
    servers: Arc<[Server]>,
    /// The server a query asks first: the last that answered.
    preferred: Arc<AtomicUsize>,
    timeout: Duration,
    attempts: usize,
}

impl fmt::Debug for DnsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.servers()).finish()
    }
}

impl DnsClient {
    /// A client for `settings`: its servers, else /etc/resolv.conf's.
    pub(crate) fn new(settings: &DnsSettings) -> io::Result<DnsClient> {
        let addrs = match settings.servers.as_slice() {
            [] => system_servers()?,
            servers => servers.to_vec(),
        };
        let servers = addrs
            .iter()
            .map(|addr| Server::new(*addr, settings))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(DnsClient {
            servers: servers.into(),
            preferred: Arc::default(),
            timeout: settings.timeout,
            attempts: settings.attempts.max(1) as usize,
        })
    }

    /// How long one try waits for one server.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn servers(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// One query, over TCP only if `tcp`, given up at `deadline`: the first
    /// server's answer that is an answer (records, NXDOMAIN, or none),
    /// trying the next server on anything else. The error is the last try's.
    pub(crate) async fn query(
        &self,
        name: &Name,
        kind: RecordType,
        tcp: bool,
        deadline: Instant,
    ) -> Result<Message, LookupError> {
        let n = self.servers.len();
        let first = self.preferred.load(Relaxed);
        let mut last_error = None;
        for i in 0..self.attempts {
            if i > 0 && Instant::now() >= deadline {
                break;
            }
            let index = (first + i) % n;
            // Should this try be cut short (the refresh ran out of time),
            // the next query starts on the next server.
            let mut trying = Trying {
                preferred: &self.preferred,
                index,
                next: (index + 1) % n,
                answered: false,
            };
            match self.servers[index].ask(name, kind, tcp, deadline).await {
                Ok(reply) => {
                    trying.answered = true;
                    if index != first {
                        self.preferred.store(index, Relaxed);
                    }
                    return Ok(reply);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| LookupError::Timeout {
            name: name.clone(),
            kind,
            timeout: self.timeout,
        }))
    }
}

/// A try on one server; unless it answered, the next query starts on the
/// next server (if no other query has moved on already).
struct Trying<'a> {
    preferred: &'a AtomicUsize,
    index: usize,
    next: usize,
    answered: bool,
}

impl Drop for Trying<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self
                .preferred
                .compare_exchange(self.index, self.next, Relaxed, Relaxed);
        }
    }
}

/// Every nameserver of /etc/resolv.conf, on port 53.
fn system_servers() -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read("/etc/resolv.conf")?;
    let conf = resolv_conf::Config::parse(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("/etc/resolv.conf: {e}")))?;
    if conf.nameservers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/etc/resolv.conf lists no nameserver",
        ));
    }
    Ok(conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(ip.into(), DNS_PORT))
        .collect())
}

/// hickory's tokio runtime, but with UDP sockets that note what they receive
/// that is not the answer.
#[derive(Clone)]
struct Watching {
    tokio: TokioRuntimeProvider,
    ignored: Arc<Mutex<Ignored>>,
}

type BoxedIo<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

impl RuntimeProvider for Watching {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = WatchedUdp;
    type Tcp = <TokioRuntimeProvider as RuntimeProvider>::Tcp;

    fn create_handle(&self) -> Self::Handle {
        self.tokio.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> BoxedIo<Self::Tcp> {
        self.tokio.connect_tcp(server_addr, bind_addr, timeout)
    }

    fn bind_udp(&self, local_addr: SocketAddr, server_addr: SocketAddr) -> BoxedIo<Self::Udp> {
        let bound = self.tokio.bind_udp(local_addr, server_addr);
        let ignored = self.ignored.clone();
        Box::pin(async move {
            Ok(WatchedUdp {
                socket: bound.await?,
                server: server_addr,
                sent: AtomicU16::new(0),
                ignored,
            })
        })
    }
}

/// A query's UDP socket, which remembers the ID of the query it sent so that
/// it can tell what else arrived. Only a datagram with another ID is parsed
/// here (a rare event); the answer is hickory's alone to read.
struct WatchedUdp {
    socket: tokio::net::UdpSocket,
    server: SocketAddr,
    /// The ID of the query sent.
    sent: AtomicU16,
    ignored: Arc<Mutex<Ignored>>,
}

impl WatchedUdp {
    /// Why `datagram` from `from` is not the answer, if it is not.
    fn not_the_answer(&self, datagram: &[u8], from: SocketAddr) -> Option<String> {
        if from != self.server {
            return Some(format!("a datagram from {from}, not the server"));
        }
        let id = self.sent.load(Relaxed);
        if datagram.starts_with(&id.to_be_bytes()) {
            return None;
        }
        Some(match Message::from_vec(datagram) {
            Ok(reply) => format!("reply with ID {}, expected {id}", reply.metadata.id),
            Err(e) => format!("not a DNS message ({} bytes): {e}", datagram.len()),
        })
    }
}

impl DnsUdpSocket for WatchedUdp {
    type Time = TokioTime;

    fn poll_recv_from(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<(usize, SocketAddr)>> {
        let (n, from) = ready!(DnsUdpSocket::poll_recv_from(&self.socket, cx, buf))?;
        if let Some(reason) = self.not_the_answer(&buf[..n], from) {
            let mut ignored = self.ignored.lock().unwrap_or_else(PoisonError::into_inner);
            ignored.count += 1;
            ignored.last = Some(reason);
        }
        Poll::Ready(Ok((n, from)))
    }

    fn poll_send_to(&self, cx: &mut Context<'_>, buf: &[u8], target: SocketAddr) -> Poll<io::Result<usize>> {
        if let [high, low, ..] = *buf {
            self.sent.store(u16::from_be_bytes([high, low]), Relaxed);
        }
        DnsUdpSocket::poll_send_to(&self.socket, cx, buf, target)
    }
}
