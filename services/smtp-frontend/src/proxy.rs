//! The PROXY protocol (HAProxy's, v1 text and v2 binary), for listeners
//! behind a load balancer that cannot keep the client address
//! (`proxy_protocol = true` on the listener). The real client address
//! matters here: relay policy, brute-force limits and the `Received:` header
//! all depend on it. Sans-IO: fed the first bytes, it says how many it needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 lines are at most 107 bytes (spec §2.1).
const V1_MAX: usize = 107;

#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// The client's address as the balancer saw it.
    Proxied { source: SocketAddr, len: usize },
    /// A health check from the balancer itself (v2 LOCAL, v1 UNKNOWN):
    /// keep the socket's own address.
    Local { len: usize },
}

#[derive(Debug, PartialEq, Eq)]
pub enum ProxyError {
    NeedMore,
    Invalid(&'static str),
}

/// Parse a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.len() < V2_SIGNATURE.len() {
        let v1 = b"PROXY ".starts_with(&buf[..buf.len().min(6)]);
        let v2 = V2_SIGNATURE.starts_with(buf);
        return if v1 || v2 {
            Err(ProxyError::NeedMore)
        } else {
            Err(ProxyError::Invalid("no PROXY header"))
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(ProxyError::Invalid("no PROXY header"))
    }
}

fn parse_v2(buf: &[u8]) -> Result<Header, ProxyError> {
    if buf.len() < 16 {
        return Err(ProxyError::NeedMore);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Invalid("PROXY v2: bad version"));
    }
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if buf.len() < total {
        return Err(ProxyError::NeedMore);
    }
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        0x0 => return Ok(Header::Local { len: total }),
        0x1 => {}
        _ => return Err(ProxyError::Invalid("PROXY v2: bad command")),
    }
    let source = match fam {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 if body.len() >= 12 => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
            u16::from_be_bytes([body[8], body[9]]),
        ),
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 if body.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([body[32], body[33]]),
            )
        }
        // UNSPEC or a family we do not carry (UDP, UNIX): keep the socket's.
        0x00 => return Ok(Header::Local { len: total }),
        _ => return Err(ProxyError::Invalid("PROXY v2: unsupported address family")),
    };
    Ok(Header::Proxied { source, len: total })
}

fn parse_v1(buf: &[u8]) -> Result<Header, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Invalid("PROXY v1: line too long"))
        } else {
            Err(ProxyError::NeedMore)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::Invalid("PROXY v1: line too long"));
    }
    let line =
        std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::Invalid("PROXY v1: not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header::Local { len: end + 2 }),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Invalid("PROXY v1: bad source address"))?;
            if (*proto == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Invalid("PROXY v1: address family mismatch"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Invalid("PROXY v1: bad source port"))?;
            Ok(Header::Proxied {
                source: SocketAddr::new(ip, port),
                len: end + 2,
            })
        }
        _ => Err(ProxyError::Invalid("PROXY v1: malformed")),
    }
}

/// A v2 header for `source` → `dest` (tests and tools).
pub fn v2_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21);
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let six = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&six(s));
            h.extend_from_slice(&six(d));
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_tcp4_gives_the_client_address_and_leaves_the_smtp_bytes() {
        let mut buf = v2_header(
            "192.0.2.7:40000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        let hlen = buf.len();
        buf.extend_from_slice(b"EHLO x\r\n");
        assert_eq!(
            parse(&buf),
            Ok(Header::Proxied {
                source: "192.0.2.7:40000".parse().unwrap(),
                len: hlen
            })
        );
    }

    #[test]
    fn v2_tcp6_and_local() {
        let buf = v2_header(
            "[2001:db8::7]:5".parse().unwrap(),
            "[2001:db8::1]:25".parse().unwrap(),
        );
        assert_eq!(
            parse(&buf),
            Ok(Header::Proxied {
                source: "[2001:db8::7]:5".parse().unwrap(),
                len: buf.len()
            })
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Header::Local { len: 16 }));
    }

    #[test]
    fn v1_text_forms() {
        let l = b"PROXY TCP4 192.0.2.9 198.51.100.1 1234 25\r\nEHLO";
        assert_eq!(
            parse(l),
            Ok(Header::Proxied {
                source: "192.0.2.9:1234".parse().unwrap(),
                len: 43
            })
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Header::Local { len: 15 }));
        assert!(matches!(
            parse(b"PROXY TCP4 2001:db8::1 198.51.100.1 1 25\r\n"),
            Err(ProxyError::Invalid(_))
        ));
    }

    #[test]
    fn partial_headers_ask_for_more_and_garbage_is_refused() {
        let full = v2_header(
            "192.0.2.7:1".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Err(ProxyError::NeedMore), "{n}");
        }
        assert_eq!(parse(b"PROX"), Err(ProxyError::NeedMore));
        assert!(matches!(
            parse(b"EHLO client.example\r\n"),
            Err(ProxyError::Invalid(_))
        ));
        assert!(matches!(parse(&[b'P'; 200]), Err(ProxyError::Invalid(_))));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 120]);
        assert!(matches!(parse(&long), Err(ProxyError::Invalid(_))));
    }
}
