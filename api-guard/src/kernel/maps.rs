//! Typed access to the kernel's maps, by the names in `api_guard_common::maps`,
//! from any [`MapSource`].

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use api_guard_common::{
    client::{ClientKey, ClientState, Penalty},
    config::flags as config_flags,
    config::{Config, Limit},
    counters::{self, Event, Kind, Verdict},
    keys::{BucketKey, KeyParse, KeyPolicy},
    maps as names,
    network::NetKey,
    ports,
};
use aya::maps::{
    Array, HashMap, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;

use super::{source::MapSource, sys};

/// A network as the LPM tries key it: (prefix length, IPv4-mapped address).
pub type LpmKey = (u32, NetKey);

/// What the policy maps hold: what `policy` compiles the flags into.
#[derive(Clone, Debug, Default)]
pub struct PolicyTables {
    pub allow: Vec<LpmKey>,
    pub deny: Vec<LpmKey>,
    /// Per-network request limits.
    pub limits: Vec<(LpmKey, Limit)>,
    /// `--trusted-proxy` networks.
    pub trusted_proxies: Vec<LpmKey>,
    /// Key and route limits.
    pub keys: KeyPolicy,
    pub config: Config,
}

/// One client as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    pub state: ClientState,
}

/// Verdict counters summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    slots: [u64; counters::SLOTS as usize],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            slots: [0; counters::SLOTS as usize],
        }
    }
}

impl Counters {
    pub fn get(&self, kind: Kind, verdict: Verdict) -> u64 {
        self.slots[counters::index(kind, verdict) as usize]
    }
}

/// Typed access to the kernel's maps, from any [`MapSource`].
pub trait KernelMaps: MapSource {
    /// Watches exactly these ports.
    fn watch_ports(&mut self, watched: &[u16]) -> Result<()> {
        let mut map: Array<&mut MapData, u8> = Array::try_from(self.map_mut(names::PORTS)?)?;
        // Exactly these: a port an earlier daemon watched (adopted pins) and the
        // flags no longer name stops being watched.
        for port in 0..names::PORT_SLOTS {
            let want = u16::try_from(port).is_ok_and(|p| watched.contains(&p));
            if !want && map.get(&port, 0).is_ok_and(|f| f != 0) {
                map.set(port, 0, 0)
                    .with_context(|| format!("cannot stop watching port {port}"))?;
            }
        }
        for &port in watched {
            map.set(u32::from(port), ports::WATCHED, 0)
                .with_context(|| format!("cannot watch port {port}"))?;
        }
        Ok(())
    }

    /// Replaces the policy; programs use it from the next packet on.
    fn set_config(&mut self, config: &Config) -> Result<()> {
        let mut map: Array<&mut MapData, Config> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        map.set(0, *config, 0).context("cannot write the policy")?;
        Ok(())
    }

    /// Records a sign of life at `now_ns` (CLOCK_MONOTONIC), for `--fail-mode open`.
    fn beat(&mut self, now_ns: u64) -> Result<()> {
        let mut map: Array<&mut MapData, u64> = Array::try_from(self.map_mut(names::HEARTBEAT)?)?;
        map.set(0, now_ns, 0)
            .context("cannot write the heartbeat")?;
        Ok(())
    }

    /// The last sign of life (CLOCK_MONOTONIC ns; 0 if there never was one).
    fn last_beat(&self) -> Result<u64> {
        let map: Array<&MapData, u64> = Array::try_from(self.map(names::HEARTBEAT)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// Pushes a policy: lists and per-network limits first, then the config that
    /// switches them on. The allow and deny lists and the per-network limits are
    /// replaced: the flags state them exactly (a limit an operator added to an
    /// earlier daemon ends with it). Blocks are kept, and expire on their own.
    fn apply_policy(&mut self, tables: &PolicyTables) -> Result<()> {
        self.clear_networks(names::ALLOW)?;
        self.clear_networks(names::DENY)?;
        self.clear_lpm::<Limit>(names::OVERRIDES)?;
        self.add_networks(names::ALLOW, &tables.allow)?;
        self.add_networks(names::DENY, &tables.deny)?;
        self.add_overrides(&tables.limits)?;
        self.clear_networks(names::TRUSTED_PROXIES)?;
        self.add_networks(names::TRUSTED_PROXIES, &tables.trusted_proxies)?;
        let mut config = tables.config;
        if !tables.limits.is_empty() {
            config.flags |= config_flags::HAS_OVERRIDES;
        }
        if !self.lpm_is_empty::<u64>(names::BLOCKS)? {
            config.flags |= config_flags::HAS_BLOCKS;
        }
        self.set_key_policy(&tables.keys)?;
        if tables.keys.is_active() {
            config.flags |= config_flags::KEY_LIMITS;
        }
        self.set_config(&config)
    }

    /// The key and route policy (`KEY_POLICY`).
    fn key_policy(&self) -> Result<KeyPolicy> {
        let map: Array<&MapData, KeyPolicy> = Array::try_from(self.map(names::KEY_POLICY)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// Replaces the key and route policy; the next packet reads it.
    fn set_key_policy(&mut self, policy: &KeyPolicy) -> Result<()> {
        let mut map: Array<&mut MapData, KeyPolicy> =
            Array::try_from(self.map_mut(names::KEY_POLICY)?)?;
        map.set(0, *policy, 0)
            .context("cannot write the key and route limits")?;
        Ok(())
    }

    /// The keyed hash's secret (`KEY_SECRET`; the loader draws it).
    fn set_key_secret(&mut self, secret: &[u64; 2]) -> Result<()> {
        let mut map: Array<&mut MapData, [u64; 2]> =
            Array::try_from(self.map_mut(names::KEY_SECRET)?)?;
        map.set(0, *secret, 0)
            .context("cannot write the key hash's secret")?;
        Ok(())
    }

    /// The keyed hash's secret (for the daemon's own fingerprints; never
    /// logged).
    fn key_secret(&self) -> Result<[u64; 2]> {
        let map: Array<&MapData, [u64; 2]> = Array::try_from(self.map(names::KEY_SECRET)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// Key and route buckets with their GCRA clocks.
    fn limit_buckets(&self) -> Result<Vec<(BucketKey, u64)>> {
        let map: HashMap<&MapData, BucketKey, u64> =
            HashMap::try_from(self.map(names::LIMIT_BUCKETS)?)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// Forwarded clients reported over their limit on pooled proxy
    /// connections (`--trusted-hops`): their bucketed address, and when and
    /// how often.
    fn forwarded_reported(
        &self,
    ) -> Result<Vec<(ClientKey, api_guard_common::forwarded::Reported)>> {
        let map: HashMap<&MapData, ClientKey, api_guard_common::forwarded::Reported> =
            HashMap::try_from(self.map(names::FWD_REPORTED)?)?;
        Ok(map.iter().filter_map(|e| e.ok()).collect())
    }

    /// The key parser's state of each connection (to check that it holds no
    /// byte of a key).
    fn key_conns(&self) -> Result<Vec<KeyParse>> {
        const CONN_KEY: usize = core::mem::size_of::<api_guard_common::conn::ConnKey>();
        let map: HashMap<&MapData, [u8; CONN_KEY], KeyParse> =
            HashMap::try_from(self.map(names::KEY_CONNS)?)?;
        Ok(map.iter().filter_map(|e| e.ok()).map(|(_, v)| v).collect())
    }

    fn lpm_is_empty<V: aya::Pod>(&self, name: &str) -> Result<bool> {
        let map: LpmTrie<&MapData, NetKey, V> = LpmTrie::try_from(self.map(name)?)?;
        Ok(map.keys().next().is_none())
    }

    /// Adds networks to the allow (`names::ALLOW`) or deny (`names::DENY`) list.
    fn add_networks(&mut self, list: &str, nets: &[LpmKey]) -> Result<()> {
        let entries: Vec<(LpmKey, u8)> = nets.iter().map(|&n| (n, 1)).collect();
        self.add_lpm(list, &entries)
    }

    /// Empties the allow or deny list (the flags own them: a restart with other
    /// flags replaces them).
    fn clear_networks(&mut self, list: &str) -> Result<()> {
        self.clear_lpm::<u8>(list)
    }

    fn clear_lpm<V: aya::Pod>(&mut self, name: &str) -> Result<()> {
        let keys: Vec<Key<NetKey>> = {
            let map: LpmTrie<&MapData, NetKey, V> = LpmTrie::try_from(self.map(name)?)?;
            map.keys().collect::<Result<_, _>>()?
        };
        for k in keys {
            self.remove_lpm::<V>(name, (k.prefix_len(), k.data()))?;
        }
        Ok(())
    }

    /// Adds per-network request limits.
    fn add_overrides(&mut self, limits: &[(LpmKey, Limit)]) -> Result<()> {
        self.add_lpm(names::OVERRIDES, limits)
    }

    fn add_lpm<V: aya::Pod>(&mut self, name: &str, entries: &[(LpmKey, V)]) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, NetKey, V> = LpmTrie::try_from(self.map_mut(name)?)?;
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
    fn block(&mut self, net: LpmKey, until_ns: u64) -> Result<()> {
        self.add_lpm(names::BLOCKS, &[(net, until_ns)])
            .map_err(|e| {
                if e.chain().any(|c| {
                    c.downcast_ref::<aya::maps::MapError>().is_some_and(|m| {
                        matches!(m, aya::maps::MapError::SyscallError(s)
                        if matches!(s.io_error.raw_os_error(), Some(libc::ENOSPC | libc::E2BIG)))
                    })
                }) {
                    anyhow::anyhow!(
                        "the block list is full ({} networks); lift some with `api-guard unblock`",
                        api_guard_common::maps::NETWORK_SLOTS
                    )
                } else {
                    e
                }
            })?;
        let mut config = self.config()?;
        if !config.has(config_flags::HAS_BLOCKS) {
            config.flags |= config_flags::HAS_BLOCKS;
            self.set_config(&config)?;
        }
        Ok(())
    }

    /// Lifts a block; false if there was none for exactly this network.
    fn unblock(&mut self, net: LpmKey) -> Result<bool> {
        self.remove_lpm::<u64>(names::BLOCKS, net)
    }

    /// Removes a per-network limit; false if there was none for exactly it.
    fn remove_override(&mut self, net: LpmKey) -> Result<bool> {
        self.remove_lpm::<Limit>(names::OVERRIDES, net)
    }

    fn remove_lpm<V: aya::Pod>(&mut self, name: &str, net: LpmKey) -> Result<bool> {
        // aya checks the value size even for a removal.
        let mut map: LpmTrie<&mut MapData, NetKey, V> = LpmTrie::try_from(self.map_mut(name)?)?;
        match map.remove(&Key::new(net.0, net.1)) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the `--block-for` blocks in force of every client whose bucket
    /// overlaps `net`; returns how many.
    fn clear_client_blocks(&mut self, net: IpNet, now_ns: u64) -> Result<usize> {
        let prefix = self.config()?.ipv6_prefix as u8;
        let blocked: Vec<Client> = self
            .clients()?
            .into_iter()
            .filter(|c| c.state.blocked_until_ns > now_ns && overlaps(net, c.addr, prefix))
            .collect();
        let mut map: HashMap<&mut MapData, ClientKey, ClientState> =
            HashMap::try_from(self.map_mut(names::CLIENTS)?)?;
        for c in &blocked {
            // Read again and write back at once: the kernel may have counted since.
            let key = ClientKey::from(c.addr);
            if let Ok(mut state) = map.get(&key, 0) {
                state.blocked_until_ns = 0;
                map.insert(key, state, 0)?;
            }
        }
        // And the copies that outlive eviction, or the block would come back with
        // the client's next entry.
        let mut penalties: HashMap<&mut MapData, ClientKey, Penalty> =
            HashMap::try_from(self.map_mut(names::PENALTIES)?)?;
        let lifted: Vec<(ClientKey, Penalty)> = penalties
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, p)| p.blocked_until_ns > now_ns && overlaps(net, k.ip(), prefix))
            .collect();
        for (key, mut p) in lifted {
            p.blocked_until_ns = 0;
            penalties.insert(key, p, 0)?;
        }
        Ok(blocked.len())
    }

    /// Removes penalties that say nothing any more (their block over, their
    /// buckets out of debt); returns how many. The kernel only drops one when
    /// it restores its client, so this keeps the table from filling with the
    /// past.
    fn prune_penalties(&mut self, now_ns: u64) -> Result<usize> {
        let mut map: HashMap<&mut MapData, ClientKey, Penalty> =
            HashMap::try_from(self.map_mut(names::PENALTIES)?)?;
        let stale: Vec<ClientKey> = map
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, p)| !p.in_force(now_ns))
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            match map.remove(k) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(stale.len())
    }

    /// Removes blocks whose deadline has passed; returns how many. An expired
    /// longer prefix would otherwise hide a broader block still in force.
    fn prune_blocks(&mut self, now_ns: u64) -> Result<usize> {
        let expired: Vec<LpmKey> = self
            .blocks()?
            .into_iter()
            .filter(|(_, _, until)| *until <= now_ns)
            .map(|(p, a, _)| (p, a))
            .collect();
        for net in &expired {
            self.unblock(*net)?;
        }
        Ok(expired.len())
    }

    /// Blocks in the block list: (prefix length, network, deadline).
    fn blocks(&self) -> Result<Vec<(u32, NetKey, u64)>> {
        let map: LpmTrie<&MapData, NetKey, u64> = LpmTrie::try_from(self.map(names::BLOCKS)?)?;
        map.iter()
            .map(|e| {
                let (key, until) = e?;
                Ok((key.prefix_len(), key.data(), until))
            })
            .collect()
    }

    /// Every tracked client, in the map's order.
    fn clients(&self) -> Result<Vec<Client>> {
        let mut out = Vec::new();
        if self.walk_clients(|c| out.push(c))? {
            Ok(out)
        } else {
            self.clients_one_by_one()
        }
    }

    /// How many clients are tracked, and how many of them are blocked at
    /// `now_ns`: a walk of the map that keeps nothing.
    fn client_counts(&self, now_ns: u64) -> Result<(usize, usize)> {
        let (mut tracked, mut blocked) = (0, 0);
        let mut count = |c: Client| {
            tracked += 1;
            blocked += usize::from(c.state.blocked_until_ns > now_ns);
        };
        if !self.walk_clients(&mut count)? {
            let all = self.clients_one_by_one()?;
            let blocked = all
                .iter()
                .filter(|c| c.state.blocked_until_ns > now_ns)
                .count();
            return Ok((all.len(), blocked));
        }
        Ok((tracked, blocked))
    }

    /// Hands every tracked client to `each` with batch lookups; false if the
    /// kernel has none (before 5.6), and nothing was handed.
    fn walk_clients(&self, mut each: impl FnMut(Client)) -> Result<bool> {
        let aya::maps::Map::LruHashMap(data) = self.map(names::CLIENTS)? else {
            anyhow::bail!("map CLIENTS is not an LRU hash");
        };
        let walked = sys::lookup_batch::<ClientKey, ClientState>(data, |keys, states| {
            for (key, state) in keys.iter().zip(states) {
                each(Client {
                    addr: key.ip(),
                    state: *state,
                });
            }
        });
        match walked {
            Ok(()) => Ok(true),
            // Kernels before 5.6 have no batch lookups.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("cannot read the client map")),
        }
    }

    /// The client map read one entry at a time: two syscalls a client, the
    /// fallback for kernels without batch lookups (and the benchmark's yardstick).
    fn clients_one_by_one(&self) -> Result<Vec<Client>> {
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
    fn config(&self) -> Result<Config> {
        let map: Array<&MapData, Config> = Array::try_from(self.map(names::CONFIG)?)?;
        Ok(map.get(&0, 0)?)
    }

    /// The state of the client `addr` belongs to (IPv6 addresses share their
    /// bucket, per the policy's IPv6 prefix), if tracked.
    fn client(&self, addr: IpAddr) -> Result<Option<ClientState>> {
        let key = ClientKey::from(addr).bucketed(self.config()?.ipv6_prefix);
        match self.clients_map()?.get(&key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A client's state by its (bucketed) key.
    fn client_by_key(&self, key: &ClientKey) -> Result<Option<ClientState>> {
        match self.clients_map()?.get(key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The forwarded clients over their limit now (`sinks::forwarded`).
    fn forwarded_over_limit(&self, now: u64) -> Result<Vec<crate::sinks::forwarded::OverLimit>> {
        let cfg = self.config()?;
        let reported = self.forwarded_reported()?;
        // The kernel charged each client against its most specific --limit
        // override (enforce.rs), else --rate.
        let overrides: Option<LpmTrie<&MapData, NetKey, Limit>> =
            if cfg.has(config_flags::HAS_OVERRIDES) {
                Some(LpmTrie::try_from(self.map(names::OVERRIDES)?)?)
            } else {
                None
            };
        let limit = |k: &ClientKey| {
            overrides
                .as_ref()
                .and_then(|m| m.get(&Key::new(128, k.addr), 0).ok())
                .unwrap_or(cfg.requests)
        };
        Ok(crate::sinks::forwarded::over_limit(
            &cfg,
            &reported,
            |k| self.client_by_key(k).ok().flatten(),
            limit,
            now,
        ))
    }

    fn clients_map(&self) -> Result<HashMap<&MapData, ClientKey, ClientState>> {
        let map = self.map(names::CLIENTS)?;
        Ok(HashMap::try_from(map)?)
    }

    /// The verdict counters, summed over CPUs.
    fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        self.sum_per_cpu(names::COUNTERS, &mut out.slots)?;
        Ok(out)
    }

    /// An event counter, summed over CPUs.
    fn event(&self, event: Event) -> Result<u64> {
        let mut slots = [0u64; counters::EVENT_SLOTS as usize];
        self.sum_per_cpu(names::EVENTS, &mut slots)?;
        Ok(slots[event as usize])
    }

    /// The TLS programs' event counters (`api_guard_common::tls::TlsEvent`),
    /// summed over CPUs.
    fn tls_events(&self) -> Result<api_guard_common::tls::TlsEventBlock> {
        let mut slots = [0u64; api_guard_common::tls::TLS_EVENT_SLOTS as usize];
        self.sum_per_cpu(api_guard_common::tls::TLS_EVENTS, &mut slots)?;
        Ok(slots)
    }

    /// What `--tls auto` found per (port, process): (port, pid, followed,
    /// the library or why not), by port and pid.
    fn tls_status(&self) -> Result<Vec<(u16, u32, bool, String)>> {
        use api_guard_common::tls::{STATUS_FOLLOWED, TLS_STATUS, TlsStatus, TlsStatusKey};
        let map: HashMap<&MapData, TlsStatusKey, TlsStatus> =
            HashMap::try_from(self.map(TLS_STATUS)?)?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry?;
            let text = v.text.get(..v.len as usize).unwrap_or(&v.text);
            out.push((
                k.port,
                k.pid,
                v.state == STATUS_FOLLOWED,
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
        out.sort();
        Ok(out)
    }

    /// Replaces what `tls_status` reads.
    fn set_tls_status(&mut self, entries: &[(u16, u32, bool, String)]) -> Result<()> {
        use api_guard_common::tls::{
            STATUS_FOLLOWED, STATUS_NOT_SEEN, STATUS_TEXT, TLS_STATUS, TlsStatus, TlsStatusKey,
        };
        let mut map: HashMap<&mut MapData, TlsStatusKey, TlsStatus> =
            HashMap::try_from(self.map_mut(TLS_STATUS)?)?;
        let keys: Vec<TlsStatusKey> = map.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            if !entries
                .iter()
                .any(|(p, pid, ..)| (*p, *pid) == (k.port, k.pid))
            {
                let _ = map.remove(&k);
            }
        }
        for (port, pid, followed, text) in entries {
            let mut v = TlsStatus {
                state: if *followed {
                    STATUS_FOLLOWED
                } else {
                    STATUS_NOT_SEEN
                },
                len: 0,
                text: [0; STATUS_TEXT],
            };
            // Cut at a character boundary.
            let mut n = text.len().min(STATUS_TEXT);
            while !text.is_char_boundary(n) {
                n -= 1;
            }
            v.text[..n].copy_from_slice(&text.as_bytes()[..n]);
            v.len = n as u32;
            let k = TlsStatusKey {
                port: *port,
                _pad: 0,
                pid: *pid,
            };
            map.insert(k, v, 0)
                .context("cannot record the TLS status (table full)")?;
        }
        Ok(())
    }

    /// What the detectors know per client (`api_guard_common::detect`).
    fn detect_clients(&self) -> Result<Vec<(IpAddr, api_guard_common::detect::DetectClient)>> {
        use api_guard_common::detect::{DETECT_CLIENTS, DetectClient};
        let map: HashMap<&MapData, ClientKey, DetectClient> =
            HashMap::try_from(self.map(DETECT_CLIENTS)?)?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry?;
            out.push((k.ip(), v));
        }
        Ok(out)
    }

    /// Replaces what `detect_clients` reads (at most `DETECT_SLOTS`; the rest
    /// is left out).
    fn set_detect_clients(
        &mut self,
        entries: &[(IpAddr, api_guard_common::detect::DetectClient)],
    ) -> Result<()> {
        use api_guard_common::detect::{DETECT_CLIENTS, DETECT_SLOTS, DetectClient};
        let mut map: HashMap<&mut MapData, ClientKey, DetectClient> =
            HashMap::try_from(self.map_mut(DETECT_CLIENTS)?)?;
        let keep: std::collections::HashSet<ClientKey> = entries
            .iter()
            .take(DETECT_SLOTS as usize)
            .map(|(ip, _)| ClientKey::from(*ip))
            .collect();
        let stale: Vec<ClientKey> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        for (ip, v) in entries.iter().take(DETECT_SLOTS as usize) {
            map.insert(ClientKey::from(*ip), *v, 0)
                .context("cannot record what the detectors know (table full)")?;
        }
        Ok(())
    }

    /// The flags of each watched port (`api_guard_common::ports`).
    fn port_flags(&self) -> Result<Vec<(u16, u8)>> {
        let map: Array<&MapData, u8> = Array::try_from(self.map(names::PORTS)?)?;
        let mut out = Vec::new();
        for port in 1..names::PORT_SLOTS {
            let f = map.get(&port, 0)?;
            if f != 0 {
                out.push((port as u16, f));
            }
        }
        Ok(out)
    }

    /// Sets the kernel's sample budget: `per_second` samples a second, with a
    /// second's worth of burst (None: no budget).
    fn set_sample_budget(&mut self, per_second: Option<u32>) -> Result<()> {
        use api_guard_common::budget::SampleBudget;
        let mut map: Array<&mut MapData, SampleBudget> =
            Array::try_from(self.map_mut(names::SAMPLE_BUDGET)?)?;
        let limit = per_second.map_or(Limit::NONE, |n| {
            Limit::per_second(u64::from(n), u64::from(n))
        });
        map.set(0, SampleBudget { tat: 0, limit }, 0)
            .context("cannot write the sample budget")?;
        Ok(())
    }

    /// The response counters (`RESPONSES`), summed over CPUs.
    fn responses(&self) -> Result<api_guard_common::exchange::ResponseBlock> {
        let mut slots = [0u64; api_guard_common::exchange::RESPONSE_SLOTS as usize];
        self.sum_per_cpu(names::RESPONSES, &mut slots)?;
        Ok(slots)
    }

    fn sum_per_cpu<const N: usize>(&self, name: &str, totals: &mut [u64; N]) -> Result<()> {
        // One entry per map: a block of N counters per CPU.
        let map: PerCpuArray<&MapData, [u64; N]> = PerCpuArray::try_from(self.map(name)?)?;
        for block in map.get(&0, 0)?.iter() {
            for (total, v) in totals.iter_mut().zip(block) {
                *total += v;
            }
        }
        Ok(())
    }
}

impl<T: MapSource> KernelMaps for T {}

/// Whether a map error means "no such key" (aya reports ENOENT from a delete as
/// a syscall error rather than `KeyNotFound`).
fn not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Whether `net` and the bucket of the client key `addr` share addresses (an
/// IPv6 key stands for its whole /prefix).
fn overlaps(net: IpNet, addr: IpAddr, ipv6_prefix: u8) -> bool {
    let bucket = match addr {
        IpAddr::V4(_) => ipnet::IpNet::from(addr),
        IpAddr::V6(v6) => {
            ipnet::Ipv6Net::new(v6, ipv6_prefix).map_or(ipnet::IpNet::from(addr), Into::into)
        }
    };
    net.contains(&bucket.network()) || bucket.contains(&net.network())
}
