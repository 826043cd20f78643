//! Credential stuffing and brute force (OWASP API2): per (client, route), the
//! 401 answers in the window (and 403s on routes without path parameters,
//! such as a login route: a 403 on an object is the BOLA detector's); and per
//! client, the distinct credentials it sent (keyed fingerprints from the
//! pipeline, never the credentials) with how many failed.
//!
//! A finding when, in the window, a client
//! - got at least the `stuffing` threshold of failures on one route, at least
//!   half its answers there, or
//! - sent at least the `credentials` threshold of distinct credentials, at
//!   least half of its answers failures (a gateway with many users that log
//!   in fine is not a finding).

use std::net::IpAddr;

use serde_json::json;

use super::{
    DetectConfig, Detector, DetectorName, EXACT_BOUND, Finding, ThresholdKey,
    table::Table,
    window::{Counts, Distinct, slot_ns},
};
use crate::pipeline::answered::Answered;

const FAILED: usize = 0;
const ALL: usize = 1;

#[derive(Default)]
struct RouteState {
    counts: Counts<2>,
    quiet_until: u64,
}

#[derive(Default)]
struct ClientState {
    credentials: Distinct,
    counts: Counts<2>,
    quiet_until: u64,
}

pub struct Stuffing {
    cfg: DetectConfig,
    routes: Table<(IpAddr, String), RouteState>,
    clients: Table<IpAddr, ClientState>,
}

impl Stuffing {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            routes: Table::new(cfg.max_keys, cfg.max_keys_per_client),
            clients: Table::new(cfg.max_keys, 1),
            cfg,
        }
    }

    pub fn tracked(&self) -> usize {
        self.routes.len() + self.clients.len()
    }

    fn route_finding(&mut self, seen: &Answered<'_>, failed: bool, now_ns: u64) -> Option<Finding> {
        let window = self.cfg.window_ns();
        let slot = slot_ns(window);
        let template = &seen.route.template;
        let threshold = self
            .cfg
            .thresholds
            .get(ThresholdKey::Stuffing, Some(template));
        let st = self.routes.touch(&(seen.bucket, template.clone()));
        st.counts.add(ALL, now_ns, slot);
        if !failed {
            return None;
        }
        st.counts.add(FAILED, now_ns, slot);
        let c = st.counts.sum(now_ns, slot);
        if now_ns < st.quiet_until || c[FAILED] < threshold || 2 * c[FAILED] < c[ALL] {
            return None;
        }
        st.quiet_until = now_ns.saturating_add(window);
        Some(Finding {
            detector: DetectorName::Stuffing,
            client: seen.bucket,
            route: Some(template.clone()),
            reason: format!(
                "{} failed authentications (401/403) on {template} in {}s",
                c[FAILED],
                window / 1_000_000_000
            ),
            score: f64::from(c[FAILED]) / f64::from(threshold),
            evidence: json!({
                "failures": c[FAILED],
                "answers": c[ALL],
                "threshold": threshold,
                "window_secs": window / 1_000_000_000,
            }),
        })
    }

    fn credential_finding(
        &mut self,
        seen: &Answered<'_>,
        failed: bool,
        now_ns: u64,
    ) -> Option<Finding> {
        let window = self.cfg.window_ns();
        let slot = slot_ns(window);
        let threshold = self.cfg.thresholds.get(ThresholdKey::Credentials, None);
        let st = self.clients.touch(&seen.bucket);
        st.counts.add(ALL, now_ns, slot);
        if failed {
            st.counts.add(FAILED, now_ns, slot);
        }
        let fingerprint = seen.credential?;
        if !st
            .credentials
            .insert(fingerprint, now_ns, window, EXACT_BOUND)
        {
            return None;
        }
        let distinct = st.credentials.count(now_ns, window);
        let c = st.counts.sum(now_ns, slot);
        if now_ns < st.quiet_until || distinct < u64::from(threshold) || 2 * c[FAILED] < c[ALL] {
            return None;
        }
        st.quiet_until = now_ns.saturating_add(window);
        Some(Finding {
            detector: DetectorName::Stuffing,
            client: seen.bucket,
            route: Some(seen.route.template.clone()),
            reason: format!(
                "{distinct} distinct credentials from one client in {}s, {} of {} answers failed",
                window / 1_000_000_000,
                c[FAILED],
                c[ALL]
            ),
            score: distinct as f64 / f64::from(threshold),
            evidence: json!({
                "distinct_credentials": distinct,
                "approximate": st.credentials.is_approximate(),
                "failures": c[FAILED],
                "answers": c[ALL],
                "threshold": threshold,
                "window_secs": window / 1_000_000_000,
            }),
        })
    }
}

impl Detector for Stuffing {
    fn name(&self) -> DetectorName {
        DetectorName::Stuffing
    }

    fn answered(&mut self, seen: &Answered<'_>, now_ns: u64) -> Option<Finding> {
        let failed = seen.status == 401 || (seen.status == 403 && seen.route.params.is_empty());
        let by_route = self.route_finding(seen, failed, now_ns);
        let by_credentials = self.credential_finding(seen, failed, now_ns);
        by_route.or(by_credentials)
    }

    fn prune(&mut self, _now: std::time::Instant, now_ns: u64) {
        let window = self.cfg.window_ns();
        let slot = slot_ns(window);
        self.routes
            .retain(|_, st| !st.counts.is_empty(now_ns, slot) || now_ns < st.quiet_until);
        self.clients.retain(|_, st| {
            st.credentials.expire(now_ns, window);
            !(st.credentials.is_empty() && st.counts.is_empty(now_ns, slot))
                || now_ns < st.quiet_until
        });
    }

    fn evicted(&self) -> u64 {
        self.routes.evicted + self.clients.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::bola::tests::{S, answer, ip};
    use crate::pipeline::routes::Route;

    fn login() -> Route {
        Route {
            template: "/login".into(),
            params: vec![],
        }
    }

    #[test]
    fn a_burst_of_401s_on_a_route_is_found_at_the_threshold() {
        let mut d = Stuffing::new(DetectConfig::default());
        let r = login();
        let found: Vec<usize> = (0..100)
            .filter(|i| d.answered(&answer(ip(1), &r, 401), S + *i as u64).is_some())
            .collect();
        // Once per window.
        assert_eq!(found, [19]);
    }

    #[test]
    fn a_user_mistyping_twice_then_logging_in_is_not() {
        let mut d = Stuffing::new(DetectConfig::default());
        let r = login();
        for i in 0..1000u64 {
            // One failure in three: under half.
            let status = if i % 3 == 0 { 401 } else { 200 };
            assert!(
                d.answered(&answer(ip(1), &r, status), S + i).is_none(),
                "{i}"
            );
        }
    }

    #[test]
    fn many_distinct_failing_credentials_are_found_and_a_busy_gateway_is_not() {
        let mut d = Stuffing::new(DetectConfig::default());
        let r = Route {
            template: "/v1/me".into(),
            params: vec![("x".into(), "y".into())],
        };
        let mut first = None;
        for i in 0..50u64 {
            let mut a = answer(ip(1), &r, 401);
            a.credential = Some(1000 + i);
            if d.answered(&a, S + i).is_some() && first.is_none() {
                first = Some(i);
            }
        }
        assert_eq!(first, Some(9));
        // Fifty users behind one address, all let in.
        let mut d = Stuffing::new(DetectConfig::default());
        for i in 0..50u64 {
            let mut a = answer(ip(2), &r, 200);
            a.credential = Some(i);
            assert!(d.answered(&a, S + i).is_none());
        }
    }

    #[test]
    fn forbidden_objects_are_not_failed_logins() {
        let mut d = Stuffing::new(DetectConfig::default());
        for i in 0..100u64 {
            let r = Route {
                template: "/v1/orders/{id}".into(),
                params: vec![("id".into(), i.to_string())],
            };
            assert!(d.answered(&answer(ip(1), &r, 403), S + i).is_none());
        }
        d.prune(std::time::Instant::now(), 10_000 * S);
        assert_eq!(d.tracked(), 0);
    }
}
