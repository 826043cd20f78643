//! Probing (OWASP API9, improper inventory: looking for endpoints that should
//! not be there): per client, the distinct paths answered 404 in the window. A
//! finding at the `probing` threshold. A client retrying one missing path
//! counts one. A 404 for an object of a known route (its last parameter an
//! identifier: `{id}`, `{uuid}`, `{hex}` or an operator's `{name}`) is an
//! object that does not exist, the BOLA detector's; a path whose segments the
//! route stage had to generalise (`{param}`, `{token}`, `{rest}`) still
//! counts here.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
};

use serde_json::json;

use super::{
    DetectConfig, Detector, DetectorName, EXACT_BOUND, Finding, ThresholdKey, keep_sample,
    table::Table,
    window::{Counts, Distinct},
};
use crate::pipeline::answered::Answered;

#[derive(Default)]
struct State {
    paths: Distinct,
    /// 404 answers, and all answers.
    counts: Counts<2>,
    /// Route templates of the latest missing paths (a template, not the path:
    /// a path may carry a token).
    samples: VecDeque<String>,
    quiet_until: u64,
}

pub struct Probing {
    cfg: DetectConfig,
    clients: Table<IpAddr, State>,
    paths: RandomState,
}

impl Probing {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            clients: Table::new(cfg.max_keys, 1),
            cfg,
            paths: RandomState::new(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// Whether the request named an object of a known route.
fn names_an_object(seen: &Answered<'_>) -> bool {
    seen.route
        .params
        .last()
        .is_some_and(|(name, _)| !matches!(name.as_str(), "param" | "token" | "rest"))
}

impl Detector for Probing {
    fn name(&self) -> DetectorName {
        DetectorName::Probing
    }

    fn answered(&mut self, seen: &Answered<'_>, now_ns: u64) -> Option<Finding> {
        let window = self.cfg.window_ns();
        let slot = super::window::slot_ns(window);
        let threshold = self.cfg.thresholds.get(ThresholdKey::Probing, None);
        let path = self.paths.hash_one(seen.path);
        let st = self.clients.touch(&seen.bucket);
        st.counts.add(1, now_ns, slot);
        if seen.status != 404 || names_an_object(seen) {
            return None;
        }
        st.counts.add(0, now_ns, slot);
        if !st.paths.insert(path, now_ns, window, EXACT_BOUND) {
            return None;
        }
        if !st.samples.contains(&seen.route.template) {
            keep_sample(&mut st.samples, seen.route.template.clone());
        }
        let distinct = st.paths.count(now_ns, window);
        if now_ns < st.quiet_until || distinct < u64::from(threshold) {
            return None;
        }
        st.quiet_until = now_ns.saturating_add(window);
        let c = st.counts.sum(now_ns, slot);
        Some(Finding {
            detector: DetectorName::Probing,
            client: seen.bucket,
            route: None,
            reason: format!(
                "{distinct} distinct paths answered 404 in {}s",
                window / 1_000_000_000
            ),
            score: distinct as f64 / f64::from(threshold),
            evidence: json!({
                "distinct_404_paths": distinct,
                "approximate": st.paths.is_approximate(),
                "answers_404": c[0],
                "answers": c[1],
                "threshold": threshold,
                "sample_routes": st.samples.iter().collect::<Vec<_>>(),
                "window_secs": window / 1_000_000_000,
            }),
        })
    }

    fn prune(&mut self, _now: std::time::Instant, now_ns: u64) {
        let window = self.cfg.window_ns();
        let slot = super::window::slot_ns(window);
        self.clients.retain(|_, st| {
            st.paths.expire(now_ns, window);
            !(st.paths.is_empty() && st.counts.is_empty(now_ns, slot)) || now_ns < st.quiet_until
        });
    }

    fn evicted(&self) -> u64 {
        self.clients.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::bola::tests::{S, answer, ip};
    use crate::pipeline::routes::Route;

    #[test]
    fn distinct_missing_paths_are_found_and_one_retried_path_is_not() {
        let mut d = Probing::new(DetectConfig::default());
        let r = Route {
            template: "/x".into(),
            params: vec![],
        };
        let paths: Vec<String> = (0..30).map(|i| format!("/admin{i}")).collect();
        let mut found = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let mut a = answer(ip(1), &r, 404);
            a.path = p;
            if d.answered(&a, S + i as u64).is_some() {
                found.push(i);
            }
        }
        assert_eq!(found, [19]);
        for i in 0..1000u64 {
            let mut a = answer(ip(2), &r, 404);
            a.path = "/favicon.ico";
            assert!(d.answered(&a, S + i).is_none());
        }
        // Missing objects of a route are the BOLA detector's.
        for i in 0..100u64 {
            let r = Route {
                template: "/v1/docs/{id}".into(),
                params: vec![("id".into(), i.to_string())],
            };
            let mut a = answer(ip(4), &r, 404);
            let p = format!("/v1/docs/{i}");
            a.path = &p;
            assert!(d.answered(&a, S + i).is_none());
        }
        // Generalised segments are not objects.
        let r = Route {
            template: "/{param}".into(),
            params: vec![("param".into(), "x".into())],
        };
        let mut hits = 0;
        for (i, p) in paths.iter().enumerate() {
            let mut a = answer(ip(5), &r, 404);
            a.path = p;
            hits += usize::from(d.answered(&a, S + i as u64).is_some());
        }
        assert_eq!(hits, 1);
        // 200s on many paths are not probing.
        for (i, p) in paths.iter().enumerate() {
            let mut a = answer(ip(3), &r, 200);
            a.path = p;
            assert!(d.answered(&a, S + i as u64).is_none());
        }
    }
}
