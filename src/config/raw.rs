//! The configuration as serde reads it: every value with its span, so that a
//! problem can name its line. `deny_unknown_fields` turns a typo into an
//! error that names the key. Only `validate` ever looks at these.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Balance, DataPath, Protocol, ProxyVersion};

pub(super) type Dur = Spanned<humantime_serde::Serde<Duration>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub dns: Option<Spanned<OneOrMany>>,
    pub dns_timeout: Option<Dur>,
    pub dns_attempts: Option<Spanned<i64>>,
    pub domain: Option<Spanned<String>>,
    pub refresh: Option<Dur>,
    pub empty_grace: Option<Dur>,
    pub tcp: Option<Spanned<bool>>,
    pub shutdown_grace: Option<Dur>,
    pub metrics: Option<Spanned<String>>,
    pub consul: Option<Spanned<String>>,
    pub consul_token: Option<Spanned<String>>,
    pub datacenter: Option<Spanned<String>>,
    pub api_token_file: Option<Spanned<String>>,
    pub runtime_file: Option<Spanned<String>>,
    pub catalog: Option<Spanned<RawCatalog>>,
    pub allow: Option<Spanned<Vec<String>>>,
    pub deny: Option<Spanned<Vec<String>>>,
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub listeners: BTreeMap<String, Spanned<RawListener>>,
}

/// `[catalog]`: its own keys, and listener keys as defaults.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCatalog {
    pub tag_prefix: Option<String>,
    pub bind: Option<String>,
    pub ports: Option<OneOrMany>,
    #[serde(flatten)]
    pub defaults: toml::Table,
}

/// The listeners added through the API (the runtime file): nothing else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApiListeners {
    #[serde(default)]
    pub listeners: BTreeMap<String, Spanned<RawListener>>,
}

/// Where a listener's `service` is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Discovery {
    Dns,
    Consul,
}

/// `data_path` as written: a data path, or one that was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawDataPath {
    Auto,
    Splice,
    Copy,
    /// Removed: kept only to say why.
    Sockmap,
}

impl RawDataPath {
    /// The data path, or why there is none any more.
    pub fn known(self) -> Result<DataPath, &'static str> {
        match self {
            RawDataPath::Auto => Ok(DataPath::Auto),
            RawDataPath::Splice => Ok(DataPath::Splice),
            RawDataPath::Copy => Ok(DataPath::Copy),
            RawDataPath::Sockmap => Err(
                "\"sockmap\" was removed: the kernel redirect was slower than \"auto\" everywhere it was measured \
                 (0.45x the PING rate, 0.54x the iperf3 rate, 2.35x the system calls; bench/RESULTS.md); \
                 use \"auto\" (the default)",
            ),
        }
    }
}

/// A string, or a list of them (`dns = "a"` or `dns = ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as the command line gives them: comma-separated.
    pub fn joined(&self) -> String {
        match self {
            OneOrMany::One(one) => one.clone(),
            OneOrMany::Many(many) => many.join(","),
        }
    }
}

/// One `[listeners.NAME]` table, or a shorthand listener turned into one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub bind: Option<Spanned<String>>,
    pub protocol: Option<Spanned<Protocol>>,
    pub discovery: Option<Spanned<Discovery>>,
    pub service: Option<Spanned<String>>,
    pub tag: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    pub backends: Option<Spanned<Vec<Spanned<String>>>>,
    pub balance: Option<Spanned<Balance>>,
    pub connect_timeout: Option<Dur>,
    pub tcp: Option<Spanned<bool>>,
    pub empty_grace: Option<Dur>,
    pub health: Option<Spanned<RawHealth>>,
    pub eject_after: Option<Spanned<i64>>,
    pub drain_timeout: Option<Dur>,
    pub reuse_port: Option<Spanned<bool>>,
    pub allow: Option<Spanned<Vec<String>>>,
    pub deny: Option<Spanned<Vec<String>>>,
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
    // TCP only.
    pub idle_timeout: Option<Dur>,
    pub max_connections: Option<Spanned<i64>>,
    pub access_log: Option<Spanned<bool>>,
    pub splice: Option<Spanned<bool>>,
    pub data_path: Option<Spanned<RawDataPath>>,
    pub proxy_protocol: Option<Spanned<ProxyVersion>>,
    pub accept_proxy: Option<Spanned<bool>>,
    // UDP only.
    pub udp_idle_timeout: Option<Dur>,
    pub max_flows: Option<Spanned<i64>>,
    pub udp_replies: Option<Spanned<bool>>,
}

/// The keys of `keys` that are set, with where.
fn set(keys: &[(&'static str, Option<Range<usize>>)]) -> Vec<(&'static str, Range<usize>)> {
    keys.iter()
        .filter_map(|(key, span)| Some((*key, span.clone()?)))
        .collect()
}

impl RawListener {
    /// The keys set here that only the other protocol than `protocol` takes.
    pub fn misplaced(&self, protocol: Protocol) -> Vec<(&'static str, Range<usize>)> {
        match protocol {
            Protocol::Udp => set(&[
                ("idle_timeout", self.idle_timeout.as_ref().map(Spanned::span)),
                (
                    "max_connections",
                    self.max_connections.as_ref().map(Spanned::span),
                ),
                ("access_log", self.access_log.as_ref().map(Spanned::span)),
                ("splice", self.splice.as_ref().map(Spanned::span)),
                ("data_path", self.data_path.as_ref().map(Spanned::span)),
                ("proxy_protocol", self.proxy_protocol.as_ref().map(Spanned::span)),
                ("accept_proxy", self.accept_proxy.as_ref().map(Spanned::span)),
            ]),
            Protocol::Tcp => set(&[
                (
                    "udp_idle_timeout",
                    self.udp_idle_timeout.as_ref().map(Spanned::span),
                ),
                ("max_flows", self.max_flows.as_ref().map(Spanned::span)),
                ("udp_replies", self.udp_replies.as_ref().map(Spanned::span)),
            ]),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub proxy_protocol: Option<Spanned<bool>>,
}
