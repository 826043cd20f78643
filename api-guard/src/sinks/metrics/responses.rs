//! The kernel's response counters (`RESPONSES`: every response on a watched
//! port, whatever the sampling), read when Prometheus scrapes, through a map
//! handle of their own.

use std::sync::Mutex;

use anyhow::Result;
use api_guard_common::{exchange::ResponseCount as C, maps as names};
use prometheus::{
    IntCounter, IntCounterVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tracing::warn;

use crate::kernel::{KernelMaps, MapSet};

const CLASSES: [C; 5] = [
    C::Class1xx,
    C::Class2xx,
    C::Class3xx,
    C::Class4xx,
    C::Class5xx,
];
const WATCHED: [C; 4] = [C::Status401, C::Status403, C::Status404, C::Status429];
const PAIRING: [C; 3] = [C::Paired, C::Unseen, C::Overflow];
const RECORDS: [C; 2] = [C::Recorded, C::RecordsLost];

/// Single counters: (slot, name, help).
const SINGLES: [(C, &str, &str); 4] = [
    (
        C::Interim,
        "api_guard_interim_responses_total",
        "Interim (1xx but 101) responses on the API ports: they answer no request",
    ),
    (
        C::FifoFull,
        "api_guard_response_fifo_full_total",
        "Requests that found their connection's pairing FIFO full (their responses are counted unpaired)",
    ),
    (
        C::Lost,
        "api_guard_response_streams_lost_total",
        "Response streams that could not be framed (a gap, or not HTTP/1): their later responses are not seen",
    ),
    (
        C::OverBudget,
        "api_guard_samples_over_budget_total",
        "Request samples not taken because the second's --sample-budget was spent",
    ),
];

pub struct ResponseCollector {
    maps: Mutex<MapSet>,
    classes: IntCounterVec,
    watched: IntCounterVec,
    pairing: IntCounterVec,
    records: IntCounterVec,
    singles: Vec<(C, IntCounter)>,
    descs: Vec<Desc>,
}

impl ResponseCollector {
    /// The maps a scrape reads.
    pub const MAPS: [&'static str; 1] = [names::RESPONSES];

    pub fn new(maps: MapSet) -> Result<Self> {
        let classes = IntCounterVec::new(
            Opts::new(
                "api_guard_responses_total",
                "Final responses on the API ports by status class, counted in the kernel (every response, whatever the sampling)",
            ),
            &["class"],
        )?;
        let watched = IntCounterVec::new(
            Opts::new(
                "api_guard_responses_watched_status_total",
                "Responses with the statuses the detectors watch (401, 403, 404, 429), counted in the kernel",
            ),
            &["status"],
        )?;
        let pairing = IntCounterVec::new(
            Opts::new(
                "api_guard_response_pairing_total",
                "Final responses by how they were paired with their requests: paired, unseen (request not counted exactly), overflow (FIFO full)",
            ),
            &["outcome"],
        )?;
        let records = IntCounterVec::new(
            Opts::new(
                "api_guard_response_records_total",
                "Response records for sampled requests, written to the ring or lost (ring full)",
            ),
            &["outcome"],
        )?;
        let singles = SINGLES
            .iter()
            .map(|&(c, name, help)| Ok((c, IntCounter::new(name, help)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut descs = Vec::new();
        for v in [&classes, &watched, &pairing, &records] {
            descs.extend(v.desc().into_iter().cloned());
        }
        for (_, c) in &singles {
            descs.extend(c.desc().into_iter().cloned());
        }
        Ok(Self {
            maps: Mutex::new(maps),
            classes,
            watched,
            pairing,
            records,
            singles,
            descs,
        })
    }

    fn refresh(&self, maps: &MapSet) -> Result<()> {
        let block = maps.responses()?;
        for (vec, slots) in [
            (&self.classes, &CLASSES[..]),
            (&self.watched, &WATCHED[..]),
            (&self.pairing, &PAIRING[..]),
            (&self.records, &RECORDS[..]),
        ] {
            for &c in slots {
                set_counter(&vec.with_label_values(&[c.name()]), block[c as usize]);
            }
        }
        for (c, counter) in &self.singles {
            set_counter(counter, block[*c as usize]);
        }
        Ok(())
    }
}

/// Moves a counter up to `value`, never down.
fn set_counter(c: &IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

impl Collector for ResponseCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(maps) = self.maps.lock() else {
            return Vec::new();
        };
        if let Err(e) = self.refresh(&maps) {
            warn!("cannot read the kernel's response counters: {e:#}");
            return Vec::new();
        }
        let mut out = Vec::new();
        for v in [&self.classes, &self.watched, &self.pairing, &self.records] {
            out.extend(v.collect());
        }
        for (_, c) in &self.singles {
            out.extend(c.collect());
        }
        out
    }
}
