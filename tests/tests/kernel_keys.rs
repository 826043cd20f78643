//! Key and route limits through BPF_PROG_TEST_RUN on the real programs: the
//! key header and the request line are read across segments split at every
//! offset, charged once to one bucket, in any case of the header name; a
//! query string never escapes a route; over a limit the segment that ends the
//! key is dropped (or only counted under --dry-run); and no map holds a key.

use api_guard::kernel::maps::KernelMaps as _;
use std::net::{IpAddr, Ipv4Addr};

use api_guard_common::{
    counters::{Kind, Verdict},
    keys::{BUCKET_KEY, BUCKET_ROUTE_CLIENT, BUCKET_ROUTE_KEY, BucketKey},
};
use api_guard_tests::{
    packet::{self, Tcp},
    testrun::{Harness, Stream, TC_ACT_PIPE, TC_ACT_SHOT, policy},
};

const API: u16 = 8080;
/// The key's bucket clock advances one second per charge (rate 1/s): the
/// number of charges is read off the clock.
const SECOND: u64 = 1_000_000_000;

fn harness(flags: &[&str]) -> Harness {
    Harness::with_policy(&[API], &policy(flags).unwrap()).unwrap()
}

fn addr(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, c, d))
}

fn buckets(h: &Harness, kind: u32) -> Vec<(BucketKey, u64)> {
    let mut b: Vec<_> = h
        .datapath
        .limit_buckets()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.kind == kind)
        .collect();
    b.sort_by_key(|(k, _)| (k.route, k.id));
    b
}

/// Charges taken from a 1/s bucket first charged after `since`.
fn charges(tat: u64, since: u64) -> u64 {
    (tat - since) / SECOND
}

fn counter(h: &Harness, kind: Kind, v: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, v)
}

/// Every map the key stage writes holds no byte string of the key.
fn assert_no_key_in_maps(h: &Harness, key: &[u8]) {
    for (k, v) in h.datapath.limit_buckets().unwrap() {
        let bytes: Vec<u8> = k.id.iter().chain(&v.to_le_bytes()).copied().collect();
        assert!(
            !bytes.windows(4).any(|w| key.windows(4).any(|kw| kw == w)),
            "a bucket holds bytes of the key: {k:?}"
        );
    }
}

#[test]
fn a_key_header_split_at_every_offset_and_in_any_case_is_charged_once_to_one_bucket() {
    let h = harness(&["--key-header", "X-API-Key", "--key-rate", "1:100000"]);
    let since = api_guard::clock::monotonic_ns();
    let names = ["X-API-Key", "x-api-key", "X-API-KEY", "x-Api-kEy"];
    let mut sent = 0;
    let mut len = 0;
    for (i, name) in names.iter().cycle().take(400).enumerate() {
        let head = format!(
            "GET /v1/items?page=2 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n{name}:  k3y-Secret-0042 \r\nUser-Agent: t\r\n\r\n"
        );
        len = head.len();
        if i + 1 >= len {
            break;
        }
        let cut = i + 1;
        let mut s = Stream::open(&h, API, addr(1 + (i / 200) as u8, (i % 200) as u8), 40000);
        assert_eq!(
            s.send(&h, &head.as_bytes()[..cut]),
            TC_ACT_PIPE,
            "cut {cut}"
        );
        assert_eq!(
            s.send(&h, &head.as_bytes()[cut..]),
            TC_ACT_PIPE,
            "cut {cut}"
        );
        sent += 1;
    }
    assert!(sent + 1 >= len - 1, "every offset was tried");
    let keys = buckets(&h, BUCKET_KEY);
    assert_eq!(
        keys.len(),
        1,
        "one key, one bucket, whatever address and case"
    );
    assert_eq!(charges(keys[0].1, since), sent as u64);
    assert_no_key_in_maps(&h, b"k3y-Secret-0042");
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 0);
}

#[test]
fn a_route_with_a_query_split_at_every_offset_is_charged_once_per_request() {
    let h = harness(&["--route-limit", "POST /v1/login=1:100000"]);
    let since = api_guard::clock::monotonic_ns();
    let head = b"POST /v1/login?x=1 HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n\r\nabcd";
    let client = addr(3, 1);
    for cut in 1..head.len() {
        let mut s = Stream::open(&h, API, client, 20000 + cut as u16);
        assert_eq!(s.send(&h, &head[..cut]), TC_ACT_PIPE, "cut {cut}");
        assert_eq!(s.send(&h, &head[cut..]), TC_ACT_PIPE, "cut {cut}");
    }
    // Another route, and the body of the first, pay nothing.
    let mut s = Stream::open(&h, API, client, 30000);
    s.send(
        &h,
        b"POST /v1/logout HTTP/1.1\r\n\r\nGET /v1/login HTTP/1.1\r\n\r\n",
    );
    let routes = buckets(&h, BUCKET_ROUTE_CLIENT);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(charges(routes[0].1, since), head.len() as u64 - 1);
}

#[test]
fn over_the_key_limit_the_segment_ending_the_key_is_dropped_until_a_token_frees() {
    let h = harness(&["--key-header", "authorization", "--key-rate", "1:2"]);
    let req = |key: &str| format!("GET / HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\r\n");
    // One key from three addresses: one bucket of two.
    for (i, want) in [TC_ACT_PIPE, TC_ACT_PIPE, TC_ACT_SHOT]
        .into_iter()
        .enumerate()
    {
        let mut s = Stream::open(&h, API, addr(4, i as u8 + 1), 40000);
        assert_eq!(s.send(&h, req("shared").as_bytes()), want, "request {i}");
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 1);
    // The scheme in another case is the same key.
    let mut s = Stream::open(&h, API, addr(4, 9), 40000);
    let respelled = b"GET / HTTP/1.1\r\nAUTHORIZATION: BEARER shared\r\n\r\n";
    assert_eq!(s.send(&h, respelled), TC_ACT_SHOT);
    // Two keys from one address: two buckets.
    let mut s = Stream::open(&h, API, addr(4, 1), 40001);
    assert_eq!(s.send(&h, req("other").as_bytes()), TC_ACT_PIPE);
    // The key in the second segment of a head: the first passes, the second
    // (which ends the key) is dropped, and its retransmission too.
    let mut s = Stream::open(&h, API, addr(4, 20), 40000);
    let head = req("shared");
    let (a, b) = head.as_bytes().split_at(20);
    assert_eq!(s.send(&h, a), TC_ACT_PIPE);
    assert_eq!(s.send(&h, b), TC_ACT_SHOT);
    assert_eq!(s.send(&h, b), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 4);
    assert_eq!(buckets(&h, BUCKET_KEY).len(), 2);
    assert_no_key_in_maps(&h, b"shared");
}

#[test]
fn a_route_per_key_and_per_client_and_the_most_specific_wins() {
    let h = harness(&[
        "--key-header",
        "x-api-key",
        "--route-limit",
        "GET /v1=1:100",
        "--route-limit",
        "GET /v1/export=1:1",
    ]);
    let mut s = Stream::open(&h, API, addr(5, 1), 40000);
    let export = |key: &str| format!("GET /v1/export?all=1 HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n");
    assert_eq!(s.send(&h, export("a").as_bytes()), TC_ACT_PIPE);
    assert_eq!(s.send(&h, export("a").as_bytes()), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 1);
    // Another key from another client has its own route bucket (from the
    // same client, the client's bucket of the route is spent too).
    assert_eq!(s.send(&h, export("c").as_bytes()), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 2);
    let mut s = Stream::open(&h, API, addr(5, 2), 40000);
    assert_eq!(s.send(&h, export("b").as_bytes()), TC_ACT_PIPE);
    // A respelled path pays the strictest limit of its method (export's).
    assert_eq!(
        s.send(&h, b"GET /v1/%65xport HTTP/1.1\r\nX-API-Key: b\r\n\r\n"),
        TC_ACT_SHOT
    );
    // The less specific route is untouched by those.
    assert_eq!(
        s.send(&h, b"GET /v1/items HTTP/1.1\r\nX-API-Key: b\r\n\r\n"),
        TC_ACT_PIPE
    );
    let per_key = buckets(&h, BUCKET_ROUTE_KEY);
    assert_eq!(per_key.len(), 4, "{per_key:?}");
    // Without a key: the client's bucket of the route.
    let mut s = Stream::open(&h, API, addr(5, 3), 40000);
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_SHOT);
    assert_eq!(buckets(&h, BUCKET_ROUTE_CLIENT).len(), 4);
}

#[test]
fn dry_run_counts_key_and_route_limits_and_drops_nothing() {
    let h = harness(&[
        "--dry-run",
        "--key-header",
        "x-api-key",
        "--key-rate",
        "1:1",
        "--route-limit",
        "* /=1:1",
    ]);
    let mut s = Stream::open(&h, API, addr(6, 1), 40000);
    for _ in 0..3 {
        assert_eq!(
            s.send(&h, b"GET /?x=1 HTTP/1.1\r\nX-API-Key: k\r\n\r\n"),
            TC_ACT_PIPE
        );
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 2);
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 2);
    // The first keyed request spent the client's bucket of the route (a key
    // does not spare it): both keyless ones are over.
    for _ in 0..2 {
        assert_eq!(s.send(&h, b"GET /a HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 2);
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 4);
}

#[test]
fn on_limit_reset_turns_a_key_limited_segment_into_a_reset() {
    let h = harness(&[
        "--on-limit",
        "reset",
        "--key-header",
        "x-api-key",
        "--key-rate",
        "1:1",
    ]);
    let mut s = Stream::open(&h, API, addr(7, 1), 40000);
    let req = b"GET / HTTP/1.1\r\nX-API-Key: k\r\n\r\n";
    assert_eq!(s.send(&h, req), TC_ACT_PIPE);
    let tcp = Tcp {
        sport: s.sport,
        seq: s.next,
        ..Tcp::data(API, req)
    };
    let (action, out) = h.run_out(&packet::from(s.src, &tcp)).unwrap();
    assert_eq!(action, TC_ACT_PIPE, "rewritten, not dropped");
    // The TCP flags byte of the rewritten frame (Ethernet 14 + IPv4 20 + 13).
    assert_ne!(out[14 + 20 + 13] & 0x04, 0, "a RST");
}

#[test]
fn a_key_header_sent_past_a_gap_is_dropped_until_the_gap_is_filled_then_charged_once() {
    let h = harness(&[
        "--key-header",
        "x-api-key",
        "--key-rate",
        "1:100000",
        "--route-limit",
        "GET /v1/login=1:100000",
    ]);
    let since = api_guard::clock::monotonic_ns();
    let a = b"GET /v1/login HTTP/1.1\r\nHost: h\r\n";
    let b = b"X-P: 1\r\n";
    let c = b"X-Api-Key: K\r\n\r\n";
    let mut s = Stream::open(&h, API, addr(8, 1), 40000);
    assert_eq!(s.send(&h, a), TC_ACT_PIPE);
    // C before B: the key stage would never read B (behind what it scanned).
    assert_eq!(
        s.send_ahead(&h, b.len() as u32, c),
        TC_ACT_SHOT,
        "C past the gap"
    );
    assert_eq!(counter(&h, Kind::Packets, Verdict::OutOfOrder), 1);
    assert_eq!(s.send(&h, b), TC_ACT_PIPE, "B fills the gap");
    assert_eq!(s.send(&h, c), TC_ACT_PIPE, "C again, in order");
    let keys = buckets(&h, BUCKET_KEY);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(charges(keys[0].1, since), 1);
    let routes = buckets(&h, BUCKET_ROUTE_CLIENT);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(charges(routes[0].1, since), 1);
    assert_eq!(buckets(&h, BUCKET_ROUTE_KEY).len(), 1);
}

#[test]
fn a_new_made_up_key_per_request_still_pays_the_clients_route_bucket() {
    let h = harness(&[
        "--key-header",
        "x-api-key",
        "--route-limit",
        "POST /v1/login=1:2",
    ]);
    let mut s = Stream::open(&h, API, addr(9, 1), 40000);
    let req = |key: &str| format!("POST /v1/login HTTP/1.1\r\nX-Api-Key: {key}\r\n\r\n");
    assert_eq!(s.send(&h, req("random-1").as_bytes()), TC_ACT_PIPE);
    assert_eq!(s.send(&h, req("random-2").as_bytes()), TC_ACT_PIPE);
    assert_eq!(s.send(&h, req("random-3").as_bytes()), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 1);
}

#[test]
fn a_syn_or_an_empty_segment_writes_no_key_parser_state() {
    let h = harness(&["--key-header", "x-api-key", "--key-rate", "1:100000"]);
    // A connection stopped inside a key's value: its parser holds hash state.
    let mut s = Stream::open(&h, API, addr(10, 1), 40000);
    assert_eq!(
        s.send(&h, b"GET / HTTP/1.1\r\nX-Api-Key: abcdefghij"),
        TC_ACT_PIPE
    );
    assert_eq!(h.datapath.key_conns().unwrap().len(), 1);
    // Spoofed SYNs (and a bare ACK) from many addresses: no entry each.
    for i in 0..20u8 {
        let _ = Stream::open(&h, API, addr(11, i), 41000);
    }
    let ack = Tcp {
        sport: s.sport,
        seq: s.next,
        ..Tcp::data(API, b"")
    };
    assert_eq!(h.run(&packet::from(s.src, &ack)).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.datapath.key_conns().unwrap().len(), 1);
}

#[test]
fn no_byte_of_a_key_stays_in_the_parser_state_after_its_value_ends() {
    let h = harness(&["--key-header", "x-api-key", "--key-rate", "1:100000"]);
    // 15 bytes: 7 past the last whole 8-byte word.
    let key = b"Kq7-zx93-Wm4Lp2";
    assert_eq!(key.len() % 8, 7);
    let mut s = Stream::open(&h, API, addr(12, 1), 40000);
    let head = format!(
        "GET / HTTP/1.1\r\nX-Api-Key: {}\r\nHost: h\r\n",
        std::str::from_utf8(key).unwrap()
    );
    assert_eq!(s.send(&h, head.as_bytes()), TC_ACT_PIPE);
    let parses = h.datapath.key_conns().unwrap();
    assert_eq!(parses.len(), 1);
    for p in parses {
        let mut bytes = p.sip.tail.to_le_bytes().to_vec();
        for v in p.sip.v {
            bytes.extend(v.to_le_bytes());
        }
        assert!(
            !bytes.windows(3).any(|w| key.windows(3).any(|k| k == w)),
            "the parser state holds bytes of the key: {p:?}"
        );
        assert_eq!(p.sip.len, 0, "no hash state once the value ended");
    }
}

#[test]
fn a_get_route_binds_head_and_a_path_parameter_pays_the_strictest_route() {
    let h = harness(&[
        "--route-limit",
        "GET /v1=1:100",
        "--route-limit",
        "GET /v1/export=1:1",
    ]);
    let mut s = Stream::open(&h, API, addr(13, 1), 40000);
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    assert_eq!(s.send(&h, b"HEAD /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_SHOT);
    // "/v1;a/export" is "/v1/export" to a server that strips path parameters.
    let mut s = Stream::open(&h, API, addr(13, 2), 40000);
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    assert_eq!(
        s.send(&h, b"GET /v1;a/export HTTP/1.1\r\n\r\n"),
        TC_ACT_SHOT
    );
    // The less specific route is untouched.
    assert_eq!(s.send(&h, b"GET /v1/items HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    assert_eq!(s.send(&h, b"HEAD /v1/items HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
}

#[test]
fn a_proxy_header_before_the_head_is_no_gap_for_the_key_stage() {
    let h = harness(&[
        "--trusted-proxy",
        "198.18.200.1",
        "--key-header",
        "x-api-key",
        "--key-rate",
        "1:100000",
    ]);
    let since = api_guard::clock::monotonic_ns();
    let lb = IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1));
    let proxy = b"PROXY TCP4 198.18.14.1 198.18.0.1 54321 8080\r\n";
    let req = b"GET / HTTP/1.1\r\nX-Api-Key: k\r\n\r\n";
    // The header and a head in one segment.
    let mut s = Stream::open(&h, API, lb, 40000);
    assert_eq!(s.send(&h, &[&proxy[..], &req[..]].concat()), TC_ACT_PIPE);
    assert_eq!(s.send(&h, req), TC_ACT_PIPE);
    // The header alone, then the head.
    let mut s = Stream::open(&h, API, lb, 40001);
    assert_eq!(s.send(&h, proxy), TC_ACT_PIPE);
    assert_eq!(s.send(&h, req), TC_ACT_PIPE);
    assert_eq!(counter(&h, Kind::Packets, Verdict::OutOfOrder), 0);
    let keys = buckets(&h, BUCKET_KEY);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(charges(keys[0].1, since), 3);
}
