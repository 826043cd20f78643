//! Real HTTP clients (curl) run inside client namespaces.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result, ensure};

use crate::netns::Netns;

/// The URL of `path` on `addr:port`, brackets and all for IPv6.
pub fn url(addr: IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(addr, port))
}

/// What curl reported for a batch of requests.
#[derive(Debug)]
pub struct Batch {
    /// The HTTP status of each request (0 when no response arrived).
    pub statuses: Vec<u16>,
    /// TCP connections curl opened for the batch.
    pub connects: u32,
}

/// How the requests of a batch travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// One new connection per request (`Connection: close`).
    New,
    /// All requests over one keep-alive connection.
    KeepAlive,
}

/// Sends the requests with one curl process inside `ns`.
pub fn curl(ns: &Netns, urls: &[String], mode: Connections) -> Result<Batch> {
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "-w",
        "%{http_code} %{num_connects}\\n",
    ];
    if mode == Connections::New {
        args.extend(["-H", "Connection: close"]);
    }
    // One "-o /dev/null" per URL: curl pairs each -o with one URL.
    for u in urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let out = ns.exec("curl", &args).context("curl failed")?;
    let mut batch = Batch {
        statuses: Vec::new(),
        connects: 0,
    };
    for line in out.lines() {
        let (code, connects) = line
            .split_once(' ')
            .with_context(|| format!("unexpected curl output {out:?}"))?;
        batch.statuses.push(code.parse()?);
        batch.connects += connects.parse::<u32>()?;
    }
    ensure!(
        batch.statuses.len() == urls.len(),
        "curl reported {} of {} requests",
        batch.statuses.len(),
        urls.len()
    );
    Ok(batch)
}
