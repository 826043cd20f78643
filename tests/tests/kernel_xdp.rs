//! The XDP pre-filter through BPF_PROG_TEST_RUN, against the same maps the TC
//! judge fills: it drops denied networks, blocked networks and clients serving
//! a block (counted under its own verdicts), passes everything else to TC, and
//! drops nothing under `--dry-run` or fail-open.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use api_guard::kernel::KernelMaps as _;
use api_guard_common::counters::{KINDS, Kind, VERDICTS, Verdict};
use api_guard_tests::{
    packet::{self, CLIENT4, Tcp},
    testrun::{Harness, TC_ACT_PIPE, TC_ACT_SHOT, XDP_DROP, XDP_PASS, policy},
};

const API: u16 = 8080;
const GET: &[u8] = b"GET /v1/items HTTP/1.1\r\nHost: api\r\n\r\n";

fn harness(flags: &[&str]) -> Harness {
    Harness::with_policy(&[API], &policy(flags).unwrap()).unwrap()
}

fn counter(h: &Harness, kind: Kind, verdict: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, verdict)
}

/// Every counter slot summed: what the programs counted at all.
fn counted(h: &Harness) -> u64 {
    let c = h.datapath.counters().unwrap();
    KINDS
        .iter()
        .flat_map(|&k| VERDICTS.iter().map(move |&v| (k, v)))
        .map(|(k, v)| c.get(k, v))
        .sum()
}

fn v4(a: u8, b: u8) -> IpAddr {
    Ipv4Addr::new(198, 18, a, b).into()
}

fn ack() -> Tcp {
    let mut t = Tcp::data(API, b"");
    t.flags = packet::ACK;
    t
}

#[test]
fn denied_networks_are_dropped_at_xdp_under_its_own_verdict() {
    let h = harness(&[
        "--deny",
        "198.18.9.0/24",
        "--deny",
        "2001:db8:66::/48",
        "--allow",
        "198.18.9.7",
    ]);
    let denied = v4(9, 1);
    assert_eq!(
        h.run_xdp(&packet::from(denied, &Tcp::syn(API))).unwrap(),
        XDP_DROP
    );
    assert_eq!(
        h.run_xdp(&packet::from(denied, &Tcp::data(API, GET)))
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(h.run_xdp(&packet::from(denied, &ack())).unwrap(), XDP_DROP);
    let denied6: IpAddr = "2001:db8:66:1::5".parse().unwrap();
    assert_eq!(
        h.run_xdp(&packet::from(denied6, &Tcp::data(API, GET)))
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(counter(&h, Kind::Packets, Verdict::XdpDenied), 4);
    assert_eq!(counter(&h, Kind::Requests, Verdict::XdpDenied), 2);
    assert_eq!(counter(&h, Kind::Connections, Verdict::XdpDenied), 1);
    // TC never saw them: nothing under TC's verdict.
    assert_eq!(counter(&h, Kind::Packets, Verdict::Denied), 0);
    // Allow wins over deny; outside the list, and other ports, pass.
    assert_eq!(
        h.run_xdp(&packet::from(v4(9, 7), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        h.run_xdp(&packet::from(v4(10, 1), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        h.run_xdp(&packet::from(denied, &Tcp::syn(9999))).unwrap(),
        XDP_PASS
    );
    assert_eq!(counted(&h), 4 + 2 + 1, "a pass is counted by TC, not XDP");
}

#[test]
fn a_client_tc_blocked_is_dropped_at_xdp_from_its_next_packet() {
    let h = harness(&["--rate", "1", "--burst", "1", "--block-for", "1h"]);
    let get = packet::v4(&Tcp::data(API, GET));
    // Before the block: XDP passes, TC judges (one admitted, one over: blocked).
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_PASS);
    assert_eq!(h.run(&get).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_PASS);
    assert_eq!(h.run(&get).unwrap(), TC_ACT_SHOT);
    let before = h.datapath.client(CLIENT4.into()).unwrap().unwrap();
    // From now on XDP drops everything the client sends to the API port.
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_DROP);
    assert_eq!(h.run_xdp(&packet::v4(&Tcp::syn(API))).unwrap(), XDP_DROP);
    assert_eq!(h.run_xdp(&packet::v4(&ack())).unwrap(), XDP_DROP);
    assert_eq!(counter(&h, Kind::Packets, Verdict::XdpBlocked), 3);
    assert_eq!(counter(&h, Kind::Requests, Verdict::XdpBlocked), 1);
    assert_eq!(counter(&h, Kind::Connections, Verdict::XdpBlocked), 1);
    // The client's own counts go on, as TC keeps them for a blocked client.
    let after = h.datapath.client(CLIENT4.into()).unwrap().unwrap();
    assert_eq!(after.packets, before.packets + 3);
    assert_eq!(after.requests, before.requests + 1);
    assert_eq!(after.connections, before.connections + 1);
    // Other clients and other ports are untouched.
    assert_eq!(
        h.run_xdp(&packet::from(v4(0, 9), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(h.run_xdp(&packet::v4(&Tcp::syn(9999))).unwrap(), XDP_PASS);
}

#[test]
fn an_operator_block_is_dropped_at_xdp() {
    use api_guard::{clock::monotonic_ns, enforce};
    let mut h = harness(&[]);
    let hour = monotonic_ns() + 3_600_000_000_000;
    let net = api_guard_common::client::ClientKey::v4([198, 18, 5, 0]).addr;
    enforce::block(&mut h.datapath, (96 + 24, net), hour).unwrap();
    assert_eq!(
        h.run_xdp(&packet::from(v4(5, 200), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        h.run_xdp(&packet::from(v4(6, 200), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(counter(&h, Kind::Requests, Verdict::XdpBlocked), 1);
    // An expired block drops nothing.
    let mut h = harness(&[]);
    enforce::block(&mut h.datapath, (96 + 24, net), monotonic_ns() + 1).unwrap();
    assert_eq!(
        h.run_xdp(&packet::from(v4(5, 200), &Tcp::data(API, GET)))
            .unwrap(),
        XDP_PASS
    );
}

#[test]
fn rate_limits_and_everything_http_stay_in_tc() {
    // Over the limit without --block-for: TC's to drop, request by request.
    let h = harness(&["--rate", "1", "--burst", "1"]);
    let get = packet::v4(&Tcp::data(API, GET));
    assert_eq!(h.run(&get).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run(&get).unwrap(), TC_ACT_SHOT);
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_PASS);
    // Not TCP, not IP, truncated: passed, uncounted.
    let arp = packet::ethernet(&[], packet::ETH_P_ARP, &[0u8; 28]);
    assert_eq!(h.run_xdp(&arp).unwrap(), XDP_PASS);
    let mut short = packet::v4(&Tcp::data(API, GET));
    short.truncate(30);
    assert_eq!(h.run_xdp(&short).unwrap(), XDP_PASS);
    assert_eq!(counter(&h, Kind::Packets, Verdict::XdpBlocked), 0);
    assert_eq!(counter(&h, Kind::Packets, Verdict::XdpDenied), 0);
}

#[test]
fn dry_run_and_fail_open_drop_nothing_at_xdp_and_tc_counts_what_would_be() {
    use api_guard::clock::monotonic_ns;
    let denied = v4(9, 1);
    let h = harness(&["--deny", "198.18.9.0/24", "--dry-run"]);
    let get = packet::from(denied, &Tcp::data(API, GET));
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_PASS);
    assert_eq!(counted(&h), 0);
    assert_eq!(h.run(&get).unwrap(), TC_ACT_PIPE);
    assert_eq!(counter(&h, Kind::Requests, Verdict::WouldDrop), 1);

    let mut h = harness(&[
        "--rate",
        "1",
        "--burst",
        "1",
        "--block-for",
        "1h",
        "--deny",
        "198.18.9.0/24",
        "--heartbeat-timeout",
        "2s",
    ]);
    let mine = packet::v4(&Tcp::data(API, GET));
    assert_eq!(h.run(&mine).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run(&mine).unwrap(), TC_ACT_SHOT, "blocked");
    assert_eq!(
        h.run_xdp(&mine).unwrap(),
        XDP_DROP,
        "a live daemon: enforcing"
    );
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_DROP);
    // The daemon's last beat 3 s ago, past the 2 s timeout: fail open.
    h.datapath.beat(monotonic_ns() - 3_000_000_000).unwrap();
    let before = counted(&h);
    assert_eq!(h.run_xdp(&mine).unwrap(), XDP_PASS);
    assert_eq!(h.run_xdp(&get).unwrap(), XDP_PASS);
    assert_eq!(counted(&h), before, "XDP leaves the counting to TC");
    assert_eq!(h.run(&get).unwrap(), TC_ACT_PIPE);
    assert_eq!(counter(&h, Kind::Requests, Verdict::FailedOpen), 1);
}

#[test]
fn fragments_from_denied_networks_are_dropped_at_xdp() {
    use api_guard_tests::packet::{ETH_P_IPV6, Ext, IPPROTO_TCP, SERVER6};
    let h = harness(&["--deny", "2001:db8:66::/48"]);
    let tcp = Tcp::data(API, GET).bytes();
    let denied6: Ipv6Addr = "2001:db8:66::9".parse().unwrap();
    let other6: Ipv6Addr = "2001:db8:67::9".parse().unwrap();
    let frag = |src| {
        packet::ethernet(
            &[],
            ETH_P_IPV6,
            &packet::ipv6(
                src,
                SERVER6,
                &[Ext::fragment(8, false)],
                IPPROTO_TCP,
                &tcp[20..],
            ),
        )
    };
    assert_eq!(h.run_xdp(&frag(denied6)).unwrap(), XDP_DROP);
    assert_eq!(h.run_xdp(&frag(other6)).unwrap(), XDP_PASS);
    assert_eq!(counter(&h, Kind::Packets, Verdict::XdpDenied), 1);
}
