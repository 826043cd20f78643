//! Real HTTP clients run inside client namespaces: curl for counted requests, wrk
//! for floods.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{netns::Netns, process};

/// The URL of `path` on `addr:port`, brackets and all for IPv6.
pub fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(addr, port))
}

/// What curl reported for a batch of requests.
#[derive(Debug)]
pub struct Batch {
    /// The HTTP status of each request (0 when no response arrived), in the order
    /// they finished.
    pub statuses: Vec<u16>,
    /// TCP connections curl opened for the batch.
    pub connects: u32,
}

impl Batch {
    /// Requests answered 200.
    pub fn ok(&self) -> usize {
        self.statuses.iter().filter(|&&s| s == 200).count()
    }
}

/// How the requests of a batch travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// One new connection per request (`Connection: close`), one after another.
    New,
    /// All requests over one keep-alive connection.
    KeepAlive,
    /// One new connection per request, all at once.
    Parallel,
}

/// How curl sends a batch.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub mode: Connections,
    /// Per-request limit; a request not answered by then counts as status 0.
    pub max_time: Duration,
    /// Source address to send from (one of the client's addresses).
    pub source: Option<IpAddr>,
    /// Requests per second curl paces the batch to (`--rate`), so that a
    /// batch spans a known time rather than finishing at once.
    pub per_second: Option<u32>,
}

impl Opts {
    pub fn new(mode: Connections) -> Self {
        Self {
            mode,
            max_time: Duration::from_secs(10),
            source: None,
            per_second: None,
        }
    }

    pub fn per_second(self, per_second: u32) -> Self {
        Self {
            per_second: Some(per_second),
            ..self
        }
    }

    pub fn max_time(self, max_time: Duration) -> Self {
        Self { max_time, ..self }
    }

    pub fn source(self, source: IpAddr) -> Self {
        Self {
            source: Some(source),
            ..self
        }
    }
}

/// Sends the requests with one curl process inside `ns`. Failed requests are
/// reported as status 0, not as an error.
pub fn curl(ns: &Netns, urls: &[String], opts: Opts) -> Result<Batch> {
    let max_time = format!("{:.3}", opts.max_time.as_secs_f64());
    let source = opts.source.map(|s| s.to_string());
    let rate = opts.per_second.map(|r| format!("{r}/s"));
    let mut args = vec![
        "-sS",
        "--max-time",
        &max_time,
        "-w",
        "%{http_code} %{num_connects}\\n",
    ];
    if let Some(s) = &source {
        args.extend(["--interface", s]);
    }
    if let Some(r) = &rate {
        args.extend(["--rate", r]);
    }
    match opts.mode {
        Connections::New => args.extend(["-H", "Connection: close"]),
        Connections::KeepAlive => {}
        Connections::Parallel => args.extend([
            "-H",
            "Connection: close",
            "-Z",
            "--parallel-immediate",
            "--parallel-max",
            "100",
        ]),
    }
    // One "-o /dev/null" per URL: curl pairs each -o with one URL.
    for u in urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let mut cmd = ns.command("curl");
    cmd.args(&args);
    let out = cmd.output().context("cannot run curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut batch = Batch {
        statuses: Vec::new(),
        connects: 0,
    };
    for line in stdout.lines() {
        let (code, connects) = line
            .split_once(' ')
            .with_context(|| format!("unexpected curl output {stdout:?}"))?;
        batch.statuses.push(code.parse()?);
        batch.connects += connects.parse::<u32>()?;
    }
    ensure!(
        batch.statuses.len() == urls.len(),
        "curl reported {} of {} requests: {}",
        batch.statuses.len(),
        urls.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(batch)
}

/// `n` new connections at once from `c` to the API port (from `source`, one of
/// its addresses, when given); returns how many were answered within `max_time`.
pub fn burst(
    c: &crate::netns::Client,
    source: Option<IpAddr>,
    n: usize,
    max_time: Duration,
) -> Result<usize> {
    let ipv6 = source.is_some_and(|s| s.is_ipv6());
    let urls: Vec<String> = (0..n)
        .map(|i| url(c.server(ipv6), crate::scenario::API, &format!("/burst/{i}")))
        .collect();
    let mut opts = Opts::new(Connections::Parallel).max_time(max_time);
    if let Some(s) = source {
        opts = opts.source(s);
    }
    Ok(curl(&c.ns, &urls, opts)?.ok())
}

/// Floods `url` with wrk from `ns` for `duration` over `connections` connections.
/// Returns wrk's report (with its latency distribution).
pub fn wrk(ns: &Netns, url: &str, connections: u32, duration: Duration) -> Result<String> {
    process::run(ns.command("wrk").args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{}s", duration.as_secs()),
        "--timeout",
        "5s",
        "--latency",
        url,
    ]))
}

/// What a wrk report says.
#[derive(Clone, Copy, Debug, Default)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Reads "Requests/sec:" and the 50% and 99% latency lines of a wrk report.
pub fn parse_wrk(report: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = wrk_ms(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = wrk_ms(v.trim())?;
        }
    }
    (r.requests_per_sec > 0.0).then_some(r)
}

/// "812.00us", "1.23ms", "2.00s" → milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// How long the limit tests wait for an answer: an over-limit request's
/// retransmission at 200 ms cannot meet a refill at 1/s.
pub const LIMIT_WAIT: Duration = Duration::from_millis(400);

/// `n` new connections at once from `c` to the API port; how many were
/// answered within [`LIMIT_WAIT`].
pub fn answered(c: &crate::netns::Client, n: usize) -> Result<usize> {
    burst(c, None, n, LIMIT_WAIT)
}

/// Uses up `c`'s connection burst of `n` one connection at a time, each
/// answered (a block drops everything, so a sibling still in its handshake
/// would be caught by it), then checks that the next one is not: with
/// `--block-for`, `c` is now blocked.
pub fn exhaust_conn_burst(c: &crate::netns::Client, n: usize) -> Result<()> {
    for i in 0..n {
        anyhow::ensure!(
            answered(c, 1)? == 1,
            "connection {i} of the burst was refused"
        );
    }
    anyhow::ensure!(
        answered(c, 1)? == 0,
        "a connection over the burst was answered"
    );
    Ok(())
}
