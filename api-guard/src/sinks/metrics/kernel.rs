//! The kernel's counters and maps, read when Prometheus scrapes, through map
//! handles of the metrics' own: a scrape waits on no other task, and no other
//! task (the heartbeat least of all) waits on a scrape.

use std::sync::Mutex;

use anyhow::Result;
use api_guard_common::{
    counters::{Event, KINDS, Kind, VERDICTS},
    maps::{self as names, NETWORK_SLOTS},
    tls::{self, TlsEvent},
};
use prometheus::{
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tracing::warn;

use crate::{
    clock::monotonic_ns,
    kernel::{KernelMaps, MapSet},
};

/// Event counters of the stream stage and the eviction-proof tables.
const STREAM_EVENTS: [(Event, &str, &str); 9] = [
    (
        Event::StreamsUntrusted,
        "api_guard_streams_untrusted_total",
        "Segments accounted without trusted framing (picked up mid-way, out of order, or retransmitted bytes the server has not taken): bodies not skipped, erring high",
    ),
    (
        Event::ConnectionsReset,
        "api_guard_connections_reset_total",
        "Connections reset because one segment held more request starts than the burst",
    ),
    (
        Event::PenaltiesFull,
        "api_guard_penalties_full_total",
        "Blocks or bucket debts the full penalty table could not keep (eviction can lift those)",
    ),
    (
        Event::OpenConnsFull,
        "api_guard_open_conns_full_total",
        "Clients whose open connections could not be counted for --max-conns (the table was full)",
    ),
    (
        Event::ProxyClients,
        "api_guard_proxy_clients_total",
        "Connections from --trusted-proxy peers whose PROXY header named a client",
    ),
    (
        Event::ProxyHeaderMissing,
        "api_guard_proxy_header_missing_total",
        "Connections from --trusted-proxy peers without a valid PROXY header (reset under --proxy-protocol required)",
    ),
    (
        Event::ProxyUnknownStreams,
        "api_guard_proxy_unknown_streams_total",
        "Segments from --trusted-proxy peers on connections whose start was not seen: charged to the peer",
    ),
    (
        Event::ForwardedUnnamed,
        "api_guard_forwarded_unnamed_total",
        "Requests from --trusted-proxy peers whose forwarded list (--trusted-hops) named no client: charged to the peer",
    ),
    (
        Event::ForwardedPooled,
        "api_guard_forwarded_pooled_connections_total",
        "--trusted-proxy connections that carried a second forwarded client (pooled): their over-limit requests are reported, not dropped",
    ),
];

/// The TLS programs' events, by label (`api_guard_tls_events_total`).
const TLS_EVENTS: [(TlsEvent, &str); 9] = [
    (TlsEvent::Reads, "reads"),
    (TlsEvent::FromCache, "from_cache"),
    (TlsEvent::Unattributed, "unattributed"),
    (TlsEvent::ReadFailed, "read_failed"),
    (TlsEvent::H2Streams, "h2_connections"),
    (TlsEvent::Verdicts, "verdicts"),
    (TlsEvent::Writes, "writes"),
    (TlsEvent::ResponseWrites, "response_writes"),
    (TlsEvent::WriteRetries, "write_retries"),
];

/// Reads the kernel's counters and maps when Prometheus scrapes.
pub struct KernelCollector {
    /// Held for a whole scrape: two scrapes never interleave their refreshes.
    maps: Mutex<MapSet>,
    max_clients: u32,
    by_kind: Vec<(Kind, IntCounterVec)>,
    samples: IntCounter,
    samples_lost: IntCounter,
    refused: IntCounter,
    /// The stream stage's and the penalty table's event counters.
    stream_events: Vec<(Event, IntCounter)>,
    /// The TLS programs' events.
    tls_events: IntCounterVec,
    evicted: IntCounter,
    tracked: IntGauge,
    blocked: IntGauge,
    forwarded_over: IntGauge,
    capacity: IntGaugeVec,
    descs: Vec<Desc>,
}

impl KernelCollector {
    /// The maps a scrape reads.
    pub const MAPS: [&'static str; 8] = [
        names::COUNTERS,
        names::EVENTS,
        names::CLIENTS,
        names::BLOCKS,
        tls::TLS_EVENTS,
        names::CONFIG,
        names::FWD_REPORTED,
        names::OVERRIDES,
    ];

    pub fn new(maps: MapSet, max_clients: u32) -> Result<Self> {
        let by_kind = KINDS
            .iter()
            .map(|&k| {
                let name = format!("api_guard_{}_total", k.name());
                let help = format!("{} to the API ports by the kernel's verdict", k.name());
                Ok((k, IntCounterVec::new(Opts::new(name, help), &["verdict"])?))
            })
            .collect::<Result<Vec<_>>>()?;
        let samples = IntCounter::new(
            "api_guard_samples_total",
            "Request heads sampled into the ring buffer",
        )?;
        let samples_lost = IntCounter::new(
            "api_guard_samples_lost_total",
            "Samples lost because the ring buffer was full",
        )?;
        let evicted = IntCounter::new(
            "api_guard_clients_evicted_total",
            "Clients evicted from the full client map (least recently seen first)",
        )?;
        let refused = IntCounter::new(
            "api_guard_clients_refused_total",
            "Packets passed without per-client limits because the full client map refused a new client",
        )?;
        let stream_events = STREAM_EVENTS
            .iter()
            .map(|&(e, name, help)| Ok((e, IntCounter::new(name, help)?)))
            .collect::<Result<Vec<_>>>()?;
        let tls_events = IntCounterVec::new(
            Opts::new(
                "api_guard_tls_events_total",
                "TLS plaintext events of the libssl uprobes: reads accounted, reads tied to their connection by the SSL* cache, reads whose connection is unknown (not counted), plaintext that could not be read, HTTP/2 connections (requests not parsed), over-limit verdicts sent to the packet path, writes tied to their connection",
            ),
            &["event"],
        )?;
        let tracked = IntGauge::new(
            "api_guard_tracked_clients",
            "Clients in the kernel's client map",
        )?;
        let blocked = IntGauge::new(
            "api_guard_blocked_clients",
            "Clients and networks blocked now",
        )?;
        let forwarded_over = IntGauge::new(
            "api_guard_forwarded_over_limit_clients",
            "Forwarded clients (--trusted-hops) over their limit now on pooled proxy connections: the forwarded blocklist's length",
        )?;
        let capacity = IntGaugeVec::new(
            Opts::new("api_guard_map_capacity", "Entries each map holds at most"),
            &["map"],
        )?;
        let mut descs = Vec::new();
        for (_, v) in &by_kind {
            descs.extend(v.desc().into_iter().cloned());
        }
        for c in [&samples, &samples_lost, &evicted, &refused]
            .into_iter()
            .chain(stream_events.iter().map(|(_, c)| c))
        {
            descs.extend(c.desc().into_iter().cloned());
        }
        for g in [&tracked, &blocked, &forwarded_over] {
            descs.extend(g.desc().into_iter().cloned());
        }
        descs.extend(capacity.desc().into_iter().cloned());
        descs.extend(tls_events.desc().into_iter().cloned());
        Ok(Self {
            maps: Mutex::new(maps),
            max_clients,
            by_kind,
            samples,
            samples_lost,
            evicted,
            refused,
            stream_events,
            tls_events,
            tracked,
            blocked,
            forwarded_over,
            capacity,
            descs,
        })
    }

    fn refresh(&self, dp: &MapSet) -> Result<()> {
        let counters = dp.counters()?;
        for (kind, vec) in &self.by_kind {
            vec.reset();
            for v in VERDICTS {
                vec.with_label_values(&[v.name()])
                    .inc_by(counters.get(*kind, v));
            }
        }
        set_counter(&self.samples, dp.event(Event::Sampled)?);
        set_counter(&self.samples_lost, dp.event(Event::SamplesLost)?);
        set_counter(&self.refused, dp.event(Event::ClientsRefused)?);
        for (e, c) in &self.stream_events {
            set_counter(c, dp.event(*e)?);
        }
        let tls = dp.tls_events()?;
        for (e, label) in TLS_EVENTS {
            set_counter(
                &self.tls_events.with_label_values(&[label]),
                tls[e as usize],
            );
        }
        let now = monotonic_ns();
        // Counted as the map is walked: nothing of a million clients is kept.
        let (tracked, blocked_clients) = dp.client_counts(now)?;
        set_counter(
            &self.evicted,
            dp.event(Event::ClientsCreated)?
                .saturating_sub(tracked as u64),
        );
        self.tracked.set(tracked as i64);
        let blocked_nets = dp
            .blocks()?
            .iter()
            .filter(|(_, _, until)| *until > now)
            .count();
        self.blocked.set((blocked_clients + blocked_nets) as i64);
        self.forwarded_over
            .set(dp.forwarded_over_limit(now)?.len() as i64);
        self.capacity
            .with_label_values(&["clients"])
            .set(i64::from(self.max_clients));
        for map in ["allow", "deny", "limits", "blocks"] {
            self.capacity
                .with_label_values(&[map])
                .set(i64::from(NETWORK_SLOTS));
        }
        Ok(())
    }
}

/// Moves a counter up to `value`, never down: a derived count (evictions are
/// created − tracked, read in two steps) may dip for a moment, and a dip would
/// read as a counter reset to Prometheus.
fn set_counter(c: &IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(dp) = self.maps.lock() else {
            return Vec::new();
        };
        if let Err(e) = self.refresh(&dp) {
            warn!("cannot read the kernel's counters: {e:#}");
            return Vec::new();
        }
        let mut out = Vec::new();
        for (_, v) in &self.by_kind {
            out.extend(v.collect());
        }
        for c in [
            &self.samples,
            &self.samples_lost,
            &self.evicted,
            &self.refused,
        ]
        .into_iter()
        .chain(self.stream_events.iter().map(|(_, c)| c))
        {
            out.extend(c.collect());
        }
        for g in [&self.tracked, &self.blocked, &self.forwarded_over] {
            out.extend(g.collect());
        }
        out.extend(self.capacity.collect());
        out.extend(self.tls_events.collect());
        out
    }
}
