//! `api-guard report`: the findings log seen as the OWASP API Security Top 10
//! (2023): for each risk, whether api-guard watches for it, whether it was
//! observed in the period, by which clients, on which routes, and what was
//! done (logged, or the client blocked).

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use serde_json::{Value, json};

use crate::sinks::findings;

/// The ten risks, with the detectors that watch for each (none: not watched
/// from the wire; API4 is the rate limits', in `status`, and its findings are
/// the forwarded clients over their limit behind a `--trusted-hops` proxy).
const RISKS: [(&str, &str, &[&str]); 10] = [
    ("API1:2023", "Broken Object Level Authorization", &["bola"]),
    ("API2:2023", "Broken Authentication", &["stuffing", "auth"]),
    (
        "API3:2023",
        "Broken Object Property Level Authorization",
        &[],
    ),
    (
        "API4:2023",
        "Unrestricted Resource Consumption",
        &["forwarded"],
    ),
    ("API5:2023", "Broken Function Level Authorization", &[]),
    (
        "API6:2023",
        "Unrestricted Access to Sensitive Business Flows",
        &[],
    ),
    ("API7:2023", "Server Side Request Forgery", &[]),
    ("API8:2023", "Security Misconfiguration", &[]),
    ("API9:2023", "Improper Inventory Management", &["probing"]),
    ("API10:2023", "Unsafe Consumption of APIs", &[]),
];

/// How a risk not watched by a detector is covered, if at all.
fn coverage(id: &str, detectors: &[&str]) -> &'static str {
    match (id, detectors.is_empty()) {
        ("API4:2023", _) => "rate limits (see `api-guard status`)",
        (_, false) => "detector",
        _ => "not visible from the wire",
    }
}

#[derive(Default)]
struct ClientRow {
    findings: u64,
    blocked: u64,
    detectors: BTreeMap<String, u64>,
    routes: BTreeMap<String, u64>,
    first: String,
    last: String,
    max_score: f64,
    last_reason: String,
}

/// Requests and connections the kernel refused for going over a limit, since
/// its pinned state was made (API4's evidence), if the pins can be read.
pub fn kernel_limits(pin_dir: &Path) -> Option<(u64, u64)> {
    use crate::kernel::{KernelMaps, pins::Pinned};
    use api_guard_common::counters::{Kind, Verdict};
    let maps = Pinned::open(pin_dir).ok()?;
    let c = maps.counters().ok()?;
    Some((
        c.get(Kind::Requests, Verdict::RateLimited) + c.get(Kind::Requests, Verdict::WouldDrop),
        c.get(Kind::Connections, Verdict::ConnLimited)
            + c.get(Kind::Connections, Verdict::WouldDrop),
    ))
}

pub fn report(
    path: &Path,
    since: Duration,
    limited: Option<(u64, u64)>,
    as_json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let (all, unreadable) = findings::read(path)?;
    let from = SystemTime::now()
        .checked_sub(since)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let in_period: Vec<&Value> = all
        .iter()
        .filter(|f| {
            f["timestamp"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .is_some_and(|t| t >= from)
        })
        .collect();
    let mut risks = Vec::new();
    for (id, name, detectors) in RISKS {
        let mut clients: BTreeMap<String, ClientRow> = BTreeMap::new();
        for f in in_period.iter().filter(|f| {
            f["detector"]
                .as_str()
                .is_some_and(|d| detectors.contains(&d))
        }) {
            let row = clients
                .entry(f["client"].as_str().unwrap_or("?").to_string())
                .or_default();
            row.findings += 1;
            row.blocked += u64::from(f["blocked"] == true);
            *row.detectors
                .entry(f["detector"].as_str().unwrap_or("?").into())
                .or_default() += 1;
            if let Some(r) = f["route"].as_str() {
                *row.routes.entry(r.into()).or_default() += 1;
            }
            let ts = f["timestamp"].as_str().unwrap_or("").to_string();
            if row.first.is_empty() {
                row.first = ts.clone();
            }
            row.last = ts;
            row.max_score = row.max_score.max(f["score"].as_f64().unwrap_or(0.0));
            row.last_reason = f["reason"].as_str().unwrap_or("").into();
        }
        let findings: u64 = clients.values().map(|c| c.findings).sum();
        // API4 from the kernel's counters (whole life of the pinned state,
        // not the period: the kernel keeps totals).
        let kernel = (id == "API4:2023").then_some(limited).flatten();
        let blocked: u64 = clients.values().map(|c| c.blocked).sum();
        let mut rows: Vec<(String, ClientRow)> = clients.into_iter().collect();
        rows.sort_by(|a, b| b.1.findings.cmp(&a.1.findings).then(a.0.cmp(&b.0)));
        risks.push(json!({
            "id": id,
            "name": name,
            "watched_by": coverage(id, detectors),
            "detectors": detectors,
            "observed": findings > 0 || kernel.is_some_and(|(r, c)| r + c > 0),
            "kernel_limited": kernel.map(|(r, c)| json!({"requests": r, "connections": c})),
            "findings": findings,
            "clients_blocked": rows.iter().filter(|(_, r)| r.blocked > 0).count(),
            "blocks": blocked,
            "clients": rows.iter().map(|(client, r)| json!({
                "client": client,
                "findings": r.findings,
                "blocked": r.blocked > 0,
                "detectors": r.detectors,
                "routes": r.routes,
                "first": r.first,
                "last": r.last,
                "max_score": r.max_score,
                "last_reason": r.last_reason,
            })).collect::<Vec<_>>(),
        }));
    }
    let doc = json!({
        "findings_log": path.display().to_string(),
        "since_secs": since.as_secs(),
        "findings": in_period.len(),
        "unreadable_lines": unreadable,
        "risks": risks,
    });
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "OWASP API Security Top 10 (2023), last {}: {} findings in {}",
        humantime::format_duration(since),
        in_period.len(),
        path.display()
    )?;
    if unreadable > 0 {
        writeln!(out, "({unreadable} unreadable lines skipped)")?;
    }
    for r in &risks {
        let state = match (r["observed"] == true, r["watched_by"].as_str()) {
            (true, _) if !r["kernel_limited"].is_null() => format!(
                "OBSERVED: {} requests and {} connections over the limits (kernel, since start)",
                r["kernel_limited"]["requests"], r["kernel_limited"]["connections"]
            ),
            (true, _) => format!(
                "OBSERVED: {} findings, {} clients, {} blocked",
                r["findings"],
                r["clients"].as_array().map_or(0, Vec::len),
                r["clients_blocked"]
            ),
            (false, Some("detector")) => "not observed".into(),
            (false, _) if !r["kernel_limited"].is_null() => {
                "not observed (the kernel's limit counters are at zero)".into()
            }
            (false, Some(how)) => format!("not watched by a detector ({how})"),
            (false, None) => String::new(),
        };
        writeln!(
            out,
            "{:<11} {:<48} {}",
            r["id"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            state
        )?;
        for c in r["clients"].as_array().into_iter().flatten() {
            let routes: Vec<&String> = c["routes"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            writeln!(
                out,
                "    {:<39} {} findings{}; {}; routes: {}",
                c["client"].as_str().unwrap_or("?"),
                c["findings"],
                if c["blocked"] == true {
                    ", blocked"
                } else {
                    ", logged"
                },
                c["last_reason"].as_str().unwrap_or(""),
                if routes.is_empty() {
                    "-".to_string()
                } else {
                    routes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_land_under_their_risk_and_old_ones_are_left_out() {
        let dir =
            std::env::temp_dir().join(format!("api-guard-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("findings.log");
        let now = humantime::format_rfc3339(SystemTime::now()).to_string();
        let old =
            humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(7200)).to_string();
        let lines = [
            json!({"timestamp": now, "detector": "bola", "client": "198.18.0.2", "route": "/v1/orders/{id}", "blocked": true, "score": 1.2, "reason": "r1"}),
            json!({"timestamp": now, "detector": "probing", "client": "198.18.1.2", "route": null, "blocked": false, "score": 1.0, "reason": "r2"}),
            json!({"timestamp": old, "detector": "stuffing", "client": "198.18.2.2", "route": "/login", "blocked": false, "score": 1.0, "reason": "r3"}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text + "not json\n").unwrap();
        let mut out = Vec::new();
        report(
            &path,
            Duration::from_secs(3600),
            Some((0, 3)),
            true,
            &mut out,
        )
        .unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["findings"], 2);
        assert_eq!(doc["unreadable_lines"], 1);
        let risk = |id: &str| {
            doc["risks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(risk("API1:2023")["observed"], true);
        assert_eq!(risk("API1:2023")["clients"][0]["blocked"], true);
        assert_eq!(risk("API2:2023")["observed"], false);
        assert_eq!(risk("API4:2023")["observed"], true);
        assert_eq!(risk("API4:2023")["kernel_limited"]["connections"], 3);
        assert_eq!(risk("API9:2023")["clients"][0]["client"], "198.18.1.2");
        let mut text = Vec::new();
        report(&path, Duration::from_secs(3600), None, false, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("API1:2023") && text.contains("OBSERVED"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
