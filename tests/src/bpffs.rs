//! A private BPF filesystem for one test's pinned maps, so daemons in parallel
//! tests never share a pin directory. Unmounted and removed on drop.
//!
//! A daemon also takes a lock per pin dir, in the directory `API_GUARD_LOCK_DIR`
//! names: `cargo xtask test` sets it to one of the run's own, and without it
//! no bpffs is mounted, so that no test takes locks in the host's
//! /run/api-guard/locks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, ensure};
use tempfile::TempDir;

use crate::{PREFIX, process::run};

/// The variable naming the daemon's lock directory (api-guard/src/pins.rs).
pub const LOCK_DIR_ENV: &str = "API_GUARD_LOCK_DIR";

pub struct BpfFs {
    dir: TempDir,
}

impl BpfFs {
    pub fn mount() -> Result<Self> {
        ensure!(
            std::env::var_os(LOCK_DIR_ENV).is_some_and(|d| !d.is_empty()),
            "{LOCK_DIR_ENV} is not set: the daemons would take their locks in the host's \
             /run/api-guard/locks. Run the tests with `cargo xtask test`, or set it to a \
             directory of your own"
        );
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path()))?;
        Ok(Self { dir })
    }

    /// The pin directory for a daemon (created by the daemon inside the mount).
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("pins")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // Lazy: a daemon still exiting may hold the mount for a moment.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
