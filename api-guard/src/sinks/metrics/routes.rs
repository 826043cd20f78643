//! Per-route RED metrics from joined samples, with OpenTelemetry's
//! semantic-convention names. Labels are bounded: methods (ten), routes (the
//! route cap plus `other`), status codes (a fixed list, the rest by class),
//! verdicts (a fixed set).

use anyhow::Result;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// OpenTelemetry's advised buckets for `http.server.request.duration` (seconds).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Status codes that keep their own label value; any other is its class (`4xx`).
const CODES: [u16; 21] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 409, 410, 422, 429, 500, 502,
    503, 504,
];

/// The bounded label value of a status code.
pub fn status_label(status: u16) -> String {
    if CODES.contains(&status) {
        status.to_string()
    } else {
        match status / 100 {
            1..=5 => format!("{}xx", status / 100),
            _ => "other".into(),
        }
    }
}

pub struct RouteMetrics {
    /// `http.server.request.duration`: from the request's arrival at ingress to
    /// the response's first byte at egress, for joined samples.
    pub duration: HistogramVec,
    /// Sampled requests per route and kernel verdict.
    pub requests: IntCounterVec,
    /// Joined samples per route whose response was a server error (5xx).
    pub errors: IntCounterVec,
    /// The join's outcomes: joined, timeout, evicted, orphan, unpaired.
    pub joins: IntCounterVec,
    /// Paths that got the `other` route because the route cap was reached.
    pub routes_overflow: prometheus::IntCounter,
    /// Client buckets whose response classes were dropped (the table was full).
    pub classes_evicted: prometheus::IntCounter,
}

impl RouteMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests (sampled): request arrival to the response's first byte",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["http_request_method", "http_route", "http_response_status_code"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "api_guard_route_requests_total",
                "Sampled requests by route and the kernel's verdict",
            ),
            &["http_route", "verdict"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "api_guard_route_errors_total",
                "Sampled requests answered with a server error (5xx), by route",
            ),
            &["http_route"],
        )?;
        let joins = IntCounterVec::new(
            Opts::new(
                "api_guard_response_joins_total",
                "Sampled requests by how their response was found: joined, timeout, evicted (join full), unpaired (not numbered by the kernel), orphan (a response with no request waiting)",
            ),
            &["outcome"],
        )?;
        let routes_overflow = prometheus::IntCounter::new(
            "api_guard_routes_overflow_total",
            "Sampled requests given the `other` route because the route cap was reached",
        )?;
        let classes_evicted = prometheus::IntCounter::new(
            "api_guard_client_classes_evicted_total",
            "Client buckets whose per-client response classes (401/403/404/429/5xx) were dropped because the table was full (least recently answered first)",
        )?;
        registry.register(Box::new(classes_evicted.clone()))?;
        for o in ["joined", "timeout", "evicted", "unpaired", "orphan"] {
            joins.with_label_values(&[o]);
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(joins.clone()))?;
        registry.register(Box::new(routes_overflow.clone()))?;
        Ok(Self {
            duration,
            requests,
            errors,
            joins,
            routes_overflow,
            classes_evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_bounded() {
        let labels: std::collections::HashSet<_> = (0..1000).map(status_label).collect();
        assert!(labels.len() <= CODES.len() + 6);
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(999), "other");
    }
}
