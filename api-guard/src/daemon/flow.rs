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
        self, Action, DetectConfig, Detector, DetectorName, Finding, Observation,
        auth::{self, AuthCheck, AuthMisses},
    },
    enforce::Enforcer,
    pipeline::{
        self, HeadStage,
        answered::Answered,
        client_classes::ClientClasses,
        http::Completeness,
        join::{ExchangeKey, Join},
        routes::{Route, RouteConfig, Routes},
    },
    sinks::{
        access_log::{AccessLog, AccessRecord},
        findings::FindingsLog,
        metrics::Metrics,
        metrics::status_label,
        verdict_name,
    },
    sources::{DecodeError, Event, RequestSample, ResponseSample},
};
use api_guard_common::sample::NO_EXCHANGE;

/// Sampled requests waiting for their responses at most: past it the oldest
/// is logged without its response (`evicted`). Each holds its captured head.
pub const JOIN_CAP: usize = 4_096;

/// What the flow needs to know, fixed at start: plain values.
pub struct FlowConfig {
    /// Credential header names, lower-case.
    pub auth_headers: Vec<String>,
    /// `--key-header`, for the access log's key fingerprints.
    pub key_header: Option<crate::pipeline::KeyHeader>,
    pub auth: AuthCheck,
    /// Misses a minute before `--require-auth block` blocks.
    pub auth_failures: u32,
    pub ipv6_prefix: u8,
    /// Interface names by index, for the log.
    pub ifnames: HashMap<u32, String>,
    /// Route patterns and caps.
    pub routes: RouteConfig,
    /// How long a sampled request waits for its response before it is logged
    /// without it.
    pub response_timeout: Duration,
    /// The answered-event detectors' window, thresholds and caps.
    pub detect: DetectConfig,
    /// What each detector's findings do (`--detect`; auth's from
    /// `--require-auth`).
    pub actions: HashMap<DetectorName, Action>,
}

/// Client buckets whose response classes are kept (LRU past it, counted).
pub const CLASS_CLIENTS: usize = 16_384;
/// The window of the per-client response classes.
pub const CLASS_WINDOW: Duration = Duration::from_secs(60);

/// A sampled request waiting for its response.
struct Waiting {
    sample: RequestSample,
    missing: bool,
    /// The head came decrypted from the libssl uprobes.
    tls: bool,
    route: Route,
}

/// What the response brought to a request's log line.
struct Answer {
    status: Option<u16>,
    duration: Option<f64>,
    how: &'static str,
}

pub struct Flow {
    heads: HeadStage,
    auth: AuthCheck,
    ipv6_prefix: u8,
    ifnames: HashMap<u32, String>,
    /// Request-time detectors (auth misses).
    detectors: Vec<Box<dyn Detector>>,
    /// Detectors of requests joined with their responses.
    answered: Vec<Box<dyn Detector>>,
    actions: HashMap<DetectorName, Action>,
    /// Acts on the detectors' findings; without it they are only reported.
    enforcer: Option<Enforcer>,
    log: Option<AccessLog>,
    findings_log: Option<FindingsLog>,
    /// Per client: findings and response classes, published each second for
    /// `status` and `top` through `publish` (the pinned `DETECT_CLIENTS`).
    detected: super::detected::Detected,
    publish: Option<crate::kernel::MapSet>,
    metrics: Arc<Metrics>,
    wall: WallClock,
    routes: Routes,
    join: Join<Waiting>,
    classes: ClientClasses,
    /// Records taken from the ring buffer.
    pub records: u64,
}

impl Flow {
    /// With `--require-auth block`, the auth detector runs and `enforcer` acts
    /// on what it finds.
    pub fn new(
        cfg: FlowConfig,
        log: Option<AccessLog>,
        findings_log: Option<FindingsLog>,
        metrics: Arc<Metrics>,
        enforcer: Option<Enforcer>,
    ) -> Result<Self> {
        let mut detectors: Vec<Box<dyn Detector>> = Vec::new();
        if cfg.auth == AuthCheck::Block {
            detectors.push(Box::new(AuthMisses::new(cfg.auth_failures)));
        }
        let action = |d: DetectorName| cfg.actions.get(&d).copied().unwrap_or(Action::Log);
        let answered = detect::build(&cfg.detect, |d| action(d) != Action::Off);
        Ok(Self {
            answered,
            actions: cfg.actions.clone(),
            findings_log,
            detected: Default::default(),
            publish: None,
            routes: Routes::new(&cfg.routes)?,
            join: Join::new(
                JOIN_CAP,
                u64::try_from(cfg.response_timeout.as_nanos()).unwrap_or(u64::MAX),
            ),
            classes: ClientClasses::new(CLASS_CLIENTS, CLASS_WINDOW.as_nanos() as u64),
            heads: HeadStage::new(cfg.auth_headers, cfg.key_header),
            auth: cfg.auth,
            ipv6_prefix: cfg.ipv6_prefix,
            ifnames: cfg.ifnames,
            detectors,
            enforcer,
            log,
            metrics,
            wall: WallClock::new(),
            records: 0,
        })
    }

    /// Handles one decoded ring record.
    pub fn handle(&mut self, event: Result<Event, DecodeError>) -> Result<()> {
        self.records += 1;
        match event {
            Ok(Event::Request(sample)) => self.request(sample, false),
            Ok(Event::TlsRequest(sample)) => self.request(sample, true),
            Ok(Event::Response(response)) => self.response(&response),
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
    fn request(&mut self, sample: RequestSample, tls: bool) -> Result<()> {
        let sample = &sample;
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
        let mut found: Vec<Finding> = Vec::new();
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
            found.extend(
                self.detectors
                    .iter_mut()
                    .filter_map(|d| d.observe(&seen, now)),
            );
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
        let route = self.routes.route(head.method, head.path);
        for finding in found {
            self.found(finding, sample.ts_ns);
        }
        let overflowed = self.routes.stats.overflow;
        if overflowed > self.metrics.routes.routes_overflow.get() {
            self.metrics
                .routes
                .routes_overflow
                .inc_by(overflowed - self.metrics.routes.routes_overflow.get());
        }
        self.metrics
            .routes
            .requests
            .with_label_values(&[route.template.as_str(), verdict_name(sample.verdict)])
            .inc();
        let waiting = Waiting {
            sample: sample.clone(),
            missing,
            tls,
            route,
        };
        if sample.exchange == NO_EXCHANGE {
            // The kernel could not number it (dropped, or its connection's
            // requests are not counted exactly): no response will be joined.
            return self.log_request(&waiting, &Answer::gave_up("unpaired"));
        }
        let key = ExchangeKey {
            client: sample.client,
            client_port: sample.client_port,
            server: sample.server,
            server_port: sample.server_port,
            index: sample.exchange,
        };
        let pushed_out = self.join.request(key, sample.ts_ns, waiting);
        for (w, why) in pushed_out {
            self.log_request(&w, &Answer::gave_up(why.name()))?;
        }
        Ok(())
    }

    fn response(&mut self, r: &ResponseSample) -> Result<()> {
        let key = ExchangeKey {
            client: r.client,
            client_port: r.client_port,
            server: r.server,
            server_port: r.server_port,
            index: r.exchange,
        };
        let Some(w) = self.join.response(&key) else {
            self.metrics
                .routes
                .joins
                .with_label_values(&["orphan"])
                .inc();
            return Ok(());
        };
        let seconds = r.ttfb_ns as f64 / 1e9;
        let head = self.heads.parse(&w.sample.head).ok();
        let method = pipeline::method_label(head.as_ref().map_or("OTHER", |h| h.method));
        let mut found = Vec::new();
        if let Some(head) = &head {
            let answered = Answered {
                client: w.sample.client,
                bucket: ClientKey::from(w.sample.client)
                    .bucketed(u32::from(self.ipv6_prefix))
                    .ip(),
                method: head.method,
                path: head.path,
                route: &w.route,
                status: r.status,
                duration_ns: r.ttfb_ns,
                auth: head.auth,
                credential: match self.answered.is_empty() {
                    true => None,
                    false => self.heads.fingerprint(&w.sample.head),
                },
                verdict: w.sample.verdict,
            };
            for detector in &mut self.answered {
                found.extend(detector.answered(&answered, r.ts_ns));
            }
            self.classes
                .observe(answered.bucket, answered.status, r.ts_ns);
            let evicted = self.classes.stats.evicted;
            let counted = self.metrics.routes.classes_evicted.get();
            if evicted > counted {
                self.metrics
                    .routes
                    .classes_evicted
                    .inc_by(evicted - counted);
            }
        }
        for finding in found {
            self.found(finding, r.ts_ns);
        }
        let route = w.route.template.as_str();
        self.metrics
            .routes
            .duration
            .with_label_values(&[method, route, &status_label(r.status)])
            .observe(seconds);
        // Made at zero on the route's first response, so every route's error
        // ratio has a numerator.
        let errors = self.metrics.routes.errors.with_label_values(&[route]);
        if r.status >= 500 {
            errors.inc();
        }
        self.log_request(
            &w,
            &Answer {
                status: Some(r.status),
                duration: Some(seconds),
                how: "joined",
            },
        )
    }

    /// Publishes findings and response classes per client, every second,
    /// through `maps` (handles of its own to `DETECT_CLIENTS`).
    pub fn publish_to(&mut self, maps: crate::kernel::MapSet) {
        self.publish = Some(maps);
    }

    /// The per-client response classes (401/403/404/429/5xx over the last
    /// minute, from joined samples), for the detectors and `top`.
    pub fn client_classes(&self) -> &ClientClasses {
        &self.classes
    }

    /// Writes a sampled request's access log line, with what its response
    /// brought.
    fn log_request(&mut self, w: &Waiting, answer: &Answer) -> Result<()> {
        self.metrics
            .routes
            .joins
            .with_label_values(&[answer.how])
            .inc();
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        // Parsed again: the head borrows the bytes, which waited owned.
        let Ok(head) = self.heads.parse(&w.sample.head) else {
            return Ok(());
        };
        let mut record = AccessRecord::of(
            &w.sample,
            &head,
            humantime::format_rfc3339_nanos(self.wall.at(w.sample.ts_ns)),
            self.ifnames.get(&w.sample.ifindex).map(String::as_str),
            w.missing,
            w.tls,
        );
        record.route = Some(&w.route.template);
        record.status = answer.status;
        record.duration = answer.duration;
        record.response = answer.how;
        log.write(&record)
    }

    /// Logs the sampled requests whose responses did not come in time.
    fn expire_waiting(&mut self) {
        for (w, why) in self.join.expire(crate::clock::monotonic_ns()) {
            if let Err(e) = self.log_request(&w, &Answer::gave_up(why.name())) {
                warn!("cannot write the access log: {e:#}");
            }
        }
    }

    /// Logs every request still waiting (at shutdown).
    pub fn drain_waiting(&mut self) {
        for (w, why) in self.join.expire(u64::MAX) {
            if let Err(e) = self.log_request(&w, &Answer::gave_up(why.name())) {
                warn!("cannot write the access log: {e:#}");
            }
        }
    }

    /// Flushes the access log (every second and at shutdown), and forgets what
    /// has expired: the detectors' windows, and blocks past their deadline.
    pub fn flush(&mut self) {
        self.expire_waiting();
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
        let now_ns = crate::clock::monotonic_ns();
        if let Some(maps) = &mut self.publish {
            let entries = self.detected.entries(&self.classes, now_ns);
            if let Err(e) = crate::kernel::KernelMaps::set_detect_clients(maps, &entries) {
                warn!("cannot publish what the detectors know: {e:#}");
            }
        }
        for detector in self.detectors.iter_mut().chain(&mut self.answered) {
            detector.prune(now, now_ns);
            let name = detector.name().name();
            let counted = self.metrics.detect_evicted.with_label_values(&[name]);
            let evicted = detector.evicted();
            if evicted > counted.get() {
                counted.inc_by(evicted - counted.get());
            }
        }
    }

    /// A detector's finding: logged, counted, remembered for `status` and
    /// `top`, and acted on as its detector's `--detect` action says.
    fn found(&mut self, finding: Finding, at_ns: u64) {
        let action = match finding.detector {
            DetectorName::Auth => Action::Block,
            d => self.actions.get(&d).copied().unwrap_or(Action::Log),
        };
        let mut blocked = false;
        if action == Action::Block {
            blocked = act(self.enforcer.as_mut(), &self.metrics, &finding);
        }
        self.detected
            .record(&finding, action == Action::Block, at_ns);
        let action_label = if action == Action::Block {
            "block"
        } else {
            "log"
        };
        self.metrics
            .findings
            .with_label_values(&[finding.detector.name(), action_label])
            .inc();
        info!(
            detector = finding.detector.name(),
            client = %finding.client,
            route = finding.route.as_deref(),
            action = action_label,
            score = finding.score,
            "finding: {}",
            finding.reason
        );
        let Some(log) = &mut self.findings_log else {
            return;
        };
        let line = serde_json::json!({
            "timestamp": humantime::format_rfc3339_nanos(self.wall.at(at_ns)).to_string(),
            "detector": finding.detector.name(),
            "owasp": finding.detector.owasp(),
            "client": finding.client.to_string(),
            "route": finding.route,
            "action": action_label,
            "blocked": blocked,
            "block_for_secs": self
                .enforcer
                .as_ref()
                .and_then(|e| e.block_for())
                .filter(|_| blocked)
                .map(|d| d.as_secs()),
            "score": (finding.score * 100.0).round() / 100.0,
            "reason": finding.reason,
            "evidence": finding.evidence,
        });
        if let Err(e) = log.write(&line) {
            warn!("cannot write the findings log: {e:#}");
        }
    }

    /// SIGHUP: reopens the access log and the findings log.
    pub fn reopen(&mut self) {
        if let Some(log) = &mut self.findings_log {
            match log.reopen() {
                Ok(()) => info!("SIGHUP: findings log reopened"),
                Err(e) => warn!("cannot reopen the findings log: {e:#}"),
            }
        }
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

impl Answer {
    fn gave_up(how: &'static str) -> Self {
        Self {
            status: None,
            duration: None,
            how,
        }
    }
}

/// Blocks a finding's client through the enforcer; whether it changed what
/// the kernel does.
fn act(enforcer: Option<&mut Enforcer>, metrics: &Metrics, finding: &Finding) -> bool {
    let client = finding.client;
    let Some(enforcer) = enforcer else {
        debug!(client = %client, "finding not acted on: {}", finding.reason);
        return false;
    };
    let refused = enforcer.refused;
    let applied = enforcer.apply(finding);
    if enforcer.refused > refused {
        metrics.auth_blocks_refused.inc();
    }
    match applied {
        Ok(true) => {
            if finding.detector == DetectorName::Auth {
                metrics.auth_blocks.inc();
            }
            let for_secs = enforcer.block_for().map_or(0, |d: Duration| d.as_secs());
            warn!(client = %client, detector = finding.detector.name(), for_secs, "blocked: {}", finding.reason);
            true
        }
        Ok(false) => false,
        Err(e) => {
            warn!("cannot block {client}: {e:#}");
            false
        }
    }
}
