//! The one userspace writer of kernel verdicts: blocks and their expiry.
//! Detectors' findings (`--require-auth block`) and the operator's `block` and
//! `unblock` both come through here; nothing else in userspace writes the
//! block list or a client's block. (The policy itself, limits and lists, is
//! written once at start by the daemon and by `api-guard limit`.)

use std::{net::IpAddr, time::Duration};

use anyhow::Result;
use api_guard_common::{client::ClientKey, maps as names};

use crate::{
    clock::monotonic_ns,
    detect::Finding,
    kernel::{KernelMaps, LpmKey, MapSet},
    policy::Network,
};

/// The deadline of a block that lasts `duration` from now (CLOCK_MONOTONIC
/// ns); `None`: until unblocked (`u64::MAX`, which no timed block reaches).
pub fn deadline(duration: Option<Duration>) -> u64 {
    match duration {
        Some(d) => monotonic_ns()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .min(u64::MAX - 1),
        None => u64::MAX,
    }
}

/// Blocks `net` until `until_ns`, effective on the next packet.
///
/// The kernel's trie answers with the longest matching prefix only, so a
/// narrower block that ends first would hide a broader one still in force. The
/// invariant kept here: a block never ends before any block that contains it.
/// So `net` lasts at least as long as the broader blocks around it, and the
/// narrower blocks inside it at least as long as `net`.
pub fn block(maps: &mut impl KernelMaps, net: LpmKey, until_ns: u64) -> Result<()> {
    let blocks = maps.blocks()?;
    let until = blocks
        .iter()
        .filter(|(p, a, _)| contains((*p, *a), net))
        .map(|(_, _, u)| *u)
        .fold(until_ns, u64::max);
    maps.block(net, until)?;
    for (p, a, u) in blocks {
        if (p, a) != net && contains(net, (p, a)) && u < until {
            maps.block((p, a), until)?;
        }
    }
    Ok(())
}

/// Whether network `outer` holds all of `inner`.
fn contains(outer: LpmKey, inner: LpmKey) -> bool {
    let mut masked = inner.1;
    api_guard_common::network::mask(&mut masked, outer.0);
    outer.0 <= inner.0 && masked == outer.1
}

/// Lifts the block on exactly `net`, and the automatic blocks of the clients
/// inside it: (whether `net` itself was blocked, client blocks lifted).
pub fn unblock(maps: &mut impl KernelMaps, net: &Network) -> Result<(bool, usize)> {
    let listed = maps.unblock(net.lpm_key())?;
    let clients = maps.clear_client_blocks(net.0, monotonic_ns())?;
    Ok((listed, clients))
}

/// The daemon's enforcer: acts on findings, and removes expired blocks, through
/// map handles of its own.
pub struct Enforcer {
    maps: MapSet,
    block_for: Option<Duration>,
    ipv6_prefix: u8,
    /// The blocks this daemon's findings made, with their deadlines: at most
    /// [`FINDING_BLOCKS`], so spoofed findings cannot fill the block list.
    made: std::collections::HashMap<LpmKey, u64>,
    cap: usize,
    /// Findings not acted on because `made` was full.
    pub refused: u64,
}

/// Blocks that findings may hold at once: half the block list, the other half
/// is the operators'.
pub const FINDING_BLOCKS: usize = (api_guard_common::maps::NETWORK_SLOTS / 2) as usize;

impl Enforcer {
    /// The maps it writes.
    pub const MAPS: [&'static str; 3] = [names::BLOCKS, names::CONFIG, names::PENALTIES];

    pub fn new(maps: MapSet, block_for: Option<Duration>, ipv6_prefix: u8) -> Self {
        Self::with_finding_blocks(maps, block_for, ipv6_prefix, FINDING_BLOCKS)
    }

    /// One whose findings may hold at most `cap` blocks (tests use a small one).
    pub fn with_finding_blocks(
        maps: MapSet,
        block_for: Option<Duration>,
        ipv6_prefix: u8,
        cap: usize,
    ) -> Self {
        Self {
            maps,
            block_for,
            ipv6_prefix,
            made: std::collections::HashMap::new(),
            cap,
            refused: 0,
        }
    }

    /// How long a finding's block lasts (None: findings block nothing).
    pub fn block_for(&self) -> Option<Duration> {
        self.block_for
    }

    /// Acts on a finding; true when it changed what the kernel does.
    pub fn apply(&mut self, finding: &Finding) -> Result<bool> {
        self.block_client(finding.client)
    }

    /// Blocks the client's bucket (the address, or its IPv6 prefix) for
    /// --block-for, never shortening a block already there (an operator's, say).
    fn block_client(&mut self, client: IpAddr) -> Result<bool> {
        let Some(block_for) = self.block_for else {
            return Ok(false);
        };
        let key = ClientKey::from(client).bucketed(u32::from(self.ipv6_prefix));
        let prefix = if client.is_ipv4() {
            128
        } else {
            u32::from(self.ipv6_prefix)
        };
        let until = deadline(Some(block_for));
        if self
            .maps
            .blocks()?
            .iter()
            .any(|(p, a, u)| *p == prefix && *a == key.addr && *u >= until)
        {
            return Ok(false);
        }
        let now = monotonic_ns();
        self.made.retain(|_, u| *u > now);
        if self.made.len() >= self.cap && !self.made.contains_key(&(prefix, key.addr)) {
            self.refused += 1;
            tracing::warn!(
                client = %client,
                "not blocked: findings already hold {} blocks (the rest of the block list is kept for operators)",
                self.cap
            );
            return Ok(false);
        }
        block(&mut self.maps, (prefix, key.addr), until)?;
        self.made.insert((prefix, key.addr), until);
        Ok(true)
    }

    /// Removes blocks whose deadline has passed, and penalties that say
    /// nothing any more; returns how many blocks.
    pub fn expire(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        self.maps.prune_penalties(now)?;
        self.maps.prune_blocks(now)
    }
}

pub mod fleet;
