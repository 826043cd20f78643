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
    testrun::{Harness, TC_ACT_PIPE, TC_ACT_SHOT, policy},
};

const API: u16 = 8080;
/// The key's bucket clock advances one second per charge (rate 1/s): the
/// number of charges is read off the clock.
const SECOND: u64 = 1_000_000_000;

fn harness(flags: &[&str]) -> Harness {
    Harness::with_policy(&[API], &policy(flags).unwrap()).unwrap()
}

/// One client→server connection (as in kernel_stream.rs).
struct Stream {
    src: IpAddr,
    sport: u16,
    next: u32,
}

impl Stream {
    fn open(h: &Harness, src: IpAddr, sport: u16) -> Self {
        let syn = Tcp {
            sport,
            seq: 7000,
            ..Tcp::syn(API)
        };
        assert_eq!(h.run(&packet::from(src, &syn)).unwrap(), TC_ACT_PIPE);
        Stream {
            src,
            sport,
            next: 7001,
        }
    }

    /// Sends the next segment; advances only if it went through.
    fn send(&mut self, h: &Harness, payload: &[u8]) -> u32 {
        let tcp = Tcp {
            sport: self.sport,
            seq: self.next,
            ..Tcp::data(API, payload)
        };
        let action = h.run(&packet::from(self.src, &tcp)).unwrap();
        if action == TC_ACT_PIPE {
            self.next = self.next.wrapping_add(payload.len() as u32);
        }
        action
    }
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
        let mut s = Stream::open(&h, addr(1 + (i / 200) as u8, (i % 200) as u8), 40000);
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
        let mut s = Stream::open(&h, client, 20000 + cut as u16);
        assert_eq!(s.send(&h, &head[..cut]), TC_ACT_PIPE, "cut {cut}");
        assert_eq!(s.send(&h, &head[cut..]), TC_ACT_PIPE, "cut {cut}");
    }
    // Another route, and the body of the first, pay nothing.
    let mut s = Stream::open(&h, client, 30000);
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
        let mut s = Stream::open(&h, addr(4, i as u8 + 1), 40000);
        assert_eq!(s.send(&h, req("shared").as_bytes()), want, "request {i}");
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 1);
    // The scheme in another case is the same key.
    let mut s = Stream::open(&h, addr(4, 9), 40000);
    let respelled = b"GET / HTTP/1.1\r\nAUTHORIZATION: BEARER shared\r\n\r\n";
    assert_eq!(s.send(&h, respelled), TC_ACT_SHOT);
    // Two keys from one address: two buckets.
    let mut s = Stream::open(&h, addr(4, 1), 40001);
    assert_eq!(s.send(&h, req("other").as_bytes()), TC_ACT_PIPE);
    // The key in the second segment of a head: the first passes, the second
    // (which ends the key) is dropped, and its retransmission too.
    let mut s = Stream::open(&h, addr(4, 20), 40000);
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
    let mut s = Stream::open(&h, addr(5, 1), 40000);
    let export = |key: &str| format!("GET /v1/export?all=1 HTTP/1.1\r\nX-API-Key: {key}\r\n\r\n");
    assert_eq!(s.send(&h, export("a").as_bytes()), TC_ACT_PIPE);
    assert_eq!(s.send(&h, export("a").as_bytes()), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 1);
    // Another key from the same connection has its own route bucket.
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
    assert_eq!(per_key.len(), 3, "{per_key:?}");
    // Without a key: the client's bucket of the route.
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    assert_eq!(s.send(&h, b"GET /v1/export HTTP/1.1\r\n\r\n"), TC_ACT_SHOT);
    assert_eq!(buckets(&h, BUCKET_ROUTE_CLIENT).len(), 1);
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
    let mut s = Stream::open(&h, addr(6, 1), 40000);
    for _ in 0..3 {
        assert_eq!(
            s.send(&h, b"GET /?x=1 HTTP/1.1\r\nX-API-Key: k\r\n\r\n"),
            TC_ACT_PIPE
        );
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::KeyLimited), 2);
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 2);
    for _ in 0..2 {
        assert_eq!(s.send(&h, b"GET /a HTTP/1.1\r\n\r\n"), TC_ACT_PIPE);
    }
    assert_eq!(counter(&h, Kind::Requests, Verdict::RouteLimited), 1);
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
    let mut s = Stream::open(&h, addr(7, 1), 40000);
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
