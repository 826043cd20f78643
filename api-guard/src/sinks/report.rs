//! What the daemon tells the operator about the traffic: a periodic log line and,
//! when it stops, a final report on stdout as JSON lines (one per client, then the
//! counters), so scripts can read it.

use std::io::Write;

use anyhow::Result;
use api_guard_common::counters::{KINDS, Kind, VERDICTS, Verdict};
use serde::Serialize;

use crate::kernel::{Client, Counters};

#[derive(Serialize)]
struct ClientLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "client.address")]
    address: String,
    requests: u64,
    connections: u64,
    packets: u64,
}

/// What the daemon knows when it stops.
pub struct Final {
    pub clients: Vec<Client>,
    pub clients_created: u64,
    pub counters: Counters,
    pub samples: u64,
    pub samples_lost: u64,
    /// Access log lines written.
    pub logged: u64,
}

impl Final {
    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        write_final(out, &self.clients, self.clients_created, &self.counters)?;
        let samples = serde_json::json!({
            "type": "samples",
            "sampled": self.samples,
            "lost": self.samples_lost,
            "logged": self.logged,
        });
        serde_json::to_writer(&mut *out, &samples)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }
}

/// Writes the final report: clients by request count (most first), the client
/// table's totals, then the verdict counters.
pub fn write_final(
    out: &mut impl Write,
    clients: &[Client],
    clients_created: u64,
    counters: &Counters,
) -> Result<()> {
    let mut sorted: Vec<&Client> = clients.iter().collect();
    sorted.sort_by(|a, b| {
        b.state
            .requests
            .cmp(&a.state.requests)
            .then(a.addr.cmp(&b.addr))
    });
    for c in sorted {
        let line = ClientLine {
            kind: "client",
            address: c.addr.to_string(),
            requests: c.state.requests,
            connections: c.state.connections,
            packets: c.state.packets,
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    let tracked = clients.len() as u64;
    let table = serde_json::json!({
        "type": "clients",
        "tracked": tracked,
        "created": clients_created,
        "evicted": clients_created.saturating_sub(tracked),
    });
    serde_json::to_writer(&mut *out, &table)?;
    writeln!(out)?;
    let mut totals = serde_json::Map::new();
    totals.insert("type".into(), "counters".into());
    for kind in KINDS {
        let by_verdict: serde_json::Map<String, serde_json::Value> = VERDICTS
            .iter()
            .map(|&v| (v.name().to_string(), counters.get(kind, v).into()))
            .collect();
        totals.insert(kind.name().into(), by_verdict.into());
    }
    serde_json::to_writer(&mut *out, &totals)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A one-line summary for the periodic log.
pub fn summary(clients: usize, counters: &Counters) -> String {
    format!(
        "clients={} requests={} connections={} packets_watched={} packets_passed={} packets_malformed={}",
        clients,
        counters.get(Kind::Requests, Verdict::Allowed),
        counters.get(Kind::Connections, Verdict::Allowed),
        counters.get(Kind::Packets, Verdict::Allowed),
        counters.get(Kind::Packets, Verdict::Passed),
        counters.get(Kind::Packets, Verdict::Malformed),
    )
}
