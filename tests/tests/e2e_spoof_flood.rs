//! A flood from tens of thousands of spoofed sources, end to end: a raw-socket
//! sender in a client namespace (tests/src/bin/spoof.rs) sends SYNs and request
//! segments from 198.19.0.0/16, which the server has no route to, into the real
//! daemon's small client map. The map stays at its bound, evictions are counted,
//! every request is counted, the daemon's memory stays flat, and a legitimate
//! client on another link is served throughout.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    client::{Connections, Opts, curl, url},
    netns::{Client, Netns},
    prom,
    scenario::{API, Scenario},
};
use serde_json::Value;

/// The sender, built by cargo with this package's tests.
const SPOOF: &str = env!("CARGO_BIN_EXE_spoof");
/// Distinct spoofed sources: 198.19.0.1 onwards.
const SOURCES: u32 = 60_000;
const FIRST_SOURCE: &str = "198.19.0.1";
/// The daemon's client map.
const MAP: u32 = 4096;
/// Passes over every source after the warm-up pass.
const REPEATS: u32 = 8;

/// Sends stop flags on drop, so helper threads end however the test does.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What one run of the sender reported.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    frames: u64,
    syns: u64,
    requests: u64,
    secs: f64,
    errors: u64,
}

impl Sent {
    fn add(self, o: Sent) -> Sent {
        Sent {
            frames: self.frames + o.frames,
            syns: self.syns + o.syns,
            requests: self.requests + o.requests,
            secs: self.secs + o.secs,
            errors: self.errors + o.errors,
        }
    }
}

/// Runs the sender inside `from`'s namespace: `repeats` passes over SOURCES
/// sources, to the server's address and MAC on that link.
fn spoof(from: &Client, server_mac: &str, repeats: u32) -> Result<Sent> {
    let out = from
        .ns
        .command(SPOOF)
        .args(["--iface", "eth0", "--dst-mac", server_mac])
        .args(["--dst", &from.server4.to_string()])
        .args(["--port", &API.to_string()])
        .args(["--src", FIRST_SOURCE, "--count", &SOURCES.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .output()
        .context("cannot run spoof")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "spoof failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    parse_summary(&stdout).with_context(|| format!("unexpected spoof output {stdout:?}"))
}

/// "spoof: sent F frames (S SYNs, R requests) from N sources in T s (P frames/s), E send errors"
fn parse_summary(s: &str) -> Option<Sent> {
    let words: Vec<&str> = s
        .split(|c: char| c.is_whitespace() || c == '(' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let before = |label: &str| -> Option<&str> {
        let i = words.iter().position(|w| *w == label)?;
        words.get(i.checked_sub(1)?).copied()
    };
    Some(Sent {
        frames: before("frames")?.parse().ok()?,
        syns: before("SYNs")?.parse().ok()?,
        requests: before("requests)")?.parse().ok()?,
        secs: before("s")?.parse().ok()?,
        errors: before("send")?.parse().ok()?,
    })
}

/// The daemon's resident set, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Frames the veth pair of client 0 dropped on the way (a full backlog on a
/// busy machine): the sender's tx_dropped and the server side's rx_dropped.
fn link_drops(s: &Scenario) -> Result<u64> {
    let stat = |ns: &Netns, dev: &str, what: &str| -> Result<u64> {
        Ok(ns
            .exec("cat", &[&format!("/sys/class/net/{dev}/statistics/{what}")])?
            .trim()
            .parse()?)
    };
    Ok(stat(&s.client(0).ns, "eth0", "tx_dropped")?
        + stat(&s.topo.server, &s.topo.server_ifaces[0], "rx_dropped")?)
}

/// Everything of one kind the kernel counted, from `status --json`: the sum of
/// its verdicts, less the ones that only say why a drop was let through (counted
/// on top of the verdict itself).
fn counted(status: &Value, kind: &str) -> u64 {
    const ON_TOP: [&str; 2] = ["would_drop", "failed_open"];
    status["counters"][kind].as_object().map_or(0, |by| {
        by.iter()
            .filter(|(verdict, _)| !ON_TOP.contains(&verdict.as_str()))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    })
}

#[test]
fn a_spoofed_flood_leaves_the_map_and_the_daemon_bounded_and_the_legitimate_client_served()
-> Result<()> {
    let s = Scenario::start(
        2,
        &[
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--conn-rate",
            "1000",
            "--max-clients",
            &MAP.to_string(),
        ],
    )?;
    let (flooder, legit) = (s.client(0), s.client(1));
    // The server's end of the flooder's link, as the frames must address it.
    let server_mac = s
        .topo
        .server
        .exec(
            "cat",
            &[&format!(
                "/sys/class/net/{}/address",
                s.topo.server_ifaces[0]
            )],
        )?
        .trim()
        .to_string();
    let pid = s.daemon.pid();
    let csum_errors_before = s.topo.server.snmp("Tcp", "InCsumErrors")?;
    let drops_before = link_drops(&s)?;
    let rss_start = rss_kib(pid)?;

    let stop = AtomicBool::new(false);
    let rss_samples = Mutex::new(Vec::<u64>::new());
    let legit_url = url(legit.server4.into(), API, "/legit");
    let started = Instant::now();
    let (warm, main, rss_warm, warm_at, (legit_ok, legit_sent)) =
        thread::scope(|scope| -> Result<_> {
            let stopper = StopOnDrop(&stop);
            // The legitimate client: a new connection every 100 ms, all through the
            // flood.
            let legit_thread = scope.spawn(|| -> Result<(usize, usize)> {
                let (mut ok, mut sent) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let batch = curl(
                        &legit.ns,
                        std::slice::from_ref(&legit_url),
                        Opts::new(Connections::New).max_time(Duration::from_secs(5)),
                    )?;
                    ok += batch.ok();
                    sent += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Ok((ok, sent))
            });
            // The daemon's memory every 250 ms, and a metrics scrape (which walks the
            // whole client map) every second.
            let watch_thread = scope.spawn(|| -> Result<()> {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    rss_samples.lock().unwrap().push(rss_kib(pid)?);
                    if n.is_multiple_of(4) {
                        s.scrape()?;
                    }
                    n += 1;
                    thread::sleep(Duration::from_millis(250));
                }
                Ok(())
            });

            // Warm-up: one pass fills the map and lets the daemon reach its working
            // size; then the flood proper.
            let warm = spoof(flooder, &server_mac, 1)?;
            thread::sleep(Duration::from_millis(500));
            let rss_warm = rss_kib(pid)?;
            let warm_at = rss_samples.lock().unwrap().len();
            let main = spoof(flooder, &server_mac, REPEATS)?;
            thread::sleep(Duration::from_millis(500));

            drop(stopper);
            let legit = legit_thread.join().unwrap()?;
            watch_thread.join().unwrap()?;
            Ok((warm, main, rss_warm, warm_at, legit))
        })?;
    // Let the daemon drain its sample ring before the last look.
    thread::sleep(Duration::from_secs(1));
    let rss_end = rss_kib(pid)?;
    let rss_peak = rss_samples
        .lock()
        .unwrap()
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let rss_flood_peak = rss_samples.lock().unwrap()[warm_at..]
        .iter()
        .copied()
        .max()
        .unwrap_or(0);

    let out = s.ctl(&["status", "--json"])?;
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout)?;
    let tracked = status["clients"]["tracked"].as_u64().context("tracked")?;
    let created = status["clients"]["created"].as_u64().context("created")?;
    let refused = status["clients"]["refused"].as_u64().context("refused")?;
    let requests = counted(&status, "requests");
    let connections = counted(&status, "connections");
    let metrics = s.scrape()?;
    let evicted = prom::value(&metrics, "api_guard_clients_evicted_total", &[]).unwrap_or(-1.0);
    let csum_errors = s.topo.server.snmp("Tcp", "InCsumErrors")? - csum_errors_before;
    let evictions = created.saturating_sub(tracked);

    let total = warm.add(main);
    let passes = 1 + REPEATS;
    eprintln!(
        "spoof flood: {} frames ({} SYNs, {} requests) from {SOURCES} sources × {passes} passes in {:.1} s ({:.0} frames/s), {} send errors; whole test {:.1} s\n\
         kernel: {tracked} clients tracked of {MAP}, {created} created, {refused} refused, {} evicted (metrics {evicted}); \
         {requests} requests, {connections} connections counted; samples {}; {csum_errors} TCP checksum errors\n\
         daemon RSS: {rss_start} KiB at start, {rss_warm} KiB after warm-up, {rss_peak} KiB peak, {rss_end} KiB at the end\n\
         legitimate client: {legit_ok} of {legit_sent} requests answered 200",
        total.frames,
        total.syns,
        total.requests,
        total.secs,
        total.frames as f64 / total.secs,
        total.errors,
        started.elapsed().as_secs_f64(),
        evictions,
        status["samples"],
    );

    assert!(
        legit_sent >= 10,
        "the legitimate client ran all along: {legit_sent}"
    );
    assert_eq!(legit_ok, legit_sent, "every legitimate request succeeded");
    assert_eq!(csum_errors, 0, "the spoofed segments carry good checksums");

    assert!(
        tracked <= u64::from(MAP),
        "the map stays at its bound: {tracked}"
    );
    assert!(
        tracked >= u64::from(MAP) / 2,
        "the flood filled the map: {tracked}"
    );
    assert!(
        evictions >= u64::from(SOURCES - MAP),
        "evictions are counted: {evictions}"
    );
    // Each pass comes back to a source only after 59,999 others: every visit (a
    // SYN and a request) finds its entry evicted and creates it anew.
    let visits = total.requests;
    assert!(
        evictions >= visits * 95 / 100 - u64::from(MAP),
        "every pass over the sources evicts: {evictions} evictions for {visits} visits"
    );
    assert_eq!(evicted as u64, evictions, "the evictions metric agrees");
    // The LRU is approximate: a few entries survive a pass, and an insert the
    // churning map refuses is passed and counted as refused. Either way every
    // visit is accounted for, up to the entries that survived.
    assert!(
        created + refused + tracked >= visits,
        "visits unaccounted for: {created} created + {refused} refused + {tracked} tracked < {visits}"
    );
    // Nothing is lost between the sender and the kernel program beyond what the
    // veth pair counted as dropped (a full backlog on a busy machine), and 1%.
    let dropped = link_drops(&s)? - drops_before;
    assert!(
        requests + dropped >= total.requests * 99 / 100,
        "requests counted: {requests} of {} sent ({dropped} frames dropped on the link)",
        total.requests
    );
    assert!(
        connections + dropped >= total.syns * 99 / 100,
        "connections counted: {connections} of {} SYNs sent ({dropped} frames dropped on the link)",
        total.syns
    );

    assert!(
        rss_end <= rss_warm + rss_warm / 10 + 2048,
        "daemon RSS grew from {rss_warm} KiB after warm-up to {rss_end} KiB"
    );
    // Flat during the flood too, not only once it is over: 1M new sources
    // make no per-source allocation in the daemon.
    assert!(
        rss_flood_peak <= rss_warm + rss_warm / 10 + 2048,
        "daemon RSS peaked at {rss_flood_peak} KiB during the flood, {rss_warm} KiB after warm-up"
    );
    Ok(())
}
