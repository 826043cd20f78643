//! `cargo xtask test`: format and lint checks, then every test (userspace units,
//! kernel test-run tests, end-to-end suites), then a sweep proving that nothing the
//! tests made outlived them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::{build, cargo, check, setup::find_binary};

/// The crates built for the host (the kernel crate builds only for BPF, through
/// api-guard's build script).
const USERSPACE: [&str; 8] = [
    "-p",
    "api-guard",
    "-p",
    "api-guard-common",
    "-p",
    "api-guard-tests",
    "-p",
    "xtask",
];

/// The prefix every harness-made namespace and directory carries (tests/src/lib.rs).
const PREFIX: &str = "agt-";
/// What every api-guard program's name starts with, as the kernel keeps it
/// (ingress, sampler, reset, sock_ops: 15 bytes and the NUL).
const PROG_PREFIX: &str = "api_guard_";
/// The daemon's own defaults, which the tests must never touch: its lock
/// directory, its pin dir, and the cgroup v2 mount it makes when it finds none.
const HOST_LOCKS: &str = "/run/api-guard/locks";
const HOST_PIN_DIR: &str = "/sys/fs/bpf/api-guard";
const HOST_CGROUP2: &str = "/run/api-guard/cgroup2";

/// A lock directory of the run's own (`API_GUARD_LOCK_DIR`, read by the daemon
/// and the operator commands), so that no test takes a lock in the host's
/// /run/api-guard/locks. Removed on drop.
struct LockDir(PathBuf);

impl LockDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{PREFIX}locks-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LockDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn test(filter: Option<&str>) -> Result<()> {
    check(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    check(
        "cargo clippy",
        cargo()
            .arg("clippy")
            .args(USERSPACE)
            .args(["--all-targets", "--", "-D", "warnings"]),
    )?;
    let bin = build(false)?;

    let locks = LockDir::new()?;
    let mut cmd = cargo();
    cmd.arg("test")
        .args(USERSPACE)
        .env("API_GUARD_BIN", &bin)
        .env("API_GUARD_LOCK_DIR", locks.path());
    if let Some(f) = filter {
        cmd.arg(f);
    }
    without_leftovers("the tests", || check("cargo test", &mut cmd))?;
    eprintln!(
        "xtask: no namespace, mount, cgroup, process, pin, lock or BPF program outlived the tests"
    );
    Ok(())
}

/// Runs `task`, then proves it cleaned up after itself: whatever its outcome,
/// anything it left (what was there before is not ours to judge) fails it.
fn without_leftovers(what: &str, task: impl FnOnce() -> Result<()>) -> Result<()> {
    let before = leftovers();
    let result = task();
    let since = || -> Vec<String> {
        leftovers()
            .into_iter()
            .filter(|l| !before.contains(l))
            .collect()
    };
    let mut new = since();
    if !new.is_empty() {
        // The kernel frees a detached program (and a lazily unmounted bpffs)
        // from a work queue: give it a moment before calling anything a leak.
        std::thread::sleep(std::time::Duration::from_secs(3));
        new = since();
    }
    if !new.is_empty() {
        for l in &new {
            eprintln!("xtask: left behind by {what}: {l}");
        }
        bail!("{what} left {} thing(s) behind", new.len());
    }
    result
}

/// Release builds of the daemon and the bench runner (tests/src/bin/bench.rs);
/// returns (daemon, runner).
fn build_runner() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let bin = build(true)?;
    check(
        "cargo build (bench)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "api-guard-tests",
            "--bin",
            "bench",
            // K3b's flooder.
            "--bin",
            "spoof",
        ]),
    )?;
    let runner = bin.with_file_name("bench");
    Ok((bin, runner))
}

/// `cargo xtask bench`: release builds of the daemon and the bench runner, then
/// the runner (tests/src/bin/bench.rs), which rewrites BENCHMARKS.md.
pub fn bench(quick: bool, only: Option<&str>) -> Result<()> {
    let (bin, runner) = build_runner()?;
    let locks = LockDir::new()?;
    let mut cmd = std::process::Command::new(&runner);
    cmd.current_dir(crate::workspace())
        .env("API_GUARD_BIN", &bin)
        .env("API_GUARD_LOCK_DIR", locks.path())
        // A partial or quick run must not replace the full report.
        .args([
            "--out",
            if only.is_some() || quick {
                "target/BENCHMARKS.partial.md"
            } else {
                "BENCHMARKS.md"
            },
        ]);
    if quick {
        cmd.arg("--quick");
    }
    if let Some(only) = only {
        cmd.args(["--only", only]);
    }
    without_leftovers("the benchmarks", || check("the bench runner", &mut cmd))
}

/// `cargo xtask soak`: the bench runner's soak mode on release builds.
pub fn soak(minutes: u64) -> Result<()> {
    let (bin, runner) = build_runner()?;
    let locks = LockDir::new()?;
    let mut cmd = std::process::Command::new(runner);
    cmd.env("API_GUARD_BIN", &bin)
        .env("API_GUARD_LOCK_DIR", locks.path())
        .args(["--soak", &(minutes.max(1) * 60).to_string()]);
    without_leftovers("the soak", || check("the soak", &mut cmd))
}

/// `cargo xtask fuzz`: installs cargo-fuzz if missing, then fuzzes the request
/// parser for `seconds` (10 minutes by default); a crash fails the task and
/// leaves its input under fuzz/artifacts.
pub fn fuzz(seconds: u64) -> Result<()> {
    let has_fuzz = std::process::Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz (a minute or two)");
        check(
            "cargo install cargo-fuzz",
            cargo().args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }
    let dir = crate::workspace().join("fuzz");
    check(
        "cargo fuzz run",
        std::process::Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", "request", "--"])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&dir),
    )
}

/// Namespaces, mounts, cgroups, processes and BPF programs that only the tests
/// create, and the daemon's host-wide defaults (locks, pin dir, cgroup mount)
/// that they must not create.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for lock in fs::read_dir(HOST_LOCKS).into_iter().flatten().flatten() {
        found.push(format!("lock {}", lock.path().display()));
    }
    for dir in [HOST_PIN_DIR, HOST_CGROUP2] {
        if Path::new(dir).exists() {
            found.push(format!("host directory {dir}"));
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line
                .split_whitespace()
                .next()
                .filter(|n| n.starts_with(PREFIX))
            {
                found.push(format!("network namespace {name}"));
            }
        }
    }
    if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
        for line in mounts.lines() {
            if let Some(dir) = line
                .split_whitespace()
                .nth(1)
                .filter(|d| d.contains(PREFIX) || d.starts_with("/run/api-guard"))
            {
                found.push(format!("mount {dir}"));
            }
        }
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_daemon = argv.first().is_some_and(|a| a.ends_with("/api-guard"));
            // nginx, Prometheus, a booted systemd: the harness names their
            // directories, namespaces or cgroups with the prefix.
            let is_harness_child = !argv.first().is_some_and(|a| a.contains("cargo"))
                && argv.iter().skip(1).any(|a| a.contains(PREFIX));
            let in_harness_cgroup =
                fs::read_to_string(p.path().join("cgroup")).is_ok_and(|c| c.contains(PREFIX));
            if is_daemon || is_harness_child || in_harness_cgroup {
                found.push(format!(
                    "process {} ({})",
                    p.file_name().to_string_lossy(),
                    argv.join(" ")
                ));
            }
        }
    }
    for cgroup2 in fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| f[1].to_string())
        })
    {
        for entry in fs::read_dir(&cgroup2).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    if let Some(bpftool) = find_binary("bpftool")
        && let Ok(out) = Command::new(bpftool).args(["prog", "list"]).output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(PROG_PREFIX) {
                found.push(format!("BPF program {}", line.trim()));
            }
        }
    }
    found
}
