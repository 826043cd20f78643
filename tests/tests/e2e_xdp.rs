//! The XDP pre-filter end to end, in native mode on the server's veth
//! interfaces (veth runs a native XDP program on what its peer sends once the
//! program is attached: the kernel then turns the peer's segmentation offloads
//! off, so every frame takes veth's NAPI path through XDP). nginx's access log
//! and the kernel's own view of the interface are the judges.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use api_guard_tests::{
    client,
    daemon::{Daemon, binary, program_unloaded},
    netns::{Client, Netns},
    scenario::{API, Scenario},
};
use serde_json::Value;

/// For bursts that expect drops: a dropped SYN is retried after 1 s, so giving
/// up at 400 ms leaves the client nothing to retry.
const SHORT: Duration = Duration::from_millis(400);
/// A hang guard for bursts that must all be answered.
const EVERY: Duration = Duration::from_secs(30);

fn burst(c: &Client, n: usize, max_time: Duration) -> Result<usize> {
    client::burst(c, None, n, max_time)
}

/// The XDP program the kernel runs on `iface` in `ns`: (mode, program id), the
/// mode as iproute2 names it (1: driver, 2: generic); None when there is none.
fn xdp_on(ns: &Netns, iface: &str) -> Result<Option<(u64, u32)>> {
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", iface])?;
    let links: Value = serde_json::from_str(&out).context("ip -j link")?;
    let xdp = &links[0]["xdp"];
    if xdp.is_null() {
        return Ok(None);
    }
    let mode = xdp["mode"].as_u64().context("xdp mode")?;
    let id = xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .with_context(|| format!("xdp program id in {xdp}"))?;
    Ok(Some((mode, id as u32)))
}

fn status(pin_dir: &Path) -> Result<Value> {
    let out = std::process::Command::new(binary())
        .args(["status", "--json", "--pin-dir"])
        .arg(pin_dir)
        .output()?;
    anyhow::ensure!(out.status.success(), "status: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn count(status: &Value, kind: &str, verdict: &str) -> u64 {
    status["counters"][kind][verdict].as_u64().unwrap_or(0)
}

const DRIVER: u64 = 1;

#[test]
fn blocked_and_denied_clients_are_dropped_at_xdp_while_others_are_served() -> Result<()> {
    let s = Scenario::start(
        3,
        &[
            "--rate",
            "1",
            "--burst",
            "2",
            "--block-for",
            "1h",
            "--deny",
            "198.18.1.0/24",
            "--xdp",
            "native",
        ],
    )?;
    let pin_dir = s.bpffs.pin_dir();
    let (mode, xdp_prog) = xdp_on(&s.topo.server, "c0")?.context("no XDP on c0")?;
    assert_eq!(mode, DRIVER, "native, not generic");
    assert!(
        s.daemon
            .stderr()
            .contains("XDP pre-filter attached in native mode"),
        "{}",
        s.daemon.stderr()
    );
    let st = status(&pin_dir)?;
    for iface in ["c0", "c1", "c2"] {
        assert_eq!(st["xdp"][iface], "native", "{st}");
    }

    // Client 0 goes over its limit and is blocked by TC; from then on XDP
    // drops it.
    assert_eq!(burst(s.client(0), 3, SHORT)?, 2);
    let blocked_before = count(&status(&pin_dir)?, "connections", "xdp_blocked");
    assert_eq!(burst(s.client(0), 3, SHORT)?, 0, "blocked");
    // Client 1's network is denied: nothing reaches nginx.
    assert_eq!(burst(s.client(1), 3, SHORT)?, 0, "denied");
    // Client 2 is served.
    assert_eq!(burst(s.client(2), 2, EVERY)?, 2);

    let st = status(&pin_dir)?;
    assert!(
        count(&st, "connections", "xdp_blocked") >= blocked_before + 3,
        "the blocked client's SYNs were XDP's: {st}"
    );
    assert!(
        count(&st, "connections", "xdp_denied") >= 3,
        "the denied client's SYNs were XDP's: {st}"
    );
    // TC saw none of the denied client's SYNs: XDP took them all.
    assert_eq!(count(&st, "connections", "denied"), 0, "{st}");
    // nginx is the judge of what got through.
    assert_eq!(s.served("198.18.0.2", API)?, 2);
    assert_eq!(s.served("198.18.1.2", API)?, 0);
    assert_eq!(s.served("198.18.2.2", API)?, 2);

    // The default fail mode is open: stopping detaches XDP as it does TC.
    let (stopped, _nginx, topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(xdp_on(&topo.server, "c0")?, None, "XDP detached on stop");
    assert!(program_unloaded(xdp_prog), "the XDP program is gone");
    Ok(())
}

#[test]
fn dry_run_drops_nothing_at_xdp() -> Result<()> {
    let s = Scenario::start(
        2,
        &["--deny", "198.18.1.0/24", "--dry-run", "--xdp", "native"],
    )?;
    assert!(xdp_on(&s.topo.server, "c1")?.is_some());
    assert_eq!(burst(s.client(1), 3, EVERY)?, 3, "dry run: all served");
    assert_eq!(s.served("198.18.1.2", API)?, 3);
    let st = status(&s.bpffs.pin_dir())?;
    for kind in ["packets", "requests", "connections"] {
        assert_eq!(count(&st, kind, "xdp_denied"), 0, "{st}");
        assert_eq!(count(&st, kind, "xdp_blocked"), 0, "{st}");
    }
    assert!(count(&st, "connections", "would_drop") >= 3, "{st}");
    Ok(())
}

#[test]
fn a_closed_daemons_xdp_link_keeps_dropping_until_detach_removes_it() -> Result<()> {
    let s = Scenario::start(
        2,
        &[
            "--deny",
            "198.18.1.0/24",
            "--fail-mode",
            "closed",
            "--xdp",
            "native",
        ],
    )?;
    let pin_dir = s.bpffs.pin_dir();
    let (_, xdp_prog) = xdp_on(&s.topo.server, "c1")?.context("no XDP on c1")?;
    assert!(pin_dir.join("link_xdp_c1").exists());
    let (stopped, _nginx, topo, bpffs) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(
        xdp_on(&topo.server, "c1")?.map(|x| x.1),
        Some(xdp_prog),
        "pinned: still attached without a daemon"
    );
    let before = count(&status(&pin_dir)?, "connections", "xdp_denied");
    assert_eq!(burst(&topo.clients[1], 2, SHORT)?, 0, "still dropped");
    assert!(count(&status(&pin_dir)?, "connections", "xdp_denied") >= before + 2);

    // A new daemon takes the pinned XDP link over (the same link, a new program).
    let mut args = vec!["run".to_string(), "--port".into(), API.to_string()];
    for iface in &topo.server_ifaces {
        args.extend(["--iface".into(), iface.clone()]);
    }
    args.extend(["--pin-dir".into(), pin_dir.display().to_string()]);
    args.extend(
        ["--deny", "198.18.1.0/24", "--fail-mode", "closed"]
            .iter()
            .map(|f| f.to_string()),
    );
    let daemon = Daemon::start(&topo.server, &args)?;
    let (_, taken) = xdp_on(&topo.server, "c1")?.context("no XDP after the takeover")?;
    assert_ne!(taken, xdp_prog, "the new daemon's program runs");
    assert!(program_unloaded(xdp_prog), "the old program was replaced");
    let stopped = daemon.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");

    let out = std::process::Command::new(binary())
        .args(["detach", "--pin-dir"])
        .arg(&pin_dir)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(xdp_on(&topo.server, "c1")?, None, "detach removed XDP");
    assert!(program_unloaded(taken));
    assert_eq!(burst(&topo.clients[1], 2, EVERY)?, 2, "nothing drops now");
    drop(bpffs);
    Ok(())
}

#[test]
fn native_fails_clearly_where_the_driver_has_no_xdp_and_auto_goes_without() -> Result<()> {
    let bpffs = api_guard_tests::bpffs::BpfFs::mount()?;
    let ns = Netns::new("xdp-lo")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let args = |mode: &str| -> Vec<String> {
        [
            "run",
            "--port",
            "8080",
            "--iface",
            "lo",
            "--xdp",
            mode,
            "--pin-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([bpffs.pin_dir().display().to_string()])
        .collect()
    };
    let out = ns
        .command(binary().to_str().context("binary")?)
        .args(args("native"))
        .output()?;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot attach XDP in native mode to lo"),
        "{stderr}"
    );
    assert_eq!(xdp_on(&ns, "lo")?, None, "nothing left attached");

    let daemon = Daemon::start(&ns, &args("auto"))?;
    assert!(
        daemon.stderr().contains("XDP pre-filter not attached"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(status(&bpffs.pin_dir())?["xdp"]["lo"], "none");
    assert_eq!(xdp_on(&ns, "lo")?, None);
    let stopped = daemon.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    Ok(())
}
