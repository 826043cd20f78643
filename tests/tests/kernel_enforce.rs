//! The enforce stage through BPF_PROG_TEST_RUN: limits, blocks, lists, per-network
//! limits, IPv6 buckets and dry run, with policies built from real flags.

use api_guard::kernel::KernelMaps as _;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use api_guard_common::counters::{Kind, Verdict};
use api_guard_tests::{
    packet::{self, CLIENT4, Tcp},
    testrun::{Harness, TC_ACT_PIPE, TC_ACT_SHOT, policy},
};

const API: u16 = 8080;
const GET: &[u8] = b"GET /v1/items HTTP/1.1\r\nHost: api\r\n\r\n";

fn harness(flags: &[&str]) -> Harness {
    Harness::with_policy(&[API], &policy(flags).unwrap()).unwrap()
}

/// Sends `n` requests from `src` at once and returns how many passed.
fn requests(h: &Harness, src: impl Into<IpAddr>, n: usize) -> usize {
    let frame = packet::from(src.into(), &Tcp::data(API, GET));
    (0..n)
        .filter(|_| h.run(&frame).unwrap() == TC_ACT_PIPE)
        .count()
}

fn counter(h: &Harness, kind: Kind, verdict: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, verdict)
}

fn v4(last: u8) -> IpAddr {
    Ipv4Addr::new(198, 18, 0, last).into()
}

#[test]
fn no_limit_passes_everything() {
    let h = harness(&[]);
    assert_eq!(requests(&h, CLIENT4, 50), 50);
}

#[test]
fn rate_limit_admits_the_burst_then_drops() {
    let h = harness(&["--rate", "1", "--burst", "5"]);
    assert_eq!(requests(&h, CLIENT4, 20), 5);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Allowed), 5);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 15);
    assert_eq!(counter(&h, Kind::Packets, Verdict::RateLimited), 15);
    // Packets that are not request starts (ACKs, data) are not limited.
    let mut ack = Tcp::data(API, b"");
    ack.flags = packet::ACK;
    assert_eq!(h.run(&packet::v4(&ack)).unwrap(), TC_ACT_PIPE);
    // Another client has its own bucket.
    assert_eq!(requests(&h, v4(77), 20), 5);
}

#[test]
fn the_bucket_refills_at_the_rate() {
    let h = harness(&["--rate", "5", "--burst", "2"]);
    assert_eq!(requests(&h, CLIENT4, 10), 2);
    thread::sleep(Duration::from_millis(450)); // 2.25 intervals of 200 ms
    assert_eq!(requests(&h, CLIENT4, 10), 2);
}

#[test]
fn a_retransmitted_request_is_judged_again() {
    // The kernel keeps no per-connection state: a retransmission of a dropped
    // request is a request start like any other, dropped while the client is over
    // its limit and admitted once the bucket has refilled (TCP delivers it late).
    let h = harness(&["--rate", "2", "--burst", "1"]);
    let frame = packet::v4(&Tcp::data(API, GET));
    assert_eq!(h.run(&frame).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run(&frame).unwrap(), TC_ACT_SHOT);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(h.run(&frame).unwrap(), TC_ACT_PIPE);
    let state = h.datapath.client(CLIENT4.into()).unwrap().unwrap();
    assert_eq!(state.requests, 3);
}

#[test]
fn going_over_blocks_every_packet_until_the_block_expires() {
    let h = harness(&["--rate", "1", "--burst", "1", "--block-for", "1s"]);
    assert_eq!(requests(&h, CLIENT4, 2), 1);
    // Now everything from the client to the API port is dropped, SYNs included.
    let mut ack = Tcp::data(API, b"");
    ack.flags = packet::ACK;
    assert_eq!(h.run(&packet::v4(&Tcp::syn(API))).unwrap(), TC_ACT_SHOT);
    assert_eq!(h.run(&packet::v4(&ack)).unwrap(), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Connections, Verdict::Blocked), 1);
    assert_eq!(counter(&h, Kind::Packets, Verdict::Blocked), 2);
    // Other ports and other clients are untouched.
    assert_eq!(h.run(&packet::v4(&Tcp::syn(9999))).unwrap(), TC_ACT_PIPE);
    assert_eq!(
        h.run(&packet::from(v4(9), &Tcp::syn(API))).unwrap(),
        TC_ACT_PIPE
    );
    thread::sleep(Duration::from_millis(1500)); // past the block; the bucket refilled
    assert_eq!(h.run(&packet::v4(&ack)).unwrap(), TC_ACT_PIPE);
    assert_eq!(requests(&h, CLIENT4, 1), 1);
}

#[test]
fn connection_rate_limits_syns() {
    let h = harness(&["--conn-rate", "1", "--conn-burst", "3"]);
    let syn = packet::v4(&Tcp::syn(API));
    let passed = (0..10)
        .filter(|_| h.run(&syn).unwrap() == TC_ACT_PIPE)
        .count();
    assert_eq!(passed, 3);
    assert_eq!(counter(&h, Kind::Connections, Verdict::ConnLimited), 7);
    // Requests on established connections are not connection attempts.
    assert_eq!(requests(&h, CLIENT4, 5), 5);
}

#[test]
fn deny_drops_and_allow_bypasses_limits() {
    let h = harness(&[
        "--rate",
        "1",
        "--burst",
        "1",
        "--deny",
        "198.18.0.0/24",
        "--deny",
        "2001:db8:66::/48",
        "--allow",
        "198.18.0.7",
    ]);
    // Denied: everything, SYNs too, IPv4 and IPv6.
    assert_eq!(requests(&h, v4(2), 3), 0);
    assert_eq!(
        h.run(&packet::from(v4(2), &Tcp::syn(API))).unwrap(),
        TC_ACT_SHOT
    );
    let denied6: IpAddr = "2001:db8:66:1::5".parse().unwrap();
    assert_eq!(requests(&h, denied6, 2), 0);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Denied), 5);
    // Allow wins over deny, and over the limit.
    assert_eq!(requests(&h, v4(7), 30), 30);
    // Outside both lists: the limit bites.
    assert_eq!(requests(&h, Ipv4Addr::new(198, 19, 1, 1), 3), 1);
}

#[test]
fn network_limits_apply_most_specific_first() {
    let h = harness(&[
        "--rate",
        "1",
        "--burst",
        "2",
        "--limit",
        "198.18.0.0/16=1:5",
        "--limit",
        "198.18.3.0/24=1:9",
        "--limit",
        "2001:db8:5::/48=1:4",
    ]);
    assert_eq!(requests(&h, Ipv4Addr::new(198, 18, 3, 4), 20), 9);
    assert_eq!(requests(&h, Ipv4Addr::new(198, 18, 4, 4), 20), 5);
    assert_eq!(requests(&h, Ipv4Addr::new(198, 19, 4, 4), 20), 2);
    assert_eq!(
        requests(&h, "2001:db8:5:1::1".parse::<Ipv6Addr>().unwrap(), 20),
        4
    );
}

#[test]
fn ipv6_clients_share_a_bucket_per_prefix() {
    let h = harness(&["--rate", "1", "--burst", "4"]);
    let a: Ipv6Addr = "2001:db8:1:2::a".parse().unwrap();
    let b: Ipv6Addr = "2001:db8:1:2:ffff::b".parse().unwrap();
    let other: Ipv6Addr = "2001:db8:1:3::a".parse().unwrap();
    assert_eq!(requests(&h, a, 3), 3);
    assert_eq!(requests(&h, b, 3), 1, "same /64 as a: one token left");
    assert_eq!(requests(&h, other, 3), 3, "another /64: its own bucket");
    // --ipv6-prefix 128 keys every address on its own.
    let h = harness(&["--rate", "1", "--burst", "4", "--ipv6-prefix", "128"]);
    assert_eq!(requests(&h, a, 4), 4);
    assert_eq!(requests(&h, b, 4), 4);
}

#[test]
fn dry_run_drops_nothing_and_counts_what_it_would() {
    let h = harness(&[
        "--rate",
        "1",
        "--burst",
        "2",
        "--deny",
        "198.18.9.0/24",
        "--dry-run",
    ]);
    assert_eq!(requests(&h, CLIENT4, 10), 10);
    assert_eq!(requests(&h, Ipv4Addr::new(198, 18, 9, 1), 3), 3);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 8);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Denied), 3);
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 11);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Allowed), 2);
}

#[test]
fn live_policy_changes_apply_to_the_next_packet() {
    let mut h = harness(&["--rate", "1", "--burst", "1"]);
    assert_eq!(requests(&h, CLIENT4, 3), 1);
    h.datapath
        .apply_policy(&policy(&[]).unwrap().tables(0))
        .unwrap();
    assert_eq!(requests(&h, CLIENT4, 3), 3);
}

/// Whether the IPv4 header and TCP checksums of a frame (no VLAN) are right.
fn checksums_ok_v4(frame: &[u8]) -> bool {
    use api_guard_common::checksum::{add_words, finish, pseudo_header};
    let ip = &frame[14..34];
    let tcp = &frame[34..];
    finish(add_words(0, ip)) == 0
        && finish(add_words(
            pseudo_header(&ip[12..16], &ip[16..20], tcp.len() as u32),
            tcp,
        )) == 0
}

#[test]
fn on_limit_reset_turns_the_request_into_a_reset() {
    let h = harness(&["--rate", "1", "--burst", "1", "--on-limit", "reset"]);
    let mut tcp = Tcp::data(API, GET);
    tcp.seq = 0x01020304;
    tcp.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let frame = packet::v4(&tcp);
    let (action, out) = h.run_out(&frame).unwrap();
    assert_eq!(
        (action, out.len()),
        (TC_ACT_PIPE, frame.len()),
        "under the limit: untouched"
    );
    assert_eq!(out, frame);

    let (action, out) = h.run_out(&frame).unwrap();
    assert_eq!(action, TC_ACT_PIPE, "the reset goes on to the server");
    assert_eq!(out.len(), 14 + 20 + 20, "payload and options trimmed");
    assert_eq!(
        u16::from_be_bytes([out[16], out[17]]),
        40,
        "IP total length"
    );
    assert_eq!(out[34 + 12], 0x50, "data offset 5");
    assert_eq!(out[34 + 13], packet::ACK | 0x04, "RST|ACK");
    assert_eq!(&out[34 + 4..34 + 8], &[1, 2, 3, 4], "sequence number kept");
    // Everything else up to the TCP flags is as it was (bar length and checksum).
    assert_eq!(
        (&out[..16], &out[18..24], &out[26..46]),
        (&frame[..16], &frame[18..24], &frame[26..46])
    );
    assert!(checksums_ok_v4(&out), "checksums fixed");
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 1);
}

#[test]
fn on_limit_reset_works_for_ipv6() {
    let h = harness(&["--rate", "1", "--burst", "1", "--on-limit", "reset"]);
    let frame = packet::v6(&Tcp::data(API, GET));
    assert_eq!(h.run_out(&frame).unwrap().0, TC_ACT_PIPE);
    let (action, out) = h.run_out(&frame).unwrap();
    assert_eq!((action, out.len()), (TC_ACT_PIPE, 14 + 40 + 20));
    assert_eq!(
        u16::from_be_bytes([out[18], out[19]]),
        20,
        "IPv6 payload length"
    );
    let tcp = &out[54..];
    assert_eq!(tcp[13], packet::ACK | 0x04);
    use api_guard_common::checksum::{add_words, finish, pseudo_header};
    assert_eq!(
        finish(add_words(
            pseudo_header(&out[22..38], &out[38..54], 20),
            tcp
        )),
        0
    );
}

/// An IPv4 fragment from `src` at `offset` (8-byte units) carrying `body`, more
/// fragments to come.
fn fragment4(src: Ipv4Addr, offset: u16, body: &[u8]) -> Vec<u8> {
    use api_guard_tests::packet::{ETH_P_IP, IPPROTO_TCP, SERVER4};
    let mut ip = packet::ipv4(src, SERVER4, &[], IPPROTO_TCP, body);
    ip[6..8].copy_from_slice(&(0x2000 | offset).to_be_bytes()); // MF + offset
    // Fix the header checksum after the edit.
    ip[10..12].copy_from_slice(&[0, 0]);
    let check =
        api_guard_common::checksum::finish(api_guard_common::checksum::add_words(0, &ip[..20]));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    packet::ethernet(&[], ETH_P_IP, &ip)
}

#[test]
fn fragments_cannot_slip_past_a_deny_or_a_block() {
    use api_guard_tests::packet::{ETH_P_IPV6, Ext, IPPROTO_TCP, SERVER6};
    let h = harness(&["--deny", "198.18.66.0/24", "--deny", "2001:db8:66::/48"]);
    let denied4 = Ipv4Addr::new(198, 18, 66, 1);
    let other4 = Ipv4Addr::new(198, 18, 67, 1);
    let tcp = Tcp::data(API, GET).bytes();
    // A later fragment, and a first fragment too short to hold the TCP header.
    assert_eq!(
        h.run(&fragment4(denied4, 3, &tcp[20..])).unwrap(),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(&fragment4(denied4, 0, &tcp[..8])).unwrap(),
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(&fragment4(other4, 3, &tcp[20..])).unwrap(),
        TC_ACT_PIPE
    );
    assert_eq!(
        h.run(&fragment4(other4, 0, &tcp[..8])).unwrap(),
        TC_ACT_PIPE
    );
    // IPv6: a later fragment, and a chain longer than the parser follows.
    let denied6: Ipv6Addr = "2001:db8:66::9".parse().unwrap();
    let frag6 = packet::ipv6(
        denied6,
        SERVER6,
        &[Ext::fragment(8, false)],
        IPPROTO_TCP,
        &tcp[20..],
    );
    assert_eq!(
        h.run(&packet::ethernet(&[], ETH_P_IPV6, &frag6)).unwrap(),
        TC_ACT_SHOT
    );
    let long_chain: Vec<Ext> = (0..8).map(|_| Ext::dest_opts(1)).collect();
    let chained = packet::ipv6(denied6, SERVER6, &long_chain, IPPROTO_TCP, &tcp);
    assert_eq!(
        h.run(&packet::ethernet(&[], ETH_P_IPV6, &chained)).unwrap(),
        TC_ACT_SHOT
    );
    assert_eq!(counter(&h, Kind::Packets, Verdict::Denied), 4);
    assert_eq!(counter(&h, Kind::Packets, Verdict::Passed), 2);
}

#[test]
fn fragments_from_a_client_blocked_by_block_for_or_over_its_limit_are_dropped() {
    let tcp = Tcp::data(API, GET).bytes();
    let tiny_first = |src| fragment4(src, 0, &tcp[..8]);
    let later = |src| fragment4(src, 3, &tcp[20..]);

    // --block-for: the kernel blocks the client when it goes over; from then on
    // its fragments are dropped as blocked, like its whole segments.
    let h = harness(&["--rate", "1", "--burst", "2", "--block-for", "1h"]);
    let abuser = Ipv4Addr::new(198, 18, 0, 7);
    assert_eq!(h.run(&tiny_first(abuser)).unwrap(), TC_ACT_PIPE);
    assert_eq!(requests(&h, abuser, 3), 2);
    assert_eq!(h.run(&tiny_first(abuser)).unwrap(), TC_ACT_SHOT);
    assert_eq!(h.run(&later(abuser)).unwrap(), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Packets, Verdict::Blocked), 2);
    // A well-behaved client's fragments pass.
    let polite = Ipv4Addr::new(198, 18, 0, 8);
    assert_eq!(requests(&h, polite, 1), 1);
    assert_eq!(h.run(&later(polite)).unwrap(), TC_ACT_PIPE);

    // Without a block: dropped while the client has no request token left.
    let h = harness(&["--rate", "1", "--burst", "2"]);
    assert_eq!(requests(&h, abuser, 2), 2);
    assert_eq!(h.run(&later(abuser)).unwrap(), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Packets, Verdict::RateLimited), 1);
}

#[test]
fn ipv6_lists_match_the_address_not_its_bucket() {
    // The /64 bucket keys per-client state only: an allowed or denied /128 is that
    // host, not its whole /64.
    let h = harness(&[
        "--rate",
        "1",
        "--burst",
        "1",
        "--allow",
        "2001:db8:1::5",
        "--deny",
        "2001:db8:1::6",
    ]);
    let allowed: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
    let denied: Ipv6Addr = "2001:db8:1::6".parse().unwrap();
    let neighbour: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
    assert_eq!(requests(&h, allowed, 5), 5);
    assert_eq!(requests(&h, denied, 2), 0);
    assert_eq!(
        requests(&h, neighbour, 3),
        1,
        "limited, not allowed nor denied"
    );
}

#[test]
fn short_request_starts_of_every_length_are_seen() {
    let h = harness(&["--rate", "1", "--burst", "100"]);
    // Each the first bytes of a connection of its own (other bytes at the
    // same sequence number would be a rewritten retransmission, which errs
    // high).
    for (port, start) in (41000..).zip([
        &b"GET "[..],
        b"PUT /",
        b"POST /",
        b"HEAD /x",
        b"PATCH ",
        b"TRACE /",
        b"DELETE ",
    ]) {
        let tcp = Tcp {
            sport: port,
            ..Tcp::data(API, start)
        };
        assert_eq!(h.run(&packet::v4(&tcp)).unwrap(), TC_ACT_PIPE);
    }
    let state = h.datapath.client(CLIENT4.into()).unwrap().unwrap();
    assert_eq!(state.requests, 7);
}

#[test]
fn fail_open_lets_drops_through_once_the_heartbeat_is_stale() {
    use api_guard::clock::monotonic_ns;
    let denied = Ipv4Addr::new(198, 18, 9, 1);
    let flags = [
        "--rate",
        "1",
        "--burst",
        "2",
        "--deny",
        "198.18.9.0/24",
        // Over the limit once, blocked: a stalled test never sees a refill.
        "--block-for",
        "1h",
        "--heartbeat-timeout",
        "2s",
    ];
    let mut h = harness(&flags);
    assert_eq!(requests(&h, CLIENT4, 5), 2, "a live daemon: enforcing");
    assert_eq!(requests(&h, denied, 2), 0);
    // The last beat 3 s ago, past the 2 s timeout: the daemon is gone.
    h.datapath.beat(monotonic_ns() - 3_000_000_000).unwrap();
    assert_eq!(requests(&h, CLIENT4, 5), 5);
    assert_eq!(requests(&h, denied, 2), 2);
    assert_eq!(counter(&h, Kind::Requests, Verdict::FailedOpen), 7);
    // Still judged and counted as what they would have been.
    assert_eq!(counter(&h, Kind::Requests, Verdict::Blocked), 2 + 5);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Denied), 4);
    // A beat inside the timeout: enforcing again.
    h.datapath.beat(monotonic_ns() - 1_000_000_000).unwrap();
    assert_eq!(requests(&h, CLIENT4, 3), 0);
    assert_eq!(counter(&h, Kind::Requests, Verdict::FailedOpen), 7);

    // Closed: no heartbeat, however old, stops enforcement.
    let mut flags = flags.to_vec();
    flags.extend(["--fail-mode", "closed"]);
    let mut h = harness(&flags);
    h.datapath.beat(1).unwrap();
    assert_eq!(requests(&h, CLIENT4, 5), 2);
    assert_eq!(requests(&h, denied, 2), 0);
    assert_eq!(counter(&h, Kind::Requests, Verdict::FailedOpen), 0);
}

#[test]
fn an_expired_narrower_block_never_hides_a_live_broader_one() {
    use api_guard::{clock::monotonic_ns, enforce};
    let mut h = harness(&[]);
    let net = Ipv4Addr::new(198, 18, 0, 0);
    let inside = v4(9);
    let key = |a: Ipv4Addr, p: u32| {
        let k = api_guard_common::client::ClientKey::v4(a.octets());
        (96 + p, k.addr)
    };
    let hour = monotonic_ns() + 3_600_000_000_000;
    // The broader block first, then a narrower one that has already run out:
    // the trie answers with the narrower, so it must last as long as the broader.
    enforce::block(&mut h.datapath, key(net, 24), hour).unwrap();
    enforce::block(&mut h.datapath, key(Ipv4Addr::new(198, 18, 0, 9), 32), 1).unwrap();
    assert_eq!(requests(&h, inside, 1), 0, "the /24 block was hidden");
    // And the other way round: a broader block raises the narrower inside it.
    let mut h = harness(&[]);
    enforce::block(
        &mut h.datapath,
        key(Ipv4Addr::new(198, 18, 0, 9), 32),
        monotonic_ns() + 1,
    )
    .unwrap();
    enforce::block(&mut h.datapath, key(net, 24), hour).unwrap();
    let blocks = h.datapath.blocks().unwrap();
    assert!(
        blocks.iter().all(|(_, _, until)| *until == hour),
        "{blocks:?}"
    );
    assert_eq!(requests(&h, inside, 1), 0);
}

#[test]
fn spoofed_findings_cannot_fill_the_block_list_and_a_full_list_is_a_clear_error() {
    use api_guard::{
        clock::monotonic_ns,
        detect::{DetectorName, Finding},
        enforce::{self, Enforcer},
        kernel::KernelMaps as _,
    };
    let mut h = harness(&[]);
    let handles = h
        .datapath
        .handles("the test's enforcer", &Enforcer::MAPS)
        .unwrap();
    // Findings may hold 3 blocks here; 5 spoofed sources are found out.
    let mut enforcer =
        Enforcer::with_finding_blocks(handles, Some(Duration::from_secs(3600)), 64, 3);
    let acted = (1..=5)
        .filter(|i| {
            enforcer
                .apply(&Finding {
                    detector: DetectorName::Bola,
                    client: v4(100 + i),
                    route: None,
                    reason: "spoofed".into(),
                    score: 1.0,
                    evidence: serde_json::Value::Null,
                })
                .unwrap()
        })
        .count();
    assert_eq!(acted, 3);
    assert_eq!(enforcer.refused, 2);
    assert_eq!(h.datapath.blocks().unwrap().len(), 3);
    assert_eq!(requests(&h, v4(101), 1), 0, "a finding's block holds");
    assert_eq!(requests(&h, v4(105), 1), 1, "past the cap, not blocked");

    // The operator's share stays usable until the whole list is full; then the
    // block is refused with a clear error, not a raw errno.
    let until = monotonic_ns() + 3_600_000_000_000;
    let slots = api_guard_common::maps::NETWORK_SLOTS;
    let mut filled = 3;
    for i in 0..slots {
        let mut addr = api_guard_common::client::ClientKey::v4([10, 0, 0, 0]).addr;
        addr[13..16].copy_from_slice(&i.to_be_bytes()[1..]);
        if h.datapath.block((128, addr), until).is_err() {
            break;
        }
        filled += 1;
    }
    assert_eq!(filled, slots, "the list holds {slots}");
    let one_more = api_guard_common::client::ClientKey::v4([198, 51, 100, 1]).addr;
    let err = enforce::block(&mut h.datapath, (128, one_more), until).unwrap_err();
    assert!(
        format!("{err:#}").contains("the block list is full"),
        "{err:#}"
    );
}
