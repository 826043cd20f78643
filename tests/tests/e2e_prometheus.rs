//! A real Prometheus, run with the shipped scrape configuration and alerting
//! rules, inside the scenario's server namespace (so it reaches the daemon at
//! its default 127.0.0.1:9477 there), scraping the real daemon while real
//! clients send requests. It must count what was sent, answer every query of
//! the shipped dashboard, and raise the shipped alerts.

use std::time::Duration;

use anyhow::{Context as _, Result};
use api_guard_tests::{
    client::{Connections, Opts, burst, curl, url},
    deploy::{DASHBOARD, PROMETHEUS, RULES, dashboard_exprs, read, with_grafana_vars},
    process::wait_until,
    prom,
    prometheus::Prometheus,
    scenario::{API, Scenario},
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// The shipped prometheus.yml, scraping and evaluating every second instead of
/// every 15 s. The rest (job, target, rule file) is as shipped.
fn config() -> Result<String> {
    let mut conf: Yaml = serde_yaml_ng::from_str(&read(PROMETHEUS)?)?;
    conf["global"]["scrape_interval"] = "1s".into();
    conf["global"]["evaluation_interval"] = "1s".into();
    Ok(serde_yaml_ng::to_string(&conf)?)
}

/// Prometheus in the scene's server namespace, with the shipped rules beside
/// its configuration, once it has scraped the daemon.
fn prometheus(s: &Scenario) -> Result<Prometheus> {
    let rules = read(RULES)?;
    let prom = Prometheus::start(
        &s.topo.server,
        &config()?,
        &[("api-guard.rules.yml", &rules)],
    )?;
    wait_until(Duration::from_secs(20), "the first scrape", || {
        Ok(prom.value(r#"up{job="api-guard"}"#)? == Some(1.0))
    })
    .with_context(|| prom.log())?;
    Ok(prom)
}

#[test]
fn prometheus_counts_the_requests_sent() -> Result<()> {
    let s = Scenario::start(1, &[])?;
    let prom = prometheus(&s)?;
    let targets = prom.targets()?;
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0]["labels"]["instance"], "127.0.0.1:9477");
    assert_eq!(targets[0]["health"], "up");

    // 10 requests on new IPv4 connections, 15 over one IPv6 keep-alive one.
    let c = s.client(0);
    let v4: Vec<String> = (0..10)
        .map(|i| url(c.server(false), API, &format!("/v1/items/{i}")))
        .collect();
    let v6: Vec<String> = (0..15)
        .map(|i| url(c.server(true), API, &format!("/v1/orders/{i}")))
        .collect();
    assert_eq!(curl(&c.ns, &v4, Opts::new(Connections::New))?.ok(), 10);
    assert_eq!(
        curl(&c.ns, &v6, Opts::new(Connections::KeepAlive))?.ok(),
        15
    );
    let sent = 25.0;
    assert_eq!(
        s.served(&c.addr4.to_string(), API)? + s.served(&c.addr6.to_string(), API)?,
        25,
        "nginx served them all"
    );

    // Prometheus catches up within a few scrapes.
    let total = r#"sum(api_guard_requests_total{job="api-guard"})"#;
    let mut last = None;
    wait_until(
        Duration::from_secs(20),
        "Prometheus to count 25 requests",
        || {
            last = prom.value(total)?;
            Ok(last == Some(sent))
        },
    )
    .with_context(|| format!("last value: {last:?}"))?;
    assert_eq!(
        prom.value(r#"api_guard_requests_total{job="api-guard",verdict="allowed"}"#)?,
        Some(sent)
    );
    // The same as the daemon's own exposition, and the counter never reset.
    let direct = prom::value(
        &s.scrape()?,
        "api_guard_requests_total",
        &[("verdict", "allowed")],
    );
    assert_eq!(direct, Some(sent));
    assert_eq!(
        prom.value(r#"sum(resets(api_guard_requests_total{job="api-guard"}[1m]))"#)?,
        Some(0.0)
    );
    assert_eq!(
        prom.value(r#"api_guard_connections_total{job="api-guard",verdict="allowed"}"#)?,
        Some(11.0),
        "ten new connections and one keep-alive"
    );
    Ok(())
}

/// The alerts by name, pending or firing now, with their state and labels.
fn alert<'a>(alerts: &'a [Json], name: &str) -> Option<&'a Json> {
    alerts.iter().find(|a| a["labels"]["alertname"] == name)
}

#[test]
fn the_dashboard_and_alerts_work_on_live_data() -> Result<()> {
    let s = Scenario::start(
        2,
        &[
            "--rate",
            "5",
            "--burst",
            "5",
            "--block-for",
            "5m",
            "--require-auth",
            "log",
        ],
    )?;
    let prom = prometheus(&s)?;
    // Nothing fires before the traffic (ApiGuardAbsent may be pending from an
    // evaluation before the first scrape).
    let alerts = prom.alerts()?;
    assert!(
        alerts.iter().all(|a| a["state"] != "firing")
            && alert(&alerts, "ApiGuardClientBlocked").is_none(),
        "{alerts:?}"
    );

    // A client over its limit, blocked; a well-behaved one, without credentials.
    let abuser = s.client(0);
    let ok = burst(abuser, None, 30, Duration::from_secs(2))?;
    assert!(ok < 30, "{ok} of 30 answered");
    let polite = s.client(1);
    let urls: Vec<String> = (0..4)
        .map(|i| url(polite.server(false), API, &format!("/v1/items/{i}")))
        .collect();
    assert_eq!(
        curl(&polite.ns, &urls, Opts::new(Connections::KeepAlive))?.ok(),
        4
    );

    // The blocked client's drops raise the alert.
    wait_until(
        Duration::from_secs(20),
        "ApiGuardClientBlocked to fire",
        || {
            let alerts = prom.alerts()?;
            Ok(alert(&alerts, "ApiGuardClientBlocked").is_some_and(|a| a["state"] == "firing"))
        },
    )?;
    let alerts = prom.alerts()?;
    let blocked = alert(&alerts, "ApiGuardClientBlocked").context("the alert")?;
    assert_eq!(blocked["labels"]["instance"], "127.0.0.1:9477");
    assert_eq!(blocked["labels"]["severity"], "warning");
    assert!(
        blocked["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("packets from blocked clients")),
        "{blocked}"
    );

    // Every query of the dashboard returns data over the last minute (the top
    // clients gauge once the daemon has computed the rates, every 5 s).
    let dashboard: Json = serde_json::from_str(&read(DASHBOARD)?)?;
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() > 10);
    // The fleet's panels need a Redis: e2e_fleet checks them on a fleet.
    for e in exprs.iter().filter(|e| !e.contains("api_guard_fleet_")) {
        let q = with_grafana_vars(e, "5s");
        wait_until(Duration::from_secs(15), &format!("data for {q}"), || {
            Ok(!prom.query_range(&q, 60)?.is_empty())
        })?;
    }
    // And what they show is what happened.
    let rate_limited = prom.value(
        r#"sum(increase(api_guard_requests_total{job="api-guard",verdict="rate_limited"}[1m]))"#,
    )?;
    assert!(rate_limited.is_some_and(|v| v > 0.0), "{rate_limited:?}");
    let unauthenticated =
        prom.value(r#"api_guard_unauthenticated_requests_total{job="api-guard"}"#)?;
    assert!(
        unauthenticated.is_some_and(|v| v >= 4.0),
        "{unauthenticated:?}"
    );
    assert_eq!(
        prom.value(r#"api_guard_blocked_clients{job="api-guard"}"#)?,
        Some(1.0)
    );
    let top = prom.query_range(
        r#"api_guard_top_client_requests_per_second{job="api-guard"}"#,
        60,
    )?;
    let clients: Vec<&str> = top
        .iter()
        .filter_map(|t| t["metric"]["client"].as_str())
        .collect();
    assert!(
        clients.contains(&abuser.addr4.to_string().as_str()),
        "top clients: {clients:?}"
    );

    // The daemon stops: the target goes down and ApiGuardDown is pending (it
    // fires after two minutes).
    let (stopped, _nginx, _topo, _bpffs) = s.stop()?;
    assert!(stopped.status.success(), "{stopped:?}");
    wait_until(
        Duration::from_secs(20),
        "ApiGuardDown to be pending",
        || {
            let alerts = prom.alerts()?;
            Ok(alert(&alerts, "ApiGuardDown").is_some_and(|a| a["state"] == "pending"))
        },
    )?;
    assert_eq!(prom.value(r#"up{job="api-guard"}"#)?, Some(0.0));
    Ok(())
}
