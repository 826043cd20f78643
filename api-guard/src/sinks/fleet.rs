//! The fleet's shared store, Redis, and everything that speaks to it: each
//! sync publishes this host's per-client request counts and its blocks, and
//! brings back the fleet's verdicts (clients over the fleet budget, blocks
//! made on any host). One round trip a sync: a pipeline of Lua scripts
//! (`fleet/report.lua`, `fleet/exchange.lua`) that do the counting in Redis,
//! atomically, on Redis's clock. Nothing here writes the kernel: the daemon's
//! fleet task hands the verdicts to `enforce::fleet`.
//!
//! Keys, under the prefix `--fleet-name`:
//! - `P:n:WINDOW:CLIENT`: a client's requests in one window (expires after two);
//! - `P:seen:INSTANCE`: the last count each client map reported per client
//!   (a hash; expires a day after its last sync);
//! - `P:over`: clients over the budget, scored by their window's end;
//! - `P:blocks`: the fleet's block list, scored by each block's end.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// Clients per script call: one call holds Redis for its whole run, so a
/// large sync is cut into calls that other clients' commands can come between.
const CLIENTS_PER_CALL: usize = 500;

/// Entries of each fleet set (over-limit clients, blocks) one sync reads at
/// most: twice what the fleet may write to the block list, so a Redis full of
/// entries cannot make a sync's answer grow without bound.
const VERDICTS_PER_SET: usize = 2 * (api_guard_common::maps::NETWORK_SLOTS / 4) as usize;

/// What one sync sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    /// (client, its cumulative request count in this kernel's map).
    pub usage: Vec<(IpAddr, u64)>,
    /// Blocks made on this host (by an operator or a detector): the network and
    /// the time left (None: until unblocked).
    pub publish: Vec<(IpNet, Option<Duration>)>,
    /// Blocks lifted on this host before their end.
    pub withdraw: Vec<IpNet>,
}

/// What one sync brings back: the fleet's verdicts in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Clients over the fleet budget, and the time left in their window.
    pub over: Vec<(IpAddr, Duration)>,
    /// The fleet's block list: the network and the time left (None: until
    /// unblocked).
    pub blocks: Vec<(IpNet, Option<Duration>)>,
    /// Entries that were not a client or a network (kept out, counted).
    pub malformed: usize,
}

/// The budget the store counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Requests per client per window.
    pub requests: u64,
    pub window: Duration,
}

/// The connection to the fleet's Redis, and what identifies this host's
/// counts there.
pub struct FleetStore {
    conn: ConnectionManager,
    prefix: String,
    /// The kernel's client map this daemon reads (boot and map id): counts are
    /// deltas against what this instance reported before.
    instance: String,
    budget: Option<Budget>,
    report: Script,
    exchange: Script,
}

impl FleetStore {
    /// A store on `url` that connects when first used and reconnects by
    /// itself; every command gives up after `timeout`. Must be called inside
    /// a tokio runtime. An error only for a URL the client cannot use.
    pub fn new(
        url: &str,
        prefix: &str,
        instance: String,
        budget: Option<Budget>,
        timeout: Duration,
    ) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            // The URL may hold a password: name the error, not the URL.
            anyhow::anyhow!("--fleet: not a Redis URL this build can use: {e}")
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("cannot set up the fleet's Redis connection")?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            instance,
            budget,
            report: Script::new(include_str!("fleet/report.lua")),
            exchange: Script::new(include_str!("fleet/exchange.lua")),
        })
    }

    /// Sends `out` and reads the fleet's verdicts, in one round trip.
    pub async fn sync(&mut self, out: &Outbox) -> Result<Verdicts> {
        let mut pipe = redis::pipe();
        // Loaded in the same round trip, so a restarted Redis (its script
        // cache empty) costs nothing extra.
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(include_str!("fleet/report.lua"))
            .ignore();
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(include_str!("fleet/exchange.lua"))
            .ignore();
        if let Some(budget) = self.budget {
            let window_ms = u64::try_from(budget.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            for chunk in out.usage.chunks(CLIENTS_PER_CALL) {
                let mut call = self.report.prepare_invoke();
                call.arg(&self.prefix)
                    .arg(&self.instance)
                    .arg(window_ms)
                    .arg(budget.requests);
                for (client, count) in chunk {
                    call.arg(client.to_string()).arg(*count);
                }
                pipe.invoke_script(&call).ignore();
            }
        }
        let mut call = self.exchange.prepare_invoke();
        call.arg(&self.prefix)
            .arg(VERDICTS_PER_SET)
            .arg(out.publish.len());
        for (net, left) in &out.publish {
            let ms = left.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            call.arg(net.to_string()).arg(ms);
        }
        for net in &out.withdraw {
            call.arg(net.to_string());
        }
        pipe.invoke_script(&call);
        let ((over, blocks),): ((Vec<String>, Vec<String>),) = pipe
            .query_async(&mut self.conn)
            .await
            .context("the fleet's Redis did not sync")?;
        Ok(parse_verdicts(&over, &blocks))
    }
}

/// Checks that the Redis client can use `url` (scheme, host, TLS support),
/// without connecting: for a clear error before anything is attached.
pub fn check_url(url: &str) -> Result<()> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("--fleet: not a Redis URL this build can use: {e}"))
}

/// The exchange script's answer, with anything that is not a client or a
/// network (a foreign writer's keys) left out and counted.
fn parse_verdicts(over: &[String], blocks: &[String]) -> Verdicts {
    let mut v = Verdicts::default();
    for pair in over.chunks(2) {
        match pair {
            [client, left] => match (client.parse::<IpAddr>(), left.parse::<u64>()) {
                (Ok(c), Ok(ms)) => v.over.push((c, Duration::from_millis(ms))),
                _ => v.malformed += 1,
            },
            _ => v.malformed += 1,
        }
    }
    for pair in blocks.chunks(2) {
        match pair {
            [net, left] => match (net.parse::<IpNet>(), left.parse::<i64>()) {
                (Ok(n), Ok(-1)) => v.blocks.push((n.trunc(), None)),
                (Ok(n), Ok(ms)) if ms >= 0 => v
                    .blocks
                    .push((n.trunc(), Some(Duration::from_millis(ms as u64)))),
                _ => v.malformed += 1,
            },
            _ => v.malformed += 1,
        }
    }
    v
}

/// Which clients a sync reports: those whose count moved since the last
/// sync that went through. (Redis keeps what each instance reported, so a
/// count sent again adds nothing; this only keeps idle clients off the wire.)
#[derive(Debug, Default)]
pub struct UsageTracker {
    sent: HashMap<IpAddr, u64>,
}

impl UsageTracker {
    /// The clients of `walk` (address, cumulative requests) whose count is
    /// not the one last sent.
    pub fn changed(&self, walk: impl IntoIterator<Item = (IpAddr, u64)>) -> Vec<(IpAddr, u64)> {
        walk.into_iter()
            .filter(|(c, n)| *n > 0 && self.sent.get(c) != Some(n))
            .collect()
    }

    /// The sync of `usage` went through; `tracked` is every client the walk
    /// saw (the others left the map and are forgotten).
    pub fn sent(&mut self, usage: &[(IpAddr, u64)], tracked: &std::collections::HashSet<IpAddr>) {
        self.sent.retain(|c, _| tracked.contains(c));
        self.sent.extend(usage.iter().copied());
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn verdicts_keep_only_clients_and_networks() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let v = parse_verdicts(
            &s(&["198.18.0.2", "750", "not-an-ip", "5", "2001:db8::", "x"]),
            &s(&[
                "198.51.100.0/24",
                "-1",
                "198.18.3.7/24",
                "1000",
                "bad",
                "1",
                "2001:db8::/48",
            ]),
        );
        assert_eq!(
            v.over,
            [("198.18.0.2".parse().unwrap(), Duration::from_millis(750))]
        );
        assert_eq!(
            v.blocks,
            [
                ("198.51.100.0/24".parse().unwrap(), None),
                (
                    "198.18.3.0/24".parse().unwrap(),
                    Some(Duration::from_secs(1))
                ),
            ]
        );
        assert_eq!(v.malformed, 4);
    }

    #[test]
    fn only_moved_counts_are_sent_again() {
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        let mut t = UsageTracker::default();
        let first = t.changed([(a, 5), (b, 0)]);
        assert_eq!(first, [(a, 5)], "a client without requests is not sent");
        t.sent(&first, &HashSet::from([a, b]));
        assert_eq!(t.changed([(a, 5), (b, 1)]), [(b, 1)]);
        // A client that left the map is forgotten.
        t.sent(&[], &HashSet::from([b]));
        assert!(t.is_empty());
        assert_eq!(t.changed([(a, 5)]), [(a, 5)]);
    }
}
