//! `api-guard top`: the busiest clients by request rate, request verdicts per
//! second and blocks, refreshed every interval.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write},
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_common::{
    client::ClientState,
    config::flags,
    counters::{Kind, VERDICTS, Verdict},
};
use serde_json::{Value, json};

use super::{network_string, remaining_secs};
use crate::{
    clock::monotonic_ns,
    failure::Failure,
    kernel::{
        Counters, KernelMaps,
        pins::{self, Holder, Pinned},
    },
    sinks::metrics::top_k,
};

/// What `api-guard top` shows and how often.
#[derive(Clone, Debug)]
pub struct TopOptions {
    pub n: usize,
    pub interval: Duration,
    pub once: bool,
    pub json: bool,
}

/// The kernel's view at one instant, for rates between two of them.
struct Snapshot {
    at: Instant,
    clients: HashMap<IpAddr, ClientState>,
    counters: Counters,
}

impl Snapshot {
    fn take(maps: &Pinned) -> Result<Self> {
        Ok(Self {
            at: Instant::now(),
            clients: maps
                .clients()?
                .into_iter()
                .map(|c| (c.addr, c.state))
                .collect(),
            counters: maps.counters()?,
        })
    }
}

/// `api-guard top`: the busiest clients by request rate, request verdicts per
/// second and blocks, refreshed every interval until Ctrl-C or the daemon stops
/// (or once).
pub fn top(pin_dir: &Path, opts: &TopOptions, out: &mut impl Write) -> Result<()> {
    let maps = Pinned::open(pin_dir)?;
    let live_screen = !opts.once && !opts.json && std::io::stdout().is_terminal();
    let mut before = Snapshot::take(&maps)?;
    loop {
        thread::sleep(opts.interval);
        let holder = pins::holder(pin_dir);
        if holder == Holder::Nobody {
            // On stderr with exit code 5, so a JSON stream stays JSON.
            return Err(Failure::DaemonStopped(pin_dir.to_path_buf()).into());
        }
        let now = Snapshot::take(&maps)?;
        let mut frame = top_frame(&maps, &before, &now, opts.n)?;
        frame["daemon_running"] = (holder == Holder::Daemon).into();
        if opts.json {
            writeln!(out, "{frame}")?;
        } else {
            if live_screen {
                // Clear the screen and go home: redraw in place.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            render_top(&frame, opts, out)?;
        }
        out.flush()?;
        if opts.once {
            return Ok(());
        }
        before = now;
    }
}

/// One snapshot of `top` as JSON: the text view renders the same document.
fn top_frame(maps: &Pinned, before: &Snapshot, now: &Snapshot, n: usize) -> Result<Value> {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let mono = monotonic_ns();
    let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
    let rates = now.clients.iter().map(|(addr, st)| {
        let old = before.clients.get(addr).map_or(0, |o| o.requests);
        (*addr, rate(st.requests, old))
    });
    // Network blocks (an operator's, or --require-auth's) cover clients too.
    let blocks: Vec<(ipnet::IpNet, u64)> = maps
        .blocks()?
        .into_iter()
        .filter(|(_, _, until)| *until > mono)
        .filter_map(|(prefix, addr, until)| {
            Some((network_string(prefix, addr).parse().ok()?, until))
        })
        .collect();
    // The detectors' view, by client bucket: response classes and findings.
    let detected = super::status::detections_json(&maps.detect_clients()?, mono);
    let detected_of = |addr: &IpAddr| {
        detected
            .iter()
            .find(|d| d["client"] == addr.to_string().as_str())
            .cloned()
    };
    let clients: Vec<Value> = top_k(rates, n)
        .into_iter()
        .filter_map(|(addr, rps)| {
            let st = now.clients.get(&addr)?;
            let until = blocks
                .iter()
                .filter(|(net, _)| net.contains(&addr))
                .map(|(_, until)| *until)
                .chain([st.blocked_until_ns])
                .max()
                .unwrap_or(0);
            Some(json!({
                "client": addr.to_string(),
                "requests_per_second": round1(rps),
                "requests": st.requests,
                "connections": st.connections,
                "open_connections": st.open_conns,
                "blocked": until > mono,
                "blocked_secs_left": remaining_secs(until, mono).filter(|_| until > mono),
                // 401/403/404/429/5xx over the last minute, and the last
                // finding's detector.
                "responses": detected_of(&addr).map_or(Value::Null, |d| d["responses"].clone()),
                "finding": detected_of(&addr).map_or(Value::Null, |d| d["last_detector"].clone()),
            }))
        })
        .collect();
    let verdicts: serde_json::Map<String, Value> = VERDICTS
        .iter()
        .map(|&v| {
            let r = rate(
                now.counters.get(Kind::Requests, v),
                before.counters.get(Kind::Requests, v),
            );
            (v.name().to_string(), round1(r).into())
        })
        .collect();
    let blocked_networks: Vec<Value> = blocks
        .iter()
        .map(|(net, until)| json!({"network": net.to_string(), "remaining_secs": remaining_secs(*until, mono)}))
        .collect();
    let cfg = maps.config()?;
    let keys = busiest_keys(maps, mono, n)?;
    // --trusted-hops: forwarded clients over their limit on pooled proxy
    // connections (reported, not dropped). None on a pin dir of a build
    // without the map.
    let forwarded: Vec<Value> = if cfg.has(flags::FORWARDED) {
        maps.forwarded_over_limit(mono)?
            .iter()
            .take(n)
            .map(|c| json!({"client": c.client, "reported_requests": c.requests}))
            .collect()
    } else {
        Vec::new()
    };
    Ok(json!({
        "interval_secs": round1(secs),
        "tracked_clients": now.clients.len(),
        "blocked_clients": now
            .clients
            .iter()
            .filter(|(addr, st)| {
                st.blocked_until_ns > mono || blocks.iter().any(|(net, _)| net.contains(*addr))
            })
            .count(),
        "fail_mode": if cfg.heartbeat_timeout_ns == 0 { "closed" } else { "open" },
        "dry_run": cfg.has(flags::DRY_RUN),
        "requests_per_second": verdicts,
        "clients": clients,
        "keys": keys,
        "blocked_networks": blocked_networks,
        "forwarded_over_limit": forwarded,
        "findings": detected
            .iter()
            .filter(|d| d["findings"].as_u64().unwrap_or(0) > 0)
            .take(n)
            .cloned()
            .collect::<Vec<_>>(),
    }))
}

/// The API keys whose buckets are fullest (`--key-rate`), by fingerprint (the
/// top of the keyed hash; neither maps nor this show a key): how much of the
/// burst is spent, and whether the next request would be refused.
fn busiest_keys(maps: &Pinned, mono: u64, n: usize) -> Result<Vec<Value>> {
    let limit = maps.key_policy()?.key_limit;
    if !limit.is_set() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<(u64, u64)> = maps
        .limit_buckets()?
        .into_iter()
        .filter(|(k, _)| k.kind == api_guard_common::keys::BUCKET_KEY)
        .map(|(k, tat)| (k.hash(), tat.saturating_sub(mono)))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.1));
    keys.truncate(n);
    Ok(keys
        .into_iter()
        .map(|(hash, ahead)| {
            json!({
                "key": format!("{:08x}", api_guard_common::keys::fingerprint(hash)),
                "burst_used": round1(100.0 * ahead as f64 / limit.burst_ns.max(1) as f64) / 100.0,
                "limited": ahead + limit.interval_ns > limit.burst_ns,
            })
        })
        .collect())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn render_top(frame: &Value, opts: &TopOptions, out: &mut impl Write) -> Result<()> {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    writeln!(
        out,
        "api-guard top: {} clients tracked, {} blocked; every {}{}",
        frame["tracked_clients"],
        frame["blocked_clients"],
        humantime::format_duration(opts.interval),
        if opts.once { "" } else { " (Ctrl-C quits)" }
    )?;
    if frame["daemon_running"] == false {
        writeln!(
            out,
            "no daemon: the programs a stopped daemon left attached act on their own"
        )?;
    }
    let per_verdict: Vec<String> = VERDICTS
        .iter()
        .filter(|v| **v != Verdict::Passed && **v != Verdict::Malformed)
        .map(|v| (v.name(), f(&frame["requests_per_second"][v.name()])))
        .filter(|(name, r)| *r > 0.0 || *name == "allowed")
        .map(|(name, r)| format!("{name} {r:.1}"))
        .collect();
    writeln!(out, "requests/s: {}", per_verdict.join(", "))?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<40} {:>9} {:>10} {:>8} {:>5}  {:<24} STATUS",
        "CLIENT", "REQ/S", "REQUESTS", "CONNS", "OPEN", "ERRORS/MIN"
    )?;
    for c in frame["clients"].as_array().into_iter().flatten() {
        let status = match c["blocked_secs_left"].as_u64() {
            Some(left) => format!("blocked ({left}s left)"),
            None if c["blocked"] == true => "blocked".to_string(),
            None => String::new(),
        };
        let status = match c["finding"].as_str() {
            Some(d) if status.is_empty() => format!("finding: {d}"),
            Some(d) => format!("{status}, finding: {d}"),
            None => status,
        };
        writeln!(
            out,
            "{:<40} {:>9.1} {:>10} {:>8} {:>5}  {:<24} {}",
            c["client"].as_str().unwrap_or("?"),
            f(&c["requests_per_second"]),
            c["requests"].as_u64().unwrap_or(0),
            c["connections"].as_u64().unwrap_or(0),
            c["open_connections"].as_u64().unwrap_or(0),
            super::status::classes_text(&c["responses"]),
            status
        )?;
    }
    for d in frame["findings"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "finding: {} {} ({}, {}s ago, {} in all)",
            d["client"].as_str().unwrap_or("?"),
            d["last_detector"].as_str().unwrap_or("?"),
            d["last_action"].as_str().unwrap_or("?"),
            d["last_finding_secs_ago"],
            d["findings"]
        )?;
    }
    let keys = frame["keys"].as_array().cloned().unwrap_or_default();
    if !keys.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:>11}  STATUS", "KEY", "BURST USED")?;
        for k in &keys {
            writeln!(
                out,
                "{:<10} {:>10.0}%  {}",
                k["key"].as_str().unwrap_or("?"),
                100.0 * f(&k["burst_used"]),
                if k["limited"] == true { "limited" } else { "" }
            )?;
        }
    }
    for c in frame["forwarded_over_limit"]
        .as_array()
        .into_iter()
        .flatten()
    {
        writeln!(
            out,
            "over its limit on a pooled proxy connection (reported, not dropped): {} ({} requests)",
            c["client"].as_str().unwrap_or("?"),
            c["reported_requests"]
        )?;
    }
    for n in frame["blocked_networks"].as_array().into_iter().flatten() {
        match n["remaining_secs"].as_u64() {
            Some(s) => writeln!(
                out,
                "blocked network {} ({s}s left)",
                n["network"].as_str().unwrap_or("?")
            )?,
            None => writeln!(
                out,
                "blocked network {} (until unblocked)",
                n["network"].as_str().unwrap_or("?")
            )?,
        }
    }
    Ok(())
}
