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
    client::{answered, exhaust_conn_burst},
    daemon::{Daemon, binary, program_loaded, program_unloaded},
    netns::Client,
    process::wait_until,
    scenario::Scenario,
};
use serde_json::Value;

/// One new connection from `c`; whether it was answered.
fn admitted(c: &Client) -> Result<bool> {
    Ok(answered(c, 1)? == 1)
}

/// Blocks client 0 of `s` by going over a connection rate of 1/s, burst 2.
fn get_blocked(s: &Scenario) -> Result<()> {
    exhaust_conn_burst(s.client(0), 2)
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
    assert_eq!(
        pinned.len(),
        7,
        "two interfaces (XDP, ingress and egress) and sock_ops: {pinned:?}"
    );

    let (c0, c1) = (&topo.clients[0], &topo.clients[1]);
    assert!(!admitted(c0)?, "the block holds without a daemon");
    // A new client still gets its bucket, and no more.
    assert_eq!(answered(c1, 2)?, 2);
    assert!(!admitted(c1)?);

    // No daemon, but operator commands still see and change what the programs do.
    let ctl = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .output()
    };
    let status = ctl(&["status", "--json"])?;
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stderr).contains("no daemon is running"));
    let status: Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["config"]["fail_mode"], "closed");
    let blocked: Vec<&str> = status["blocked_clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["client"].as_str())
        .collect();
    assert!(blocked.contains(&"198.18.0.2"), "{status}");
    assert!(ctl(&["unblock", "198.18.0.0/24"])?.status.success());
    thread::sleep(Duration::from_millis(1100));
    assert!(admitted(c0)?, "unblocked without a daemon");

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
    // The killed daemon's programs still enforce: a refusal can only come from
    // them, however long the check took (a fail-open would have let it in).
    if admitted(c0)? {
        let out = std::process::Command::new(binary())
            .args(["status", "--json", "--pin-dir"])
            .arg(bpffs.pin_dir())
            .output()?;
        panic!(
            "admitted {:?} after the kill (timeout {timeout:?}): failed open too early, \
             or the check came after the timeout (then status counts failed_open): {}",
            killed.elapsed(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Past the timeout (measured from before the kill, so from after the last
    // beat) the kernel fails open.
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
    let took_over = Instant::now();
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
    // The new daemon beats: a beat younger than the time since it took over is
    // one of its own (a wait on that, not a bound on its age).
    wait_until(
        Duration::from_secs(60),
        "a heartbeat from the new daemon",
        || {
            let since = took_over.elapsed().as_secs_f64();
            let out = s.ctl(&["status", "--json"])?;
            let status: Value = serde_json::from_slice(&out.stdout)?;
            let age = status["heartbeat_age_secs"]
                .as_f64()
                .ok_or_else(|| anyhow::anyhow!("no heartbeat age: {status}"))?;
            Ok(age < since)
        },
    )?;
    Ok(())
}

/// `api-guard run` in the server namespace of `topo`, to completion (killed,
/// and an error, if it has not exited after a minute), its connection tracker
/// on `cgroup`.
fn run_daemon(
    topo: &api_guard_tests::netns::Topology,
    pin_dir: &Path,
    cgroup: &Path,
    ifaces: &[&str],
    extra: &[&str],
) -> Result<std::process::Output> {
    let mut cmd = topo.server.command(binary().to_str().unwrap());
    cmd.args(["run", "--port", "8080", "--metrics-addr", "127.0.0.1:0"]);
    for iface in ifaces {
        cmd.args(["--iface", iface]);
    }
    cmd.arg("--pin-dir")
        .arg(pin_dir)
        .arg("--cgroup")
        .arg(cgroup)
        .args(extra);
    api_guard_tests::process::output_within(&mut cmd, Duration::from_secs(60))
}

/// The (link id, program id) of the ingress link pinned for `iface` in
/// `pin_dir`, if there is one. (A link nobody pins is gone once its daemon is.)
fn ingress_link(pin_dir: &Path, iface: &str) -> Result<Option<(u64, u64)>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin_dir.join(format!("link_ingress_{iface}")))
        .output()?;
    let link: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(link["id"].as_u64().zip(link["prog_id"].as_u64()))
}

#[test]
fn a_failed_start_leaves_nothing_new_attached() -> Result<()> {
    let bpffs = api_guard_tests::bpffs::BpfFs::mount()?;
    let topo = api_guard_tests::netns::Topology::new(2)?;
    let cgroup = api_guard_tests::cgroup::TestCgroup::new("failed-start")?;
    let pin_dir = bpffs.pin_dir();
    // Something that is not a link where c1's link belongs: the daemon attaches
    // the connection tracker and c0, then cannot clear the way for c1.
    std::fs::create_dir_all(pin_dir.join("link_ingress_c1"))?;
    let out = run_daemon(
        &topo,
        &pin_dir,
        cgroup.path(),
        &["c0", "c1"],
        &["--max-conns", "10", "--fail-mode", "closed"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("link_ingress_c1"), "{stderr}");
    assert_eq!(
        links(&pin_dir),
        ["link_ingress_c1"],
        "only the obstacle stays"
    );
    assert_eq!(ingress_link(&pin_dir, "c0")?, None, "c0 detached again");
    Ok(())
}

#[test]
fn a_link_left_on_a_renamed_interface_is_replaced_not_taken_over() -> Result<()> {
    let s = Scenario::start(1, &flags(&["--fail-mode", "closed"]))?;
    let old_prog = s.daemon.prog_id;
    let pin_dir = s.bpffs.pin_dir();
    let (old_link, _) = ingress_link(&pin_dir, "c0")?.expect("c0 is guarded");
    let (stopped, _nginx, topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success());
    assert!(program_loaded(old_prog), "closed: still attached");
    // The interface is renamed and a new one takes its name.
    topo.server.ip(&["link", "set", "c0", "down"])?;
    topo.server.ip(&["link", "set", "c0", "name", "c0old"])?;
    topo.server.ip(&["link", "set", "c0old", "up"])?;
    // (A veth pair: this kernel may have no dummy interfaces.)
    topo.server.ip(&[
        "link", "add", "c0", "type", "veth", "peer", "name", "c0peer",
    ])?;
    let daemon = Daemon::start(
        &topo.server,
        &[
            "run",
            "--iface",
            "c0",
            "--port",
            "8080",
            "--pin-dir",
            pin_dir.to_str().unwrap(),
        ]
        .map(String::from),
    )?;
    assert!(
        daemon.stderr().contains("replacing a stale pinned link"),
        "{}",
        daemon.stderr()
    );
    assert!(
        program_unloaded(old_prog),
        "the renamed interface's link went"
    );
    let (new_link, prog) = ingress_link(&pin_dir, "c0")?.expect("c0 is guarded");
    assert_ne!(
        new_link, old_link,
        "a new link, not the renamed interface's"
    );
    assert_eq!(prog, u64::from(daemon.prog_id));
    Ok(())
}
