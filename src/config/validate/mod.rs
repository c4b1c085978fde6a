//! Raw values → the model. Every value is checked against its bounds, every
//! default is filled in here (one place, for file and shorthand listeners
//! alike), and every problem is collected with where it is, so that `--check`
//! prints them all at once.

mod access;
mod catalog;
mod globals;
mod health;
mod listener;
mod source;

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
use super::sources::{Fetched, relative_to, tables};
use super::{
    BackendSource, Balance, Config, ConsulAddr, ConsulQuery, ConsulSettings, DataPath, DnsSettings,
    HealthCheck, Listener, MAX_DURATION, Mode, Origin, Protocol, ProxyVersion, Secret, Sources, SrvQuery,
    TcpSettings, Text, UdpSettings, shorthand,
};
use crate::access::Access;
use crate::net::binds_overlap;
use globals::Globals;

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
    /// Who may connect, and whose PROXY header is believed.
    access: Access,
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
    /// What the values point at, read beforehand.
    fetched: &'a Fetched,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    pub fn new(file: Place<'a>, fetched: &'a Fetched) -> Validator<'a> {
        Validator {
            file,
            fetched,
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
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        parse(value.get_ref())
            .map_err(|e| self.problem_at(scope, value, key, e))
            .ok()
    }

    /// A command-line value read by `parse`.
    fn cli<T>(
        &mut self,
        value: &str,
        flag: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
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
        raw_catalog: RawApiListeners,
        sources: &Sources,
    ) -> Result<Config, ConfigError> {
        let overrides = &sources.overrides;
        let global = Scope {
            place: self.file,
            prefix: String::new(),
        };
        let Globals {
            dns,
            consul,
            metrics,
            shutdown_grace,
            defaults,
            api_token,
            runtime_file,
        } = self.globals(&raw, sources, &global);
        let catalog = raw
            .catalog
            .as_ref()
            .and_then(|c| self.catalog(c, &global, &defaults));

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
            && catalog.is_none()
        {
            self.problem(
                self.file.origin(),
                "no listeners: add a [listeners.NAME] table or a PORT:SERVICE argument".into(),
            );
        }
        self.clashes(&listeners, metrics);
        let mut catalog_refused = sources.catalog.refused.clone();
        // Without `[catalog]` (any more), none of its listeners.
        if catalog.is_some() {
            let from_catalog = self.catalog_listeners(
                &raw_catalog,
                sources,
                &listeners,
                metrics,
                &defaults,
                &mut catalog_refused,
            );
            listeners.extend(from_catalog);
        } else {
            catalog_refused.clear();
        }
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
                catalog,
                catalog_refused,
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
}
