//! The parser against headers built by hand from the spec, and addresses judged
//! by std's own parsers.

extern crate std;

use std::{
    format,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    string::{String, ToString},
    vec::Vec,
};

use super::*;

fn v2(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | cmd);
    h.push(fam);
    let len = (addrs.len() + tlvs.len()) as u16;
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(addrs);
    h.extend_from_slice(tlvs);
    h
}

fn v2_tcp4(src: [u8; 4], tlvs: &[u8]) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[198, 18, 0, 1, 0x30, 0x39, 0, 80]);
    v2(1, 0x11, &a, tlvs)
}

fn v2_tcp6(src: [u8; 16], tlvs: &[u8]) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    a.extend_from_slice(&[0x30, 0x39, 0, 80]);
    v2(1, 0x21, &a, tlvs)
}

fn mapped(v4: Ipv4Addr) -> [u8; 16] {
    v4.to_ipv6_mapped().octets()
}

/// Feeds `bytes` in pieces cut at `cuts`, as segments would bring them.
fn parse_split(bytes: &[u8], cuts: &[usize]) -> (ProxyHeader, usize) {
    let mut p = ProxyHeader::new();
    let mut taken = 0;
    let mut from = 0;
    for &c in cuts.iter().chain(core::iter::once(&bytes.len())) {
        if p.state != PROXY_PENDING {
            break;
        }
        taken += p.feed(&bytes[from..c]);
        from = c;
    }
    (p, taken)
}

#[test]
fn the_conn_value_has_no_implicit_padding() {
    assert_eq!(core::mem::size_of::<ProxyHeader>(), 52);
    assert_eq!(core::mem::size_of::<ProxyConn>(), 60);
}

#[test]
fn v2_tcp4_names_the_source_at_every_split() {
    let tlv = [0x04, 0, 3, b'a', b'b', b'c'];
    let mut stream = v2_tcp4([198, 19, 7, 9], &tlv);
    let hlen = stream.len();
    stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    for cut in 0..=stream.len() {
        let (p, taken) = parse_split(&stream, &[cut]);
        assert_eq!(p.state, PROXY_CLIENT, "cut {cut}");
        assert_eq!(p.client, mapped(Ipv4Addr::new(198, 19, 7, 9)), "cut {cut}");
        assert_eq!(taken, hlen, "cut {cut}");
        assert_eq!(p.got as usize, hlen);
    }
}

#[test]
fn v2_tcp6_names_the_source_at_every_pair_of_splits() {
    let src: Ipv6Addr = "2001:db8:7::42".parse().unwrap();
    let stream = v2_tcp6(src.octets(), &[]);
    for a in 0..=stream.len() {
        for b in a..=stream.len() {
            let (p, taken) = parse_split(&stream, &[a, b]);
            assert_eq!(p.state, PROXY_CLIENT, "cuts {a} {b}");
            assert_eq!(p.client, src.octets());
            assert_eq!(taken, stream.len());
        }
    }
}

#[test]
fn v2_local_and_other_families_name_no_client() {
    let (p, _) = parse_split(&v2(0, 0x00, &[], &[]), &[]);
    assert_eq!(p.state, PROXY_LOCAL);
    // LOCAL with addresses: still the balancer's own connection.
    let mut local = v2_tcp4([1, 2, 3, 4], &[]);
    local[12] = 0x20;
    assert_eq!(parse_split(&local, &[]).0.state, PROXY_LOCAL);
    // UDP over IPv4, UNIX stream: no TCP client.
    assert_eq!(
        parse_split(&v2(1, 0x12, &[0; 12], &[]), &[]).0.state,
        PROXY_LOCAL
    );
    assert_eq!(
        parse_split(&v2(1, 0x31, &[0; 216], &[]), &[]).0.state,
        PROXY_LOCAL
    );
}

#[test]
fn v2_malformed_headers_are_invalid() {
    // Version 1 in the binary form, an unknown command, addresses cut short.
    let mut bad_version = v2_tcp4([1, 2, 3, 4], &[]);
    bad_version[12] = 0x11;
    assert_eq!(parse_split(&bad_version, &[]).0.state, PROXY_INVALID);
    let mut bad_cmd = v2_tcp4([1, 2, 3, 4], &[]);
    bad_cmd[12] = 0x22;
    assert_eq!(parse_split(&bad_cmd, &[]).0.state, PROXY_INVALID);
    assert_eq!(
        parse_split(&v2(1, 0x11, &[1, 2, 3], &[]), &[]).0.state,
        PROXY_INVALID
    );
    assert_eq!(
        parse_split(&v2(1, 0x21, &[0; 12], &[]), &[]).0.state,
        PROXY_INVALID
    );
    // A signature broken at every byte: invalid, and the breaking byte not taken.
    let good = v2_tcp4([1, 2, 3, 4], &[]);
    for i in 1..12 {
        let mut s = good.clone();
        s[i] ^= 0x40;
        let (p, taken) = parse_split(&s, &[]);
        assert_eq!(p.state, PROXY_INVALID, "byte {i}");
        assert_eq!(taken, i, "byte {i}");
    }
}

#[test]
fn http_and_tls_streams_are_not_headers() {
    for (s, prefix) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 0),
        (b"POST /x HTTP/1.1\r\n", 1),
        (b"PUT /x HTTP/1.1\r\n", 1),
        (b"PATCH /x HTTP/1.1\r\n", 1),
        (b"PROXYX", 5),
        (b"\r\nGET / HTTP/1.1\r\n", 2),
        (b"\x16\x03\x01\x02\x00\x01", 0),
    ] {
        let (p, taken) = parse_split(s, &[]);
        assert_eq!(p.state, PROXY_INVALID, "{:?}", String::from_utf8_lossy(s));
        // Only the prefix a signature shares is taken, never the breaking byte.
        assert_eq!(taken, prefix, "{:?}", String::from_utf8_lossy(s));
        assert_eq!(p.got as usize, prefix);
    }
}

#[test]
fn v1_tcp4_and_tcp6_name_the_source_at_every_split() {
    let cases: [(&str, IpAddr); 6] = [
        (
            "PROXY TCP4 198.18.0.7 198.18.0.1 56324 443\r\n",
            "198.18.0.7".parse().unwrap(),
        ),
        (
            "PROXY TCP4 0.0.0.0 1.1.1.1 1 2\r\n",
            "0.0.0.0".parse().unwrap(),
        ),
        (
            "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
            "2001:db8::1".parse().unwrap(),
        ),
        ("PROXY TCP6 :: ::1 1 2\r\n", "::".parse().unwrap()),
        ("PROXY TCP6 ::7 ::1 1 2\r\n", "::7".parse().unwrap()),
        (
            "PROXY TCP6 2001:DB8:0:1:ffff:2:3:4 ::1 1 2\r\n",
            "2001:db8:0:1:ffff:2:3:4".parse().unwrap(),
        ),
    ];
    for (line, ip) in cases {
        let want = match ip {
            IpAddr::V4(v4) => mapped(v4),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut stream = line.as_bytes().to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        for cut in 0..=stream.len() {
            let (p, taken) = parse_split(&stream, &[cut]);
            assert_eq!(p.state, PROXY_CLIENT, "{line:?} cut {cut}");
            assert_eq!(p.client, want, "{line:?} cut {cut}");
            assert_eq!(taken, line.len(), "{line:?}");
        }
    }
}

#[test]
fn v1_ipv6_sources_match_std_for_many_forms() {
    // Every zero-run position and length of a few addresses, printed by std
    // (which compresses the longest run) and by hand without compression.
    let mut n = 0u32;
    for a in 0..8usize {
        for b in a..=8usize {
            let mut g = [0x2001u16, 0xdb8, 0x1234, 0xabcd, 0x1, 0xffff, 0x42, 0x7];
            for x in g.iter_mut().take(b).skip(a) {
                *x = 0;
            }
            let ip = Ipv6Addr::from(g);
            let full: Vec<String> = g.iter().map(|x| format!("{x:x}")).collect();
            for text in [ip.to_string(), full.join(":")] {
                if text.contains('.') {
                    continue;
                }
                let line = format!("PROXY TCP6 {text} ::1 1 2\r\n");
                let (p, _) = parse_split(line.as_bytes(), &[]);
                assert_eq!(p.state, PROXY_CLIENT, "{line:?}");
                assert_eq!(p.client, ip.octets(), "{line:?}");
                n += 1;
            }
        }
    }
    assert!(n > 50);
}

#[test]
fn v1_malformed_lines_are_invalid() {
    for line in [
        "PROXY TCP4 198.18.0.256 1.1.1.1 1 2\r\n",
        "PROXY TCP4 198.18.0 1.1.1.1 1 2\r\n",
        "PROXY TCP4 198.18.0.1.2 1.1.1.1 1 2\r\n",
        "PROXY TCP4 1988.18.0.1 1.1.1.1 1 2\r\n",
        "PROXY TCP5 1.2.3.4 1.1.1.1 1 2\r\n",
        "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n",
        "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
        "PROXY TCP6 1::2::3 ::1 1 2\r\n",
        "PROXY TCP6 :1::2 ::1 1 2\r\n",
        "PROXY TCP6 1:2:3:4:5:6:7: ::1 1 2\r\n",
        "PROXY TCP6 12345::1 ::1 1 2\r\n",
        "PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP4 1.2.3.4 1.1.1.1 1 2\n",
        "proxy TCP4 1.2.3.4 1.1.1.1 1 2\r\n",
    ] {
        let (p, _) = parse_split(line.as_bytes(), &[]);
        assert_eq!(p.state, PROXY_INVALID, "{line:?}");
    }
    // Longer than the spec's 107 bytes without CRLF.
    let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
    assert_eq!(parse_split(long.as_bytes(), &[]).0.state, PROXY_INVALID);
    // Still pending while the line is short of CRLF.
    let (p, _) = parse_split(b"PROXY TCP4 1.2.3.4 1.1.1.1 1 2\r", &[]);
    assert_eq!(p.state, PROXY_PENDING);
}

#[test]
fn v1_unknown_names_no_client() {
    let (p, taken) = parse_split(b"PROXY UNKNOWN\r\nGET /", &[]);
    assert_eq!(p.state, PROXY_LOCAL);
    assert_eq!(taken, 15);
    let line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_eq!(parse_split(line, &[]).0.state, PROXY_LOCAL);
}

#[test]
fn v2_large_tlvs_are_skipped_not_stepped() {
    let tlvs = std::vec![0u8; 4000];
    let h = v2_tcp4([9, 8, 7, 6], &tlvs);
    let mut p = ProxyHeader::new();
    let mut steps = 0;
    let mut i = 0;
    while p.state == PROXY_PENDING {
        let s = p.skippable() as usize;
        if s > 0 {
            p.skip(s as u32);
            i += s;
        } else {
            p.step(h[i]);
            i += 1;
        }
        steps += 1;
    }
    assert_eq!(p.state, PROXY_CLIENT);
    assert_eq!(i, h.len());
    assert!(steps <= 33, "{steps}");
}
