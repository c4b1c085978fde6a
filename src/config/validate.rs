//! Raw values → the model. Every value is checked against its bounds, every
//! default is filled in here (one place, for file and shorthand listeners
//! alike), and every problem is collected with where it is, so that `--check`
//! prints them all at once.

use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Problem, ProblemKind};
use super::names::{
    check_dns_name, check_label, consul_name, parse_bind, parse_consul_addr, parse_dns_servers, parse_peer,
};
use super::raw::{Discovery, Dur, RawApiListeners, RawConfig, RawHealth, RawListener};
use super::{
    BackendSource, Balance, Config, ConsulAddr, ConsulQuery, ConsulSettings, DataPath, DnsSettings,
    HealthCheck, Listener, MAX_DURATION, Mode, Origin, Protocol, ProxyVersion, Secret, Sources, SrvQuery,
    TcpSettings, Text, UdpSettings, relative_to, shorthand, tables,
};
use crate::net::binds_overlap;

const DEFAULT_DOMAIN: &str = "consul";
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_DNS_ATTEMPTS: usize = 2;
const DEFAULT_CONSUL_PORT: u16 = 8500;
/// Upper bound for `dns_attempts`.
const MAX_DNS_ATTEMPTS: usize = 10;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_EJECT_AFTER: usize = 3;
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: usize = 2;
const DEFAULT_FALL: usize = 3;
/// NXDOMAIN / empty answers are applied after this many refresh intervals.
const EMPTY_GRACE_REFRESHES: u32 = 3;

/// The shortest `refresh`: faster polling only loads the DNS server.
const MIN_REFRESH: Duration = Duration::from_millis(10);
/// The shortest timeout or interval.
const TINY: Duration = Duration::from_millis(1);
/// Upper bound for `rise`, `fall` and `eject_after`.
const MAX_CHECK_COUNT: usize = 1000;
/// Upper bound for `max_connections` and `max_flows`.
const MAX_COUNT: usize = 1 << 24;
/// Health-check `send` and `expect` longer than this are refused.
pub const MAX_CHECK_BYTES: usize = 4096;
/// An API token file larger than this is not a token.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Where values come from, to say where a problem is.
#[derive(Clone, Copy)]
pub(super) enum Place<'a> {
    /// A TOML file's text: a span becomes `file:line`.
    File { text: &'a str, origin: &'a str },
    /// A command-line shorthand: every problem is at `listener 'TEXT'`.
    Shorthand(&'a str),
}

impl<'a> Place<'a> {
    pub fn file(text: &'a Text) -> Place<'a> {
        Place::File {
            text: &text.text,
            origin: &text.origin,
        }
    }

    pub fn at(&self, span: &Range<usize>) -> String {
        match self {
            Place::File { text, origin } => {
                let start = span.start.min(text.len());
                let line = text[..start].matches('\n').count() + 1;
                format!("{origin}:{line}")
            }
            Place::Shorthand(text) => format!("listener '{text}'"),
        }
    }

    /// The file (or shorthand) as a whole.
    fn origin(&self) -> String {
        match self {
            Place::File { origin, .. } => origin.to_string(),
            Place::Shorthand(text) => format!("listener '{text}'"),
        }
    }

    /// The line a location of this place names, for ordering problems.
    fn line_of(&self, location: &str) -> Option<usize> {
        match self {
            Place::File { origin, .. } => location.strip_prefix(origin)?.strip_prefix(':')?.parse().ok(),
            Place::Shorthand(_) => None,
        }
    }
}

/// Where a table's keys are, and how messages name them.
struct Scope<'a> {
    place: Place<'a>,
    /// Put before a key in messages: `listeners.redis.` in a file, nothing
    /// for a shorthand (its location already names the listener).
    prefix: String,
}

impl Scope<'_> {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Global settings every listener inherits unless it overrides them.
struct Defaults {
    domain: String,
    refresh: Duration,
    empty_grace: Option<Duration>,
    tcp: bool,
    /// Consul's, for `discovery = "consul"`.
    datacenter: Option<String>,
}

impl Defaults {
    /// `empty_grace` as set, else three refresh intervals.
    fn empty_grace(&self) -> Duration {
        self.empty_grace
            .unwrap_or(self.refresh.saturating_mul(EMPTY_GRACE_REFRESHES))
    }
}

pub(super) struct Validator<'a> {
    file: Place<'a>,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    pub fn new(file: Place<'a>) -> Validator<'a> {
        Validator {
            file,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, location: String, message: String) {
        let kind = ProblemKind::Invalid;
        self.problems.push(Problem {
            location,
            message,
            kind,
        });
    }

    fn problem_at<T>(&mut self, scope: &Scope, value: &Spanned<T>, key: &str, message: impl fmt::Display) {
        let location = scope.place.at(&value.span());
        self.problem(location, format!("{}: {message}", scope.key(key)));
    }

    /// A string value read by `parse`, or `None` (the problem recorded).
    fn parsed<T>(
        &mut self,
        scope: &Scope,
        value: &Spanned<String>,
        key: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        parse(value.get_ref())
            .map_err(|e| self.problem_at(scope, value, key, e))
            .ok()
    }

    /// A command-line value read by `parse`.
    fn cli<T>(&mut self, value: &str, flag: &str, parse: fn(&str) -> Result<T, String>) -> Option<T> {
        parse(value).map_err(|e| self.problem(flag.to_string(), e)).ok()
    }

    /// A duration between `min` and [`MAX_DURATION`]; `default` when absent
    /// or out of bounds (the problem is recorded).
    fn duration(
        &mut self,
        scope: &Scope,
        value: Option<&Dur>,
        key: &str,
        min: Duration,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let duration = *value.get_ref().deref();
        let shown = humantime_serde::re::humantime::format_duration;
        if duration < min {
            self.problem_at(scope, value, key, format!("must be at least {}", shown(min)));
            return default;
        }
        if duration > MAX_DURATION {
            self.problem_at(
                scope,
                value,
                key,
                format!("must be at most {}", shown(MAX_DURATION)),
            );
            return default;
        }
        duration
    }

    /// A whole number within `range`; `default` when absent or outside.
    fn int(
        &mut self,
        scope: &Scope,
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
                self.problem_at(scope, value, key, message);
                default
            }
        }
    }

    /// An optional check string that, when given, is 1 to [`MAX_CHECK_BYTES`] long.
    fn check_bytes(&mut self, scope: &Scope, value: Option<&Spanned<String>>, key: &str) -> Option<String> {
        let value = value?;
        let len = value.get_ref().len();
        if len == 0 {
            self.problem_at(scope, value, key, "must not be empty (leave it out instead)");
        } else if len > MAX_CHECK_BYTES {
            let message = format!("must be at most {MAX_CHECK_BYTES} bytes, got {len}");
            self.problem_at(scope, value, key, message);
        }
        Some(value.get_ref().clone())
    }

    pub fn validate(
        mut self,
        raw: RawConfig,
        raw_api: RawApiListeners,
        sources: &Sources,
    ) -> Result<Config, ConfigError> {
        let overrides = &sources.overrides;
        let global = Scope {
            place: self.file,
            prefix: String::new(),
        };
        let dns = match (&overrides.dns, &raw.dns) {
            (Some(cli), _) => self.cli(cli, "--dns", parse_dns_servers),
            (None, Some(file)) => {
                let servers = Spanned::new(file.span(), file.get_ref().joined());
                self.parsed(&global, &servers, "dns", parse_dns_servers)
            }
            (None, None) => None,
        };
        let dns = DnsSettings {
            servers: dns.unwrap_or_default(),
            timeout: self.duration(
                &global,
                raw.dns_timeout.as_ref(),
                "dns_timeout",
                TINY,
                DEFAULT_DNS_TIMEOUT,
            ),
            attempts: self.int(
                &global,
                raw.dns_attempts.as_ref(),
                "dns_attempts",
                1..=MAX_DNS_ATTEMPTS,
                DEFAULT_DNS_ATTEMPTS,
            ) as u32,
        };
        let metrics = match (&overrides.metrics, &raw.metrics) {
            (Some(cli), _) => self.cli(cli, "--metrics", parse_bind),
            (None, Some(file)) => self.parsed(&global, file, "metrics", parse_bind),
            (None, None) => None,
        };
        let consul_addr = match (&raw.consul, &overrides.consul_env) {
            (Some(file), _) => self.parsed(&global, file, "consul", parse_consul_addr),
            (None, Some(env)) => self.cli(env, "CONSUL_HTTP_ADDR", parse_consul_addr),
            (None, None) => None,
        };
        let token = match (&raw.consul_token, &overrides.consul_token_env) {
            (Some(file), _) => Some(file.get_ref().clone()),
            (None, env) => env.as_ref().map(|secret| secret.0.clone()),
        };
        let consul = ConsulSettings {
            addr: consul_addr.unwrap_or_else(|| ConsulAddr {
                host: "127.0.0.1".into(),
                port: DEFAULT_CONSUL_PORT,
                prefix: String::new(),
            }),
            token: token.filter(|t| !t.is_empty()).map(Secret),
        };
        let datacenter = raw.datacenter.as_ref().and_then(|dc| {
            check_label(dc.get_ref())
                .map_err(|e| self.problem_at(&global, dc, "datacenter", e))
                .ok()
                .map(|()| dc.get_ref().to_ascii_lowercase())
        });
        let domain = match &raw.domain {
            Some(d) => {
                let domain = d.get_ref().trim_matches('.').to_ascii_lowercase();
                if let Err(e) = check_dns_name(&domain) {
                    self.problem_at(&global, d, "domain", e);
                }
                domain
            }
            None => DEFAULT_DOMAIN.to_string(),
        };
        let refresh = self.duration(
            &global,
            raw.refresh.as_ref(),
            "refresh",
            MIN_REFRESH,
            DEFAULT_REFRESH,
        );
        let empty_grace = raw
            .empty_grace
            .as_ref()
            .map(|g| self.duration(&global, Some(g), "empty_grace", Duration::ZERO, Duration::ZERO));
        let shutdown_grace = self.duration(
            &global,
            raw.shutdown_grace.as_ref(),
            "shutdown_grace",
            Duration::ZERO,
            DEFAULT_SHUTDOWN_GRACE,
        );
        let defaults = Defaults {
            domain,
            refresh,
            empty_grace,
            tcp: raw.tcp.as_ref().is_some_and(|t| *t.get_ref()),
            datacenter,
        };

        let api_token = self.api_token(&global, &raw, sources);
        let runtime_file = raw.runtime_file.as_ref().and_then(|file| {
            if file.get_ref().is_empty() {
                self.problem_at(
                    &global,
                    file,
                    "runtime_file",
                    "must not be empty (leave it out instead)",
                );
                return None;
            }
            Some(relative_to(sources.path.as_deref(), file.get_ref()))
        });

        // Each with where it is defined.
        let mut listeners: Vec<(Listener, String)> = Vec::new();
        let api = Place::file(&sources.api);
        let written = [tables(&sources.main.text), tables(&sources.api.text)];
        let origins = [
            (self.file, &raw.listeners, Origin::File),
            (api, &raw_api.listeners, Origin::Api),
        ];
        for ((place, tables, origin), written) in origins.into_iter().zip(written) {
            for (name, table) in tables {
                let scope = Scope {
                    place,
                    prefix: format!("listeners.{name}."),
                };
                let location = place.at(&table.span());
                if origin == Origin::Api && raw.listeners.contains_key(name) {
                    let file = self.file.origin();
                    let message = format!(
                        "listeners.{name}: {file} defines a listener of this name; delete this one \
                         (DELETE /v1/listeners/{name}) or rename it"
                    );
                    self.problem(location, message);
                    continue;
                }
                if let Some(mut l) = self.listener(name, table.get_ref(), &scope, location.clone(), &defaults)
                {
                    l.origin = origin;
                    l.written = written.get(name).cloned().unwrap_or_default();
                    listeners.push((l, location));
                }
            }
        }
        for text in &overrides.listeners {
            let scope = Scope {
                place: Place::Shorthand(text),
                prefix: String::new(),
            };
            match shorthand::parse(text) {
                Ok((raw, written)) => {
                    let location = scope.place.at(&(0..0));
                    if let Some(mut l) = self.listener(text, &raw, &scope, location.clone(), &defaults) {
                        l.written = written;
                        listeners.push((l, location));
                    }
                }
                Err(e) => self.problem(format!("listener '{text}'"), e),
            }
        }
        // With the API on, listeners may all come from it later.
        let api_on = metrics.is_some() && api_token.is_some();
        if raw.listeners.is_empty()
            && raw_api.listeners.is_empty()
            && overrides.listeners.is_empty()
            && !api_on
        {
            self.problem(
                self.file.origin(),
                "no listeners: add a [listeners.NAME] table or a PORT:SERVICE argument".into(),
            );
        }
        self.clashes(&listeners, metrics);
        let listeners = listeners.into_iter().map(|(l, _)| l).collect();

        if self.problems.is_empty() {
            return Ok(Config {
                dns,
                consul,
                metrics,
                shutdown_grace,
                listeners,
                api_token,
                runtime_file,
                sources: Sources::default(),
            });
        }
        // In file order; locations without a line (the command line) last.
        let file = self.file;
        self.problems
            .sort_by_key(|p| file.line_of(&p.location).unwrap_or(usize::MAX));
        Err(ConfigError {
            problems: self.problems,
        })
    }

    /// Two listeners on one port and protocol whose addresses overlap (one
    /// of them is the wildcard, or both are the same): the second could not
    /// bind, or with `reuse_port` would silently take half the traffic.
    /// Also a TCP listener on the admin endpoint's address.
    fn clashes(&mut self, listeners: &[(Listener, String)], metrics: Option<SocketAddr>) {
        for (i, first) in listeners.iter().enumerate() {
            for second in &listeners[i + 1..] {
                let (a, b) = (&first.0, &second.0);
                if a.protocol() != b.protocol() || !binds_overlap(a.bind, b.bind) {
                    continue;
                }
                // The API's listener is the newcomer, if there is one.
                let api_first = a.origin == Origin::Api && b.origin == Origin::File;
                let (holder, (newcomer, at)) = if api_first { (b, first) } else { (a, second) };
                let origin = match holder.origin {
                    Origin::File => "the configuration",
                    Origin::Api => "the API",
                };
                let message = format!(
                    "{} is in use by listener '{}' (from {origin})",
                    newcomer.bind, holder.name
                );
                self.conflict(newcomer, at, message);
            }
            let (listener, at) = first;
            if listener.protocol() == Protocol::Tcp
                && metrics.is_some_and(|m| binds_overlap(listener.bind, m))
            {
                let message = format!("{} is the admin endpoint's (`metrics`)", listener.bind);
                self.conflict(listener, at, message);
            }
        }
    }

    fn conflict(&mut self, listener: &Listener, location: &str, message: String) {
        self.problems.push(Problem {
            location: location.to_string(),
            message: format!("listeners.{}.bind: {message}", listener.name),
            kind: ProblemKind::Conflict,
        });
    }

    /// `data_path`, or the older `splice` (true: splice, false: copy).
    fn data_path(&mut self, raw: &RawListener, scope: &Scope) -> DataPath {
        if let (Some(path), Some(_)) = (&raw.data_path, &raw.splice) {
            let message = "set `data_path` alone (`splice = false` is `data_path = \"copy\"`)";
            self.problem_at(scope, path, "data_path", message);
        }
        match (&raw.data_path, &raw.splice) {
            (Some(path), _) => path.get_ref().known().unwrap_or_else(|removed| {
                self.problem_at(scope, path, "data_path", removed);
                DataPath::Auto
            }),
            (None, Some(splice)) if *splice.get_ref() => DataPath::Splice,
            (None, Some(_)) => DataPath::Copy,
            (None, None) => DataPath::Auto,
        }
    }

    /// The API's bearer token: `api_token_file`'s contents (relative to the
    /// configuration's directory), else `SLUICE_API_TOKEN`.
    fn api_token(&mut self, global: &Scope, raw: &RawConfig, sources: &Sources) -> Option<Secret> {
        let Some(file) = &raw.api_token_file else {
            let env = sources
                .overrides
                .api_token_env
                .as_ref()
                .map(|secret| secret.0.trim());
            return env.filter(|t| !t.is_empty()).map(|t| Secret(t.to_string()));
        };
        let path = relative_to(sources.path.as_deref(), file.get_ref());
        let read = || -> Result<String, String> {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text))
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let token = text.trim();
            match token.len() {
                0 => Err(format!("{} is empty", path.display())),
                n if n as u64 > MAX_TOKEN_BYTES => Err(format!(
                    "{} is not a token: over {MAX_TOKEN_BYTES} bytes",
                    path.display()
                )),
                _ => Ok(token.to_string()),
            }
        };
        read()
            .map_err(|e| self.problem_at(global, file, "api_token_file", e))
            .ok()
            .map(Secret)
    }

    fn listener(
        &mut self,
        name: &str,
        raw: &RawListener,
        scope: &Scope,
        location: String,
        defaults: &Defaults,
    ) -> Option<Listener> {
        let before = self.problems.len();
        let table = scope.prefix.trim_end_matches('.');
        let bind = match &raw.bind {
            Some(b) => self.parsed(scope, b, "bind", parse_bind),
            None => {
                self.problem(location.clone(), format!("{table}: `bind` is required"));
                None
            }
        };
        let protocol = raw.protocol.as_ref().map_or(Protocol::Tcp, |p| *p.get_ref());
        for (key, span) in raw.misplaced(protocol) {
            let (owner, this) = match protocol {
                Protocol::Tcp => ("UDP", "tcp"),
                Protocol::Udp => ("TCP", "udp"),
            };
            let message = format!(
                "{}: a {owner} setting, but this listener's protocol is {this}",
                scope.key(key)
            );
            self.problem(scope.place.at(&span), message);
        }
        let backends = self.source(name, raw, scope, &location, defaults);
        let connect_timeout = self.duration(
            scope,
            raw.connect_timeout.as_ref(),
            "connect_timeout",
            TINY,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let sends_proxy = raw.proxy_protocol.as_ref().map(|v| *v.get_ref());
        let health = raw
            .health
            .as_ref()
            .map(|h| self.health(scope, h, protocol, sends_proxy));
        let eject_after = self.int(
            scope,
            raw.eject_after.as_ref(),
            "eject_after",
            0..=MAX_CHECK_COUNT,
            DEFAULT_EJECT_AFTER,
        ) as u32;
        let drain_timeout = raw
            .drain_timeout
            .as_ref()
            .map(|d| self.duration(scope, Some(d), "drain_timeout", Duration::ZERO, Duration::ZERO));
        let flag =
            |value: &Option<Spanned<bool>>, default: bool| value.as_ref().map_or(default, |v| *v.get_ref());
        let mode = match protocol {
            Protocol::Tcp => Mode::Tcp(TcpSettings {
                idle_timeout: self.duration(
                    scope,
                    raw.idle_timeout.as_ref(),
                    "idle_timeout",
                    TINY,
                    DEFAULT_IDLE_TIMEOUT,
                ),
                max_connections: self.int(
                    scope,
                    raw.max_connections.as_ref(),
                    "max_connections",
                    1..=MAX_COUNT,
                    crate::limits::default_max_connections(),
                ),
                access_log: flag(&raw.access_log, false),
                data_path: self.data_path(raw, scope),
                proxy_protocol: raw.proxy_protocol.as_ref().map(|v| *v.get_ref()),
                accept_proxy: flag(&raw.accept_proxy, false),
            }),
            Protocol::Udp => Mode::Udp(UdpSettings {
                idle_timeout: self.duration(
                    scope,
                    raw.udp_idle_timeout.as_ref(),
                    "udp_idle_timeout",
                    TINY,
                    DEFAULT_UDP_IDLE_TIMEOUT,
                ),
                max_flows: self.int(
                    scope,
                    raw.max_flows.as_ref(),
                    "max_flows",
                    1..=MAX_COUNT,
                    crate::limits::default_max_flows(),
                ),
                replies: flag(&raw.udp_replies, true),
            }),
        };

        if self.problems.len() > before {
            return None;
        }
        Some(Listener {
            name: name.to_string(),
            bind: bind?,
            backends: backends?,
            balance: raw.balance.as_ref().map_or(Balance::RoundRobin, |b| *b.get_ref()),
            connect_timeout,
            health,
            eject_after,
            drain_timeout,
            reuse_port: flag(&raw.reuse_port, false),
            mode,
            origin: Origin::File,
            written: toml::Table::new(),
        })
    }

    /// Where the listener's backends come from: exactly one of `service`
    /// (with an optional `tag`), `srv` or `backends`.
    fn source(
        &mut self,
        name: &str,
        raw: &RawListener,
        scope: &Scope,
        location: &str,
        defaults: &Defaults,
    ) -> Option<BackendSource> {
        let empty_grace = match &raw.empty_grace {
            Some(g) => self.duration(scope, Some(g), "empty_grace", Duration::ZERO, Duration::ZERO),
            None => defaults.empty_grace(),
        };
        let dns_query = |name: String| {
            BackendSource::Dns(SrvQuery {
                name,
                refresh: defaults.refresh,
                empty_grace,
                tcp: raw.tcp.as_ref().map_or(defaults.tcp, |t| *t.get_ref()),
            })
        };
        if let (Some(tag), None) = (&raw.tag, &raw.service) {
            self.problem_at(scope, tag, "tag", "only applies together with `service`");
        }
        if raw
            .discovery
            .as_ref()
            .is_some_and(|d| *d.get_ref() == Discovery::Consul)
        {
            return self.consul_source(raw, scope, location, empty_grace, defaults);
        }
        match (&raw.service, &raw.srv, &raw.backends) {
            (Some(service), None, None) => {
                let mut ok = true;
                if let Err(e) = check_label(service.get_ref()) {
                    self.problem_at(scope, service, "service", e);
                    ok = false;
                }
                if let Some(t) = &raw.tag
                    && let Err(e) = check_label(t.get_ref())
                {
                    self.problem_at(scope, t, "tag", e);
                    ok = false;
                }
                let tag = raw.tag.as_ref().map(|t| t.get_ref().as_str());
                ok.then(|| dns_query(consul_name(tag, service.get_ref(), &defaults.domain)))
            }
            (None, Some(srv), None) => {
                let name = srv.get_ref().trim_end_matches('.').to_ascii_lowercase();
                match check_dns_name(&name) {
                    Ok(()) => Some(dns_query(format!("{name}."))),
                    Err(e) => {
                        self.problem_at(scope, srv, "srv", e);
                        None
                    }
                }
            }
            (None, None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.problem_at(scope, list, "backends", "must list at least one address");
                }
                let addrs = list
                    .get_ref()
                    .iter()
                    .filter_map(|a| self.parsed(scope, a, "backends", parse_peer))
                    .collect();
                Some(BackendSource::Static(addrs))
            }
            (None, None, None) => {
                let message = format!("listeners.{name}: needs one of `service`, `srv` or `backends`");
                self.problem(location.to_string(), message);
                None
            }
            _ => {
                let message = format!("listeners.{name}: give only one of `service`, `srv` or `backends`");
                self.problem(location.to_string(), message);
                None
            }
        }
    }

    /// The check of a listener of `protocol`; a PROXY header on checks has
    /// the version the listener sends (`sends_proxy`), else v2.
    /// `discovery = "consul"`: the service (and tag) watched through
    /// Consul's HTTP API; DNS-only keys and static backends are errors.
    fn consul_source(
        &mut self,
        raw: &RawListener,
        scope: &Scope,
        location: &str,
        empty_grace: Duration,
        defaults: &Defaults,
    ) -> Option<BackendSource> {
        let dns_only = [
            ("srv", raw.srv.as_ref().map(Spanned::span)),
            ("backends", raw.backends.as_ref().map(Spanned::span)),
            ("tcp", raw.tcp.as_ref().map(Spanned::span)),
        ];
        for (key, span) in dns_only.into_iter().filter_map(|(k, s)| Some((k, s?))) {
            let message = format!(
                "{}: not with discovery = \"consul\" (it watches `service`)",
                scope.key(key)
            );
            self.problem(scope.place.at(&span), message);
        }
        let Some(service) = &raw.service else {
            let table = scope.prefix.trim_end_matches('.');
            self.problem(
                location.to_string(),
                format!("{table}: discovery = \"consul\" needs `service`"),
            );
            return None;
        };
        let mut ok = check_label(service.get_ref())
            .map_err(|e| self.problem_at(scope, service, "service", e))
            .is_ok();
        if let Some(t) = &raw.tag {
            ok &= check_label(t.get_ref())
                .map_err(|e| self.problem_at(scope, t, "tag", e))
                .is_ok();
        }
        ok.then(|| {
            BackendSource::Consul(ConsulQuery {
                service: service.get_ref().to_ascii_lowercase(),
                tag: raw.tag.as_ref().map(|t| t.get_ref().to_ascii_lowercase()),
                datacenter: defaults.datacenter.clone(),
                empty_grace,
            })
        })
    }

    fn health(
        &mut self,
        scope: &Scope,
        raw: &Spanned<RawHealth>,
        protocol: Protocol,
        sends_proxy: Option<ProxyVersion>,
    ) -> HealthCheck {
        let scope = &Scope {
            place: scope.place,
            prefix: scope.key("health."),
        };
        let (table, raw) = (raw, raw.get_ref());
        let interval = self.duration(
            scope,
            raw.interval.as_ref(),
            "interval",
            TINY,
            DEFAULT_CHECK_INTERVAL,
        );
        let timeout = self.duration(
            scope,
            raw.timeout.as_ref(),
            "timeout",
            TINY,
            DEFAULT_CHECK_TIMEOUT,
        );
        let checks = 1..=MAX_CHECK_COUNT;
        let rise = self.int(scope, raw.rise.as_ref(), "rise", checks.clone(), DEFAULT_RISE) as u32;
        let fall = self.int(scope, raw.fall.as_ref(), "fall", checks, DEFAULT_FALL) as u32;
        let send = self.check_bytes(scope, raw.send.as_ref(), "send");
        let expect = self.check_bytes(scope, raw.expect.as_ref(), "expect");
        if protocol == Protocol::Udp && send.is_none() {
            // UDP has no connection to check: a datagram must go out.
            let message = "a UDP check sends a datagram: set `send` (and `expect` to check the reply)";
            self.problem_at(scope, table, "send", message);
        }
        let port = raw
            .port
            .as_ref()
            .map(|p| self.int(scope, Some(p), "port", 1..=usize::from(u16::MAX), 1) as u16);
        let proxy_protocol = match &raw.proxy_protocol {
            Some(flag) if *flag.get_ref() && protocol == Protocol::Udp => {
                self.problem_at(
                    scope,
                    flag,
                    "proxy_protocol",
                    "PROXY protocol headers are for TCP checks only",
                );
                None
            }
            Some(flag) if *flag.get_ref() => Some(sends_proxy.unwrap_or(ProxyVersion::V2)),
            _ => None,
        };
        HealthCheck {
            protocol,
            interval,
            timeout,
            rise,
            fall,
            send,
            expect,
            port,
            proxy_protocol,
        }
    }
}
