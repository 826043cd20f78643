//! Command-line flags.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "api-guard",
    version,
    about = "eBPF host API traffic monitor and rate enforcer",
    after_help = "Example:\n  api-guard run --iface eth0 --port 80 --port 8080"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs, attach them and watch API traffic until stopped.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network interface to attach to (TC ingress); repeat for several.
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,

    /// TCP port the API listens on; repeat for several.
    #[arg(
        long = "port",
        value_name = "PORT",
        required = true,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// Clients tracked at once; beyond it the least recently seen is evicted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = api_guard_common::maps::DEFAULT_MAX_CLIENTS,
        value_parser = clap::value_parser!(u32).range(1..=(1 << 24))
    )]
    pub max_clients: u32,

    /// How often to log a summary of the counters (e.g. 30s, 5m); 0 turns it off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub report_every: Duration,

    /// Daemon log level (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,
}

/// A duration with a unit ("30s", "5m", "1h 30m"), or a bare 0.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a unit, e.g. 30s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["api-guard", "run"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(r) => r,
        })
    }

    #[test]
    fn repeated_ifaces_and_ports() {
        let r = run(&[
            "--iface", "a", "--iface", "b", "--port", "80", "--port", "8080",
        ])
        .unwrap();
        assert_eq!(r.ifaces, ["a", "b"]);
        assert_eq!(r.ports, [80, 8080]);
        assert_eq!(r.report_every, Duration::from_secs(60));
    }

    #[test]
    fn ports_out_of_range_are_rejected() {
        for bad in ["0", "65536", "-1", "http"] {
            assert!(run(&["--iface", "a", "--port", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn iface_and_port_are_required() {
        assert!(run(&["--port", "80"]).is_err());
        assert!(run(&["--iface", "a"]).is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
