//! What the detectors know per client, published every second to the pinned
//! `DETECT_CLIENTS` map for `api-guard status` and `top`: the clients with
//! findings (their count, the last detector and action), then the busiest by
//! response classes (401/403/404/429/5xx over the last minute). Bounded: at
//! most `DETECT_SLOTS` clients remembered, the oldest finding out first.

use std::{collections::HashMap, net::IpAddr};

use api_guard_common::detect::{ACTION_BLOCK, ACTION_LOG, DETECT_SLOTS, DETECTORS, DetectClient};

use crate::{
    detect::{DetectorName, Finding},
    pipeline::client_classes::ClientClasses,
};

#[derive(Default)]
pub struct Detected {
    /// Client bucket → its findings' summary.
    findings: HashMap<IpAddr, DetectClient>,
}

impl Detected {
    pub fn record(&mut self, finding: &Finding, blocked: bool, at_ns: u64) {
        let cap = DETECT_SLOTS as usize;
        if self.findings.len() >= cap && !self.findings.contains_key(&finding.client) {
            // The oldest finding makes room.
            if let Some(oldest) = self
                .findings
                .iter()
                .min_by_key(|(_, v)| v.last_finding_ns)
                .map(|(k, _)| *k)
            {
                self.findings.remove(&oldest);
            }
        }
        let e = self.findings.entry(finding.client).or_default();
        e.findings = e.findings.saturating_add(1);
        e.last_detector = detector_index(finding.detector);
        e.last_action = if blocked { ACTION_BLOCK } else { ACTION_LOG };
        e.last_finding_ns = at_ns;
    }

    /// The entries to publish: clients with findings, then the busiest by
    /// response classes, at most `DETECT_SLOTS`.
    pub fn entries(&self, classes: &ClientClasses, now_ns: u64) -> Vec<(IpAddr, DetectClient)> {
        let cap = DETECT_SLOTS as usize;
        let mut out: Vec<(IpAddr, DetectClient)> = self
            .findings
            .iter()
            .map(|(ip, v)| {
                let mut v = *v;
                v.classes = classes.counts(ip, now_ns);
                (*ip, v)
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.1.last_finding_ns));
        out.truncate(cap);
        for (ip, counts) in classes.busiest(cap, now_ns) {
            if out.len() >= cap {
                break;
            }
            if !self.findings.contains_key(&ip) {
                out.push((
                    ip,
                    DetectClient {
                        classes: counts,
                        ..Default::default()
                    },
                ));
            }
        }
        out
    }
}

fn detector_index(d: DetectorName) -> u32 {
    DETECTORS
        .iter()
        .position(|n| *n == d.name())
        .map_or(0, |i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_come_first_and_the_table_stays_bounded() {
        let mut d = Detected::default();
        let mut classes = ClientClasses::new(10, 60_000_000_000);
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i));
        classes.observe(ip(1), 404, 1);
        classes.observe(ip(2), 401, 1);
        let finding = |c: IpAddr| Finding {
            detector: DetectorName::Probing,
            client: c,
            route: None,
            reason: String::new(),
            score: 1.0,
            evidence: serde_json::Value::Null,
        };
        d.record(&finding(ip(1)), true, 5);
        let e = d.entries(&classes, 2);
        assert_eq!(e[0].0, ip(1));
        assert_eq!(
            (e[0].1.findings, e[0].1.last_detector, e[0].1.last_action),
            (1, 4, ACTION_BLOCK)
        );
        assert_eq!(e[0].1.classes[2], 1);
        assert_eq!(
            e[1],
            (
                ip(2),
                DetectClient {
                    classes: [1, 0, 0, 0, 0],
                    ..Default::default()
                }
            )
        );
        for i in 0..5000 {
            d.record(&finding(ip(100 + i)), false, 10 + u64::from(i));
        }
        assert_eq!(d.findings.len(), DETECT_SLOTS as usize);
        assert!(d.entries(&classes, 2).len() <= DETECT_SLOTS as usize);
    }
}
