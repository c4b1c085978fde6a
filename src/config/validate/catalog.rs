//! `[catalog]`, and the listeners the catalog asks for: validated as any
//! listener, but a problem in one refuses that listener (with the same
//! message the file would get) instead of the whole configuration, and a
//! port the file or the API holds is theirs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::*;
use crate::config::catalog::{CatalogSettings, Refusal, RefusalReason};
use crate::config::error::quoted;
use crate::config::raw::RawCatalog;
use crate::config::sources::document;

const DEFAULT_TAG_PREFIX: &str = "sluice";
const DEFAULT_PORTS: RangeInclusive<u16> = 1024..=65535;
/// Keys the catalog sets for each listener itself.
const NOT_DEFAULTS: &[&str] = &[
    "bind",
    "protocol",
    "service",
    "tag",
    "srv",
    "backends",
    "discovery",
];

impl Validator<'_> {
    /// `[catalog]`'s own keys; its listener keys checked as defaults.
    pub(super) fn catalog(
        &mut self,
        raw: &Spanned<RawCatalog>,
        global: &Scope,
        defaults: &Defaults,
    ) -> Option<CatalogSettings> {
        let location = global.place.at(&raw.span());
        let table = raw.get_ref();
        let problem =
            |this: &mut Self, message: String| this.problem(location.clone(), format!("catalog.{message}"));
        let tag_prefix = table
            .tag_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_TAG_PREFIX.into());
        if tag_prefix.is_empty() || tag_prefix.contains(['=', ' ']) {
            problem(
                self,
                format!("tag_prefix: {} is not a tag prefix", quoted(&tag_prefix)),
            );
        }
        let bind = match &table.bind {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(text) => match text.parse::<IpAddr>() {
                Ok(ip) => {
                    if let Some(why) = crate::net::unusable_bind(ip) {
                        problem(self, format!("bind: {} {why}", quoted(text)));
                    }
                    ip
                }
                Err(_) => {
                    problem(self, format!("bind: {} is not an IP address", quoted(text)));
                    IpAddr::from([0, 0, 0, 0])
                }
            },
        };
        let ports = match &table.ports {
            None => vec![DEFAULT_PORTS],
            Some(ports) => {
                let text = ports.joined();
                match parse_ports(&text) {
                    Ok(ports) => ports,
                    Err(e) => {
                        problem(self, format!("ports: {e}"));
                        Vec::new()
                    }
                }
            }
        };
        for key in table
            .defaults
            .keys()
            .filter(|k| NOT_DEFAULTS.contains(&k.as_str()))
        {
            problem(
                self,
                format!("{key}: set by the catalog for each listener, not a default"),
            );
        }
        let settings = CatalogSettings {
            tag_prefix,
            bind,
            ports,
            defaults: table.defaults.clone(),
            datacenter: defaults.datacenter.clone(),
            empty_grace: defaults.empty_grace(),
        };
        self.catalog_defaults(&settings, &location, defaults);
        Some(settings)
    }

    /// Checks the defaults as the keys of one listener, so that a bad one is
    /// an error at load, not a refusal of every catalog listener later.
    fn catalog_defaults(&mut self, settings: &CatalogSettings, location: &str, defaults: &Defaults) {
        let mut probe = settings.defaults.clone();
        probe.retain(|key, _| !NOT_DEFAULTS.contains(&key));
        probe.insert("bind".into(), "127.0.0.1:1".into());
        probe.insert("service".into(), "catalog".into());
        probe.insert("discovery".into(), "consul".into());
        let text = Text {
            origin: String::new(),
            text: document(&BTreeMap::from([("catalog".to_string(), probe)])),
        };
        let raw: RawApiListeners = match toml::from_str(&text.text) {
            Ok(raw) => raw,
            Err(e) => {
                let message = format!("catalog: {}", e.message().trim_end());
                self.problem(location.into(), message);
                return;
            }
        };
        let Some(table) = raw.listeners.get("catalog") else {
            return;
        };
        let scope = Scope {
            place: Place::file(&text),
            prefix: "listeners.catalog.".into(),
        };
        let before = self.problems.len();
        self.listener("catalog", table.get_ref(), &scope, String::new(), defaults);
        for problem in &mut self.problems[before..] {
            problem.location = location.into();
            if let Some(rest) = problem.message.strip_prefix("listeners.catalog.") {
                problem.message = format!("catalog.{rest}");
            }
        }
    }

    /// The catalog's listeners that can be served beside `listeners` (the
    /// file's and the API's); the others go to `refused`.
    pub(super) fn catalog_listeners(
        &mut self,
        raw: &RawApiListeners,
        sources: &Sources,
        listeners: &[(Listener, String)],
        metrics: Option<SocketAddr>,
        defaults: &Defaults,
        refused: &mut Vec<Refusal>,
    ) -> Vec<(Listener, String)> {
        let catalog = &sources.catalog;
        let place = Place::file(&catalog.text);
        let written = tables(&catalog.text.text);
        let mut served: Vec<(Listener, String)> = Vec::new();
        for name in &catalog.order {
            let Some(table) = raw.listeners.get(name) else {
                continue;
            };
            let (service, tag) = catalog.claimed_by.get(name).cloned().unwrap_or_default();
            let mut refuse = |reason, message| {
                let (service, tag) = (service.clone(), tag.clone());
                refused.push(Refusal {
                    service,
                    tag,
                    reason,
                    message,
                })
            };
            if listeners.iter().any(|(l, _)| l.name == *name) {
                let message = format!("a listener named '{name}' is defined in the configuration or the API");
                refuse(RefusalReason::Conflict, message);
                continue;
            }
            let scope = Scope {
                place,
                prefix: format!("listeners.{name}."),
            };
            let location = place.at(&table.span());
            let before = self.problems.len();
            let listener = self.listener(name, table.get_ref(), &scope, location.clone(), defaults);
            if self.problems.len() > before {
                let problems: Vec<String> = self.problems.drain(before..).map(|p| p.message).collect();
                refuse(RefusalReason::Invalid, problems.join("; "));
                continue;
            }
            let Some(mut listener) = listener else {
                continue;
            };
            let overlaps = |bind| listener.protocol() == Protocol::Tcp && binds_overlap(listener.bind, bind);
            let holds = |(l, _): &&(Listener, String)| {
                l.protocol() == listener.protocol() && binds_overlap(l.bind, listener.bind)
            };
            if let Some((holder, _)) = listeners.iter().find(holds) {
                let message = format!("{} is in use by listener '{}'", listener.bind, holder.name);
                refuse(RefusalReason::Conflict, message);
                continue;
            }
            if let Some((holder, _)) = served.iter().find(holds) {
                let (service, _) = catalog.claimed_by.get(&holder.name).cloned().unwrap_or_default();
                let message = format!("{} is claimed by service '{service}' already", listener.bind);
                refuse(RefusalReason::Conflict, message);
                continue;
            }
            if metrics.is_some_and(overlaps) {
                let message = format!("{} is the admin endpoint's (`metrics`)", listener.bind);
                refuse(RefusalReason::Conflict, message);
                continue;
            }
            listener.origin = Origin::Catalog;
            listener.written = written.get(name).cloned().unwrap_or_default();
            served.push((listener, location));
        }
        refused.sort();
        served
    }
}

/// `ports`: `A-B` ranges or single ports, comma-separated.
fn parse_ports(text: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{} is not a port (1 to 65535)", quoted(p.trim())))
    };
    let mut ranges = Vec::new();
    for one in text.split(',').map(str::trim) {
        let range = match one.split_once('-') {
            Some((low, high)) => port(low)?..=port(high)?,
            None => port(one)?..=port(one)?,
        };
        if range.is_empty() {
            return Err(format!("{} is an empty range", quoted(one)));
        }
        ranges.push(range);
    }
    Ok(ranges)
}
