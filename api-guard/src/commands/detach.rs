//! `api-guard detach`: removes a stopped daemon's pins, which detaches the
//! programs a `--fail-mode closed` daemon left enforcing.

use std::{io::Write, path::Path};

use anyhow::Result;

use crate::kernel::pins;

pub fn detach(pin_dir: &Path, out: &mut impl Write) -> Result<()> {
    let removed = pins::detach(pin_dir)?;
    writeln!(
        out,
        "removed {removed} pins (links and maps) from {}",
        pin_dir.display()
    )?;
    Ok(())
}
