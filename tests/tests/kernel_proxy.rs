//! PROXY protocol from `--trusted-proxy` peers, through BPF_PROG_TEST_RUN on the
//! real programs: the header (v1 or v2, built here from HAProxy's spec) names
//! the client charged for the connection's requests, split at every offset; the
//! header is no request; the peer is never charged; a header from an untrusted
//! peer names no one; and `--proxy-protocol required` resets a connection
//! without one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use api_guard::kernel::maps::KernelMaps as _;
use api_guard_common::counters::{Event, Kind, Verdict};
use api_guard_tests::{
    packet::{self, Tcp},
    testrun::{Harness, TC_ACT_PIPE, TC_ACT_SHOT, policy},
};

const API: u16 = 8080;
const GET: &[u8] = b"GET /v1/items HTTP/1.1\r\nHost: api\r\n\r\n";
/// The load balancer (trusted in these tests).
const LB4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const LB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

fn harness(extra: &[&str]) -> Harness {
    let mut flags = vec![
        "--trusted-proxy",
        "198.18.200.1",
        "--trusted-proxy",
        "2001:db8:b::1",
    ];
    flags.extend_from_slice(extra);
    Harness::with_policy(&[API], &policy(&flags).unwrap()).unwrap()
}

/// A v2 header (HAProxy's spec, section 2.2) naming `client`, with `tlvs`.
fn v2(client: IpAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    let addrs = match client {
        IpAddr::V4(c) => {
            h.push(0x11); // TCP over IPv4
            let mut a = c.octets().to_vec();
            a.extend_from_slice(&[198, 18, 0, 1, 0xd4, 0x31, 0x1f, 0x90]);
            a
        }
        IpAddr::V6(c) => {
            h.push(0x21); // TCP over IPv6
            let mut a = c.octets().to_vec();
            a.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
            a.extend_from_slice(&[0xd4, 0x31, 0x1f, 0x90]);
            a
        }
    };
    h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&addrs);
    h.extend_from_slice(tlvs);
    h
}

/// A v1 line (section 2.1) naming `client`.
fn v1(client: IpAddr) -> Vec<u8> {
    match client {
        IpAddr::V4(c) => format!("PROXY TCP4 {c} 198.18.0.1 54321 8080\r\n"),
        IpAddr::V6(c) => format!("PROXY TCP6 {c} 2001:db8::1 54321 8080\r\n"),
    }
    .into_bytes()
}

/// One connection from `peer`, its segments in sequence.
struct Conn {
    peer: IpAddr,
    sport: u16,
    next: u32,
}

impl Conn {
    fn open(h: &Harness, peer: IpAddr, sport: u16) -> Self {
        let syn = Tcp {
            sport,
            seq: 9000,
            ..Tcp::syn(API)
        };
        assert_eq!(h.run(&packet::from(peer, &syn)).unwrap(), TC_ACT_PIPE);
        Conn {
            peer,
            sport,
            next: 9001,
        }
    }

    fn frame_at(&self, seq: u32, payload: &[u8]) -> Vec<u8> {
        let tcp = Tcp {
            sport: self.sport,
            seq,
            ..Tcp::data(API, payload)
        };
        packet::from(self.peer, &tcp)
    }

    /// Sends the next segment; returns the action and the TCP flags it left
    /// (a reset turns the segment into a RST); advances if let through.
    fn send(&mut self, h: &Harness, payload: &[u8]) -> (u32, u8) {
        let (action, out) = h.run_out(&self.frame_at(self.next, payload)).unwrap();
        let l4 = if self.peer.is_ipv4() {
            14 + 20
        } else {
            14 + 40
        };
        if action == TC_ACT_PIPE {
            self.next = self.next.wrapping_add(payload.len() as u32);
        }
        (action, out[l4 + 13])
    }
}

fn requests(h: &Harness, who: IpAddr) -> u64 {
    h.datapath.client(who).unwrap().map_or(0, |s| s.requests)
}

fn connections(h: &Harness, who: IpAddr) -> u64 {
    h.datapath.client(who).unwrap().map_or(0, |s| s.connections)
}

fn tracked(h: &Harness, who: IpAddr) -> bool {
    h.datapath.client(who).unwrap().is_some()
}

fn counter(h: &Harness, kind: Kind, verdict: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, verdict)
}

fn event(h: &Harness, e: Event) -> u64 {
    h.datapath.event(e).unwrap()
}

/// Sends `stream` on a new connection from `peer`, cut at `cuts`.
fn send_cut(h: &Harness, peer: IpAddr, sport: u16, stream: &[u8], cuts: &[usize]) {
    let mut c = Conn::open(h, peer, sport);
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        if cut > from {
            let (action, _) = c.send(h, &stream[from..cut]);
            assert_eq!(action, TC_ACT_PIPE, "cut at {cuts:?}");
        }
        from = cut;
    }
}

#[test]
fn a_v2_header_names_the_client_at_every_split_offset() {
    let h = harness(&[]);
    for (peer, client) in [
        (
            IpAddr::from(LB4),
            IpAddr::from(Ipv4Addr::new(198, 19, 1, 7)),
        ),
        (
            IpAddr::from(LB4),
            IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0x7, 0, 0, 0, 0, 9)),
        ),
        (
            IpAddr::from(LB6),
            IpAddr::from(Ipv4Addr::new(198, 19, 1, 8)),
        ),
    ] {
        let stream = [
            v2(client, &[0x04, 0, 2, b'o', b'k']),
            GET.to_vec(),
            GET.to_vec(),
        ]
        .concat();
        for cut in 0..=stream.len() {
            let before = requests(&h, client);
            send_cut(&h, peer, 20000 + cut as u16, &stream, &[cut]);
            assert_eq!(requests(&h, client) - before, 2, "{client} cut at {cut}");
        }
        assert!(!tracked(&h, peer), "the balancer {peer} was charged");
    }
}

#[test]
fn a_v2_header_cut_into_three_at_every_pair_of_offsets_names_the_client() {
    let h = harness(&[]);
    let client = IpAddr::from(Ipv4Addr::new(198, 19, 2, 1));
    let stream = [v2(client, &[]), GET.to_vec()].concat();
    let mut port = 1024u16;
    for a in 1..stream.len() {
        for b in a + 1..stream.len() {
            let before = requests(&h, client);
            port += 1;
            send_cut(&h, LB4.into(), port, &stream, &[a, b]);
            assert_eq!(requests(&h, client) - before, 1, "cuts at {a} and {b}");
        }
    }
    assert!(!tracked(&h, LB4.into()));
}

#[test]
fn a_v1_line_names_the_client_at_every_split_offset() {
    let h = harness(&[]);
    for client in [
        IpAddr::from(Ipv4Addr::new(198, 19, 3, 250)),
        IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0x33, 0, 0, 0, 0x12)),
    ] {
        let stream = [v1(client), GET.to_vec()].concat();
        for cut in 0..=stream.len() {
            let before = requests(&h, client);
            send_cut(&h, LB4.into(), 30000 + cut as u16, &stream, &[cut]);
            assert_eq!(requests(&h, client) - before, 1, "{client} cut at {cut}");
        }
    }
    assert!(!tracked(&h, LB4.into()));
}

#[test]
fn a_header_from_an_untrusted_peer_names_no_one() {
    let h = harness(&[]);
    let victim = IpAddr::from(Ipv4Addr::new(198, 19, 4, 4));
    // Its bytes are the forger's, framed as any stream's: the header is the
    // start of one request (the GET after it in the same head), so a server
    // that reads PROXY headers from anyone serves it counted.
    for (header, forger) in [
        (v1(victim), IpAddr::from(Ipv4Addr::new(198, 18, 9, 1))),
        (v2(victim, &[]), IpAddr::from(Ipv4Addr::new(198, 18, 9, 2))),
    ] {
        send_cut(&h, forger, 40000, &[header, GET.to_vec()].concat(), &[]);
        assert!(tracked(&h, forger), "{forger} not charged");
        assert_eq!(requests(&h, forger), 1, "{forger}");
    }
    assert!(!tracked(&h, victim), "a forged header named a client");
    assert_eq!(event(&h, Event::ProxyClients), 0);
}

#[test]
fn the_header_is_no_request_and_the_balancer_is_never_limited() {
    // One request a second per client: 50 clients behind one balancer all pass,
    // and one client's third request in a second is over its own limit.
    let h = harness(&["--rate", "1", "--burst", "2"]);
    for i in 0..50u8 {
        let client = IpAddr::from(Ipv4Addr::new(198, 19, 5, i));
        let mut c = Conn::open(&h, LB4.into(), 41000 + i as u16);
        let (action, _) = c.send(&h, &[v2(client, &[]), GET.to_vec()].concat());
        assert_eq!(action, TC_ACT_PIPE, "client {i}");
        assert_eq!(requests(&h, client), 1, "client {i}");
    }
    assert!(!tracked(&h, LB4.into()));
    let client = IpAddr::from(Ipv4Addr::new(198, 19, 5, 0));
    let mut c = Conn::open(&h, LB4.into(), 42000);
    assert_eq!(c.send(&h, &v2(client, &[])).0, TC_ACT_PIPE);
    assert_eq!(c.send(&h, GET).0, TC_ACT_PIPE);
    assert_eq!(c.send(&h, GET).0, TC_ACT_SHOT, "the client's third request");
    assert!(counter(&h, Kind::Requests, Verdict::RateLimited) >= 1);
    assert_eq!(counter(&h, Kind::Packets, Verdict::ProxyRefused), 0);
}

#[test]
fn conn_rate_counts_the_named_clients_connections_and_resets_the_excess() {
    let h = harness(&["--conn-rate", "1", "--conn-burst", "1"]);
    let a = IpAddr::from(Ipv4Addr::new(198, 19, 6, 1));
    let b = IpAddr::from(Ipv4Addr::new(198, 19, 6, 2));
    let mut c1 = Conn::open(&h, LB4.into(), 43001);
    assert_eq!(
        c1.send(&h, &[v2(a, &[]), GET.to_vec()].concat()).0,
        TC_ACT_PIPE
    );
    let mut c2 = Conn::open(&h, LB4.into(), 43002);
    assert_eq!(
        c2.send(&h, &[v2(b, &[]), GET.to_vec()].concat()).0,
        TC_ACT_PIPE
    );
    assert_eq!((connections(&h, a), connections(&h, b)), (1, 1));
    // a's second connection in the second: the peer's handshake passed, so it
    // is reset, not stalled.
    let mut c3 = Conn::open(&h, LB4.into(), 43003);
    let (action, flags) = c3.send(&h, &[v2(a, &[]), GET.to_vec()].concat());
    assert_eq!(action, TC_ACT_PIPE);
    assert_eq!(flags & 0x04, 0x04, "not reset: flags {flags:#x}");
    assert_eq!(counter(&h, Kind::Connections, Verdict::ConnLimited), 1);
    assert!(!tracked(&h, LB4.into()));
}

#[test]
fn required_resets_a_trusted_connection_without_a_header() {
    let h = harness(&["--proxy-protocol", "required"]);
    let mut c = Conn::open(&h, LB4.into(), 44000);
    let (action, flags) = c.send(&h, GET);
    assert_eq!(action, TC_ACT_PIPE);
    assert_eq!(flags & 0x04, 0x04, "not reset: flags {flags:#x}");
    assert_eq!(counter(&h, Kind::Requests, Verdict::ProxyRefused), 1);
    assert_eq!(event(&h, Event::ProxyHeaderMissing), 1);
    // Under --dry-run, counted and let through.
    let h = harness(&["--proxy-protocol", "required", "--dry-run"]);
    let mut c = Conn::open(&h, LB4.into(), 44001);
    assert_eq!(c.send(&h, GET), (TC_ACT_PIPE, 0x18));
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 1);
}

#[test]
fn optional_charges_the_peer_for_a_connection_without_a_header() {
    let h = harness(&[]);
    // "P" alone first: a prefix of the v1 preamble, then the rest of a POST.
    let mut c = Conn::open(&h, LB4.into(), 45000);
    assert_eq!(c.send(&h, b"P").0, TC_ACT_PIPE);
    assert_eq!(
        c.send(&h, b"OST /v1 HTTP/1.1\r\nHost: a\r\n\r\n").0,
        TC_ACT_PIPE
    );
    assert_eq!(c.send(&h, GET).0, TC_ACT_PIPE);
    assert_eq!(requests(&h, LB4.into()), 2);
    assert_eq!(event(&h, Event::ProxyHeaderMissing), 1);
    // A LOCAL header (the balancer's own health check) names no client either.
    let mut local = v2(Ipv4Addr::new(198, 19, 7, 7).into(), &[]);
    local[12] = 0x20;
    let mut c = Conn::open(&h, LB4.into(), 45001);
    assert_eq!(c.send(&h, &[local, GET.to_vec()].concat()).0, TC_ACT_PIPE);
    assert_eq!(requests(&h, LB4.into()), 3);
    assert!(!tracked(&h, Ipv4Addr::new(198, 19, 7, 7).into()));
}

#[test]
fn a_segment_past_a_gap_in_the_header_waits_for_the_gap() {
    let h = harness(&[]);
    let client = IpAddr::from(Ipv4Addr::new(198, 19, 8, 1));
    let stream = [v2(client, &[]), GET.to_vec()].concat();
    let mut c = Conn::open(&h, LB4.into(), 46000);
    // The second half first (out of order): dropped, the sender sends it again.
    let late = c.frame_at(c.next + 10, &stream[10..]);
    assert_eq!(h.run(&late).unwrap(), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Packets, Verdict::ProxyRefused), 1);
    assert_eq!(c.send(&h, &stream[..10]).0, TC_ACT_PIPE);
    assert_eq!(c.send(&h, &stream[10..]).0, TC_ACT_PIPE);
    assert_eq!(requests(&h, client), 1);
    // A retransmission of the whole stream: the header is not read again, and
    // nothing the server has not taken is free (no socket here: charged again).
    let again = c.frame_at(9001, &stream);
    assert_eq!(h.run(&again).unwrap(), TC_ACT_PIPE);
    assert!(!tracked(&h, LB4.into()));
    assert!(requests(&h, client) >= 1);
}

#[test]
fn a_denied_named_client_is_reset_though_its_balancer_is_not() {
    let h = harness(&["--deny", "198.19.9.0/24"]);
    let mut c = Conn::open(&h, LB4.into(), 47000);
    let (action, flags) = c.send(
        &h,
        &[v2(Ipv4Addr::new(198, 19, 9, 5).into(), &[]), GET.to_vec()].concat(),
    );
    assert_eq!(action, TC_ACT_PIPE);
    assert_eq!(flags & 0x04, 0x04, "not reset: flags {flags:#x}");
    assert_eq!(counter(&h, Kind::Packets, Verdict::Denied), 1);
    // Another client through the same balancer passes.
    let mut c = Conn::open(&h, LB4.into(), 47001);
    let (action, flags) = c.send(
        &h,
        &[v2(Ipv4Addr::new(198, 19, 10, 5).into(), &[]), GET.to_vec()].concat(),
    );
    assert_eq!((action, flags & 0x04), (TC_ACT_PIPE, 0));
}
