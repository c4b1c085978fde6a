//! The top-level keys: DNS, Consul, the admin endpoint, the API's token
//! and the defaults every listener inherits.

use std::path::PathBuf;

use super::access::RawAccess;
use super::*;

/// The top-level settings, validated.
pub(super) struct Globals {
    pub dns: DnsSettings,
    pub consul: ConsulSettings,
    pub metrics: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    pub defaults: Defaults,
    pub api_token: Option<Secret>,
    pub runtime_file: Option<PathBuf>,
}

impl Validator<'_> {
    pub(super) fn globals(&mut self, raw: &RawConfig, sources: &Sources, global: &Scope) -> Globals {
        let overrides = &sources.overrides;
        let fetched = self.fetched;
        let dns_servers =
            |text: &str| parse_dns_servers(text, &mut |host, port| fetched.resolved(host, port));
        let dns = match (&overrides.dns, &raw.dns) {
            (Some(cli), _) => self.cli(cli, "--dns", dns_servers),
            (None, Some(file)) => {
                let servers = Spanned::new(file.span(), file.get_ref().joined());
                self.parsed(global, &servers, "dns", dns_servers)
            }
            (None, None) => None,
        };
        let dns = DnsSettings {
            servers: dns.unwrap_or_default(),
            timeout: self.duration(
                global,
                raw.dns_timeout.as_ref(),
                "dns_timeout",
                TINY,
                DEFAULT_DNS_TIMEOUT,
            ),
            attempts: self.int(
                global,
                raw.dns_attempts.as_ref(),
                "dns_attempts",
                1..=MAX_DNS_ATTEMPTS,
                DEFAULT_DNS_ATTEMPTS,
            ) as u32,
        };
        let metrics = match (&overrides.metrics, &raw.metrics) {
            (Some(cli), _) => self.cli(cli, "--metrics", parse_bind),
            (None, Some(file)) => self.parsed(global, file, "metrics", parse_bind),
            (None, None) => None,
        };
        let consul_addr = match (&raw.consul, &overrides.consul_env) {
            (Some(file), _) => self.parsed(global, file, "consul", parse_consul_addr),
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
                .map_err(|e| self.problem_at(global, dc, "datacenter", e))
                .ok()
                .map(|()| dc.get_ref().to_ascii_lowercase())
        });
        let domain = match &raw.domain {
            Some(d) => {
                let domain = d.get_ref().trim_matches('.').to_ascii_lowercase();
                if let Err(e) = check_dns_name(&domain) {
                    self.problem_at(global, d, "domain", e);
                }
                domain
            }
            None => DEFAULT_DOMAIN.to_string(),
        };
        let refresh = self.duration(
            global,
            raw.refresh.as_ref(),
            "refresh",
            MIN_REFRESH,
            DEFAULT_REFRESH,
        );
        let empty_grace = raw
            .empty_grace
            .as_ref()
            .map(|g| self.duration(global, Some(g), "empty_grace", Duration::ZERO, Duration::ZERO));
        let shutdown_grace = self.duration(
            global,
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
            access: Access::default(),
        };
        let raw_access = RawAccess {
            allow: raw.allow.as_ref(),
            deny: raw.deny.as_ref(),
            trusted_proxies: raw.trusted_proxies.as_ref(),
        };
        let defaults = Defaults {
            access: self.access(global, raw_access, &Access::default()),
            ..defaults
        };

        let api_token = self.api_token(global, raw, sources);
        let runtime_file = raw.runtime_file.as_ref().and_then(|file| {
            if file.get_ref().is_empty() {
                self.problem_at(
                    global,
                    file,
                    "runtime_file",
                    "must not be empty (leave it out instead)",
                );
                return None;
            }
            Some(relative_to(sources.path.as_deref(), file.get_ref()))
        });

        Globals {
            dns,
            consul,
            metrics,
            shutdown_grace,
            defaults,
            api_token,
            runtime_file,
        }
    }

    /// The API's bearer token: `api_token_file`'s contents (relative to the
    /// configuration's directory), else `SLUICE_API_TOKEN`.
    pub(super) fn api_token(&mut self, global: &Scope, raw: &RawConfig, sources: &Sources) -> Option<Secret> {
        let Some(file) = &raw.api_token_file else {
            let env = sources
                .overrides
                .api_token_env
                .as_ref()
                .map(|secret| secret.0.trim());
            return env.filter(|t| !t.is_empty()).map(|t| Secret(t.to_string()));
        };
        let fetched = self.fetched.token.clone()?;
        fetched
            .map_err(|e| self.problem_at(global, file, "api_token_file", e))
            .ok()
            .map(Secret)
    }
}
