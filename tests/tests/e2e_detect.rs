//! The detectors end to end: real nginx answering by object ID (owned IDs 200,
//! others 403 or 404), attackers and look-alikes each from a namespace of
//! their own, the real daemon joining requests with responses, its findings
//! log read back, and nginx's own access log judging whether a block bites.

use std::{collections::BTreeSet, fs, path::Path, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    PREFIX,
    client::{Connections, Opts, curl, url},
    netns::Client,
    process::wait_until,
    scenario::{API, Scenario},
};
use serde_json::Value;

/// Orders: a client owns the IDs ending in 0 (200), the rest are someone
/// else's (403). Documents: owned IDs end in 0, others do not exist (404).
/// Items (a page's assets): all 200. A login that refuses everyone (401), a
/// paged list (200), and 404 for the rest.
const LOCATIONS: &str = r#"        location ~ ^/v1/orders/[0-9]*0$ { return 200 "order\n"; }
        location ~ ^/v1/orders/[0-9]+$ { return 403; }
        location ~ ^/v1/docs/[0-9]*0$ { return 200 "doc\n"; }
        location ~ ^/v1/items/[0-9]+$ { return 200 "item\n"; }
        location = /login { return 401; }
        location = /v1/list { return 200 "page\n"; }
        location / { return 404; }
"#;

fn findings(path: &Path) -> Result<Vec<Value>> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad findings line {l:?}")))
        .collect()
}

fn flagged(all: &[Value]) -> BTreeSet<String> {
    all.iter()
        .filter_map(|f| f["client"].as_str().map(str::to_string))
        .collect()
}

/// Sends `paths` from `c` over keep-alive connections, `per_second`, in
/// batches of `batch`, and stops after the first batch with a request
/// unanswered (blocked: an attacker gives up). Returns the statuses.
fn walk(c: &Client, paths: &[String], per_second: u32, batch: usize) -> Result<Vec<u16>> {
    let mut statuses = Vec::new();
    for chunk in paths.chunks(batch) {
        let urls: Vec<String> = chunk
            .iter()
            .map(|p| url(c.server4.into(), API, p))
            .collect();
        let b = curl(
            &c.ns,
            &urls,
            Opts::new(Connections::KeepAlive)
                .per_second(per_second)
                .max_time(Duration::from_secs(2)),
        )?;
        let stop = b.statuses.contains(&0);
        statuses.extend(b.statuses);
        if stop {
            break;
        }
    }
    Ok(statuses)
}

/// `n` logins from `c`, each with another `Authorization` value (curl's
/// `--next` gives each request its own header), over one connection.
fn stuff(c: &Client, secrets: &[String]) -> Result<Vec<u16>> {
    let u = url(c.server4.into(), API, "/login");
    let headers: Vec<String> = secrets
        .iter()
        .map(|s| format!("Authorization: Basic {s}"))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            args.push("--next");
        }
        args.extend([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
            "--max-time",
            "1",
            "-H",
            h,
            &u,
        ]);
    }
    let out = c.ns.command("curl").args(&args).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Ok(l.trim().parse()?))
        .collect()
}

fn served(s: &Scenario, c: &Client) -> Result<usize> {
    s.served(&c.addr4.to_string(), API)
}

#[test]
fn attackers_are_found_and_blocked_and_look_alikes_are_left_alone() -> Result<()> {
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let log = dir.path().join("findings.log");
    // A rate limit every client here stays under: what it misses, the
    // detectors catch.
    let s = Scenario::start_locations(
        7,
        LOCATIONS,
        &[
            "--rate",
            "60",
            "--burst",
            "120",
            "--detect",
            "bola=block",
            "--detect",
            "stuffing=block",
            "--detect",
            "probing=block",
            "--block-for",
            "10m",
            "--findings-log",
            log.to_str().unwrap(),
        ],
    )?;
    let (fast, slow, stuffer, prober) = (s.client(0), s.client(1), s.client(2), s.client(3));
    let (spa, retrier, pager) = (s.client(4), s.client(5), s.client(6));
    let attackers: BTreeSet<String> = [fast, slow, stuffer, prober]
        .iter()
        .map(|c| c.addr4.to_string())
        .collect();
    let look_alikes: BTreeSet<String> = [spa, retrier, pager]
        .iter()
        .map(|c| c.addr4.to_string())
        .collect();

    // The slow enumerator, two documents a second (a thirtieth of the rate
    // limit), walks alongside everything else.
    let slow_walk: Vec<String> = (1..=80).map(|i| format!("/v1/docs/{i}")).collect();
    let (slow_statuses, rest) = thread::scope(|scope| -> Result<_> {
        let slow_run = scope.spawn(|| walk(slow, &slow_walk, 2, 10));

        // Look-alikes first: a page fetching its 50 items at once, a client
        // retrying one missing path, a batch job paging through a list.
        let items: Vec<String> = (1..=50)
            .map(|i| url(spa.server4.into(), API, &format!("/v1/items/{}", 7000 + i)))
            .collect();
        eprintln!("look-alikes");
        let spa_batch = curl(&spa.ns, &items, Opts::new(Connections::Parallel))?;
        ensure!(spa_batch.ok() == 50, "{:?}", spa_batch.statuses);
        let retries: Vec<String> = (0..30)
            .map(|_| url(retrier.server4.into(), API, "/v1/missing"))
            .collect();
        let r = curl(&retrier.ns, &retries, Opts::new(Connections::KeepAlive))?;
        ensure!(r.statuses.iter().all(|s| *s == 404), "{:?}", r.statuses);
        let pages: Vec<String> = (1..=200)
            .map(|p| url(pager.server4.into(), API, &format!("/v1/list?page={p}")))
            .collect();
        // Paced as a batch job would be, under the rate limit.
        let p = curl(
            &pager.ns,
            &pages,
            Opts::new(Connections::KeepAlive).per_second(30),
        )?;
        ensure!(p.ok() == 200, "{:?}", p.statuses);

        // The fast enumerator walks 300 sequential order IDs (40 a second,
        // under the rate limit too).
        let order_walk: Vec<String> = (1000..1300).map(|i| format!("/v1/orders/{i}")).collect();
        eprintln!("fast enumerator");
        let fast_statuses = walk(fast, &order_walk, 40, 10)?;
        eprintln!("stuffer");
        // The credential stuffer: 25 logins, each with other credentials.
        let secrets: Vec<String> = (0..25)
            .map(|i| format!("c3R1ZmZlZC1zZWNyZXQt{i:04}-{}", std::process::id()))
            .collect();
        let stuffer_statuses = stuff(stuffer, &secrets)?;
        // The prober: 40 paths that do not exist.
        let probes: Vec<String> = (0..40)
            .map(|i| format!("/{}{i}", ["admin", ".env", "backup", "api/v0/debug"][i % 4]))
            .collect();
        eprintln!("prober");
        let prober_statuses = walk(prober, &probes, 50, 10)?;
        eprintln!("waiting for the slow enumerator");
        let slow_statuses = slow_run.join().expect("the slow enumerator's thread")?;
        Ok((
            slow_statuses,
            (fast_statuses, secrets, stuffer_statuses, prober_statuses),
        ))
    })
    .with_context(|| {
        format!(
            "findings: {:?}\ndaemon: {}",
            fs::read_to_string(&log),
            s.daemon.stderr()
        )
    })?;
    let (fast_statuses, secrets, stuffer_statuses, prober_statuses) = rest;

    wait_until(Duration::from_secs(60), "every attacker's finding", || {
        Ok(flagged(&findings(&log)?).is_superset(&attackers))
    })
    .with_context(|| format!("findings so far: {:?}", findings(&log)))?;
    let all = findings(&log)?;
    let found = flagged(&all);
    let tp = found.intersection(&attackers).count();
    let fp = found.intersection(&look_alikes).count();
    let fn_ = attackers.len() - tp;
    let precision = tp as f64 / (tp + fp).max(1) as f64;
    let recall = tp as f64 / (tp + fn_).max(1) as f64;
    println!(
        "detectors: {} attackers, {} look-alikes; true positives {tp}, false positives {fp}, false negatives {fn_}; precision {precision:.2}, recall {recall:.2}",
        attackers.len(),
        look_alikes.len()
    );
    for f in &all {
        println!(
            "finding: {} {} {} {:?}: {}",
            f["detector"], f["client"], f["action"], f["route"], f["reason"]
        );
    }
    assert_eq!(recall, 1.0, "{all:?}");
    assert_eq!(fp, 0, "a look-alike was flagged: {all:?}");

    // Each attacker was found by the detector for what it did.
    let by = |c: &Client, detector: &str| {
        all.iter()
            .any(|f| f["client"] == c.addr4.to_string().as_str() && f["detector"] == detector)
    };
    assert!(by(fast, "bola") && by(slow, "bola"), "{all:?}");
    assert!(by(stuffer, "stuffing") && by(prober, "probing"), "{all:?}");
    for f in &all {
        assert_eq!(f["action"], "block", "{f}");
        assert_eq!(f["blocked"], true, "{f}");
        assert!(f["score"].as_f64().unwrap() >= 1.0, "{f}");
        assert!(f["owasp"].as_str().unwrap().starts_with("API"), "{f}");
    }
    let fast_finding = all
        .iter()
        .find(|f| f["client"] == fast.addr4.to_string().as_str())
        .unwrap();
    assert_eq!(fast_finding["route"], "/v1/orders/{id}");
    assert!(
        fast_finding["evidence"]["denied_403_404"].as_u64().unwrap() >= 30,
        "{fast_finding}"
    );
    assert!(
        fast_finding["evidence"]["sample_ids"]
            .as_array()
            .is_some_and(|ids| !ids.is_empty()),
        "{fast_finding}"
    );

    // The slow enumerator was never over the rate limit, yet found.
    println!(
        "slow enumerator: {} requests answered before its block",
        slow_statuses.iter().filter(|s| **s != 0).count()
    );

    // The blocks bite in the kernel: nginx stops seeing the attackers. The
    // fast enumerator got nowhere near its 300th ID.
    let fast_answered = fast_statuses.iter().filter(|s| **s != 0).count();
    ensure!(
        fast_answered < 300,
        "the enumerator was never cut off: {fast_answered}"
    );
    for attacker in [fast, slow, stuffer, prober] {
        let before = served(&s, attacker)?;
        let again = curl(
            &attacker.ns,
            &[url(attacker.server4.into(), API, "/v1/orders/1")],
            Opts::new(Connections::New).max_time(Duration::from_secs(2)),
        )?;
        assert_eq!(again.statuses, [0], "{} still answered", attacker.addr4);
        assert_eq!(
            served(&s, attacker)?,
            before,
            "nginx saw {}",
            attacker.addr4
        );
    }
    // No look-alike was blocked: nginx served all they sent, and still does.
    assert_eq!(served(&s, spa)?, 50);
    assert_eq!(served(&s, retrier)?, 30);
    assert_eq!(served(&s, pager)?, 200);
    for la in [spa, retrier, pager] {
        let again = curl(
            &la.ns,
            &[url(la.server4.into(), API, "/v1/items/1")],
            Opts::new(Connections::New),
        )?;
        assert_eq!(again.statuses, [200], "{} blocked", la.addr4);
    }
    ensure!(stuffer_statuses.contains(&401), "{stuffer_statuses:?}");
    ensure!(prober_statuses.contains(&404), "{prober_statuses:?}");

    // Counted in the metrics, and reported as the OWASP risks they are.
    let metrics = s.scrape()?;
    for (detector, at_least) in [("bola", 2.0), ("stuffing", 1.0), ("probing", 1.0)] {
        let n = api_guard_tests::prom::value(
            &metrics,
            "api_guard_findings_total",
            &[("detector", detector), ("action", "block")],
        )
        .with_context(|| format!("{detector}'s findings in {metrics}"))?;
        assert!(n >= at_least, "{detector}: {n}");
    }
    let report = s.ctl(&["report", "--findings-log", log.to_str().unwrap(), "--json"])?;
    ensure!(report.status.success(), "{report:?}");
    let doc: Value = serde_json::from_slice(&report.stdout)?;
    let risk = |id: &str| {
        doc["risks"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    for id in ["API1:2023", "API2:2023", "API9:2023"] {
        assert_eq!(risk(id)["observed"], true, "{id}: {doc}");
    }
    assert_eq!(risk("API1:2023")["clients_blocked"], 2, "{doc}");
    assert_eq!(risk("API3:2023")["observed"], false);

    // `status` and `top` show the findings, and per-client response classes
    // over the last minute (the retrier asks again for its missing path).
    let again: Vec<String> = (0..5)
        .map(|_| url(retrier.server4.into(), API, "/v1/missing"))
        .collect();
    curl(&retrier.ns, &again, Opts::new(Connections::KeepAlive))?;
    let retrier_addr = retrier.addr4.to_string();
    let of = |doc: &Value, key: &str, client: &str| {
        doc[key]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["client"] == client))
            .cloned()
            .unwrap_or(Value::Null)
    };
    wait_until(
        Duration::from_secs(30),
        "the retrier's 404s in status",
        || {
            let out = s.ctl(&["status", "--json"])?;
            let doc: Value = serde_json::from_slice(&out.stdout)?;
            Ok(of(&doc, "detections", &retrier_addr)["responses"]["404"]
                .as_u64()
                .is_some_and(|n| n >= 5))
        },
    )?;
    let status: Value = serde_json::from_slice(&s.ctl(&["status", "--json"])?.stdout)?;
    for attacker in &attackers {
        let d = of(&status, "detections", attacker);
        assert!(d["findings"].as_u64().unwrap_or(0) >= 1, "{status}");
        assert_eq!(d["last_action"], "block", "{status}");
    }
    assert_eq!(
        of(&status, "detections", &retrier_addr)["findings"],
        0,
        "{status}"
    );
    let text = String::from_utf8(s.ctl(&["status"])?.stdout)?;
    assert!(
        text.contains(&format!("finding: client {}", fast.addr4)),
        "{text}"
    );
    let top = s.ctl(&["top", "--once", "--json", "-n", "50"])?;
    let top: Value = serde_json::from_slice(&top.stdout)?;
    assert!(
        of(&top, "clients", &retrier_addr)["responses"]["404"]
            .as_u64()
            .is_some_and(|n| n >= 5),
        "{top}"
    );
    assert!(
        of(&top, "findings", &fast.addr4.to_string())["last_detector"] == "bola",
        "{top}"
    );

    // No credential anywhere: the findings log, the daemon's output, the
    // metrics, the report.
    let (stopped, ..) = s.stop()?;
    let everything = format!(
        "{}\n{}\n{}\n{metrics}\n{}",
        fs::read_to_string(&log)?,
        stopped.stdout,
        stopped.stderr,
        String::from_utf8_lossy(&report.stdout)
    );
    for secret in &secrets {
        assert!(!everything.contains(secret.as_str()), "{secret} leaked");
    }
    // No client ever went over the rate limit: the limit alone would have
    // stopped none of the attackers.
    assert_eq!(stopped.counter("requests", "rate_limited")?, 0);
    Ok(())
}

#[test]
fn findings_are_only_logged_until_an_operator_opts_in_to_blocking() -> Result<()> {
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let log = dir.path().join("findings.log");
    let s = Scenario::start_locations(1, LOCATIONS, &["--findings-log", log.to_str().unwrap()])?;
    let c = s.client(0);
    let walk: Vec<String> = (1000..1300)
        .map(|i| url(c.server4.into(), API, &format!("/v1/orders/{i}")))
        .collect();
    let b = curl(&c.ns, &walk, Opts::new(Connections::KeepAlive))?;
    assert!(
        b.statuses.iter().all(|s| *s == 200 || *s == 403),
        "{:?}",
        b.statuses
    );
    wait_until(Duration::from_secs(30), "the enumerator's finding", || {
        Ok(!findings(&log)?.is_empty())
    })?;
    // Found, logged, not blocked: nginx served every request.
    let all = findings(&log)?;
    assert_eq!(all.len(), 1, "one finding per window: {all:?}");
    assert_eq!(all[0]["detector"], "bola");
    assert_eq!(all[0]["action"], "log");
    assert_eq!(all[0]["blocked"], false);
    assert_eq!(served(&s, c)?, 300);
    let again = curl(
        &c.ns,
        &[url(c.server4.into(), API, "/v1/orders/1")],
        Opts::new(Connections::New),
    )?;
    assert_eq!(again.statuses, [403]);
    let metrics = s.scrape()?;
    let counted = |action: &str| {
        api_guard_tests::prom::value(
            &metrics,
            "api_guard_findings_total",
            &[("detector", "bola"), ("action", action)],
        )
    };
    assert_eq!((counted("log"), counted("block")), (Some(1.0), Some(0.0)));
    let text = s.ctl(&["report", "--findings-log", log.to_str().unwrap()])?;
    let text = String::from_utf8(text.stdout)?;
    assert!(
        text.contains("API1:2023") && text.contains("logged"),
        "{text}"
    );
    println!("{text}");
    Ok(())
}
