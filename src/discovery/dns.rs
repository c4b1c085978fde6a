//! DNS SRV discovery: an SRV answer → `BackendSet`, and the refresh task
//! that keeps the last good set. The queries themselves go through
//! `DnsClient` (hickory-resolver); what is sluice's own is here:
//!
//! - an answer's backends are address:port pairs, keyed by both (Consul puts
//!   one IP on several ports), with SRV priority and weight;
//! - addresses come from the answer itself where it can: A/AAAA glue in the
//!   additional section, or Consul's `<hex-ip>.addr.<dc>.consul.` targets;
//!   only targets with neither are looked up, boundedly (16 at a time);
//! - the policy: a failed lookup keeps the last good set, a target that
//!   cannot be resolved keeps its last addresses or is left out, an empty
//!   answer counts only once it has lasted `empty_grace`, addresses that
//!   cannot be backends are dropped, and a change is logged as a diff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use super::client::{DnsClient, LookupError};
use super::{Backend, BackendSet, Publisher};
use crate::config::SrvQuery;

/// SRV targets without glue looked up at once, per query.
const TARGET_LOOKUPS_AT_ONCE: usize = 16;

/// What a successful SRV lookup found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Backends(BackendSet),
    /// NXDOMAIN, or no SRV records: real, but applied only after a grace period.
    Empty,
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
    // Glue by a cheap key of its owner: comparing or hashing hickory names
    // costs hundreds of instructions each, and this runs on every refresh.
    let mut glue: Vec<(u64, &Name, IpAddr)> = reply
        .answers
        .iter()
        .chain(&reply.additionals)
        .filter_map(|record| Some((name_key(&record.name), &record.name, record.data.ip_addr()?)))
        .collect();
    glue.sort_unstable_by_key(|(key, _, _)| *key);
    let glue_of = |target: &Name| {
        let key = name_key(target);
        let first = glue.partition_point(|(k, _, _)| *k < key);
        let same_key = glue[first..].iter().take_while(|(k, _, _)| *k == key);
        same_key
            .filter(|(_, owner, _)| *owner == target)
            .map(|(_, _, ip)| *ip)
            .collect::<Vec<_>>()
    };
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
            None => glue_of(&srv.target),
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

/// FNV-1a over a name's labels, case-folded: equal names, equal keys.
fn name_key(name: &Name) -> u64 {
    let mut key: u64 = 0xcbf2_9ce4_8422_2325;
    for label in name.iter() {
        for byte in label.iter().map(u8::to_ascii_lowercase).chain([b'.']) {
            key = (key ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    key
}

/// Decodes Consul's `<hex-ip>.addr.<dc>.<domain>.` targets (8 or 32 hex digits).
pub(crate) fn consul_addr_target(target: &Name) -> Option<IpAddr> {
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
async fn resolve_target(
    client: DnsClient,
    target: Name,
    tcp: bool,
    deadline: Instant,
) -> Result<Vec<IpAddr>, LookupError> {
    let (v4, v6) = tokio::join!(
        client.query(&target, RecordType::A, tcp, deadline),
        client.query(&target, RecordType::AAAA, tcp, deadline)
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

/// Looks up `names` (distinct targets, most wanted first), at most
/// [`TARGET_LOOKUPS_AT_ONCE`] at a time and all before `deadline`: an SRV
/// answer with thousands of glueless targets costs a bounded number of
/// sockets and time. Targets not reached in time have no result.
async fn resolve_targets(
    client: &DnsClient,
    names: Vec<Name>,
    tcp: bool,
    deadline: Instant,
) -> HashMap<Name, Result<Vec<IpAddr>, LookupError>> {
    let mut pending = names.into_iter();
    let mut running = JoinSet::new();
    let mut results = HashMap::new();
    loop {
        while running.len() < TARGET_LOOKUPS_AT_ONCE {
            let Some(name) = pending.next() else { break };
            let client = client.clone();
            running.spawn(async move {
                let addrs = resolve_target(client, name.clone(), tcp, deadline).await;
                (name, addrs)
            });
        }
        match tokio::time::timeout_at(deadline, running.join_next()).await {
            Ok(Some(Ok((name, addrs)))) => {
                results.insert(name, addrs);
            }
            // A lookup task that died: its target is as if not reached.
            Ok(Some(Err(_))) => {}
            // All done, or out of time (the rest are aborted with the set).
            Ok(None) | Err(_) => return results,
        }
    }
}

/// Addresses of SRV targets that came without glue, kept from one refresh
/// to the next: a target whose lookup fails (a timeout, SERVFAIL, or no time
/// left) keeps the addresses it had, as the whole set does when the SRV
/// lookup itself fails.
#[derive(Debug, Default)]
pub(crate) struct KnownTargets(HashMap<Name, (Vec<IpAddr>, Instant)>);

impl KnownTargets {
    /// The order to look `names` up in: never resolved first, then the
    /// longest ago, so that a slow server still gets to every target.
    fn order(&self, mut names: Vec<Name>) -> Vec<Name> {
        names.sort_by_key(|n| self.0.get(n).map(|(_, at)| *at));
        names
    }
}

/// What a lookup left out of the set, and why (logged when it changes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LeftOut {
    /// SRV targets with no address to use.
    pub targets: BTreeMap<Name, String>,
    /// Addresses that cannot be a backend (0.0.0.0, broadcast, multicast).
    pub addrs: BTreeMap<SocketAddr, &'static str>,
}

/// One SRV lookup, with the targets that came without glue looked up
/// (bounded, see [`resolve_targets`]), all within `budget`. A failed SRV
/// lookup fails the whole lookup (the last good set stays); a target that
/// cannot be resolved is left out, or keeps its last known addresses if it
/// had any, and the rest is used.
pub(crate) async fn lookup(
    client: &DnsClient,
    query: &SrvQuery,
    known: &mut KnownTargets,
    budget: Duration,
) -> Result<(Answer, LeftOut), LookupError> {
    let name = Name::from_ascii(&query.name).map_err(|e| LookupError::Malformed {
        name: Name::root(),
        kind: RecordType::SRV,
        reason: format!("bad query name {}: {e}", query.name),
    })?;
    let deadline = Instant::now() + budget;
    let reply = client.query(&name, RecordType::SRV, query.tcp, deadline).await?;
    let mut left_out = LeftOut::default();
    let Some(mut targets) = parse_srv(&reply, &name)? else {
        return Ok((Answer::Empty, left_out));
    };

    let missing: HashSet<&Name> = targets
        .iter()
        .filter(|t| t.addrs.is_empty())
        .map(|t| &t.target)
        .collect();
    let missing = known.order(missing.into_iter().cloned().collect());
    let mut found = resolve_targets(client, missing, query.tcp, deadline).await;
    for t in targets.iter_mut().filter(|t| t.addrs.is_empty()) {
        let result = found.remove(&t.target);
        let reason = match result {
            Some(Ok(addrs)) if !addrs.is_empty() => {
                known.0.insert(t.target.clone(), (addrs.clone(), Instant::now()));
                t.addrs = addrs;
                continue;
            }
            Some(Ok(_)) => {
                known.0.remove(&t.target);
                "no A/AAAA record".to_string()
            }
            Some(Err(e)) => e.to_string(),
            None if found.is_empty() && t.addrs.is_empty() => "not looked up in time".to_string(),
            None => continue, // the same target under another port, done above
        };
        match known.0.get(&t.target) {
            Some((addrs, _)) => t.addrs = addrs.clone(),
            None => {
                left_out.targets.insert(t.target.clone(), reason);
            }
        }
    }
    known
        .0
        .retain(|name, _| targets.iter().any(|t| &t.target == name));

    let mut backends = Vec::new();
    for t in &targets {
        for ip in &t.addrs {
            let addr = SocketAddr::new(*ip, t.port);
            match crate::net::unusable_peer(addr) {
                Some(reason) => {
                    left_out.addrs.insert(addr, reason);
                }
                None => backends.push(Backend {
                    addr,
                    priority: t.priority,
                    weight: t.weight,
                }),
            }
        }
    }
    if backends.is_empty() {
        return Ok((Answer::Empty, left_out));
    }
    Ok((Answer::Backends(BackendSet::new(backends)), left_out))
}

/// `a, b, c` for a log line, at most ten of them.
fn listed<T: std::fmt::Display>(items: impl ExactSizeIterator<Item = T>) -> String {
    const MAX: usize = 10;
    let total = items.len();
    let mut text = items
        .take(MAX)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if total > MAX {
        text.push_str(&format!(" and {} more", total - MAX));
    }
    text
}

/// Logs what a lookup left out when that changes, not on every refresh.
fn report_left_out(srv: &str, before: &LeftOut, now: &LeftOut) {
    if !before.targets.keys().eq(now.targets.keys()) {
        if now.targets.is_empty() {
            info!(query = srv, "every SRV target has an address again");
        } else {
            let skipped = listed(now.targets.iter().map(|(name, why)| format!("{name} ({why})")));
            warn!(query = srv, %skipped, "SRV targets without an address are left out");
        }
    }
    if !before.addrs.keys().eq(now.addrs.keys()) && !now.addrs.is_empty() {
        let dropped = listed(now.addrs.iter().map(|(addr, why)| format!("{addr} ({why})")));
        warn!(query = srv, %dropped, "addresses that cannot be a backend are left out");
    }
}

/// Refreshes `query` every `refresh` until `shutdown`, publishing each
/// answer through `publisher` (which keeps the last good set, and applies
/// empty answers only once they have lasted `empty_grace`).
pub(crate) async fn watch(
    client: DnsClient,
    query: SrvQuery,
    mut publisher: Publisher,
    shutdown: CancellationToken,
) {
    let name = query.name.as_str();
    let mut known = KnownTargets::default();
    let mut left_out = LeftOut::default();
    // A refresh never takes longer than its interval, or one DNS timeout if
    // that is longer: a slow server delays the next one by that much at most.
    let budget = query.refresh.max(client.timeout());
    let mut ticks = tokio::time::interval(query.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let answer = tokio::select! {
            answer = lookup(&client, &query, &mut known, budget) => answer,
            _ = shutdown.cancelled() => return,
        };
        match answer {
            Ok((answer, now_left_out)) => {
                report_left_out(name, &left_out, &now_left_out);
                left_out = now_left_out;
                match answer {
                    Answer::Backends(set) => publisher.found(set),
                    Answer::Empty => publisher.empty(),
                }
            }
            Err(e) => publisher.failed(&e),
        }
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
