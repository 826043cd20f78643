//! Fleet-wide limits through a real Redis: three API hosts, each a namespace
//! with nginx and its own daemon, a store namespace with redis-server, and a
//! client reaching every host from one address (as behind a balancer). The
//! judges are the three nginx access logs, Redis's own counts, and the
//! kernel's state as `api-guard status` reads it.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    client::{Connections, Opts, curl, url},
    deploy::{
        DASHBOARD, PROMETHEUS, RULES, dashboard_exprs, metric_names, read, with_grafana_vars,
    },
    fleet::{Fleet, HOSTS, client_addr},
    process::wait_until,
    prom,
    prometheus::Prometheus,
    redis::Redis,
    scenario::API,
};
use serde_json::Value;

/// Generous: a guard against hangs, never a judge of speed.
const EVENTUALLY: Duration = Duration::from_secs(60);

/// The fleet name of one test: tests may share nothing in Redis.
fn name(test: &str) -> String {
    format!("agt-{}-{test}", std::process::id())
}

fn start_all(fleet: &mut Fleet, flags: &[&str]) -> Result<()> {
    for i in 0..HOSTS {
        fleet.start_daemon(i, flags)?;
    }
    for i in 0..HOSTS {
        wait_fleet_up(fleet, i, 1.0)?;
    }
    Ok(())
}

fn metric(fleet: &Fleet, host: usize, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    prom::value(&fleet.scrape(host)?, name, labels)
        .with_context(|| format!("host {host} exports no {name}"))
}

fn wait_fleet_up(fleet: &Fleet, host: usize, up: f64) -> Result<()> {
    wait_until(
        EVENTUALLY,
        &format!("api_guard_fleet_up {up} on host {host}"),
        || Ok(metric(fleet, host, "api_guard_fleet_up", &[])? == up),
    )
}

fn status(fleet: &Fleet, host: usize) -> Result<Value> {
    let out = fleet.ctl(host, &["status", "--json"])?;
    ensure!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The kernel's request limit on `host`: (rate, burst).
fn local_limit(fleet: &Fleet, host: usize) -> Result<(u64, u64)> {
    let s = status(fleet, host)?;
    let l = &s["config"]["requests"];
    Ok((
        l["rate"].as_u64().context("rate")?,
        l["burst"].as_u64().context("burst")?,
    ))
}

/// One request from `source` to `host`: whether nginx answered.
fn answered(fleet: &Fleet, host: usize, source: Ipv4Addr) -> Result<bool> {
    let u = url(fleet.hosts[host].addr.into(), API, "/probe");
    let b = curl(
        &fleet.client,
        &[u],
        Opts::new(Connections::New)
            .source(source.into())
            .max_time(Duration::from_millis(500)),
    )?;
    Ok(b.ok() == 1)
}

/// What Redis holds for `client`: its requests summed over the windows.
fn fleet_count(fleet: &Fleet, name: &str, client: Ipv4Addr) -> Result<u64> {
    let keys = fleet.redis_cli(&["--scan", "--pattern", &format!("{name}:n:*:{client}")])?;
    let mut total = 0;
    for key in keys.lines().filter(|k| !k.is_empty()) {
        total += fleet
            .redis_cli(&["GET", key])?
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    Ok(total)
}

#[test]
fn a_client_spread_over_three_hosts_gets_the_fleet_limit_and_a_calm_one_all_it_asks() -> Result<()>
{
    // 5/s with bursts of 20: windows of 4 s holding 20 requests each.
    let (rate, burst, window, sync) = (5.0, 20.0, 4.0, 0.25);
    let name = name("limit");
    let mut fleet = Fleet::new(2)?;
    start_all(
        &mut fleet,
        &[
            "--fleet-name",
            &name,
            "--fleet-rate",
            "5:20",
            "--fleet-hosts",
            "3",
            "--fleet-sync",
            "250ms",
        ],
    )?;
    let (greedy, calm) = (client_addr(1), client_addr(2));
    // Three times the fleet rate, round-robin: each host alone would serve it
    // all (it is the fleet rate per host, the local limit).
    let sent = 180;
    let started = Instant::now();
    let (greedy_batch, calm_batch) = std::thread::scope(|s| {
        let g = s.spawn(|| fleet.round_robin(greedy, sent, 15));
        let c = s.spawn(|| fleet.round_robin(calm, 12, 1));
        (g.join(), c.join())
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (greedy_batch, calm_batch) = (
        greedy_batch.map_err(|_| anyhow::anyhow!("the greedy client panicked"))??,
        calm_batch.map_err(|_| anyhow::anyhow!("the calm client panicked"))??,
    );
    let served = fleet.served_total(greedy)? as f64;
    // The README's bound for a steady client: per window the budget plus its
    // rate over two syncs (one to report, one for the others to read).
    let attack_rate = 3.0 * rate;
    let windows = (elapsed / window).floor() + 2.0;
    let bound = windows * (burst + attack_rate * 2.0 * sync);
    eprintln!(
        "greedy: sent {sent} over {elapsed:.1}s, curl saw {greedy_batch} answered, nginx served {served}; bound {bound:.1} ({windows} windows)"
    );
    // Measured, not judged: what Redis counted in each window, over the budget.
    let keys = fleet.redis_cli(&["--scan", "--pattern", &format!("{name}:n:*:{greedy}")])?;
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let n: f64 = fleet
            .redis_cli(&["GET", key])?
            .trim()
            .parse()
            .unwrap_or(0.0);
        eprintln!(
            "window {key}: {n} counted, {} over the budget (formula: {})",
            n - burst,
            attack_rate * 2.0 * sync
        );
    }
    ensure!(
        bound < sent as f64,
        "the bound ({bound}) must be below what was sent ({sent}) for this test to judge anything"
    );
    ensure!(
        served <= bound,
        "the fleet served {served} of the greedy client's requests, over the bound {bound}"
    );
    ensure!(
        served >= burst,
        "the fleet served only {served}: not even one window's budget ({burst})"
    );
    for h in 0..HOSTS {
        ensure!(
            metric(
                &fleet,
                h,
                "api_guard_fleet_blocks_applied_total",
                &[("why", "over_limit")]
            )? > 0.0,
            "host {h} never blocked the greedy client"
        );
    }
    ensure!(
        calm_batch == 12 && fleet.served_total(calm)? == 12,
        "the calm client lost requests: {calm_batch} of 12 answered"
    );
    Ok(())
}

#[test]
fn a_block_on_one_host_drops_the_client_on_the_others_and_an_unblock_lifts_it() -> Result<()> {
    let name = name("block");
    let mut fleet = Fleet::new(2)?;
    start_all(&mut fleet, &["--fleet-name", &name])?;
    let (bad, good) = (client_addr(1), client_addr(2));
    for h in 0..HOSTS {
        ensure!(
            answered(&fleet, h, bad)?,
            "host {h} refused before any block"
        );
    }
    let out = fleet.ctl(0, &["block", &bad.to_string(), "--for", "1h"])?;
    ensure!(
        out.status.success(),
        "block: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for h in 1..HOSTS {
        wait_until(EVENTUALLY, &format!("host {h} to drop {bad}"), || {
            Ok(!answered(&fleet, h, bad)?)
        })?;
        ensure!(answered(&fleet, h, good)?, "host {h} dropped {good} too");
        ensure!(
            metric(
                &fleet,
                h,
                "api_guard_fleet_blocks_applied_total",
                &[("why", "remote")]
            )? >= 1.0,
            "host {h} does not count the remote block"
        );
    }
    // Redis holds it, with its end.
    let score = fleet.redis_cli(&["ZSCORE", &format!("{name}:blocks"), &format!("{bad}/32")])?;
    ensure!(
        score.trim().parse::<f64>().is_ok(),
        "not in Redis: {score:?}"
    );

    let out = fleet.ctl(0, &["unblock", &bad.to_string()])?;
    ensure!(out.status.success(), "unblock");
    for h in 1..HOSTS {
        wait_until(
            EVENTUALLY,
            &format!("host {h} to serve {bad} again"),
            || answered(&fleet, h, bad),
        )?;
    }
    Ok(())
}

#[test]
fn a_detectors_block_on_one_host_reaches_the_others() -> Result<()> {
    let name = name("detector");
    let mut fleet = Fleet::new(2)?;
    start_all(
        &mut fleet,
        &[
            "--fleet-name",
            &name,
            "--require-auth",
            "block",
            "--auth-failures",
            "3",
            "--block-for",
            "10m",
        ],
    )?;
    let (bad, good) = (client_addr(1), client_addr(2));
    for h in 1..HOSTS {
        ensure!(
            answered(&fleet, h, bad)?,
            "host {h} refused before any block"
        );
    }
    // Requests without credentials to host 0 only, until its detector blocks.
    wait_until(EVENTUALLY, "host 0's detector to block", || {
        Ok(!answered(&fleet, 0, bad)?)
    })?;
    for h in 1..HOSTS {
        wait_until(EVENTUALLY, &format!("host {h} to drop {bad}"), || {
            Ok(!answered(&fleet, h, bad)?)
        })?;
        ensure!(answered(&fleet, h, good)?, "host {h} dropped {good} too");
    }
    ensure!(
        metric(&fleet, 0, "api_guard_fleet_blocks_published_total", &[])? >= 1.0,
        "host 0 does not count the published block"
    );
    Ok(())
}

#[test]
fn redis_slow_or_gone_stalls_nothing_and_the_fallback_applies_until_it_returns() -> Result<()> {
    let name = name("fault");
    let mut fleet = Fleet::new(2)?;
    let flags = [
        "--fleet-name",
        name.as_str(),
        "--fleet-rate",
        "5:20",
        "--fleet-hosts",
        "3",
        "--heartbeat-timeout",
        "2s",
    ];
    start_all(&mut fleet, &flags)?;
    let calm = client_addr(2);
    for h in 0..HOSTS {
        ensure!(
            local_limit(&fleet, h)? == (5, 20),
            "host {h}: the fleet rate"
        );
    }
    // Every fleet series is on the dashboard (the Grafana test sees a daemon
    // without --fleet).
    let dash: Value = serde_json::from_str(&read(DASHBOARD)?)?;
    let used: std::collections::BTreeSet<String> = dashboard_exprs(&dash)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    let text = fleet.scrape(0)?;
    let fleet_metrics: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("api_guard_fleet_"))
        .collect();
    ensure!(fleet_metrics.len() >= 5, "{fleet_metrics:?}");
    for n in fleet_metrics {
        // A histogram shows through its series (_bucket, _sum, _count).
        let shown = used.iter().any(|u| {
            u == n
                || u.strip_prefix(n)
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        });
        ensure!(shown, "the dashboard does not show {n}");
    }
    // And the alerting rules name only fleet series a fleet daemon exports.
    let rules = read(RULES)?;
    for n in metric_names(&rules)
        .into_iter()
        .filter(|n| n.starts_with("api_guard_fleet_"))
    {
        ensure!(
            text.contains(&format!("# TYPE {n} ")),
            "{RULES} names {n}, which the daemon does not export"
        );
    }

    // Slow: Redis stops answering, its connections stay open.
    fleet.redis.as_ref().context("redis")?.pause();
    for h in 0..HOSTS {
        wait_fleet_up(&fleet, h, 0.0)?;
    }
    check_fallback(&fleet, calm)?;
    fleet.redis.as_ref().context("redis")?.resume();
    for h in 0..HOSTS {
        wait_fleet_up(&fleet, h, 1.0)?;
        ensure!(
            local_limit(&fleet, h)? == (5, 20),
            "host {h}: the fleet rate again"
        );
    }

    // Gone: killed, with its data.
    fleet.redis.take().context("redis")?.kill();
    for h in 0..HOSTS {
        wait_fleet_up(&fleet, h, 0.0)?;
    }
    check_fallback(&fleet, calm)?;
    for h in 0..HOSTS {
        let err = fleet.hosts[h]
            .daemon
            .as_ref()
            .context("daemon")?
            .stderr()
            .matches("Redis does not answer")
            .count();
        ensure!(err == 2, "host {h}: one line per outage, not {err}");
    }
    // A daemon that starts while Redis is gone starts all the same, at the
    // fallback limit.
    fleet.stop_daemon(2)?;
    fleet.start_daemon(2, &flags)?;
    wait_until(EVENTUALLY, "the new daemon's failed sync", || {
        Ok(metric(&fleet, 2, "api_guard_fleet_sync_errors_total", &[])? > 0.0)
    })?;
    check_fallback(&fleet, calm)?;

    // Back: the fleet's limits resume, and a greedy client is blocked again.
    fleet.redis = Some(Redis::start(&fleet.store)?);
    for h in 0..HOSTS {
        wait_fleet_up(&fleet, h, 1.0)?;
        ensure!(
            local_limit(&fleet, h)? == (5, 20),
            "host {h}: the fleet rate again"
        );
    }
    let greedy = client_addr(1);
    fleet.round_robin(greedy, 60, 15)?;
    for h in 0..HOSTS {
        wait_until(
            EVENTUALLY,
            &format!("host {h} to block over the fleet limit"),
            || {
                Ok(metric(
                    &fleet,
                    h,
                    "api_guard_fleet_blocks_applied_total",
                    &[("why", "over_limit")],
                )? > 0.0)
            },
        )?;
    }
    Ok(())
}

/// With Redis out: every host enforces its share, nothing stalls (requests
/// are served, the heartbeat beats, nothing failed open), and the metrics
/// count the failed syncs.
fn check_fallback(fleet: &Fleet, calm: Ipv4Addr) -> Result<()> {
    for h in 0..HOSTS {
        ensure!(
            local_limit(fleet, h)? == (2, 7),
            "host {h}: its share of 5:20 over 3 hosts"
        );
        ensure!(answered(fleet, h, calm)?, "host {h} stopped serving");
        let s = status(fleet, h)?;
        let age = s["heartbeat_age_secs"].as_f64().context("heartbeat age")?;
        ensure!(age < 2.0, "host {h}: the heartbeat is {age}s old");
        let failed_open: u64 = s["counters"]
            .as_object()
            .context("counters")?
            .values()
            .filter_map(|by| by["failed_open"].as_u64())
            .sum();
        ensure!(failed_open == 0, "host {h} failed open");
        ensure!(
            metric(fleet, h, "api_guard_fleet_sync_errors_total", &[])? > 0.0,
            "host {h} counts no failed sync"
        );
    }
    Ok(())
}

#[test]
fn a_daemon_restarted_mid_run_keeps_the_fleet_count() -> Result<()> {
    // One long window, so every request stays counted for the whole test.
    let name = name("restart");
    let flags = [
        "--fleet-name",
        name.as_str(),
        "--fleet-rate",
        "1:100",
        "--fleet-hosts",
        "3",
    ];
    let mut fleet = Fleet::new(1)?;
    start_all(&mut fleet, &flags)?;
    let client = client_addr(1);
    let same = |fleet: &Fleet| -> Result<bool> {
        Ok(fleet_count(fleet, &name, client)? == fleet.served_total(client)? as u64)
    };
    let ok = fleet.round_robin(client, 21, 10)?;
    ensure!(ok == 21, "{ok} of 21 answered");
    wait_until(EVENTUALLY, "Redis to count what nginx served", || {
        same(&fleet)
    })?;

    // Host 0's daemon stops and a new one adopts its pinned client map, whose
    // counts Redis has already seen.
    fleet.stop_daemon(0)?;
    fleet.start_daemon(0, &flags)?;
    wait_fleet_up(&fleet, 0, 1.0)?;
    let ok = fleet.round_robin(client, 12, 10)?;
    ensure!(ok == 12, "{ok} of 12 answered");
    wait_until(EVENTUALLY, "Redis to count the new requests", || {
        Ok(fleet_count(&fleet, &name, client)? >= 33)
    })?;
    // Several more syncs of the restarted daemon: nothing counted twice.
    let syncs = |f: &Fleet| metric(f, 0, "api_guard_fleet_sync_duration_seconds_count", &[]);
    let before = syncs(&fleet)?;
    wait_until(EVENTUALLY, "three more syncs", || {
        Ok(syncs(&fleet)? >= before + 3.0)
    })?;
    let (counted, served) = (
        fleet_count(&fleet, &name, client)?,
        fleet.served_total(client)?,
    );
    ensure!(
        counted == served as u64 && served == 33,
        "Redis counts {counted}, nginx served {served}"
    );
    Ok(())
}

#[test]
fn the_fleet_panels_and_alert_work_on_live_data() -> Result<()> {
    let name = name("prom");
    let mut fleet = Fleet::new(1)?;
    start_all(
        &mut fleet,
        &[
            "--fleet-name",
            &name,
            "--fleet-rate",
            "5:20",
            "--fleet-hosts",
            "3",
        ],
    )?;
    // The shipped scrape config and rules, every second, in host 0's
    // namespace, where its daemon answers at the default 127.0.0.1:9477.
    let mut conf: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(PROMETHEUS)?)?;
    conf["global"]["scrape_interval"] = "1s".into();
    conf["global"]["evaluation_interval"] = "1s".into();
    let prom = Prometheus::start(
        &fleet.hosts[0].ns,
        &serde_yaml_ng::to_string(&conf)?,
        &[("api-guard.rules.yml", &read(RULES)?)],
    )?;
    fleet.round_robin(client_addr(1), 45, 15)?;
    let dash: Value = serde_json::from_str(&read(DASHBOARD)?)?;
    for e in dashboard_exprs(&dash)
        .iter()
        .filter(|e| e.contains("api_guard_fleet_"))
    {
        let q = with_grafana_vars(e, "5s");
        wait_until(EVENTUALLY, &format!("data for {q}"), || {
            Ok(!prom.query_range(&q, 60)?.is_empty())
        })
        .with_context(|| prom.log())?;
    }
    // Redis gone: the alert is pending (it fires after two minutes).
    fleet.redis.take().context("redis")?.kill();
    wait_until(EVENTUALLY, "ApiGuardFleetDown to be pending", || {
        Ok(prom
            .alerts()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "ApiGuardFleetDown" && a["state"] == "pending"))
    })?;
    Ok(())
}

#[test]
fn a_fleet_over_tls_with_a_password_syncs_and_refuses_an_unknown_ca_or_a_wrong_password()
-> Result<()> {
    let name = name("tls");
    let mut fleet = Fleet::new(1)?;
    // A CA of the test's own and a server certificate for the store's
    // addresses on every host's link.
    let dir = tempfile::Builder::new().prefix("agt-").tempdir()?;
    let d = |f: &str| dir.path().join(f).display().to_string();
    let openssl = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                &d("ca.key"),
                "-out",
                &d("ca.pem"),
                "-days",
                "1",
                "-subj",
                "/CN=agt-fleet-ca",
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &d("redis.key"),
                "-out",
                &d("redis.csr"),
                "-subj",
                "/CN=agt-fleet-redis",
            ],
        ]
        .concat(),
    )?;
    let sans: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("IP:{}", h.store))
        .collect();
    std::fs::write(d("ext"), format!("subjectAltName={}\n", sans.join(",")))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("redis.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("redis.pem"),
        "-days",
        "1",
        "-extfile",
        &d("ext"),
    ])?;
    fleet.redis.take().context("redis")?.kill();
    let port = api_guard_tests::redis::PORT.to_string();
    let (cert, key, ca) = (d("redis.pem"), d("redis.key"), d("ca.pem"));
    fleet.redis = Some(Redis::start_with(
        &fleet.store,
        &[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
        &[
            "--tls",
            "--cacert",
            &ca,
            "-a",
            "s3cret",
            "--no-auth-warning",
        ],
    )?);
    let url = |host: usize, password: &str| {
        format!("rediss://:{password}@{}:{port}/0", fleet.hosts[host].store)
    };
    let trust = format!("SSL_CERT_FILE={ca}");
    let flags = [
        "--fleet-name",
        name.as_str(),
        "--fleet-rate",
        "5:20",
        "--fleet-hosts",
        "3",
    ];
    // Host 0 trusts the CA and knows the password: it syncs.
    let (u0, u1, u2) = (url(0, "s3cret"), url(1, "wrong"), url(2, "s3cret"));
    fleet.start_daemon_with(0, &["env", &trust], &u0, &flags)?;
    wait_fleet_up(&fleet, 0, 1.0)?;
    for _ in 0..3 {
        ensure!(answered(&fleet, 0, client_addr(1))?, "host 0 refused");
    }
    wait_until(EVENTUALLY, "Redis to count host 0's requests", || {
        Ok(fleet_count(&fleet, &name, client_addr(1))? == 3)
    })?;
    // Host 1 has the wrong password, host 2 does not trust the CA: neither
    // syncs, and each says why.
    fleet.start_daemon_with(1, &["env", &trust], &u1, &flags)?;
    fleet.start_daemon_with(2, &[], &u2, &flags)?;
    for h in 1..HOSTS {
        wait_until(
            EVENTUALLY,
            &format!("host {h} to report a failed sync"),
            || Ok(metric(&fleet, h, "api_guard_fleet_sync_errors_total", &[])? > 0.0),
        )?;
        ensure!(
            metric(&fleet, h, "api_guard_fleet_up", &[])? == 0.0,
            "host {h} is up"
        );
    }
    // The passwords never reach the logs.
    for h in 0..HOSTS {
        let log = fleet.hosts[h].daemon.as_ref().context("daemon")?.stderr();
        ensure!(
            !log.contains("s3cret") && !log.contains(":wrong@"),
            "host {h} logged a password: {log}"
        );
    }
    Ok(())
}
