//! `api-guard limit`: per-network request limits on a running daemon.

use std::{io::Write, path::Path};

use anyhow::{Context as _, Result, bail};
use api_guard_common::{
    config::{Limit, flags},
    keys::{KeyPolicy, user::RouteLimit},
};

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

/// `api-guard limit --key-rate N[:B]`, `--route SPEC`, `--remove-route
/// 'METHOD /prefix'`: the key and route limits in `KEY_POLICY`, which the
/// kernel reads on the next packet.
pub fn keys(
    pin_dir: &Path,
    key_rate: Option<(u32, u32)>,
    route: Option<&RouteLimit>,
    remove_route: Option<&str>,
    out: &mut impl Write,
) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let mut policy = maps.key_policy()?;
    let mut routes = policy.route_limits();
    if let Some((rate, burst)) = key_rate {
        if policy.name_len == 0 {
            bail!(
                "the daemon has no --key-header: a key limit needs to know where the key is (restart it with --key-header)"
            );
        }
        policy.key_limit = Limit::per_second(u64::from(rate), u64::from(burst));
    }
    if let Some(spec) = remove_route {
        let (method, prefix) = spec
            .trim()
            .split_once(' ')
            .with_context(|| format!("{spec:?}: want 'METHOD /path/prefix'"))?;
        let before = routes.len();
        routes.retain(|r| !(r.method == method && r.prefix == prefix.trim()));
        if routes.len() == before {
            bail!("no route limit on exactly {spec:?}");
        }
    }
    if let Some(r) = route {
        routes.retain(|u| !u.same_route(r));
        routes.push(r.clone());
    }
    let key_header = (policy.name_len > 0).then(|| {
        let n = policy.name_len as usize - 1;
        String::from_utf8_lossy(&policy.name[..n]).into_owned()
    });
    let mut next =
        KeyPolicy::build(key_header.as_deref(), None, &routes).map_err(anyhow::Error::msg)?;
    next.key_limit = policy.key_limit;
    let cfg = maps.config()?;
    if next.is_active() && cfg.has(flags::FORWARDED) {
        // As at start (policy.rs): a --trusted-hops proxy's requests would
        // pass these limits by.
        bail!(
            "the daemon runs with --trusted-hops: key and route limits are not applied to requests forwarded by its proxies (they would be bypassed through them); limit keys and routes at the proxy"
        );
    }
    maps.set_key_policy(&next)?;
    let active = next.is_active();
    // Read again after the policy went in: a daemon restarted meanwhile (with
    // --trusted-hops now) must not have its config written over with the old.
    let mut cfg = maps.config()?;
    if active && cfg.has(flags::FORWARDED) {
        maps.set_key_policy(&policy)?;
        bail!(
            "the daemon restarted with --trusted-hops meanwhile: the key and route limits were put back as they were"
        );
    }
    if active != cfg.has(flags::KEY_LIMITS) {
        cfg.flags ^= flags::KEY_LIMITS;
        maps.set_config(&cfg)?;
    }
    if let Some((rate, burst)) = key_rate {
        writeln!(out, "limited each API key to {rate}/s, bursts of {burst}")?;
    }
    if let Some(r) = route {
        writeln!(
            out,
            "limited {} {} to {}/s, bursts of {}",
            r.method, r.prefix, r.rate, r.burst
        )?;
    }
    if let Some(spec) = remove_route {
        writeln!(out, "removed the route limit on {spec}")?;
    }
    Ok(())
}
