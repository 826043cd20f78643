//! Prometheus metrics at `--metrics-addr`/metrics. Kernel counters are read from
//! the maps at scrape time (`kernel`); the pipeline's counters live here. Every
//! label takes values from a fixed set (verdicts, methods, schemes) except the
//! top-clients gauge (`top`), which holds at most `--top-clients` clients.
//! `serve` answers scrapes, a bounded number at a time.

mod fleet;
mod kernel;
mod responses;
mod routes;
mod serve;
mod top;

pub use fleet::FleetMetrics;
pub use kernel::KernelCollector;
pub use responses::ResponseCollector;
pub use routes::{RouteMetrics, status_label};
pub use serve::{SCRAPE_TIMEOUT, serve};
pub use top::{TopClients, top_k};

use std::collections::HashMap;

use anyhow::Result;
use api_guard_common::http::Method;
use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{kernel::MapSet, pipeline::http::AuthScheme};

pub struct Metrics {
    pub registry: Registry,
    /// Sampled requests by method and credential scheme.
    pub sampled: IntCounterVec,
    /// Samples that were not a complete request head, by kind.
    pub parse_errors: IntCounterVec,
    /// Sampled requests without a credential (with --require-auth).
    pub unauthenticated: IntCounter,
    /// Clients blocked by --require-auth block.
    pub auth_blocks: IntCounter,
    /// Findings not acted on: findings already held their share of the block list.
    pub auth_blocks_refused: IntCounter,
    /// Request rate of the busiest clients.
    pub top_clients: GaugeVec,
    /// Detectors' findings by detector and what was done (log, block).
    pub findings: IntCounterVec,
    /// Keys the detectors' tables pushed out (their caps reached), by detector.
    pub detect_evicted: IntCounterVec,
    /// `sampled` children by (method, scheme), resolved once: a label lookup per
    /// sample hashes and locks, and samples come by the hundred thousand.
    sampled_by: HashMap<(&'static str, &'static str), IntCounter>,
    /// Per-route RED metrics from joined samples.
    pub routes: RouteMetrics,
}

impl Metrics {
    /// `kernel_maps`: handles of the metrics' own to [`KernelCollector::MAPS`].
    pub fn new(kernel_maps: MapSet, max_clients: u32) -> Result<Self> {
        let registry = Registry::new();
        let sampled = IntCounterVec::new(
            Opts::new(
                "api_guard_sampled_requests_total",
                "Sampled request starts by method and credential scheme",
            ),
            &["method", "auth"],
        )?;
        let parse_errors = IntCounterVec::new(
            Opts::new(
                "api_guard_parse_errors_total",
                "Samples that were not a complete HTTP/1.x request head",
            ),
            &["kind"],
        )?;
        let unauthenticated = IntCounter::new(
            "api_guard_unauthenticated_requests_total",
            "Sampled requests without a credential header (with --require-auth)",
        )?;
        let auth_blocks = IntCounter::new(
            "api_guard_auth_blocks_total",
            "Clients blocked for requests without credentials",
        )?;
        let auth_blocks_refused = IntCounter::new(
            "api_guard_auth_blocks_refused_total",
            "Clients not blocked for missing credentials because findings already held half the block list (the rest is the operators')",
        )?;
        let top_clients = GaugeVec::new(
            Opts::new(
                "api_guard_top_client_requests_per_second",
                "Request rate of the busiest clients",
            ),
            &["client"],
        )?;
        let findings = IntCounterVec::new(
            Opts::new(
                "api_guard_findings_total",
                "Detectors' findings by detector (auth, bola, stuffing, probing; forwarded: a forwarded client over its limit on a pooled proxy connection) and action (log: reported; block: the client blocked; report: a forwarded finding, let through and listed for the proxy)",
            ),
            &["detector", "action"],
        )?;
        let detect_evicted = IntCounterVec::new(
            Opts::new(
                "api_guard_detect_evicted_total",
                "Keys (client, route) the detectors' bounded tables pushed out, by detector",
            ),
            &["detector"],
        )?;
        for detector in ["auth", "bola", "stuffing", "probing"] {
            detect_evicted.with_label_values(&[detector]);
            for action in ["log", "block"] {
                findings.with_label_values(&[detector, action]);
            }
        }
        let build_info = IntGaugeVec::new(
            Opts::new("api_guard_build_info", "api-guard's version"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every series a dashboard expects exists from the start, at zero.
        for kind in ["truncated", "not_http"] {
            parse_errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(sampled.clone()))?;
        registry.register(Box::new(parse_errors.clone()))?;
        registry.register(Box::new(unauthenticated.clone()))?;
        registry.register(Box::new(auth_blocks.clone()))?;
        registry.register(Box::new(auth_blocks_refused.clone()))?;
        registry.register(Box::new(top_clients.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(detect_evicted.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(KernelCollector::new(kernel_maps, max_clients)?))?;
        let methods = Method::ALL.iter().map(|m| m.as_str()).chain(["OTHER"]);
        let sampled_by = methods
            .flat_map(|m| AuthScheme::ALL.iter().map(move |a| (m, a.as_str())))
            .map(|(m, a)| ((m, a), sampled.with_label_values(&[m, a])))
            .collect();
        let routes = RouteMetrics::new(&registry)?;
        Ok(Self {
            routes,
            sampled_by,
            registry,
            sampled,
            parse_errors,
            unauthenticated,
            auth_blocks,
            auth_blocks_refused,
            top_clients,
            findings,
            detect_evicted,
        })
    }

    /// Counts a sampled request; `method` is a bounded label (`pipeline::method_label`).
    pub fn count_sampled(&self, method: &'static str, auth: AuthScheme) {
        match self.sampled_by.get(&(method, auth.as_str())) {
            Some(c) => c.inc(),
            None => self
                .sampled
                .with_label_values(&[method, auth.as_str()])
                .inc(),
        }
    }

    /// Adds the kernel's response counters, read through `maps`
    /// ([`ResponseCollector::MAPS`]).
    pub fn add_responses(&self, maps: MapSet) -> Result<()> {
        self.registry
            .register(Box::new(ResponseCollector::new(maps)?))?;
        Ok(())
    }

    pub fn render(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}
