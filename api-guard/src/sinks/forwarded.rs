//! The forwarded blocklist (`--trusted-hops`): the forwarded clients whose
//! requests went over their limit on a pooled proxy connection (reported,
//! not dropped, by the kernel's forwarded stage) and that are over it still,
//! for the proxy to enforce: an nginx `geo` file (`--forwarded-blocklist`),
//! rewritten atomically when it changes, and the same list in `status --json`;
//! a finding (detector `forwarded`) when a client goes over.

use std::{
    collections::HashSet,
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use api_guard_common::{
    client::{ClientKey, ClientState},
    config::{Config, Limit},
    forwarded::Reported,
};

/// One forwarded client over its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverLimit {
    /// Its bucket: an IPv4 address, or an IPv6 network of `--ipv6-prefix`.
    pub client: String,
    /// Requests reported over its limit since it was first reported.
    pub requests: u64,
    /// Nanoseconds since its last reported request.
    pub since_last_ns: u64,
}

/// Whether the client's state says it is over its request limit `l` (its
/// `--limit` override, else `--rate`: the kernel charged it against that) at
/// `now`: blocked, or its bucket would refuse a request (nothing taken).
pub fn is_over(l: Limit, state: &ClientState, now: u64) -> bool {
    if state.blocked_until_ns > now {
        return true;
    }
    l.is_set() && state.request_tat_ns + l.interval_ns > now + l.burst_ns
}

/// The bucket's text form: the address, or for IPv6 its network.
pub fn bucket_text(key: &ClientKey, ipv6_prefix: u32) -> String {
    match key.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) if ipv6_prefix < 128 => format!("{a}/{ipv6_prefix}"),
        IpAddr::V6(a) => a.to_string(),
    }
}

/// The reported clients over their limit now, sorted. `state` looks a
/// client's state up (None: no longer tracked, so not known to be over);
/// `limit` its request limit.
pub fn over_limit(
    cfg: &Config,
    reported: &[(ClientKey, Reported)],
    state: impl Fn(&ClientKey) -> Option<ClientState>,
    limit: impl Fn(&ClientKey) -> Limit,
    now: u64,
) -> Vec<OverLimit> {
    let mut out: Vec<OverLimit> = reported
        .iter()
        .filter(|(k, _)| state(k).is_some_and(|s| is_over(limit(k), &s, now)))
        .map(|(k, r)| OverLimit {
            client: bucket_text(k, cfg.ipv6_prefix),
            requests: r.requests,
            since_last_ns: now.saturating_sub(r.last_ns),
        })
        .collect();
    out.sort_by(|a, b| a.client.cmp(&b.client));
    out
}

/// The nginx `geo` file of `list`: `default 0;`, then `ADDR 1;` per client.
/// Meant for `geo $api_guard_over { include PATH; }` (a variable the
/// proxy tests, e.g. `if ($api_guard_over) { return 429; }`).
pub fn geo(list: &[OverLimit]) -> String {
    let mut s = String::from(
        "# api-guard: forwarded clients over their limit on pooled connections\ndefault 0;\n",
    );
    for c in list {
        s.push_str(&c.client);
        s.push_str(" 1;\n");
    }
    s
}

/// Writes the geo file when its content changes: a temporary file beside
/// it, synced, then renamed into place, so the proxy never reads half a file.
pub struct GeoFile {
    path: PathBuf,
    last: Option<String>,
}

impl GeoFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
        }
    }

    /// Writes `content` if it differs from what was last written.
    pub fn update(&mut self, content: String) -> Result<bool> {
        if self.last.as_deref() == Some(content.as_str()) {
            return Ok(false);
        }
        let name = self
            .path
            .file_name()
            .context("the forwarded blocklist path has no file name")?;
        let tmp = self.path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let write = || -> Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", self.path.display())));
        }
        self.last = Some(content);
        Ok(true)
    }
}

/// The clients that went over their limit since the last look: each gets one
/// finding per stay over it (a client that recovers and goes over again gets
/// another).
/// Clients reported last before `started_ns` (by a daemon that ran before
/// this one on the same pins) were reported then: not again.
pub struct NewlyOver {
    over: HashSet<String>,
    started_ns: u64,
}

impl NewlyOver {
    /// `started_ns`: this daemon's start (CLOCK_MONOTONIC).
    pub fn new(started_ns: u64) -> Self {
        Self {
            over: HashSet::new(),
            started_ns,
        }
    }

    /// The clients of `list` (taken at `now_ns`) that were not over at the
    /// last call, and were reported since this daemon started.
    pub fn update<'a>(&mut self, list: &'a [OverLimit], now_ns: u64) -> Vec<&'a OverLimit> {
        let new: Vec<&OverLimit> = list
            .iter()
            .filter(|c| {
                !self.over.contains(&c.client)
                    && now_ns.saturating_sub(c.since_last_ns) >= self.started_ns
            })
            .collect();
        self.over = list.iter().map(|c| c.client.clone()).collect();
        new
    }
}

/// The findings log line of a forwarded client that went over its limit
/// (the same fields as the detectors' findings, `daemon::flow`).
pub fn finding(c: &OverLimit, timestamp: &str) -> serde_json::Value {
    serde_json::json!({
        "timestamp": timestamp,
        "detector": "forwarded",
        "owasp": "API4:2023",
        "client": c.client,
        "route": null,
        "action": "report",
        "blocked": false,
        "block_for_secs": null,
        "score": 1.0,
        "reason": format!(
            "over its request limit behind a --trusted-hops proxy on a pooled connection: {} requests reported, let through (the forwarded blocklist lists it)",
            c.requests
        ),
        "evidence": { "requests_reported": c.requests, "pooled": true },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            requests: Limit::per_second(1, 1),
            ..Config::unlimited()
        }
    }

    #[test]
    fn only_clients_over_their_limit_now_are_listed() {
        let now = 100_000_000_000;
        let over = ClientKey::v4([198, 18, 0, 1]);
        let recovered = ClientKey::v4([198, 18, 0, 2]);
        let blocked = ClientKey::v6([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        let gone = ClientKey::v4([198, 18, 0, 3]);
        let r = Reported {
            last_ns: now - 5,
            requests: 3,
        };
        let reported = [(over, r), (recovered, r), (blocked, r), (gone, r)];
        let state = |k: &ClientKey| {
            let mut s = ClientState::default();
            if *k == over {
                s.request_tat_ns = now + 2_000_000_000;
            } else if *k == recovered {
                s.request_tat_ns = now - 1;
            } else if *k == blocked {
                s.blocked_until_ns = now + 1;
            } else {
                return None;
            }
            Some(s)
        };
        let cfg = cfg();
        let list = over_limit(&cfg, &reported, state, |_| cfg.requests, now);
        let names: Vec<&str> = list.iter().map(|c| c.client.as_str()).collect();
        assert_eq!(names, ["198.18.0.1", "2001:db8:1:2::/64"]);
        assert_eq!(list[0].since_last_ns, 5);
        assert_eq!(
            geo(&list),
            "# api-guard: forwarded clients over their limit on pooled connections\ndefault 0;\n198.18.0.1 1;\n2001:db8:1:2::/64 1;\n"
        );
    }

    #[test]
    fn a_client_is_judged_by_its_own_limit_override() {
        // 1 request a second by default; this client's override admits 100
        // at once. Its bucket is 0.5 s ahead: over the default, within its own.
        let now = 100_000_000_000;
        let k = ClientKey::v4([198, 18, 0, 1]);
        let r = Reported {
            last_ns: now,
            requests: 1,
        };
        let state = |_: &ClientKey| {
            Some(ClientState {
                request_tat_ns: now + 500_000_000,
                ..ClientState::default()
            })
        };
        let cfg = cfg();
        assert_eq!(
            over_limit(&cfg, &[(k, r)], state, |_| cfg.requests, now).len(),
            1
        );
        let generous = Limit::per_second(100, 100);
        assert!(over_limit(&cfg, &[(k, r)], state, |_| generous, now).is_empty());
    }

    #[test]
    fn a_client_gets_one_finding_per_stay_over_its_limit() {
        let c = |name: &str| OverLimit {
            client: name.into(),
            requests: 3,
            since_last_ns: 0,
        };
        let now = 1_000;
        let mut n = NewlyOver::new(500);
        // Last reported before this daemon started (its predecessor's, on the
        // same pins): not reported again.
        let earlier = [OverLimit {
            since_last_ns: 600,
            ..c("198.18.0.9")
        }];
        assert!(n.update(&earlier, now).is_empty());
        let first = [c("198.18.0.1")];
        assert_eq!(n.update(&first, now).len(), 1);
        // Still over: nothing new; a second client: only it.
        let both = [c("198.18.0.1"), c("198.18.0.2")];
        let new: Vec<&str> = n
            .update(&both, now)
            .iter()
            .map(|o| o.client.as_str())
            .collect();
        assert_eq!(new, ["198.18.0.2"]);
        // The first recovers, then goes over again: a new finding.
        assert!(n.update(&[c("198.18.0.2")], now).is_empty());
        let again: Vec<&str> = n
            .update(&both, now)
            .iter()
            .map(|o| o.client.as_str())
            .collect();
        assert_eq!(again, ["198.18.0.1"]);
        let line = finding(&c("198.18.0.1"), "t");
        assert_eq!(line["detector"], "forwarded");
        assert_eq!(line["owasp"], "API4:2023");
        assert_eq!(line["blocked"], false);
    }

    #[test]
    fn the_geo_file_is_replaced_whole_and_only_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("agt-geo-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("over.geo");
        let mut g = GeoFile::new(&path);
        assert!(g.update("default 0;\n".into()).unwrap());
        assert!(!g.update("default 0;\n".into()).unwrap());
        assert!(g.update("default 0;\n198.18.0.1 1;\n".into()).unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "default 0;\n198.18.0.1 1;\n"
        );
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
