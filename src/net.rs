//! Address facts the rest of sluice relies on: which addresses can be a peer
//! to connect or send to, and which socket binds where.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    fn binds_may_be_wildcards_but_not_group_addresses() {
        assert_eq!(unusable_bind("0.0.0.0".parse().unwrap()), None);
        assert_eq!(
            unusable_bind("224.0.0.1".parse().unwrap()),
            Some("a multicast address")
        );
    }
}
