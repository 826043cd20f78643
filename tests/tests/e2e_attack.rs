//! The attack suite (issue 12): a client that knows api-guard is there tries to
//! get more requests served than its limit allows, by how it cuts its requests
//! into TCP segments. Each attacker runs in a namespace of its own (its own
//! bucket) with real sockets (tests/src/attack.rs), against nginx under
//! `--rate 5 --burst 5`, for T of about 4 s; a polite client on another link
//! runs all along.
//!
//! The judge is nginx's own access log. An attacker must have been served at
//! most `BURST + RATE × T + SEGMENT_SLACK` requests, T being measured from its
//! first connect until it reset its last connection (a reset discards whatever
//! is queued, so nothing it sent can be served later). Where the design must
//! admit some of its requests, it must have been served at least `BURST`, so a
//! test cannot pass by breaking everything. The polite client must get every
//! request served, and none limited: none of its connections ever retransmits
//! (a request the kernel drops is retransmitted).
//!
//! Segmentation is forced with TCP_NODELAY and, between writes, waiting until
//! the kernel reports every byte ACKed (TIOCOUTQ = 0); see tests/src/attack.rs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Result, anyhow};
use api_guard_tests::{
    attack::{self, Attack, Outcome, Pace, Polite, Rng, Round, STALL, get, post},
    netns::Client,
    process::wait_until,
    scenario::{API, Scenario},
};

const RATE: usize = 5;
const BURST: usize = 5;
/// What the design admits beyond burst + rate × T: a segment is admitted when
/// one token is left and is charged every request start it carries, and a
/// connection whose one segment carries more starts than the burst is reset,
/// so one admitted segment can overdraw the bucket by up to a burst.
const SEGMENT_SLACK: usize = BURST;
/// How long each attacker attacks.
const T: Duration = Duration::from_secs(4);
/// The polite client's pace: about 3 requests a second, well under the rate.
const POLITE_GAP: Duration = Duration::from_millis(300);
/// The polite client sends at least this many (about T's worth), however
/// soon the attackers are done.
const POLITE_MIN: usize = 12;

/// These tests flood nginx from several namespaces at once on two shared CPUs;
/// one at a time keeps the polite client's latency honest.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How an attacker is judged.
#[derive(Clone, Copy, Debug)]
enum Judge {
    /// Served at most the bound, and at least `min`.
    Bound { min: usize },
    /// A client within its limit: every request it sent answered and served,
    /// its connection never lost nor retransmitting.
    WithinLimit,
}

struct Case {
    name: String,
    attack: Attack,
    judge: Judge,
}

impl Case {
    fn bound(name: impl Into<String>, attack: Attack, min: usize) -> Self {
        Self {
            name: name.into(),
            attack,
            judge: Judge::Bound { min },
        }
    }
}

/// An attacker that writes `rounds` one segment per write for T, judged
/// against the bound and served at least `min`.
fn segmented(name: impl Into<String>, rounds: Vec<Round>, min: usize) -> Case {
    Case::bound(name, Attack::new(rounds, Pace::AckEach, T), min)
}

/// `burst + rate × T + SEGMENT_SLACK` for an attack that lasted `elapsed`.
fn bound(elapsed: Duration) -> f64 {
    (BURST + SEGMENT_SLACK) as f64 + RATE as f64 * elapsed.as_secs_f64()
}

/// `n` copies of `one` back to back.
fn repeat(one: &[u8], n: usize) -> Vec<u8> {
    one.repeat(n)
}

fn server(c: &Client) -> SocketAddr {
    SocketAddr::new(c.server4.into(), API)
}

/// Connections the server still has from `addr`, TIME-WAIT aside.
fn live_connections(s: &Scenario, addr: Ipv4Addr) -> Result<usize> {
    let out = s
        .topo
        .server
        .exec("ss", &["-Htan", "dst", &addr.to_string()])?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("TIME-WAIT"))
        .count())
}

/// nginx's lines for `addr` on the API port: (served, every status counted).
/// Served means answered 200 (GET, HEAD) or 405 (a POST, which nginx's static
/// handler refuses only after reading the whole request and its body).
fn served(s: &Scenario, addr: Ipv4Addr) -> Result<(usize, BTreeMap<u16, usize>)> {
    let mut statuses = BTreeMap::new();
    let addr = addr.to_string();
    for l in s.nginx.access_log()? {
        if l.client == addr && l.server_port == API {
            *statuses.entry(l.status).or_insert(0) += 1;
        }
    }
    let ok = statuses.get(&200).copied().unwrap_or(0) + statuses.get(&405).copied().unwrap_or(0);
    Ok((ok, statuses))
}

/// Runs every case at once, each from its own client namespace, with the
/// polite client on client 0 all along; then judges each by nginx's log.
/// `context` goes into every failure message (the seed of a random run).
fn run_cases(cases: Vec<Case>, context: &str) -> Result<()> {
    let s = Scenario::start(
        cases.len() + 1,
        &["--rate", &RATE.to_string(), "--burst", &BURST.to_string()],
    )?;
    let legit = s.client(0);
    let stop = AtomicBool::new(false);
    let (polite, outcomes) = thread::scope(|scope| {
        let polite = scope.spawn(|| {
            legit
                .ns
                .within(|| attack::polite(server(legit), POLITE_GAP, POLITE_MIN, &stop))
        });
        let attackers: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let c = s.client(i + 1);
                scope.spawn(move || c.ns.within(|| attack::run(&case.attack, server(c))))
            })
            .collect();
        let outcomes: Vec<Result<Outcome>> = attackers
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("an attacker thread panicked"))
                    .and_then(|r| r.and_then(|r| r))
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        let polite: Result<Polite> = polite
            .join()
            .map_err(|_| anyhow!("the polite client's thread panicked"))
            .and_then(|r| r.and_then(|r| r));
        (polite, outcomes)
    });
    let mut polite = polite?;
    let outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;

    // Every attacker has reset its connections; once the server has seen that,
    // one more polite request is a barrier: nginx (one process) handles the
    // resets' events before it can answer it, so its log is then complete.
    for i in 0..cases.len() {
        let addr = s.client(i + 1).addr4;
        wait_until(STALL, "the attackers' connections to close", || {
            Ok(live_connections(&s, addr)? == 0)
        })?;
    }
    let (status, retrans) = legit
        .ns
        .within(|| attack::polite_request(server(legit), "/barrier"))??;
    polite.add(status, retrans);

    let mut report = format!("attack suite ({context}), rate {RATE}/s, burst {BURST}:\n");
    let mut failures = Vec::new();
    for (i, (case, out)) in cases.iter().zip(&outcomes).enumerate() {
        let (ok, statuses) = served(&s, s.client(i + 1).addr4)?;
        let limit = bound(out.elapsed);
        let verdict = match case.judge {
            Judge::Bound { .. } if ok as f64 > limit => Some(format!(
                "served {ok} > bound {limit:.1} (burst {BURST} + {RATE}/s × {:.2} s + slack {SEGMENT_SLACK})",
                out.elapsed.as_secs_f64()
            )),
            Judge::Bound { min } if ok < min => Some(format!(
                "served {ok} < {min}: the attacker was not admitted at all"
            )),
            Judge::Bound { .. } => None,
            Judge::WithinLimit => {
                let planned = case.attack.planned();
                (ok != planned
                    || out.sent != planned
                    || out.answers != planned
                    || out.lost != 0
                    || out.retransmits != 0)
                    .then(|| {
                        format!(
                            "a client within its limit was limited: planned {planned}, sent {}, answered {}, served {ok}, lost {} connection(s), {} retransmission(s)",
                            out.sent, out.answers, out.lost, out.retransmits
                        )
                    })
            }
        };
        writeln!(
            report,
            "  {:<44} served {ok:>4} of {:>4} sent ({:>4} planned) in {:.2} s, bound {limit:>5.1}; answers {}, connections {}, lost {}, retransmits {}, statuses {statuses:?}{}",
            case.name,
            out.sent,
            case.attack.planned(),
            out.elapsed.as_secs_f64(),
            out.answers,
            out.connections,
            out.lost,
            out.retransmits,
            if verdict.is_some() { "  FAIL" } else { "" },
        )?;
        if let Some(v) = verdict {
            failures.push(format!("{}: {v}", case.name));
        }
    }

    let (legit_ok, legit_statuses) = served(&s, legit.addr4)?;
    writeln!(
        report,
        "  {:<44} served {legit_ok:>4} of {:>4} sent, retransmits {}, nginx statuses {legit_statuses:?}",
        "polite client",
        polite.statuses.len(),
        polite.retransmits
    )?;
    if polite.statuses.len() < POLITE_MIN
        || polite.statuses.iter().any(|&st| st != 200)
        || legit_ok != polite.statuses.len()
        || legit_statuses.len() != 1
        || polite.retransmits != 0
    {
        failures.push(format!(
            "the polite client was limited or not served: statuses {:?}, nginx served {legit_ok} ({legit_statuses:?}), {} retransmission(s)",
            polite.statuses, polite.retransmits
        ));
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "{context}:\n{}\n\n{report}",
        failures.join("\n")
    );
    Ok(())
}

/// Requests one by one, `pace`d, one round each.
fn singles(requests: impl IntoIterator<Item = Vec<u8>>) -> Vec<Round> {
    requests.into_iter().map(|r| Round::whole(r, 1)).collect()
}

/// The tests, in a module named like the file so that `cargo xtask test
/// e2e_attack` selects them.
mod e2e_attack {
    use super::*;

    #[test]
    fn pipelining_on_one_connection_without_waiting_is_held_to_the_bound() -> Result<()> {
        let _serial = serial();
        // 99 requests written back to back on one keep-alive connection: once one
        // is dropped, TCP retransmits the queued ones merged into one segment.
        let mut a = Attack::new(
            singles((0..99).map(|i| get(&format!("/a1/{i}")))),
            Pace::BackToBack,
            T,
        );
        a.reconnect = false;
        run_cases(
            vec![Case::bound("1 pipelined x99, back to back", a, BURST)],
            "pipelining",
        )
    }

    #[test]
    fn n_pipelined_requests_per_segment_are_each_counted() -> Result<()> {
        let _serial = serial();
        let cases = [2, 3, 5, 6, 10, 64]
            .into_iter()
            .map(|n| {
                let rounds = (0..200usize.div_ceil(n))
                    .map(|r| Round::whole(repeat(&get(&format!("/a2/{n}/{r}")), n), n))
                    .collect();
                // A segment with more request starts than the burst may be reset
                // whole, so such an attacker may rightly be served nothing.
                let min = if n <= BURST { BURST } else { 0 };
                segmented(format!("2 {n} requests per segment"), rounds, min)
            })
            .collect();
        run_cases(cases, "pipelined segments")
    }

    #[test]
    fn empty_lines_before_request_lines_do_not_hide_them() -> Result<()> {
        let _serial = serial();
        let cases = [
            ("CRLF x1", "\r\n".to_string()),
            ("CRLF x2", "\r\n".repeat(2)),
            ("CRLF x7", "\r\n".repeat(7)),
            ("LF x1", "\n".to_string()),
            ("LF x3", "\n".repeat(3)),
            ("CRLF LF CRLF", "\r\n\n\r\n".to_string()),
        ]
        .into_iter()
        .map(|(name, prefix)| {
            let requests = (0..100).map(|i| {
                let mut r = prefix.clone().into_bytes();
                r.extend(get(&format!("/a3/{i}")));
                r
            });
            segmented(
                format!("3 {name} before each request"),
                singles(requests),
                BURST,
            )
        })
        .collect();
        run_cases(cases, "empty lines")
    }

    #[test]
    fn a_request_head_split_across_segments_is_counted_once_at_any_offset() -> Result<()> {
        let _serial = serial();
        let get_req = get("/a4");
        let post_req = post("/a4", b"");
        let line_end = get_req.iter().position(|&b| b == b'\r').unwrap();
        let mut splits: Vec<(String, Vec<u8>, usize)> = Vec::new();
        // Every offset inside the method, and the one between it and the space.
        for off in 1..="GET".len() {
            splits.push((format!("GET|method@{off}"), get_req.clone(), off));
        }
        for off in 1..="POST".len() {
            splits.push((format!("POST|method@{off}"), post_req.clone(), off));
        }
        // A few offsets further into the head.
        for (what, off) in [
            ("after the space", "GET ".len()),
            ("inside the path", "GET /a".len()),
            ("before the line's CRLF", line_end),
            ("between CR and LF", line_end + 1),
            ("inside Host", line_end + 2 + "Ho".len()),
            ("before the last LF", get_req.len() - 1),
        ] {
            splits.push((format!("GET|{what}@{off}"), get_req.clone(), off));
        }
        let cases = splits
            .into_iter()
            .map(|(name, req, off)| {
                let rounds = (0..99).map(|_| Round::cut(&req, &[off], 1)).collect();
                segmented(format!("4 split {name}"), rounds, BURST)
            })
            .collect();
        run_cases(cases, "split heads")
    }

    #[test]
    fn bodies_neither_count_as_requests_nor_hide_the_ones_after_them() -> Result<()> {
        let _serial = serial();
        let fake_lines = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n".as_slice();
        // A body holding a request head whose Content-Length would swallow
        // everything after it, if the body were taken for a request.
        let mut swallowing = fake_lines.to_vec();
        swallowing.extend(b"POST /fake HTTP/1.1\r\nHost: api\r\nContent-Length: 99999\r\n\r\n");
        let head_len = |r: &[u8]| r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut cases = Vec::new();

        // A POST and two GETs in one segment.
        let rounds = (0..70)
            .map(|i| {
                let mut r = post(&format!("/a5/one/{i}"), &[b'x'; 100]);
                r.extend(get("/a5/one/g1"));
                r.extend(get("/a5/one/g2"));
                Round::whole(r, 3)
            })
            .collect();
        cases.push(segmented("5 POST+GET+GET in one segment", rounds, BURST));

        // The head alone, then the body with two GETs after it: the second
        // segment starts inside a body. Once with a plain body, once with one
        // that looks like requests.
        for (name, body) in [
            ("plain body", vec![b'y'; 300]),
            ("request-like body", swallowing.clone()),
        ] {
            let rounds = (0..70)
                .map(|i| {
                    let mut r = post(&format!("/a5/split/{i}"), &body);
                    let cut = head_len(&r);
                    r.extend(get("/a5/split/g1"));
                    r.extend(get("/a5/split/g2"));
                    Round::cut(&r, &[cut], 3)
                })
                .collect();
            cases.push(segmented(
                format!("5 POST head | {name}+GET+GET"),
                rounds,
                BURST,
            ));
        }

        // GETs and POSTs pipelined, cut every 37 bytes: segments begin inside
        // methods, heads and bodies.
        let rounds = (0..50)
            .map(|i| {
                let mut r = get(&format!("/a5/mix/{i}"));
                r.extend(post("/a5/mix/p1", &[b'z'; 120]));
                r.extend(get("/a5/mix/g"));
                r.extend(post("/a5/mix/p2", &swallowing));
                let cuts: Vec<usize> = (1..).map(|k| k * 37).take_while(|&c| c < r.len()).collect();
                Round::cut(&r, &cuts, 4)
            })
            .collect();
        cases.push(segmented(
            "5 GET POST GET POST cut every 37 bytes",
            rounds,
            BURST,
        ));

        // Within its limit (2 POSTs a second), but each body comes in 8
        // segments that each begin with a request line: counted as requests, they
        // would put it far over its limit.
        let rounds = (0..6)
            .map(|i| {
                let body = repeat(b"GET / HTTP/1.1\r\n\r\n", 8);
                let r = post(&format!("/a5/polite/{i}"), &body);
                let head = head_len(&r);
                let cuts: Vec<usize> = (0..8).map(|k| head + k * 18).collect();
                Round::cut(&r, &cuts, 1)
            })
            .collect();
        let mut poster = Attack::new(rounds, Pace::AckEach, STALL);
        poster.reconnect = false;
        poster.wait_answers = true;
        poster.gap = Duration::from_millis(500);
        cases.push(Case {
            name: "5 polite POSTs, bodies of request lines".into(),
            attack: poster,
            judge: Judge::WithinLimit,
        });
        run_cases(cases, "bodies")
    }

    /// One request for the random mix: maybe empty lines first, then a GET, a
    /// HEAD, or a POST whose body may look like requests. Returns it with the
    /// offset of its method.
    fn random_request(rng: &mut Rng, path: &str) -> (Vec<u8>, usize, usize) {
        let mut r = Vec::new();
        if rng.chance(40) {
            let eol: &[u8] = if rng.chance(50) { b"\r\n" } else { b"\n" };
            r.extend(eol.repeat(rng.range(1, 7)));
        }
        let at = r.len();
        let (req, method_len) = match rng.range(0, 9) {
            0..=4 => (get(path), 3),
            5 => (
                format!("HEAD {path} HTTP/1.1\r\nHost: api\r\n\r\n").into_bytes(),
                4,
            ),
            _ => {
                let mut body = Vec::new();
                for _ in 0..rng.range(0, 4) {
                    match rng.range(0, 2) {
                        0 => body.extend(vec![b'b'; rng.range(1, 200)]),
                        1 => body.extend(b"GET / HTTP/1.1\r\n\r\n"),
                        _ => body.extend(b"\r\nPOST /f HTTP/1.1\r\nContent-Length: 9999\r\n\r\n"),
                    }
                }
                (post(path, &body), 4)
            }
        };
        r.extend(req);
        (r, at, method_len)
    }

    /// A random attacker: random pipeline depths (mostly within the burst, now
    /// and then up to 64), empty lines, bodies, cuts anywhere and inside methods,
    /// paced one segment per write or back to back. Returns it with whether the
    /// design must admit some of it.
    fn random_attack(rng: &mut Rng, tag: usize) -> (Attack, bool) {
        let pace = if rng.chance(75) {
            Pace::AckEach
        } else {
            Pace::BackToBack
        };
        let mut max_depth = 0;
        let rounds = (0..rng.range(30, 90))
            .map(|i| {
                let depth = if rng.chance(10) {
                    rng.range(6, 64)
                } else {
                    rng.range(1, 4)
                };
                max_depth = max_depth.max(depth);
                let mut bytes = Vec::new();
                let mut methods = Vec::new();
                for j in 0..depth {
                    let (r, at, len) = random_request(rng, &format!("/rand/{tag}/{i}/{j}"));
                    methods.push((bytes.len() + at, len));
                    bytes.extend(r);
                }
                let mut cuts: Vec<usize> = (0..rng.range(0, 3))
                    .map(|_| {
                        if rng.chance(50) {
                            let (at, len) = methods[rng.range(0, methods.len() - 1)];
                            at + rng.range(1, len)
                        } else {
                            rng.range(1, bytes.len() - 1)
                        }
                    })
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                Round::cut(&bytes, &cuts, depth)
            })
            .collect();
        let must_admit = pace == Pace::AckEach && max_depth <= BURST;
        (Attack::new(rounds, pace, T), must_admit)
    }

    #[test]
    fn a_seeded_random_mix_of_evasions_is_held_to_the_bound() -> Result<()> {
        let _serial = serial();
        let seed = std::env::var("ATTACK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("e2e_attack: random mix with seed {seed} (ATTACK_SEED={seed} replays it)");
        let mut rng = Rng::new(seed);
        let cases = (0..5)
            .map(|tag| {
                let (attack, must_admit) = random_attack(&mut rng, tag);
                let name = format!(
                    "R{tag} {:?}, {} rounds, {} requests",
                    attack.pace,
                    attack.rounds.len(),
                    attack.planned()
                );
                // The first round's segments carry at most a burst of starts and
                // one goes out at a time, so some of it must be served.
                Case::bound(name, attack, usize::from(must_admit))
            })
            .collect();
        run_cases(
            cases,
            &format!("random mix, seed {seed}: ATTACK_SEED={seed} replays it"),
        )
    }
}
