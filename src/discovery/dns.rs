//! DNS SRV discovery: a small stub client (hickory-proto messages over tokio
//! UDP/TCP), the SRV answer → [`BackendSet`] translation, and the refresh task
//! that keeps the last good set.
//!
//! The client is ours rather than hickory-resolver's because sluice needs the
//! whole answer: the A/AAAA glue in the additional section (which the
//! resolver's lookups drop), the exact response code, and control over
//! EDNS0, TC → TCP retry and TCP-only mode. Nothing is cached: Consul's TTL is 0.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backend, BackendSet, Diff, QueryState, Snapshot};
use crate::config::SrvQuery;

/// EDNS0 payload size we advertise; Consul and BIND answer up to this over UDP.
const EDNS_PAYLOAD: u16 = 4096;
/// Upper bound on one exchange (UDP, plus the TCP retry if truncated).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a lookup gave no usable answer. The last good set stays in place.
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
        source: io::Error,
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

/// What a successful SRV lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Backends(BackendSet),
    /// NXDOMAIN, or no SRV records: real, but applied only after a grace period.
    Empty,
}

/// A stub DNS client for one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DnsClient {
    server: SocketAddr,
}

impl DnsClient {
    pub fn new(server: SocketAddr) -> Self {
        DnsClient { server }
    }

    /// The first nameserver of /etc/resolv.conf.
    pub fn system() -> io::Result<Self> {
        let text = std::fs::read("/etc/resolv.conf")?;
        let conf = resolv_conf::Config::parse(text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("/etc/resolv.conf: {e}")))?;
        let server = conf
            .nameservers
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "/etc/resolv.conf lists no nameserver"))?;
        Ok(Self::new(SocketAddr::new(server.into(), crate::config::DNS_PORT)))
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends one query; over UDP with EDNS0 unless `tcp`, retrying over TCP
    /// when the UDP answer is truncated. Checks the response matches.
    pub async fn query(&self, name: &Name, kind: RecordType, tcp: bool) -> Result<Message, LookupError> {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(name.clone(), kind));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        request.set_edns(edns);
        let err = |source: io::Error| LookupError::Io {
            name: name.clone(),
            kind,
            source,
        };
        let bytes = request.to_vec().map_err(|e| err(io::Error::other(e)))?;

        let exchange = async {
            if !tcp {
                let reply = self
                    .exchange_udp(&bytes, request.metadata.id)
                    .await
                    .map_err(err)?;
                let reply = self.check(&request, &reply, name, kind)?;
                if !reply.metadata.truncation {
                    return Ok(reply);
                }
                debug!(%name, %kind, "answer truncated over UDP, retrying over TCP");
            }
            let reply = self.exchange_tcp(&bytes).await.map_err(err)?;
            self.check(&request, &reply, name, kind)
        };
        timeout(QUERY_TIMEOUT, exchange).await.unwrap_or_else(|_| {
            Err(LookupError::Timeout {
                name: name.clone(),
                kind,
                timeout: QUERY_TIMEOUT,
            })
        })
    }

    async fn exchange_udp(&self, request: &[u8], id: u16) -> io::Result<Vec<u8>> {
        let socket = UdpSocket::bind(crate::net::any_addr_like(self.server)).await?;
        socket.connect(self.server).await?;
        socket.send(request).await?;
        let mut buf = vec![0; usize::from(u16::MAX)];
        loop {
            let n = socket.recv(&mut buf).await?;
            // Skip stray datagrams (a late answer to an earlier query).
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    async fn exchange_tcp(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(self.server).await?;
        let len = u16::try_from(request.len()).map_err(io::Error::other)?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    }

    fn check(
        &self,
        request: &Message,
        reply: &[u8],
        name: &Name,
        kind: RecordType,
    ) -> Result<Message, LookupError> {
        let malformed = |reason: String| LookupError::Malformed {
            name: name.clone(),
            kind,
            reason,
        };
        let reply = Message::from_vec(reply).map_err(|e| malformed(e.to_string()))?;
        if reply.metadata.id != request.metadata.id || reply.metadata.message_type != MessageType::Response {
            return Err(malformed("not a response to our query".into()));
        }
        if reply.queries != request.queries {
            return Err(malformed("answers a different question".into()));
        }
        Ok(reply)
    }
}

/// One SRV record with the addresses known for its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub target: Name,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
    /// From glue or an `.addr.` target; empty means "look the target up".
    pub addrs: Vec<IpAddr>,
}

/// Reads an SRV answer: SRV records from the answer section, addresses from
/// A/AAAA glue anywhere in the message or from Consul `<hex>.addr.` targets.
/// Other record types are skipped; `Ok(None)` means the answer is empty.
pub fn parse_srv(reply: &Message, name: &Name) -> Result<Option<Vec<SrvTarget>>, LookupError> {
    let code = reply.metadata.response_code;
    if code == ResponseCode::NXDomain {
        return Ok(None);
    }
    if code != ResponseCode::NoError {
        return Err(LookupError::Rcode {
            name: name.clone(),
            kind: RecordType::SRV,
            code,
        });
    }
    let mut glue: HashMap<&Name, Vec<IpAddr>> = HashMap::new();
    for record in reply.answers.iter().chain(&reply.additionals) {
        match &record.data {
            RData::A(a) => glue.entry(&record.name).or_default().push(IpAddr::V4(a.0)),
            RData::AAAA(a) => glue.entry(&record.name).or_default().push(IpAddr::V6(a.0)),
            _ => {}
        }
    }
    let mut targets = Vec::new();
    let mut srv_records = 0;
    for record in &reply.answers {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        srv_records += 1;
        // "." means "no service here" (RFC 2782); port 0 cannot be connected to.
        if srv.target.is_root() || srv.port == 0 {
            continue;
        }
        let addrs = match consul_addr_target(&srv.target) {
            Some(ip) => vec![ip],
            None => glue.get(&srv.target).cloned().unwrap_or_default(),
        };
        targets.push(SrvTarget {
            target: srv.target.clone(),
            port: srv.port,
            priority: srv.priority,
            weight: srv.weight,
            addrs,
        });
    }
    if srv_records == 0 && !reply.answers.is_empty() {
        // Records, but none of the kind asked for: not trustworthy as "empty".
        return Err(LookupError::Malformed {
            name: name.clone(),
            kind: RecordType::SRV,
            reason: format!("no SRV record among {} answers", reply.answers.len()),
        });
    }
    Ok((!targets.is_empty()).then_some(targets))
}

/// Decodes Consul's `<hex-ip>.addr.<dc>.<domain>.` targets (8 or 32 hex digits).
pub fn consul_addr_target(target: &Name) -> Option<IpAddr> {
    let mut labels = target.iter();
    let hex = labels.next()?;
    if !labels.next()?.eq_ignore_ascii_case(b"addr") {
        return None;
    }
    let hex = std::str::from_utf8(hex).ok()?;
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The addresses of `target` by A and AAAA queries; empty if it has none.
async fn resolve_target(client: DnsClient, target: Name, tcp: bool) -> Result<Vec<IpAddr>, LookupError> {
    let (v4, v6) = tokio::join!(
        client.query(&target, RecordType::A, tcp),
        client.query(&target, RecordType::AAAA, tcp)
    );
    let mut addrs = Vec::new();
    for reply in [v4?, v6?] {
        match reply.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                let kind = reply.queries.first().map_or(RecordType::A, Query::query_type);
                return Err(LookupError::Rcode {
                    name: target,
                    kind,
                    code,
                });
            }
        }
        addrs.extend(reply.answers.iter().filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        }));
    }
    Ok(addrs)
}

/// One SRV lookup, with the targets that came without glue looked up
/// concurrently. Any failure fails the whole lookup (keep the last good set);
/// a target with no address at all is left out with a warning.
pub async fn lookup(client: &DnsClient, query: &SrvQuery) -> Result<Answer, LookupError> {
    let name = Name::from_ascii(&query.name).map_err(|e| LookupError::Malformed {
        name: Name::root(),
        kind: RecordType::SRV,
        reason: format!("bad query name {}: {e}", query.name),
    })?;
    let reply = client.query(&name, RecordType::SRV, query.tcp).await?;
    let Some(mut targets) = parse_srv(&reply, &name)? else {
        return Ok(Answer::Empty);
    };

    let missing: HashSet<Name> = targets
        .iter()
        .filter(|t| t.addrs.is_empty())
        .map(|t| t.target.clone())
        .collect();
    if !missing.is_empty() {
        let mut lookups = JoinSet::new();
        let tcp = query.tcp;
        for target in missing {
            let client = client.clone();
            lookups.spawn(async move {
                let addrs = resolve_target(client, target.clone(), tcp).await;
                (target, addrs)
            });
        }
        let mut found: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        while let Some(joined) = lookups.join_next().await {
            let (target, addrs) = joined.map_err(|e| LookupError::Io {
                name: name.clone(),
                kind: RecordType::SRV,
                source: io::Error::other(e),
            })?;
            found.insert(target, addrs?);
        }
        for t in targets.iter_mut().filter(|t| t.addrs.is_empty()) {
            t.addrs = found.get(&t.target).cloned().unwrap_or_default();
            if t.addrs.is_empty() {
                warn!(srv = %name, target = %t.target, "SRV target has no A/AAAA record, skipped");
            }
        }
    }

    let backends: Vec<Backend> = targets
        .iter()
        .flat_map(|t| {
            t.addrs.iter().map(|ip| Backend {
                addr: SocketAddr::new(*ip, t.port),
                priority: t.priority,
                weight: t.weight,
            })
        })
        .collect();
    if backends.is_empty() {
        return Ok(Answer::Empty);
    }
    Ok(Answer::Backends(BackendSet::new(backends)))
}

/// Refreshes `query` every `refresh` until `shutdown`, publishing each changed
/// set on `tx`. Errors keep the last good set; an empty answer replaces a
/// non-empty set only once it has lasted `empty_grace`.
pub async fn watch(
    client: DnsClient,
    query: SrvQuery,
    tx: watch::Sender<Snapshot>,
    state: Arc<QueryState>,
    shutdown: CancellationToken,
) {
    let name = query.name.as_str();
    let mut empty_since: Option<Instant> = None;
    let mut last_error: Option<String> = None;
    let mut ticks = tokio::time::interval(query.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let answer = tokio::select! {
            answer = lookup(&client, &query) => answer,
            _ = shutdown.cancelled() => return,
        };
        state.record(match &answer {
            Ok(answer) => Ok(matches!(answer, Answer::Backends(_))),
            Err(e) => Err(e.to_string()),
        });
        if answer.is_ok() && last_error.take().is_some() {
            info!(srv = name, "lookups succeed again");
        }
        let current = tx.borrow().clone();
        let next = match answer {
            Ok(Answer::Backends(set)) => {
                empty_since = None;
                set
            }
            Ok(Answer::Empty) => {
                let since = *empty_since.get_or_insert_with(Instant::now);
                let waited = since.elapsed();
                match &current {
                    Some(set) if !set.is_empty() && waited < query.empty_grace => {
                        debug!(
                            srv = name,
                            ?waited,
                            "empty answer, keeping the last set during the grace period"
                        );
                        continue;
                    }
                    _ => BackendSet::default(),
                }
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    warn!(srv = name, error = %text, "lookup failed, keeping the last good backends");
                    last_error = Some(text);
                }
                continue;
            }
        };
        let empty = BackendSet::default();
        let previous = current.as_deref().unwrap_or(&empty);
        let diff = previous.diff(&next);
        if current.is_some() && diff.is_empty() {
            continue;
        }
        info!(
            srv = name,
            added = %Diff::list(&diff.added),
            removed = %Diff::list(&diff.removed),
            changed = %Diff::list(&diff.changed),
            total = next.backends().len(),
            "backends changed"
        );
        tx.send_replace(Some(Arc::new(next)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn srv(port: u16, target: &str, priority: u16) -> Record {
        Record::from_rdata(
            name("redis.service.consul."),
            0,
            RData::SRV(SRV::new(priority, 1, port, name(target))),
        )
    }

    fn a(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 0, RData::A(A::from(Ipv4Addr::from(ip))))
    }

    fn reply(code: ResponseCode) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = code;
        m
    }

    fn parse(m: &Message) -> Vec<(String, u16, u16, Vec<IpAddr>)> {
        parse_srv(m, &name("redis.service.consul."))
            .unwrap()
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.target.to_ascii(), t.port, t.priority, t.addrs))
            .collect()
    }

    #[test]
    fn glue_and_addr_targets_and_missing_glue() {
        let mut m = reply(ResponseCode::NoError);
        m.add_answer(srv(7001, "node1.node.dc1.consul.", 1));
        m.add_answer(srv(7002, "7f000002.addr.dc1.consul.", 1));
        m.add_answer(srv(7003, "node3.node.dc1.consul.", 2));
        m.add_additional(a("node1.node.dc1.consul.", [127, 0, 0, 1]));
        m.add_additional(Record::from_rdata(
            name("node1.node.dc1.consul."),
            0,
            RData::AAAA(AAAA::from(Ipv6Addr::LOCALHOST)),
        ));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse(&m),
            [
                (
                    "node1.node.dc1.consul.".into(),
                    7001,
                    1,
                    vec![ip("127.0.0.1"), ip("::1")]
                ),
                ("7f000002.addr.dc1.consul.".into(), 7002, 1, vec![ip("127.0.0.2")]),
                ("node3.node.dc1.consul.".into(), 7003, 2, vec![]),
            ]
        );
    }

    #[test]
    fn same_ip_two_ports_are_two_backends() {
        let mut m = reply(ResponseCode::NoError);
        m.add_answer(srv(7001, "node1.node.dc1.consul.", 1));
        m.add_answer(srv(7002, "node1.node.dc1.consul.", 1));
        m.add_additional(a("node1.node.dc1.consul.", [10, 0, 0, 1]));
        let ports: Vec<u16> = parse(&m).iter().map(|t| t.1).collect();
        assert_eq!(ports, [7001, 7002]);
    }

    #[test]
    fn junk_records_are_skipped() {
        let mut m = reply(ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            name("redis.service.consul."),
            0,
            RData::CNAME(CNAME(name("other.consul."))),
        ));
        m.add_answer(Record::from_rdata(
            name("redis.service.consul."),
            0,
            RData::TXT(TXT::new(vec!["consul-network-segment=".into()])),
        ));
        m.add_answer(srv(7001, "0a000001.addr.dc1.consul.", 1));
        m.add_answer(srv(0, "0a000002.addr.dc1.consul.", 1));
        m.add_answer(srv(7003, ".", 1));
        assert_eq!(parse(&m).len(), 1);
    }

    #[test]
    fn answer_without_srv_is_an_error_not_empty() {
        let mut m = reply(ResponseCode::NoError);
        m.add_answer(a("redis.service.consul.", [10, 0, 0, 1]));
        let err = parse_srv(&m, &name("redis.service.consul.")).unwrap_err();
        assert!(err.to_string().contains("no SRV record among 1 answers"), "{err}");
    }

    #[test]
    fn response_codes() {
        let n = name("redis.service.consul.");
        assert_eq!(parse_srv(&reply(ResponseCode::NXDomain), &n).unwrap(), None);
        assert_eq!(parse_srv(&reply(ResponseCode::NoError), &n).unwrap(), None);
        for code in [
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::FormErr,
        ] {
            let err = parse_srv(&reply(code), &n).unwrap_err();
            assert!(matches!(err, LookupError::Rcode { .. }), "{err}");
        }
    }

    #[test]
    fn addr_targets_decode_v4_and_v6() {
        assert_eq!(
            consul_addr_target(&name("7f000001.addr.dc1.consul.")),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            consul_addr_target(&name("00000000000000000000000000000001.addr.dc1.consul.")),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(consul_addr_target(&name("7f00001.addr.dc1.consul.")), None);
        assert_eq!(consul_addr_target(&name("zzzzzzzz.addr.dc1.consul.")), None);
        assert_eq!(consul_addr_target(&name("7f000001.node.dc1.consul.")), None);
    }
}
