//! Who the client is behind an L7 proxy, end to end: a real nginx as a
//! reverse proxy (`proxy_set_header X-Forwarded-For
//! $proxy_add_x_forwarded_for`) in its own namespace, in front of a real nginx
//! the daemon watches (`--trusted-proxy` the proxy, `--trusted-hops 1`).
//! Judged by the server's access log (every request it served, tagged by
//! client in the path) and the proxy's answers: each client has its own
//! bucket and the proxy is never limited; a direct client's forged
//! `X-Forwarded-For` names no one; and clients pooled on one upstream
//! connection are reported (counter, geo file, status), never reset.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use api_guard_tests::{
    PREFIX,
    bpffs::BpfFs,
    client::{Connections, Opts, curl, url},
    daemon::{self, Daemon},
    netns::Topology,
    nginx::Nginx,
    process::wait_until,
};

const API: u16 = 8080;
/// The proxy's listening address (on its loopback), and its clients'.
const PROXY_LISTEN: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const ALICE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const BOB: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const BURST: u32 = 3;

/// Client host 0 runs the proxy (its clients on its loopback, as if behind
/// it); client host 1 reaches the server directly.
struct Scene {
    daemon: Option<Daemon>,
    server: Nginx,
    _proxy: Nginx,
    topo: Topology,
    bpffs: BpfFs,
    geo: PathBuf,
    findings: PathBuf,
    _geo_dir: tempfile::TempDir,
}

impl Scene {
    /// `keepalive`: the proxy's idle upstream connections (0: one per request).
    fn start(keepalive: u32, extra: &[&str]) -> Result<Self> {
        let bpffs = BpfFs::mount()?;
        let geo_dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        let geo = geo_dir.path().join("over.geo");
        let findings = geo_dir.path().join("findings.log");
        let topo = Topology::new(2)?;
        let lb = &topo.clients[0];
        lb.ns.ip(&["link", "set", "lo", "up"])?;
        for a in [PROXY_LISTEN, ALICE, BOB] {
            lb.ns
                .ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        let server = Nginx::start(&topo.server, &[API])?;
        let proxy = Nginx::start_l7_proxy(
            &lb.ns,
            API,
            SocketAddr::new(lb.server4.into(), API),
            keepalive,
        )?;
        let mut args: Vec<String> = [
            "run",
            "--port",
            &API.to_string(),
            "--pin-dir",
            &bpffs.pin_dir().display().to_string(),
            "--cgroup",
            &server.cgroup().display().to_string(),
            "--rate",
            "1",
            "--burst",
            &BURST.to_string(),
            "--on-limit",
            "reset",
            "--trusted-proxy",
            &lb.addr4.to_string(),
            "--trusted-hops",
            "1",
            "--forwarded-blocklist",
            &geo.display().to_string(),
            "--findings-log",
            &findings.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for iface in &topo.server_ifaces {
            args.extend(["--iface".into(), iface.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::start(&topo.server, &args)?;
        Ok(Self {
            daemon: Some(daemon),
            server,
            _proxy: proxy,
            topo,
            bpffs,
            geo,
            findings,
            _geo_dir: geo_dir,
        })
    }

    /// `n` requests for `/c/NAME/...` from `client` through the proxy, one
    /// after another on one keep-alive connection to the proxy; their statuses.
    fn via_proxy(&self, client: Ipv4Addr, name: &str, n: usize) -> Result<Vec<u16>> {
        let urls: Vec<String> = (0..n)
            .map(|i| url(PROXY_LISTEN.into(), API, &format!("/c/{name}/{i}")))
            .collect();
        Ok(curl(
            &self.topo.clients[0].ns,
            &urls,
            Opts::new(Connections::KeepAlive).source(IpAddr::V4(client)),
        )?
        .statuses)
    }

    /// Requests the server served (200) for client `name`.
    fn served(&self, name: &str) -> Result<usize> {
        let prefix = format!("/c/{name}/");
        Ok(self
            .server
            .access_log()?
            .iter()
            .filter(|l| l.uri.starts_with(&prefix) && l.status == 200)
            .count())
    }

    fn status(&self) -> Result<serde_json::Value> {
        self.ctl(&["status", "--json"])
    }

    /// `api-guard ARGS --pin-dir ...`, run to its end.
    fn ctl_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self
            .topo
            .server
            .command(&daemon::binary().display().to_string())
            .args(args)
            .arg("--pin-dir")
            .arg(self.bpffs.pin_dir())
            .output()?)
    }

    /// `api-guard ARGS --pin-dir ...`'s JSON output.
    fn ctl(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.ctl_output(args)?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("status JSON")
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.stop();
        }
    }
}

#[test]
fn two_clients_behind_one_proxy_get_their_own_buckets_and_the_proxy_is_never_limited() -> Result<()>
{
    // A new upstream connection per request: each carries one client, so
    // limits are enforced (a reset the proxy answers 502). A key header alone
    // (fingerprints, no key limit) is allowed beside --trusted-hops.
    let s = Scene::start(0, &["--key-header", "X-API-Key"])?;
    let alice = s.via_proxy(ALICE, "alice", 8)?;
    let bob = s.via_proxy(BOB, "bob", BURST as usize)?;
    // Alice got her burst (and at most a token that freed meanwhile), then
    // was refused by her own bucket.
    let ok = alice.iter().filter(|c| **c == 200).count();
    assert!(ok >= BURST as usize && ok < 8, "alice's answers: {alice:?}");
    assert_eq!(
        s.served("alice")?,
        ok,
        "the server saw what the proxy answered"
    );
    // Bob, behind the same proxy right after, is untouched.
    assert_eq!(bob, vec![200; BURST as usize], "bob's answers");
    assert_eq!(s.served("bob")?, BURST as usize);
    let status = s.status()?;
    assert_eq!(status["forwarded"]["trusted_hops"], 1);
    assert_eq!(status["forwarded"]["pooled_connections"], 0);
    assert!(
        status["counters"]["requests"]["rate_limited"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{}",
        status["counters"]
    );
    // A direct client forging X-Forwarded-For is charged by its own address:
    // limited by its own burst, whoever it names.
    let direct = &s.topo.clients[1];
    let urls: Vec<String> = (0..BURST + 2)
        .map(|i| url(direct.server4.into(), API, &format!("/c/forger/{i}")))
        .collect();
    let forged = curl_with_header(&direct.ns, &urls, &format!("X-Forwarded-For: {BOB}"))?;
    let forged_ok = forged.iter().filter(|c| **c == 200).count();
    assert!(
        forged_ok >= BURST as usize && forged_ok < urls.len(),
        "{forged:?}"
    );
    // A route or key limit added live would pass the proxy's requests by:
    // refused, and the kernel's key policy left as it was.
    for args in [
        &["limit", "--route", "GET /c/=1"][..],
        &["limit", "--key-rate", "1"][..],
    ] {
        let out = s.ctl_output(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--trusted-hops"),
            "{args:?} was not refused: {stderr}"
        );
    }
    // Nothing went in: the pinned policy has no such route to remove.
    let out = s.ctl_output(&["limit", "--remove-route", "GET /c/"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no route limit"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn clients_pooled_on_one_upstream_connection_are_reported_never_reset() -> Result<()> {
    // Idle upstream connections kept: alice's and bob's requests share one.
    let s = Scene::start(4, &[])?;
    let mut sent = 0;
    let mut answers = Vec::new();
    for round in 0..4 {
        for (who, name) in [(ALICE, "alice"), (BOB, "bob")] {
            // Alice sends her burst each round; bob stays within his burst.
            let n = match (who == ALICE, round < BURST) {
                (true, _) => BURST as usize,
                (false, true) => 1,
                (false, false) => 0,
            };
            if n > 0 {
                answers.extend(s.via_proxy(who, &format!("{name}{round}"), n)?);
                sent += n;
            }
        }
    }
    // Every request was answered and served: none was dropped or reset.
    assert_eq!(answers, vec![200; sent], "the proxy's answers");
    let served: usize = (0..4)
        .map(|r| s.served(&format!("alice{r}")).unwrap() + s.served(&format!("bob{r}")).unwrap())
        .sum();
    assert_eq!(served, sent, "the server's access log");
    // Alice went over her limit: reported, in the status and the geo file.
    let status = s.status()?;
    let reported = status["counters"]["requests"]["forwarded_reported"]
        .as_u64()
        .unwrap_or(0);
    assert!(reported > 0, "{}", status["counters"]);
    assert!(
        status["forwarded"]["pooled_connections"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    let over: Vec<&str> = status["forwarded"]["over_limit"]
        .as_array()
        .context("over_limit")?
        .iter()
        .filter_map(|c| c["client"].as_str())
        .collect();
    assert!(over.contains(&ALICE.to_string().as_str()), "{over:?}");
    let top = s.ctl(&["top", "--once", "--json", "--interval", "200ms"])?;
    let top_over: Vec<&str> = top["forwarded_over_limit"]
        .as_array()
        .context("top's forwarded_over_limit")?
        .iter()
        .filter_map(|c| c["client"].as_str())
        .collect();
    assert!(top_over.contains(&ALICE.to_string().as_str()), "{top}");
    let line = format!("{ALICE} 1;");
    wait_until(
        std::time::Duration::from_secs(10),
        "the geo file to list alice",
        || {
            Ok(std::fs::read_to_string(&s.geo)
                .unwrap_or_default()
                .contains(&line))
        },
    )?;
    let geo = std::fs::read_to_string(&s.geo)?;
    assert!(geo.contains("default 0;"), "{geo}");
    assert!(!geo.contains(&format!("{BOB} 1;")), "{geo}");
    // And a finding, read back by `api-guard report` under API4: alice once
    // (she stayed over), bob never.
    let findings = || -> Result<Vec<serde_json::Value>> {
        Ok(std::fs::read_to_string(&s.findings)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    };
    // A bound against a hang only (the task writes within a second).
    wait_until(
        std::time::Duration::from_secs(120),
        "a forwarded finding for alice",
        || Ok(!findings()?.is_empty()),
    )?;
    let lines = findings()?;
    let alice = ALICE.to_string();
    assert!(
        lines.iter().all(|f| f["detector"] == "forwarded"
            && f["client"] == alice.as_str()
            && f["action"] == "report"
            && f["blocked"] == false),
        "{lines:?}"
    );
    let report = s.ctl(&[
        "report",
        "--findings-log",
        &s.findings.display().to_string(),
        "--json",
    ])?;
    let api4 = report["risks"]
        .as_array()
        .context("risks")?
        .iter()
        .find(|r| r["id"] == "API4:2023")
        .context("API4")?
        .clone();
    assert_eq!(api4["observed"], true, "{api4}");
    assert_eq!(api4["clients"][0]["client"], alice.as_str(), "{api4}");
    assert_eq!(
        status["counters"]["requests"]["rate_limited"]
            .as_u64()
            .unwrap_or(0),
        0,
        "nothing refused on the pooled connection"
    );
    Ok(())
}

/// `urls` over one keep-alive connection with an extra request header; the
/// statuses.
fn curl_with_header(
    ns: &api_guard_tests::netns::Netns,
    urls: &[String],
    header: &str,
) -> Result<Vec<u16>> {
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "10".into(),
        "-H".into(),
        header.into(),
        "-w".into(),
        "%{http_code}\\n".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for (i, u) in urls.iter().enumerate() {
        if i > 0 {
            args.extend(["-o".into(), "/dev/null".into()]);
        }
        args.push(u.clone());
    }
    let out = ns.command("curl").args(&args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}
