//! A flood from a million spoofed sources through BPF_PROG_TEST_RUN: the client map
//! stays at its bound, evictions are counted, and a legitimate client in the same
//! stream keeps every request.

use std::net::{IpAddr, Ipv4Addr};

use api_guard::kernel::{KernelMaps as _, LoadOptions};
use api_guard_common::counters::{Event, Kind, Verdict};
use api_guard_tests::{
    packet::{self, Tcp},
    testrun::{Harness, TC_ACT_PIPE, policy},
};

const API: u16 = 8080;
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n";

#[test]
fn a_million_spoofed_sources_leave_the_map_bounded_and_the_legitimate_client_served() {
    const SOURCES: u32 = 1_000_000;
    const MAP: u32 = 65_536;
    let mut h = Harness::load(
        &LoadOptions {
            max_clients: MAP,
            ..Default::default()
        },
        &[API],
    )
    .unwrap();
    h.datapath
        .apply_policy(
            &policy(&["--rate", "1000", "--burst", "1000", "--conn-rate", "1000"])
                .unwrap()
                .tables(0),
        )
        .unwrap();
    let legit: IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
    let legit_frame = packet::from(legit, &Tcp::data(API, GET));
    let first = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let (mut legit_sent, mut legit_ok) = (0, 0);
    for i in 0..SOURCES {
        // Half SYNs, half requests, each from its own address.
        let src = IpAddr::V4(Ipv4Addr::from(first + i));
        let tcp = if i % 2 == 0 {
            Tcp::syn(API)
        } else {
            Tcp::data(API, GET)
        };
        assert_eq!(h.run(&packet::from(src, &tcp)).unwrap(), TC_ACT_PIPE);
        if i % 2_000 == 0 {
            legit_sent += 1;
            legit_ok += (h.run(&legit_frame).unwrap() == TC_ACT_PIPE) as u32;
        }
    }
    let clients = h.datapath.clients().unwrap();
    let tracked = clients.len() as u64;
    // The batch walk and the entry-by-entry one read the same table (nothing
    // runs the program between them).
    let key = |c: &api_guard::kernel::Client| (c.addr, c.state.requests, c.state.connections);
    let mut batch: Vec<_> = clients.iter().map(key).collect();
    let mut one_by_one: Vec<_> = h
        .datapath
        .clients_one_by_one()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    batch.sort();
    one_by_one.sort();
    assert!(
        batch.len() > MAP as usize * 9 / 10,
        "a full map: {}",
        batch.len()
    );
    assert!(
        batch == one_by_one,
        "the batch walk reads every client once"
    );
    let created = h.datapath.event(Event::ClientsCreated).unwrap();
    assert!(
        tracked <= u64::from(MAP),
        "the map stays at its bound: {tracked}"
    );
    assert!(
        created >= u64::from(SOURCES),
        "every new source was created: {created}"
    );
    assert!(
        created - tracked >= u64::from(SOURCES - MAP),
        "evictions are counted: {}",
        created - tracked
    );
    assert_eq!(
        legit_ok, legit_sent,
        "the legitimate client kept every request"
    );
    assert!(
        h.datapath.client(legit).unwrap().is_some(),
        "the busy legitimate client was not evicted"
    );
    let c = h.datapath.counters().unwrap();
    assert_eq!(
        c.get(Kind::Requests, Verdict::Allowed),
        u64::from(SOURCES / 2) + legit_sent as u64
    );
}
