//! Where a listener's backends come from: a DNS SRV query (`service`, `tag`,
//! `srv`), a Consul health watch (`discovery = "consul"`) or a static list.

use super::*;

impl Validator<'_> {
    /// Where the listener's backends come from: exactly one of `service`
    /// (with an optional `tag`), `srv` or `backends`.
    pub(super) fn source(
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
}
