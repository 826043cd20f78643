//! `api-guard limit`: per-network request limits on a running daemon.

use std::{io::Write, path::Path};

use anyhow::Result;
use api_guard_common::config::{Limit, flags};

use crate::{
    kernel::{KernelMaps, pins::Pinned},
    policy::Network,
};

/// `api-guard limit CIDR --rate R [--burst B]`.
pub fn limit(
    pin_dir: &Path,
    net: &Network,
    rate: u32,
    burst: Option<u32>,
    out: &mut impl Write,
) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let burst = burst.unwrap_or(rate);
    maps.add_overrides(&[(
        net.lpm_key(),
        Limit::per_second(u64::from(rate), u64::from(burst)),
    )])?;
    let mut cfg = maps.config()?;
    if !cfg.has(flags::HAS_OVERRIDES) {
        cfg.flags |= flags::HAS_OVERRIDES;
        maps.set_config(&cfg)?;
    }
    writeln!(out, "limited {net} to {rate}/s, bursts of {burst}")?;
    Ok(())
}

/// `api-guard limit --remove CIDR`.
pub fn remove_limit(pin_dir: &Path, net: &Network, out: &mut impl Write) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    if maps.remove_override(net.lpm_key())? {
        writeln!(out, "removed the limit on {net}")?;
    } else {
        writeln!(out, "no limit on exactly {net}")?;
    }
    Ok(())
}
