//! A listener's own keys: protocol settings, limits and timeouts, and the
//! checks across listeners (two on one address).

use super::access::RawAccess;
use super::*;

impl Validator<'_> {
    pub(super) fn listener(
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

        let raw_access = RawAccess {
            allow: raw.allow.as_ref(),
            deny: raw.deny.as_ref(),
            trusted_proxies: raw.trusted_proxies.as_ref(),
        };
        let access = self.access(scope, raw_access, &defaults.access);
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
            access,
            mode,
            origin: Origin::File,
            written: toml::Table::new(),
        })
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

    /// Two listeners on one port and protocol whose addresses overlap (one
    /// of them is the wildcard, or both are the same): the second could not
    /// bind, or with `reuse_port` would silently take half the traffic.
    /// Also a TCP listener on the admin endpoint's address.
    pub(super) fn clashes(&mut self, listeners: &[(Listener, String)], metrics: Option<SocketAddr>) {
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
                    Origin::Catalog => "the catalog",
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
}
