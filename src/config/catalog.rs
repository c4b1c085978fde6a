//! Listeners from the Consul catalog (`[catalog]`): each service whose tags
//! claim a port (`sluice.listen=PORT`, `PORT/udp`, `ADDR:PORT[/udp]`) gets a
//! listener per claim, fed by its healthy instances, with options from its
//! other tags (`sluice.<key>=VALUE`). This module turns the catalog into
//! `[listeners.NAME]` tables and refuses what must not be served, each with
//! a reason; the tables are then validated as any listener is.
//!
//! What a claim can never take: a port outside `ports`, an address that is
//! not this host's. Claims are ranked (those serving now first, in the order
//! they claimed, then by name), so that validation gives a port two claim
//! to the first valid one; a file or API listener always wins over both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Serialize;

use super::Protocol;
use crate::net::is_local;

/// The keys a service's tags may set, besides `listen`.
pub const TAG_KEYS: &[&str] = &[
    "balance",
    "connect_timeout",
    "idle_timeout",
    "max_connections",
    "proxy_protocol",
    "accept_proxy",
    "data_path",
    "udp_idle_timeout",
    "udp_replies",
    "drain_timeout",
];
/// Keys only one protocol takes: a default of the other protocol's is left
/// out of a listener instead of refusing it.
const TCP_ONLY: &[&str] = &[
    "idle_timeout",
    "max_connections",
    "access_log",
    "splice",
    "data_path",
    "proxy_protocol",
    "accept_proxy",
];
const UDP_ONLY: &[&str] = &["udp_idle_timeout", "max_flows", "udp_replies"];

/// `[catalog]` as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogSettings {
    /// Tags read: `<prefix>.listen` and `<prefix>.<key>`.
    pub tag_prefix: String,
    /// The address a claim of a bare port binds.
    pub bind: IpAddr,
    /// The ports a claim may take.
    pub ports: Vec<RangeInclusive<u16>>,
    /// Listener keys every catalog listener starts from.
    pub defaults: toml::Table,
    /// Consul's datacenter (`datacenter`), if not the agent's.
    pub datacenter: Option<String>,
    /// How long a service that stops claiming a port keeps it (`empty_grace`).
    pub empty_grace: Duration,
}

/// Each service in the catalog with its tags.
pub type Services = BTreeMap<String, Vec<String>>;

impl CatalogSettings {
    /// Whether `tags` claim a port.
    pub fn claims_a_port(&self, tags: &[String]) -> bool {
        let listen = format!("{}.listen=", self.tag_prefix);
        tags.iter().any(|tag| tag.starts_with(&listen))
    }
}

/// Why a claim is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// A tag that cannot be read, a key no tag may set, or a value the
    /// listener's validation refused.
    Invalid,
    /// A port outside `ports`.
    Port,
    /// An address that is not this host's.
    Address,
    /// A port (or name) another listener has.
    Conflict,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 4] = [
        RefusalReason::Invalid,
        RefusalReason::Port,
        RefusalReason::Address,
        RefusalReason::Conflict,
    ];

    /// As the metric's `reason` label says it.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::Invalid => "invalid",
            RefusalReason::Port => "port",
            RefusalReason::Address => "address",
            RefusalReason::Conflict => "conflict",
        }
    }
}

/// A claim the catalog made that sluice does not serve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Refusal {
    pub service: String,
    /// The tag that claimed the port (or the one at fault).
    pub tag: String,
    pub reason: RefusalReason,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service '{}', tag '{}': {}",
            self.service, self.tag, self.message
        )
    }
}

/// What the catalog asks for: a table per listener, where each came from,
/// and what was refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub tables: BTreeMap<String, toml::Table>,
    /// Each listener's service and `listen` tag.
    pub claimed_by: BTreeMap<String, (String, String)>,
    /// The listeners' names, first claim first.
    pub order: Vec<String>,
    pub refused: Vec<Refusal>,
}

/// One `listen` tag read.
struct Claim {
    name: String,
    service: String,
    tag: String,
    bind: SocketAddr,
    protocol: Protocol,
    options: toml::Table,
}

/// The listeners `services` ask for, ranked: those in `held` (serving now,
/// in the order they claimed) first, then by name.
pub fn claims(settings: &CatalogSettings, services: &Services, held: &[String]) -> Claims {
    let mut out = Claims::default();
    let mut wanted = Vec::new();
    for (service, tags) in services {
        wanted.extend(service_claims(settings, service, tags, &mut out.refused));
    }
    let rank = |claim: &Claim| held.iter().position(|h| *h == claim.name).unwrap_or(usize::MAX);
    wanted.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name)));
    for claim in wanted {
        let mut table = settings.defaults.clone();
        let other_protocols = match claim.protocol {
            Protocol::Tcp => UDP_ONLY,
            Protocol::Udp => TCP_ONLY,
        };
        table.retain(|key, _| !other_protocols.contains(&key));
        table.extend(claim.options.clone());
        table.insert("bind".into(), claim.bind.to_string().into());
        table.insert("protocol".into(), claim.protocol.to_string().into());
        table.insert("service".into(), claim.service.clone().into());
        table.insert("discovery".into(), "consul".into());
        out.tables.insert(claim.name.clone(), table);
        out.order.push(claim.name.clone());
        out.claimed_by.insert(claim.name, (claim.service, claim.tag));
    }
    out.refused.sort();
    out
}

/// The claims of one service's tags; what cannot be served goes to `refused`.
fn service_claims(
    settings: &CatalogSettings,
    service: &str,
    tags: &[String],
    refused: &mut Vec<Refusal>,
) -> Vec<Claim> {
    let prefix = format!("{}.", settings.tag_prefix);
    let mut listens = Vec::new();
    let mut options = toml::Table::new();
    let mut bad_options = Vec::new();
    for tag in tags {
        let Some(setting) = tag.strip_prefix(&prefix) else {
            continue;
        };
        let refuse = |message: String| Refusal {
            service: service.into(),
            tag: tag.clone(),
            reason: RefusalReason::Invalid,
            message,
        };
        let Some((key, value)) = setting.split_once('=') else {
            refused.push(refuse(format!("expected {prefix}KEY=VALUE")));
            continue;
        };
        match key {
            "listen" => listens.push((tag.clone(), value.to_string())),
            key if TAG_KEYS.contains(&key) => {
                options.insert(key.into(), tag_value(value));
            }
            _ => bad_options.push(refuse(format!(
                "'{key}' is not a key a tag may set (listen, {})",
                TAG_KEYS.join(", ")
            ))),
        }
    }
    if !bad_options.is_empty() {
        // Its listeners would not be what the service asked for: none.
        refused.extend(bad_options);
        return Vec::new();
    }
    let several = listens.len() > 1;
    let mut names = BTreeSet::new();
    let mut claims = Vec::new();
    for (tag, value) in listens {
        let refuse = |reason, message| Refusal {
            service: service.into(),
            tag: tag.clone(),
            reason,
            message,
        };
        let (bind, protocol) = match listen_value(&value, settings.bind) {
            Ok(found) => found,
            Err(message) => {
                refused.push(refuse(RefusalReason::Invalid, message));
                continue;
            }
        };
        if !settings.ports.iter().any(|range| range.contains(&bind.port())) {
            let message = format!(
                "port {} is outside `ports` ({})",
                bind.port(),
                ports_text(&settings.ports)
            );
            refused.push(refuse(RefusalReason::Port, message));
            continue;
        }
        if !is_local(bind.ip()) {
            let message = format!("{} is not an address of this host", bind.ip());
            refused.push(refuse(RefusalReason::Address, message));
            continue;
        }
        let mut name = match several {
            true => format!("{service}-{}", bind.port()),
            false => service.to_string(),
        };
        if !names.insert(name.clone()) {
            name.push_str("-udp");
            names.insert(name.clone());
        }
        claims.push(Claim {
            name,
            service: service.into(),
            tag,
            bind,
            protocol,
            options: options.clone(),
        });
    }
    claims
}

/// `PORT`, `PORT/udp`, `ADDR:PORT` or `ADDR:PORT/udp` (`[V6]:PORT` too).
fn listen_value(value: &str, bind: IpAddr) -> Result<(SocketAddr, Protocol), String> {
    let (addr, protocol) = match value.rsplit_once('/') {
        Some((addr, "udp")) => (addr, Protocol::Udp),
        Some((addr, "tcp")) => (addr, Protocol::Tcp),
        Some((_, other)) => return Err(format!("'{other}' is not a protocol: tcp or udp")),
        None => (value, Protocol::Tcp),
    };
    let bind = match addr.parse::<u16>() {
        Ok(port) => SocketAddr::new(bind, port),
        Err(_) => addr
            .parse::<SocketAddr>()
            .map_err(|_| format!("'{value}' is not PORT, PORT/udp or ADDR:PORT[/udp]"))?,
    };
    if bind.port() == 0 {
        return Err("port 0 is not a port a listener can be found on".into());
    }
    Ok((bind, protocol))
}

/// A tag's value as the TOML value the same key would have in the file.
fn tag_value(text: &str) -> toml::Value {
    if let Ok(number) = text.parse::<i64>() {
        return number.into();
    }
    match text {
        "true" => true.into(),
        "false" => false.into(),
        _ => text.into(),
    }
}

/// `ports` as written: `A-B` ranges, single ports alone.
pub fn ports_text(ports: &[RangeInclusive<u16>]) -> String {
    let each = ports.iter().map(|range| match range.start() == range.end() {
        true => range.start().to_string(),
        false => format!("{}-{}", range.start(), range.end()),
    });
    each.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CatalogSettings {
        CatalogSettings {
            tag_prefix: "sluice".into(),
            bind: "127.0.0.1".parse().unwrap(),
            ports: vec![1024..=65535],
            defaults: toml::toml! { balance = "least-conn"
            max_connections = 7 },
            datacenter: None,
            empty_grace: Duration::from_secs(3),
        }
    }

    fn services(list: &[(&str, &[&str])]) -> Services {
        let each = list.iter().map(|(name, tags)| {
            let tags = tags.iter().map(|t| t.to_string()).collect();
            (name.to_string(), tags)
        });
        each.collect()
    }

    #[test]
    fn a_listen_tag_is_a_listener_with_the_defaults_and_the_tags_options() {
        let catalog = services(&[("redis", &["sluice.listen=6379", "sluice.balance=p2c", "other"])]);
        let claims = claims(&settings(), &catalog, &[]);
        assert_eq!(claims.refused, []);
        let table = &claims.tables["redis"];
        assert_eq!(table["bind"].as_str(), Some("127.0.0.1:6379"));
        assert_eq!(table["balance"].as_str(), Some("p2c"));
        assert_eq!(table["max_connections"].as_integer(), Some(7));
        assert_eq!(table["service"].as_str(), Some("redis"));
        assert_eq!(table["discovery"].as_str(), Some("consul"));
    }

    #[test]
    fn several_claims_are_named_by_port_and_udp_leaves_tcp_defaults_out() {
        let catalog = services(&[("statsd", &["sluice.listen=8125/udp", "sluice.listen=8126"])]);
        let claims = claims(&settings(), &catalog, &[]);
        let names: Vec<&String> = claims.tables.keys().collect();
        assert_eq!(names, ["statsd-8125", "statsd-8126"]);
        assert_eq!(claims.tables["statsd-8125"]["protocol"].as_str(), Some("udp"));
        assert!(!claims.tables["statsd-8125"].contains_key("max_connections"));
    }

    #[test]
    fn refusals_say_why() {
        let catalog = services(&[
            ("a", &["sluice.listen=80"]),
            ("b", &["sluice.listen=198.51.100.1:5000"]),
            ("c", &["sluice.listen=web"]),
            ("d", &["sluice.listen=5000", "sluice.backends=x"]),
            ("e", &["sluice.listen=5001"]),
            ("f", &["sluice.listen=5001"]),
        ]);
        let claims = claims(&settings(), &catalog, &["f".to_string()]);
        let reasons: Vec<(&str, RefusalReason)> = claims
            .refused
            .iter()
            .map(|r| (r.service.as_str(), r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("a", RefusalReason::Port),
                ("b", RefusalReason::Address),
                ("c", RefusalReason::Invalid),
                ("d", RefusalReason::Invalid),
            ]
        );
        // The one serving comes first, though "e" sorts first.
        assert_eq!(claims.order, ["f", "e"]);
    }
}
