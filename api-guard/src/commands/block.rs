//! `api-guard block` and `unblock`: blocks the operator sets and lifts,
//! through `enforce`, the one writer of blocks.

use std::{io::Write, path::Path, time::Duration};

use anyhow::Result;

use crate::{enforce, kernel::pins::Pinned, policy::Network};

/// `api-guard block CIDR [--for D]`.
pub fn block(
    pin_dir: &Path,
    net: &Network,
    duration: Option<Duration>,
    out: &mut impl Write,
) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    enforce::block(&mut maps, net.lpm_key(), enforce::deadline(duration))?;
    match duration {
        Some(d) => writeln!(out, "blocked {net} for {}", humantime::format_duration(d))?,
        None => writeln!(out, "blocked {net} until unblocked")?,
    }
    Ok(())
}

/// `api-guard unblock CIDR`: the operator's block on it, and the automatic
/// blocks of the clients inside it.
pub fn unblock(pin_dir: &Path, net: &Network, out: &mut impl Write) -> Result<()> {
    let mut maps = Pinned::open(pin_dir)?;
    let (listed, clients) = enforce::unblock(&mut maps, net)?;
    writeln!(
        out,
        "unblocked {net}: {} network block, {clients} client block(s) lifted",
        if listed { "1" } else { "no" }
    )?;
    Ok(())
}
