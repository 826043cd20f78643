//! `cargo xtask demo`: builds the daemon and the demo program
//! (tests/src/bin/demo.rs), then becomes the demo. It shows the daemon defending
//! an API in network namespaces made by the test harness; see that file.

use std::{os::unix::process::CommandExt as _, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{build, cargo, check};

/// The steps `cargo xtask demo` takes, for the headers.
const STEPS: u32 = 4;

/// A one-line header before a step; cargo's own progress follows it.
pub fn step(n: u32, what: &str) {
    eprintln!("==> [{n}/{STEPS}] {what}");
}

/// Steps 2 to 4 (setup, step 1, has run): builds with the same profile as
/// `cargo xtask build` and `run` (debug unless `release`), then execs the demo so
/// that Ctrl-C reaches it directly and its exit code is the task's.
pub fn demo(seconds: u64, check_mode: bool, release: bool) -> Result<ExitCode> {
    let profile = if release { "release" } else { "debug" };
    step(2, &format!("building the daemon, api-guard ({profile})"));
    let bin = build(release)?;
    step(3, &format!("building the demo program ({profile})"));
    let mut cmd = cargo();
    cmd.args(["build", "--package", "api-guard-tests", "--bin", "demo"]);
    if release {
        cmd.arg("--release");
    }
    check("cargo build (demo)", &mut cmd)?;
    let demo = bin.with_file_name("demo");
    step(
        4,
        &format!("running the demo for {seconds} s (needs root; Ctrl-C stops it and cleans up)"),
    );
    let mut cmd = std::process::Command::new(&demo);
    cmd.env("API_GUARD_BIN", &bin)
        .args(["--seconds", &seconds.to_string()]);
    if check_mode {
        cmd.arg("--check");
    }
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {}", demo.display()))
}
