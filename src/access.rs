//! Who may connect (`allow`, `deny`) and whose PROXY header is believed
//! (`trusted_proxies`): address prefixes, kept as sorted, merged ranges per
//! family, so that a lookup is one binary search however many thousands of
//! entries there are. IPv4-mapped IPv6 sources are judged as IPv4.

use std::fmt;
use std::net::IpAddr;

/// A set of address prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefixes {
    /// Inclusive ranges, sorted and disjoint; IPv4 as numbers below 2^32.
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl Prefixes {
    /// `entries`, each `ADDR` or `ADDR/LEN`; the first that is not, with why.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Prefixes, (String, String)> {
        let mut prefixes = Prefixes::default();
        for entry in entries {
            let refuse = |why: &str| (entry.to_string(), why.to_string());
            let (addr, len) = match entry.split_once('/') {
                Some((addr, len)) => (
                    addr,
                    Some(
                        len.parse::<u8>()
                            .map_err(|_| refuse("the prefix length is not a number"))?,
                    ),
                ),
                None => (entry, None),
            };
            let addr: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| refuse("not an IP address or CIDR prefix"))?;
            // An IPv4-mapped prefix is the IPv4 one, as sources are judged.
            let (addr, len) = match (addr.to_canonical(), len) {
                (IpAddr::V4(v4), Some(len)) if addr.is_ipv6() && len >= 96 => {
                    (IpAddr::V4(v4), Some(len - 96))
                }
                (IpAddr::V4(v4), None) => (IpAddr::V4(v4), None),
                _ => (addr, len),
            };
            match addr {
                IpAddr::V4(ip) => {
                    let len = len.unwrap_or(32);
                    if len > 32 {
                        return Err(refuse("an IPv4 prefix is at most /32"));
                    }
                    prefixes.v4.push(range(u128::from(u32::from(ip)), len, 32));
                }
                IpAddr::V6(ip) => {
                    let len = len.unwrap_or(128);
                    if len > 128 {
                        return Err(refuse("an IPv6 prefix is at most /128"));
                    }
                    prefixes.v6.push(range(u128::from(ip), len, 128));
                }
            }
        }
        merge(&mut prefixes.v4);
        merge(&mut prefixes.v6);
        Ok(prefixes)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in one of the prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => holds(&self.v4, u128::from(u32::from(ip))),
            IpAddr::V6(ip) => holds(&self.v6, u128::from(ip)),
        }
    }

    /// How many merged ranges: for the status page.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// The addresses of `addr`/`len` in a `bits`-wide space, first and last.
fn range(addr: u128, len: u8, bits: u32) -> (u128, u128) {
    let host_bits = bits - u32::from(len);
    let host_mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    (addr & !host_mask, addr | host_mask)
}

/// Sorts `ranges` and merges those that overlap or touch.
fn merge(ranges: &mut Vec<(u128, u128)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

fn holds(ranges: &[(u128, u128)], value: u128) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= value);
    after > 0 && value <= ranges[after - 1].1
}

/// A listener's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Sources that may connect; `None`: any.
    pub allow: Option<Prefixes>,
    /// Checked first: a match is refused even if allowed.
    pub deny: Prefixes,
    /// With `accept_proxy`: the peers whose PROXY header is believed; `None`: every peer.
    pub trusted_proxies: Option<Prefixes>,
}

/// Why a source was refused, as the metric's `reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A `deny` match, or no `allow` match.
    Denied,
    /// A PROXY header from a peer not in `trusted_proxies`.
    UntrustedProxy,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Denied => "denied",
            Refused::UntrustedProxy => "untrusted_proxy",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Access {
    /// Whether there is any rule on sources.
    pub fn judges_sources(&self) -> bool {
        self.allow.is_some() || !self.deny.is_empty()
    }

    /// Whether `source` may connect.
    pub fn admits(&self, source: IpAddr) -> Result<(), Refused> {
        let denied =
            self.deny.contains(source) || self.allow.as_ref().is_some_and(|allow| !allow.contains(source));
        if denied { Err(Refused::Denied) } else { Ok(()) }
    }

    /// Whether `peer` may send a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> Result<(), Refused> {
        match &self.trusted_proxies {
            Some(trusted) if !trusted.contains(peer) => Err(Refused::UntrustedProxy),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_match_by_family_and_mapped_ipv4_as_ipv4() {
        let p = Prefixes::parse(["10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.1.0.0/16"]).unwrap();
        assert!(p.contains(ip("10.255.0.1")));
        assert!(p.contains(ip("192.168.1.7")));
        assert!(!p.contains(ip("192.168.1.8")));
        assert!(p.contains(ip("fd12::1")));
        assert!(!p.contains(ip("fe80::1")));
        assert!(p.contains(ip("::ffff:10.0.0.1")));
        assert_eq!(p.len(), 3, "10.1/16 merged into 10/8");
        let all = Prefixes::parse(["0.0.0.0/0", "::/0"]).unwrap();
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("ffff::1")));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (bad, says) in [
            ("10.0.0.0/33", "at most /32"),
            ("::/129", "at most /128"),
            ("web", "not an IP"),
            ("1.2.3.4/x", "length"),
        ] {
            let (entry, why) = Prefixes::parse([bad]).unwrap_err();
            assert_eq!(entry, bad);
            assert!(why.contains(says), "{bad}: {why}");
        }
    }

    #[test]
    fn deny_is_checked_before_allow() {
        let access = Access {
            allow: Some(Prefixes::parse(["10.0.0.0/8"]).unwrap()),
            deny: Prefixes::parse(["10.1.2.0/24"]).unwrap(),
            trusted_proxies: None,
        };
        assert_eq!(access.admits(ip("10.0.0.1")), Ok(()));
        assert_eq!(access.admits(ip("10.1.2.3")), Err(Refused::Denied));
        assert_eq!(access.admits(ip("11.0.0.1")), Err(Refused::Denied));
    }
}
