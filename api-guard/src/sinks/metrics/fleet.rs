//! The fleet sync's metrics (with `--fleet` only).

use anyhow::Result;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use super::Metrics;

/// Handles to the fleet's series, for the fleet task (they share the
/// registry's values; no lock with the scrapes beyond an atomic).
#[derive(Clone)]
pub struct FleetMetrics {
    /// 1 while the fleet's Redis answers, 0 while the local fallback applies.
    pub up: IntGauge,
    pub sync_seconds: Histogram,
    pub sync_errors: IntCounter,
    /// Client counts sent to the fleet.
    pub clients_synced: IntCounter,
    /// Blocks written from the fleet's verdicts, by why (over_limit, remote).
    pub blocks_applied: IntCounterVec,
    /// This host's own blocks published to the fleet.
    pub blocks_published: IntCounter,
    /// Verdicts not applied: the fleet's share of the block list was full, or
    /// the entry was not a client or network.
    pub blocks_refused: IntCounter,
}

impl Metrics {
    /// Registers the fleet's series and returns handles to them.
    pub fn fleet(&self) -> Result<FleetMetrics> {
        let m = FleetMetrics {
            up: IntGauge::new(
                "api_guard_fleet_up",
                "1 while the fleet's Redis answers; 0 while each host enforces its fallback limit",
            )?,
            sync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "api_guard_fleet_sync_duration_seconds",
                    "Time of one fleet sync: the client map walk and the Redis round trip",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            sync_errors: IntCounter::new(
                "api_guard_fleet_sync_errors_total",
                "Fleet syncs that failed (Redis unreachable, slow or refusing)",
            )?,
            clients_synced: IntCounter::new(
                "api_guard_fleet_clients_synced_total",
                "Client request counts sent to the fleet",
            )?,
            blocks_applied: IntCounterVec::new(
                Opts::new(
                    "api_guard_fleet_blocks_applied_total",
                    "Blocks written from the fleet's verdicts: over_limit (a client over the fleet budget), remote (a block made on another host)",
                ),
                &["why"],
            )?,
            blocks_published: IntCounter::new(
                "api_guard_fleet_blocks_published_total",
                "Blocks made on this host (operators, detectors) published to the fleet",
            )?,
            blocks_refused: IntCounter::new(
                "api_guard_fleet_blocks_refused_total",
                "Fleet verdicts not applied: the fleet's quarter of the block list was full, or the entry was malformed",
            )?,
        };
        for why in ["over_limit", "remote"] {
            m.blocks_applied.with_label_values(&[why]);
        }
        self.registry.register(Box::new(m.up.clone()))?;
        self.registry.register(Box::new(m.sync_seconds.clone()))?;
        self.registry.register(Box::new(m.sync_errors.clone()))?;
        self.registry.register(Box::new(m.clients_synced.clone()))?;
        self.registry.register(Box::new(m.blocks_applied.clone()))?;
        self.registry
            .register(Box::new(m.blocks_published.clone()))?;
        self.registry.register(Box::new(m.blocks_refused.clone()))?;
        Ok(m)
    }
}
