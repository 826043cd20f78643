//! Where results go: the access log, the Prometheus metrics, and the report the
//! daemon prints (periodically and when it stops). Sinks read events, parsed
//! heads and kernel counters; they decide nothing.

pub mod access_log;
pub mod findings;
pub mod fleet;
pub mod forwarded;
pub mod metrics;
pub mod report;

use api_guard_common::counters::{VERDICTS, Verdict};

/// A verdict's label; "unknown" for a value this build does not know.
pub fn verdict_name(v: u8) -> &'static str {
    VERDICTS
        .iter()
        .find(|x| **x as u8 == v)
        .map_or("unknown", |v: &Verdict| v.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_labels_are_bounded() {
        assert_eq!(verdict_name(Verdict::RateLimited as u8), "rate_limited");
        assert_eq!(verdict_name(200), "unknown");
    }
}
