//! `cargo xtask setup`: checks every piece the build and the tests need, installs
//! what is missing where it can, and prints one line per piece it cannot provide.
//! Idempotent, and fast (well under a second) when everything is present.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the project needs, each with a file that proves it is there.
/// The LLVM development package follows the nightly's LLVM major (see `llvm_major`).
fn packages(llvm: u32) -> Vec<(String, PathBuf)> {
    let mut list = vec![
        (
            format!("llvm-{llvm}-dev"),
            PathBuf::from(format!("/usr/lib/llvm-{llvm}/bin/llvm-config")),
        ),
        ("zlib1g-dev".into(), "/usr/include/zlib.h".into()),
        ("libzstd-dev".into(), "/usr/include/zstd.h".into()),
        // The Redis client's TLS (rediss://) links the system OpenSSL.
        ("libssl-dev".into(), "/usr/include/openssl/ssl.h".into()),
    ];
    // Tools: present if found on PATH or in the sbin directories.
    for (pkg, bin) in [
        ("bpftool", "bpftool"),
        ("iproute2", "ip"),
        ("nginx-light", "nginx"),
        ("curl", "curl"),
        ("wrk", "wrk"),
        ("util-linux", "setpriv"),
        ("prometheus", "promtool"),
        ("systemd", "systemd-analyze"),
        ("python3", "python3"),
        ("pkg-config", "pkg-config"),
        // The fleet tests' shared store (e2e_fleet), and its TLS certificates.
        ("redis-server", "redis-server"),
        // The L4 load balancer of the identity tests (PROXY protocol v2).
        ("haproxy", "haproxy"),
        ("openssl", "openssl"),
        // The bench's hand-written C reference limiter (K1), built to BPF.
        ("clang-22", "clang-22"),
    ] {
        list.push((
            pkg.into(),
            find_binary(bin).unwrap_or_else(|| PathBuf::from(format!("/usr/sbin/{bin}"))),
        ));
    }
    list
}

/// Finds `name` on PATH or in /usr/sbin, /sbin (root's tools, missing from some PATHs).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(str::to_owned)
        })
        .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("setup: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The LLVM major version of the nightly toolchain (it emits the bitcode that
/// bpf-linker links, so their majors must match).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

/// The LLVM major bpf-linker is linked against, from its shared-library list.
fn linker_llvm_major(linker: &Path) -> Option<u32> {
    let ldd = output(Command::new("ldd").arg(linker))?;
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name.strip_prefix("libLLVM")?;
        // libLLVM.so.22.1 or libLLVM-22.so
        rest.trim_start_matches(['-', '.'])
            .trim_start_matches("so.")
            .split(['.', '-'])
            .next()?
            .parse()
            .ok()
    })
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

/// Runs every check; installs what it can; fails listing what it could not.
pub fn setup() -> Result<()> {
    let root = is_root();
    let mut missing: Vec<String> = Vec::new();

    // 1. The nightly toolchain and its LLVM.
    let Some(vv) = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"])) else {
        bail!(
            "setup: the nightly Rust toolchain is missing (rustup toolchain install nightly); the kernel programs need it"
        );
    };
    let llvm = llvm_major(&vv).context("setup: cannot read the nightly's LLVM version")?;

    // 2. Debian packages.
    let absent: Vec<String> = packages(llvm)
        .into_iter()
        .filter(|(_, proof)| !proof.exists())
        .map(|(pkg, _)| pkg)
        .collect();
    if !absent.is_empty() {
        if !root {
            for pkg in &absent {
                missing.push(format!(
                    "Debian package {pkg} is missing and only root can install it"
                ));
            }
        } else if find_binary("apt-get").is_none() {
            for pkg in &absent {
                missing.push(format!(
                    "Debian package {pkg} is missing and there is no apt-get to install it"
                ));
            }
        } else {
            apt_install(&absent)?;
        }
    }

    // 3. rust-src for the nightly (build-std=core for bpfel-unknown-none).
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("setup: cannot read the nightly's sysroot")?;
    let core_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !core_src.exists() {
        run(
            "installing rust-src for the nightly toolchain",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }

    // 4. bpf-linker, built against the same LLVM major as the nightly.
    let linker = find_binary("bpf-linker").unwrap_or_else(|| cargo_bin("bpf-linker"));
    let linker_llvm = linker
        .exists()
        .then(|| linker_llvm_major(&linker))
        .flatten();
    if linker_llvm != Some(llvm) {
        let why = match linker_llvm {
            None if linker.exists() => "cannot tell its LLVM version".to_string(),
            None => "missing".to_string(),
            Some(other) => format!("built against LLVM {other}, the nightly has LLVM {llvm}"),
        };
        let llvm_bin = format!("/usr/lib/llvm-{llvm}/bin");
        if !Path::new(&llvm_bin).exists() {
            missing.push(format!(
                "bpf-linker is {why} and LLVM {llvm} (llvm-{llvm}-dev) is not installed to build it"
            ));
        } else {
            let path = format!("{llvm_bin}:{}", env::var("PATH").unwrap_or_default());
            let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(
                &format!(
                    "installing bpf-linker against LLVM {llvm} ({why}); this takes a few minutes"
                ),
                Command::new(cargo)
                    .args([
                        "install",
                        "bpf-linker",
                        "--force",
                        "--no-default-features",
                        "--features",
                    ])
                    .arg(format!("llvm-{llvm}"))
                    .env("PATH", path),
            )?;
        }
    }

    // 5. The kernel: BTF and bpffs.
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("the kernel has no BTF (/sys/kernel/btf/vmlinux); api-guard needs a kernel built with CONFIG_DEBUG_INFO_BTF".into());
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        if root {
            run(
                "mounting bpffs at /sys/fs/bpf",
                Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
            )?;
        } else {
            missing.push("bpffs is not mounted at /sys/fs/bpf and only root can mount it".into());
        }
    }
    if !root {
        missing
            .push("not root: loading BPF programs and making network namespaces needs root".into());
    }

    if missing.is_empty() {
        Ok(())
    } else {
        for m in &missing {
            eprintln!("setup: {m}");
        }
        bail!("setup: {} piece(s) missing, see above", missing.len())
    }
}

/// apt-get install, without letting package scripts start services (nginx would
/// otherwise start listening on the host).
fn apt_install(pkgs: &[String]) -> Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists();
    if placed {
        fs::write(
            policy,
            "#!/bin/sh\n# placed by cargo xtask setup during apt-get install\nexit 101\n",
        )?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
    }
    let result = (|| {
        run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        run(
            &format!("installing {}", pkgs.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })();
    if placed {
        let _ = fs::remove_file(policy);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major_from_rustc() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
