//! Per-client response classes for the detectors: how many 401, 403, 404, 429
//! and 5xx answers each client bucket got over a sliding window, from joined
//! samples. Bounded: at most `cap` clients (the least recently answered goes
//! first, counted), each a fixed ring of time slots.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

/// The classes kept, in [`ClassCounts`] order.
pub const CLASSES: [&str; 5] = ["401", "403", "404", "429", "5xx"];

/// Slots of the window (each `window / SLOTS` long).
const SLOTS: usize = 6;

/// Counts per class over the window, in [`CLASSES`] order.
pub type ClassCounts = [u32; CLASSES.len()];

/// The class index of a status, if it is one kept.
pub fn class_index(status: u16) -> Option<usize> {
    match status {
        401 => Some(0),
        403 => Some(1),
        404 => Some(2),
        429 => Some(3),
        500..=599 => Some(4),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct Entry {
    /// Per slot: which slot number (time / slot length) it holds, and counts.
    slots: [(u64, ClassCounts); SLOTS],
    /// The touch that put it last in the LRU queue.
    touch: u64,
}

/// What the table counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Clients pushed out (the table was full).
    pub evicted: u64,
}

pub struct ClientClasses {
    clients: HashMap<IpAddr, Entry>,
    /// (client, touch) in touch order; stale pairs are skipped.
    lru: VecDeque<(IpAddr, u64)>,
    touches: u64,
    cap: usize,
    slot_ns: u64,
    pub stats: ClassStats,
}

impl ClientClasses {
    /// At most `cap` clients (at least 1), over a window of `window_ns`.
    pub fn new(cap: usize, window_ns: u64) -> Self {
        Self {
            clients: HashMap::new(),
            lru: VecDeque::new(),
            touches: 0,
            cap: cap.max(1),
            slot_ns: (window_ns / SLOTS as u64).max(1),
            stats: ClassStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// A response with `status` to `client` (its bucket) at `now_ns`.
    pub fn observe(&mut self, client: IpAddr, status: u16, now_ns: u64) {
        let Some(class) = class_index(status) else {
            return;
        };
        if !self.clients.contains_key(&client) {
            self.make_room();
        }
        self.touches += 1;
        let touch = self.touches;
        let slot_no = now_ns / self.slot_ns;
        let e = self.clients.entry(client).or_insert(Entry {
            slots: [(u64::MAX, [0; CLASSES.len()]); SLOTS],
            touch,
        });
        e.touch = touch;
        let slot = &mut e.slots[(slot_no % SLOTS as u64) as usize];
        if slot.0 != slot_no {
            *slot = (slot_no, [0; CLASSES.len()]);
        }
        slot.1[class] = slot.1[class].saturating_add(1);
        self.lru.push_back((client, touch));
        if self.lru.len() > 2 * self.cap + 16 {
            let clients = &self.clients;
            self.lru
                .retain(|(c, t)| clients.get(c).is_some_and(|e| e.touch == *t));
        }
    }

    /// The client's counts over the window ending at `now_ns`.
    pub fn counts(&self, client: &IpAddr, now_ns: u64) -> ClassCounts {
        let mut out = [0; CLASSES.len()];
        let Some(e) = self.clients.get(client) else {
            return out;
        };
        let now_slot = now_ns / self.slot_ns;
        for (no, counts) in &e.slots {
            if *no != u64::MAX && *no <= now_slot && now_slot - *no < SLOTS as u64 {
                for (o, c) in out.iter_mut().zip(counts) {
                    *o += c;
                }
            }
        }
        out
    }

    /// The `n` clients with the most of class `class` in the window.
    pub fn top(&self, class: usize, n: usize, now_ns: u64) -> Vec<(IpAddr, u32)> {
        let mut all: Vec<(IpAddr, u32)> = self
            .clients
            .keys()
            .map(|c| (*c, self.counts(c, now_ns)[class.min(CLASSES.len() - 1)]))
            .filter(|(_, k)| *k > 0)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The `n` clients with the most answers of any kept class in the window,
    /// with their counts.
    pub fn busiest(&self, n: usize, now_ns: u64) -> Vec<(IpAddr, ClassCounts)> {
        let mut all: Vec<(IpAddr, ClassCounts)> = self
            .clients
            .keys()
            .map(|c| (*c, self.counts(c, now_ns)))
            .filter(|(_, k)| k.iter().any(|v| *v > 0))
            .collect();
        let total = |k: &ClassCounts| k.iter().map(|v| u64::from(*v)).sum::<u64>();
        all.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    fn make_room(&mut self) {
        while self.clients.len() >= self.cap {
            let Some((c, t)) = self.lru.pop_front() else {
                return;
            };
            if self.clients.get(&c).is_some_and(|e| e.touch == t) {
                self.clients.remove(&c);
                self.stats.evicted += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i))
    }

    #[test]
    fn classes_are_counted_per_client_over_the_window() {
        let mut t = ClientClasses::new(10, 60 * S);
        for _ in 0..3 {
            t.observe(ip(1), 404, 5 * S);
        }
        t.observe(ip(1), 401, 20 * S);
        t.observe(ip(1), 503, 20 * S);
        t.observe(ip(1), 200, 20 * S);
        t.observe(ip(2), 429, 30 * S);
        assert_eq!(t.counts(&ip(1), 30 * S), [1, 0, 3, 0, 1]);
        assert_eq!(t.counts(&ip(2), 30 * S), [0, 0, 0, 1, 0]);
        // 60 s on, the 404s of the first slot are out of the window.
        assert_eq!(t.counts(&ip(1), 65 * S), [1, 0, 0, 0, 1]);
        assert_eq!(t.counts(&ip(1), 200 * S), [0; 5]);
        assert_eq!(t.top(2, 5, 30 * S), [(ip(1), 3)]);
        assert_eq!(
            t.busiest(5, 30 * S),
            [(ip(1), [1, 0, 3, 0, 1]), (ip(2), [0, 0, 0, 1, 0])]
        );
    }

    #[test]
    fn a_flood_of_clients_stays_within_the_cap_and_is_counted() {
        let mut t = ClientClasses::new(100, 60 * S);
        for i in 0..100_000 {
            t.observe(ip(i), 404, S);
            assert!(t.len() <= 100);
            assert!(t.lru.len() <= 2 * 100 + 17);
        }
        assert_eq!(t.stats.evicted, 100_000 - 100);
        // The most recent stay.
        assert_eq!(t.counts(&ip(99_999), S)[2], 1);
        assert_eq!(t.counts(&ip(0), S)[2], 0);
    }

    #[test]
    fn a_client_answered_again_is_kept_over_quieter_ones() {
        let mut t = ClientClasses::new(3, 60 * S);
        t.observe(ip(1), 404, S);
        t.observe(ip(2), 404, S);
        t.observe(ip(3), 404, S);
        t.observe(ip(1), 404, S);
        t.observe(ip(4), 404, S);
        assert_eq!(t.counts(&ip(1), S)[2], 2);
        assert_eq!(t.counts(&ip(2), S)[2], 0);
    }
}
