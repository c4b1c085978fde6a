//! Configuration: the TOML file and the CLI shorthand listeners, turned into a
//! validated model ([`Config`]) that the rest of sluice runs from.
//!
//! - this file: the model, and [`Config::load`] / [`Config::parse`] /
//!   [`Config::compose`]: a configuration is made from [`Sources`] (the main
//!   file, the command line, the listeners added through the API), and made
//!   again with one of them replaced on SIGHUP or an API request;
//! - `sources`: all the I/O, done first: the files read, the API's listeners
//!   written back, and what values point at (token file, DNS server names);
//! - `raw`: the file as serde reads it, every value with its span;
//! - `validate`: raw → model, pure: bounds, defaults, problems with file and
//!   line; by concern in `globals`, `listener`, `source` and `health`;
//! - `shorthand`: `PORT:SERVICE` arguments, turned into raw listener tables;
//! - `names`: DNS names and addresses, by what they are for;
//! - `error`: [`Problem`], [`ConfigError`] and how values are quoted back.
//!
//! A listener's settings are typed by protocol ([`Mode`]): a key that only
//! the other protocol takes is an error naming the key, line and protocol.
//! Nothing outside this module ever sees a raw value.

mod catalog;
mod error;
mod names;
mod raw;
mod shorthand;
mod sources;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::net::Protocol;

pub use catalog::{CatalogSettings, Claims, Refusal, RefusalReason, Services, claims as catalog_claims};
pub use error::{ConfigError, Problem, ProblemKind};
use sources::Fetched;
pub use sources::{Sources, Text, save_runtime_file};
pub use validate::MAX_CHECK_BYTES;
use validate::{Place, Validator};

/// Port used for `dns` / `--dns` when the address has none.
pub const DNS_PORT: u16 = 53;
/// The longest any duration may be: far beyond any useful timeout, and small
/// enough that adding it to a clock or multiplying it never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// A configuration file larger than this is refused unread (`-c /dev/zero`).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// How SRV lookups reach DNS.
    pub dns: DnsSettings,
    /// How `discovery = "consul"` listeners reach Consul.
    pub consul: ConsulSettings,
    /// HTTP address for metrics and status, if any.
    pub metrics: Option<SocketAddr>,
    /// How long connections may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    pub listeners: Vec<Listener>,
    /// The bearer token the API's changes need; without, it is read-only.
    pub api_token: Option<Secret>,
    /// Where the API's listeners are kept across restarts, if anywhere.
    pub runtime_file: Option<PathBuf>,
    /// What this configuration was made from.
    pub sources: Sources,
    /// Listeners from the Consul catalog, if on.
    pub catalog: Option<CatalogSettings>,
    /// The catalog's claims that are not served, and why.
    pub catalog_refused: Vec<Refusal>,
}

/// Where a listener was defined. Only the API's can be changed through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The configuration file or the command line.
    File,
    Api,
    /// The Consul catalog's tags (`[catalog]`).
    Catalog,
}

/// The DNS servers SRV lookups ask, and how patiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// In order of preference, host names resolved; empty: the nameservers
    /// of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// How long one query waits for one server.
    pub timeout: Duration,
    /// Tries of one query, each on the next server, before it fails.
    pub attempts: u32,
}

/// One listening port and where its connections (or flows) go.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub backends: BackendSource,
    pub balance: Balance,
    /// Per backend tried (TCP); also how long the first traffic waits for
    /// the first discovery answer.
    pub connect_timeout: Duration,
    /// Active health checks, if configured.
    pub health: Option<HealthCheck>,
    /// Consecutive connect failures (UDP: refusals) that eject a backend
    /// for a while (0: never).
    pub eject_after: u32,
    /// How long connections or flows to a removed backend (or of a removed
    /// listener) may go on; `None`: until they end or go idle.
    pub drain_timeout: Option<Duration>,
    /// Bind with SO_REUSEPORT, so a new sluice can take over the port.
    pub reuse_port: bool,
    pub mode: Mode,
    pub origin: Origin,
    /// Who may connect (`allow`, `deny`) and whose PROXY header is believed.
    pub access: crate::access::Access,
    /// The `[listeners.NAME]` table as written (file, API request or
    /// command-line shorthand), as the API shows it.
    pub written: toml::Table,
}

impl Listener {
    pub fn protocol(&self) -> Protocol {
        match self.mode {
            Mode::Tcp(_) => Protocol::Tcp,
            Mode::Udp(_) => Protocol::Udp,
        }
    }
}

/// What a listener does with what it receives, by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcp(TcpSettings),
    Udp(UdpSettings),
}

/// How a TCP listener treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSettings {
    /// Close connections silent in both directions this long.
    pub idle_timeout: Duration,
    /// Open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Log one line per closed connection.
    pub access_log: bool,
    /// How established connections' bytes move.
    pub data_path: DataPath,
    /// Send backends a PROXY protocol header with the client's addresses.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Read a PROXY protocol header (v1 or v2) from each client first.
    pub accept_proxy: bool,
}

/// How a TCP listener moves the bytes of established connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataPath {
    /// Copy through user space, and splice(2) a direction once one read
    /// fills the buffer: small exchanges take one read and one write, bulk
    /// transfers never enter user space. The default.
    Auto,
    /// splice(2) through pipes (Linux), whatever the size.
    Splice,
    /// Copy through user space.
    Copy,
}

/// A version of the PROXY protocol (HAProxy's): v1 is a text line, v2 binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// How a UDP listener tracks flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// A flow with no datagram either way for this long is forgotten.
    pub idle_timeout: Duration,
    /// Flows kept at most; the least recently used goes first.
    pub max_flows: usize,
    /// `false`: fire-and-forget (statsd): no flows, datagrams spread per packet.
    pub replies: bool,
}

/// `[listeners.NAME.health]`: an active check of every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// TCP: connect (then send/expect); UDP: send a datagram (and expect).
    pub protocol: Protocol,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Bytes to send (e.g. `"PING\r\n"`); required for UDP.
    pub send: Option<String>,
    /// Bytes the reply must contain (e.g. `"+PONG"`); without, TCP checks
    /// only connect and UDP takes any reply.
    pub expect: Option<String>,
    /// Check this port of the backend's address instead of its own.
    pub port: Option<u16>,
    /// TCP: begin with a PROXY protocol header of this version (a LOCAL
    /// command: the check is the proxy's own connection).
    pub proxy_protocol: Option<ProxyVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
    P2c,
    Maglev,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Random => "random",
            Balance::P2c => "p2c",
            Balance::Maglev => "maglev",
        })
    }
}

/// Where a listener's backends come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendSource {
    Dns(SrvQuery),
    Consul(ConsulQuery),
    Static(Vec<SocketAddr>),
}

/// One Consul health watch (`discovery = "consul"`). Listeners with equal
/// queries share one watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsulQuery {
    pub service: String,
    pub tag: Option<String>,
    pub datacenter: Option<String>,
    /// How long an empty list must persist before it empties the set.
    pub empty_grace: Duration,
}

impl ConsulQuery {
    /// The name a watch goes by in logs, metrics and /status.
    pub fn name(&self) -> String {
        let tag = self.tag.as_ref().map(|t| format!("{t}.")).unwrap_or_default();
        let dc = self
            .datacenter
            .as_ref()
            .map(|dc| format!("@{dc}"))
            .unwrap_or_default();
        format!("consul:{tag}{}{dc}", self.service)
    }
}

impl BackendSource {
    /// What the listener's backends are found by, as /status names it.
    pub fn name(&self) -> String {
        match self {
            BackendSource::Dns(q) => q.name.clone(),
            BackendSource::Consul(q) => q.name(),
            BackendSource::Static(_) => "static".into(),
        }
    }
}

/// How discovery reaches Consul's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSettings {
    pub addr: ConsulAddr,
    /// Sent as `X-Consul-Token`; never logged.
    pub token: Option<Secret>,
}

/// Consul's HTTP address: `http://host:port`, with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulAddr {
    pub host: String,
    pub port: u16,
    /// Before every path, e.g. `/consul` behind a reverse proxy; or "".
    pub prefix: String,
}

impl fmt::Display for ConsulAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        write!(f, "http://{host}:{}{}", self.port, self.prefix)
    }
}

/// A credential: shown nowhere, compared as is.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// One SRV lookup. Listeners with equal queries share one discovery task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrvQuery {
    /// Fully qualified SRV name, e.g. `redis.service.consul.`
    pub name: String,
    /// Re-resolution interval.
    pub refresh: Duration,
    /// How long NXDOMAIN / empty answers must persist before they empty the set.
    pub empty_grace: Duration,
    /// Always query over TCP (for servers that truncate without setting TC).
    pub tcp: bool,
}

/// What the command line and the environment add to (or override in) the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub dns: Option<String>,
    pub metrics: Option<String>,
    /// Shorthand listeners, `[ADDR:]PORT[/udp]:SERVICE`.
    pub listeners: Vec<String>,
    /// `CONSUL_HTTP_ADDR`, used when the file has no `consul`.
    pub consul_env: Option<String>,
    /// `CONSUL_HTTP_TOKEN`, used when the file has no `consul_token`.
    pub consul_token_env: Option<Secret>,
    /// `SLUICE_API_TOKEN`, used when the file has no `api_token_file`.
    pub api_token_env: Option<Secret>,
}

impl Config {
    /// Reads and validates `path` (if any), the command-line overrides and,
    /// if the file names one, the runtime file of the API's listeners.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::compose(Sources::read(path, overrides)?)
    }

    /// Parses TOML `text`; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::compose(Sources {
            main: Text {
                origin: origin.into(),
                text: text.into(),
            },
            path: None,
            overrides: overrides.clone(),
            api: Text::default(),
            catalog: Default::default(),
        })
    }

    /// Validates what `sources` make together: every problem of every part.
    pub fn compose(sources: Sources) -> Result<Config, ConfigError> {
        let raw = toml_document(&sources.main)?;
        let raw_api = toml_document(&sources.api)?;
        // Made by sluice from the catalog's tags; what does not parse is a bug.
        let raw_catalog = toml_document(&sources.catalog.text)?;
        let fetched = Fetched::fetch(&raw, &sources);
        let validator = Validator::new(Place::file(&sources.main), &fetched);
        let config = validator.validate(raw, raw_api, raw_catalog, &sources)?;
        Ok(Config { sources, ..config })
    }
}

/// `text` as serde reads it, or the parser's error with where it is.
fn toml_document<T: serde::de::DeserializeOwned>(text: &Text) -> Result<T, ConfigError> {
    toml::from_str(&text.text).map_err(|e| {
        let location = match e.span() {
            Some(span) => Place::file(text).at(&span),
            None => text.origin.clone(),
        };
        ConfigError::one(location, error::shortened(e.message().trim_end()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &Overrides::default())
    }

    fn shorthand(args: &[&str]) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            dns: Some("127.0.0.1:8600".into()),
            listeners: args.iter().map(|a| a.to_string()).collect(),
            ..Overrides::default()
        };
        Config::parse("", "cli", &overrides)
    }

    #[test]
    fn shorthand_forms() {
        let config = shorthand(&["2003:graphite", "127.0.0.1:6390:redis", "[::1]:80/tcp:web"]).unwrap();
        assert_eq!(config.dns.servers, ["127.0.0.1:8600".parse().unwrap()]);
        let binds: Vec<String> = config.listeners.iter().map(|l| l.bind.to_string()).collect();
        assert_eq!(binds, ["0.0.0.0:2003", "127.0.0.1:6390", "[::1]:80"]);
        let BackendSource::Dns(q) = &config.listeners[0].backends else {
            panic!("expected DNS source")
        };
        assert_eq!(q.name, "graphite.service.consul.");
        assert_eq!(q.empty_grace, Duration::from_secs(3));
    }

    #[test]
    fn a_shorthand_listener_is_a_table_with_bind_protocol_and_service() {
        let from_args = shorthand(&["8125/udp:statsd"]).unwrap();
        let from_file = Config::parse(
            "[listeners.\"8125/udp:statsd\"]\nbind = \"0.0.0.0:8125\"\nprotocol = \"udp\"\nservice = \"statsd\"\n",
            "cli",
            &Overrides {
                dns: Some("127.0.0.1:8600".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            from_args.listeners, from_file.listeners,
            "the same defaults either way"
        );
    }

    #[test]
    fn shorthand_errors_name_the_listener() {
        for (arg, want) in [
            ("graphite", "expected [ADDR:]PORT"),
            ("99999:graphite", "invalid address"),
            ("2003:gra phite", "service: `gra phite` is not a valid DNS label"),
            ("224.0.0.1:5:x", "bind: cannot listen on 224.0.0.1:5"),
        ] {
            let err = shorthand(&[arg]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("listener '{arg}': ")), "{err}");
            assert!(err.contains(want), "{arg}: {err}");
        }
    }

    #[test]
    fn the_removed_sockmap_data_path_says_why_and_where() {
        let err = parse(
            "[listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\ndata_path = \"sockmap\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test.toml:4"), "{err}");
        assert!(
            err.contains("listeners.a.data_path: \"sockmap\" was removed"),
            "{err}"
        );
        assert!(err.contains("use \"auto\""), "{err}");
    }

    #[test]
    fn dns_without_port_defaults_to_53() {
        let config =
            parse("dns = \"10.0.0.2\"\n[listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\n")
                .unwrap();
        assert_eq!(config.dns.servers, ["10.0.0.2:53".parse().unwrap()]);
    }

    #[test]
    fn several_dns_servers_and_host_names() {
        let config = parse(
            "dns = [\"10.0.0.2:8600\", \"localhost:8601\", \"[::1]\"]\ndns_timeout = \"500ms\"\ndns_attempts = 3\n\
             [listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let servers: Vec<String> = config.dns.servers.iter().map(ToString::to_string).collect();
        assert_eq!(servers[0], "10.0.0.2:8600");
        assert!(servers.contains(&"127.0.0.1:8601".to_string()), "{servers:?}");
        assert_eq!(servers.last().unwrap(), "[::1]:53");
        assert_eq!(config.dns.timeout, Duration::from_millis(500));
        assert_eq!(config.dns.attempts, 3);

        let overrides = Overrides {
            dns: Some("10.0.0.3, localhost:8600".into()),
            ..Overrides::default()
        };
        let config = Config::parse(
            "[listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\n",
            "test.toml",
            &overrides,
        )
        .unwrap();
        assert_eq!(config.dns.servers[0], "10.0.0.3:53".parse().unwrap());
        assert!(config.dns.servers.contains(&"127.0.0.1:8600".parse().unwrap()));

        let err = parse("dns = \"no-such-host.invalid:53\"\n[listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:1: dns: cannot resolve DNS server `no-such-host.invalid`"),
            "{err}"
        );
    }

    #[test]
    fn per_listener_overrides_and_tags() {
        let config = parse(
            "domain = \"example.\"\nrefresh = \"250ms\"\ntcp = true\n\
             [listeners.a]\nbind = \"127.0.0.1:1\"\nservice = \"Redis\"\ntag = \"primary\"\n\
             empty_grace = \"0s\"\ntcp = false\nbalance = \"p2c\"\n",
        )
        .unwrap();
        let l = &config.listeners[0];
        assert_eq!(l.balance, Balance::P2c);
        assert_eq!(
            l.backends,
            BackendSource::Dns(SrvQuery {
                name: "primary.redis.service.example.".into(),
                refresh: Duration::from_millis(250),
                empty_grace: Duration::ZERO,
                tcp: false,
            })
        );
    }

    #[test]
    fn consul_comes_from_the_file_else_the_environment_and_its_token_is_never_shown() {
        let listener = "[listeners.w]\nbind = \"127.0.0.1:1\"\ndiscovery = \"consul\"\nservice = \"Web\"\n";
        let overrides = Overrides {
            consul_env: Some("http://consul.local:8501/proxied".into()),
            consul_token_env: Some(Secret("from-env".into())),
            ..Overrides::default()
        };
        let config = Config::parse(listener, "t.toml", &overrides).unwrap();
        assert_eq!(config.consul.addr.to_string(), "http://consul.local:8501/proxied");
        assert_eq!(config.consul.token, Some(Secret("from-env".into())));
        assert!(
            !format!("{config:?}").contains("from-env"),
            "the token leaked into Debug"
        );
        let BackendSource::Consul(query) = &config.listeners[0].backends else {
            panic!("a Consul source")
        };
        assert_eq!(query.service, "web");

        let file = format!("consul = \"10.0.0.5\"\nconsul_token = \"from-file\"\n{listener}");
        let config = Config::parse(&file, "t.toml", &overrides).unwrap();
        assert_eq!(config.consul.addr.to_string(), "http://10.0.0.5:8500");
        assert_eq!(config.consul.token, Some(Secret("from-file".into())));
    }

    #[test]
    fn settings_are_typed_by_protocol() {
        let config = parse(
            "[listeners.t]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\nmax_connections = 7\n\
             [listeners.u]\nbind = \"127.0.0.1:1\"\nprotocol = \"udp\"\nbackends = [\"127.0.0.1:2\"]\nmax_flows = 9\n",
        )
        .unwrap();
        assert!(matches!(
            config.listeners[0].mode,
            Mode::Tcp(TcpSettings {
                max_connections: 7,
                ..
            })
        ));
        assert!(matches!(
            config.listeners[1].mode,
            Mode::Udp(UdpSettings { max_flows: 9, .. })
        ));
    }
}
