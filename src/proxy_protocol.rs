//! The PROXY protocol (HAProxy's; v1 a text line, v2 binary), both ways:
//! parsing the header a fronting balancer puts before a client's bytes
//! (`accept_proxy`, read by the TCP proxy), and writing one before ours to
//! a backend (`proxy_protocol`, by the proxy and health checks), so that
//! each hop knows the real client. The wire format is the `ppp` crate's;
//! what is sluice's is its bounds and what an address-less header (LOCAL,
//! UNKNOWN) means.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};

use crate::config::ProxyVersion;

/// The largest header read: a v2 header with more TLVs than fit in this is
/// refused.
pub const MAX_HEADER: usize = 4096;
/// The longest v1 line, CRLF included (the specification's).
const V1_MAX: usize = 107;

/// Whom a connection is for. Without a PROXY header, or with an
/// address-less one (LOCAL: the fronting balancer's own check), the peer
/// itself and the address it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub client: SocketAddr,
    pub destination: SocketAddr,
    /// False for LOCAL and UNKNOWN headers: nothing to announce further on.
    pub announced: bool,
}

/// Why a client's PROXY header was refused; the connection is closed.
#[derive(Debug)]
pub enum BadHeader {
    /// Nothing complete arrived in time.
    Timeout(Duration),
    /// The client closed before the header was complete.
    Closed,
    Malformed(String),
    TooLarge,
}

impl fmt::Display for BadHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadHeader::Timeout(wait) => write!(f, "no complete PROXY header within {wait:?}"),
            BadHeader::Closed => f.write_str("closed before its PROXY header was complete"),
            BadHeader::Malformed(e) => write!(f, "malformed PROXY header: {e}"),
            BadHeader::TooLarge => write!(f, "PROXY header larger than {MAX_HEADER} bytes"),
        }
    }
}

/// The header at the start of `buf`, and its length; `None` while it may
/// still be completed by more bytes.
pub(crate) fn parse(
    buf: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Option<(Origin, usize)>, BadHeader> {
    // A v1 header is one line. ppp takes a line cut right after a space
    // (`... 1000 `) for a malformed one, so it only ever sees whole lines.
    if buf.starts_with(b"PROXY") && !buf.windows(2).any(|w| w == b"\r\n") {
        return match buf.len() < V1_MAX {
            true => Ok(None),
            false => Err(BadHeader::Malformed(format!(
                "v1: no line end within {V1_MAX} bytes"
            ))),
        };
    }
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let unannounced = Origin {
        client: peer,
        destination: local,
        announced: false,
    };
    let announced = |client: SocketAddr, destination: SocketAddr| Origin {
        client,
        destination,
        announced: true,
    };
    let (origin, length) = match parsed {
        HeaderResult::V1(Ok(header)) => {
            let origin = match header.addresses {
                v1::Addresses::Tcp4(a) => announced(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Tcp6(a) => announced(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                v1::Addresses::Unknown => unannounced,
            };
            (origin, header.header.len())
        }
        HeaderResult::V2(Ok(header)) => {
            let origin = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => announced(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => announced(
                    (a.source_address, a.source_port).into(),
                    (a.destination_address, a.destination_port).into(),
                ),
                // LOCAL (the balancer's own connection), UNSPEC, UNIX.
                _ => unannounced,
            };
            (origin, header.len())
        }
        HeaderResult::V1(Err(e)) => return Err(BadHeader::Malformed(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => return Err(BadHeader::Malformed(format!("v2: {e}"))),
    };
    Ok(Some((origin, length)))
}

/// The header announcing `origin` to a backend in `version`; for an
/// unannounced origin (or mixed address families), an address-less one:
/// v1 `UNKNOWN`, v2 `LOCAL`.
pub fn header(version: ProxyVersion, origin: Option<Origin>) -> Vec<u8> {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let addresses = origin
        .filter(|o| o.announced)
        .map(|o| (canonical(o.client), canonical(o.destination)))
        .filter(|(client, destination)| client.is_ipv4() == destination.is_ipv4());
    match (version, addresses) {
        (ProxyVersion::V1, Some(pair)) => v1::Addresses::from(pair).to_string().into_bytes(),
        (ProxyVersion::V1, None) => v1::Addresses::Unknown.to_string().into_bytes(),
        (ProxyVersion::V2, Some(pair)) => {
            let command = v2::Version::Two | v2::Command::Proxy;
            v2::Builder::with_addresses(command, v2::Protocol::Stream, pair)
                .build()
                .unwrap_or_default()
        }
        (ProxyVersion::V2, None) => {
            let command = v2::Version::Two | v2::Command::Local;
            v2::Builder::with_addresses(command, v2::Protocol::Unspecified, v2::Addresses::Unspecified)
                .build()
                .unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(client: &str, destination: &str) -> Option<Origin> {
        Some(Origin {
            client: client.parse().unwrap(),
            destination: destination.parse().unwrap(),
            announced: true,
        })
    }

    #[test]
    fn headers_are_exact_for_both_versions_and_families() {
        let v4 = origin("127.0.0.1:80", "192.168.1.1:443");
        let v6 = origin("[2001:db8::1]:1234", "[2001:db8::2]:443");
        assert_eq!(
            header(ProxyVersion::V1, v4),
            b"PROXY TCP4 127.0.0.1 192.168.1.1 80 443\r\n"
        );
        assert_eq!(
            header(ProxyVersion::V1, v6),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n"
        );
        assert_eq!(header(ProxyVersion::V1, None), b"PROXY UNKNOWN\r\n");
        let signature = b"\r\n\r\n\0\r\nQUIT\n";
        let mut want_v4 = signature.to_vec();
        want_v4.extend([0x21, 0x11, 0, 12, 127, 0, 0, 1, 192, 168, 1, 1, 0, 80, 1, 187]);
        assert_eq!(header(ProxyVersion::V2, v4), want_v4);
        let v6_bytes = header(ProxyVersion::V2, v6);
        assert_eq!(v6_bytes.len(), 16 + 36);
        assert_eq!(&v6_bytes[12..16], [0x21, 0x21, 0, 36]);
        let mut want_local = signature.to_vec();
        want_local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(header(ProxyVersion::V2, None), want_local);
        // A dual-stack listener's view of an IPv4 client is still TCP4.
        let mapped = origin("[::ffff:10.0.0.1]:5000", "[::ffff:10.0.0.2]:80");
        assert_eq!(
            header(ProxyVersion::V1, mapped),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n"
        );
    }

    #[test]
    fn parsing_tells_incomplete_from_malformed() {
        let (peer, local) = ("10.0.0.9:1".parse().unwrap(), "10.0.0.8:2".parse().unwrap());
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1000 2000\r\nhello";
        for cut in 0..38 {
            let parsed = parse(&line[..cut], peer, local);
            assert!(matches!(parsed, Ok(None)), "{cut} bytes: {parsed:?}");
        }
        let (origin, length) = parse(line, peer, local).unwrap().unwrap();
        assert_eq!(origin.client, "1.2.3.4:1000".parse().unwrap());
        assert_eq!(&line[length..], b"hello");
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n", peer, local),
            Err(BadHeader::Malformed(_))
        ));
        let local_command = header(ProxyVersion::V2, None);
        let (origin, _) = parse(&local_command, peer, local).unwrap().unwrap();
        assert_eq!((origin.client, origin.announced), (peer, false));
    }
}
