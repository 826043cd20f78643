//! The top-clients gauge: request rates from two snapshots of the client map.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use anyhow::Result;
use prometheus::GaugeVec;

use crate::kernel::KernelMaps;

/// Request rates from two snapshots of the client map, for the top-clients gauge.
pub struct TopClients {
    k: usize,
    last: Option<(Instant, HashMap<IpAddr, u64>)>,
}

impl TopClients {
    pub fn new(k: u32) -> Self {
        Self {
            k: k as usize,
            last: None,
        }
    }

    /// Takes a snapshot and updates the gauge with the K highest rates since the
    /// previous one.
    pub fn update(&mut self, maps: &impl KernelMaps, gauge: &GaugeVec) -> Result<()> {
        let now = Instant::now();
        let snapshot: HashMap<IpAddr, u64> = maps
            .clients()?
            .into_iter()
            .map(|c| (c.addr, c.state.requests))
            .collect();
        if let Some((then, before)) = &self.last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rates = snapshot
                .iter()
                // A client new since the last snapshot started from zero.
                .map(|(addr, n)| {
                    let b = before.get(addr).copied().unwrap_or(0);
                    (*addr, n.saturating_sub(b) as f64 / secs)
                })
                .filter(|(_, r)| *r > 0.0);
            gauge.reset();
            for (addr, rate) in top_k(rates, self.k) {
                gauge.with_label_values(&[&addr.to_string()]).set(rate);
            }
        }
        self.last = Some((now, snapshot));
        Ok(())
    }
}

/// The `k` largest rates, largest first (ties by address, for stable output).
pub fn top_k(rates: impl Iterator<Item = (IpAddr, f64)>, k: usize) -> Vec<(IpAddr, f64)> {
    let mut all: Vec<(IpAddr, f64)> = rates.collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_busiest() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let c: IpAddr = "2001:db8::".parse().unwrap();
        let top = top_k([(a, 1.0), (b, 30.0), (c, 5.0)].into_iter(), 2);
        assert_eq!(top, [(b, 30.0), (c, 5.0)]);
    }
}
