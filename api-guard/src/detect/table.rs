//! The detectors' state tables: at most `cap` keys over all clients and at
//! most `per_client` keys for one client; past either the least recently
//! touched key goes (that client's own, for the per-client cap), counted.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
};

/// A key that belongs to one client.
pub trait ClientOf {
    fn client(&self) -> IpAddr;
}

impl ClientOf for IpAddr {
    fn client(&self) -> IpAddr {
        *self
    }
}

impl ClientOf for (IpAddr, String) {
    fn client(&self) -> IpAddr {
        self.0
    }
}

pub struct Table<K, V> {
    entries: HashMap<K, (u64, V)>,
    /// (key, touch) in touch order; stale pairs are skipped.
    lru: VecDeque<(K, u64)>,
    per_client: HashMap<IpAddr, usize>,
    touches: u64,
    cap: usize,
    client_cap: usize,
    /// Keys pushed out by either cap.
    pub evicted: u64,
}

impl<K: Clone + Eq + Hash + ClientOf, V: Default> Table<K, V> {
    pub fn new(cap: usize, client_cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            lru: VecDeque::new(),
            per_client: HashMap::new(),
            touches: 0,
            cap: cap.max(1),
            client_cap: client_cap.max(1),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key's state, made if new (making room first), touched.
    pub fn touch(&mut self, key: &K) -> &mut V {
        if !self.entries.contains_key(key) {
            let client = key.client();
            if self.per_client.get(&client).copied().unwrap_or(0) >= self.client_cap {
                self.evict_of(client);
            }
            while self.entries.len() >= self.cap {
                if !self.evict_oldest() {
                    break;
                }
            }
            *self.per_client.entry(client).or_default() += 1;
        }
        self.touches += 1;
        let touch = self.touches;
        self.lru.push_back((key.clone(), touch));
        if self.lru.len() > 2 * self.cap + 16 {
            let entries = &self.entries;
            self.lru
                .retain(|(k, t)| entries.get(k).is_some_and(|(et, _)| et == t));
        }
        let e = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| (touch, V::default()));
        e.0 = touch;
        &mut e.1
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// Drops the keys `keep` says are done with.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let per_client = &mut self.per_client;
        self.entries.retain(|k, (_, v)| {
            let kept = keep(k, v);
            if !kept {
                remove_one(per_client, k.client());
            }
            kept
        });
        let entries = &self.entries;
        self.lru
            .retain(|(k, t)| entries.get(k).is_some_and(|(et, _)| et == t));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, (_, v))| (k, v))
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((k, t)) = self.lru.pop_front() {
            if self.entries.get(&k).is_some_and(|(et, _)| *et == t) {
                self.entries.remove(&k);
                remove_one(&mut self.per_client, k.client());
                self.evicted += 1;
                return true;
            }
        }
        false
    }

    /// Evicts the least recently touched key of `client`.
    fn evict_of(&mut self, client: IpAddr) {
        let entries = &self.entries;
        let Some(pos) = self.lru.iter().position(|(k, t)| {
            k.client() == client && entries.get(k).is_some_and(|(et, _)| et == t)
        }) else {
            return;
        };
        if let Some((k, _)) = self.lru.remove(pos) {
            self.entries.remove(&k);
            remove_one(&mut self.per_client, client);
            self.evicted += 1;
        }
    }
}

fn remove_one(per_client: &mut HashMap<IpAddr, usize>, client: IpAddr) {
    if let Some(n) = per_client.get_mut(&client) {
        *n -= 1;
        if *n == 0 {
            per_client.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i))
    }

    #[test]
    fn the_global_cap_evicts_the_least_recently_touched() {
        let mut t: Table<IpAddr, u32> = Table::new(3, 10);
        for i in 0..3 {
            *t.touch(&ip(i)) += 1;
        }
        t.touch(&ip(0));
        t.touch(&ip(3));
        assert_eq!(t.len(), 3);
        assert!(t.get(&ip(1)).is_none());
        assert!(t.get(&ip(0)).is_some());
        assert_eq!(t.evicted, 1);
        for i in 10..100_000 {
            t.touch(&ip(i));
            assert!(t.len() <= 3);
            assert!(t.lru.len() <= 2 * 3 + 17);
        }
    }

    #[test]
    fn one_client_cannot_take_more_than_its_share() {
        let mut t: Table<(IpAddr, String), u32> = Table::new(100, 4);
        t.touch(&(ip(9), "/a".into()));
        for r in 0..50 {
            t.touch(&(ip(1), format!("/r{r}")));
        }
        assert_eq!(t.iter().filter(|(k, _)| k.0 == ip(1)).count(), 4);
        // Its newest routes stay; another client's key is untouched.
        assert!(t.get(&(ip(1), "/r49".into())).is_some());
        assert!(t.get(&(ip(9), "/a".into())).is_some());
        assert_eq!(t.evicted, 46);
        t.retain(|k, _| k.0 != ip(1));
        assert_eq!(t.len(), 1);
        assert!(!t.per_client.contains_key(&ip(1)));
    }
}
