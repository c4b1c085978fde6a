//! Configuration: the TOML file and the CLI shorthand listeners, parsed into a
//! validated model ([`Config`]) that the rest of sluice runs from.
//!
//! Parsing is two steps. serde reads the file into `Raw*` structs that keep the
//! span of every value (`deny_unknown_fields` rejects typos), then `validate`
//! turns them into the model, collecting every problem with its key and line so
//! `--check` can print them all at once. Nothing outside this module ever sees
//! a raw value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, Range, RangeInclusive};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Port used for `dns` / `--dns` when the address has none.
pub const DNS_PORT: u16 = 53;

const DEFAULT_DOMAIN: &str = "consul";
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_EJECT_AFTER: usize = 3;
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: usize = 2;
const DEFAULT_FALL: usize = 3;
/// Upper bound for `rise`, `fall` and `eject_after`.
const MAX_CHECK_COUNT: usize = 1000;
/// NXDOMAIN / empty answers are applied after this many refresh intervals.
const EMPTY_GRACE_REFRESHES: u32 = 3;

/// Bounds on values; outside them the config is rejected, never clamped.
const MIN_REFRESH: Duration = Duration::from_millis(10);
/// The longest any duration may be: far beyond any useful timeout, and small
/// enough that adding it to a clock or multiplying it never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// A configuration file larger than this is refused unread (`-c /dev/zero`).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Health-check `send` and `expect` longer than this are refused.
pub const MAX_CHECK_BYTES: usize = 4096;
/// How much of a bad value an error message quotes back.
const QUOTE_MAX_CHARS: usize = 64;
/// Upper bound for `max_connections` and `max_flows`.
const MAX_COUNT: usize = 1 << 24;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// DNS server for SRV lookups; `None` means the system resolver's first nameserver.
    pub dns: Option<SocketAddr>,
    /// HTTP address for metrics and status, if any.
    pub metrics: Option<SocketAddr>,
    /// How long connections may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    pub listeners: Vec<Listener>,
}

/// One listening port and where its connections go.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub backends: BackendSource,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Log one line per closed connection.
    pub access_log: bool,
    pub udp: UdpSettings,
    /// Active health checks, if configured.
    pub health: Option<HealthCheck>,
    /// Consecutive connect failures that eject a backend for a while (0: never).
    pub eject_after: u32,
    /// How long connections to a removed backend (or of a removed listener)
    /// may go on; `None`: until they end or go idle.
    pub drain_timeout: Option<Duration>,
    /// Bind with SO_REUSEPORT, so a new sluice can take over the port.
    pub reuse_port: bool,
    /// Forward TCP with splice(2) (Linux) instead of copying through user space.
    pub splice: bool,
}

/// `[listeners.NAME.health]`: an active check of every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Bytes to send after connecting (e.g. `"PING\r\n"`).
    pub send: Option<String>,
    /// Bytes the reply must contain (e.g. `"+PONG"`); connect-only without.
    pub expect: Option<String>,
}

/// How a UDP listener tracks flows (ignored for TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    /// A flow with no datagram either way for this long is forgotten.
    pub idle_timeout: Duration,
    /// Flows kept at most; the least recently used goes first.
    pub max_flows: usize,
    /// `false`: fire-and-forget (statsd): no flows, datagrams spread per packet.
    pub replies: bool,
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings {
            idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            max_flows: crate::limits::default_max_flows(),
            replies: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
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
    Static(Vec<SocketAddr>),
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

/// A problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:` or `listener '2003:graphite':`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(location: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![Problem {
                location: location.into(),
                message: message.into(),
            }],
        }
    }
}

/// What the command line adds to (or overrides in) the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub dns: Option<String>,
    pub metrics: Option<String>,
    /// Shorthand listeners, `[ADDR:]PORT[/udp]:SERVICE`.
    pub listeners: Vec<String>,
}

type Dur = Spanned<humantime_serde::Serde<Duration>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dns: Option<Spanned<String>>,
    domain: Option<Spanned<String>>,
    refresh: Option<Dur>,
    empty_grace: Option<Dur>,
    tcp: Option<bool>,
    shutdown_grace: Option<Dur>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    listeners: BTreeMap<String, Spanned<RawListener>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Option<Spanned<String>>,
    protocol: Option<Spanned<Protocol>>,
    service: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    srv: Option<Spanned<String>>,
    backends: Option<Spanned<Vec<Spanned<String>>>>,
    balance: Option<Balance>,
    connect_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    max_connections: Option<Spanned<i64>>,
    tcp: Option<bool>,
    empty_grace: Option<Dur>,
    access_log: Option<bool>,
    udp_idle_timeout: Option<Dur>,
    max_flows: Option<Spanned<i64>>,
    udp_replies: Option<bool>,
    health: Option<Spanned<RawHealth>>,
    eject_after: Option<Spanned<i64>>,
    drain_timeout: Option<Dur>,
    reuse_port: Option<bool>,
    splice: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval: Option<Dur>,
    timeout: Option<Dur>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    send: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
}

impl Config {
    /// Reads and validates `path` (if any) plus the command-line overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(path) => {
                let origin = path.display().to_string();
                let text = read_capped(path).map_err(|e| ConfigError::one(&origin, e))?;
                Self::parse(&text, &origin, overrides)
            }
            None => Self::parse("", "<command line>", overrides),
        }
    }

    /// Parses TOML `text`; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let location = match e.span() {
                Some(span) => Locator { text, origin }.at(&span),
                None => origin.to_string(),
            };
            ConfigError::one(location, shortened(e.message().trim_end()))
        })?;
        Validator {
            locator: Locator { text, origin },
            problems: Vec::new(),
        }
        .validate(raw, overrides)
    }
}

/// The file's text, refusing files over [`MAX_CONFIG_BYTES`] without reading them whole.
fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "larger than {MAX_CONFIG_BYTES} bytes, not a configuration file"
        ));
    }
    Ok(text)
}

/// `text` for an error message, cut short if long.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("`{}…` ({} bytes)", &text[..cut], text.len()),
        None => format!("`{text}`"),
    }
}

/// A message from the TOML parser with every long quoted value in it cut
/// short (it quotes values whole, which may be a megabyte).
fn shortened(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut quote: Option<(char, usize)> = None; // the open quote, chars kept inside
    for c in message.chars() {
        match quote {
            Some((open, _)) if c == open => {
                quote = None;
                out.push(c);
            }
            Some((open, kept)) => {
                if kept < QUOTE_MAX_CHARS {
                    out.push(c);
                } else if kept == QUOTE_MAX_CHARS {
                    out.push('…');
                }
                quote = Some((open, kept + 1));
            }
            None => {
                if c == '"' || c == '`' {
                    quote = Some((c, 0));
                }
                out.push(c);
            }
        }
    }
    out
}

/// Turns byte spans into `file:line` locations.
#[derive(Clone, Copy)]
struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: &Range<usize>) -> String {
        let start = span.start.min(self.text.len());
        let line = self.text[..start].matches('\n').count() + 1;
        format!("{}:{}", self.origin, line)
    }
}

struct Validator<'a> {
    locator: Locator<'a>,
    problems: Vec<Problem>,
}

/// Global settings every listener inherits unless it overrides them.
struct Defaults {
    domain: String,
    refresh: Duration,
    empty_grace: Option<Duration>,
    tcp: bool,
}

impl Validator<'_> {
    fn problem(&mut self, location: String, message: String) {
        self.problems.push(Problem { location, message });
    }

    fn problem_at<T>(&mut self, value: &Spanned<T>, key: &str, message: impl fmt::Display) {
        let location = self.locator.at(&value.span());
        self.problem(location, format!("{key}: {message}"));
    }

    /// A duration between `min` and [`MAX_DURATION`]; `default` when absent
    /// or out of bounds (the problem is recorded).
    fn duration(&mut self, value: Option<&Dur>, key: &str, min: Duration, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        let duration = *value.get_ref().deref();
        let shown = humantime_serde::re::humantime::format_duration;
        if duration < min {
            self.problem_at(value, key, format!("must be at least {}", shown(min)));
            return default;
        }
        if duration > MAX_DURATION {
            self.problem_at(value, key, format!("must be at most {}", shown(MAX_DURATION)));
            return default;
        }
        duration
    }

    fn validate(mut self, raw: RawConfig, overrides: &Overrides) -> Result<Config, ConfigError> {
        let dns = match (&overrides.dns, &raw.dns) {
            (Some(cli), _) => self.cli_addr(cli, "--dns", parse_dns_server),
            (None, Some(file)) => match parse_dns_server(file.get_ref()) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    self.problem_at(file, "dns", e);
                    None
                }
            },
            (None, None) => None,
        };
        let metrics = match (&overrides.metrics, &raw.metrics) {
            (Some(cli), _) => self.cli_addr(cli, "--metrics", parse_bind),
            (None, Some(file)) => match parse_bind(file.get_ref()) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    self.problem_at(file, "metrics", e);
                    None
                }
            },
            (None, None) => None,
        };
        let domain = match &raw.domain {
            Some(d) => {
                let domain = d.get_ref().trim_matches('.').to_ascii_lowercase();
                if let Err(e) = check_dns_name(&domain) {
                    self.problem_at(d, "domain", e);
                }
                domain
            }
            None => DEFAULT_DOMAIN.to_string(),
        };
        let tiny = Duration::from_millis(1);
        let refresh = self.duration(raw.refresh.as_ref(), "refresh", MIN_REFRESH, DEFAULT_REFRESH);
        let empty_grace = raw
            .empty_grace
            .as_ref()
            .map(|g| self.duration(Some(g), "empty_grace", Duration::ZERO, Duration::ZERO));
        let shutdown_grace = self.duration(
            raw.shutdown_grace.as_ref(),
            "shutdown_grace",
            Duration::ZERO,
            DEFAULT_SHUTDOWN_GRACE,
        );
        let defaults = Defaults {
            domain,
            refresh,
            empty_grace,
            tcp: raw.tcp.unwrap_or(false),
        };

        let mut listeners = Vec::new();
        for (name, table) in &raw.listeners {
            let location = self.locator.at(&table.span());
            if let Some(l) = self.listener(name, table.get_ref(), &location, &defaults, tiny) {
                listeners.push(l);
            }
        }
        for shorthand in &overrides.listeners {
            match parse_shorthand(shorthand, &defaults) {
                Ok(l) => listeners.push(l),
                Err(e) => self.problem(format!("listener '{shorthand}'"), e),
            }
        }
        if raw.listeners.is_empty() && overrides.listeners.is_empty() {
            self.problem(
                self.locator.origin.to_string(),
                "no listeners: add a [listeners.NAME] table or a PORT:SERVICE argument".into(),
            );
        }
        for (i, a) in listeners.iter().enumerate() {
            for b in &listeners[i + 1..] {
                // Port 0 asks the kernel for a free port: no clash possible.
                if a.bind == b.bind && a.bind.port() != 0 && a.protocol == b.protocol {
                    let (first, second, bind) = (&a.name, &b.name, a.bind);
                    self.problem(
                        format!("listener '{second}'"),
                        format!("bind {bind} is also used by listener '{first}'"),
                    );
                }
            }
        }

        if self.problems.is_empty() {
            Ok(Config {
                dns,
                metrics,
                shutdown_grace,
                listeners,
            })
        } else {
            // In file order; locations without a line (the command line) last.
            let line = |p: &Problem| {
                let line = p.location.strip_prefix(self.locator.origin)?.strip_prefix(':')?;
                line.parse::<usize>().ok()
            };
            self.problems.sort_by_key(|p| line(p).unwrap_or(usize::MAX));
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    fn health(&mut self, raw: &RawHealth, key: &str) -> HealthCheck {
        let tiny = Duration::from_millis(1);
        let sub = |k: &str| format!("{key}.{k}");
        let interval = self.duration(
            raw.interval.as_ref(),
            &sub("interval"),
            tiny,
            DEFAULT_CHECK_INTERVAL,
        );
        let timeout = self.duration(raw.timeout.as_ref(), &sub("timeout"), tiny, DEFAULT_CHECK_TIMEOUT);
        let checks = 1..=MAX_CHECK_COUNT;
        let rise = self.int(raw.rise.as_ref(), &sub("rise"), checks.clone(), DEFAULT_RISE) as u32;
        let fall = self.int(raw.fall.as_ref(), &sub("fall"), checks, DEFAULT_FALL) as u32;
        HealthCheck {
            interval,
            timeout,
            rise,
            fall,
            send: self.check_bytes(raw.send.as_ref(), &sub("send")),
            expect: self.check_bytes(raw.expect.as_ref(), &sub("expect")),
        }
    }

    /// An optional check string that, when given, is 1 to [`MAX_CHECK_BYTES`] long.
    fn check_bytes(&mut self, value: Option<&Spanned<String>>, key: &str) -> Option<String> {
        let value = value?;
        let len = value.get_ref().len();
        if len == 0 {
            self.problem_at(value, key, "must not be empty (leave it out instead)");
        } else if len > MAX_CHECK_BYTES {
            self.problem_at(
                value,
                key,
                format!("must be at most {MAX_CHECK_BYTES} bytes, got {len}"),
            );
        }
        Some(value.get_ref().clone())
    }

    /// A whole number within `range`.
    fn int(
        &mut self,
        value: Option<&Spanned<i64>>,
        key: &str,
        range: RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let Some(value) = value else { return default };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let (low, high) = (range.start(), range.end());
                let message = format!("must be between {low} and {high}, got {}", value.get_ref());
                self.problem_at(value, key, message);
                default
            }
        }
    }

    fn cli_addr(
        &mut self,
        value: &str,
        flag: &str,
        parse: fn(&str) -> Result<SocketAddr, String>,
    ) -> Option<SocketAddr> {
        parse(value).map_err(|e| self.problem(flag.to_string(), e)).ok()
    }

    fn listener(
        &mut self,
        name: &str,
        raw: &RawListener,
        location: &str,
        defaults: &Defaults,
        tiny: Duration,
    ) -> Option<Listener> {
        let before = self.problems.len();
        let key = |k: &str| format!("listeners.{name}.{k}");

        let bind = match &raw.bind {
            Some(b) => parse_bind(b.get_ref())
                .map_err(|e| self.problem_at(b, &key("bind"), e))
                .ok(),
            None => {
                self.problem(
                    location.to_string(),
                    format!("listeners.{name}: `bind` is required"),
                );
                None
            }
        };
        let protocol = raw.protocol.as_ref().map_or(Protocol::Tcp, |p| *p.get_ref());

        let refresh = defaults.refresh;
        let empty_grace = match &raw.empty_grace {
            Some(g) => self.duration(Some(g), &key("empty_grace"), Duration::ZERO, Duration::ZERO),
            None => defaults.empty_grace.unwrap_or(refresh * EMPTY_GRACE_REFRESHES),
        };
        let tcp = raw.tcp.unwrap_or(defaults.tcp);
        let dns_query = |name: String| {
            BackendSource::Dns(SrvQuery {
                name,
                refresh,
                empty_grace,
                tcp,
            })
        };
        let backends = match (&raw.service, &raw.srv, &raw.backends) {
            (Some(service), None, None) => {
                let tag = raw.tag.as_ref();
                let mut ok = true;
                if let Err(e) = check_label(service.get_ref()) {
                    self.problem_at(service, &key("service"), e);
                    ok = false;
                }
                if let Some(t) = tag {
                    if let Err(e) = check_label(t.get_ref()) {
                        self.problem_at(t, &key("tag"), e);
                        ok = false;
                    }
                }
                ok.then(|| {
                    dns_query(consul_name(
                        tag.map(|t| t.get_ref().as_str()),
                        service.get_ref(),
                        &defaults.domain,
                    ))
                })
            }
            (None, Some(srv), None) => {
                let name = srv.get_ref().trim_end_matches('.').to_ascii_lowercase();
                match check_dns_name(&name) {
                    Ok(()) => Some(dns_query(format!("{name}."))),
                    Err(e) => {
                        self.problem_at(srv, &key("srv"), e);
                        None
                    }
                }
            }
            (None, None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.problem_at(list, &key("backends"), "must list at least one address");
                }
                let addrs: Vec<SocketAddr> = list
                    .get_ref()
                    .iter()
                    .filter_map(|a| {
                        parse_peer(a.get_ref())
                            .map_err(|e| self.problem_at(a, &key("backends"), e))
                            .ok()
                    })
                    .collect();
                Some(BackendSource::Static(addrs))
            }
            (None, None, None) => {
                self.problem(
                    location.to_string(),
                    format!("listeners.{name}: needs one of `service`, `srv` or `backends`"),
                );
                None
            }
            _ => {
                self.problem(
                    location.to_string(),
                    format!("listeners.{name}: give only one of `service`, `srv` or `backends`"),
                );
                None
            }
        };
        if let (Some(tag), None) = (&raw.tag, &raw.service) {
            self.problem_at(tag, &key("tag"), "only applies together with `service`");
        }

        let connect_timeout = self.duration(
            raw.connect_timeout.as_ref(),
            &key("connect_timeout"),
            tiny,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &key("idle_timeout"),
            tiny,
            DEFAULT_IDLE_TIMEOUT,
        );
        let max_connections = self.int(
            raw.max_connections.as_ref(),
            &key("max_connections"),
            1..=MAX_COUNT,
            crate::limits::default_max_connections(),
        );
        let udp = UdpSettings {
            idle_timeout: self.duration(
                raw.udp_idle_timeout.as_ref(),
                &key("udp_idle_timeout"),
                tiny,
                DEFAULT_UDP_IDLE_TIMEOUT,
            ),
            max_flows: self.int(
                raw.max_flows.as_ref(),
                &key("max_flows"),
                1..=MAX_COUNT,
                crate::limits::default_max_flows(),
            ),
            replies: raw.udp_replies.unwrap_or(true),
        };
        let health = raw
            .health
            .as_ref()
            .map(|h| self.health(h.get_ref(), &key("health")));
        let eject_after = self.int(
            raw.eject_after.as_ref(),
            &key("eject_after"),
            0..=MAX_CHECK_COUNT,
            DEFAULT_EJECT_AFTER,
        ) as u32;
        let drain_timeout = raw
            .drain_timeout
            .as_ref()
            .map(|d| self.duration(Some(d), &key("drain_timeout"), Duration::ZERO, Duration::ZERO));

        if self.problems.len() > before {
            return None;
        }
        Some(Listener {
            name: name.to_string(),
            bind: bind?,
            protocol,
            backends: backends?,
            balance: raw.balance.unwrap_or(Balance::RoundRobin),
            connect_timeout,
            idle_timeout,
            max_connections,
            access_log: raw.access_log.unwrap_or(false),
            udp,
            health,
            eject_after,
            drain_timeout,
            reuse_port: raw.reuse_port.unwrap_or(false),
            splice: raw.splice.unwrap_or(true),
        })
    }
}

/// `[ADDR:]PORT[/udp]:SERVICE` → a listener with default settings.
fn parse_shorthand(text: &str, defaults: &Defaults) -> Result<Listener, String> {
    const FORM: &str = "expected [ADDR:]PORT[/udp]:SERVICE, e.g. 2003:graphite";
    let (head, service) = text.rsplit_once(':').ok_or_else(|| FORM.to_string())?;
    check_label(service).map_err(|e| format!("service: {e}"))?;
    let (head, protocol) = if let Some(h) = head.strip_suffix("/udp") {
        (h, Protocol::Udp)
    } else {
        (head.strip_suffix("/tcp").unwrap_or(head), Protocol::Tcp)
    };
    let bind = match head.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        Err(_) => parse_bind(head).map_err(|e| format!("{e}; {FORM}"))?,
    };
    let refresh = defaults.refresh;
    Ok(Listener {
        name: text.to_string(),
        bind,
        protocol,
        backends: BackendSource::Dns(SrvQuery {
            name: consul_name(None, service, &defaults.domain),
            refresh,
            empty_grace: defaults.empty_grace.unwrap_or(refresh * EMPTY_GRACE_REFRESHES),
            tcp: defaults.tcp,
        }),
        balance: Balance::RoundRobin,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        max_connections: crate::limits::default_max_connections(),
        access_log: false,
        udp: UdpSettings::default(),
        health: None,
        eject_after: DEFAULT_EJECT_AFTER as u32,
        drain_timeout: None,
        reuse_port: false,
        splice: true,
    })
}

/// Consul's SRV name: `[tag.]service.service.domain.`
fn consul_name(tag: Option<&str>, service: &str, domain: &str) -> String {
    let service = service.to_ascii_lowercase();
    match tag {
        Some(tag) => format!("{}.{service}.service.{domain}.", tag.to_ascii_lowercase()),
        None => format!("{service}.service.{domain}."),
    }
}

/// A DNS server: `ip:port`, `[v6]:port`, or a bare IP that gets port 53.
fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
            .map_err(|_| format!("invalid address {}: expected IP or IP:PORT", quoted(text)))?,
    };
    peer(addr)
}

/// A backend to connect to: `ip:port` of a single unicast host.
fn parse_peer(text: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(text).and_then(peer)
}

fn peer(addr: SocketAddr) -> Result<SocketAddr, String> {
    match crate::net::unusable_peer(addr) {
        Some(reason) => Err(format!("{addr} cannot be reached as a server: {reason}")),
        None => Ok(addr),
    }
}

/// Where a listener binds: `ip:port`, a wildcard or unicast address.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_socket_addr(text)?;
    match crate::net::unusable_bind(addr.ip()) {
        Some(reason) => Err(format!("cannot listen on {addr}: {reason}")),
        None => Ok(addr),
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid address {}: expected IP:PORT, e.g. 127.0.0.1:2003 or [::]:2003",
            quoted(text)
        )
    })
}

/// One DNS label as Consul service and tag names use them (RFC 1123, plus
/// the `_` of SRV names).
fn check_label(label: &str) -> Result<(), String> {
    let valid = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid DNS label (letters, digits, '-' inside, '_'; 1 to 63 characters)",
            quoted(label)
        ))
    }
}

fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{} is not a valid DNS name", quoted(name)));
    }
    name.split('.').try_for_each(check_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &Overrides::default())
    }

    #[test]
    fn shorthand_forms() {
        let overrides = Overrides {
            dns: Some("127.0.0.1:8600".into()),
            listeners: vec![
                "2003:graphite".into(),
                "127.0.0.1:6390:redis".into(),
                "[::1]:80/tcp:web".into(),
            ],
            ..Overrides::default()
        };
        let config = Config::parse("", "cli", &overrides).unwrap();
        assert_eq!(config.dns, Some("127.0.0.1:8600".parse().unwrap()));
        let binds: Vec<String> = config.listeners.iter().map(|l| l.bind.to_string()).collect();
        assert_eq!(binds, ["0.0.0.0:2003", "127.0.0.1:6390", "[::1]:80"]);
        let BackendSource::Dns(q) = &config.listeners[0].backends else {
            panic!("expected DNS source")
        };
        assert_eq!(q.name, "graphite.service.consul.");
        assert_eq!(q.empty_grace, Duration::from_secs(3));
    }

    #[test]
    fn shorthand_errors_name_the_listener() {
        for (arg, want) in [
            ("graphite", "expected [ADDR:]PORT"),
            ("99999:graphite", "invalid address"),
            ("2003:gra phite", "not a valid DNS label"),
        ] {
            let overrides = Overrides {
                listeners: vec![arg.into()],
                ..Overrides::default()
            };
            let err = Config::parse("", "cli", &overrides).unwrap_err().to_string();
            assert!(err.starts_with(&format!("listener '{arg}': ")), "{err}");
            assert!(err.contains(want), "{arg}: {err}");
        }
    }

    #[test]
    fn dns_without_port_defaults_to_53() {
        let config =
            parse("dns = \"10.0.0.2\"\n[listeners.a]\nbind=\"127.0.0.1:1\"\nbackends=[\"127.0.0.1:2\"]\n")
                .unwrap();
        assert_eq!(config.dns, Some("10.0.0.2:53".parse().unwrap()));
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
}
