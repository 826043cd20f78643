//! `X-Forwarded-For` / `Forwarded` from `--trusted-proxy` peers
//! (`--trusted-hops`), through BPF_PROG_TEST_RUN on the real programs: the
//! list is read across segments split at every offset, in any case of the
//! header name, over several lines; the client N hops from the right is
//! charged, never the proxy; a forged left part, garbage, and a huge list
//! change nothing; an untrusted peer's list names no one; over the limit a
//! single-client connection's segment is dropped, a pooled one's reported.

use api_guard::kernel::maps::KernelMaps as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use api_guard_common::counters::{Event, Kind, Verdict};
use api_guard_tests::testrun::{Harness, Stream, TC_ACT_PIPE, TC_ACT_SHOT, policy};

const API: u16 = 8080;
/// The L7 proxy (trusted in these tests).
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1));

fn harness(extra: &[&str]) -> Harness {
    let mut flags = vec!["--trusted-proxy", "198.18.200.1", "--trusted-hops", "1"];
    flags.extend_from_slice(extra);
    Harness::with_policy(&[API], &policy(&flags).unwrap()).unwrap()
}

fn v4(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, c, d))
}

fn requests(h: &Harness, who: IpAddr) -> u64 {
    h.datapath.client(who).unwrap().map_or(0, |s| s.requests)
}

/// The GCRA clock of the client's request bucket (0: never charged).
fn charged_clock(h: &Harness, who: IpAddr) -> u64 {
    h.datapath
        .client(who)
        .unwrap()
        .map_or(0, |s| s.request_tat_ns)
}

fn counter(h: &Harness, kind: Kind, v: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, v)
}

fn event(h: &Harness, e: Event) -> u64 {
    h.datapath.event(e).unwrap()
}

#[test]
fn a_list_split_at_every_offset_in_any_case_charges_the_rightmost_client_never_the_proxy() {
    let h = harness(&["--rate", "100000"]);
    let names = [
        "X-Forwarded-For",
        "x-forwarded-for",
        "X-FORWARDED-FOR",
        "x-FoRwArDeD-fOr",
    ];
    let head = |name: &str, d: u8| {
        format!(
            "GET /v1/items HTTP/1.1\r\nHost: api\r\n{name}: 203.0.113.9, 198.18.5.{d}\r\nAccept: */*\r\n\r\n"
        )
    };
    let len = head(names[0], 100).len();
    for cut in 1..len {
        let d = (cut % 200) as u8;
        let name = names[cut % names.len()];
        let bytes = head(name, d).into_bytes();
        let mut s = Stream::open(&h, API, PROXY, 20000 + cut as u16);
        assert_eq!(s.send(&h, &bytes[..cut]), TC_ACT_PIPE, "cut {cut}");
        assert_eq!(s.send(&h, &bytes[cut..]), TC_ACT_PIPE, "cut {cut}");
    }
    let total: u64 = (0..200).map(|d| requests(&h, v4(5, d))).sum();
    assert_eq!(
        total,
        len as u64 - 1,
        "one charge per request, to its client"
    );
    // The forged left part named no one.
    assert_eq!(requests(&h, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))), 0);
    // The proxy relayed them all and paid for none.
    assert_eq!(charged_clock(&h, PROXY), 0);
    assert_eq!(event(&h, Event::ForwardedUnnamed), 0);
}

#[test]
fn several_lines_are_one_list_and_hops_count_from_the_right() {
    let h = harness(&[]);
    let h2 = Harness::with_policy(
        &[API],
        &policy(&["--trusted-proxy", "198.18.200.1", "--trusted-hops", "2"]).unwrap(),
    )
    .unwrap();
    let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.18.6.1\r\nAccept: */*\r\nX-Forwarded-For: 198.18.6.2, 198.18.6.3\r\n\r\n";
    for (harness, charged) in [(&h, v4(6, 3)), (&h2, v4(6, 2))] {
        let mut s = Stream::open(harness, API, PROXY, 30000);
        // Split inside the second line's name.
        assert_eq!(s.send(harness, &head[..60]), TC_ACT_PIPE);
        assert_eq!(s.send(harness, &head[60..]), TC_ACT_PIPE);
        assert_eq!(requests(harness, charged), 1);
        for other in [v4(6, 1), v4(6, 2), v4(6, 3)] {
            if other != charged {
                assert_eq!(requests(harness, other), 0, "{other}");
            }
        }
    }
}

#[test]
fn an_untrusted_peers_list_names_no_one() {
    let h = harness(&["--rate", "100000"]);
    let direct = v4(9, 9);
    let mut s = Stream::open(&h, API, direct, 31000);
    assert_eq!(
        s.send(
            &h,
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.18.7.7\r\nForwarded: for=198.18.7.8\r\n\r\n"
        ),
        TC_ACT_PIPE
    );
    assert_eq!(requests(&h, direct), 1);
    assert_ne!(charged_clock(&h, direct), 0, "charged by its own address");
    assert_eq!(requests(&h, v4(7, 7)), 0);
    assert_eq!(requests(&h, v4(7, 8)), 0);
}

#[test]
fn forwarded_syntax_quotes_ports_ipv6_and_obfuscated_identifiers() {
    let h = harness(&["--forwarded-header", "forwarded", "--rate", "100000"]);
    let mut s = Stream::open(&h, API, PROXY, 32000);
    let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.18.8.1\r\nForwarded: for=198.18.8.2;proto=http;by=\"_lb\", For=\"[2001:db8:1:2::7]:4711\"\r\n\r\n";
    for cut in [20, 50, 70, 90, 100] {
        // Each split re-sends the same head on a new connection.
        let mut c = Stream::open(&h, API, PROXY, 33000 + cut as u16);
        assert_eq!(c.send(&h, &head[..cut]), TC_ACT_PIPE);
        assert_eq!(c.send(&h, &head[cut..]), TC_ACT_PIPE);
    }
    assert_eq!(s.send(&h, head), TC_ACT_PIPE);
    let six = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0x99));
    // Bucketed by /64, like the TC path.
    assert_eq!(requests(&h, six), 6);
    // X-Forwarded-For is not read in this mode; the left element is not the client.
    assert_eq!(requests(&h, v4(8, 1)), 0);
    assert_eq!(requests(&h, v4(8, 2)), 0);
    // An obfuscated or unknown rightmost element names no one: the proxy is charged.
    for v in ["for=_hidden", "for=unknown", "proto=http"] {
        let head = format!("GET / HTTP/1.1\r\nForwarded: for=198.18.8.3, {v}\r\n\r\n");
        assert_eq!(s.send(&h, head.as_bytes()), TC_ACT_PIPE);
    }
    assert_eq!(requests(&h, v4(8, 3)), 0);
    assert_eq!(event(&h, Event::ForwardedUnnamed), 3);
    assert_ne!(charged_clock(&h, PROXY), 0);
}

#[test]
fn a_forged_left_part_garbage_and_a_huge_list_change_nothing() {
    let h = harness(&["--rate", "100000"]);
    let mut s = Stream::open(&h, API, PROXY, 34000);
    let mut huge = String::from("GET / HTTP/1.1\r\nX-Forwarded-For: ");
    for i in 0..300 {
        huge.push_str(&format!("10.0.{}.{}, ", i / 250, i % 250));
    }
    huge.push_str("garbage, [[[, \"1.2.3.4, ::::, 198.18.10.1\r\n");
    for i in 0..20 {
        huge.push_str(&format!("X-Forwarded-For: 10.1.0.{i}\r\n"));
    }
    huge.push_str("X-Forwarded-For: unknown, 198.18.10.2\r\n\r\n");
    let bytes = huge.into_bytes();
    for chunk in bytes.chunks(700) {
        assert_eq!(s.send(&h, chunk), TC_ACT_PIPE);
    }
    assert_eq!(requests(&h, v4(10, 2)), 1);
    assert_eq!(requests(&h, v4(10, 1)), 0);
    assert_eq!(event(&h, Event::ForwardedUnnamed), 0);
    // Garbage on the right names no one: the proxy pays.
    for bad in [
        "198.18.10.3, 1.2.3",
        "198.18.10.3, 256.1.1.1",
        "198.18.10.3, [::1",
    ] {
        let head = format!("GET / HTTP/1.1\r\nX-Forwarded-For: {bad}\r\n\r\n");
        assert_eq!(s.send(&h, head.as_bytes()), TC_ACT_PIPE);
    }
    assert_eq!(requests(&h, v4(10, 3)), 0);
    assert_eq!(event(&h, Event::ForwardedUnnamed), 3);
}

#[test]
fn over_the_limit_a_single_client_connection_drops_and_a_pooled_one_reports() {
    let h = harness(&["--rate", "1", "--burst", "1"]);
    let req = |who: &str| format!("GET / HTTP/1.1\r\nX-Forwarded-For: {who}\r\n\r\n");
    // One client on its connection: enforced as a direct client would be.
    let mut single = Stream::open(&h, API, PROXY, 35000);
    assert_eq!(single.send(&h, req("198.18.11.1").as_bytes()), TC_ACT_PIPE);
    assert_eq!(single.send(&h, req("198.18.11.1").as_bytes()), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 1);
    // Two clients pooled on one connection: 198.18.11.2 is within its limit,
    // then 198.18.11.1 (over its limit) is reported, not dropped.
    let mut pooled = Stream::open(&h, API, PROXY, 35001);
    assert_eq!(pooled.send(&h, req("198.18.11.2").as_bytes()), TC_ACT_PIPE);
    assert_eq!(pooled.send(&h, req("198.18.11.1").as_bytes()), TC_ACT_PIPE);
    assert_eq!(pooled.send(&h, req("198.18.11.1").as_bytes()), TC_ACT_PIPE);
    assert_eq!(counter(&h, Kind::Requests, Verdict::ForwardedReported), 2);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 1);
    assert_eq!(event(&h, Event::ForwardedPooled), 1);
    let reported = h.datapath.forwarded_reported().unwrap();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        reported[0].0,
        api_guard_common::client::ClientKey::v4([198, 18, 11, 1])
    );
    assert_eq!(reported[0].1.requests, 2);
    // The proxy is never limited for them.
    assert_eq!(charged_clock(&h, PROXY), 0);
}
