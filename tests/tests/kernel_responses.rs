//! Responses on TC egress, through BPF_PROG_TEST_RUN on the real programs:
//! requests numbered by the ingress stream stage pair in order with the final
//! responses egress frames (pipelined, split at every offset, HEAD and 204
//! without bodies, interim 1xx, chunked), every status is counted, and a
//! response whose request was not seen is counted, never paired. The judge of
//! pairing is the sampled request's number and the response record's, read
//! back from the ring as the daemon would.

use std::net::IpAddr;

use api_guard::kernel::maps::KernelMaps as _;
use api_guard_common::{
    exchange::{RESPONSE_PAIRED, ResponseBlock, ResponseCount as C, ResponseRecord},
    sample::{HEADER_LEN, NO_EXCHANGE, SampleHeader, Source},
};
use api_guard_tests::{
    packet::{self, CLIENT4, CLIENT6, FIN, Tcp},
    testrun::{Harness, TC_ACT_PIPE, policy},
};

const API: u16 = 8080;

fn harness() -> Harness {
    Harness::with_policy(&[API], &policy(&["--sample", "1"]).unwrap()).unwrap()
}

/// One connection: the client's bytes go through ingress, the server's through
/// egress, each with consecutive sequence numbers (the server's start at 0, the
/// acknowledgment number the crafted client segments carry).
struct Conn {
    client: IpAddr,
    port: u16,
    req_seq: u32,
    resp_seq: u32,
}

impl Conn {
    fn open(h: &Harness, client: IpAddr, port: u16) -> Self {
        let syn = Tcp {
            sport: port,
            seq: 100,
            ..Tcp::syn(API)
        };
        assert_eq!(h.run(&packet::from(client, &syn)).unwrap(), TC_ACT_PIPE);
        Conn {
            client,
            port,
            req_seq: 101,
            resp_seq: 0,
        }
    }

    fn request(&mut self, h: &Harness, payload: &[u8]) {
        let tcp = Tcp {
            sport: self.port,
            seq: self.req_seq,
            ..Tcp::data(API, payload)
        };
        assert_eq!(
            h.run(&packet::from(self.client, &tcp)).unwrap(),
            TC_ACT_PIPE
        );
        self.req_seq += payload.len() as u32;
    }

    fn respond_at(&self, h: &Harness, seq: u32, payload: &[u8], flags: Option<u8>) {
        let mut tcp = Tcp {
            sport: API,
            dport: self.port,
            seq,
            ..Tcp::data(API, payload)
        };
        if let Some(f) = flags {
            tcp.flags = f;
        }
        assert_eq!(
            h.run_egress(&packet::to(self.client, &tcp)).unwrap(),
            TC_ACT_PIPE
        );
    }

    fn respond(&mut self, h: &Harness, payload: &[u8]) {
        self.respond_at(h, self.resp_seq, payload, None);
        self.resp_seq += payload.len() as u32;
    }
}

/// Counter deltas since `before`.
fn delta(h: &Harness, before: &ResponseBlock) -> ResponseBlock {
    let now = h.datapath.responses().unwrap();
    std::array::from_fn(|i| now[i] - before[i])
}

/// Sampled requests' numbers by port, and responses' (number, status) by port,
/// drained from the ring.
#[derive(Default, Debug)]
struct Records {
    requests: Vec<(u16, u32)>,
    responses: Vec<(u16, u32, u16, u64)>,
}

fn drain(ring: &mut api_guard::kernel::ring::SampleRing) -> Records {
    let mut out = Records::default();
    while let Some(rec) = ring.next() {
        let hdr = SampleHeader::parse(&rec).unwrap().0;
        if hdr.source == Source::TcIngress as u16 {
            out.requests.push((hdr.client_port, hdr.exchange));
        } else {
            assert_eq!(hdr.source, Source::TcEgress as u16);
            let body = &rec[HEADER_LEN..];
            assert_eq!(body.len(), size_of::<ResponseRecord>());
            // SAFETY: the record's bytes hold a ResponseRecord (checked length).
            let r: ResponseRecord = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
            assert_eq!(r.flags & RESPONSE_PAIRED, RESPONSE_PAIRED);
            out.responses
                .push((hdr.client_port, hdr.exchange, r.status, r.ttfb_ns));
        }
    }
    out
}

const PIPELINED: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloHEAD /d HTTP/1.1\r\n\r\nGET /e HTTP/1.1\r\n\r\n";
/// Their answers, in order: 201 with a body that looks like a response, a HEAD's
/// 200 whose Content-Length is not sent, an interim 100 then a chunked 404, a
/// 204 with a stray length, and a 500.
const ANSWERS: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 17\r\n\r\nHTTP/1.1 999 no\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nHTTP\r\n0\r\n\r\n\
HTTP/1.1 204 No Content\r\nContent-Length: 1000\r\n\r\n\
HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n:(";
const STATUSES: [u16; 5] = [201, 200, 404, 204, 500];

#[test]
fn pipelined_responses_pair_in_order_whatever_the_segmentation() {
    let mut h = harness();
    let mut ring = h.datapath.take_samples().unwrap();
    let before = h.datapath.responses().unwrap();
    let mut port = 41000;
    let mut cuts = 0u64;
    for at in (1..ANSWERS.len()).step_by(3) {
        for client in [IpAddr::from(CLIENT4), IpAddr::from(CLIENT6)] {
            port += 1;
            let mut c = Conn::open(&h, client, port);
            c.request(&h, PIPELINED);
            c.respond(&h, &ANSWERS[..at]);
            c.respond(&h, &ANSWERS[at..]);
            cuts += 1;
            let recs = drain(&mut ring);
            // Only the segment's first request start is sampled.
            assert_eq!(recs.requests, [(port, 0)]);
            let got: Vec<_> = recs.responses.iter().map(|r| (r.0, r.1, r.2)).collect();
            assert_eq!(got, [(port, 0, 201)], "cut at {at}");
        }
    }
    let d = delta(&h, &before);
    assert_eq!(d[C::Paired as usize], 5 * cuts);
    assert_eq!(d[C::Class2xx as usize], 3 * cuts);
    assert_eq!(d[C::Class4xx as usize], cuts);
    assert_eq!(d[C::Status404 as usize], cuts);
    assert_eq!(d[C::Class5xx as usize], cuts);
    assert_eq!(d[C::Interim as usize], cuts);
    for c in [C::Unseen, C::Overflow, C::Lost, C::FifoFull] {
        assert_eq!(d[c as usize], 0, "{c:?}");
    }
}

#[test]
fn each_request_of_a_connection_pairs_with_its_own_response() {
    let mut h = harness();
    let mut ring = h.datapath.take_samples().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 42000);
    let mut at = 0;
    let answers: Vec<&[u8]> = split_answers();
    for (i, answer) in answers.iter().enumerate() {
        c.request(&h, b"GET /one HTTP/1.1\r\n\r\n");
        // A retransmission of the last answer's bytes changes nothing.
        if i > 0 {
            c.respond_at(
                &h,
                c.resp_seq - 3,
                &answers[i - 1][answers[i - 1].len() - 3..],
                None,
            );
        }
        c.respond(&h, answer);
        at += 1;
    }
    let recs = drain(&mut ring);
    let want: Vec<_> = (0..at).map(|i| (42000, i as u32)).collect();
    assert_eq!(recs.requests, want);
    let got: Vec<_> = recs.responses.iter().map(|r| (r.1, r.2)).collect();
    let want: Vec<_> = STATUSES
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, *s))
        .collect();
    assert_eq!(got, want);
    assert!(recs.responses.iter().all(|r| r.3 > 0));
}

/// `ANSWERS` as separate responses (with the 100 Continue kept before its 404),
/// all answering GETs here, so the HEAD answer gets a body of its length.
fn split_answers() -> Vec<&'static [u8]> {
    vec![
        b"HTTP/1.1 201 Created\r\nContent-Length: 17\r\n\r\nHTTP/1.1 999 no\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nHTTP\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\n:(",
    ]
}

#[test]
fn a_connection_picked_up_mid_way_is_counted_and_never_paired() {
    let mut h = harness();
    let mut ring = h.datapath.take_samples().unwrap();
    let before = h.datapath.responses().unwrap();
    // No SYN: the daemon started on a live connection.
    let mut c = Conn {
        client: CLIENT4.into(),
        port: 43000,
        req_seq: 5000,
        resp_seq: 9000,
    };
    c.request(&h, b"GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n");
    c.respond(&h, b"HTTP/1.1 401 No\r\nContent-Length: 0\r\n\r\n");
    c.respond(&h, b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n");
    let recs = drain(&mut ring);
    assert_eq!(recs.requests, [(43000, NO_EXCHANGE)]);
    assert!(recs.responses.is_empty());
    let d = delta(&h, &before);
    assert_eq!(d[C::Unseen as usize], 2);
    assert_eq!(d[C::Status401 as usize], 1);
    assert_eq!(d[C::Status403 as usize], 1);
    assert_eq!(d[C::Class4xx as usize], 2);
    assert_eq!(d[C::Paired as usize], 0);
}

#[test]
fn a_response_stream_with_a_gap_stops_pairing() {
    let mut h = harness();
    let mut ring = h.datapath.take_samples().unwrap();
    let before = h.datapath.responses().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 44000);
    c.request(&h, b"GET /1 HTTP/1.1\r\n\r\n");
    // The first answer never seen by egress (attached late): the next one
    // comes after a gap, and is not taken for the first's.
    c.resp_seq += 100;
    c.respond(&h, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    c.request(&h, b"GET /2 HTTP/1.1\r\n\r\n");
    c.respond(&h, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(drain(&mut ring).responses.is_empty());
    let d = delta(&h, &before);
    assert_eq!(d[C::Lost as usize], 1);
    assert_eq!(d[C::Paired as usize], 0);
}

#[test]
fn requests_past_the_fifo_are_counted_and_their_responses_not_paired() {
    let h = harness();
    let before = h.datapath.responses().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 45000);
    let mut reqs = Vec::new();
    for _ in 0..10 {
        reqs.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    }
    c.request(&h, &reqs);
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
    }
    c.respond(&h, &answers);
    let d = delta(&h, &before);
    assert_eq!(d[C::FifoFull as usize], 2);
    assert_eq!(d[C::Paired as usize], 8);
    assert_eq!(d[C::Overflow as usize], 2);
    assert_eq!(d[C::Class2xx as usize], 10);
    // Once drained, the FIFO pairs again.
    c.request(&h, b"GET / HTTP/1.1\r\n\r\n");
    c.respond(&h, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(delta(&h, &before)[C::Paired as usize], 9);
}

#[test]
fn a_chunked_request_body_stops_pairing_without_mispairing() {
    let h = harness();
    let before = h.datapath.responses().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 46000);
    c.request(&h, b"GET /a HTTP/1.1\r\n\r\n");
    c.request(
        &h,
        b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c HTTP/1.1\r\n\r\n",
    );
    for _ in 0..3 {
        c.respond(&h, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    let d = delta(&h, &before);
    assert_eq!(d[C::Paired as usize], 1);
    assert_eq!(d[C::Unseen as usize], 2);
    assert_eq!(d[C::Class2xx as usize], 3);
}

#[test]
fn the_server_closing_forgets_the_connection_and_non_watched_ports_are_ignored() {
    let h = harness();
    let before = h.datapath.responses().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 47000);
    c.request(&h, b"GET / HTTP/1.1\r\n\r\n");
    c.respond(&h, b"HTTP/1.1 200 OK\r\n\r\nbody until close");
    c.respond_at(&h, c.resp_seq, b"", Some(FIN | packet::ACK));
    // A new response on the same 4-tuple without a new request: unseen.
    c.respond_at(&h, c.resp_seq + 1, b"HTTP/1.1 200 OK\r\n\r\n", None);
    // From another port: not an answer at all.
    let other = Tcp {
        sport: 9999,
        dport: 47001,
        ..Tcp::data(9999, b"HTTP/1.1 500 x\r\n\r\n")
    };
    assert_eq!(
        h.run_egress(&packet::to(CLIENT4.into(), &other)).unwrap(),
        TC_ACT_PIPE
    );
    let d = delta(&h, &before);
    assert_eq!(d[C::Paired as usize], 1);
    assert_eq!(d[C::Unseen as usize], 1);
    assert_eq!(d[C::Class2xx as usize], 2);
    assert_eq!(d[C::Class5xx as usize], 0);
}

/// On `lo` each packet passes egress and then ingress: a request through
/// egress and a response through ingress must count nothing twice.
#[test]
fn on_loopback_neither_direction_is_counted_twice() {
    use api_guard_common::counters::{Kind, Verdict};
    let h = harness();
    let before = h.datapath.responses().unwrap();
    let mut c = Conn::open(&h, CLIENT4.into(), 48000);
    let get = b"GET / HTTP/1.1\r\n\r\n";
    // The request on its way out of the client (egress), then in (ingress).
    let out = Tcp {
        sport: 48000,
        seq: c.req_seq,
        ..Tcp::data(API, get)
    };
    assert_eq!(
        h.run_egress(&packet::from(c.client, &out)).unwrap(),
        TC_ACT_PIPE
    );
    let requests = |h: &Harness| {
        h.datapath
            .counters()
            .unwrap()
            .get(Kind::Requests, Verdict::Allowed)
    };
    let seen_before = requests(&h);
    c.request(&h, get);
    assert_eq!(requests(&h), seen_before + 1);
    // The response out of the server (egress), then into the client (ingress).
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    c.respond(&h, answer);
    let back = Tcp {
        sport: API,
        dport: 48000,
        seq: 0,
        ..Tcp::data(API, answer)
    };
    assert_eq!(h.run(&packet::to(c.client, &back)).unwrap(), TC_ACT_PIPE);
    assert_eq!(requests(&h), seen_before + 1);
    let d = delta(&h, &before);
    assert_eq!(d[C::Class2xx as usize], 1);
    assert_eq!(d[C::Paired as usize], 1);
}

/// `--sample-budget`: past the second's budget samples are not taken, and
/// counted; requests are counted all the same.
#[test]
fn samples_over_the_budget_are_counted_not_taken() {
    use api_guard_common::counters::{Kind, Verdict};
    let mut h = harness();
    h.datapath.set_sample_budget(Some(5)).unwrap();
    let mut ring = h.datapath.take_samples().unwrap();
    let before = h.datapath.responses().unwrap();
    let requests_before = h
        .datapath
        .counters()
        .unwrap()
        .get(Kind::Requests, Verdict::Allowed);
    let mut c = Conn::open(&h, CLIENT4.into(), 49000);
    for _ in 0..40 {
        c.request(&h, b"GET / HTTP/1.1\r\n\r\n");
    }
    let taken = drain(&mut ring).requests.len() as u64;
    let over = delta(&h, &before)[C::OverBudget as usize];
    // A second's worth of burst (5), and what refilled meanwhile.
    assert!((5..=8).contains(&taken), "{taken} samples taken");
    assert_eq!(taken + over, 40);
    assert_eq!(
        h.datapath
            .counters()
            .unwrap()
            .get(Kind::Requests, Verdict::Allowed)
            - requests_before,
        40
    );
}
