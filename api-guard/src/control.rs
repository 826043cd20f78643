//! Operator commands acting on a running daemon through its pinned maps: every
//! change takes effect on the next packet, without a restart.

use std::{
    io::Write,
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_common::{
    config::{Limit, flags},
    counters::{Event, KINDS, VERDICTS},
    network::NetKey,
};
use serde_json::json;

use crate::{
    clock::monotonic_ns,
    maps::{Client, KernelMaps},
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

/// `api-guard top`: the busiest clients by request rate, over one second.
pub fn top(pin_dir: &Path, n: usize, out: &mut impl Write) -> Result<()> {
    let maps = Pinned::open(pin_dir)?;
    let before: std::collections::HashMap<IpAddr, u64> = maps
        .clients()?
        .into_iter()
        .map(|c| (c.addr, c.state.requests))
        .collect();
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let clients = maps.clients()?;
    let secs = t0.elapsed().as_secs_f64();
    let now = monotonic_ns();
    let rates = clients.iter().map(|c| {
        (
            c.addr,
            c.state
                .requests
                .saturating_sub(before.get(&c.addr).copied().unwrap_or(0)) as f64
                / secs,
        )
    });
    writeln!(
        out,
        "{:<40} {:>10} {:>12} {:>8}",
        "CLIENT", "REQ/S", "REQUESTS", "BLOCKED"
    )?;
    for (addr, rate) in top_k(rates, n) {
        let c = clients
            .iter()
            .find(|c| c.addr == addr)
            .expect("from this list");
        let blocked = if c.state.blocked_until_ns > now {
            "yes"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<40} {:>10.1} {:>12} {:>8}",
            addr.to_string(),
            rate,
            c.state.requests,
            blocked
        )?;
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
