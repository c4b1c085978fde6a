//! A listener's active health check (`[listeners.NAME.health]`).

use super::*;

impl Validator<'_> {
    /// The check of a listener of `protocol`; a PROXY header on checks has
    /// the version the listener sends (`sends_proxy`), else v2.
    pub(super) fn health(
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
