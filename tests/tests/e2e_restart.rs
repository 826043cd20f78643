//! Restarts without lost state: a daemon started on the pin directory of one that
//! stopped (SIGTERM) or died (SIGKILL) adopts its buckets, blocks, limits and
//! counters, with no second attachment; `detach` clears that state.

use anyhow::Result;
use api_guard::kernel::{KernelMaps as _, pins::Pinned};
use api_guard_common::client::ClientState;
use api_guard_tests::{
    client::{answered, exhaust_conn_burst},
    daemon::{program_loaded, program_unloaded},
    scenario::Scenario,
};
use serde_json::Value;
use std::time::Duration;

fn status(s: &Scenario) -> Result<Value> {
    let out = s.ctl(&["status", "--json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(&String::from_utf8_lossy(&out.stdout))?)
}

/// The program the link pinned at `pin` runs.
fn linked_prog(pin: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()?;
    let link: Value = serde_json::from_slice(&out.stdout)?;
    link["prog_id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no link pinned at {}: {link}", pin.display()))
}

/// The programs attached to the scene's cgroup (nginx's, where `--cgroup` puts
/// the connection tracker).
fn cgroup_progs(s: &Scenario) -> Result<Vec<u64>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(s.nginx.cgroup())
        .output()?;
    let progs: Value = serde_json::from_slice(&out.stdout)?;
    Ok(progs
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default())
}

fn restart_keeps_state(sig: libc::c_int) -> Result<()> {
    let s = Scenario::start(
        2,
        &[
            "--conn-rate",
            "1",
            "--conn-burst",
            "3",
            "--block-for",
            "10m",
            "--max-conns",
            "100",
        ],
    )?;
    let c0 = s.client(0);
    exhaust_conn_burst(c0, 3)?;
    assert!(
        s.ctl(&["limit", "198.18.1.0/24", "--rate", "1", "--burst", "2"])?
            .status
            .success()
    );
    assert!(s.ctl(&["block", "198.18.1.99"])?.status.success());
    // A request from client 1 leaves its buckets part spent.
    assert_eq!(answered(s.client(1), 1)?, 1);
    let spent = std::time::Instant::now();
    let before = status(&s)?;
    let entry = |s: &Scenario, i: usize| -> Result<ClientState> {
        Pinned::open(&s.bpffs.pin_dir())?
            .client(s.client(i).key(false))?
            .ok_or_else(|| anyhow::anyhow!("client {i} is not tracked"))
    };
    let (c0_before, c1_before) = (entry(&s, 0)?, entry(&s, 1)?);
    assert!(c1_before.request_tat_ns > 0 && c1_before.conn_tat_ns > 0);
    let iface = s.topo.server_ifaces[0].clone();
    assert_eq!(s.topo.server.tcx_ingress(&iface)?, [s.daemon.prog_id]);
    let old_prog = s.daemon.prog_id;
    let tracker = s.bpffs.pin_dir().join("link_sockops");
    let old_tracker = linked_prog(&tracker)?;
    assert!(cgroup_progs(&s)?.contains(&old_tracker));

    // A changed flag (a larger connection burst) and a new daemon on the same pins.
    let (stopped, s) = s.restart(
        sig,
        &[
            "--conn-rate",
            "1",
            "--conn-burst",
            "5",
            "--block-for",
            "10m",
            "--max-conns",
            "100",
        ],
    )?;
    if sig == libc::SIGTERM {
        assert!(stopped.status.success(), "{stopped:?}");
    }
    assert!(
        s.daemon.stderr().contains("adopted the pinned state"),
        "{}",
        s.daemon.stderr()
    );
    if sig == libc::SIGKILL {
        assert!(
            s.daemon
                .stderr()
                .contains("took over the pinned ingress link")
                && s.daemon
                    .stderr()
                    .contains("took over the pinned connection tracker link"),
            "{}",
            s.daemon.stderr()
        );
    }
    let new_tracker = linked_prog(&tracker)?;
    let attached = cgroup_progs(&s)?;
    assert_ne!(new_tracker, old_tracker);
    assert_eq!(
        attached.iter().filter(|&&p| p == new_tracker).count(),
        1,
        "the new connection tracker, once"
    );
    assert!(
        program_unloaded(old_tracker as u32),
        "the old connection tracker is gone"
    );
    assert!(
        program_unloaded(old_prog),
        "the old program is gone, replaced in its link"
    );
    assert!(program_loaded(s.daemon.prog_id));
    assert_eq!(
        s.topo.server.tcx_ingress(&iface)?,
        [s.daemon.prog_id],
        "one ingress program: the new one, in the old link"
    );

    // The client entries, buckets and all, are the ones from before.
    let (c0_after, c1_after) = (entry(&s, 0)?, entry(&s, 1)?);
    assert_eq!(
        (
            c1_after.request_tat_ns,
            c1_after.conn_tat_ns,
            c1_after.requests
        ),
        (
            c1_before.request_tat_ns,
            c1_before.conn_tat_ns,
            c1_before.requests
        ),
        "client 1's token buckets carried over"
    );
    assert_eq!(c0_after.blocked_until_ns, c0_before.blocked_until_ns);
    assert_eq!(c0_after.conn_tat_ns, c0_before.conn_tat_ns);

    let after = status(&s)?;
    assert_eq!(
        after["config"]["connections"]["burst"], 5,
        "the changed flag took effect"
    );
    assert_eq!(
        after["blocked_clients"][0]["client"], "198.18.0.2",
        "the block carried over: {after}"
    );
    assert!(
        after["blocked_clients"][0]["remaining_secs"]
            .as_u64()
            .unwrap()
            > 500
    );
    assert_eq!(after["blocked_networks"][0]["network"], "198.18.1.99/32");
    assert!(
        after["counters"]["connections"]["allowed"].as_u64()
            >= before["counters"]["connections"]["allowed"].as_u64(),
        "counters carried over: {before} → {after}"
    );
    assert_eq!(after["clients"]["tracked"], before["clients"]["tracked"]);
    assert_eq!(answered(s.client(0), 1)?, 0, "still blocked");
    // Client 1's buckets refill at 1/s: full again a second after its request.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(spent.elapsed()));
    // The operator's limit on its network was not in the new daemon's flags:
    // the flags state the policy exactly, so it no longer applies (it would
    // admit 2 of the 5).
    assert_eq!(
        answered(s.client(1), 5)?,
        5,
        "the operator's limit outlived the daemon it was given to"
    );
    Ok(())
}

#[test]
fn a_restart_after_sigterm_adopts_the_pinned_state() -> Result<()> {
    restart_keeps_state(libc::SIGTERM)
}

#[test]
fn a_restart_after_sigkill_adopts_the_pinned_state() -> Result<()> {
    restart_keeps_state(libc::SIGKILL)
}

#[test]
fn detach_clears_the_state_of_a_stopped_daemon_only() -> Result<()> {
    let s = Scenario::start(1, &["--rate", "1", "--burst", "2"])?;
    let refused = s.ctl(&["detach"])?;
    assert_eq!(
        refused.status.code(),
        Some(4),
        "a running daemon's pins stay"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    assert!(s.ctl(&["block", "198.18.0.2"])?.status.success());
    let pin_dir = s.bpffs.pin_dir();
    let (stopped, _nginx, _topo, bpffs) = s.stop()?;
    assert!(stopped.status.success());
    assert!(
        pin_dir.join("CLIENTS").exists(),
        "the state outlives the daemon"
    );
    let out = std::process::Command::new(api_guard_tests::daemon::binary())
        .args(["detach", "--pin-dir"])
        .arg(&pin_dir)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every pinned map (the links went with the daemon under --fail-mode open).
    let removed = format!(
        "removed {} pins (links and maps)",
        api_guard::kernel::layout::PINNED.len()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&removed),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!pin_dir.exists());
    drop(bpffs);
    Ok(())
}

#[test]
fn pinned_state_of_another_layout_is_refused() -> Result<()> {
    let fs = api_guard_tests::bpffs::BpfFs::mount()?;
    let dir = fs.pin_dir();
    std::fs::create_dir_all(&dir)?;
    // A CONFIG map with values of the wrong size, as another build might leave.
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join("CONFIG"))
        .args([
            "type", "array", "key", "4", "value", "8", "entries", "1", "name", "CONFIG",
        ])
        .status()?;
    assert!(made.success());
    // In a namespace of the test's own (its loopback, not the host's), and
    // killed if it does not refuse.
    let ns = api_guard_tests::netns::Netns::new("layout")?;
    let mut cmd = ns.command(api_guard_tests::daemon::binary().to_str().unwrap());
    cmd.args([
        "run",
        "--iface",
        "lo",
        "--port",
        "8080",
        "--metrics-addr",
        "127.0.0.1:0",
        "--pin-dir",
    ])
    .arg(&dir);
    let out = api_guard_tests::process::output_within(&mut cmd, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("incompatible api-guard") && stderr.contains("api-guard detach"),
        "{stderr}"
    );
    Ok(())
}
