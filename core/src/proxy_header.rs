//! The PROXY protocol header (versions 1 and 2, as HAProxy specifies them) that an L4 load
//! balancer puts before a client's first byte, so that warren behind it knows the client's real
//! address (B17). Only the header is read here; what follows is the client's AMQP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed first twelve bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest version 1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Longest version 2 header accepted: the fixed part and the addresses, and TLVs up to this.
const V2_MAX: usize = 16 + 536;

/// What the bytes at the start of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not all of the header is here yet.
    Incomplete,
    /// A whole header of `len` bytes. `source` is the client's address; `None` when the
    /// balancer speaks for itself (v2 `LOCAL`, health checks) or does not know it
    /// (`UNKNOWN`, a family other than TCP over IPv4 or IPv6).
    Complete {
        /// The client's address and port, if given.
        source: Option<SocketAddr>,
        /// Bytes the header takes; the client's own bytes follow.
        len: usize,
    },
    /// Not a PROXY header, or a malformed one: the connection is refused.
    Invalid(&'static str),
}

/// Reads the PROXY header at the start of `buf`.
#[must_use]
pub fn parse(buf: &[u8]) -> ProxyHeader {
    if buf.is_empty() {
        return ProxyHeader::Incomplete;
    }
    if buf[0] == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else if buf[0] == V1_PREFIX[0] {
        parse_v1(buf)
    } else {
        ProxyHeader::Invalid("the connection does not start with a PROXY protocol header")
    }
}

/// `PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`, `PROXY TCP6 ...`, `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> ProxyHeader {
    let head = &buf[..buf.len().min(V1_PREFIX.len())];
    if !V1_PREFIX.starts_with(head) {
        return ProxyHeader::Invalid("the connection does not start with a PROXY protocol header");
    }
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            ProxyHeader::Invalid("PROXY v1 line longer than 107 bytes")
        } else {
            ProxyHeader::Incomplete
        };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..end]) else {
        return ProxyHeader::Invalid("PROXY v1 line is not ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader::Complete { source: None, len },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let addr = |s: &str| s.parse::<IpAddr>().ok().filter(|ip| ip.is_ipv6() == v6);
            let port = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|_| !s.starts_with('0') || s == "0")
            };
            match (addr(src), addr(dst), port(sport), port(dport)) {
                (Some(ip), Some(_), Some(p), Some(_)) => ProxyHeader::Complete {
                    source: Some(SocketAddr::new(ip, p)),
                    len,
                },
                _ => ProxyHeader::Invalid("PROXY v1 line with a bad address or port"),
            }
        }
        _ => ProxyHeader::Invalid("PROXY v1 line with an unknown family or missing fields"),
    }
}

/// The binary header: signature, version and command, family, length, addresses, TLVs.
fn parse_v2(buf: &[u8]) -> ProxyHeader {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return ProxyHeader::Invalid("the connection does not start with a PROXY protocol header");
    }
    if buf.len() < 16 {
        return ProxyHeader::Incomplete;
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return ProxyHeader::Invalid("PROXY v2 header with another version");
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return ProxyHeader::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return ProxyHeader::Incomplete;
    }
    let addrs = &buf[16..len];
    let source = match (command, buf[13]) {
        // LOCAL: the balancer's own connection (a health check); no client address.
        (0, _) => None,
        // PROXY over TCP/IPv4, TCP/IPv6.
        (1, 0x11) if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addrs[8], addrs[9]]),
            ))
        }
        (1, 0x21) if addrs.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            let port = u16::from_be_bytes([addrs[32], addrs[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        (1, 0x11 | 0x21) => {
            return ProxyHeader::Invalid("PROXY v2 header shorter than its addresses")
        }
        // Other families (UNSPEC, UDP, UNIX): no TCP client address to report.
        (1, _) => None,
        _ => return ProxyHeader::Invalid("PROXY v2 header with an unknown command"),
    };
    ProxyHeader::Complete { source, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | command);
        b.push(family);
        b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 5673\r\nAMQP";
        assert_eq!(
            parse(line),
            ProxyHeader::Complete {
                source: Some("192.0.2.7:40000".parse().unwrap()),
                len: line.len() - 4
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 5673\r\n";
        assert_eq!(
            parse(line),
            ProxyHeader::Complete {
                source: Some("[2001:db8::7]:40000".parse().unwrap()),
                len: line.len()
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Complete {
                source: None,
                len: 15
            }
        );
    }

    #[test]
    fn v1_in_pieces_and_malformed() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 5673\r\n";
        for cut in 1..line.len() {
            assert_eq!(parse(&line[..cut]), ProxyHeader::Incomplete, "cut at {cut}");
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 70000 5673\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 0040 5673\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXX TCP4",
        ] {
            assert!(matches!(parse(bad), ProxyHeader::Invalid(_)), "{bad:?}");
        }
        let long = [b'P'; 1]
            .iter()
            .chain(b"ROXY ".iter())
            .chain([b'x'; 200].iter())
            .copied()
            .collect::<Vec<u8>>();
        assert!(matches!(parse(&long), ProxyHeader::Invalid(_)));
    }

    #[test]
    fn amqp_without_a_header_is_invalid() {
        assert!(matches!(
            parse(b"AMQP\0\0\x09\x01"),
            ProxyHeader::Invalid(_)
        ));
        assert_eq!(parse(b""), ProxyHeader::Incomplete);
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut a4 = vec![192, 0, 2, 7, 10, 0, 0, 1];
        a4.extend_from_slice(&40000u16.to_be_bytes());
        a4.extend_from_slice(&5673u16.to_be_bytes());
        let b = v2(1, 0x11, &a4);
        assert_eq!(
            parse(&b),
            ProxyHeader::Complete {
                source: Some("192.0.2.7:40000".parse().unwrap()),
                len: 28
            }
        );
        // TLVs after the addresses are skipped; what follows is the client's.
        let mut with_tlv = a4.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        let mut b = v2(1, 0x11, &with_tlv);
        b.extend_from_slice(b"AMQP");
        assert!(matches!(parse(&b), ProxyHeader::Complete { len: 32, .. }));
        let mut a6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        a6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        a6.extend_from_slice(&40000u16.to_be_bytes());
        a6.extend_from_slice(&5673u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &a6)),
            ProxyHeader::Complete {
                source: Some("[2001:db8::7]:40000".parse().unwrap()),
                len: 52
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            ProxyHeader::Complete {
                source: None,
                len: 16
            }
        );
        for cut in 1..28 {
            assert_eq!(parse(&v2(1, 0x11, &a4)[..cut]), ProxyHeader::Incomplete);
        }
    }

    #[test]
    fn v2_malformed() {
        let mut b = v2(1, 0x11, &[1, 2, 3]);
        assert!(
            matches!(parse(&b), ProxyHeader::Invalid(_)),
            "short addresses"
        );
        b[12] = 0x31;
        assert!(matches!(parse(&b), ProxyHeader::Invalid(_)), "version 3");
        let b = v2(5, 0x11, &[0; 12]);
        assert!(matches!(parse(&b), ProxyHeader::Invalid(_)), "command 5");
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&b), ProxyHeader::Invalid(_)), "too long");
        assert!(matches!(parse(b"\r\n\r\nX"), ProxyHeader::Invalid(_)));
    }
}
