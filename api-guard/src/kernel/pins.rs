//! The pin directory: the daemon's state on bpffs. The daemon claims it (an
//! exclusive lock, so two daemons never share one) and pins its maps there, for
//! operator commands and for the next daemon to adopt, and its attachments (bpf
//! links), so that the programs outlive the daemon per `--fail-mode`. Commands
//! open the pins and find out from the lock whether a daemon is running.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData};

use super::{
    layout::{PINNED, links, lock_dir, lock_path},
    source::{MapSet, MapSource},
};
use crate::failure::Failure;

/// The links a daemon attached or took over, and what becomes of them when it
/// exits, however it exits: `--fail-mode open` unpins every link (detaching the
/// programs), `closed` leaves them enforcing. A daemon that fails before it is
/// ready unpins the links it made anew in either mode: a failed start leaves
/// nothing new attached.
pub struct Links {
    dir: PathBuf,
    keep_on_exit: bool,
    wanted: Vec<PathBuf>,
    made: Vec<PathBuf>,
    ready: bool,
}

impl Links {
    pub fn new(dir: &Path, keep_on_exit: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keep_on_exit,
            wanted: Vec::new(),
            made: Vec::new(),
            ready: false,
        }
    }

    /// A link pinned at `pin`, made by this daemon (`made`) or taken over.
    pub fn record(&mut self, pin: PathBuf, made: bool) {
        if made {
            self.made.push(pin.clone());
        }
        self.wanted.push(pin);
    }

    /// Everything is attached: unpins the links an earlier daemon left that
    /// these flags do not ask for. Returns how many went.
    pub fn ready(&mut self) -> Result<usize> {
        self.ready = true;
        remove_links(&self.dir, &self.wanted)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let doomed = if !self.keep_on_exit {
            links(&self.dir)
        } else if !self.ready {
            std::mem::take(&mut self.made)
        } else {
            Vec::new()
        };
        for pin in doomed {
            if let Err(e) = fs::remove_file(&pin)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(pin = %pin.display(), "cannot unpin: {e}");
            }
        }
    }
}

/// Unpins the links in `dir` except `keep`: each program attached only through
/// its pin is detached. Returns how many went.
pub fn remove_links(dir: &Path, keep: &[PathBuf]) -> Result<usize> {
    let mut removed = 0;
    for link in links(dir) {
        if keep.contains(&link) {
            continue;
        }
        fs::remove_file(&link).with_context(|| format!("cannot unpin {}", link.display()))?;
        removed += 1;
    }
    Ok(removed)
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Takes the lock non-blockingly; Ok(None) if another process holds it.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let locks = lock_dir();
    fs::create_dir_all(&locks).with_context(|| format!("cannot create {}", locks.display()))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock {}", path.display()))?;
    // SAFETY: flock on an fd we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err).with_context(|| format!("cannot lock {}", path.display()))
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs writes only into st.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir`'s parent is on bpffs, mounting /sys/fs/bpf if that is where
/// it should be and nothing is mounted there.
fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let fail = Failure::PinDir;
    if parent == Path::new("/sys/fs/bpf") {
        // SAFETY: constant NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            tracing::info!("mounted bpffs at /sys/fs/bpf");
            return Ok(());
        }
        return Err(fail(format!(
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {}",
            std::io::Error::last_os_error()
        ))
        .into());
    }
    // No mount command naming the parent: it may be /proc or /, and mounting
    // over it would hide what is there.
    Err(fail(format!(
        "--pin-dir {} is not on a BPF filesystem: use a directory under /sys/fs/bpf, or mount bpffs on an empty directory (mount -t bpf bpf DIR)",
        dir.display(),
    ))
    .into())
}

/// A daemon's claim on a pin directory. The maps pinned there (by the loader,
/// see `LoadOptions::pin_dir`) outlive the daemon: the next one adopts them, with
/// their buckets, blocks, limits and counters. `api-guard detach` removes them.
pub struct PinDir {
    dir: PathBuf,
    _lock: File,
}

impl PinDir {
    /// Locks `dir` for this daemon (creating it, root-only).
    pub fn claim(dir: &Path) -> Result<Self> {
        ensure_bpffs(dir)?;
        // An operator command probing the lock holds it for a moment: retry briefly.
        let mut lock = None;
        for _ in 0..10 {
            lock = try_lock(&lock_path(dir))?;
            if lock.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let lock = lock.ok_or_else(|| Failure::PinDirTaken(dir.to_path_buf()))?;
        let unusable = |e: std::io::Error| {
            Failure::PinDir(format!("cannot use the pin dir {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(unusable)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(unusable)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this directory holds state from an earlier daemon.
    pub fn has_state(&self) -> bool {
        PINNED.iter().any(|name| self.dir.join(name).exists()) || !links(&self.dir).is_empty()
    }

    /// Makes every pin readable by root only (the loader creates them).
    pub fn restrict(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
        }
        Ok(())
    }
}

/// `api-guard detach`: removes the pins of a stopped daemon, its pinned links
/// (which detaches the programs left enforcing) and its maps. Refuses while a
/// daemon runs on the directory.
pub fn detach(dir: &Path) -> Result<usize> {
    let _lock =
        try_lock(&lock_path(dir))?.ok_or_else(|| Failure::DaemonRunning(dir.to_path_buf()))?;
    let mut removed = remove_links(dir, &[])?;
    for name in PINNED {
        if fs::remove_file(dir.join(name)).is_ok() {
            removed += 1;
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

/// Who acts on the state in a pin dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A daemon holds it.
    Daemon,
    /// No daemon, but the programs a `--fail-mode closed` daemon left attached
    /// keep enforcing from it.
    Orphans,
    Nobody,
}

/// Who acts on `dir` now.
pub fn holder(dir: &Path) -> Holder {
    if matches!(try_lock(&lock_path(dir)), Ok(None)) {
        Holder::Daemon
    } else if links(dir).is_empty() {
        Holder::Nobody
    } else {
        Holder::Orphans
    }
}

/// A running daemon's maps, opened from their pins.
pub struct Pinned(MapSet);

impl Pinned {
    pub fn open(dir: &Path) -> Result<Self> {
        let not_running = || Failure::NotRunning(dir.to_path_buf());
        match holder(dir) {
            Holder::Daemon => {}
            // Programs still enforce: an operator must be able to see and lift
            // what they do without starting a daemon.
            Holder::Orphans => tracing::warn!(
                "no daemon is running with --pin-dir {}: acting on the programs a stopped daemon left attached",
                dir.display()
            ),
            Holder::Nobody => return Err(not_running().into()),
        }
        let mut maps = std::collections::HashMap::new();
        for name in PINNED {
            let data = MapData::from_pin(dir.join(name)).map_err(|_| not_running())?;
            maps.insert(name, Map::from_map_data(data)?);
        }
        Ok(Self(MapSet::new("pinned", maps)))
    }
}

impl MapSource for Pinned {
    fn map(&self, name: &str) -> Result<&Map> {
        self.0.map(name)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.0.map_mut(name)
    }
}
