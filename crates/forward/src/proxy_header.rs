//! The PROXY protocol header (haproxy's proxy-protocol.txt, versions 1 and
//! 2): the first bytes the forwarder sends to a target, so that the target
//! (nginx, haproxy, PgBouncer, most load balancers) sees the real client
//! address instead of the forwarder's.
//!
//! Pure: two socket addresses in, bytes out. Never reads anything: a target
//! that does not expect the header sees it as garbage, which is why it is
//! off unless a rule asks for it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Which header a rule sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header: `PROXY TCP4 SRC DST SPORT DPORT\r\n`.
    V1,
    /// The binary header (12-byte signature, then addresses).
    V2,
}

impl FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(ProxyVersion::V1),
            "v2" | "2" => Ok(ProxyVersion::V2),
            _ => Err(format!("unknown PROXY protocol version {s:?} (use v1 or v2)")),
        }
    }
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

/// The twelve bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` that arrived at `local` (the
/// forwarder's own address of that connection). IPv4-mapped IPv6 addresses
/// (clients of a dual-stack listener) are sent as IPv4.
pub fn encode(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = (canonical(client), canonical(local));
    match version {
        ProxyVersion::V1 => v1(src, dst).into_bytes(),
        ProxyVersion::V2 => v2(src, dst),
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn v1(src: SocketAddr, dst: SocketAddr) -> String {
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => return "PROXY UNKNOWN\r\n".to_owned(),
    };
    format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port())
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    const PROXY_COMMAND: u8 = 0x21; // version 2, PROXY
    const TCP4: u8 = 0x11;
    const TCP6: u8 = 0x21;
    const UNSPEC: u8 = 0x00;
    let mut out = V2_SIGNATURE.to_vec();
    out.push(PROXY_COMMAND);
    let mut addresses = Vec::with_capacity(36);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            TCP4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            TCP6
        }
        _ => UNSPEC,
    };
    if family != UNSPEC {
        addresses.extend_from_slice(&src.port().to_be_bytes());
        addresses.extend_from_slice(&dst.port().to_be_bytes());
    }
    out.push(family);
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specification_examples() {
        // proxy-protocol.txt, section 2.1.
        assert_eq!(
            encode(ProxyVersion::V1, addr("192.168.0.1:56324"), addr("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        // The longest headers the specification allows for (56 and 104 bytes).
        let v4 = encode(ProxyVersion::V1, addr("255.255.255.255:65535"), addr("255.255.255.255:65535"));
        assert_eq!(v4, b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
        assert_eq!(v4.len(), 56);
        let max6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let v6 = encode(ProxyVersion::V1, addr(max6), addr(max6));
        assert_eq!(
            v6,
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(v6.len(), 104);
    }

    #[test]
    fn v1_sends_mapped_clients_as_ipv4_and_mixed_families_as_unknown() {
        let h = encode(ProxyVersion::V1, addr("[::ffff:10.1.2.3]:4000"), addr("[::ffff:10.0.0.1]:80"));
        assert_eq!(h, b"PROXY TCP4 10.1.2.3 10.0.0.1 4000 80\r\n");
        assert_eq!(encode(ProxyVersion::V1, addr("10.1.2.3:4000"), addr("[::1]:80")), b"PROXY UNKNOWN\r\n");
        assert_eq!(
            encode(ProxyVersion::V1, addr("[2001:db8::1]:1"), addr("[::1]:2")),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
        );
    }

    #[test]
    fn v2_ipv4_is_the_specification_layout() {
        let h = encode(ProxyVersion::V2, addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
        let expected: Vec<u8> = [
            &[0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A][..], // signature
            &[0x21],                                                                       // v2, PROXY
            &[0x11],                                                                       // AF_INET, STREAM
            &[0x00, 0x0C],                                                                 // 12 address bytes
            &[192, 168, 0, 1],
            &[192, 168, 0, 11],
            &56324u16.to_be_bytes(),
            &443u16.to_be_bytes(),
        ]
        .concat();
        assert_eq!(h, expected);
        assert_eq!(h.len(), 16 + 12);
    }

    #[test]
    fn v2_ipv6_carries_36_address_bytes() {
        let h = encode(ProxyVersion::V2, addr("[2001:db8::7]:1234"), addr("[::1]:5432"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x21, "AF_INET6, STREAM");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[16..32], &"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(&h[32..48], &std::net::Ipv6Addr::LOCALHOST.octets());
        assert_eq!(&h[48..50], &1234u16.to_be_bytes());
        assert_eq!(&h[50..52], &5432u16.to_be_bytes());
    }

    #[test]
    fn v2_mixed_families_are_unspecified_with_no_addresses() {
        let h = encode(ProxyVersion::V2, addr("10.1.2.3:4000"), addr("[::1]:80"));
        assert_eq!(&h[12..], &[0x21, 0x00, 0x00, 0x00]);
    }

    #[test]
    fn versions_parse() {
        assert_eq!("v1".parse(), Ok(ProxyVersion::V1));
        assert_eq!("V2".parse(), Ok(ProxyVersion::V2));
        assert!("v3".parse::<ProxyVersion>().is_err());
    }
}
