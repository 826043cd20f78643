//! One sampled record's way through the daemon, in one direction: a source's
//! event → the pipeline's stages → the detectors → `enforce` (if findings are
//! acted on) and the sinks (metrics, access log).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use api_guard_common::client::ClientKey;
use tracing::{debug, info, trace, warn};

use crate::{
    clock::WallClock,
    detect::{
        Detector, Finding, Observation,
        auth::{self, AuthCheck, AuthMisses},
    },
    enforce::Enforcer,
    pipeline::{self, HeadStage, http::Completeness},
    sinks::{
        access_log::{AccessLog, AccessRecord},
        metrics::Metrics,
        verdict_name,
    },
    sources::{DecodeError, Event, RequestSample},
};

/// What the flow needs to know, fixed at start: plain values.
pub struct FlowConfig {
    /// Credential header names, lower-case.
    pub auth_headers: Vec<String>,
    pub auth: AuthCheck,
    /// Misses a minute before `--require-auth block` blocks.
    pub auth_failures: u32,
    pub ipv6_prefix: u8,
    /// Interface names by index, for the log.
    pub ifnames: HashMap<u32, String>,
}

pub struct Flow {
    heads: HeadStage,
    auth: AuthCheck,
    ipv6_prefix: u8,
    ifnames: HashMap<u32, String>,
    detectors: Vec<Box<dyn Detector>>,
    /// Acts on the detectors' findings; without it they are only reported.
    enforcer: Option<Enforcer>,
    log: Option<AccessLog>,
    metrics: Arc<Metrics>,
    wall: WallClock,
    /// Records taken from the ring buffer.
    pub records: u64,
}

impl Flow {
    /// With `--require-auth block`, the auth detector runs and `enforcer` acts
    /// on what it finds.
    pub fn new(
        cfg: FlowConfig,
        log: Option<AccessLog>,
        metrics: Arc<Metrics>,
        enforcer: Option<Enforcer>,
    ) -> Self {
        let mut detectors: Vec<Box<dyn Detector>> = Vec::new();
        if cfg.auth == AuthCheck::Block {
            detectors.push(Box::new(AuthMisses::new(cfg.auth_failures)));
        }
        Self {
            heads: HeadStage::new(cfg.auth_headers),
            auth: cfg.auth,
            ipv6_prefix: cfg.ipv6_prefix,
            ifnames: cfg.ifnames,
            detectors,
            enforcer,
            log,
            metrics,
            wall: WallClock::new(),
            records: 0,
        }
    }

    /// Handles one decoded ring record.
    pub fn handle(&mut self, event: Result<Event, DecodeError>) -> Result<()> {
        self.records += 1;
        match event {
            Ok(Event::Request(sample)) => self.request(&sample, false),
            Ok(Event::TlsRequest(sample)) => self.request(&sample, true),
            Err(e) => {
                debug!("{e}");
                self.metrics
                    .parse_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                Ok(())
            }
        }
    }

    /// `tls`: the head came decrypted from the libssl uprobes.
    fn request(&mut self, sample: &RequestSample, tls: bool) -> Result<()> {
        let client = sample.client;
        let head = match self.heads.parse(&sample.head) {
            Ok(head) => head,
            Err(_) => {
                // Its bytes stay out of the log: they may hold anything.
                debug!(client = %client, bytes = sample.head.len(), "sample is not an HTTP request head");
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
        self.metrics
            .count_sampled(pipeline::method_label(head.method), head.auth);
        let missing = auth::missing_credential(self.auth, &head);
        if missing {
            self.metrics.unauthenticated.inc();
        }
        if !self.detectors.is_empty() {
            let seen = Observation {
                client,
                bucket: ClientKey::from(client)
                    .bucketed(u32::from(self.ipv6_prefix))
                    .ip(),
                verdict: sample.verdict,
                head: &head,
                missing_auth: missing,
            };
            let now = Instant::now();
            for detector in &mut self.detectors {
                if let Some(finding) = detector.observe(&seen, now) {
                    act(self.enforcer.as_mut(), &self.metrics, &finding);
                }
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
            verdict = verdict_name(sample.verdict),
            missing,
            "sampled request"
        );
        if let Some(log) = &mut self.log {
            let record = AccessRecord::of(
                sample,
                &head,
                humantime::format_rfc3339_nanos(self.wall.at(sample.ts_ns)),
                self.ifnames.get(&sample.ifindex).map(String::as_str),
                missing,
                tls,
            );
            log.write(&record)?;
        }
        Ok(())
    }

    /// Flushes the access log (every second and at shutdown), and forgets what
    /// has expired: the detectors' windows, and blocks past their deadline.
    pub fn flush(&mut self) {
        if let Some(enforcer) = &mut self.enforcer
            && let Err(e) = enforcer.expire()
        {
            warn!("cannot prune expired blocks: {e:#}");
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.flush()
        {
            warn!("cannot flush the access log: {e}");
        }
        let now = Instant::now();
        for detector in &mut self.detectors {
            detector.prune(now);
        }
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

/// Acts on a finding through the enforcer, if findings are acted on.
fn act(enforcer: Option<&mut Enforcer>, metrics: &Metrics, finding: &Finding) {
    let Finding::Block { client, reason } = *finding;
    let Some(enforcer) = enforcer else {
        debug!(client = %client, "finding not acted on: {}", reason.describe());
        return;
    };
    let refused = enforcer.refused;
    let applied = enforcer.apply(finding);
    if enforcer.refused > refused {
        metrics.auth_blocks_refused.inc();
    }
    match applied {
        Ok(true) => {
            metrics.auth_blocks.inc();
            let for_secs = enforcer.block_for().map_or(0, |d: Duration| d.as_secs());
            warn!(client = %client, for_secs, "blocked: {}", reason.describe());
        }
        Ok(false) => {}
        Err(e) => warn!("cannot block {client}: {e:#}"),
    }
}
