//! Scrapes cannot switch enforcement off. While several clients scrape
//! /metrics in a loop against a full client map (a million clients), a daemon
//! with `--fail-mode open --heartbeat-timeout 2s` never fails open: a denied
//! client stays dropped, nothing is counted `failed_open`, and the heartbeat
//! stays under a second old. (One `Mutex` over every map, taken by the
//! heartbeat and by each scrape's walk of the client map, once let eight
//! scrapers delay the heartbeat past its timeout.)

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use api_guard::clock::monotonic_ns;
use api_guard_common::client::{ClientKey, ClientState};
use api_guard_tests::{
    client::answered,
    prom,
    scenario::{API, Scenario},
};
use aya::maps::{Array, HashMap, MapData};
use serde_json::Value;

/// The client map's size, filled from the test.
const CLIENTS: u32 = 1 << 20;
/// Clients scraping /metrics at once, each in a loop.
const SCRAPERS: usize = 8;
/// Whole scrapes (each a walk of the full map) to see before stopping.
const SCRAPES: u64 = 3 * SCRAPERS as u64;
/// The property the issue asks for.
const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(1);
/// A guard against a hang, not a measurement.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// Sets the flag on drop, so helper threads end however the test does.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One scrape of the daemon's metrics from inside the server namespace: the
/// status code and the body.
fn scrape() -> Result<(u16, String)> {
    let mut conn = TcpStream::connect("127.0.0.1:9477")?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

#[test]
fn scrapes_against_a_full_client_map_never_delay_the_heartbeat() -> Result<()> {
    // Client 0 is 198.18.0.2 on link 0 (see netns::Topology).
    let s = Scenario::start(
        1,
        &[
            "--max-clients",
            &CLIENTS.to_string(),
            "--fail-mode",
            "open",
            "--heartbeat-timeout",
            "2s",
            "--deny",
            "198.18.0.2",
        ],
    )?;
    let denied = s.client(0);
    ensure!(answered(denied, 1)? == 0, "the denied client was answered");

    // Fill the client map through its pin, as a spoofed flood would.
    let pin_dir = s.bpffs.pin_dir();
    let mut clients: HashMap<MapData, ClientKey, ClientState> = HashMap::try_from(
        aya::maps::Map::from_map_data(MapData::from_pin(pin_dir.join("CLIENTS"))?)?,
    )?;
    let state = ClientState {
        requests: 1,
        packets: 1,
        last_seen_ns: monotonic_ns(),
        ..Default::default()
    };
    for i in 0..CLIENTS {
        let key = ClientKey::v4((0x0a00_0000 | i).to_be_bytes());
        clients.insert(key, state, 0)?;
    }
    let heartbeat: Array<MapData, u64> = Array::try_from(aya::maps::Map::from_map_data(
        MapData::from_pin(pin_dir.join("HEARTBEAT"))?,
    )?)?;

    let stop = AtomicBool::new(false);
    let (ok, busy, tracked) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let oldest_beat = AtomicU64::new(0);
    let started = Instant::now();
    thread::scope(|scope| -> Result<()> {
        let _stop = StopOnDrop(&stop);
        let mut scrapers = Vec::new();
        for _ in 0..SCRAPERS {
            scrapers.push(scope.spawn(|| {
                s.topo.server.within(|| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        match scrape()? {
                            (200, body) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let n = prom::value(&body, "api_guard_tracked_clients", &[])
                                    .unwrap_or(0.0);
                                tracked.fetch_max(n as u64, Ordering::Relaxed);
                            }
                            (503, _) => {
                                busy.fetch_add(1, Ordering::Relaxed);
                            }
                            (code, body) => bail!("scrape answered {code}: {body}"),
                        }
                    }
                    Ok(())
                })
            }));
        }
        // The heartbeat's age, read from its pin as often as it is written.
        let watcher = scope.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let age = monotonic_ns().saturating_sub(heartbeat.get(&0, 0)?);
                oldest_beat.fetch_max(age, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        // Meanwhile the denied client keeps trying, and must never get through.
        let mut probes = 0;
        while ok.load(Ordering::Relaxed) < SCRAPES
            || tracked.load(Ordering::Relaxed) < u64::from(CLIENTS) * 9 / 10
        {
            ensure!(
                started.elapsed() < GIVE_UP_AFTER,
                "gave up: {} scrapes answered, {} busy, {} clients tracked",
                ok.load(Ordering::Relaxed),
                busy.load(Ordering::Relaxed),
                tracked.load(Ordering::Relaxed)
            );
            ensure!(
                answered(denied, 1)? == 0,
                "the denied client was answered: the kernel failed open"
            );
            probes += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for scraper in scrapers {
            scraper
                .join()
                .map_err(|_| anyhow::anyhow!("a scraper panicked"))???;
        }
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the watcher panicked"))??;
        eprintln!(
            "{} scrapes answered and {} busy in {:.1?}; {probes} denied probes; oldest heartbeat {:?}",
            ok.load(Ordering::Relaxed),
            busy.load(Ordering::Relaxed),
            started.elapsed(),
            Duration::from_nanos(oldest_beat.load(Ordering::Relaxed))
        );
        Ok(())
    })?;

    let oldest = Duration::from_nanos(oldest_beat.load(Ordering::Relaxed));
    assert!(
        oldest < MAX_HEARTBEAT_AGE,
        "the heartbeat was {oldest:?} old under scrapes"
    );
    assert_eq!(
        s.served("198.18.0.2", API)?,
        0,
        "the denied client was served"
    );
    let out = s.ctl(&["status", "--json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    for kind in ["packets", "requests", "connections"] {
        assert_eq!(
            status["counters"][kind]["failed_open"], 0,
            "{kind} failed open: {status}"
        );
    }
    assert!(
        status["counters"]["connections"]["denied"]
            .as_u64()
            .unwrap_or(0)
            + status["counters"]["connections"]["xdp_denied"]
                .as_u64()
                .unwrap_or(0)
            >= 1,
        "{status}"
    );
    Ok(())
}
