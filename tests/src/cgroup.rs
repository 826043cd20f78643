//! A cgroup v2 of the test's own, for the connection tracker (`--max-conns`
//! attaches sock_ops to a cgroup, and it sees only sockets made inside it), so
//! that no test attaches anything to the host's cgroup root.
//!
//! The hierarchy is mounted on a directory of the test's own under the temporary
//! directory, not found under /sys: `ip netns exec` remounts /sys, hiding the
//! host's cgroup mounts from the daemon, but not other directories. The cgroup
//! (its processes killed) and the mount go on drop.

use std::{
    ffi::CString,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tempfile::TempDir;

use crate::{PREFIX, process::run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cgroup v2 hierarchy mounted on a temporary directory; unmounted on drop.
pub struct Cgroup2Mount {
    dir: TempDir,
}

impl Cgroup2Mount {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        run(Command::new("mount")
            .args(["-t", "cgroup2", "cgroup2"])
            .arg(dir.path()))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cgroup2Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A cgroup directly under the root, named with the harness prefix. On drop,
/// whatever still runs in it is killed and it is removed.
pub struct TestCgroup {
    path: PathBuf,
    // Dropped after the cgroup is gone.
    _mount: Cgroup2Mount,
}

impl TestCgroup {
    /// `role` only makes the name readable.
    pub fn new(role: &str) -> Result<Self> {
        let mount = Cgroup2Mount::new()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = mount
            .path()
            .join(format!("{PREFIX}{}-{n}-{role}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            _mount: mount,
        })
    }

    /// The cgroup's directory, valid in every mount namespace the test makes
    /// (for `--cgroup`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup before it execs, so that every
    /// socket it makes belongs to it.
    pub fn enter_on_exec(&self, cmd: &mut Command) -> Result<()> {
        let procs = CString::new(
            self.path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )?;
        // SAFETY: between fork and exec only open, write and close run: no
        // allocation, no lock (the path was made before the fork).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever the test left in it dies (cgroup.kill: Linux 5.14+); the
        // cgroup can go once the kernel has reaped them.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..500 {
            if !self.path.exists() || fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove the cgroup {}", self.path.display());
    }
}
