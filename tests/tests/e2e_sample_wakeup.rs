//! `--sample-wakeup batched`: the kernel stops waking the daemon for each
//! sample (BPF_RB_NO_WAKEUP until 64 KiB wait). A trickle of requests never
//! fills that, so every line here reaches the access log through the daemon's
//! timed read alone, with its response joined; nginx's log is the judge of
//! what was served.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use api_guard_tests::{
    PREFIX,
    client::url,
    process::wait_until,
    scenario::{API, Scenario},
};
use serde_json::Value;

fn log_lines(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l:?}")))
        .collect()
}

#[test]
fn batched_wakeups_still_log_every_sample_of_a_trickle_while_the_daemon_runs() -> Result<()> {
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let log = dir.path().join("access.log");
    let s = Scenario::start(
        1,
        &[
            "--access-log",
            log.to_str().context("log path")?,
            "--sample-wakeup",
            "batched",
        ],
    )?;
    let c = s.client(0);
    const N: usize = 20;
    for i in 0..N {
        let u = url(c.server4.into(), API, &format!("/trickle/{i}"));
        let code = c.ns.exec(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                &u,
            ],
        )?;
        assert_eq!(code.trim(), "200");
    }
    assert_eq!(s.served("198.18.0.2", API)?, N);
    // Logged while the daemon runs (no stop to drain the ring): the timed
    // read took them, and the one-second flush wrote them.
    wait_until(
        Duration::from_secs(30),
        "every sample in the access log",
        || Ok(log_lines(&log)?.len() >= N),
    )?;
    let lines = log_lines(&log)?;
    assert_eq!(lines.len(), N, "one line a request");
    for l in &lines {
        assert_eq!(l["http.response.status_code"], 200, "{l}");
    }
    let (stopped, ..) = s.stop()?;
    let samples = stopped
        .report()?
        .into_iter()
        .find(|v| v["type"] == "samples")
        .context("no samples line")?;
    assert_eq!(samples["sampled"], N as u64);
    assert_eq!(samples["lost"], 0);
    Ok(())
}
