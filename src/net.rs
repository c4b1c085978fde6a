//! Address facts the rest of sluice relies on: which addresses can be a peer
//! to connect or send to, which socket binds where, and which backends would
//! loop back into sluice itself; and the transport protocols a listener
//! speaks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A listener's (and its backends') transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Any local address of `addr`'s family, any port: where a socket that
/// talks to `addr` binds.
pub(crate) fn any_addr_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Why nothing can be reached at `addr` as a single peer, if so: port 0,
/// or an unspecified (it means "this host" and reaches whatever listens
/// locally), broadcast or multicast address.
pub fn unusable_peer(addr: SocketAddr) -> Option<&'static str> {
    if addr.port() == 0 {
        return Some("port 0");
    }
    not_unicast(addr.ip()).or(addr.ip().is_unspecified().then_some("an unspecified address"))
}

/// Why a socket cannot be bound to `ip` for a listener, if so.
pub fn unusable_bind(ip: IpAddr) -> Option<&'static str> {
    not_unicast(ip)
}

fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        ip if ip.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// The sockets sluice listens on. A backend that is one of them would send
/// each connection back into sluice, which forwards it to itself again,
/// until every descriptor is used: such a backend is never used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnSockets(Vec<(Protocol, SocketAddr)>);

impl OwnSockets {
    pub fn new(sockets: impl IntoIterator<Item = (Protocol, SocketAddr)>) -> OwnSockets {
        let mut sockets: Vec<_> = sockets.into_iter().collect();
        sockets.sort();
        OwnSockets(sockets)
    }

    /// Whether what is sent to `addr` over `protocol` reaches one of them.
    pub fn reached_by(&self, protocol: Protocol, addr: SocketAddr) -> bool {
        let to = addr.ip().to_canonical();
        let mut candidates = self
            .0
            .iter()
            .filter(|(p, bound)| *p == protocol && bound.port() == addr.port());
        candidates.any(|(_, bound)| match bound.ip() {
            ip if ip.to_canonical() == to => true,
            // A wildcard bind receives on every local address of its family,
            // and `[::]` on IPv4 ones too (dual-stack, Linux's default).
            IpAddr::V4(ip) if ip.is_unspecified() => to.is_ipv4() && is_local(to),
            IpAddr::V6(ip) if ip.is_unspecified() => is_local(to),
            _ => false,
        })
    }
}

/// Whether `ip` is one of this host's addresses (all of 127.0.0.0/8 is).
pub(crate) fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || if_addrs::get_if_addrs().is_ok_and(|interfaces| interfaces.iter().any(|i| i.ip() == ip))
}

/// Whether sockets bound to `a` and `b` (one protocol) would take the same
/// port: the same address, or one of them the wildcard. Port 0 asks the
/// kernel for a free port: no clash possible.
pub fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let addresses = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
    addresses && a.port() == b.port() && a.port() != 0
}

/// Which program holds `addr` (for `protocol`), as `pid N (name)`, read from
/// /proc: the socket bound there, then the process with it open. `None`
/// when that cannot be known (another user's process, no /proc).
pub fn port_holder(protocol: Protocol, addr: SocketAddr) -> Option<String> {
    let (tables, bound_state) = match protocol {
        // TCP: LISTEN; UDP: unconnected.
        Protocol::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
        Protocol::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"),
    };
    let inode = tables.iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let bound = proc_net_addr(local)?;
            (*state == bound_state && binds_overlap(bound, addr)).then(|| inode.to_string())
        })
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|process| {
        let pid: u32 = process.file_name().to_str()?.parse().ok()?;
        let mut fds = std::fs::read_dir(process.path().join("fd")).ok()?.flatten();
        fds.find(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str())
        })?;
        let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
        Some(format!("pid {pid} ({})", name.trim()))
    })
}

/// An address as /proc/net/{tcp,udp}[6] write it: hex of the address in
/// 32-bit words in host (little-endian) order, a colon, hex of the port.
fn proc_net_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..ip.len() / 8)
        .map(|i| {
            u32::from_str_radix(ip.get(8 * i..8 * i + 8)?, 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [v4] => IpAddr::from(*v4),
        [a, b, c, d] => IpAddr::from(
            [*a, *b, *c, *d]
                .concat()
                .try_into()
                .ok()
                .map(|bytes: [u8; 16]| bytes)?,
        ),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_must_be_unicast_with_a_port() {
        let reason = |s: &str| unusable_peer(s.parse().unwrap());
        assert_eq!(reason("10.0.0.1:80"), None);
        assert_eq!(reason("[::1]:80"), None);
        assert_eq!(reason("10.0.0.1:0"), Some("port 0"));
        assert_eq!(reason("0.0.0.0:80"), Some("an unspecified address"));
        assert_eq!(reason("[::]:80"), Some("an unspecified address"));
        assert_eq!(reason("255.255.255.255:80"), Some("the broadcast address"));
        assert_eq!(reason("224.0.0.1:80"), Some("a multicast address"));
        assert_eq!(reason("[ff02::1]:80"), Some("a multicast address"));
    }

    #[test]
    fn own_sockets_are_recognised_behind_wildcards_and_other_loopbacks() {
        let own = OwnSockets::new([
            (Protocol::Tcp, "0.0.0.0:2003".parse().unwrap()),
            (Protocol::Udp, "[::]:8125".parse().unwrap()),
            (Protocol::Tcp, "127.0.0.1:6400".parse().unwrap()),
        ]);
        let reached = |protocol, addr: &str| own.reached_by(protocol, addr.parse().unwrap());
        assert!(reached(Protocol::Tcp, "127.0.0.2:2003"));
        assert!(reached(Protocol::Tcp, "127.0.0.1:6400"));
        assert!(reached(Protocol::Udp, "127.0.0.5:8125"), "[::] is dual-stack");
        assert!(reached(Protocol::Udp, "[::1]:8125"));
        assert!(reached(Protocol::Tcp, "[::ffff:127.0.0.1]:6400"));
        assert!(!reached(Protocol::Udp, "127.0.0.2:2003"), "another protocol");
        assert!(
            !reached(Protocol::Tcp, "127.0.0.2:6400"),
            "bound to 127.0.0.1 only"
        );
        assert!(!reached(Protocol::Tcp, "192.0.2.1:2003"), "not this host");
        assert!(!reached(Protocol::Tcp, "[::1]:2003"), "0.0.0.0 is IPv4 only");
        let host = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .find(|i| !i.is_loopback());
        if let Some(host) = host {
            let addr = SocketAddr::new(host.ip(), 2003).to_string();
            assert!(reached(Protocol::Tcp, &addr), "the host's own {addr}");
        }
    }

    #[test]
    fn binds_may_be_wildcards_but_not_group_addresses() {
        assert_eq!(unusable_bind("0.0.0.0".parse().unwrap()), None);
        assert_eq!(
            unusable_bind("224.0.0.1".parse().unwrap()),
            Some("a multicast address")
        );
    }
}
