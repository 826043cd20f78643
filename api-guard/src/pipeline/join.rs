//! Joining a sampled request with its response: the kernel numbers each request
//! on its connection and the response record carries the same number, so the
//! pair is (connection, number). Bounded in memory (at most `cap` requests
//! wait; past it the oldest is given up) and in time (a request whose response
//! has not come within `timeout` is given up): given-up requests come back to
//! the caller, marked, so every sampled request is still logged once.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

/// A request's place: its connection (as ingress sees it) and its number on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub index: u32,
}

/// Why a request left the join without its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// No response within the timeout.
    Timeout,
    /// Pushed out by newer requests (the join was full).
    Evicted,
}

impl GaveUp {
    pub const fn name(self) -> &'static str {
        match self {
            GaveUp::Timeout => "timeout",
            GaveUp::Evicted => "evicted",
        }
    }
}

/// What the join counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub joined: u64,
    pub timed_out: u64,
    pub evicted: u64,
    /// Responses with no request waiting (its sample lost, given up, or a
    /// duplicate number).
    pub orphans: u64,
}

/// Requests waiting for their responses.
pub struct Join<T> {
    waiting: HashMap<ExchangeKey, (u64, T)>,
    /// Arrival order, for the timeout and the eviction: (key, arrival ns).
    /// Entries whose key left already are skipped when met.
    order: VecDeque<(ExchangeKey, u64)>,
    cap: usize,
    timeout_ns: u64,
    pub stats: JoinStats,
}

impl<T> Join<T> {
    /// At most `cap` waiting requests (at least 1), each at most `timeout_ns`.
    pub fn new(cap: usize, timeout_ns: u64) -> Self {
        Self {
            waiting: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            timeout_ns,
            stats: JoinStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// A request that came in at `at_ns` waits; returns what that pushed out.
    pub fn request(&mut self, key: ExchangeKey, at_ns: u64, item: T) -> Vec<(T, GaveUp)> {
        let mut out = Vec::new();
        if let Some((_, old)) = self.waiting.remove(&key) {
            // The same number again: a new connection on the same 4-tuple.
            self.stats.evicted += 1;
            out.push((old, GaveUp::Evicted));
        }
        while self.waiting.len() >= self.cap {
            let Some((k, at)) = self.order.pop_front() else {
                break;
            };
            if let Some((a, old)) = self.waiting.remove(&k) {
                if a == at {
                    self.stats.evicted += 1;
                    out.push((old, GaveUp::Evicted));
                } else {
                    self.waiting.insert(k, (a, old));
                }
            }
        }
        self.waiting.insert(key, (at_ns, item));
        self.order.push_back((key, at_ns));
        self.compact();
        out
    }

    /// The response for `key`: its request, if one waits.
    pub fn response(&mut self, key: &ExchangeKey) -> Option<T> {
        match self.waiting.remove(key) {
            Some((_, item)) => {
                self.stats.joined += 1;
                Some(item)
            }
            None => {
                self.stats.orphans += 1;
                None
            }
        }
    }

    /// Gives up the requests that came in more than the timeout before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(T, GaveUp)> {
        let mut out = Vec::new();
        while let Some(&(k, at)) = self.order.front() {
            if now_ns.saturating_sub(at) < self.timeout_ns {
                break;
            }
            self.order.pop_front();
            if let Some((a, item)) = self.waiting.remove(&k) {
                if a == at {
                    self.stats.timed_out += 1;
                    out.push((item, GaveUp::Timeout));
                } else {
                    self.waiting.insert(k, (a, item));
                }
            }
        }
        out
    }

    /// Keeps the order queue within a small multiple of what waits: joined
    /// requests leave their queue entries behind.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.cap + 16 {
            let waiting = &self.waiting;
            self.order
                .retain(|(k, at)| waiting.get(k).is_some_and(|(a, _)| a == at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, index: u32) -> ExchangeKey {
        ExchangeKey {
            client: "198.18.0.2".parse().unwrap(),
            client_port: port,
            server: "198.18.0.1".parse().unwrap(),
            server_port: 8080,
            index,
        }
    }

    #[test]
    fn a_response_finds_its_own_request_among_pipelined_ones() {
        let mut j = Join::new(100, 1_000);
        for i in 0..3 {
            assert!(j.request(key(1, i), 10, i).is_empty());
        }
        assert_eq!(j.response(&key(1, 1)), Some(1));
        assert_eq!(j.response(&key(1, 0)), Some(0));
        assert_eq!(j.response(&key(1, 0)), None);
        assert_eq!(j.response(&key(2, 2)), None);
        assert_eq!(j.len(), 1);
        assert_eq!(j.stats.joined, 2);
        assert_eq!(j.stats.orphans, 2);
    }

    #[test]
    fn requests_without_responses_are_given_up_after_the_timeout_marked() {
        let mut j = Join::new(100, 1_000);
        j.request(key(1, 0), 0, "a");
        j.request(key(1, 1), 500, "b");
        assert!(j.expire(999).is_empty());
        assert_eq!(j.expire(1_000), [("a", GaveUp::Timeout)]);
        assert_eq!(j.response(&key(1, 1)), Some("b"));
        assert!(j.expire(10_000).is_empty());
        assert!(j.is_empty());
    }

    #[test]
    fn a_flood_of_unanswered_requests_stays_within_the_cap() {
        let cap = 1_000;
        let mut j = Join::new(cap, u64::MAX);
        let mut given_up = 0;
        for i in 0..100_000u32 {
            given_up += j
                .request(key((i % 60_000) as u16, i), u64::from(i), i)
                .len();
            // Half are answered at once: their queue entries must not pile up.
            if i % 2 == 0 {
                j.response(&key((i % 60_000) as u16, i));
            }
            assert!(j.len() <= cap);
            assert!(j.order.len() <= 2 * cap + 17);
        }
        assert_eq!(given_up as u64, j.stats.evicted);
        assert_eq!(j.stats.evicted + j.stats.joined + j.len() as u64, 100_000);
    }

    #[test]
    fn a_reused_number_gives_the_old_request_up() {
        let mut j = Join::new(10, 1_000);
        j.request(key(1, 0), 0, "old");
        assert_eq!(j.request(key(1, 0), 5, "new"), [("old", GaveUp::Evicted)]);
        // The old entry's queue place must not expire the new one early.
        assert!(j.expire(999).is_empty());
        assert_eq!(j.response(&key(1, 0)), Some("new"));
    }
}
