//! The pin dir's layout: which maps are pinned under which names, how links and
//! locks are named. A leaf: paths only, no kernel calls, imports nothing of the
//! crate's, so the loader, the pins and the operator commands all read it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use api_guard_common::maps as names;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/api-guard";

/// The maps pinned for operators and for the next daemon. The tail-call table is
/// among them: the kernel empties a program array once no file holds it, which
/// would leave the attached programs of a stopped daemon without their tails.
pub const PINNED: [&str; 11] = [
    names::PORTS,
    names::CONFIG,
    names::CLIENTS,
    names::ALLOW,
    names::DENY,
    names::BLOCKS,
    names::OVERRIDES,
    names::COUNTERS,
    names::EVENTS,
    names::HEARTBEAT,
    names::TAILS,
];

/// Where the loader pins (or finds) each map of `PINNED` in `dir`.
pub fn pin_paths(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    PINNED.iter().map(|name| (*name, dir.join(name))).collect()
}

/// Pinned links are named `link_*`.
const LINK_PREFIX: &str = "link_";

/// Where the ingress link on `iface` is pinned.
pub fn ingress_link(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}ingress_{iface}"))
}

/// Where the connection tracker's cgroup link is pinned.
pub fn sockops_link(dir: &Path) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}sockops"))
}

/// The links pinned in `dir`.
pub fn links(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut links: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(LINK_PREFIX))
        .map(|e| e.path())
        .collect();
    links.sort();
    links
}

/// Where the locks live: /run is shared by every mount namespace on the host
/// (bpffs cannot hold a plain file).
pub const LOCK_DIR: &str = "/run/api-guard/locks";

/// The lock of a pin dir, named after its normalised absolute path (so
/// "/sys/fs/bpf/api-guard/" and "../bpf/api-guard" share one), with `%` and `/`
/// escaped so no two paths share a name.
pub fn lock_path(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut normal = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let escaped: String = normal
        .to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F");
    Path::new(LOCK_DIR).join(format!("{escaped}.lock"))
}
