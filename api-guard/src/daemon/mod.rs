//! The `run` command: check, load, attach, then watch until SIGINT/SIGTERM;
//! drain and flush, detach, report. Its parts run side by side and share no
//! lock: the heartbeat (a thread), the sample flow (`flow`: ring → stages →
//! detectors → enforce / sinks), the metrics server, and the periodic walks of
//! the client map (threads), each with map handles of its own.

mod detected;
mod fleet;
mod flow;
mod tls;

pub use fleet::FleetTask;
pub use flow::{Flow, FlowConfig, JOIN_CAP};

use std::{collections::HashMap, io, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use api_guard_common::{counters::Event, maps as names};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::{Instant, MissedTickBehavior, interval_at},
};
use tracing::{debug, info, warn};

use crate::{
    cli::{FailMode, RunArgs, TlsMode, XdpChoice},
    clock::monotonic_ns,
    detect::{Action, DetectConfig, DetectorName, Thresholds},
    enforce::Enforcer,
    failure::Failure,
    kernel::{
        Attached, Attachment, Datapath, KernelMaps, LoadOptions,
        heartbeat::{Heartbeat, Pulse},
        pins::{Links, PinDir},
        preflight::{self, Cgroup2},
    },
    periodic::Periodic,
    sinks::{
        access_log::AccessLog,
        metrics::{self, KernelCollector, Metrics, ResponseCollector, TopClients},
        report,
    },
    sources::{Sources, ring::RingReader},
};

/// How often the heartbeat thread tells the kernel the daemon is alive, and
/// how often the event loop shows it turns (`--heartbeat-timeout` is at least
/// eight of these).
const BEAT_EVERY: Duration = Duration::from_millis(250);

/// How often `--tls auto` looks for new listeners, workers and libraries.
const TLS_RESCAN_EVERY: Duration = Duration::from_secs(1);

/// How often the top-clients gauge is recomputed.
const TOP_CLIENTS_EVERY: Duration = Duration::from_secs(5);

/// Attaches the XDP pre-filter to `iface` as `--xdp` asks; returns its pin
/// and whether its link is new, or None where it runs without one (a line in
/// the log says which, and `api-guard status` tells it by the pin).
fn attach_xdp(
    datapath: &mut Datapath,
    iface: &str,
    choice: XdpChoice,
    dir: &std::path::Path,
) -> Result<Option<(std::path::PathBuf, bool)>> {
    if choice == XdpChoice::Off {
        info!(%iface, "XDP pre-filter off (--xdp off): TC drops everything");
        return Ok(None);
    }
    let what = Attachment::Xdp { iface };
    let pin = what.pin(dir);
    match datapath.attach(what, Some(&pin)) {
        Ok(how) => {
            info!(%iface, how = ?how, "XDP pre-filter attached in native mode");
            Ok(Some((pin, how == Attached::New)))
        }
        Err(e) if choice == XdpChoice::Auto => {
            info!(%iface, "XDP pre-filter not attached (--xdp auto): {e:#}; TC drops everything");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How long the event loop may go without turning before the heartbeat stops:
/// half the timeout, so a stuck daemon fails open within 1.5 timeouts.
fn stall_allowed(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 2).max(Duration::from_secs(1))
}

pub async fn run(args: RunArgs) -> Result<()> {
    let policy = args.policy().map_err(Failure::Usage)?;
    preflight::check_privileges()?;
    preflight::check_kernel(policy.max_conns.is_some())?;
    let mut ifnames = HashMap::new();
    for iface in &args.ifaces {
        ifnames.insert(preflight::interface_index(iface)?, iface.clone());
        preflight::check_link_layer(iface)?;
    }
    // Claim the pin dir before loading anything: two daemons must not share one.
    let pins = PinDir::claim(&args.pins.pin_dir)?;
    // Signals first: a stop request from here on is never lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // What can fail without the kernel comes before anything is attached or an
    // earlier daemon's policy is touched.
    let log = match &args.access_log {
        Some(path) => Some(AccessLog::open(path).map_err(|e| Failure::Host(format!("{e:#}")))?),
        None => None,
    };
    let findings_log = match &args.findings_log {
        Some(path) => Some(
            crate::sinks::findings::FindingsLog::open(path)
                .map_err(|e| Failure::Host(format!("{e:#}")))?,
        ),
        None => None,
    };
    if let Some(fleet) = args.fleet().map_err(Failure::Usage)? {
        crate::sinks::fleet::check_url(&fleet.url).map_err(|e| Failure::Usage(format!("{e:#}")))?;
    }
    let mut route_patterns = args.routes.clone();
    if let Some(path) = &args.routes_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure::Host(format!(
                "cannot read the routes file {}: {e}",
                path.display()
            ))
        })?;
        route_patterns.extend(
            crate::pipeline::routes::parse_patterns_file(&text)
                .map_err(|e| Failure::Usage(format!("routes file {}: {e}", path.display())))?,
        );
    }
    let listener = TcpListener::bind(args.metrics_addr).await.map_err(|e| {
        Failure::Host(format!(
            "cannot listen on {} for metrics: {e}",
            args.metrics_addr
        ))
    })?;
    // Kept until exit: a cgroup hierarchy api-guard mounted itself is unmounted then.
    let tracker = match policy.max_conns {
        Some(_) => {
            let root = match &args.cgroup {
                Some(dir) => Cgroup2::Mounted(dir.clone()),
                None => Cgroup2::find_or_mount()?,
            };
            Some((root, preflight::netns_cookie()?))
        }
        None => None,
    };

    let adopting = pins.has_state();
    let mut datapath = Datapath::load(&LoadOptions {
        max_clients: args.max_clients,
        ring_bytes: args.sample_buffer,
        pin_dir: Some(pins.dir().to_path_buf()),
    })?;
    pins.restrict()?;
    // The client map's real size: an adopted map keeps the size it was made with.
    let max_clients = datapath.client_capacity()?;
    if adopting {
        info!(pin_dir = %pins.dir().display(), "adopted the pinned state of an earlier daemon");
        if max_clients != args.max_clients {
            warn!(
                "the adopted client map holds {max_clients} clients; --max-clients {} takes effect after `api-guard detach`",
                args.max_clients
            );
        }
    }
    datapath.watch_ports(&args.ports)?;
    // Alive before anything attaches (it beats once before it returns): a
    // fail-open program never sees a stale beat. From here it beats on a thread
    // of its own, through a handle of its own, while the event loop turns.
    let pulse = Pulse::new();
    let heartbeat = Heartbeat::start(
        datapath.handle(names::HEARTBEAT)?,
        BEAT_EVERY,
        pulse.clone(),
        stall_allowed(args.heartbeat_timeout),
    )?;
    // From here every exit, an error included, settles the links by the fail mode.
    let mut links = Links::new(pins.dir(), args.fail_mode == FailMode::Closed);
    let mut cookie = 0;
    if let Some((root, netns)) = &tracker {
        let what = Attachment::SockOps {
            cgroup: root.path(),
        };
        let pin = what.pin(pins.dir());
        let how = datapath.attach(what, Some(&pin))?;
        if how == Attached::TakenOver {
            info!("took over the pinned connection tracker link");
        }
        links.record(pin, how == Attached::New);
        cookie = *netns;
    }
    datapath.apply_policy(&policy.tables(cookie))?;
    datapath.set_sample_budget(Some(args.sample_budget))?;
    debug!(
        rate = ?policy.rate,
        burst = ?policy.burst,
        conn_rate = ?policy.conn_rate,
        max_conns = ?policy.max_conns,
        allow = policy.allow.len(),
        deny = policy.deny.len(),
        limits = policy.limits.len(),
        dry_run = policy.dry_run,
        "policy written to the config maps"
    );
    let ring = datapath.take_samples()?;
    for iface in &args.ifaces {
        // Egress first: a request ingress numbers finds its response framed.
        let what = Attachment::TcEgress { iface };
        let pin = what.pin(pins.dir());
        let how = datapath.attach(what, Some(&pin))?;
        debug!(%iface, how = ?how, pin = %pin.display(), "egress attached");
        if how == Attached::TakenOver {
            info!(%iface, "took over the pinned egress link");
        }
        links.record(pin, how == Attached::New);
        let what = Attachment::TcIngress { iface };
        let pin = what.pin(pins.dir());
        let how = datapath.attach(what, Some(&pin))?;
        debug!(%iface, how = ?how, pin = %pin.display(), "ingress attached");
        if how == Attached::TakenOver {
            info!(%iface, "took over the pinned ingress link");
        }
        links.record(pin, how == Attached::New);
        // XDP last: it drops only what TC would, so TC is in place first.
        if let Some(pin) = attach_xdp(&mut datapath, iface, args.xdp, pins.dir())? {
            links.record(pin.0, pin.1);
        }
    }
    // Links of interfaces (or a connection tracker) no longer asked for.
    let dropped = links.ready()?;
    if dropped > 0 {
        info!(
            dropped,
            "detached what the earlier daemon attached and these flags do not"
        );
    }
    pins.restrict()?;
    // TLS after the ingress: its verdicts are acted on by the TC judge.
    let mut tls = match args.tls {
        TlsMode::Auto => tls::TlsWatch::start(&mut datapath, &args.ports),
        TlsMode::Off => None,
    };
    if let Some(tls) = &mut tls {
        tls.rescan(&mut datapath);
    }
    let prog_id = datapath.ingress_id()?;
    // Every task gets the maps it needs on handles of its own: none waits on a
    // lock another holds, and the datapath stays here for the final report.
    let metrics = Arc::new(Metrics::new(
        datapath.handles("opened for the metrics", &KernelCollector::MAPS)?,
        max_clients,
    )?);
    metrics.add_responses(
        datapath.handles("opened for the response metrics", &ResponseCollector::MAPS)?,
    )?;
    // Always there: expired blocks and penalties are pruned whatever the flags.
    // It acts on findings only of detectors set to block (--require-auth
    // block, --detect NAME=block).
    let actions: HashMap<DetectorName, Action> = DetectorName::ALL
        .into_iter()
        .map(|d| (d, args.detect_action(d)))
        .collect();
    let enforcer = Some(Enforcer::new(
        datapath.handles("opened for enforcing", &Enforcer::MAPS)?,
        policy
            .block_for
            .filter(|_| actions.values().any(|a| *a == Action::Block)),
        policy.ipv6_prefix,
    ));
    let flow = Flow::new(
        FlowConfig {
            auth_headers: args.auth_header_names(),
            key_header: match &args.key_header {
                Some(name) => Some(crate::pipeline::KeyHeader {
                    name: name.clone(),
                    secret: datapath.key_secret()?,
                    fold: policy.keys.flags & api_guard_common::keys::FOLD_SCHEME != 0,
                }),
                None => None,
            },
            auth: args.require_auth.check(),
            auth_failures: args.auth_failures,
            ipv6_prefix: policy.ipv6_prefix,
            ifnames,
            routes: crate::pipeline::routes::RouteConfig {
                patterns: route_patterns,
                max_routes: args.max_routes as usize,
                ..Default::default()
            },
            response_timeout: args.response_timeout,
            detect: DetectConfig {
                window: args.detect_window,
                thresholds: Thresholds::new(&args.detect_thresholds),
                ..Default::default()
            },
            actions,
        },
        log,
        findings_log,
        metrics.clone(),
        enforcer,
    )?;
    let mut flow = flow;
    flow.publish_to(datapath.handles(
        "opened for the detectors' status",
        &[api_guard_common::detect::DETECT_CLIENTS],
    )?);
    let reader = RingReader::new(ring, Sources::kernel())?;
    // --fleet: a thread of its own with handles of its own; Redis never
    // stands between a packet, the heartbeat or the event loop and its work.
    let fleet = match args.fleet().map_err(Failure::Usage)? {
        Some(config) => Some(fleet::FleetTask::start(
            config,
            datapath.handles("opened for the fleet sync", &[names::CLIENTS])?,
            crate::enforce::fleet::FleetEnforcer::new(
                datapath.handles(
                    "opened for the fleet's verdicts",
                    &crate::enforce::fleet::FleetEnforcer::MAPS,
                )?,
                policy.ipv6_prefix,
            ),
            metrics.fleet()?,
        )?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    // Registered before ready, so a SIGHUP from then on never kills the daemon.
    let hup = signal(SignalKind::hangup())?;
    let read_every = (args.sample_wakeup == crate::cli::SampleWakeup::Batched)
        .then(|| Duration::from_millis(api_guard_common::sample::WAKE_EVERY_MS));
    let mut flow_task = tokio::spawn(run_flow(reader, flow, hup, stop_rx.clone(), read_every));
    let metrics_task = tokio::spawn(metrics::serve(listener, metrics.clone(), stop_rx));
    info!(
        ifaces = ?args.ifaces,
        ports = ?args.ports,
        max_clients,
        metrics = %format!("http://{}/metrics", args.metrics_addr),
        prog_id,
        "api-guard ready"
    );

    // Walks of the whole client map, each on a thread and handles of its own.
    let mut top = TopClients::new(args.top_clients);
    let top_maps = datapath.handles("opened for the top clients", &[names::CLIENTS])?;
    let gauge = metrics.top_clients.clone();
    // The first snapshot now, so rates exist after one period.
    top.update(&top_maps, &gauge)?;
    let top_clients = Periodic::start("top-clients", TOP_CLIENTS_EVERY, move || {
        if let Err(e) = top.update(&top_maps, &gauge) {
            warn!("cannot update the top clients: {e:#}");
        }
    })?;
    // --trusted-hops: the forwarded clients over their limit on pooled proxy
    // connections, checked each second: the --forwarded-blocklist geo file,
    // and a finding for each that went over (with --findings-log).
    let forwarded_blocklist = match (
        args.trusted_hops.is_some(),
        &args.forwarded_blocklist,
        &args.findings_log,
    ) {
        (false, _, _) | (true, None, None) => None,
        (true, geo_path, findings_path) => {
            let maps = datapath.handles(
                "opened for the forwarded blocklist",
                &[
                    names::CONFIG,
                    names::CLIENTS,
                    names::FWD_REPORTED,
                    names::OVERRIDES,
                ],
            )?;
            let mut file = geo_path
                .as_deref()
                .map(crate::sinks::forwarded::GeoFile::new);
            if let Some(file) = &mut file {
                // Written at once (empty), so the proxy's include exists from the start.
                file.update(crate::sinks::forwarded::geo(&[]))?;
            }
            let findings_path = findings_path.clone();
            let mut newly = crate::sinks::forwarded::NewlyOver::new(monotonic_ns());
            let findings_metric = metrics.findings.clone();
            Some(Periodic::start(
                "forwarded-blocklist",
                Duration::from_secs(1),
                move || {
                    let now = monotonic_ns();
                    match maps.forwarded_over_limit(now) {
                        Ok(list) => {
                            if let Some(file) = &mut file
                                && let Err(e) = file.update(crate::sinks::forwarded::geo(&list))
                            {
                                warn!("{e:#}");
                            }
                            let Some(path) = &findings_path else {
                                return;
                            };
                            let new = newly.update(&list, now);
                            if new.is_empty() {
                                return;
                            }
                            // Opened for each batch (findings are few): a log
                            // rotated meanwhile is followed without a SIGHUP.
                            let mut log = match crate::sinks::findings::FindingsLog::open(path) {
                                Ok(log) => log,
                                Err(e) => {
                                    warn!("{e:#}");
                                    return;
                                }
                            };
                            let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now())
                                .to_string();
                            for c in new {
                                findings_metric
                                    .with_label_values(&["forwarded", "report"])
                                    .inc();
                                info!(
                                    detector = "forwarded",
                                    client = %c.client,
                                    requests = c.requests,
                                    "finding: over its limit behind a --trusted-hops proxy on a pooled connection (reported)"
                                );
                                if let Err(e) =
                                    log.write(&crate::sinks::forwarded::finding(c, &now))
                                {
                                    warn!("cannot write the findings log: {e:#}");
                                }
                            }
                        }
                        Err(e) => warn!("cannot read the forwarded clients: {e:#}"),
                    }
                },
            )?)
        }
    };
    let summary = match args.report_every.is_zero() {
        true => None,
        false => {
            let maps =
                datapath.handles("opened for the summary", &[names::CLIENTS, names::COUNTERS])?;
            Some(Periodic::start(
                "summary",
                args.report_every,
                move || match (maps.client_counts(monotonic_ns()), maps.counters()) {
                    (Ok((clients, _)), Ok(counters)) => {
                        info!("{}", report::summary(clients, &counters))
                    }
                    (Err(e), _) | (_, Err(e)) => warn!("cannot read the counters: {e:#}"),
                },
            )?)
        }
    };

    // The event loop: it only waits, so it turns on time unless the daemon is
    // stuck, and the heartbeat follows its pulse.
    let mut turn = ticker(BEAT_EVERY);
    let mut tls_scan = ticker(TLS_RESCAN_EVERY);
    let mut flow_failed = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            // The flow only ends when told to: ending early is a failure.
            done = &mut flow_task => { flow_failed = Some(done); break; }
            _ = turn.tick() => pulse.turn(),
            _ = tls_scan.tick(), if tls.is_some() => {
                if let Some(tls) = &mut tls {
                    tls.rescan(&mut datapath);
                }
            }
        }
    }
    drop(fleet);
    drop(summary);
    drop(forwarded_blocklist);
    drop(top_clients);

    // Drain the ring buffer and flush the log while the programs still run, then
    // read the final state and detach.
    let _ = stop_tx.send(true);
    let flow = match flow_failed {
        Some(done) => done,
        None => flow_task.await,
    }
    .context("the sample task failed")?
    .context("the sample pipeline stopped")?;
    let _ = metrics_task.await;
    drop(metrics);
    let final_state = report::Final {
        clients: datapath.clients()?,
        clients_created: datapath.event(Event::ClientsCreated)?,
        counters: datapath.counters()?,
        samples: datapath.event(Event::Sampled)?,
        samples_lost: datapath.event(Event::SamplesLost)?,
        logged: flow.lines_written(),
    };
    drop(flow);
    drop(heartbeat);
    drop(links);
    drop(datapath);
    match args.fail_mode {
        FailMode::Open => info!("detached from {:?}", args.ifaces),
        FailMode::Closed => info!(
            pin_dir = %pins.dir().display(),
            "--fail-mode closed: the programs stay attached and keep enforcing; `api-guard detach` removes them"
        ),
    }
    drop(tracker);
    drop(pins);
    // With the access log on stdout, keep the report out of it.
    if args.access_log.as_deref() == Some(std::path::Path::new("-")) {
        final_state.write(&mut io::stderr().lock())
    } else {
        final_state.write(&mut io::stdout().lock())
    }
}

/// Ticks every `every`, the first time after one period (not at once).
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Takes records off the ring buffer as they come; flushes the access log every
/// second; reopens it on SIGHUP; drains what is left when told to stop.
async fn run_flow(
    mut reader: RingReader,
    mut flow: Flow,
    mut hup: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
    read_every: Option<Duration>,
) -> Result<Flow> {
    let mut flush = ticker(Duration::from_secs(1));
    // --sample-wakeup batched: the kernel wakes the reader only once enough
    // waits; what waits less is read on this timer.
    let mut timed_read = ticker(read_every.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            // A bounded batch, then back to the loop: a producer faster than
            // the pipeline must not starve flushes, signals and stop.
            read = reader.read(BATCH, |event| handle(&mut flow, event)) => { read?; }
            _ = timed_read.tick(), if read_every.is_some() => {
                reader.drain(BATCH, |event| handle(&mut flow, event));
            }
            _ = flush.tick() => flow.flush(),
            _ = hup.recv() => flow.reopen(),
            _ = stop.changed() => break,
        }
    }
    // What the kernel wrote before the stop, bounded: the programs still run,
    // and a flood must not keep the daemon from stopping.
    reader.drain(FINAL_DRAIN, |event| handle(&mut flow, event));
    // Requests still waiting for a response are logged without it.
    flow.drain_waiting();
    flow.flush();
    Ok(flow)
}

fn handle(flow: &mut Flow, event: Result<crate::sources::Event, crate::sources::DecodeError>) {
    if let Err(e) = flow.handle(event) {
        warn!("sample dropped: {e:#}");
    }
}

/// Records handled per wake-up of the sample task.
const BATCH: usize = 4096;
/// Records handled at most after the stop.
const FINAL_DRAIN: usize = 1 << 20;
