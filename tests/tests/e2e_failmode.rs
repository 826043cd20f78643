//! `--fail-mode`: what the kernel does when the daemon stops or dies. Closed keeps
//! enforcing from the pinned state until `detach`; open detaches on SIGTERM, and
//! once a killed daemon's heartbeat is older than `--heartbeat-timeout` it lets
//! everything through (counted), until a new daemon takes over the same links.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_tests::{
    client,
    daemon::{Daemon, binary, program_loaded, program_unloaded},
    netns::Client,
    scenario::Scenario,
};
use serde_json::Value;

/// One new connection from `c`; whether it was answered within 400 ms.
fn admitted(c: &Client) -> Result<bool> {
    Ok(client::burst(c, None, 1, Duration::from_millis(400))? == 1)
}

/// Blocks client 0 of `s` by going over a connection rate of 1/s, burst 2.
fn get_blocked(s: &Scenario) -> Result<()> {
    let c0 = s.client(0);
    assert_eq!(client::burst(c0, None, 2, Duration::from_millis(400))?, 2);
    assert!(!admitted(c0)?, "over the limit: blocked");
    Ok(())
}

const LIMITS: [&str; 6] = [
    "--conn-rate",
    "1",
    "--conn-burst",
    "2",
    "--block-for",
    "10m",
];

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    LIMITS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

fn links(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(pin_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("link_"))
                .collect()
        })
        .unwrap_or_default()
}

fn detach(pin_dir: &Path) -> Result<std::process::Output> {
    Ok(std::process::Command::new(binary())
        .args(["detach", "--pin-dir"])
        .arg(pin_dir)
        .output()?)
}

#[test]
fn closed_keeps_enforcing_after_the_daemon_stops_until_detach() -> Result<()> {
    let s = Scenario::start(2, &flags(&["--fail-mode", "closed", "--max-conns", "50"]))?;
    get_blocked(&s)?;
    let prog = s.daemon.prog_id;
    let pin_dir = s.bpffs.pin_dir();
    let (stopped, _nginx, topo, bpffs) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        stopped.stderr.contains("keep enforcing"),
        "{}",
        stopped.stderr
    );
    assert!(program_loaded(prog), "still attached without a daemon");
    let mut pinned = links(&pin_dir);
    pinned.sort();
    assert_eq!(pinned.len(), 3, "two interfaces and sock_ops: {pinned:?}");

    let (c0, c1) = (&topo.clients[0], &topo.clients[1]);
    assert!(!admitted(c0)?, "the block holds without a daemon");
    // A new client still gets its bucket, and no more.
    assert_eq!(client::burst(c1, None, 2, Duration::from_millis(400))?, 2);
    assert!(!admitted(c1)?);

    let out = detach(&pin_dir)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(program_unloaded(prog), "detach removed the attachments");
    assert!(admitted(c0)?, "nothing enforces after detach");
    assert!(!pin_dir.exists());
    drop(bpffs);
    Ok(())
}

#[test]
fn open_detaches_on_sigterm() -> Result<()> {
    let s = Scenario::start(1, &flags(&[]))?;
    get_blocked(&s)?;
    let prog = s.daemon.prog_id;
    let pin_dir = s.bpffs.pin_dir();
    let (stopped, _nginx, topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(program_unloaded(prog), "detached on stop");
    assert!(links(&pin_dir).is_empty(), "{:?}", links(&pin_dir));
    assert!(
        pin_dir.join("CLIENTS").exists(),
        "the state stays for the next daemon"
    );
    assert!(admitted(&topo.clients[0])?, "nothing enforces");
    Ok(())
}

#[test]
fn open_lets_traffic_through_once_a_killed_daemons_heartbeat_times_out() -> Result<()> {
    let timeout = Duration::from_secs(4);
    let s = Scenario::start(1, &flags(&["--heartbeat-timeout", "4s"]))?;
    get_blocked(&s)?;
    let old_prog = s.daemon.prog_id;
    let Scenario {
        daemon,
        nginx,
        topo,
        bpffs,
    } = s;
    let killed = Instant::now();
    let stopped = daemon.stop_with(libc::SIGKILL)?;
    assert!(!stopped.status.success());
    let c0 = &topo.clients[0];
    // Within the timeout the killed daemon's programs still enforce.
    assert!(!admitted(c0)?, "enforcing until the heartbeat times out");
    assert!(killed.elapsed() < timeout, "checked too late to tell");
    thread::sleep((timeout + Duration::from_secs(1)).saturating_sub(killed.elapsed()));
    assert!(admitted(c0)?, "failed open");
    assert!(
        program_loaded(old_prog),
        "still attached, passing and counting"
    );

    // A new daemon takes over the same links and enforces again.
    let args: Vec<String> = {
        let mut a = vec!["run".to_string(), "--port".into(), "8080".into()];
        for iface in &topo.server_ifaces {
            a.extend(["--iface".into(), iface.clone()]);
        }
        a.extend(["--pin-dir".into(), bpffs.pin_dir().display().to_string()]);
        a.extend(LIMITS.iter().map(|f| f.to_string()));
        a
    };
    let daemon = Daemon::start(&topo.server, &args)?;
    assert!(
        daemon
            .stderr()
            .contains("took over the pinned ingress link"),
        "{}",
        daemon.stderr()
    );
    assert!(program_unloaded(old_prog), "replaced in its link");
    assert!(!admitted(c0)?, "the block is enforced again");
    let s = Scenario {
        daemon,
        nginx,
        topo,
        bpffs,
    };
    let out = s.ctl(&["status", "--json"])?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        status["counters"]["requests"]["failed_open"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(status["config"]["fail_mode"], "open");
    assert!(
        status["heartbeat_age_secs"].as_f64() < Some(3.0),
        "{status}"
    );
    Ok(())
}
