//! Object-ID enumeration (OWASP API1, BOLA): per (client, route template), the
//! distinct values of the route's object parameter (its last) in a sliding
//! window, with how they were answered and whether they walk a sequence.
//!
//! A finding when, in the window, a client asked for at least the threshold of
//! distinct IDs on one route and
//! - at least half the answers were 403 or 404 (it asks for what is not
//!   its own), or
//! - at least four times the threshold, most of them a step of at most
//!   [`STRIDE`] from the one before (it walks IDs, answered or not).
//!
//! A page loading its 50 items at once gets 200s and stays under the walk
//! rule's four times 40; paging with `?page=` has no object parameter at all.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
};

use serde_json::json;

use super::{
    DetectConfig, Detector, DetectorName, EXACT_BOUND, Finding, ThresholdKey, denied, keep_sample,
    table::Table,
    window::{Counts, Distinct, slot_ns},
};
use crate::pipeline::answered::Answered;

/// IDs at most this far from the one before count as a sequential step.
pub const STRIDE: u64 = 16;

/// Counters per key: new distinct IDs, sequential steps among them, 2xx
/// answers, 403/404 answers, all answers.
const NEW: usize = 0;
const SEQ: usize = 1;
const OK: usize = 2;
const DENIED: usize = 3;
const ALL: usize = 4;

#[derive(Default)]
struct State {
    ids: Distinct,
    counts: Counts<5>,
    last_numeric: Option<u64>,
    samples: VecDeque<String>,
    /// No new finding for this key before this time (one per window).
    quiet_until: u64,
}

pub struct Bola {
    cfg: DetectConfig,
    table: Table<(IpAddr, String), State>,
    ids: RandomState,
}

impl Bola {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            table: Table::new(cfg.max_keys, cfg.max_keys_per_client),
            cfg,
            ids: RandomState::new(),
        }
    }

    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// An ID as a number: itself when numeric, else a keyed hash (top bit set,
    /// so the two never meet).
    fn id_value(&self, id: &str) -> (u64, Option<u64>) {
        match id.parse::<u64>() {
            Ok(n) if n < 1 << 63 && id.bytes().all(|b| b.is_ascii_digit()) => (n, Some(n)),
            _ => (self.ids.hash_one(id) | 1 << 63, None),
        }
    }
}

/// A sample ID fit for a log: numbers and UUIDs as they are; anything else
/// (it may be a token) only by its length.
fn sample(id: &str) -> String {
    let uuidish = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if (id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())) || uuidish {
        id.to_string()
    } else {
        format!("<{} bytes>", id.len())
    }
}

impl Detector for Bola {
    fn name(&self) -> DetectorName {
        DetectorName::Bola
    }

    fn answered(&mut self, seen: &Answered<'_>, now_ns: u64) -> Option<Finding> {
        let (_, id) = seen.route.params.iter().rev().find(|(n, _)| n != "rest")?;
        let (value, numeric) = self.id_value(id);
        let window = self.cfg.window_ns();
        let slot = slot_ns(window);
        let template = &seen.route.template;
        let threshold = self.cfg.thresholds.get(ThresholdKey::Bola, Some(template));
        let st = self.table.touch(&(seen.bucket, template.clone()));
        st.counts.add(ALL, now_ns, slot);
        if (200..300).contains(&seen.status) {
            st.counts.add(OK, now_ns, slot);
        } else if denied(seen.status) {
            st.counts.add(DENIED, now_ns, slot);
        }
        if !st.ids.insert(value, now_ns, window, EXACT_BOUND) {
            return None;
        }
        st.counts.add(NEW, now_ns, slot);
        if let (Some(n), Some(last)) = (numeric, st.last_numeric)
            && n.abs_diff(last) <= STRIDE
        {
            st.counts.add(SEQ, now_ns, slot);
        }
        if numeric.is_some() {
            st.last_numeric = numeric;
        }
        keep_sample(&mut st.samples, sample(id));
        if now_ns < st.quiet_until {
            return None;
        }
        let distinct = st.ids.count(now_ns, window);
        if distinct < u64::from(threshold) {
            return None;
        }
        let c = st.counts.sum(now_ns, slot);
        let answered = f64::from(c[ALL].max(1));
        let denied_share = f64::from(c[DENIED]) / answered;
        let walk = f64::from(c[SEQ]) / f64::from(c[NEW].saturating_sub(1).max(1));
        let by_denials = denied_share >= 0.5;
        let by_walk = distinct >= 4 * u64::from(threshold) && walk >= 0.8;
        if !by_denials && !by_walk {
            return None;
        }
        st.quiet_until = now_ns.saturating_add(window);
        let reason = if by_denials {
            format!(
                "{distinct} distinct IDs of {template} in {}s, {:.0}% answered 403/404",
                window / 1_000_000_000,
                denied_share * 100.0
            )
        } else {
            format!(
                "walked {distinct} IDs of {template} in {}s, {:.0}% in sequence",
                window / 1_000_000_000,
                walk * 100.0
            )
        };
        Some(Finding {
            detector: DetectorName::Bola,
            client: seen.bucket,
            route: Some(template.clone()),
            reason,
            score: distinct as f64 / f64::from(threshold) * denied_share.max(walk),
            evidence: json!({
                "distinct_ids": distinct,
                "approximate": st.ids.is_approximate(),
                "threshold": threshold,
                "answers": c[ALL],
                "ok_2xx": c[OK],
                "denied_403_404": c[DENIED],
                "sequential_share": (walk * 100.0).round() / 100.0,
                "sample_ids": st.samples.iter().collect::<Vec<_>>(),
                "window_secs": window / 1_000_000_000,
            }),
        })
    }

    fn prune(&mut self, _now: std::time::Instant, now_ns: u64) {
        let window = self.cfg.window_ns();
        let slot = slot_ns(window);
        self.table.retain(|_, st| {
            st.ids.expire(now_ns, window);
            !(st.ids.is_empty() && st.counts.is_empty(now_ns, slot) && now_ns >= st.quiet_until)
        });
    }

    fn evicted(&self) -> u64 {
        self.table.evicted
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::{http::AuthScheme, routes::Route};

    pub(crate) const S: u64 = 1_000_000_000;

    pub(crate) fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i))
    }

    pub(crate) fn answer<'a>(client: IpAddr, route: &'a Route, status: u16) -> Answered<'a> {
        Answered {
            client,
            bucket: client,
            method: "GET",
            path: "/",
            route,
            status,
            duration_ns: 1,
            auth: AuthScheme::None,
            credential: None,
            verdict: 0,
        }
    }

    fn orders(id: u64) -> Route {
        Route {
            template: "/v1/orders/{id}".into(),
            params: vec![("id".into(), id.to_string())],
        }
    }

    /// Feeds `ids` at `every_ns` from `start`; the first finding's index.
    fn run(
        d: &mut Bola,
        c: IpAddr,
        ids: &[(u64, u16)],
        start: u64,
        every_ns: u64,
    ) -> Option<usize> {
        let mut first = None;
        for (i, (id, status)) in ids.iter().enumerate() {
            let r = orders(*id);
            if d.answered(&answer(c, &r, *status), start + i as u64 * every_ns)
                .is_some()
                && first.is_none()
            {
                first = Some(i);
            }
        }
        first
    }

    #[test]
    fn an_enumerator_denied_most_ids_is_found_at_the_threshold() {
        let mut d = Bola::new(DetectConfig::default());
        // Owns every tenth ID.
        let walk: Vec<(u64, u16)> = (1000..1300)
            .map(|i| (i, if i % 10 == 0 { 200 } else { 403 }))
            .collect();
        assert_eq!(run(&mut d, ip(1), &walk, S, S / 100), Some(39));
    }

    #[test]
    fn a_slow_enumerator_is_found_within_the_long_window() {
        let mut d = Bola::new(DetectConfig::default());
        // One ID every 10 s: 40 take 400 s, inside the 600 s window.
        let walk: Vec<(u64, u16)> = (1..100).map(|i| (i, 404)).collect();
        assert_eq!(run(&mut d, ip(1), &walk, S, 10 * S), Some(39));
        // Slower than the window: never 40 in it.
        let mut d = Bola::new(DetectConfig::default());
        assert_eq!(run(&mut d, ip(1), &walk, S, 20 * S), None);
    }

    #[test]
    fn a_page_loading_fifty_items_is_not_a_finding_but_a_long_walk_is() {
        let mut d = Bola::new(DetectConfig::default());
        let spa: Vec<(u64, u16)> = (500..550).map(|i| (i, 200)).collect();
        assert_eq!(run(&mut d, ip(1), &spa, S, 1), None);
        // Answered 200 throughout, a walk of 160 sequential IDs is.
        let walk: Vec<(u64, u16)> = (1..400).map(|i| (i, 200)).collect();
        let mut d = Bola::new(DetectConfig::default());
        // Past the exact bound the count is approximate: about the 160th.
        let at = run(&mut d, ip(2), &walk, S, S / 10).unwrap();
        assert!((140..=185).contains(&at), "{at}");
        // The same number of random IDs, answered 200: not a walk.
        let mut d = Bola::new(DetectConfig::default());
        let random: Vec<(u64, u16)> = (1..400u64)
            .map(|i| (crate::detect::hll::mix(i) >> 40, 200))
            .collect();
        assert_eq!(run(&mut d, ip(3), &random, S, S / 10), None);
    }

    #[test]
    fn repeats_and_other_clients_do_not_add_up() {
        let mut d = Bola::new(DetectConfig::default());
        for i in 0..1000u64 {
            // One ID again and again, and 39 clients with one ID each.
            let r = orders(7);
            assert!(d.answered(&answer(ip(1), &r, 404), S + i).is_none());
            let r = orders(i % 39);
            assert!(
                d.answered(&answer(ip(100 + (i % 39) as u32), &r, 404), S + i)
                    .is_none()
            );
        }
    }

    #[test]
    fn one_finding_per_window_and_the_evidence_holds_no_token() {
        let mut d = Bola::new(DetectConfig::default());
        let mut found = Vec::new();
        for i in 0..200u64 {
            let r = Route {
                template: "/files/{token}".into(),
                params: vec![("token".into(), format!("secret-token-value-{i:08}-xyz"))],
            };
            found.extend(d.answered(&answer(ip(1), &r, 404), S + i));
        }
        assert_eq!(found.len(), 1);
        let text = found[0].evidence.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("bytes>"), "{text}");
    }

    #[test]
    fn state_stays_within_its_caps() {
        let cfg = DetectConfig {
            max_keys: 100,
            max_keys_per_client: 3,
            ..Default::default()
        };
        let mut d = Bola::new(cfg);
        for i in 0..10_000u32 {
            let r = Route {
                template: format!("/r{}/{{id}}", i % 7),
                params: vec![("id".into(), i.to_string())],
            };
            d.answered(&answer(ip(i % 500), &r, 404), S);
            assert!(d.tracked() <= 100);
        }
        assert!(d.evicted() > 0);
        d.prune(std::time::Instant::now(), 10_000 * S);
        assert_eq!(d.tracked(), 0);
    }
}
