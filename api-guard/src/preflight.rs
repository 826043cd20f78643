//! Checks made before anything touches the kernel, so that a missing privilege or a
//! mistyped interface is one clear line instead of an obscure BPF error.

use std::{ffi::CString, fs};

use anyhow::Result;

use crate::failure::{ExitCode, Failure};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

/// Loading and attaching TC programs needs CAP_NET_ADMIN and CAP_BPF (or
/// CAP_SYS_ADMIN on older kernels); root has them all.
pub fn check_privileges() -> Result<()> {
    match effective_caps() {
        Some(caps) if has_caps(caps) => Ok(()),
        _ => Err(Failure::new(
            ExitCode::Privilege,
            "api-guard needs root (or CAP_BPF and CAP_NET_ADMIN) to load its kernel programs",
        )
        .into()),
    }
}

/// The index of a network interface, or a clear error naming it.
pub fn interface_index(name: &str) -> Result<u32> {
    let unknown = || {
        Failure::new(
            ExitCode::Environment,
            format!("no network interface named {name:?}"),
        )
    };
    let c_name = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(unknown().into());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets() {
        assert!(has_caps(u64::MAX));
        assert!(has_caps((1 << CAP_NET_ADMIN) | (1 << CAP_BPF)));
        assert!(has_caps((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)));
        assert!(!has_caps(1 << CAP_BPF));
        assert!(!has_caps(1 << CAP_NET_ADMIN));
        assert!(!has_caps(0));
    }

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(interface_index("lo").unwrap() > 0);
        let err = interface_index("no-such-if0").unwrap_err();
        assert_eq!(crate::failure::exit_code(&err), ExitCode::Environment);
        assert!(interface_index("bad\0name").is_err());
    }
}
