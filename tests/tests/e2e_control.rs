//! Operator commands on a running daemon, through its pinned maps: each change
//! takes effect on the next packet.

use std::time::Duration;

use anyhow::Result;
use api_guard_tests::{
    bpffs::BpfFs,
    client::{self, answered, exhaust_conn_burst},
    daemon::binary,
    process::output_within,
    scenario::{API, Scenario},
};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn block_unblock_and_limit_change_a_live_daemon() -> Result<()> {
    let s = Scenario::start(2, &[])?;
    let (c0, c1) = (s.client(0), s.client(1));
    assert_eq!(answered(c0, 3)?, 3);

    let out = ok(&s.ctl(&["block", "198.18.0.2", "--for", "10m"])?);
    assert!(out.contains("blocked 198.18.0.2/32"), "{out}");
    assert_eq!(answered(c0, 3)?, 0, "blocked on the next packet");
    assert_eq!(answered(c1, 3)?, 3, "others untouched");
    let status: serde_json::Value = serde_json::from_str(&ok(&s.ctl(&["status", "--json"])?))?;
    assert_eq!(status["blocked_networks"][0]["network"], "198.18.0.2/32");
    assert!(
        status["blocked_networks"][0]["remaining_secs"]
            .as_u64()
            .unwrap()
            > 500
    );

    ok(&s.ctl(&["unblock", "198.18.0.0/24"])?);
    ok(&s.ctl(&["unblock", "198.18.0.2"])?);
    assert_eq!(answered(c0, 3)?, 3, "unblocked on the next packet");

    let out = ok(&s.ctl(&["limit", "198.18.1.0/24", "--rate", "1", "--burst", "2"])?);
    assert!(out.contains("limited 198.18.1.0/24"), "{out}");
    assert_eq!(answered(c1, 5)?, 2, "the new limit bites");
    assert_eq!(answered(c0, 5)?, 5, "only on that network");
    ok(&s.ctl(&["limit", "--remove", "198.18.1.0/24"])?);
    assert_eq!(answered(c1, 5)?, 5, "the limit is gone");

    let status: serde_json::Value = serde_json::from_str(&ok(&s.ctl(&["status", "--json"])?))?;
    assert_eq!(status["clients"]["tracked"], 2);
    // The network block drops SYNs (at XDP, or in TC where XDP is not
    // attached): the requests never started.
    let blocked = |v: &str| status["counters"]["connections"][v].as_u64().unwrap();
    assert!(blocked("blocked") + blocked("xdp_blocked") >= 3);
    let human = ok(&s.ctl(&["status"])?);
    assert!(human.contains("clients tracked: 2"), "{human}");
    Ok(())
}

#[test]
fn unblock_lifts_an_automatic_block_and_top_shows_the_busiest() -> Result<()> {
    // A connection-rate block: dropped SYNs die with the curl that sent them,
    // whereas a dropped request lives on in the client's TCP retransmissions and
    // would go over the limit again, and be blocked again, after the unblock.
    let s = Scenario::start(
        2,
        &[
            "--conn-rate",
            "1",
            "--conn-burst",
            "3",
            "--block-for",
            "10m",
        ],
    )?;
    let c0 = s.client(0);
    exhaust_conn_burst(c0, 3)?;
    assert_eq!(answered(c0, 1)?, 0, "and still blocked");
    let status: serde_json::Value = serde_json::from_str(&ok(&s.ctl(&["status", "--json"])?))?;
    assert_eq!(status["blocked_clients"][0]["client"], "198.18.0.2");
    let out = ok(&s.ctl(&["unblock", "198.18.0.0/24"])?);
    assert!(out.contains("1 client block(s) lifted"), "{out}");
    // The bucket refills at 1/s; the block, not the bucket, stopped the client.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(answered(c0, 1)?, 1);

    // top --once: the busy client first. It samples for a second, so the busy
    // client sends over the whole of that second, whenever it starts: 20
    // requests paced over 2 s on one keep-alive connection (one connection,
    // well inside the connection limit).
    let busy = s.client(1);
    let (json, text, sent) = std::thread::scope(|scope| {
        let json = scope.spawn(|| s.ctl(&["top", "--once", "--json", "-n", "5"]));
        let text = scope.spawn(|| s.ctl(&["top", "--once", "-n", "5"]));
        let urls: Vec<String> = (0..20)
            .map(|i| client::url(busy.server(false), API, &format!("/busy/{i}")))
            .collect();
        let sent = client::curl(
            &busy.ns,
            &urls,
            client::Opts::new(client::Connections::KeepAlive).per_second(10),
        );
        (json.join().unwrap(), text.join().unwrap(), sent)
    });
    assert_eq!(sent?.ok(), 20, "the busy client is within its limits");
    let frame: serde_json::Value = serde_json::from_str(&ok(&json?))?;
    assert_eq!(frame["clients"][0]["client"], "198.18.1.2", "{frame}");
    assert!(frame["clients"][0]["requests_per_second"].as_f64() > Some(0.0));
    assert!(frame["requests_per_second"]["allowed"].as_f64() > Some(0.0));
    let text = ok(&text?);
    let first = text
        .lines()
        .skip_while(|l| !l.starts_with("CLIENT"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.starts_with("198.18.1.2"), "{text}");

    // Live: a frame per interval until the daemon stops, then it exits.
    let live = std::process::Command::new(binary())
        .args(["top", "--json", "--interval", "200ms", "--pin-dir"])
        .arg(s.bpffs.pin_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let live = KillOnDrop(Some(live));
    std::thread::sleep(Duration::from_millis(1200));
    let (stopped, _nginx, _topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success());
    // A hang guard, not a deadline: top notices within an interval.
    let out = live.wait_output(Duration::from_secs(60))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let frames = stdout
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?;
    assert!(frames.len() >= 3, "refreshed: {stdout}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert_eq!(out.status.code(), Some(5), "no daemon any more");
    Ok(())
}

/// A child killed if the test ends before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait_output(mut self, within: Duration) -> Result<std::process::Output> {
        let deadline = std::time::Instant::now() + within;
        let child = self.0.as_mut().expect("a child");
        while child.try_wait()?.is_none() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "top did not exit after the daemon stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.0.take().expect("a child").wait_with_output()?)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn commands_without_a_daemon_say_so() -> Result<()> {
    let fs = BpfFs::mount()?;
    let pin_dir = fs.pin_dir();
    for args in [
        &["status"][..],
        &["top"],
        &["block", "198.18.0.1"],
        &["unblock", "198.18.0.1"],
        &["limit", "--remove", "198.18.0.0/24"],
    ] {
        let out = std::process::Command::new(binary())
            .args(args)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no api-guard daemon is running"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1);
    }
    Ok(())
}

#[test]
fn two_daemons_cannot_share_a_pin_dir() -> Result<()> {
    let s = Scenario::start(1, &[])?;
    let pin_dir = s.bpffs.pin_dir();
    let mut second = s.topo.server.command(binary().to_str().unwrap());
    second
        .args([
            "run",
            "--iface",
            "c0",
            "--port",
            "9",
            "--metrics-addr",
            "127.0.0.1:9478",
            "--pin-dir",
        ])
        .arg(&pin_dir);
    // Killed, and failing the test, if it does not refuse.
    let out = output_within(&mut second, Duration::from_secs(60))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("another api-guard is running"), "{stderr}");
    // The first daemon is unharmed.
    assert!(s.ctl(&["status"])?.status.success());
    Ok(())
}

#[test]
fn pins_are_root_only_and_commands_need_privilege() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scenario::start(1, &[])?;
    let dir = s.bpffs.pin_dir();
    let meta = std::fs::metadata(&dir)?;
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o700, 0));
    let mut pinned = 0;
    for entry in std::fs::read_dir(&dir)? {
        let m = entry?.metadata()?;
        assert_eq!((m.permissions().mode() & 0o777, m.uid()), (0o600, 0));
        pinned += 1;
    }
    assert!(pinned >= 9, "{pinned} pins");
    // An unprivileged user is refused before touching anything.
    let out = api_guard_tests::daemon::unprivileged()
        .args(["block", "198.18.0.2", "--pin-dir"])
        .arg(&dir)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert_eq!(answered(s.client(0), 2)?, 2, "nothing was blocked");
    Ok(())
}

#[test]
fn json_logs_are_one_object_per_line() -> Result<()> {
    let s = Scenario::start(1, &["--log-format", "json", "--report-every", "1s"])?;
    assert!(answered(s.client(0), 2)? == 2);
    std::thread::sleep(Duration::from_millis(1500));
    let (stopped, _nginx, _topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success());
    let lines: Vec<serde_json::Value> = stopped
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{e}: {l:?}")))
        .collect::<Result<_>>()?;
    let ready = lines
        .iter()
        .find(|l| l["message"] == "api-guard ready")
        .ok_or_else(|| anyhow::anyhow!("no ready line: {}", stopped.stderr))?;
    assert_eq!(ready["level"], "INFO");
    assert!(ready["prog_id"].as_u64().is_some(), "{ready}");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("requests"))),
        "the periodic summary is logged too: {}",
        stopped.stderr
    );
    Ok(())
}

#[test]
fn bpffs_is_mounted_for_the_user_when_absent() -> Result<()> {
    // `ip netns exec` gives the daemon a /sys of its own, without bpffs: with
    // the default --pin-dir it mounts one there (gone with its mount namespace).
    let topo = api_guard_tests::netns::Topology::new(1)?;
    let daemon = api_guard_tests::daemon::Daemon::start(
        &topo.server,
        &["run", "--iface", "c0", "--port", "8080"].map(String::from),
    )?;
    assert!(
        daemon.stderr().contains("mounted bpffs at /sys/fs/bpf"),
        "{}",
        daemon.stderr()
    );
    let stopped = daemon.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    Ok(())
}
