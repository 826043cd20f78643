//! The forwarded-list parser: addresses, list rules, and every split of a head.

extern crate std;

use std::{net::IpAddr, vec, vec::Vec};

use super::*;
use crate::stream::{Framing, MODE_BODY, MODE_HEAD};

fn addr(s: &str) -> Option<[u8; 16]> {
    let mut a = Addr::EMPTY;
    for b in s.bytes() {
        a.byte(b);
    }
    a.finish()
}

fn key(s: &str) -> [u8; 16] {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The kernel's loop: the framing decides starts and head ends.
fn feed(
    f: &mut Framing,
    c: &mut FwdConn,
    header: u32,
    hops: u32,
    bytes: &[u8],
    out: &mut Vec<Head>,
) {
    let mut i = 0;
    while i < bytes.len() {
        if f.mode == MODE_BODY {
            i += f.skip_body((bytes.len() - i) as u64) as usize;
            continue;
        }
        let in_head = f.mode == MODE_HEAD;
        let start = f.step(bytes[i]);
        let ended = in_head && f.mode != MODE_HEAD;
        if let Some(h) = c.byte(header, hops, bytes[i], start, ended) {
            out.push(h);
        }
        i += 1;
    }
}

fn heads(header: u32, hops: u32, segments: &[&[u8]]) -> Vec<Option<[u8; 16]>> {
    let (mut f, mut c, mut out) = (Framing::start(), FwdConn::NEW, Vec::new());
    for s in segments {
        feed(&mut f, &mut c, header, hops, s, &mut out);
    }
    out.into_iter().map(|h| h.client).collect()
}

fn xff(value_lines: &[&str], hops: u32) -> Option<[u8; 16]> {
    let mut head = std::string::String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for v in value_lines {
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let header = if value_lines
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("forwarded:"))
    {
        HEADER_FORWARDED
    } else {
        HEADER_XFF
    };
    let out = heads(header, hops, &[head.as_bytes()]);
    assert_eq!(out.len(), 1, "{head:?}");
    out[0]
}

#[test]
fn addresses_in_text_are_read_as_std_reads_them() {
    for s in [
        "1.2.3.4",
        "198.18.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "2001:db8::1",
        "::1",
        "::",
        "1::",
        "2001:db8:0:0:0:0:0:1",
        "2001:DB8:a:b:c:d:e:f",
        "fe80::1:2",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
    ] {
        assert_eq!(addr(s), Some(key(s)), "{s}");
    }
}

#[test]
fn ports_brackets_and_quotes_are_not_the_address() {
    assert_eq!(addr("1.2.3.4:8080"), Some(key("1.2.3.4")));
    assert_eq!(addr("[2001:db8::1]"), Some(key("2001:db8::1")));
    assert_eq!(addr("[2001:db8::1]:4711"), Some(key("2001:db8::1")));
    assert_eq!(addr("\"[2001:db8::1]:4711\""), Some(key("2001:db8::1")));
    assert_eq!(addr("\"1.2.3.4\""), Some(key("1.2.3.4")));
    assert_eq!(addr("  1.2.3.4  "), Some(key("1.2.3.4")));
}

#[test]
fn garbage_names_no_one() {
    for s in [
        "",
        "unknown",
        "_hidden",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1234.1.1.1",
        "1.2.3.a",
        "a.b.c.d",
        "1:2",
        ":1",
        ":::",
        "1::2::3",
        "1:2:3:4:5:6:7:8:9",
        "12345::1",
        "2001:db8::1]",
        "[2001:db8::1",
        "[1.2.3.4]",
        "::ffff:1.2.3.4",
        "\"1.2.3.4",
        "1.2.3.4\"",
        "1.2.3.4 5",
        "1.2.3.4:80x",
        "[::1]x",
        "1.2.3.4;",
        "\u{0}",
    ] {
        assert_eq!(addr(s), None, "{s:?}");
    }
}

#[test]
fn the_client_is_taken_hops_from_the_right() {
    let l = "X-Forwarded-For: 198.18.0.1, 198.18.0.2, 198.18.0.3";
    assert_eq!(xff(&[l], 1), Some(key("198.18.0.3")));
    assert_eq!(xff(&[l], 2), Some(key("198.18.0.2")));
    assert_eq!(xff(&[l], 3), Some(key("198.18.0.1")));
    // Too short a list names no one.
    assert_eq!(xff(&[l], 4), None);
    assert_eq!(xff(&[], 1), None);
}

#[test]
fn a_forged_left_part_changes_nothing() {
    for forged in [
        "1.2.3.4",
        "garbage garbage",
        "[[[",
        "\"unterminated",
        "unknown",
        ",,,,,",
        "::::",
    ] {
        let l = std::format!("X-Forwarded-For: {forged}, 198.18.0.9");
        assert_eq!(xff(&[&l], 1), Some(key("198.18.0.9")), "{l}");
    }
    // A garbage right part names no one, whatever the left holds.
    assert_eq!(xff(&["X-Forwarded-For: 198.18.0.9, unknown"], 1), None);
}

#[test]
fn several_lines_and_any_case_are_one_list() {
    let lines = [
        "x-forwarded-for: 198.18.0.1",
        "Accept: */*",
        "X-FORWARDED-FOR: 198.18.0.2, 2001:db8::7",
    ];
    assert_eq!(xff(&lines, 1), Some(key("2001:db8::7")));
    assert_eq!(xff(&lines, 2), Some(key("198.18.0.2")));
    assert_eq!(xff(&lines, 3), Some(key("198.18.0.1")));
    // Empty elements are no elements.
    assert_eq!(
        xff(&["X-Forwarded-For: 198.18.0.1, , 198.18.0.2,"], 2),
        Some(key("198.18.0.1"))
    );
    // Other headers with the name inside them are not the list.
    assert_eq!(
        xff(
            &[
                "X-Forwarded-For-Not: 198.18.0.1",
                "Y-X-Forwarded-For: 198.18.0.2"
            ],
            1
        ),
        None
    );
}

#[test]
fn forwarded_syntax() {
    let l = "Forwarded: for=198.18.0.1;proto=http;by=203.0.113.43, For=\"[2001:db8::1]:4711\"";
    assert_eq!(xff(&[l], 1), Some(key("2001:db8::1")));
    assert_eq!(xff(&[l], 2), Some(key("198.18.0.1")));
    assert_eq!(
        xff(&["Forwarded: proto=https;for=198.18.0.5"], 1),
        Some(key("198.18.0.5"))
    );
    // Obfuscated and unknown identifiers name no one.
    assert_eq!(xff(&["Forwarded: for=198.18.0.1, for=_hidden"], 1), None);
    assert_eq!(xff(&["Forwarded: for=198.18.0.1, for=unknown"], 1), None);
    assert_eq!(xff(&["Forwarded: for=198.18.0.1, for=\"_x:80\""], 1), None);
    // An element without for=, or with two, names no one.
    assert_eq!(xff(&["Forwarded: for=198.18.0.1, proto=http"], 1), None);
    assert_eq!(xff(&["Forwarded: for=198.18.0.1;for=198.18.0.2"], 1), None);
    // A quoted comma is not a delimiter.
    assert_eq!(
        xff(
            &["Forwarded: for=198.18.0.1;x=\"a,b\", for=198.18.0.2;y=\"c,d\""],
            2
        ),
        Some(key("198.18.0.1"))
    );
    // A forged left part changes nothing.
    assert_eq!(
        xff(&["Forwarded: for=\"[[,,;\", for=198.18.0.3"], 1),
        Some(key("198.18.0.3"))
    );
    // The XFF header is not read in Forwarded mode.
    let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.18.0.1\r\n\r\n";
    assert_eq!(heads(HEADER_FORWARDED, 1, &[head]), vec![None]);
    assert_eq!(heads(HEADER_XFF, 1, &[head]), vec![Some(key("198.18.0.1"))]);
}

#[test]
fn every_split_of_a_pipelined_stream_reads_as_whole() {
    let stream: &[u8] = b"GET /a HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 198.18.0.1\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 5\r\nx-forwarded-for: 2001:db8::2\r\n\r\nhello\
GET /c HTTP/1.1\r\nHost: a\r\n\r\n\
GET /d HTTP/1.1\r\nX-Forwarded-For: [2001:db8::3]:80\r\nX-Forwarded-For: 198.18.0.4\r\n\r\n";
    let whole = heads(HEADER_XFF, 1, &[stream]);
    assert_eq!(
        whole,
        vec![
            Some(key("198.18.0.1")),
            Some(key("2001:db8::2")),
            None,
            Some(key("198.18.0.4"))
        ]
    );
    for i in 0..=stream.len() {
        assert_eq!(
            heads(HEADER_XFF, 1, &[&stream[..i], &stream[i..]]),
            whole,
            "split at {i}"
        );
        for j in i..=stream.len() {
            assert_eq!(
                heads(HEADER_XFF, 1, &[&stream[..i], &stream[i..j], &stream[j..]]),
                whole,
                "split at {i}, {j}"
            );
        }
    }
}

#[test]
fn a_huge_list_costs_constant_state() {
    let mut l = std::string::String::from("X-Forwarded-For: ");
    for i in 0..5000 {
        l.push_str(&std::format!("10.{}.{}.1, ", i / 256 % 256, i % 256));
    }
    l.push_str("198.18.0.77");
    assert_eq!(xff(&[&l], 1), Some(key("198.18.0.77")));
    assert_eq!(xff(&[&l], 4), Some(key("10.19.133.1")));
}

#[test]
fn a_second_client_makes_the_connection_pooled_for_good() {
    let mut c = FwdConn::NEW;
    assert!(!c.carried(&key("198.18.0.1")));
    assert!(!c.carried(&key("198.18.0.1")));
    assert!(!c.pooled());
    assert!(c.carried(&key("198.18.0.2")));
    assert!(c.pooled());
    assert!(!c.carried(&key("198.18.0.1")));
    assert!(c.pooled());
}

#[test]
fn sizes_have_no_hidden_padding() {
    assert_eq!(core::mem::size_of::<Addr>(), 36);
    assert_eq!(core::mem::size_of::<FwdConn>(), 36 + 64 + 16 + 4 + 16);
}
