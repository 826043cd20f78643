//! `api-guard status`: a running daemon's policy, counters, clients and blocks.

use std::{io::Write, path::Path};

use anyhow::Result;
use api_guard_common::{
    config::{Limit, flags},
    counters::{Event, KINDS, VERDICTS},
    ports,
};
use serde_json::json;

use super::{network_string, remaining_secs};
use crate::{
    clock::monotonic_ns,
    kernel::{Client, KernelMaps, layout, pins::Pinned},
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
    // Read together, after the client walk: the age is the beat's, not the walk's.
    let heartbeat_age = {
        let beat = maps.last_beat()?;
        monotonic_ns().saturating_sub(beat) as f64 / 1e9
    };
    let tls = maps.tls_status()?;
    let ports: Vec<serde_json::Value> = maps
        .port_flags()?
        .into_iter()
        .filter(|(_, f)| f & ports::WATCHED != 0)
        .map(|(port, f)| {
            let processes: Vec<serde_json::Value> = tls
                .iter()
                .filter(|(p, ..)| *p == port)
                .map(|(_, pid, followed, text)| {
                    json!({"pid": pid, "tls_followed": followed, "detail": text})
                })
                .collect();
            json!({
                "port": port,
                // Set by the kernel once it tied an SSL_read to the port.
                "tls_seen": f & ports::TLS != 0,
                "processes": processes,
            })
        })
        .collect();
    let limit = |l: &Limit| match l.is_set() {
        true => json!({"rate": 1_000_000_000 / l.interval_ns, "burst": l.burst_ns / l.interval_ns}),
        false => json!(null),
    };
    let responses: serde_json::Map<String, serde_json::Value> = {
        let block = maps.responses()?;
        api_guard_common::exchange::ResponseCount::ALL
            .iter()
            .map(|c| (c.name().to_string(), block[*c as usize].into()))
            .collect()
    };
    // The XDP pre-filter, per interface TC watches: native where its link is
    // pinned, none where `--xdp` left it out (or the driver has no XDP).
    let xdp_native = layout::linked_ifaces(pin_dir, "xdp");
    let xdp: serde_json::Map<String, serde_json::Value> = layout::linked_ifaces(pin_dir, "ingress")
        .into_iter()
        .map(|iface| {
            let mode = if xdp_native.contains(&iface) {
                "native"
            } else {
                "none"
            };
            (iface, mode.into())
        })
        .collect();
    let mut verdicts = serde_json::Map::new();
    for kind in KINDS {
        let by: serde_json::Map<String, serde_json::Value> = VERDICTS
            .iter()
            .map(|&v| (v.name().to_string(), counters.get(kind, v).into()))
            .collect();
        verdicts.insert(kind.name().into(), by.into());
    }
    let detections = detections_json(&maps.detect_clients()?, now);
    let forwarded = maps.forwarded_over_limit(now)?;
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
        "heartbeat_age_secs": heartbeat_age,
        "xdp": xdp,
        "ports": ports,
        "counters": verdicts,
        "clients": {
            "tracked": clients.len(),
            "created": maps.event(Event::ClientsCreated)?,
            "refused": maps.event(Event::ClientsRefused)?,
        },
        "samples": {"sampled": maps.event(Event::Sampled)?, "lost": maps.event(Event::SamplesLost)?},
        // Every response on the API ports, counted by the egress program.
        "responses": responses,
        "blocked_clients": blocked.iter().map(|c| json!({
            "client": c.addr.to_string(),
            "remaining_secs": remaining_secs(c.state.blocked_until_ns, now),
        })).collect::<Vec<_>>(),
        "blocked_networks": nets.iter().map(|(n, r)| json!({"network": n, "remaining_secs": r})).collect::<Vec<_>>(),
        // The detectors' findings per client, and per-client response
        // classes over the last minute (published by the daemon each second).
        "detections": detections,
        // --trusted-hops: forwarded clients over their limit on pooled proxy
        // connections (reported, not dropped): the forwarded blocklist.
        "forwarded": {
            "trusted_hops": if cfg.has(flags::FORWARDED) { json!(cfg.forwarded_hops) } else { json!(null) },
            "header": if cfg.has(flags::FORWARDED_RFC7239) { "forwarded" } else { "x-forwarded-for" },
            "unnamed_requests": maps.event(Event::ForwardedUnnamed)?,
            "pooled_connections": maps.event(Event::ForwardedPooled)?,
            "over_limit": forwarded.iter().map(|c| json!({
                "client": c.client,
                "reported_requests": c.requests,
                "last_reported_secs_ago": c.since_last_ns as f64 / 1e9,
            })).collect::<Vec<_>>(),
        },
    });
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    if cfg.has(flags::FORWARDED) {
        writeln!(
            out,
            "forwarded clients over their limit on pooled connections: {}",
            match forwarded.len() {
                0 => "none".to_string(),
                _ => forwarded
                    .iter()
                    .map(|c| c.client.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        )?;
    }
    writeln!(out, "policy: {}", doc["config"])?;
    let xdp_line: Vec<String> = xdp
        .iter()
        .map(|(i, m)| format!("{i}={}", m.as_str().unwrap_or("?")))
        .collect();
    writeln!(out, "xdp: {}", xdp_line.join(" "))?;
    for kind in KINDS {
        let line: Vec<String> = VERDICTS
            .iter()
            .map(|&v| (v.name(), counters.get(kind, v)))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        writeln!(out, "{:<12} {}", kind.name(), line.join(" "))?;
    }
    for p in &ports {
        let port = &p["port"];
        let kind = if p["tls_seen"] == true {
            "TLS"
        } else {
            "plaintext or TLS not yet seen"
        };
        writeln!(out, "port {port}: {kind}")?;
        for proc in p["processes"].as_array().into_iter().flatten() {
            let how = if proc["tls_followed"] == true {
                "followed"
            } else {
                "not seen"
            };
            writeln!(
                out,
                "  pid {}: TLS {how}: {}",
                proc["pid"],
                proc["detail"].as_str().unwrap_or("")
            )?;
        }
    }
    let answered: Vec<String> = doc["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    writeln!(out, "{:<12} {}", "responses", answered.join(" "))?;
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
    for d in doc["detections"].as_array().into_iter().flatten() {
        if d["findings"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        writeln!(
            out,
            "finding: client {} {} findings, last {} ({}, {}s ago); answers last minute {}",
            d["client"].as_str().unwrap_or("?"),
            d["findings"],
            d["last_detector"].as_str().unwrap_or("?"),
            d["last_action"].as_str().unwrap_or("?"),
            d["last_finding_secs_ago"],
            classes_text(&d["responses"]),
        )?;
    }
    Ok(())
}

/// What the daemon's detectors published, as JSON: clients with findings
/// first (latest first), then the busiest by response classes.
pub(super) fn detections_json(
    entries: &[(std::net::IpAddr, api_guard_common::detect::DetectClient)],
    now: u64,
) -> Vec<serde_json::Value> {
    use api_guard_common::detect::{ACTION_BLOCK, ACTION_LOG, CLASSES, DETECTORS};
    let mut sorted: Vec<_> = entries.to_vec();
    sorted.sort_by(|a, b| {
        b.1.last_finding_ns
            .cmp(&a.1.last_finding_ns)
            .then(
                b.1.classes
                    .iter()
                    .sum::<u32>()
                    .cmp(&a.1.classes.iter().sum::<u32>()),
            )
            .then(a.0.cmp(&b.0))
    });
    sorted
        .iter()
        .map(|(ip, d)| {
            let responses: serde_json::Map<String, serde_json::Value> = CLASSES
                .iter()
                .zip(d.classes)
                .map(|(c, n)| (c.to_string(), n.into()))
                .collect();
            let detector = (d.last_detector as usize)
                .checked_sub(1)
                .and_then(|i| DETECTORS.get(i));
            json!({
                "client": ip.to_string(),
                "findings": d.findings,
                "last_detector": detector,
                "last_action": match d.last_action {
                    ACTION_BLOCK => Some("block"),
                    ACTION_LOG => Some("log"),
                    _ => None,
                },
                "last_finding_secs_ago": (d.last_finding_ns > 0)
                    .then(|| now.saturating_sub(d.last_finding_ns) / 1_000_000_000),
                "responses": responses,
            })
        })
        .collect()
}

/// `401:3 404:20`, the classes with answers.
pub(super) fn classes_text(responses: &serde_json::Value) -> String {
    let parts: Vec<String> = api_guard_common::detect::CLASSES
        .iter()
        .filter_map(|c| {
            let n = responses[*c].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{c}:{n}"))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}
