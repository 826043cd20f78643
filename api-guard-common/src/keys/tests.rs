//! The key and route parser against std's SipHash and against itself at every
//! split of a head.

extern crate std;

use std::{hash::Hasher, string::ToString, vec, vec::Vec};

use super::{user::RouteLimit, *};
use crate::stream::{Framing, MODE_BODY, MODE_HEAD};

const SECRET: [u64; 2] = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];

fn policy(header: Option<&str>, routes: &[&str]) -> KeyPolicy {
    let routes: Vec<RouteLimit> = routes.iter().map(|r| r.parse().unwrap()).collect();
    KeyPolicy::build(header, Some((10, 10)).filter(|_| header.is_some()), &routes).unwrap()
}

/// The kernel's loop: the framing decides starts and head ends, byte by byte.
fn feed(p: &KeyPolicy, f: &mut Framing, k: &mut KeyParse, bytes: &[u8], out: &mut Vec<Charge>) {
    let mut i = 0;
    while i < bytes.len() {
        if f.mode == MODE_BODY {
            i += f.skip_body((bytes.len() - i) as u64) as usize;
            continue;
        }
        let in_head = f.mode == MODE_HEAD;
        let start = f.step(bytes[i]);
        let ended = in_head && f.mode != MODE_HEAD;
        if let Some(c) = k.byte(p, SECRET, bytes[i], start, ended) {
            out.push(c);
        }
        i += 1;
    }
}

fn charges(p: &KeyPolicy, segments: &[&[u8]]) -> Vec<Charge> {
    let (mut f, mut k, mut out) = (Framing::start(), KeyParse::IDLE, Vec::new());
    for s in segments {
        feed(p, &mut f, &mut k, s, &mut out);
    }
    out
}

#[allow(deprecated)]
fn std_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::SipHasher::new_with_keys(SECRET[0], SECRET[1]);
    h.write(bytes);
    h.finish()
}

fn sip(bytes: &[u8]) -> u64 {
    let mut s = Sip::new(SECRET);
    for b in bytes {
        s.write(*b);
    }
    s.finish()
}

#[test]
fn siphash_fed_bytewise_agrees_with_std_siphash_2_4() {
    let data: Vec<u8> = (0u8..=80).collect();
    for n in 0..data.len() {
        assert_eq!(sip(&data[..n]), std_hash(&data[..n]), "length {n}");
    }
}

#[test]
fn the_key_value_is_hashed_without_its_surrounding_whitespace() {
    let p = policy(Some("X-API-Key"), &[]);
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nx-api-key: \t abc123  \r\n\r\n";
    assert_eq!(
        charges(&p, &[head]),
        vec![Charge {
            key: Some(std_hash(b"abc123")),
            route: NO_ROUTE
        }]
    );
}

#[test]
fn a_key_header_split_at_every_offset_charges_the_same_bucket() {
    let p = policy(Some("x-api-key"), &["POST /v1/login=1:1"]);
    let head = b"POST /v1/login?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Api-Key: k-1\r\n\r\nabcGET /v1/other HTTP/1.1\r\nX-API-KEY: k-2\r\n\r\n";
    let whole = charges(&p, &[head]);
    assert_eq!(
        whole,
        vec![
            Charge {
                key: Some(std_hash(b"k-1")),
                route: 0
            },
            // The client's bucket of the route, at the head's end.
            Charge {
                key: None,
                route: 0
            },
            Charge {
                key: Some(std_hash(b"k-2")),
                route: NO_ROUTE
            },
        ]
    );
    for cut in 1..head.len() {
        assert_eq!(
            charges(&p, &[&head[..cut], &head[cut..]]),
            whole,
            "cut {cut}"
        );
        for cut2 in (cut + 1..head.len()).step_by(7) {
            assert_eq!(
                charges(&p, &[&head[..cut], &head[cut..cut2], &head[cut2..]]),
                whole,
                "cuts {cut} {cut2}"
            );
        }
    }
}

#[test]
fn every_case_of_the_header_name_matches() {
    let p = policy(Some("X-API-Key"), &[]);
    for name in ["x-api-key", "X-API-KEY", "X-Api-Key", "x-API-kEY"] {
        let head = std::format!("GET / HTTP/1.1\r\n{name}: same\r\n\r\n");
        assert_eq!(
            charges(&p, &[head.as_bytes()]),
            vec![Charge {
                key: Some(std_hash(b"same")),
                route: NO_ROUTE
            }],
            "{name}"
        );
    }
    // A longer or shorter name is another header.
    for name in ["x-api-keys", "x-api-ke", "xx-api-key"] {
        let head = std::format!("GET / HTTP/1.1\r\n{name}: same\r\n\r\n");
        assert!(charges(&p, &[head.as_bytes()]).is_empty(), "{name}");
    }
}

#[test]
fn every_key_header_of_a_request_is_charged() {
    // The server may take either: each pays.
    let p = policy(Some("x-api-key"), &[]);
    let head = b"GET / HTTP/1.1\r\nX-API-Key: decoy\r\nX-API-Key: real\r\n\r\n";
    let keys: Vec<_> = charges(&p, &[head]).iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        vec![Some(std_hash(b"decoy")), Some(std_hash(b"real"))]
    );
}

#[test]
fn an_authorization_scheme_in_any_case_is_the_same_key() {
    let p = policy(Some("Authorization"), &[]);
    let a = charges(
        &p,
        &[b"GET / HTTP/1.1\r\nAuthorization: Bearer tok\r\n\r\n"],
    );
    let b = charges(
        &p,
        &[b"GET / HTTP/1.1\r\nauthorization: bEaReR   tok\r\n\r\n"],
    );
    assert_eq!(a, b);
    assert_eq!(a[0].key, Some(std_hash(b"bearer tok")));
    // The token's case is its own.
    let c = charges(
        &p,
        &[b"GET / HTTP/1.1\r\nAuthorization: Bearer TOK\r\n\r\n"],
    );
    assert_ne!(a, c);
}

#[test]
fn a_header_in_a_body_is_no_key() {
    let p = policy(Some("x-api-key"), &[]);
    let head =
        b"POST / HTTP/1.1\r\nContent-Length: 18\r\n\r\nX-API-Key: hidden\nGET / HTTP/1.1\r\n\r\n";
    assert!(charges(&p, &[head]).is_empty());
}

fn route_of(p: &KeyPolicy, line: &str) -> u8 {
    let head = std::format!("{line}\r\nHost: a\r\n\r\n");
    match charges(p, &[head.as_bytes()]).as_slice() {
        [] => NO_ROUTE,
        [c] => c.route,
        more => panic!("{more:?}"),
    }
}

#[test]
fn routes_match_method_and_path_prefix_whatever_the_query() {
    let p = policy(
        None,
        &[
            "POST /v1/login=5",
            "* /v1=100",
            "GET /v1/items=50:60",
            "POST /v1/login/sso=2",
        ],
    );
    // Most specific first: /v1/login/sso (0), /v1/login (1), /v1/items (2), * /v1 (3).
    assert_eq!(route_of(&p, "POST /v1/login HTTP/1.1"), 1);
    assert_eq!(route_of(&p, "POST /v1/login?x=1 HTTP/1.1"), 1);
    assert_eq!(route_of(&p, "POST /v1/login#f HTTP/1.1"), 1);
    assert_eq!(route_of(&p, "POST  /v1/login HTTP/1.1"), 1);
    assert_eq!(route_of(&p, "POST /v1/login/sso/x HTTP/1.1"), 0);
    assert_eq!(route_of(&p, "GET /v1/login HTTP/1.1"), 3);
    assert_eq!(route_of(&p, "GET /v1/items/7 HTTP/1.1"), 2);
    assert_eq!(route_of(&p, "DELETE /v1/items/7 HTTP/1.1"), 3);
    assert_eq!(route_of(&p, "GET /v2 HTTP/1.1"), NO_ROUTE);
    assert_eq!(route_of(&p, "GET /v HTTP/1.1"), NO_ROUTE);
    assert_eq!(route_of(&p, "POSTX /v1/login HTTP/1.1"), 3);
}

#[test]
fn respelled_targets_pay_the_strictest_limit_of_their_method() {
    let p = policy(None, &["POST /v1/login=5", "POST /v1/other=50", "* /=1000"]);
    let strictest = route_of(&p, "POST /v1/login HTTP/1.1");
    for line in [
        "POST /v1/%6cogin HTTP/1.1",
        "POST /v1//login HTTP/1.1",
        "POST //v1/login HTTP/1.1",
        "POST /v1/x/../login HTTP/1.1",
        "POST /v1/./login HTTP/1.1",
        "POST /v1/login/.. HTTP/1.1",
        "POST /v1\\login HTTP/1.1",
        "POST http://api/v1/login HTTP/1.1",
    ] {
        assert_eq!(route_of(&p, line), strictest, "{line}");
    }
    // Plain paths with dots in names are not respelled.
    assert_eq!(route_of(&p, "POST /v1/other/.well-known HTTP/1.1"), 1);
}

#[test]
fn a_route_is_charged_to_the_client_once_per_request_with_a_key_or_without() {
    let p = policy(Some("x-api-key"), &["GET /a=5"]);
    let two = b"GET /a HTTP/1.1\r\n\r\nGET /a?q HTTP/1.1\r\nX-API-Key: k\r\n\r\n";
    assert_eq!(
        charges(&p, &[two]),
        vec![
            Charge {
                key: None,
                route: 0
            },
            // A key (made up, maybe) pays its own route bucket and spares
            // the client's nothing.
            Charge {
                key: Some(std_hash(b"k")),
                route: 0
            },
            Charge {
                key: None,
                route: 0
            },
        ]
    );
}

#[test]
fn a_get_route_binds_head_and_a_path_parameter_is_odd() {
    let p = policy(None, &["GET /v1=1:100", "GET /v1/export=1:1"]);
    assert_eq!(route_of(&p, "HEAD /v1/export HTTP/1.1"), 0);
    assert_eq!(route_of(&p, "HEAD /v1/items HTTP/1.1"), 1);
    assert_eq!(route_of(&p, "GET /v1;a/export HTTP/1.1"), 0);
    assert_eq!(route_of(&p, "POST /v1/export HTTP/1.1"), NO_ROUTE);
    assert!("GET /v1;x=1=5".parse::<RouteLimit>().is_err());
}

#[test]
fn no_byte_of_a_key_stays_in_the_hash_state_after_its_value() {
    let p = policy(Some("x-api-key"), &[]);
    let mut f = Framing::start();
    let mut k = KeyParse::IDLE;
    let mut out = Vec::new();
    feed(
        &p,
        &mut f,
        &mut k,
        b"GET / HTTP/1.1\r\nX-Api-Key: abcdefghijklmno\r\n",
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(k.sip, super::Sip::CLEAR);
}

#[test]
fn route_specs_are_checked() {
    for bad in [
        "GET /a",
        "get /a=1",
        "GET a=1",
        "GET /a?b=1",
        "GET /a/../b=1",
        "GET /%41=1",
        "GET /a=0",
        "GET /a=1:0",
        "VERYLONGMETHOD /a=1",
    ] {
        assert!(bad.parse::<RouteLimit>().is_err(), "{bad}");
    }
    let r: RouteLimit = "GET /v1/items=50:60".parse().unwrap();
    assert_eq!((r.rate, r.burst), (50, 60));
    assert_eq!(r.to_string(), "GET /v1/items=50:60");
}

#[test]
fn layouts_have_no_hidden_padding() {
    assert_eq!(core::mem::size_of::<Route>(), 96);
    assert_eq!(
        core::mem::size_of::<RouteTables>(),
        2 * (2 * METHOD_MAX * 256 + 2 * (METHOD_MAX + 2) + PREFIX_MAX * 256 + PREFIX_MAX + 1)
            + ROUTE_SLOTS
            + 6
    );
    assert_eq!(
        core::mem::size_of::<KeyPolicy>(),
        16 + NAME_MAX + 16 + 96 * ROUTE_SLOTS + core::mem::size_of::<RouteTables>()
    );
    assert_eq!(core::mem::size_of::<KeyParse>(), 48 + 4 + 4 + 16);
    assert_eq!(core::mem::size_of::<BucketKey>(), 24);
}

#[test]
fn the_daemon_hashes_a_value_as_the_kernel_does() {
    let p = policy(Some("authorization"), &[]);
    let c = charges(
        &p,
        &[b"GET / HTTP/1.1\r\nAuthorization:  BEARER   tok \r\n\r\n"],
    );
    assert_eq!(c[0].key, hash_value(SECRET, true, b"  BEARER   tok "));
    assert_eq!(hash_value(SECRET, false, b"   "), None);
}
