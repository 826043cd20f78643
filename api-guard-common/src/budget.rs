//! The kernel's per-second sample budget (`--sample-budget`): a token bucket
//! over every CPU, so log volume and daemon CPU stay bounded at any load.
//! Samples over it are counted (`ResponseCount::OverBudget`); requests and
//! responses are counted in the kernel whatever the sampling.

use crate::config::Limit;

/// The `SAMPLE_BUDGET` map's one entry: the daemon writes `limit` (no limit
/// set: no budget); the kernel keeps `tat`, the bucket's clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleBudget {
    pub tat: u64,
    pub limit: Limit,
}

/// Samples a second by default.
pub const DEFAULT_SAMPLE_BUDGET: u32 = 10_000;

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` u64 fields with no padding.
unsafe impl aya::Pod for SampleBudget {}
