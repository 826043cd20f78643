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
pub const PINNED: [&str; 25] = [
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
    names::CONNS,
    names::PENALTIES,
    names::OPEN_CONNS,
    api_guard_common::tls::TLS_STATUS,
    names::EXCHANGES,
    names::RESPONSES,
    names::TRUSTED_PROXIES,
    names::PROXY_CONNS,
    api_guard_common::detect::DETECT_CLIENTS,
    names::KEY_POLICY,
    names::LIMIT_BUCKETS,
    names::KEY_CONNS,
    names::FWD_CONNS,
    names::FWD_REPORTED,
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

/// Where the egress link on `iface` is pinned.
pub fn egress_link(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}egress_{iface}"))
}

/// Where the XDP pre-filter's link on `iface` is pinned.
pub fn xdp_link(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}xdp_{iface}"))
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

/// The interfaces that have a link of `kind` ("ingress", "egress", "xdp")
/// pinned in `dir`, by the link's name.
pub fn linked_ifaces(dir: &Path, kind: &str) -> Vec<String> {
    let prefix = format!("{LINK_PREFIX}{kind}_");
    links(dir)
        .iter()
        .filter_map(|l| {
            l.file_name()?
                .to_str()?
                .strip_prefix(&prefix)
                .map(String::from)
        })
        .collect()
}

/// Where the locks live: /run is shared by every mount namespace on the host
/// (bpffs cannot hold a plain file).
pub const LOCK_DIR: &str = "/run/api-guard/locks";
/// Names another lock directory (the test suite's own, say). The daemon and the
/// operator commands acting on its pin dir must be given the same one.
pub const LOCK_DIR_ENV: &str = "API_GUARD_LOCK_DIR";

/// Where the locks live: `API_GUARD_LOCK_DIR`, else [`LOCK_DIR`].
pub fn lock_dir() -> PathBuf {
    std::env::var_os(LOCK_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(LOCK_DIR), PathBuf::from)
}

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
    lock_dir().join(format!("{escaped}.lock"))
}
