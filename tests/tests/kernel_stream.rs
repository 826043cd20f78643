//! Request accounting on the byte stream, through BPF_PROG_TEST_RUN on the real
//! programs: every request start the server will read counts once, whatever the
//! segmentation; a segment with more starts than the burst is reset; the bucket
//! is safe on two CPUs at once; and eviction cannot lift a block.

use api_guard::kernel::maps::KernelMaps as _;
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Barrier},
    thread,
};

use api_guard_common::counters::{Event, Kind, Verdict};
use api_guard_tests::{
    packet::{self, CLIENT4, ETH_P_IP, IPPROTO_TCP, SERVER4, Tcp},
    testrun::{Harness, Stream, TC_ACT_PIPE, TC_ACT_SHOT, policy},
};

const API: u16 = 8080;
const GET: &[u8] = b"GET /v1/items HTTP/1.1\r\nHost: api\r\n\r\n";

fn harness(flags: &[&str]) -> Harness {
    Harness::with_policy(&[API], &policy(flags).unwrap()).unwrap()
}

fn requests(h: &Harness, src: IpAddr) -> u64 {
    h.datapath.client(src).unwrap().map_or(0, |s| s.requests)
}

fn counter(h: &Harness, kind: Kind, verdict: Verdict) -> u64 {
    h.datapath.counters().unwrap().get(kind, verdict)
}

#[test]
fn pipelined_requests_in_one_segment_each_count() {
    let h = harness(&[]);
    for n in [1usize, 2, 3, 10, 64] {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 1, n as u8));
        let mut s = Stream::open(&h, API, src, 40000);
        assert_eq!(s.send(&h, &GET.repeat(n)), TC_ACT_PIPE);
        assert_eq!(requests(&h, src), n as u64, "{n} pipelined");
    }
}

#[test]
fn a_head_split_at_every_offset_counts_once() {
    let h = harness(&[]);
    let two = [GET, GET].concat();
    for cut in 1..two.len() {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 2, (cut % 250) as u8));
        let before = requests(&h, src);
        let mut s = Stream::open(&h, API, src, 40000 + cut as u16);
        s.send(&h, &two[..cut]);
        s.send(&h, &two[cut..]);
        assert_eq!(requests(&h, src) - before, 2, "split at {cut}");
    }
}

#[test]
fn leading_empty_lines_are_skipped() {
    let h = harness(&[]);
    let mut s = Stream::open(&h, API, CLIENT4.into(), 40000);
    for prefix in [&b"\r\n"[..], b"\r\n\r\n\r\n", b"\n", b"\n\r\n\n"] {
        s.send(&h, &[prefix, GET].concat());
        s.send(&h, prefix);
    }
    assert_eq!(requests(&h, CLIENT4.into()), 4);
}

#[test]
fn bodies_are_skipped_and_hide_no_request() {
    let h = harness(&[]);
    let body = b"GET /inside-a-body HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
    let post = format!(
        "POST /v1/items HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = [post.as_bytes(), body, GET, post.as_bytes(), body, GET].concat();
    // Whole, and cut into segments of every size from 1 to 40 bytes.
    for size in [stream.len(), 1, 2, 3, 7, 13, 40] {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 3, (size % 250) as u8));
        let mut s = Stream::open(&h, API, src, 40000);
        for seg in stream.chunks(size) {
            s.send(&h, seg);
        }
        assert_eq!(requests(&h, src), 4, "segments of {size}");
    }
}

#[test]
fn a_retransmission_the_server_has_not_taken_is_charged_again() {
    // No server socket here: nothing proves the server took the first copy, so
    // the second is charged too (a forged or refused segment must not pass its
    // bytes off as accounted).
    let h = harness(&[]);
    let s = Stream::open(&h, API, CLIENT4.into(), 40000);
    let frame = s.frame(&GET.repeat(3));
    assert_eq!(h.run(&frame).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run(&frame).unwrap(), TC_ACT_PIPE);
    assert_eq!(requests(&h, CLIENT4.into()), 6);
    assert!(h.datapath.event(Event::StreamsUntrusted).unwrap() >= 1);
}

#[test]
fn a_refused_segment_cannot_leave_a_body_that_hides_later_requests() {
    // The attack: a segment the server throws away (a bad checksum, an ACK of
    // unsent data) announces a huge body; the client then sends other bytes
    // at the same sequence numbers, and pipelines requests after them. Were
    // the refused segment's framing kept, everything after would be skipped
    // as its body. No server socket here, as for a refused segment: nothing
    // vouches for the first copy.
    let h = harness(&[]);
    let src: IpAddr = CLIENT4.into();
    let s = Stream::open(&h, API, src, 40000);
    let refused = b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
    let mut real = b"GET /a HTTP/1.1\r\nX-Pad: ".to_vec();
    real.resize(refused.len() - 4, b'x');
    real.extend_from_slice(b"\r\n\r\n");
    assert_eq!(real.len(), refused.len());
    assert_eq!(h.run(&s.frame(refused)).unwrap(), TC_ACT_PIPE);
    assert_eq!(h.run(&s.frame(&real)).unwrap(), TC_ACT_PIPE);
    let before = requests(&h, src);
    let mut after = Stream {
        next: s.next.wrapping_add(refused.len() as u32),
        ..s
    };
    for _ in 0..5 {
        after.send(&h, &GET.repeat(4));
    }
    assert!(
        requests(&h, src) - before >= 20,
        "requests after a refused body went uncounted: {} of 20",
        requests(&h, src) - before
    );
}

#[test]
fn a_segment_is_admitted_on_one_token_and_pays_for_every_start() {
    let h = harness(&["--rate", "1", "--burst", "5"]);
    let mut s = Stream::open(&h, API, CLIENT4.into(), 40000);
    // Five starts in one segment: admitted with the bucket full, which empties it.
    assert_eq!(s.send(&h, &GET.repeat(5)), TC_ACT_PIPE);
    // The next start waits for a token: dropped, and so retransmitted.
    assert_eq!(s.send(&h, GET), TC_ACT_SHOT);
    assert_eq!(counter(&h, Kind::Requests, Verdict::Allowed), 5);
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 1);
}

#[test]
fn a_segment_with_more_starts_than_the_burst_resets_the_connection() {
    let h = harness(&["--rate", "1", "--burst", "5"]);
    let s = Stream::open(&h, API, CLIENT4.into(), 40000);
    let (action, out) = h.run_out(&s.frame(&GET.repeat(6))).unwrap();
    // Turned into a RST toward the server (let through as such).
    assert_eq!(action, TC_ACT_PIPE);
    let tcp_flags = out[14 + 20 + 13];
    assert_eq!(tcp_flags & 0x04, 0x04, "not a RST: flags {tcp_flags:#x}");
    assert_eq!(out.len(), 14 + 20 + 20, "the payload stays behind");
    assert_eq!(h.datapath.event(Event::ConnectionsReset).unwrap(), 1);
}

#[test]
fn two_cpus_hitting_idle_clients_at_once_never_refuse_them() {
    // `--rate 5 --burst 5`: two requests at once from an idle client are well
    // within its burst. Both CPUs run the real program on the same client at the
    // same moment, for many clients; none may be refused, and none's bucket clock
    // may run ahead of now (the old update moved it an idle period ahead).
    const CLIENTS: u32 = 4000;
    let h = Arc::new(harness(&[
        "--rate",
        "5",
        "--burst",
        "5",
        "--block-for",
        "1h",
    ]));
    let cpus = available_cpus();
    assert!(cpus.len() >= 2, "this test needs two CPUs, found {cpus:?}");
    let barrier = Arc::new(Barrier::new(2));
    let first = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..CLIENTS)
            .map(|i| {
                let src = Ipv4Addr::from(first + i);
                let tcp = Tcp::data(API, GET).bytes();
                packet::ethernet(
                    &[],
                    ETH_P_IP,
                    &packet::ipv4(src, SERVER4, &[], IPPROTO_TCP, &tcp),
                )
            })
            .collect(),
    );
    let workers: Vec<_> = cpus[..2]
        .iter()
        .map(|&cpu| {
            let (h, barrier, frames) = (h.clone(), barrier.clone(), frames.clone());
            thread::spawn(move || {
                pin_to_cpu(cpu);
                let mut refused = 0;
                for f in frames.iter() {
                    barrier.wait();
                    if h.run(f).unwrap() != TC_ACT_PIPE {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let now = api_guard::clock::monotonic_ns();
    assert_eq!(refused, 0, "idle clients refused on two CPUs");
    assert_eq!(counter(&h, Kind::Requests, Verdict::RateLimited), 0);
    assert_eq!(
        counter(&h, Kind::Requests, Verdict::Allowed),
        2 * CLIENTS as u64
    );
    let interval = 200_000_000;
    for c in h.datapath.clients().unwrap() {
        let (addr, state) = (c.addr, c.state);
        assert_eq!(state.requests, 2, "{addr}");
        assert_eq!(state.blocked_until_ns, 0, "{addr} blocked");
        assert!(
            state.request_tat_ns <= now + 2 * interval,
            "{addr}: bucket clock {} ran ahead of now {now}",
            state.request_tat_ns
        );
    }
}

#[test]
fn a_spoofed_flood_cannot_lift_a_block_by_evicting_it() {
    use api_guard::kernel::loader::LoadOptions;
    let mut h = Harness::load(
        &LoadOptions {
            max_clients: 64,
            ..Default::default()
        },
        &[API],
    )
    .unwrap();
    let p = policy(&["--rate", "1", "--burst", "2", "--block-for", "1h"]).unwrap();
    h.datapath.apply_policy(&p.tables(0)).unwrap();
    let victim_of_its_own_abuse: IpAddr = CLIENT4.into();
    let get = packet::from(victim_of_its_own_abuse, &Tcp::data(API, GET));
    let passed = (0..5)
        .filter(|_| h.run(&get).unwrap() == TC_ACT_PIPE)
        .count();
    assert_eq!(passed, 2, "the burst, then the block");
    // 1000 spoofed sources push the blocked client out of the 64-entry map.
    let first = u32::from(Ipv4Addr::new(198, 18, 200, 0));
    for i in 0..1000 {
        let src = IpAddr::V4(Ipv4Addr::from(first + i));
        h.run(&packet::from(src, &Tcp::syn(API))).unwrap();
    }
    assert!(
        h.datapath
            .client(victim_of_its_own_abuse)
            .unwrap()
            .is_none(),
        "the flood did not evict the blocked client"
    );
    // Back in the map, it is still blocked.
    assert_eq!(h.run(&get).unwrap(), TC_ACT_SHOT);
    let state = h.datapath.client(victim_of_its_own_abuse).unwrap().unwrap();
    assert!(state.blocked_until_ns > api_guard::clock::monotonic_ns());
    // Two while blocked before the flood, one after it.
    assert_eq!(counter(&h, Kind::Requests, Verdict::Blocked), 3);
}

fn available_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `set` was filled above.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes in range.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (it came from available_cpus).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        rc,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_stray_rst_into_an_open_connection_leaves_its_framing_so_a_body_stays_a_body() {
    // A real connection on loopback: the server's socket is there to tell a
    // RST its stack would take from one it answers with a challenge ACK.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let sport = client.local_addr().unwrap().port();
    let h = Harness::with_policy(&[port], &policy(&[]).unwrap()).unwrap();
    let lo = Ipv4Addr::LOCALHOST;
    let run = |flags: u8, seq: u32, payload: &[u8]| {
        let tcp = Tcp {
            sport,
            seq,
            flags,
            ..Tcp::data(port, payload)
        };
        let l3 = packet::ipv4(lo, lo, &[], IPPROTO_TCP, &tcp.bytes());
        h.run(&packet::ethernet(&[], ETH_P_IP, &l3)).unwrap()
    };
    // The stream seen from its SYN, then a POST whose body looks like two
    // requests: one request, its body skipped.
    run(packet::SYN, 5000, b"");
    let body = GET.repeat(2);
    let head = format!(
        "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let data = packet::PSH | packet::ACK;
    assert_eq!(run(data, 5001, head.as_bytes()), TC_ACT_PIPE);
    // A RST whose number is not the one the server expects, then the body.
    run(0x04, 9, b"");
    assert_eq!(run(data, 5001 + head.len() as u32, &body), TC_ACT_PIPE);
    assert_eq!(
        requests(&h, IpAddr::V4(lo)),
        1,
        "after a stray RST the body was read as requests"
    );
}
