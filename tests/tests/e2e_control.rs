//! Operator commands on a running daemon, through its pinned maps: each change
//! takes effect on the next packet.

use std::time::Duration;

use anyhow::Result;
use api_guard_tests::{bpffs::BpfFs, client, daemon::binary, netns::Client, scenario::Scenario};

/// `n` new connections at once; how many were answered within 400 ms (an
/// over-limit request's retransmission at 200 ms cannot meet a refill at 1/s).
fn burst(c: &Client, n: usize) -> Result<usize> {
    client::burst(c, None, n, Duration::from_millis(400))
}

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
    assert_eq!(burst(c0, 3)?, 3);

    let out = ok(&s.ctl(&["block", "198.18.0.2", "--for", "10m"])?);
    assert!(out.contains("blocked 198.18.0.2/32"), "{out}");
    assert_eq!(burst(c0, 3)?, 0, "blocked on the next packet");
    assert_eq!(burst(c1, 3)?, 3, "others untouched");
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
    assert_eq!(burst(c0, 3)?, 3, "unblocked on the next packet");

    let out = ok(&s.ctl(&["limit", "198.18.1.0/24", "--rate", "1", "--burst", "2"])?);
    assert!(out.contains("limited 198.18.1.0/24"), "{out}");
    assert_eq!(burst(c1, 5)?, 2, "the new limit bites");
    assert_eq!(burst(c0, 5)?, 5, "only on that network");
    ok(&s.ctl(&["limit", "--remove", "198.18.1.0/24"])?);
    assert_eq!(burst(c1, 5)?, 5, "the limit is gone");

    let status: serde_json::Value = serde_json::from_str(&ok(&s.ctl(&["status", "--json"])?))?;
    assert_eq!(status["clients"]["tracked"], 2);
    // The network block drops SYNs: the requests never started.
    assert!(
        status["counters"]["connections"]["blocked"]
            .as_u64()
            .unwrap()
            >= 3
    );
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
    // One connection at a time: a block drops everything, so a connection still
    // in its handshake when a sibling goes over would be caught by it too.
    for _ in 0..3 {
        assert_eq!(burst(c0, 1)?, 1);
    }
    assert_eq!(burst(c0, 1)?, 0, "over the connection rate: blocked");
    assert_eq!(burst(c0, 1)?, 0, "and still blocked");
    let status: serde_json::Value = serde_json::from_str(&ok(&s.ctl(&["status", "--json"])?))?;
    assert_eq!(status["blocked_clients"][0]["client"], "198.18.0.2");
    let out = ok(&s.ctl(&["unblock", "198.18.0.0/24"])?);
    assert!(out.contains("1 client block(s) lifted"), "{out}");
    // The bucket refills at 1/s; the block, not the bucket, stopped the client.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(burst(c0, 1)?, 1);

    // top: the busy client first. It samples for a second while traffic flows.
    let busy = s.client(1);
    let top = std::thread::scope(|scope| {
        let t = scope.spawn(|| s.ctl(&["top", "-n", "5"]));
        for _ in 0..3 {
            let _ = burst(busy, 3);
        }
        t.join().unwrap()
    })?;
    let top = ok(&top);
    let first = top.lines().nth(1).unwrap_or_default();
    assert!(first.starts_with("198.18.1.2"), "{top}");
    Ok(())
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
    let out = s
        .topo
        .server
        .command(binary().to_str().unwrap())
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
        .arg(&pin_dir)
        .output()?;
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
    assert_eq!(burst(s.client(0), 2)?, 2, "nothing was blocked");
    Ok(())
}
