//! Typed access to the kernel's maps, by the names in `api_guard_common::maps`.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use api_guard_common::{
    client::{ClientKey, ClientState},
    config::flags as config_flags,
    config::{Config, Limit},
    counters::{self, Event, Kind, Verdict},
    maps as names,
    network::NetKey,
    ports,
};
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};

use crate::{
    loader::Datapath,
    policy::{Network, Policy},
};

/// One client as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    pub state: ClientState,
}

/// Verdict counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    slots: [u64; counters::SLOTS as usize],
}

impl Counters {
    pub fn get(&self, kind: Kind, verdict: Verdict) -> u64 {
        self.slots[counters::index(kind, verdict) as usize]
    }
}

impl Datapath {
    /// Marks these ports as watched (and leaves the others as they are).
    pub fn watch_ports(&mut self, watched: &[u16]) -> Result<()> {
        let mut map: Array<&mut MapData, u8> = Array::try_from(
            self.ebpf_mut()
                .map_mut(names::PORTS)
                .context("map PORTS missing")?,
        )?;
        for &port in watched {
            map.set(u32::from(port), ports::WATCHED, 0)
                .with_context(|| format!("cannot watch port {port}"))?;
        }
        Ok(())
    }

    /// Replaces the policy; programs use it from the next packet on.
    pub fn set_config(&mut self, config: &Config) -> Result<()> {
        let mut map: Array<&mut MapData, Config> = Array::try_from(
            self.ebpf_mut()
                .map_mut(names::CONFIG)
                .context("map CONFIG missing")?,
        )?;
        map.set(0, *config, 0).context("cannot write the policy")?;
        Ok(())
    }

    /// Pushes a policy: lists and per-network limits first, then the config that
    /// switches them on. `netns_cookie` scopes the connection tracker.
    pub fn apply_policy(&mut self, policy: &Policy, netns_cookie: u64) -> Result<()> {
        let keys = |nets: &[Network]| nets.iter().map(Network::lpm_key).collect::<Vec<_>>();
        self.add_networks(names::ALLOW, &keys(&policy.allow))?;
        self.add_networks(names::DENY, &keys(&policy.deny))?;
        self.add_overrides(&policy.overrides())?;
        self.set_config(&policy.config(netns_cookie))
    }

    /// Adds networks to the allow (`names::ALLOW`) or deny (`names::DENY`) list.
    pub fn add_networks(&mut self, list: &str, nets: &[(u32, NetKey)]) -> Result<()> {
        let entries: Vec<((u32, NetKey), u8)> = nets.iter().map(|&n| (n, 1)).collect();
        self.add_lpm(list, &entries)
    }

    /// Adds per-network request limits.
    pub fn add_overrides(&mut self, limits: &[((u32, NetKey), Limit)]) -> Result<()> {
        self.add_lpm(names::OVERRIDES, limits)
    }

    fn add_lpm<V: aya::Pod>(&mut self, name: &str, entries: &[((u32, NetKey), V)]) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, NetKey, V> = LpmTrie::try_from(
            self.ebpf_mut()
                .map_mut(name)
                .with_context(|| format!("map {name} missing"))?,
        )?;
        for &((prefix, addr), value) in entries {
            map.insert(&Key::new(prefix, addr), value, 0)
                .with_context(|| {
                    format!(
                        "cannot add to {name} (it holds {} networks at most)",
                        names::NETWORK_SLOTS
                    )
                })?;
        }
        Ok(())
    }

    /// Blocks a network until `until_ns` (CLOCK_MONOTONIC; u64::MAX: until
    /// unblocked), effective on the next packet.
    pub fn block(&mut self, net: (u32, NetKey), until_ns: u64) -> Result<()> {
        self.add_lpm(names::BLOCKS, &[(net, until_ns)])?;
        let mut config = self.config()?;
        if !config.has(config_flags::HAS_BLOCKS) {
            config.flags |= config_flags::HAS_BLOCKS;
            self.set_config(&config)?;
        }
        Ok(())
    }

    /// Lifts a block; false if there was none for exactly this network.
    pub fn unblock(&mut self, net: (u32, NetKey)) -> Result<bool> {
        let mut map: LpmTrie<&mut MapData, NetKey, u64> = LpmTrie::try_from(
            self.ebpf_mut()
                .map_mut(names::BLOCKS)
                .context("map BLOCKS missing")?,
        )?;
        match map.remove(&Key::new(net.0, net.1)) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Blocks in the block list: (prefix length, network, deadline).
    pub fn blocks(&self) -> Result<Vec<(u32, NetKey, u64)>> {
        let map: LpmTrie<&MapData, NetKey, u64> = LpmTrie::try_from(
            self.ebpf()
                .map(names::BLOCKS)
                .context("map BLOCKS missing")?,
        )?;
        map.iter()
            .map(|e| {
                let (key, until) = e?;
                Ok((key.prefix_len(), key.data(), until))
            })
            .collect()
    }

    /// Every tracked client, in the map's order.
    pub fn clients(&self) -> Result<Vec<Client>> {
        // aya skips entries evicted between reading a key and its value.
        self.clients_map()?
            .iter()
            .map(|entry| {
                let (key, state) = entry?;
                Ok(Client {
                    addr: key.ip(),
                    state,
                })
            })
            .collect()
    }

    /// The policy in force.
    pub fn config(&self) -> Result<Config> {
        let map: Array<&MapData, Config> = Array::try_from(
            self.ebpf()
                .map(names::CONFIG)
                .context("map CONFIG missing")?,
        )?;
        Ok(map.get(&0, 0)?)
    }

    /// The state of the client `addr` belongs to (IPv6 addresses share their
    /// bucket, per the policy's IPv6 prefix), if tracked.
    pub fn client(&self, addr: IpAddr) -> Result<Option<ClientState>> {
        let key = ClientKey::from(addr).bucketed(self.config()?.ipv6_prefix);
        match self.clients_map()?.get(&key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn clients_map(&self) -> Result<HashMap<&MapData, ClientKey, ClientState>> {
        let map = self
            .ebpf()
            .map(names::CLIENTS)
            .context("map CLIENTS missing")?;
        Ok(HashMap::try_from(map)?)
    }

    /// The verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        self.sum_per_cpu(names::COUNTERS, &mut out.slots)?;
        Ok(out)
    }

    /// An event counter, summed over CPUs.
    pub fn event(&self, event: Event) -> Result<u64> {
        let mut slots = [0u64; counters::EVENT_SLOTS as usize];
        self.sum_per_cpu(names::EVENTS, &mut slots)?;
        Ok(slots[event as usize])
    }

    fn sum_per_cpu(&self, name: &str, totals: &mut [u64]) -> Result<()> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf()
                .map(name)
                .with_context(|| format!("map {name} missing"))?,
        )?;
        for (slot, total) in totals.iter_mut().enumerate() {
            *total = map.get(&(slot as u32), 0)?.iter().sum();
        }
        Ok(())
    }
}
