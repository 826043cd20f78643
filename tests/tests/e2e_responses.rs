//! Responses end to end: nginx answering distinct routes with 200, 201, 401,
//! 404 and 500, some behind a Python upstream with known delays; real clients
//! in namespaces; the real daemon with its egress program. nginx's own access
//! log (`$status $request_time`) is the judge of what was answered and how
//! long it took.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use api_guard_tests::{
    PREFIX,
    client::{Connections, Opts, curl, url},
    netns::Client,
    nginx::TimedLine,
    process::wait_until,
    prom,
    scenario::{API, Scenario},
    upstream::SleepyUpstream,
};
use serde_json::Value;

const UPSTREAM: u16 = 9100;

fn locations() -> String {
    format!(
        r#"        location = /v1/ok {{ return 200 "ok\n"; }}
        location = /v1/orders {{ return 201 "created\n"; }}
        location = /v1/secret {{ return 401; }}
        location = /v1/broken {{ return 500; }}
        location /v1/users/ {{ return 200 "user\n"; }}
        location /v1/slow/ {{ proxy_pass http://127.0.0.1:{UPSTREAM}; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location / {{ return 404; }}
"#
    )
}

/// The status nginx's configuration gives a path (the pairing judge).
fn status_of(path: &str) -> u16 {
    match path {
        "/v1/ok" => 200,
        "/v1/orders" => 201,
        "/v1/secret" => 401,
        "/v1/broken" => 500,
        p if p.starts_with("/v1/users/") || p.starts_with("/v1/slow/") => 200,
        _ => 404,
    }
}

/// The route a path should get, by a rule of the test's own: digit-only
/// segments are `{id}`.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

struct Scene {
    s: Scenario,
    log: std::path::PathBuf,
    _upstream: SleepyUpstream,
    _dir: tempfile::TempDir,
}

fn scene(extra: &[&str]) -> Result<Scene> {
    let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
    let log = dir.path().join("access.log");
    let mut flags = vec!["--access-log", log.to_str().context("path")?];
    if !extra.contains(&"--sample") {
        flags.extend(["--sample", "1"]);
    }
    flags.extend_from_slice(extra);
    let s = Scenario::start_locations(1, &locations(), &flags)?;
    let upstream = SleepyUpstream::start(&s.topo.server, UPSTREAM)?;
    Ok(Scene {
        s,
        log,
        _upstream: upstream,
        _dir: dir,
    })
}

fn log_lines(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    // Whole lines only: the daemon may be writing the last one.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad log line {l:?}")))
        .collect()
}

/// Waits until the access log has `n` lines from `client_port` (any if None).
fn wait_lines(path: &Path, n: usize, client_port: Option<u16>) -> Result<Vec<Value>> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(60), "the access log lines", || {
        lines = log_lines(path)?
            .into_iter()
            .filter(|l| client_port.is_none_or(|p| l["client.port"] == p))
            .collect();
        Ok(lines.len() >= n)
    })?;
    Ok(lines)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn every_status_is_counted_per_route_as_nginx_logged_it_and_latencies_agree() -> Result<()> {
    let sc = scene(&[])?;
    let c = sc.s.client(0);
    let server: IpAddr = c.server4.into();
    let mut paths = Vec::new();
    for i in 0..20 {
        paths.push("/v1/ok".to_string());
        paths.push("/v1/orders".to_string());
        paths.push(format!("/v1/slow/{}", if i % 2 == 0 { 20 } else { 50 }));
        if i % 2 == 0 {
            paths.push("/v1/secret".into());
            paths.push("/v1/broken".into());
            paths.push(format!("/v1/missing/{i}"));
        }
        paths.push(format!("/v1/users/{}", 1000 + i));
    }
    let urls: Vec<String> = paths.iter().map(|p| url(server, API, p)).collect();
    let batch = curl(&c.ns, &urls, Opts::new(Connections::KeepAlive))?;
    ensure!(batch.statuses.len() == paths.len());

    let ours = wait_lines(&sc.log, paths.len(), None)?;
    let nginx = sc.s.nginx.timed_log()?;
    ensure!(nginx.len() == paths.len(), "nginx logged {}", nginx.len());

    // Every status per route, as nginx answered it.
    let mut want: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for l in &nginx {
        *want.entry((route_of(&l.uri), l.status)).or_default() += 1;
    }
    let mut got: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for l in &ours {
        assert_eq!(l["api_guard.response"], "joined", "{l}");
        let route = l["http.route"].as_str().context("http.route")?.to_string();
        let status = l["http.response.status_code"].as_u64().context("status")? as u16;
        // The path's own status: a response paired with another request would
        // show here.
        assert_eq!(status, status_of(l["url.path"].as_str().unwrap()), "{l}");
        *got.entry((route, status)).or_default() += 1;
    }
    assert_eq!(got, want);

    // The kernel counted every response by class, whatever the sampling.
    let text = sc.s.scrape()?;
    let class = |c: &str| prom::value(&text, "api_guard_responses_total", &[("class", c)]);
    let count = |f: fn(u16) -> bool| nginx.iter().filter(|l| f(l.status)).count() as f64;
    assert_eq!(class("2xx"), Some(count(|s| (200..300).contains(&s))));
    assert_eq!(class("4xx"), Some(count(|s| (400..500).contains(&s))));
    assert_eq!(class("5xx"), Some(count(|s| s >= 500)));
    assert_eq!(
        prom::value(
            &text,
            "api_guard_response_pairing_total",
            &[("outcome", "paired")]
        ),
        Some(paths.len() as f64)
    );
    let watched = |s: &str| {
        prom::value(
            &text,
            "api_guard_responses_watched_status_total",
            &[("status", s)],
        )
    };
    assert_eq!(watched("401"), Some(count(|s| s == 401)));
    assert_eq!(watched("404"), Some(count(|s| s == 404)));
    let slow_count = prom::series(&text, "http_server_request_duration_seconds_count")
        .into_iter()
        .filter(|(labels, _)| labels.contains(r#"http_route="/v1/slow/{id}""#))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(slow_count, 20.0);

    // Latency: p50 and p99 of the slow route agree with nginx's $request_time
    // (whole milliseconds, cut down) within a millisecond.
    let mut ours_ms: Vec<f64> = ours
        .iter()
        .filter(|l| l["http.route"] == "/v1/slow/{id}")
        .map(|l| l["http.server.request.duration"].as_f64().unwrap() * 1000.0)
        .collect();
    let mut nginx_ms: Vec<f64> = nginx
        .iter()
        .filter(|l: &&TimedLine| l.uri.starts_with("/v1/slow/"))
        .map(|l| l.request_time_ms as f64)
        .collect();
    ours_ms.sort_by(f64::total_cmp);
    nginx_ms.sort_by(f64::total_cmp);
    for p in [0.5, 0.99] {
        let (a, b) = (percentile(&ours_ms, p), percentile(&nginx_ms, p));
        // nginx's value v means [v, v + 1) ms.
        let off = if a < b {
            b - a
        } else if a > b + 1.0 {
            a - b - 1.0
        } else {
            0.0
        };
        assert!(
            off <= 1.0,
            "p{}: api-guard {a:.3} ms, nginx {b} ms",
            p * 100.0
        );
        assert!(
            a >= 19.0,
            "p{}: {a} ms is below the upstream's sleep",
            p * 100.0
        );
    }
    Ok(())
}

/// A minimal HTTP/1.1 exchange over one connection inside a namespace: writes
/// `requests` (pipelined: in one write, or a write each) and reads a response
/// per entry of `heads`.
fn pipelined(
    c: &Client,
    requests: &[u8],
    heads: &[bool],
    one_by_one: bool,
) -> Result<(u16, Vec<u16>)> {
    let server = SocketAddr::new(c.server4.into(), API);
    let requests = requests.to_vec();
    let heads = heads.to_vec();
    c.ns.within(move || -> Result<(u16, Vec<u16>)> {
        let mut s = TcpStream::connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        let port = s.local_addr()?.port();
        if one_by_one {
            // A write per request (no delay): a segment each.
            let text = String::from_utf8_lossy(&requests).to_string();
            for r in text.split_inclusive("\r\n\r\n") {
                s.write_all(r.as_bytes())?;
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            s.write_all(&requests)?;
        }
        let statuses = read_responses(&mut s, &heads)?;
        Ok((port, statuses))
    })?
}

/// Reads one response per entry of `heads` (true: the request was HEAD, no body).
fn read_responses(s: &mut TcpStream, heads: &[bool]) -> Result<Vec<u16>> {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut chunk = [0u8; 4096];
    for &head in heads {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = text.split(' ').nth(1).context("status line")?.parse()?;
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let body = if head { 0 } else { len };
                if buf.len() >= end + 4 + body {
                    buf.drain(..end + 4 + body);
                    statuses.push(status);
                    break;
                }
            }
            let n = s.read(&mut chunk)?;
            ensure!(
                n > 0,
                "the connection closed after {} responses",
                statuses.len()
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(statuses)
}

#[test]
fn pipelined_requests_pair_in_order() -> Result<()> {
    let sc = scene(&[])?;
    let c = sc.s.client(0);
    let paths = [
        ("GET", "/v1/ok"),
        ("GET", "/v1/secret"),
        ("HEAD", "/v1/ok"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/nowhere"),
        ("GET", "/v1/slow/30"),
        ("GET", "/v1/users/7"),
        // Last: nginx closes the connection after a 500.
        ("GET", "/v1/broken"),
    ];
    let mut reqs = Vec::new();
    for (m, p) in paths {
        reqs.extend_from_slice(format!("{m} {p} HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes());
    }
    let heads: Vec<bool> = paths.iter().map(|(m, _)| *m == "HEAD").collect();
    let want: Vec<u16> = paths.iter().map(|(_, p)| status_of(p)).collect();
    // All in one segment: the kernel pairs each (only the segment's first
    // request start is sampled, so the kernel's counters judge).
    let (_, statuses) = pipelined(c, &reqs, &heads, false)?;
    assert_eq!(statuses, want, "nginx's answers");
    let mut text = String::new();
    wait_until(
        Duration::from_secs(10),
        "the pipelined responses paired",
        || {
            text = sc.s.scrape()?;
            Ok(prom::value(
                &text,
                "api_guard_response_pairing_total",
                &[("outcome", "paired")],
            ) == Some(paths.len() as f64))
        },
    )?;
    for outcome in ["unseen", "overflow"] {
        assert_eq!(
            prom::value(
                &text,
                "api_guard_response_pairing_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    // Each request in a segment of its own, all sent before any answer:
    // each sampled, each joined with its own response.
    let (port, statuses) = pipelined(c, &reqs, &heads, true)?;
    assert_eq!(statuses, want, "nginx's answers");
    let lines = wait_lines(&sc.log, paths.len(), Some(port))?;
    for l in &lines {
        assert_eq!(l["api_guard.response"], "joined", "{l}");
        assert_eq!(
            l["http.response.status_code"],
            status_of(l["url.path"].as_str().unwrap()),
            "{l}"
        );
    }
    Ok(())
}

/// Sends `paths` one after another over one connection (a request, then its
/// response); returns the client port.
fn sequential(c: &Client, paths: Vec<String>) -> Result<u16> {
    let server = SocketAddr::new(c.server4.into(), API);
    c.ns.within(move || -> Result<u16> {
        let mut s = TcpStream::connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        for p in &paths {
            s.write_all(format!("GET {p} HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes())?;
            read_responses(&mut s, &[false])?;
        }
        Ok(s.local_addr()?.port())
    })?
}

#[test]
fn a_hundred_thousand_user_paths_keep_the_series_under_the_route_cap() -> Result<()> {
    let cap = 20;
    // One request in twenty sampled: the kernel counts and pairs every one
    // whatever the sampling, and the daemon (a debug build here) keeps up.
    let sc = scene(&["--max-routes", &cap.to_string(), "--sample", "0.05"])?;
    let c = sc.s.client(0);
    // Two connections (nginx closes one after 100000 requests).
    for half in 0..2 {
        let paths = (0..50_000)
            .map(|n| format!("/v1/users/{}", half * 50_000 + n))
            .collect();
        sequential(c, paths)?;
    }
    // And junk: many distinct words at many depths.
    let junk: Vec<String> = (0..3000)
        .map(|i| {
            let word = |k: usize| -> String {
                (0..5)
                    .map(|j| (b'a' + ((i * 7 + k * 13 + j * 3 + i / 26) % 26) as u8) as char)
                    .collect()
            };
            format!("/{}/{}/x{}", word(1), word(2), "y".repeat(i % 5))
        })
        .collect();
    sequential(c, junk)?;
    let mut text = String::new();
    let v = |text: &str, name: &str, labels: &[(&str, &str)]| {
        prom::value(text, name, labels).unwrap_or(0.0)
    };
    wait_until(
        Duration::from_secs(120),
        "the daemon to read every response record",
        || {
            text = sc.s.scrape()?;
            let recorded = v(
                &text,
                "api_guard_response_records_total",
                &[("outcome", "recorded")],
            );
            let read = v(
                &text,
                "api_guard_response_joins_total",
                &[("outcome", "joined")],
            ) + v(
                &text,
                "api_guard_response_joins_total",
                &[("outcome", "orphan")],
            );
            Ok(recorded > 0.0 && read == recorded)
        },
    )?;
    // Every response counted and paired in the kernel, whatever the sampling.
    assert_eq!(
        v(
            &text,
            "api_guard_response_pairing_total",
            &[("outcome", "paired")]
        ),
        103_000.0
    );
    assert_eq!(
        v(&text, "api_guard_responses_total", &[("class", "2xx")]),
        100_000.0
    );
    assert_eq!(
        v(&text, "api_guard_responses_total", &[("class", "4xx")]),
        3_000.0
    );
    assert_eq!(
        v(
            &text,
            "api_guard_response_records_total",
            &[("outcome", "records_lost")]
        ),
        0.0
    );
    let routes: std::collections::BTreeSet<String> =
        prom::series(&text, "http_server_request_duration_seconds_count")
            .into_iter()
            .filter_map(|(labels, _)| {
                labels
                    .split("http_route=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .map(str::to_string)
            })
            .collect();
    assert!(
        routes.len() <= cap + 1,
        "{} routes: {routes:?}",
        routes.len()
    );
    assert!(routes.contains("/v1/users/{id}"));
    let users = prom::series(&text, "http_server_request_duration_seconds_count")
        .into_iter()
        .filter(|(l, _)| l.contains(r#"http_route="/v1/users/{id}""#))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert!(users > 1000.0, "{users} sampled /v1/users/{{id}} requests");
    assert!(
        prom::value(&text, "api_guard_routes_overflow_total", &[]).unwrap_or(0.0) > 0.0
            || routes.len() < cap,
        "junk paths did not reach the cap, so the test proves nothing about it"
    );
    let per_route = prom::series(&text, "api_guard_route_requests_total").len();
    assert!(per_route <= cap + 1, "{per_route} route/verdict series");
    Ok(())
}

#[test]
fn a_daemon_started_mid_connection_mispairs_nothing() -> Result<()> {
    let sc = scene(&[])?;
    let Scene {
        s,
        log,
        _upstream,
        _dir,
    } = sc;
    let c = s.client(0);
    let server = SocketAddr::new(c.server4.into(), API);
    let mut stream = c.ns.within(move || -> Result<TcpStream> {
        let s = TcpStream::connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(s)
    })??;
    let port = stream.local_addr()?.port();
    let mut exchange = |paths: &[&str]| -> Result<()> {
        for p in paths {
            stream.write_all(format!("GET {p} HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes())?;
            // A segment each (no delay): each request sampled.
            std::thread::sleep(Duration::from_millis(2));
        }
        let statuses = read_responses(&mut stream, &vec![false; paths.len()])?;
        ensure!(statuses == paths.iter().map(|p| status_of(p)).collect::<Vec<_>>());
        Ok(())
    };
    exchange(&["/v1/ok", "/v1/secret"])
        .with_context(|| format!("nginx logged {:?}", s.nginx.timed_log().unwrap_or_default()))?;
    // The daemon goes; the connection carries on unseen; a new daemon comes.
    let (_, nginx, topo, bpffs) = s.stop()?;
    exchange(&["/v1/orders", "/v1/ok", "/v1/secret"])
        .with_context(|| format!("nginx: {}", nginx.error_log()))?;
    let s = Scenario::resume(
        nginx,
        topo,
        bpffs,
        &[
            "--sample",
            "1",
            "--access-log",
            log.to_str().context("path")?,
        ],
    )?;
    // Seen by the new daemon only from the middle of its streams.
    // (nginx closes the connection after the 500.)
    exchange(&[
        "/v1/secret",
        "/v1/nowhere",
        "/v1/orders",
        "/v1/ok",
        "/v1/broken",
    ])?;
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(30), "the new daemon's lines", || {
        lines = log_lines(&log)?
            .into_iter()
            .filter(|l| l["client.port"] == port)
            .collect();
        Ok(lines.len() >= 2 + 5)
    })?;
    for l in &lines {
        if l["api_guard.response"] == "joined" {
            assert_eq!(
                l["http.response.status_code"],
                status_of(l["url.path"].as_str().unwrap()),
                "mispaired: {l}"
            );
        }
    }
    // The answers it could not pair were still counted.
    let mut text = String::new();
    wait_until(
        Duration::from_secs(10),
        "the unpaired answers counted",
        || {
            text = s.scrape()?;
            Ok(prom::value(
                &text,
                "api_guard_response_pairing_total",
                &[("outcome", "unseen")],
            )
            .unwrap_or(0.0)
                >= 1.0)
        },
    )?;
    Ok(())
}
