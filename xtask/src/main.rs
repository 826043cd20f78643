//! Project tasks: `cargo xtask setup | build | run | demo | test`. Every task runs
//! setup first, so a fresh machine needs nothing by hand.

mod demo;
mod setup;
mod test;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "api-guard's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install the toolchain, packages and kernel pieces the project needs.
    Setup,
    /// Build the daemon (and the kernel programs it embeds).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the daemon: `cargo xtask run -- run --iface eth0 --port 80`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for api-guard.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A live demo: nginx and three clients (good, abusive, without credentials)
    /// in network namespaces, the daemon enforcing, `api-guard top` for a minute.
    Demo {
        /// How long the clients run.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: u64,
        /// Fail unless the abusive client was limited, the good one got every
        /// answer and the one without credentials was flagged (for CI).
        #[arg(long)]
        check: bool,
        /// Release builds of the daemon and the demo (debug by default, as `build`).
        #[arg(long)]
        release: bool,
    },
    /// Benchmarks K1–K5 (release build); rewrites BENCHMARKS.md.
    Bench {
        /// A short run (well under two minutes).
        #[arg(long)]
        quick: bool,
        /// Only these suites, e.g. K1,K4.
        #[arg(long, value_name = "LIST")]
        only: Option<String>,
    },
    /// Soak the daemon under sustained load (release build; not part of CI).
    Soak {
        /// How long, in minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Fuzz the sampled-request parser (cargo fuzz on the nightly toolchain).
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Lints, unit tests, kernel test-run tests and end-to-end suites.
    Test {
        /// Only tests whose name contains this (passed to cargo test).
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    if let Task::Demo { seconds, .. } = task {
        demo::step(
            1,
            &format!("setup: the toolchain, packages and kernel pieces (then a {seconds} s demo)"),
        );
    }
    setup::setup()?;
    match task {
        Task::Setup => {
            eprintln!("setup: everything is in place");
            Ok(ExitCode::SUCCESS)
        }
        Task::Build { release } => {
            build(release)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Run { release, args } => {
            let bin = build(release)?;
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
        }
        Task::Demo {
            seconds,
            check,
            release,
        } => demo::demo(seconds, check, release),
        Task::Bench { quick, only } => {
            test::bench(quick, only.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Soak { minutes } => {
            test::soak(minutes)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Fuzz { seconds } => {
            test::fuzz(seconds)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { filter } => {
            test::test(filter.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo` with the workspace as its directory.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

pub fn check(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the daemon and returns the path of its binary.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "api-guard"]);
    if release {
        cmd.arg("--release");
    }
    check("cargo build", &mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
    Ok(target.join(profile).join("api-guard"))
}
