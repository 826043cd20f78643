//! `--require-auth block`: counts each client's requests without a credential in
//! one-minute windows; a client that sends more than `--auth-failures` in a window
//! is to be blocked.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

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
