//! The fleet's verdicts written to this host's kernel, by the daemon's fleet
//! task through map handles of its own: blocks of clients over the fleet
//! budget (until their window ends), blocks made on other hosts, and the
//! local request limit (the fleet rate while Redis answers, the fallback's
//! while it does not). It also tells the fleet task which blocks this host
//! made itself (operators' and detectors'), to publish them.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::Result;
use api_guard_common::{
    client::ClientKey,
    config::{Limit, flags},
    maps as names,
    network::V4_MAPPED_BITS,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{block, deadline};
use crate::{
    clock::monotonic_ns,
    kernel::{KernelMaps, LpmKey, MapSet},
    policy::Network,
};

/// Blocks the fleet's verdicts may hold at once: a quarter of the block list
/// (findings hold at most half, operators keep the rest), so a fleet-wide
/// flood of verdicts cannot crowd out an operator's block.
pub const FLEET_BLOCKS: usize = (names::NETWORK_SLOTS / 4) as usize;

/// A deadline this close to one already in force is the same verdict read on
/// another sync (the server's clock seen through another round trip).
const SAME_DEADLINE_NS: u64 = 50_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// A client over the fleet budget.
    OverLimit,
    /// A block made on another host.
    Remote,
}

/// What one [`FleetEnforcer::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub over_limit: usize,
    pub remote: usize,
    /// Remote blocks lifted because the fleet lifted them.
    pub lifted: usize,
    /// Verdicts not applied: the fleet's share of the block list was full.
    pub refused: usize,
}

/// This host's own blocks since the last sync that went through.
#[derive(Clone, Debug, Default)]
pub struct LocalChanges {
    /// New or longer: the network and the time left (None: until unblocked).
    pub publish: Vec<(IpNet, Option<Duration>)>,
    /// Lifted here before their end (by `api-guard unblock`).
    pub withdraw: Vec<IpNet>,
    own: HashMap<LpmKey, u64>,
    lifted_applied: Vec<LpmKey>,
}

pub struct FleetEnforcer {
    maps: MapSet,
    ipv6_prefix: u8,
    /// The blocks this wrote, with their deadlines and why.
    applied: HashMap<LpmKey, (u64, Why)>,
    /// This host's own blocks as the last sync published them.
    own: HashMap<LpmKey, u64>,
    cap: usize,
}

impl FleetEnforcer {
    /// The maps it writes.
    pub const MAPS: [&'static str; 2] = [names::BLOCKS, names::CONFIG];

    pub fn new(maps: MapSet, ipv6_prefix: u8) -> Self {
        Self {
            maps,
            ipv6_prefix,
            applied: HashMap::new(),
            own: HashMap::new(),
            cap: FLEET_BLOCKS,
        }
    }

    /// This host's own blocks that changed since the last [`Self::commit`].
    pub fn local_changes(&self) -> Result<LocalChanges> {
        let now = monotonic_ns();
        let current: HashMap<LpmKey, u64> = self
            .maps
            .blocks()?
            .into_iter()
            .map(|(p, a, u)| ((p, a), u))
            .collect();
        let own: HashMap<LpmKey, u64> = current
            .iter()
            .filter(|(k, u)| **u > now && self.applied.get(*k).map(|a| a.0) != Some(**u))
            .map(|(k, u)| (*k, *u))
            .collect();
        let publish = own
            .iter()
            .filter(|(k, u)| self.own.get(*k) != Some(*u))
            .map(|(k, u)| (lpm_net(*k), left(*u, now)))
            .collect();
        let gone = |k: &LpmKey, until: u64| until > now && !current.contains_key(k);
        let mut withdraw: Vec<IpNet> = self
            .own
            .iter()
            .filter(|(k, u)| gone(k, **u))
            .map(|(k, _)| lpm_net(*k))
            .collect();
        // A block another host made, lifted here by an operator: lifted for
        // the whole fleet.
        let lifted_applied: Vec<LpmKey> = self
            .applied
            .iter()
            .filter(|(k, (u, why))| *why == Why::Remote && gone(k, *u))
            .map(|(k, _)| *k)
            .collect();
        withdraw.extend(lifted_applied.iter().map(|k| lpm_net(*k)));
        Ok(LocalChanges {
            publish,
            withdraw,
            own,
            lifted_applied,
        })
    }

    /// The sync that carried `changes` went through.
    pub fn commit(&mut self, changes: LocalChanges) {
        self.own = changes.own;
        for k in changes.lifted_applied {
            self.applied.remove(&k);
        }
    }

    /// Writes the fleet's verdicts: a block for each client over the budget
    /// until its window ends, and the fleet's block list; lifts the remote
    /// blocks the fleet no longer holds. Effective from the next packet.
    pub fn apply(
        &mut self,
        over: &[(IpAddr, Duration)],
        blocks: &[(IpNet, Option<Duration>)],
    ) -> Result<Applied> {
        let now = monotonic_ns();
        self.applied.retain(|_, (u, _)| *u > now);
        let mut current: HashMap<LpmKey, u64> = self
            .maps
            .blocks()?
            .into_iter()
            .map(|(p, a, u)| ((p, a), u))
            .collect();
        let mut done = Applied::default();
        let prefix = self.ipv6_prefix;
        let verdicts: Vec<(LpmKey, Option<Duration>, Why)> = over
            .iter()
            .map(|(client, left)| (client_net(*client, prefix), Some(*left), Why::OverLimit))
            .chain(
                blocks
                    .iter()
                    .map(|(net, left)| (Network(*net).lpm_key(), *left, Why::Remote)),
            )
            .collect();
        let mut listed = HashSet::new();
        for (key, left, why) in verdicts {
            if why == Why::Remote {
                listed.insert(key);
            }
            let until = deadline(left);
            if current
                .get(&key)
                .is_some_and(|u| u.saturating_add(SAME_DEADLINE_NS) >= until)
            {
                continue;
            }
            if self.applied.len() >= self.cap && !self.applied.contains_key(&key) {
                done.refused += 1;
                continue;
            }
            block(&mut self.maps, key, until)?;
            current.insert(key, until);
            self.applied.insert(key, (until, why));
            match why {
                Why::OverLimit => done.over_limit += 1,
                Why::Remote => done.remote += 1,
            }
        }
        // Remote blocks the fleet lifted, if still as this wrote them.
        let lifted: Vec<LpmKey> = self
            .applied
            .iter()
            .filter(|(k, (u, why))| {
                *why == Why::Remote && !listed.contains(*k) && current.get(*k) == Some(u)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in lifted {
            self.maps.unblock(k)?;
            self.applied.remove(&k);
            done.lifted += 1;
        }
        Ok(done)
    }

    /// Sets the local request limit per client, from the next packet.
    ///
    /// The config entry is read, changed and written whole, and the flow's
    /// enforcer does the same when it makes the first block (it sets
    /// `HAS_BLOCKS`): so the write is checked after it is made, and made again
    /// with both changes if the other writer came between.
    pub fn set_request_limit(&mut self, rate: u32, burst: u32) -> Result<()> {
        let limit = Limit::per_second(u64::from(rate), u64::from(burst));
        for _ in 0..4 {
            let mut config = self.maps.config()?;
            let has_blocks = !self.maps.blocks()?.is_empty();
            if config.requests == limit && (!has_blocks || config.has(flags::HAS_BLOCKS)) {
                return Ok(());
            }
            config.requests = limit;
            if has_blocks {
                config.flags |= flags::HAS_BLOCKS;
            }
            self.maps.set_config(&config)?;
        }
        anyhow::bail!("the config entry kept changing under the fleet's limit")
    }
}

/// The block-list key of a client's bucket: an IPv4 address, or the IPv6
/// prefix its address is counted under.
fn client_net(client: IpAddr, ipv6_prefix: u8) -> LpmKey {
    let key = ClientKey::from(client).bucketed(u32::from(ipv6_prefix));
    let prefix = if client.is_ipv4() {
        128
    } else {
        u32::from(ipv6_prefix)
    };
    (prefix, key.addr)
}

/// The time left until `until_ns` (None: until unblocked).
fn left(until_ns: u64, now: u64) -> Option<Duration> {
    (until_ns != u64::MAX).then(|| Duration::from_nanos(until_ns.saturating_sub(now)))
}

/// A block-list key as a network (IPv4 for IPv4-mapped keys).
fn lpm_net((prefix, addr): LpmKey) -> IpNet {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if prefix >= V4_MAPPED_BITS => Ipv4Net::new(v4, (prefix - V4_MAPPED_BITS) as u8)
            .map_or(IpNet::from(IpAddr::V4(v4)), Into::into),
        _ => {
            Ipv6Net::new(v6, prefix.min(128) as u8).map_or(IpNet::from(IpAddr::V6(v6)), Into::into)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_turn_back_into_networks() {
        for net in [
            "198.51.100.0/24",
            "198.18.0.2/32",
            "2001:db8:bad::/48",
            "0.0.0.0/0",
        ] {
            let n: Network = net.parse().unwrap();
            assert_eq!(lpm_net(n.lpm_key()).to_string(), net);
        }
    }

    #[test]
    fn time_left() {
        assert_eq!(left(u64::MAX, 5), None);
        assert_eq!(left(1_000_000_005, 5), Some(Duration::from_secs(1)));
        assert_eq!(left(3, 5), Some(Duration::ZERO));
    }
}
