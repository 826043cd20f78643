//! `--require-auth`: which requests lack a credential, and (`block`) a
//! detector that counts each client's misses in one-minute windows; a client
//! that sends more than `--auth-failures` in a window is to be blocked.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use api_guard_common::counters::Verdict;

use super::{Detector, DetectorName, Finding, Observation};
use crate::pipeline::http::{AuthScheme, Completeness, RequestHead};

/// What `--require-auth` asks for, as a plain value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthCheck {
    /// Not checked.
    Off,
    /// Misses counted and logged.
    Log,
    /// Misses counted and logged; clients with too many blocked.
    Block,
}

/// Whether a request lacks the credential it should carry. A head cut short
/// may carry its credential past the cut, and a CORS preflight (OPTIONS) never
/// carries one: neither counts as a miss.
pub fn missing_credential(check: AuthCheck, head: &RequestHead<'_>) -> bool {
    check != AuthCheck::Off
        && head.auth == AuthScheme::None
        && head.completeness == Completeness::Complete
        && head.method != "OPTIONS"
}

/// The `--require-auth block` detector.
pub struct AuthMisses {
    failures: AuthFailures,
}

impl AuthMisses {
    /// Blocks past `limit` misses a minute.
    pub fn new(limit: u32) -> Self {
        Self {
            failures: AuthFailures::new(limit),
        }
    }
}

impl Detector for AuthMisses {
    fn observe(&mut self, seen: &Observation<'_>, now: Instant) -> Option<Finding> {
        // Only requests the kernel let through count toward a block: one it
        // already dropped (or a retransmission of it) is not a new miss.
        let admitted = [Verdict::Allowed, Verdict::WouldDrop, Verdict::FailedOpen]
            .iter()
            .any(|v| seen.verdict == *v as u8);
        (seen.missing_auth && admitted && self.failures.miss(seen.bucket, now)).then(|| Finding {
            detector: DetectorName::Auth,
            client: seen.bucket,
            route: None,
            reason: "too many requests without credentials".into(),
            score: 1.0,
            evidence: serde_json::json!({
                "misses_over": self.failures.limit,
                "window_secs": WINDOW.as_secs(),
            }),
        })
    }

    fn name(&self) -> DetectorName {
        DetectorName::Auth
    }

    fn prune(&mut self, now: Instant, _now_ns: u64) {
        self.failures.prune(now);
    }
}

/// Clients tracked at once; beyond it, new clients are not counted until old
/// windows end.
pub const MAX_TRACKED: usize = 100_000;

/// The window unauthenticated requests are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct AuthFailures {
    limit: u32,
    /// Client → (window start, misses in the window).
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl AuthFailures {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: HashMap::new(),
        }
    }

    /// Records a request without a credential; true when this one takes the
    /// client over the limit. Crossing starts a new window: a client whose block
    /// ran out is blocked again after another limit's worth of misses, not left
    /// alone for the rest of the old window.
    pub fn miss(&mut self, client: IpAddr, now: Instant) -> bool {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&client) {
            self.prune(now);
            if self.windows.len() >= MAX_TRACKED {
                // Bounded memory first: a flood of new clients is not tracked.
                return false;
            }
        }
        let entry = self.windows.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
            *entry = (now, 0);
            return true;
        }
        false
    }

    /// Forgets windows that have ended, so memory follows the clients of the last
    /// minute only.
    pub fn prune(&mut self, now: Instant) {
        self.windows
            .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admitted_complete_misses_count_toward_a_block() {
        let complete = crate::pipeline::http::parse(b"GET / HTTP/1.1\r\n\r\n", &[]).unwrap();
        let preflight = crate::pipeline::http::parse(b"OPTIONS / HTTP/1.1\r\n\r\n", &[]).unwrap();
        assert!(missing_credential(AuthCheck::Log, &complete));
        assert!(!missing_credential(AuthCheck::Off, &complete));
        assert!(!missing_credential(AuthCheck::Block, &preflight));
        let mut d = AuthMisses::new(1);
        let c: IpAddr = "198.18.0.2".parse().unwrap();
        let seen = |verdict: Verdict| Observation {
            client: c,
            bucket: c,
            verdict: verdict as u8,
            head: &complete,
            missing_auth: true,
        };
        let t0 = Instant::now();
        assert_eq!(d.observe(&seen(Verdict::Blocked), t0), None);
        assert_eq!(d.observe(&seen(Verdict::Blocked), t0), None);
        assert_eq!(d.observe(&seen(Verdict::Allowed), t0), None);
        let found = d.observe(&seen(Verdict::WouldDrop), t0).unwrap();
        assert_eq!((found.detector, found.client), (DetectorName::Auth, c));
    }

    #[test]
    fn crosses_once_then_counts_afresh() {
        let mut f = AuthFailures::new(3);
        let c: IpAddr = "198.18.0.2".parse().unwrap();
        let t0 = Instant::now();
        let crossed: Vec<bool> = (0..6).map(|_| f.miss(c, t0)).collect();
        assert_eq!(crossed, [false, false, false, true, false, false]);
        // Its block over, it is blocked again after the limit's worth more.
        assert!(!f.miss(c, t0));
        assert!(f.miss(c, t0));
        // Another client has its own count.
        assert!(!f.miss("198.18.0.3".parse().unwrap(), t0));
        // A new window starts from zero.
        let later = t0 + WINDOW;
        assert!(!f.miss(c, later));
        f.prune(later + Duration::from_secs(1));
        assert_eq!(f.tracked(), 1);
    }
}
