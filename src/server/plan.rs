//! What a reload changes, decided before anything is done: [`plan`] compares
//! the listeners that run with a new configuration and lists the changes;
//! `Running::apply` then carries them out. Deciding is pure, so it is
//! table-tested on its own.

use std::collections::HashMap;

use crate::config::{BackendSource, Config, ConsulSettings, DnsSettings, Listener};

/// One step of a reload.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// A listener no longer configured: it stops accepting, its connections drain.
    Stop(String),
    /// Same name, but another socket is needed (address, protocol or
    /// `reuse_port` changed): the old one stops as above, this one starts.
    Rebind(Listener),
    /// New settings on the same socket, for new connections. With
    /// `same_backends`, backends keep their counters and connections;
    /// otherwise the old backends' connections drain.
    Update { listener: Listener, same_backends: bool },
    /// A new listener: bind and serve.
    Start(Listener),
}

/// Every change a reload makes, stops first and starts last.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub changes: Vec<Change>,
    /// The DNS server changed: every DNS source starts over.
    pub dns_changed: bool,
    /// Consul's address or token changed: every Consul watch starts over.
    pub consul_changed: bool,
}

/// The changes that turn `running` (with `running_dns` and `running_consul`
/// as configured) into `new`.
pub(super) fn plan<'a>(
    running: impl IntoIterator<Item = &'a Listener>,
    running_dns: &DnsSettings,
    running_consul: &ConsulSettings,
    new: &Config,
) -> Plan {
    let running: HashMap<&str, &Listener> = running.into_iter().map(|l| (l.name.as_str(), l)).collect();
    let dns_changed = *running_dns != new.dns;
    let consul_changed = *running_consul != new.consul;
    let mut changes = Vec::new();
    for name in running.keys() {
        if !new.listeners.iter().any(|l| l.name == *name) {
            changes.push(Change::Stop(name.to_string()));
        }
    }
    for listener in &new.listeners {
        let Some(old) = running.get(listener.name.as_str()) else {
            changes.push(Change::Start(listener.clone()));
            continue;
        };
        if needs_new_socket(old, listener) {
            changes.push(Change::Rebind(listener.clone()));
            continue;
        }
        let rediscovered = match listener.backends {
            BackendSource::Dns(_) => dns_changed,
            BackendSource::Consul(_) => consul_changed,
            BackendSource::Static(_) => false,
        };
        if *old != listener || rediscovered {
            changes.push(Change::Update {
                listener: listener.clone(),
                same_backends: old.backends == listener.backends && !rediscovered,
            });
        }
    }
    changes.sort_by_key(|change| match change {
        Change::Stop(name) => (0, name.clone()),
        Change::Rebind(l) => (1, l.name.clone()),
        Change::Update { listener, .. } => (2, listener.name.clone()),
        Change::Start(l) => (3, l.name.clone()),
    });
    Plan {
        changes,
        dns_changed,
        consul_changed,
    }
}

/// Whether a change to `old` can only be applied with a new socket.
fn needs_new_socket(old: &Listener, new: &Listener) -> bool {
    old.bind != new.bind || old.protocol() != new.protocol() || old.reuse_port != new.reuse_port
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml", &Overrides::default()).unwrap()
    }

    const A: &str = "[listeners.a]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:9\"]\n";
    const A_OTHER_BACKENDS: &str = "[listeners.a]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:8\"]\n";
    const A_OTHER_BALANCE: &str =
        "[listeners.a]\nbind = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:9\"]\nbalance = \"p2c\"\n";
    const A_OTHER_PORT: &str = "[listeners.a]\nbind = \"127.0.0.1:2\"\nbackends = [\"127.0.0.1:9\"]\n";
    const A_UDP: &str =
        "[listeners.a]\nbind = \"127.0.0.1:1\"\nprotocol = \"udp\"\nbackends = [\"127.0.0.1:9\"]\n";
    const B: &str = "[listeners.b]\nbind = \"127.0.0.1:3\"\nbackends = [\"127.0.0.1:9\"]\n";
    const D: &str = "[listeners.d]\nbind = \"127.0.0.1:4\"\nservice = \"redis\"\n";

    /// The plan from `old` to `new`, as names: ("stop a", "update a same", ...).
    fn steps(old: &str, new: &str) -> Vec<String> {
        let (old, new) = (config(old), config(new));
        let plan = plan(&old.listeners, &old.dns, &old.consul, &new);
        plan.changes
            .iter()
            .map(|c| match c {
                Change::Stop(name) => format!("stop {name}"),
                Change::Rebind(l) => format!("rebind {}", l.name),
                Change::Update {
                    listener,
                    same_backends: true,
                } => format!("update {} keeping backends", listener.name),
                Change::Update { listener, .. } => format!("update {} with new backends", listener.name),
                Change::Start(l) => format!("start {}", l.name),
            })
            .collect()
    }

    #[test]
    fn each_kind_of_change() {
        let table: &[(&str, String, String, &[&str])] = &[
            ("nothing changed", A.into(), A.into(), &[]),
            ("added", A.into(), format!("{A}{B}"), &["start b"]),
            ("removed", format!("{A}{B}"), A.into(), &["stop b"]),
            (
                "settings",
                A.into(),
                A_OTHER_BALANCE.into(),
                &["update a keeping backends"],
            ),
            (
                "backends",
                A.into(),
                A_OTHER_BACKENDS.into(),
                &["update a with new backends"],
            ),
            ("address", A.into(), A_OTHER_PORT.into(), &["rebind a"]),
            ("protocol", A.into(), A_UDP.into(), &["rebind a"]),
            (
                "all at once, stops first",
                format!("{A}{D}"),
                format!("{A_OTHER_PORT}{B}"),
                &["stop d", "rebind a", "start b"],
            ),
        ];
        for (what, old, new, want) in table {
            assert_eq!(steps(old, new), *want, "{what}");
        }
    }

    #[test]
    fn a_new_consul_token_rewatches_consul_listeners_only() {
        let consul = "[listeners.c]\nbind = \"127.0.0.1:5\"\nservice = \"web\"\ndiscovery = \"consul\"\n";
        let old = format!("consul_token = \"a\"\n{A}{D}{consul}");
        let new = format!("consul_token = \"b\"\n{A}{D}{consul}");
        assert_eq!(steps(&old, &new), ["update c with new backends"]);
    }

    #[test]
    fn a_new_dns_server_rediscovers_dns_listeners_only() {
        let old = format!("dns = \"127.0.0.1:53\"\n{A}{D}");
        let new = format!("dns = \"127.0.0.2:53\"\n{A}{D}");
        assert_eq!(steps(&old, &new), ["update d with new backends"]);
        let (old, new) = (config(&old), config(&new));
        assert!(plan(&old.listeners, &old.dns, &old.consul, &new).dns_changed);
    }
}
