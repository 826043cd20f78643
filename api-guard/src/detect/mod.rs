//! Findings from events: each detector looks at what the pipeline made of one
//! event (a sampled request, or a request joined with its response) and may
//! report a finding: who, on which route, why, how sure (a score: 1 at the
//! threshold), and the evidence (counts and sample values, never a
//! credential). Detectors never touch the kernel: the caller decides, per
//! detector (`--detect NAME=off|log|block`), whether a finding is only
//! reported or also acted on through `enforce`.
//!
//! - `auth`: requests without credentials (`--require-auth block`);
//! - `bola`: object-ID enumeration (OWASP API1, Broken Object Level
//!   Authorization);
//! - `stuffing`: 401/403 bursts and many distinct credentials from one client
//!   (API2, Broken Authentication);
//! - `probing`: many distinct 404 paths (API9, Improper Inventory
//!   Management).
//!
//! All state is bounded ([`table::Table`]: per-client and global caps, least
//! recently used first out, counted) and windowed ([`window`]).

pub mod auth;
pub mod bola;
pub mod hll;
pub mod probing;
pub mod stuffing;
pub mod table;
pub mod window;

use std::{collections::HashMap, fmt, net::IpAddr, str::FromStr, time::Duration, time::Instant};

use crate::pipeline::{answered::Answered, http::RequestHead};

/// One request as the request-time detectors see it.
pub struct Observation<'a> {
    pub client: IpAddr,
    /// The client's bucket: its address, or its IPv6 prefix.
    pub bucket: IpAddr,
    /// The kernel's verdict on the packet (`counters::Verdict`).
    pub verdict: u8,
    pub head: &'a RequestHead<'a>,
    /// Whether it lacks a credential it should carry (see `auth`).
    pub missing_auth: bool,
}

/// The detectors, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DetectorName {
    Auth,
    Bola,
    Stuffing,
    Probing,
}

impl DetectorName {
    pub const ALL: [DetectorName; 4] = [
        DetectorName::Auth,
        DetectorName::Bola,
        DetectorName::Stuffing,
        DetectorName::Probing,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DetectorName::Auth => "auth",
            DetectorName::Bola => "bola",
            DetectorName::Stuffing => "stuffing",
            DetectorName::Probing => "probing",
        }
    }

    /// The OWASP API Security Top 10 (2023) risk it watches for.
    pub const fn owasp(self) -> &'static str {
        match self {
            DetectorName::Bola => "API1:2023",
            DetectorName::Auth | DetectorName::Stuffing => "API2:2023",
            DetectorName::Probing => "API9:2023",
        }
    }
}

impl fmt::Display for DetectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetectorName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        DetectorName::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown detector {s:?} (bola, stuffing, probing)"))
    }
}

/// What is done with a detector's findings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not run.
    Off,
    /// Logged and counted.
    Log,
    /// Logged, counted, and the client blocked for `--block-for`.
    Block,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Off => "off",
            Action::Log => "log",
            Action::Block => "block",
        }
    }
}

/// What a detector found.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub detector: DetectorName,
    /// The client's bucket (its address, or its IPv6 prefix).
    pub client: IpAddr,
    /// The route template, for findings about one route.
    pub route: Option<String>,
    pub reason: String,
    /// How far past its threshold: 1 at the threshold.
    pub score: f64,
    /// Counts and sample values (never a credential).
    pub evidence: serde_json::Value,
}

pub trait Detector: Send {
    fn name(&self) -> DetectorName;
    /// Looks at one sampled request; a finding when it calls for one.
    fn observe(&mut self, _seen: &Observation<'_>, _now: Instant) -> Option<Finding> {
        None
    }
    /// Looks at one request joined with its response (`now_ns`: the
    /// response's CLOCK_MONOTONIC time).
    fn answered(&mut self, _seen: &Answered<'_>, _now_ns: u64) -> Option<Finding> {
        None
    }
    /// Forgets what is too old to matter (called every second).
    fn prune(&mut self, _now: Instant, _now_ns: u64) {}
    /// Keys pushed out of its tables by their caps, since start.
    fn evicted(&self) -> u64 {
        0
    }
}

/// The thresholds `--detect-threshold` sets: `KEY=N` for every route, or
/// `KEY@ROUTE=N` for one route template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThresholdKey {
    /// Distinct object IDs of one route in the window (`bola`).
    Bola,
    /// 401/403 answers on one route in the window (`stuffing`).
    Stuffing,
    /// Distinct credentials from one client in the window (`credentials`).
    Credentials,
    /// Distinct 404 paths from one client in the window (`probing`).
    Probing,
}

impl ThresholdKey {
    const ALL: [ThresholdKey; 4] = [
        ThresholdKey::Bola,
        ThresholdKey::Stuffing,
        ThresholdKey::Credentials,
        ThresholdKey::Probing,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ThresholdKey::Bola => "bola",
            ThresholdKey::Stuffing => "stuffing",
            ThresholdKey::Credentials => "credentials",
            ThresholdKey::Probing => "probing",
        }
    }

    /// The default: above what a page load or a login typo makes.
    pub const fn default_value(self) -> u32 {
        match self {
            // A single-page app loading 50 items gets 200s, and the walk rule
            // needs four times this.
            ThresholdKey::Bola => 40,
            ThresholdKey::Stuffing => 20,
            ThresholdKey::Credentials => 10,
            ThresholdKey::Probing => 20,
        }
    }
}

/// One `--detect-threshold`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub key: ThresholdKey,
    pub route: Option<String>,
    pub value: u32,
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (lhs, n) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not KEY[@ROUTE]=N"))?;
        let (key, route) = match lhs.split_once('@') {
            Some((k, r)) => (k, Some(r)),
            None => (lhs, None),
        };
        let key = ThresholdKey::ALL
            .into_iter()
            .find(|k| k.name() == key.trim())
            .ok_or_else(|| {
                format!("unknown threshold {key:?} (bola, stuffing, credentials, probing)")
            })?;
        let route = match route {
            Some(r) if r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Some(r.to_string())
            }
            Some(r) => return Err(format!("route {r:?} must be a template starting with '/'")),
            None => None,
        };
        let value: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|v| *v >= 2)
            .ok_or_else(|| format!("threshold {n:?} must be a whole number of at least 2"))?;
        Ok(Threshold { key, route, value })
    }
}

/// The thresholds in force.
#[derive(Clone, Debug, Default)]
pub struct Thresholds {
    global: HashMap<ThresholdKey, u32>,
    per_route: HashMap<(ThresholdKey, String), u32>,
}

impl Thresholds {
    pub fn new(given: &[Threshold]) -> Self {
        let mut t = Self::default();
        for g in given {
            match &g.route {
                Some(r) => t.per_route.insert((g.key, r.clone()), g.value),
                None => t.global.insert(g.key, g.value),
            };
        }
        t
    }

    /// The threshold of `key` on `route`.
    pub fn get(&self, key: ThresholdKey, route: Option<&str>) -> u32 {
        route
            .and_then(|r| self.per_route.get(&(key, r.to_string())))
            .or_else(|| self.global.get(&key))
            .copied()
            .unwrap_or(key.default_value())
    }
}

/// What the answered-event detectors are given.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub window: Duration,
    pub thresholds: Thresholds,
    /// (client, route) keys tracked per detector at most.
    pub max_keys: usize,
    /// Keys one client may hold in one detector.
    pub max_keys_per_client: usize,
}

/// The default window: long enough that an enumerator pacing itself under a
/// rate limit still shows (40 IDs in 10 minutes is one every 15 s).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// Keys per detector, and per client in one detector.
pub const DEFAULT_MAX_KEYS: usize = 4_096;
pub const DEFAULT_MAX_KEYS_PER_CLIENT: usize = 64;
/// Values one key counts exactly; past it, approximately.
pub const EXACT_BOUND: usize = 64;
/// Sample values kept per key for a finding's evidence.
pub const SAMPLES: usize = 5;

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            thresholds: Thresholds::default(),
            max_keys: DEFAULT_MAX_KEYS,
            max_keys_per_client: DEFAULT_MAX_KEYS_PER_CLIENT,
        }
    }
}

impl DetectConfig {
    pub fn window_ns(&self) -> u64 {
        u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The answered-event detectors that are not `off`.
pub fn build(cfg: &DetectConfig, on: impl Fn(DetectorName) -> bool) -> Vec<Box<dyn Detector>> {
    let mut out: Vec<Box<dyn Detector>> = Vec::new();
    if on(DetectorName::Bola) {
        out.push(Box::new(bola::Bola::new(cfg.clone())));
    }
    if on(DetectorName::Stuffing) {
        out.push(Box::new(stuffing::Stuffing::new(cfg.clone())));
    }
    if on(DetectorName::Probing) {
        out.push(Box::new(probing::Probing::new(cfg.clone())));
    }
    out
}

/// Pushes `value` into a bounded list of the latest samples.
fn keep_sample(samples: &mut std::collections::VecDeque<String>, value: String) {
    if samples.len() >= SAMPLES {
        samples.pop_front();
    }
    samples.push_back(value);
}

/// Whether a status is a denial of an object (403, 404).
fn denied(status: u16) -> bool {
    matches!(status, 403 | 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_per_route_ones_win() {
        let t: Threshold = "bola@/v1/orders/{id}=100".parse().unwrap();
        assert_eq!(
            t,
            Threshold {
                key: ThresholdKey::Bola,
                route: Some("/v1/orders/{id}".into()),
                value: 100
            }
        );
        let all = Thresholds::new(&[t, "bola=60".parse().unwrap()]);
        assert_eq!(all.get(ThresholdKey::Bola, Some("/v1/orders/{id}")), 100);
        assert_eq!(all.get(ThresholdKey::Bola, Some("/v1/users/{id}")), 60);
        assert_eq!(all.get(ThresholdKey::Probing, None), 20);
        for bad in ["bola", "nope=3", "bola=1", "bola=x", "bola@users=3"] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }
}
