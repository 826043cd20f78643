//! A private BPF filesystem for one test's pinned maps, so daemons in parallel
//! tests never share a pin directory. Unmounted and removed on drop.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;
use tempfile::TempDir;

use crate::{PREFIX, process::run};

pub struct BpfFs {
    dir: TempDir,
}

impl BpfFs {
    pub fn mount() -> Result<Self> {
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
