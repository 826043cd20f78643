//! Operator commands, one file each. Those acting on a daemon go through its
//! pinned maps: every change takes effect on the next packet, without a restart.
//!
//! - `status`: policy, counters, clients, blocks, heartbeat;
//! - `top`: the busiest clients, live;
//! - `block`: `block` and `unblock`;
//! - `limit`: per-network limits, set and removed;
//! - `detach`: removes a stopped daemon's pins;
//! - `report`: the OWASP API Top 10 view of the findings log;
//! - `docs`: shell completions and man pages.

pub mod block;
pub mod detach;
pub mod docs;
pub mod limit;
pub mod report;
pub mod status;
pub mod top;

use std::io::Write;

use anyhow::Result;
use api_guard_common::network::NetKey;

use crate::{cli::Command, kernel::preflight};

pub use top::TopOptions;

/// Runs an operator command (every command but `run`), writing to `out`.
pub fn run(command: Command, out: &mut impl Write) -> Result<()> {
    match command {
        Command::Completions { shell } => return docs::completions(shell, out),
        Command::Man { command } => return docs::man(command.as_deref(), out),
        // A file an operator may read needs no privilege.
        Command::Report {
            pins,
            findings_log,
            since,
            json,
        } => {
            let limited = report::kernel_limits(&pins.pin_dir);
            return report::report(&findings_log, since, limited, json, out);
        }
        _ => {}
    }
    preflight::check_privileges()?;
    match command {
        Command::Completions { .. } | Command::Man { .. } | Command::Report { .. } => {
            unreachable!("printed above")
        }
        Command::Run(_) => unreachable!("handled by the daemon"),
        Command::Status { pins, json } => status::status(&pins.pin_dir, json, out),
        Command::Top {
            pins,
            n,
            interval,
            once,
            json,
        } => top::top(
            &pins.pin_dir,
            &TopOptions {
                n,
                interval,
                once,
                json,
            },
            out,
        ),
        Command::Block {
            pins,
            cidr,
            duration,
        } => block::block(&pins.pin_dir, &cidr, duration, out),
        Command::Unblock { pins, cidr } => block::unblock(&pins.pin_dir, &cidr, out),
        Command::Detach { pins } => detach::detach(&pins.pin_dir, out),
        Command::Limit {
            pins,
            cidr,
            rate,
            burst,
            remove,
            key_rate,
            route,
            remove_route,
        } => match (remove, cidr, rate) {
            (Some(net), _, _) => limit::remove_limit(&pins.pin_dir, &net, out),
            (None, None, _) if key_rate.is_some() || route.is_some() || remove_route.is_some() => {
                limit::keys(
                    &pins.pin_dir,
                    key_rate,
                    route.as_ref(),
                    remove_route.as_deref(),
                    out,
                )
            }
            (None, Some(net), Some(rate)) => limit::limit(&pins.pin_dir, &net, rate, burst, out),
            _ => unreachable!("clap requires a CIDR and --rate without --remove"),
        },
    }
}

/// Seconds left until `until` (CLOCK_MONOTONIC ns); None for "until unblocked".
fn remaining_secs(until: u64, now: u64) -> Option<u64> {
    (until != u64::MAX).then(|| until.saturating_sub(now) / 1_000_000_000)
}

/// An LPM key as the operator wrote it: IPv4 networks as IPv4.
fn network_string(prefix: u32, addr: NetKey) -> String {
    let ip = std::net::Ipv6Addr::from(addr);
    match ip.to_ipv4_mapped() {
        Some(v4) if prefix >= 96 => format!("{v4}/{}", prefix - 96),
        _ => format!("{ip}/{prefix}"),
    }
}
