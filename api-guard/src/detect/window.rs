//! Sliding windows for the detectors, bounded in memory whatever a client
//! sends: counters in a fixed ring of time slots, and distinct values counted
//! exactly up to a bound, then approximately (HyperLogLog per slot) past it.

use std::collections::{HashMap, VecDeque};

use super::hll::Hll;

/// Slots a window is cut into: a value leaves the window at most one slot
/// late.
pub const SLOTS: usize = 10;

/// The slot length of a window (at least 1 ns).
pub fn slot_ns(window_ns: u64) -> u64 {
    (window_ns / SLOTS as u64).max(1)
}

/// `N` counters over a sliding window.
#[derive(Clone, Debug)]
pub struct Counts<const N: usize> {
    /// Per slot: its number (time / slot length) and counts.
    slots: [(u64, [u32; N]); SLOTS],
}

impl<const N: usize> Default for Counts<N> {
    fn default() -> Self {
        Self {
            slots: [(u64::MAX, [0; N]); SLOTS],
        }
    }
}

impl<const N: usize> Counts<N> {
    pub fn add(&mut self, counter: usize, now_ns: u64, slot_ns: u64) {
        let no = now_ns / slot_ns;
        let slot = &mut self.slots[(no % SLOTS as u64) as usize];
        if slot.0 != no {
            *slot = (no, [0; N]);
        }
        if let Some(c) = slot.1.get_mut(counter) {
            *c = c.saturating_add(1);
        }
    }

    /// The counts over the window ending at `now_ns`.
    pub fn sum(&self, now_ns: u64, slot_ns: u64) -> [u32; N] {
        let now = now_ns / slot_ns;
        let mut out = [0u32; N];
        for (no, counts) in &self.slots {
            if live(*no, now) {
                for (o, c) in out.iter_mut().zip(counts) {
                    *o = o.saturating_add(*c);
                }
            }
        }
        out
    }

    /// Whether nothing is left in the window.
    pub fn is_empty(&self, now_ns: u64, slot_ns: u64) -> bool {
        let now = now_ns / slot_ns;
        !self.slots.iter().any(|(no, _)| live(*no, now))
    }
}

fn live(no: u64, now: u64) -> bool {
    no != u64::MAX && no <= now && now - no < SLOTS as u64
}

/// Distinct values seen in a sliding window. Exact (each value with its last
/// sighting) while at most `bound` are in the window; past it, a HyperLogLog
/// per slot, merged to count, until the window empties.
#[derive(Clone, Default)]
pub struct Distinct {
    /// Value → when last seen; with the order they were seen in, for expiry.
    exact: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    /// Past the bound: per slot, its number and the values seen in it.
    approx: Option<Box<[(u64, Hll); SLOTS]>>,
}

impl Distinct {
    /// Records `value` at `now_ns`; true when it was not in the window (always
    /// true in approximate mode, where a repeat cannot be told apart: callers
    /// use it for "a new value" statistics only).
    pub fn insert(&mut self, value: u64, now_ns: u64, window_ns: u64, bound: usize) -> bool {
        let slot_ns = slot_ns(window_ns);
        self.expire(now_ns, window_ns);
        if let Some(slots) = &mut self.approx {
            let no = now_ns / slot_ns;
            let slot = &mut slots[(no % SLOTS as u64) as usize];
            if slot.0 != no {
                *slot = (no, Hll::default());
            }
            slot.1.insert(value);
            return true;
        }
        let new = self.exact.insert(value, now_ns).is_none();
        self.order.push_back((value, now_ns));
        if self.exact.len() > bound.max(1) {
            // Past the bound: each value goes to the slot it was last seen in.
            let mut slots: Box<[(u64, Hll); SLOTS]> =
                Box::new(std::array::from_fn(|_| (u64::MAX, Hll::default())));
            for (v, at) in self.exact.drain() {
                let no = at / slot_ns;
                let slot = &mut slots[(no % SLOTS as u64) as usize];
                if slot.0 != no {
                    *slot = (no, Hll::default());
                }
                slot.1.insert(v);
            }
            self.order = VecDeque::new();
            self.approx = Some(slots);
        } else if self.order.len() > 2 * bound.max(1) + 16 {
            let exact = &self.exact;
            self.order.retain(|(v, at)| exact.get(v) == Some(at));
        }
        new
    }

    /// Distinct values in the window ending at `now_ns`.
    pub fn count(&mut self, now_ns: u64, window_ns: u64) -> u64 {
        self.expire(now_ns, window_ns);
        match &self.approx {
            None => self.exact.len() as u64,
            Some(slots) => {
                let now = now_ns / slot_ns(window_ns);
                let mut all = Hll::default();
                for (no, h) in slots.iter() {
                    if live(*no, now) {
                        all.merge(h);
                    }
                }
                all.estimate()
            }
        }
    }

    /// Whether counting is approximate now.
    pub fn is_approximate(&self) -> bool {
        self.approx.is_some()
    }

    /// Forgets what left the window; back to exact once the window is empty.
    pub fn expire(&mut self, now_ns: u64, window_ns: u64) {
        if let Some(slots) = &self.approx {
            let now = now_ns / slot_ns(window_ns);
            if !slots.iter().any(|(no, _)| live(*no, now)) {
                self.approx = None;
            }
            return;
        }
        // Nothing is a whole window old yet.
        let Some(since) = now_ns.checked_sub(window_ns) else {
            return;
        };
        while let Some(&(v, at)) = self.order.front() {
            if at > since {
                break;
            }
            self.order.pop_front();
            if self.exact.get(&v) == Some(&at) {
                self.exact.remove(&v);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.approx.is_none()
    }

    /// Values held exactly (for the bound's tests).
    pub fn exact_len(&self) -> usize {
        self.exact.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_slide_out_of_the_window() {
        let mut c = Counts::<2>::default();
        let slot = slot_ns(60 * S);
        c.add(0, S, slot);
        c.add(0, 30 * S, slot);
        c.add(1, 59 * S, slot);
        assert_eq!(c.sum(59 * S, slot), [2, 1]);
        // 61 s on, the first second's slot has left.
        assert_eq!(c.sum(61 * S, slot), [1, 1]);
        assert_eq!(c.sum(200 * S, slot), [0, 0]);
        assert!(c.is_empty(200 * S, slot));
    }

    #[test]
    fn distinct_values_are_exact_below_the_bound_and_expire() {
        let mut d = Distinct::default();
        let w = 60 * S;
        for i in 0..10 {
            assert!(d.insert(i, i * S, w, 64));
            // A repeat is not new.
            assert!(!d.insert(i, i * S, w, 64));
        }
        assert_eq!(d.count(10 * S, w), 10);
        // Values seen at 0..=4 s are gone at 65 s.
        assert_eq!(d.count(65 * S, w), 4);
        // Seen again, a value stays.
        d.insert(9, 65 * S, w, 64);
        assert_eq!(d.count(69 * S + 1, w), 1);
        assert_eq!(d.count(1000 * S, w), 0);
        assert!(d.is_empty());
    }

    #[test]
    fn past_the_bound_counting_is_approximate_and_memory_stays_fixed() {
        let mut d = Distinct::default();
        let w = 600 * S;
        for i in 0..100_000u64 {
            d.insert(i, S + i, w, 64);
            assert!(d.exact_len() <= 65);
            assert!(d.order.len() <= 2 * 64 + 17);
        }
        assert!(d.is_approximate());
        let n = d.count(2 * S, w) as f64;
        assert!((n - 100_000.0).abs() / 100_000.0 < 0.2, "{n}");
        // Once the window is empty it counts exactly again.
        assert_eq!(d.count(1000 * S, w), 0);
        assert!(!d.is_approximate());
        d.insert(1, 1000 * S, w, 64);
        assert_eq!(d.count(1000 * S, w), 1);
    }

    #[test]
    fn a_repeated_value_keeps_the_expiry_queue_small() {
        let mut d = Distinct::default();
        for t in 0..100_000u64 {
            d.insert(7, t, u64::MAX / 2, 8);
            assert!(d.order.len() <= 2 * 8 + 17);
        }
        assert_eq!(d.count(100_000, u64::MAX / 2), 1);
    }
}
