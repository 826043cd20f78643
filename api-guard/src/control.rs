//! Operator commands acting on a running daemon through its pinned maps: every
//! change takes effect on the next packet, without a restart.

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
    config::{Limit, flags},
    counters::{Event, KINDS, Kind, VERDICTS, Verdict},
    network::NetKey,
};
use serde_json::{Value, json};

use crate::{
    clock::monotonic_ns,
    failure::{ExitCode, Failure},
    maps::{Client, Counters, KernelMaps},
    metrics::top_k,
    pins::Pinned,
    policy::Network,
};

/// `api-guard status`: the policy, the counters, the client table and blocks.
pub fn status(pin_dir: &Path, as_json: bool, out: &mut impl Write) -> Result<()> {
    let maps = Pinned::open(pin_dir)?;
    let cfg = maps.config()?;
    let counters = maps.counters()?;
    let clients = maps.clients()?;
    let now = monotonic_ns();
    let blocked: Vec<&Client> = clients
        .iter()
        .filter(|c| c.state.blocked_until_ns > now)
        .collect();
    let nets: Vec<(String, Option<u64>)> = maps
        .blocks()?
        .into_iter()
        .filter(|(_, _, until)| *until > now)
        .map(|(prefix, addr, until)| (network_string(prefix, addr), remaining_secs(until, now)))
        .collect();
    let limit = |l: &Limit| match l.is_set() {
        true => json!({"rate": 1_000_000_000 / l.interval_ns, "burst": l.burst_ns / l.interval_ns}),
        false => json!(null),
    };
    let mut verdicts = serde_json::Map::new();
    for kind in KINDS {
        let by: serde_json::Map<String, serde_json::Value> = VERDICTS
            .iter()
            .map(|&v| (v.name().to_string(), counters.get(kind, v).into()))
            .collect();
        verdicts.insert(kind.name().into(), by.into());
    }
    let doc = json!({
        "config": {
            "requests": limit(&cfg.requests),
            "connections": limit(&cfg.connections),
            "block_for_secs": cfg.block_ns as f64 / 1e9,
            "max_conns": cfg.max_conns,
            "ipv6_prefix": cfg.ipv6_prefix,
            "dry_run": cfg.has(flags::DRY_RUN),
            "on_limit": if cfg.has(flags::ON_LIMIT_RESET) { "reset" } else { "drop" },
            "sample_ratio": f64::from(cfg.sample_below) / f64::from(u32::MAX),
            "fail_mode": if cfg.heartbeat_timeout_ns == 0 { "closed" } else { "open" },
            "heartbeat_timeout_secs": cfg.heartbeat_timeout_ns as f64 / 1e9,
        },
        "heartbeat_age_secs": now.saturating_sub(maps.last_beat()?) as f64 / 1e9,
        "counters": verdicts,
        "clients": {
            "tracked": clients.len(),
            "created": maps.event(Event::ClientsCreated)?,
            "refused": maps.event(Event::ClientsRefused)?,
        },
        "samples": {"sampled": maps.event(Event::Sampled)?, "lost": maps.event(Event::SamplesLost)?},
        "blocked_clients": blocked.iter().map(|c| json!({
            "client": c.addr.to_string(),
            "remaining_secs": remaining_secs(c.state.blocked_until_ns, now),
        })).collect::<Vec<_>>(),
        "blocked_networks": nets.iter().map(|(n, r)| json!({"network": n, "remaining_secs": r})).collect::<Vec<_>>(),
    });
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "policy: {}", doc["config"])?;
    for kind in KINDS {
        let line: Vec<String> = VERDICTS
            .iter()
            .map(|&v| (v.name(), counters.get(kind, v)))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        writeln!(out, "{:<12} {}", kind.name(), line.join(" "))?;
    }
    writeln!(out, "clients tracked: {}", clients.len())?;
    for c in &blocked {
        writeln!(
            out,
            "blocked client {} ({}s left)",
            c.addr,
            remaining_secs(c.state.blocked_until_ns, now).unwrap_or(0)
        )?;
    }
    for (n, r) in &nets {
        match r {
            Some(s) => writeln!(out, "blocked network {n} ({s}s left)")?,
            None => writeln!(out, "blocked network {n} (until unblocked)")?,
        }
    }
    Ok(())
}

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
        let holder = crate::pins::holder(pin_dir);
        if holder == crate::pins::Holder::Nobody {
            // On stderr with exit code 5, so a JSON stream stays JSON.
            return Err(Failure::new(
                ExitCode::NotRunning,
                format!("the daemon on {} stopped", pin_dir.display()),
            )
            .into());
        }
        let now = Snapshot::take(&maps)?;
        let mut frame = top_frame(&maps, &before, &now, opts.n)?;
        frame["daemon_running"] = (holder == crate::pins::Holder::Daemon).into();
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
        "blocked_networks": blocked_networks,
    }))
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
        "{:<40} {:>9} {:>10} {:>8} {:>5}  STATUS",
        "CLIENT", "REQ/S", "REQUESTS", "CONNS", "OPEN"
    )?;
    for c in frame["clients"].as_array().into_iter().flatten() {
        let status = match c["blocked_secs_left"].as_u64() {
            Some(left) => format!("blocked ({left}s left)"),
            None if c["blocked"] == true => "blocked".to_string(),
            None => String::new(),
        };
        writeln!(
            out,
            "{:<40} {:>9.1} {:>10} {:>8} {:>5}  {}",
            c["client"].as_str().unwrap_or("?"),
            f(&c["requests_per_second"]),
            c["requests"].as_u64().unwrap_or(0),
            c["connections"].as_u64().unwrap_or(0),
            c["open_connections"].as_u64().unwrap_or(0),
            status
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

/// `api-guard block CIDR [--for D]`.
pub fn block(
    pin_dir: &Path,
    net: &Network,
    duration: Option<Duration>,
    out: &mut impl Write,
) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let until = match duration {
        Some(d) => monotonic_ns()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .min(u64::MAX - 1),
        None => u64::MAX,
    };
    maps.block(net.lpm_key(), until)?;
    match duration {
        Some(d) => writeln!(out, "blocked {net} for {}", humantime::format_duration(d))?,
        None => writeln!(out, "blocked {net} until unblocked")?,
    }
    Ok(())
}

/// `api-guard unblock CIDR`: the operator's block on it, and the automatic
/// blocks of the clients inside it.
pub fn unblock(pin_dir: &Path, net: &Network, out: &mut impl Write) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let listed = maps.unblock(net.lpm_key())?;
    let clients = maps.clear_client_blocks(net, monotonic_ns())?;
    writeln!(
        out,
        "unblocked {net}: {} network block, {clients} client block(s) lifted",
        if listed { "1" } else { "no" }
    )?;
    Ok(())
}

/// `api-guard limit CIDR --rate R [--burst B]`.
pub fn limit(
    pin_dir: &Path,
    net: &Network,
    rate: u32,
    burst: Option<u32>,
    out: &mut impl Write,
) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let burst = burst.unwrap_or(rate);
    maps.add_overrides(&[(
        net.lpm_key(),
        Limit::per_second(u64::from(rate), u64::from(burst)),
    )])?;
    let mut cfg = maps.config()?;
    if !cfg.has(flags::HAS_OVERRIDES) {
        cfg.flags |= flags::HAS_OVERRIDES;
        maps.set_config(&cfg)?;
    }
    writeln!(out, "limited {net} to {rate}/s, bursts of {burst}")?;
    Ok(())
}

/// `api-guard limit --remove CIDR`.
pub fn remove_limit(pin_dir: &Path, net: &Network, out: &mut impl Write) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    if maps.remove_override(net.lpm_key())? {
        writeln!(out, "removed the limit on {net}")?;
    } else {
        writeln!(out, "no limit on exactly {net}")?;
    }
    Ok(())
}

fn remaining_secs(until: u64, now: u64) -> Option<u64> {
    (until != u64::MAX).then(|| until.saturating_sub(now) / 1_000_000_000)
}

fn network_string(prefix: u32, addr: NetKey) -> String {
    let ip = std::net::Ipv6Addr::from(addr);
    match ip.to_ipv4_mapped() {
        Some(v4) if prefix >= 96 => format!("{v4}/{}", prefix - 96),
        _ => format!("{ip}/{prefix}"),
    }
}
