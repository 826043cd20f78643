//! The sample pipeline: ring buffer records → request parser → access log,
//! metrics and the auth check. Records carry their kernel source, so further
//! sources (egress responses, TLS uprobes) join the same pipeline.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_common::{
    client::ClientKey,
    counters::{VERDICTS, Verdict},
    sample::{SAMPLE_IPV6, SampleHeader, Source},
};
use tracing::{debug, info, trace, warn};

use crate::{
    access_log::{AccessLog, AccessRecord},
    auth::AuthFailures,
    cli::RequireAuth,
    clock::{WallClock, monotonic_ns},
    loader::Datapath,
    maps::KernelMaps,
    metrics::Metrics,
    request::{self, AuthScheme, Completeness},
};

/// What the sampler needs to know, fixed at start.
pub struct SamplerConfig {
    pub auth_headers: Vec<String>,
    pub require_auth: RequireAuth,
    pub auth_failures: u32,
    pub block_for: Option<Duration>,
    pub ipv6_prefix: u8,
    /// Interface names by index, for the log.
    pub ifnames: HashMap<u32, String>,
}

pub struct Sampler {
    cfg: SamplerConfig,
    log: Option<AccessLog>,
    metrics: Arc<Metrics>,
    datapath: Arc<Mutex<Datapath>>,
    failures: AuthFailures,
    wall: WallClock,
    /// Records taken from the ring buffer.
    pub records: u64,
}

impl Sampler {
    pub fn new(
        cfg: SamplerConfig,
        log: Option<AccessLog>,
        metrics: Arc<Metrics>,
        datapath: Arc<Mutex<Datapath>>,
    ) -> Self {
        let failures = AuthFailures::new(cfg.auth_failures);
        Self {
            cfg,
            log,
            metrics,
            datapath,
            failures,
            wall: WallClock::new(),
            records: 0,
        }
    }

    /// Handles one ring buffer record.
    pub fn handle(&mut self, record: &[u8]) -> Result<()> {
        self.records += 1;
        let Some((hdr, data)) = SampleHeader::parse(record) else {
            debug!(
                bytes = record.len(),
                "ring record shorter than its header says"
            );
            self.metrics
                .parse_errors
                .with_label_values(&["bad_record"])
                .inc();
            return Ok(());
        };
        match hdr.source {
            s if s == Source::TcIngress as u16 => self.request(&hdr, data),
            source => {
                debug!(source, "ring record from an unknown kernel source");
                self.metrics
                    .parse_errors
                    .with_label_values(&["unknown_source"])
                    .inc();
                Ok(())
            }
        }
    }

    fn request(&mut self, hdr: &SampleHeader, data: &[u8]) -> Result<()> {
        let head = match request::parse(data, &self.cfg.auth_headers) {
            Ok(head) => head,
            Err(_) => {
                // Its bytes stay out of the log: they may hold anything.
                debug!(client = %address(hdr.client), bytes = data.len(), "sample is not an HTTP request head");
                self.metrics
                    .parse_errors
                    .with_label_values(&["not_http"])
                    .inc();
                return Ok(());
            }
        };
        if head.completeness == Completeness::Truncated {
            self.metrics
                .parse_errors
                .with_label_values(&["truncated"])
                .inc();
        }
        let client = address(hdr.client);
        let method_label = method_label(head.method);
        self.metrics.count_sampled(method_label, head.auth);
        // A head cut short may carry its credential past the cut, and a CORS
        // preflight (OPTIONS) never carries one: neither counts as a miss.
        let missing = self.cfg.require_auth != RequireAuth::Off
            && head.auth == AuthScheme::None
            && head.completeness == Completeness::Complete
            && head.method != "OPTIONS";
        if missing {
            self.metrics.unauthenticated.inc();
            // Only requests the kernel let through count toward a block: one it
            // already dropped (or a retransmission of it) is not a new miss.
            let admitted = [Verdict::Allowed, Verdict::WouldDrop, Verdict::FailedOpen]
                .iter()
                .any(|v| hdr.verdict == *v as u8);
            let bucket = ClientKey::from(client)
                .bucketed(u32::from(self.cfg.ipv6_prefix))
                .ip();
            if self.cfg.require_auth == RequireAuth::Block
                && admitted
                && self.failures.miss(bucket, Instant::now())
                && let Err(e) = self.block(client)
            {
                warn!("cannot block {client}: {e:#}");
            }
        }
        // What the access log has, redacted the same way, for a daemon run
        // without one.
        trace!(
            client = %client,
            method = head.method,
            path = head.path,
            query = head.query.as_deref(),
            auth = head.auth.as_str(),
            verdict = verdict_name(hdr.verdict),
            missing,
            "sampled request"
        );
        if let Some(log) = &mut self.log {
            let host = head.host.as_deref().map(strip_port);
            let record = AccessRecord {
                timestamp: humantime::format_rfc3339_nanos(self.wall.at(hdr.ts_ns)),
                client_address: client,
                client_port: hdr.client_port,
                server_address: host,
                server_port: hdr.server_port,
                local_address: address(hdr.server),
                network_type: if hdr.flags & SAMPLE_IPV6 != 0 {
                    "ipv6"
                } else {
                    "ipv4"
                },
                protocol: "http",
                protocol_version: match head.version {
                    Some(0) => Some("1.0"),
                    Some(1) => Some("1.1"),
                    _ => None,
                },
                method: head.method,
                path: head.path,
                query: head.query.as_deref(),
                user_agent: head.user_agent.as_deref(),
                body_size: head.content_length,
                interface: self.cfg.ifnames.get(&hdr.ifindex).map(String::as_str),
                verdict: verdict_name(hdr.verdict),
                auth_present: head.auth != AuthScheme::None,
                auth_scheme: head.auth.as_str(),
                auth_header: head.auth_header,
                auth_missing: missing,
                head: match head.completeness {
                    Completeness::Complete => "complete",
                    Completeness::Truncated => "truncated",
                },
                payload_size: hdr.payload_len,
            };
            log.write(&record)?;
        }
        Ok(())
    }

    /// `--require-auth block`: blocks the client's bucket (the address, or its
    /// IPv6 prefix) in the kernel for --block-for.
    fn block(&self, client: IpAddr) -> Result<()> {
        let Some(block_for) = self.cfg.block_for else {
            return Ok(());
        };
        let key = ClientKey::from(client).bucketed(u32::from(self.cfg.ipv6_prefix));
        let prefix = if client.is_ipv4() {
            128
        } else {
            u32::from(self.cfg.ipv6_prefix)
        };
        let nanos = u64::try_from(block_for.as_nanos()).unwrap_or(u64::MAX);
        let until = monotonic_ns().saturating_add(nanos).min(u64::MAX - 1);
        let mut dp = self
            .datapath
            .lock()
            .map_err(|_| anyhow::anyhow!("datapath lock poisoned"))?;
        // Never shorten a block already there (an operator's, say).
        if dp
            .blocks()?
            .iter()
            .any(|(p, a, u)| *p == prefix && *a == key.addr && *u >= until)
        {
            return Ok(());
        }
        dp.block((prefix, key.addr), until)?;
        self.metrics.auth_blocks.inc();
        warn!(client = %client, for_secs = block_for.as_secs(), "blocked: too many requests without credentials");
        Ok(())
    }

    /// Flushes the access log (every second and at shutdown), and forgets what
    /// has expired: miss windows, and auth blocks past their deadline.
    pub fn flush(&mut self) {
        if self.cfg.require_auth == RequireAuth::Block
            && let Ok(mut dp) = self.datapath.lock()
            && let Err(e) = dp.prune_blocks(monotonic_ns())
        {
            warn!("cannot prune expired blocks: {e:#}");
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.flush()
        {
            warn!("cannot flush the access log: {e}");
        }
        self.failures.prune(Instant::now());
    }

    /// SIGHUP: reopens the access log.
    pub fn reopen(&mut self) {
        if let Some(log) = &mut self.log {
            match log.reopen() {
                Ok(()) => info!("SIGHUP: access log reopened"),
                Err(e) => warn!("cannot reopen the access log: {e:#}"),
            }
        }
    }

    pub fn lines_written(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.lines)
    }
}

fn address(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

/// A bounded method label: the nine methods the kernel recognises.
fn method_label(method: &str) -> &'static str {
    api_guard_common::http::Method::ALL
        .iter()
        .map(|m| m.as_str())
        .find(|m| *m == method)
        .unwrap_or("OTHER")
}

fn verdict_name(v: u8) -> &'static str {
    VERDICTS
        .iter()
        .find(|x| **x as u8 == v)
        .map_or("unknown", |v: &Verdict| v.name())
}

/// "api.example:8080" → "api.example"; "[2001:db8::1]:80" → "2001:db8::1".
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("api.example:8080"), "api.example");
        assert_eq!(strip_port("api.example"), "api.example");
        assert_eq!(strip_port("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(strip_port("198.18.0.1"), "198.18.0.1");
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "OTHER");
        assert_eq!(verdict_name(Verdict::RateLimited as u8), "rate_limited");
        assert_eq!(verdict_name(200), "unknown");
    }
}
