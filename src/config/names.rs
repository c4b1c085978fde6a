//! The forms of names and addresses a configuration may hold: DNS labels and
//! names, Consul's SRV names, and addresses by what they are for (a DNS
//! server, a listener's bind, a backend), each refusing what cannot work.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::{ConsulAddr, DNS_PORT};

/// Consul's HTTP port, when an address has none.
const CONSUL_PORT: u16 = 8500;
use super::error::quoted;

/// DNS servers, comma-separated: each `ip:port`, `[v6]:port`, a bare IP, or
/// `host[:port]`, the port 53 if left out. A host name is looked up by
/// `resolve` and gives every address it has.
pub(super) fn parse_dns_servers(text: &str, resolve: Resolve<'_>) -> Result<Vec<SocketAddr>, String> {
    let mut servers = Vec::new();
    for one in text.split(',').map(str::trim) {
        for addr in parse_dns_server(one, resolve)? {
            if !servers.contains(&addr) {
                servers.push(addr);
            }
        }
    }
    Ok(servers)
}

/// Looks up a DNS server's host name: its addresses, or why none.
pub(super) type Resolve<'a> = &'a mut dyn FnMut(&str, u16) -> Result<Vec<SocketAddr>, String>;

/// The system resolver's answer for DNS server `host` (/etc/hosts first).
pub(super) fn system_resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| format!("cannot resolve DNS server {}: {e}", quoted(host)))
}

fn parse_dns_server(text: &str, resolve: Resolve<'_>) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return peer(addr).map(|a| vec![a]);
    }
    if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return peer(SocketAddr::new(ip, DNS_PORT)).map(|a| vec![a]);
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("invalid port in {}: expected HOST:PORT", quoted(text)))?;
            (host, port)
        }
        None => (text, DNS_PORT),
    };
    check_dns_name(host.trim_end_matches('.'))
        .map_err(|e| format!("invalid DNS server {}: {e}", quoted(text)))?;
    let usable: Vec<SocketAddr> = resolve(host, port)?
        .into_iter()
        .filter(|a| crate::net::unusable_peer(*a).is_none())
        .collect();
    if usable.is_empty() {
        return Err(format!(
            "DNS server {} resolves to no usable address",
            quoted(host)
        ));
    }
    Ok(usable)
}

/// Consul's HTTP address: `host:port` or `http://host:port[/prefix]`.
pub(super) fn parse_consul_addr(text: &str) -> Result<ConsulAddr, String> {
    let rest = match text.split_once("://") {
        None => text,
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{} is not supported: use http:// to the local Consul agent",
                quoted(&format!("{scheme}://"))
            ));
        }
    };
    let (authority, prefix) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let invalid = || {
        format!(
            "invalid Consul address {}: expected HOST:PORT or http://HOST:PORT",
            quoted(text)
        )
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid())?),
        None => (authority, CONSUL_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_err() {
        check_dns_name(host.trim_end_matches('.')).map_err(|_| invalid())?;
    }
    if port == 0 {
        return Err(invalid());
    }
    Ok(ConsulAddr {
        host: host.to_string(),
        port,
        prefix: prefix.to_string(),
    })
}

/// A backend to connect to: `ip:port` of a single unicast host.
pub(super) fn parse_peer(text: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(text).and_then(peer)
}

fn peer(addr: SocketAddr) -> Result<SocketAddr, String> {
    match crate::net::unusable_peer(addr) {
        Some(reason) => Err(format!("{addr} cannot be reached as a server: {reason}")),
        None => Ok(addr),
    }
}

/// Where a listener binds: `ip:port`, a wildcard or unicast address.
pub(super) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
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

/// Consul's SRV name: `[tag.]service.service.domain.`
pub(super) fn consul_name(tag: Option<&str>, service: &str, domain: &str) -> String {
    let service = service.to_ascii_lowercase();
    match tag {
        Some(tag) => format!("{}.{service}.service.{domain}.", tag.to_ascii_lowercase()),
        None => format!("{service}.service.{domain}."),
    }
}

/// One DNS label as Consul service and tag names use them (RFC 1123, plus
/// the `_` of SRV names).
pub(super) fn check_label(label: &str) -> Result<(), String> {
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

pub(super) fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{} is not a valid DNS name", quoted(name)));
    }
    name.split('.').try_for_each(check_label)
}
