//! Checks made before anything touches the kernel, so that a missing privilege or a
//! mistyped interface is one clear line instead of an obscure BPF error.

use std::{
    ffi::CString,
    fs,
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::failure::Failure;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && ((has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN))
}

/// Attaching TC programs needs CAP_NET_ADMIN; loading them CAP_BPF, and
/// CAP_PERFMON because they do pointer arithmetic on packets, which the
/// verifier refuses to programs without it (CAP_SYS_ADMIN covers both). Root has
/// them all.
pub fn check_privileges() -> Result<()> {
    match effective_caps() {
        Some(caps) if has_caps(caps) => Ok(()),
        _ => Err(Failure::Privilege.into()),
    }
}

/// Where the kernel publishes its BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// tcx links, which api-guard attaches with, came in Linux 6.6.
const MIN_KERNEL: (u32, u32) = (6, 6);

/// The kernel features a run needs: tcx, BTF, and sock_ops programs when
/// `--max-conns` is given. Each missing one is one line naming it.
pub fn check_kernel(needs_sockops: bool) -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    check_release(release.trim())?;
    check_btf(Path::new(KERNEL_BTF))?;
    if needs_sockops {
        use aya::{programs::ProgramType, sys::is_program_supported};
        check_sockops(is_program_supported(ProgramType::SockOps).map_err(|e| e.to_string()))?;
    }
    Ok(())
}

fn environment(message: String) -> anyhow::Error {
    Failure::KernelLacks(message).into()
}

fn check_release(release: &str) -> Result<()> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_KERNEL => Ok(()),
        (Some(_), Some(_)) => Err(environment(format!(
            "Linux {release} is too old: api-guard attaches with tcx links, which need Linux {}.{} or newer",
            MIN_KERNEL.0, MIN_KERNEL.1
        ))),
        // An unreadable release: let the attach itself say what is missing.
        _ => Ok(()),
    }
}

fn check_btf(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(environment(format!(
        "this kernel has no BTF ({} is missing): api-guard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        path.display()
    )))
}

fn check_sockops(probe: Result<bool, String>) -> Result<()> {
    match probe {
        Ok(true) => Ok(()),
        Ok(false) => Err(environment(
            "this kernel cannot run sock_ops programs (CONFIG_CGROUP_BPF is off): --max-conns needs them; run without it".into(),
        )),
        Err(e) => Err(environment(format!(
            "cannot probe the kernel for sock_ops programs (needed by --max-conns): {e}"
        ))),
    }
}

/// The index of a network interface, or a clear error naming it.
pub fn interface_index(name: &str) -> Result<u32> {
    let unknown = || Failure::NoInterface(name.to_owned());
    let c_name = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(unknown().into());
    }
    Ok(index)
}

/// Refuses an interface whose frames do not start with an Ethernet header
/// (tun, WireGuard, ipip, GRE...): the parser reads from the Ethernet header,
/// so it would pass their traffic unjudged. Loopback has one at TC.
pub fn check_link_layer(name: &str) -> Result<()> {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    // SAFETY: a plain socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(environment(format!(
            "cannot open a socket to read {name}'s link type: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: an all-zero ifreq is valid; the name is copied in below, NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq for SIOCGIFHWADDR; `fd` is open.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(environment(format!(
            "cannot read {name}'s link type: {err}"
        )));
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    if family != ARPHRD_ETHER && family != ARPHRD_LOOPBACK {
        return Err(environment(format!(
            "interface {name} has no Ethernet header (link type {family}: tun, WireGuard, ipip or the like); api-guard parses frames from their Ethernet header and would leave its traffic unguarded, so it refuses it"
        )));
    }
    Ok(())
}

/// Where api-guard mounts cgroup v2 when none is visible.
const PRIVATE_CGROUP2: &str = "/run/api-guard/cgroup2";

/// The cgroup v2 root for the connection tracker.
pub enum Cgroup2 {
    /// Mounted already (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified`
    /// on hybrid ones).
    Mounted(PathBuf),
    /// Not visible in this mount namespace (`ip netns exec` remounts /sys):
    /// mounted here by api-guard and unmounted when this drops.
    Private(PathBuf),
}

impl Cgroup2 {
    pub fn path(&self) -> &Path {
        match self {
            Cgroup2::Mounted(p) | Cgroup2::Private(p) => p,
        }
    }

    /// Finds the cgroup v2 mount, or mounts the hierarchy at a private directory.
    pub fn find_or_mount() -> Result<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if let Some(dir) = cgroup2_in(&mounts) {
            return Ok(Cgroup2::Mounted(dir));
        }
        // A fixed place, reused: daemons in different mount namespaces may each
        // mount there, and the directory is never removed under another's mount.
        let dir = PathBuf::from(PRIVATE_CGROUP2);
        let fail = Failure::KernelLacks;
        fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        let c_dir =
            CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| fail(e.to_string()))?;
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe {
            libc::mount(
                c"cgroup2".as_ptr(),
                c_dir.as_ptr(),
                c"cgroup2".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(fail(format!(
                "no cgroup v2 mount found and mounting one failed ({err}): --max-conns needs cgroup v2"
            ))
            .into());
        }
        Ok(Cgroup2::Private(dir))
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Cgroup2::Private(dir) = self
            && let Ok(c_dir) = CString::new(dir.as_os_str().as_encoded_bytes())
        {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Opens a cgroup directory for attaching, with a clear error.
pub fn open_cgroup(dir: &Path) -> Result<fs::File> {
    fs::File::open(dir)
        .map_err(|e| Failure::Host(format!("cannot open cgroup {}: {e}", dir.display())).into())
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14+);
/// the sock_ops program counts only sockets of this namespace.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| UdpSocket::bind("[::1]:0"))
        .map_err(|e| {
            Failure::Host(format!(
                "cannot open a socket to read the network namespace: {e}"
            ))
        })?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is open for the call; cookie and len point to live locals of
    // the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Failure::KernelLacks(format!(
            "cannot read the network namespace cookie (Linux 5.14+ needed): {}",
            std::io::Error::last_os_error()
        ))
        .into());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::ExitCode;

    #[test]
    fn capability_sets() {
        assert!(has_caps(u64::MAX));
        assert!(has_caps(
            (1 << CAP_NET_ADMIN) | (1 << CAP_BPF) | (1 << CAP_PERFMON)
        ));
        assert!(!has_caps((1 << CAP_NET_ADMIN) | (1 << CAP_BPF)));
        assert!(has_caps((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)));
        assert!(!has_caps(1 << CAP_BPF));
        assert!(!has_caps(1 << CAP_NET_ADMIN));
        assert!(!has_caps(0));
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_in("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0"), None);
    }

    #[test]
    fn kernel_features_are_checked_one_line_each() {
        let code = |r: Result<()>| r.map_err(|e| crate::failure::exit_code(&e));
        assert!(check_release("6.18.0-1-amd64").is_ok());
        assert!(check_release("6.6.1").is_ok());
        let old = check_release("5.15.0-91-generic").unwrap_err();
        assert!(old.to_string().contains("6.6 or newer"), "{old}");
        assert_eq!(crate::failure::exit_code(&old), ExitCode::Environment);
        assert!(check_release("").is_ok(), "unknown: the attach decides");

        assert!(
            check_btf(Path::new(KERNEL_BTF)).is_ok(),
            "this kernel has BTF"
        );
        let missing = check_btf(Path::new("/proc/self/no-such-btf/vmlinux")).unwrap_err();
        assert!(
            missing.to_string().contains("CONFIG_DEBUG_INFO_BTF"),
            "{missing}"
        );
        assert_eq!(code(Err(missing)), Err(ExitCode::Environment));

        assert!(check_sockops(Ok(true)).is_ok());
        let no = check_sockops(Ok(false)).unwrap_err().to_string();
        assert!(
            no.contains("--max-conns") && no.contains("sock_ops"),
            "{no}"
        );
        assert!(check_sockops(Err("EPERM".into())).is_err());
        // The real probe, on this kernel.
        check_kernel(true).unwrap();
    }

    #[test]
    fn reads_a_netns_cookie() {
        assert_ne!(netns_cookie().unwrap(), 0);
    }

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(interface_index("lo").unwrap() > 0);
        let err = interface_index("no-such-if0").unwrap_err();
        assert_eq!(crate::failure::exit_code(&err), ExitCode::Environment);
        assert!(interface_index("bad\0name").is_err());
        check_link_layer("lo").unwrap();
    }
}
