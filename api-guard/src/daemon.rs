//! The `run` command: check, load, attach, then watch (sample pipeline, metrics,
//! periodic summary) until SIGINT/SIGTERM; drain and flush, detach, report.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use api_guard_common::counters::Event;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
    time::{Instant, MissedTickBehavior, interval_at},
};
use tracing::{debug, info, warn};

use crate::{
    access_log::AccessLog,
    cli::{FailMode, RunArgs},
    failure::{ExitCode, Failure},
    loader::{Attached, Datapath, LoadOptions},
    maps::KernelMaps,
    metrics::{self, Metrics, TopClients},
    pins::{Links, PinDir},
    preflight::{self, Cgroup2},
    report,
    sampler::{Sampler, SamplerConfig},
};

/// How often the daemon tells the kernel it is alive (`--heartbeat-timeout` is
/// at least two of these).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How often the top-clients gauge is recomputed.
const TOP_CLIENTS_EVERY: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> Result<()> {
    let policy = args
        .policy()
        .map_err(|e| Failure::new(ExitCode::Usage, e))?;
    preflight::check_privileges()?;
    preflight::check_kernel(policy.max_conns.is_some())?;
    let mut ifnames = HashMap::new();
    for iface in &args.ifaces {
        ifnames.insert(preflight::interface_index(iface)?, iface.clone());
    }
    // Claim the pin dir before loading anything: two daemons must not share one.
    let pins = PinDir::claim(&args.pins.pin_dir)?;
    // Signals first: a stop request from here on is never lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // What can fail without the kernel comes before anything is attached or an
    // earlier daemon's policy is touched.
    let log = match &args.access_log {
        Some(path) => Some(
            AccessLog::open(path)
                .map_err(|e| Failure::new(ExitCode::Environment, format!("{e:#}")))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(args.metrics_addr).await.map_err(|e| {
        Failure::new(
            ExitCode::Environment,
            format!("cannot listen on {} for metrics: {e}", args.metrics_addr),
        )
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
    // Alive before anything attaches: a fail-open program never sees a stale beat.
    datapath.beat(crate::clock::monotonic_ns())?;
    // From here every exit, an error included, settles the links by the fail mode.
    let mut links = Links::new(pins.dir(), args.fail_mode == FailMode::Closed);
    let mut cookie = 0;
    if let Some((root, netns)) = &tracker {
        let pin = crate::pins::sockops_link(pins.dir());
        let how = datapath.attach_sockops(root.path(), Some(&pin))?;
        if how == Attached::TakenOver {
            info!("took over the pinned connection tracker link");
        }
        links.record(pin, how == Attached::New);
        cookie = *netns;
    }
    datapath.apply_policy(&policy, cookie)?;
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
        let pin = crate::pins::ingress_link(pins.dir(), iface);
        let how = datapath.attach_ingress(iface, Some(&pin))?;
        debug!(%iface, how = ?how, pin = %pin.display(), "ingress attached");
        if how == Attached::TakenOver {
            info!(%iface, "took over the pinned ingress link");
        }
        links.record(pin, how == Attached::New);
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
    let prog_id = datapath.ingress_id()?;
    let datapath = Arc::new(Mutex::new(datapath));
    let metrics = Arc::new(Metrics::new(datapath.clone(), max_clients)?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = Sampler::new(
        SamplerConfig {
            auth_headers: args.auth_header_names(),
            require_auth: args.require_auth,
            auth_failures: args.auth_failures,
            block_for: policy.block_for,
            ipv6_prefix: policy.ipv6_prefix,
            ifnames,
        },
        log,
        metrics.clone(),
        datapath.clone(),
    );
    // Registered before ready, so a SIGHUP from then on never kills the daemon.
    let hup = signal(SignalKind::hangup())?;
    let mut sampler_task = tokio::spawn(run_sampler(ring, sampler, hup, stop_rx.clone()));
    let metrics_task = tokio::spawn(metrics::serve(listener, metrics.clone(), stop_rx));
    info!(
        ifaces = ?args.ifaces,
        ports = ?args.ports,
        max_clients,
        metrics = %format!("http://{}/metrics", args.metrics_addr),
        prog_id,
        "api-guard ready"
    );

    let mut summary = (!args.report_every.is_zero()).then(|| ticker(args.report_every));
    let mut top_tick = ticker(TOP_CLIENTS_EVERY);
    // On the main loop, not a task of its own: a daemon whose loop is stuck
    // must stop beating.
    let mut heartbeat = ticker(HEARTBEAT_EVERY);
    let mut top = TopClients::new(args.top_clients);
    // The first snapshot now, so rates exist after one period.
    top.update(&*lock(&datapath)?, &metrics.top_clients)?;
    let mut sampler_failed = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            // The sampler only ends when told to: ending early is a failure.
            done = &mut sampler_task => { sampler_failed = Some(done); break; }
            _ = async { summary.as_mut().unwrap().tick().await }, if summary.is_some() => {
                let dp = lock(&datapath)?;
                match (dp.clients(), dp.counters()) {
                    (Ok(clients), Ok(counters)) => info!("{}", report::summary(clients.len(), &counters)),
                    (Err(e), _) | (_, Err(e)) => warn!("cannot read the counters: {e:#}"),
                }
            }
            _ = heartbeat.tick() => {
                if let Err(e) = lock(&datapath)?.beat(crate::clock::monotonic_ns()) {
                    warn!("cannot write the heartbeat: {e:#}");
                }
            }
            _ = top_tick.tick() => {
                if let Err(e) = top.update(&*lock(&datapath)?, &metrics.top_clients) {
                    warn!("cannot update the top clients: {e:#}");
                }
            }
        }
    }

    // Drain the ring buffer and flush the log while the programs still run, then
    // read the final state and detach.
    let _ = stop_tx.send(true);
    let sampler = match sampler_failed {
        Some(done) => done,
        None => sampler_task.await,
    }
    .context("the sampler task failed")?
    .context("the sample pipeline stopped")?;
    let _ = metrics_task.await;
    drop(metrics);
    let dp = lock(&datapath)?;
    let final_state = report::Final {
        clients: dp.clients()?,
        clients_created: dp.event(Event::ClientsCreated)?,
        counters: dp.counters()?,
        samples: dp.event(Event::Sampled)?,
        samples_lost: dp.event(Event::SamplesLost)?,
        logged: sampler.lines_written(),
    };
    drop(dp);
    drop(sampler);
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

fn lock(dp: &Mutex<Datapath>) -> Result<std::sync::MutexGuard<'_, Datapath>> {
    dp.lock()
        .map_err(|_| anyhow::anyhow!("the datapath lock is poisoned"))
}

/// Takes records off the ring buffer as they come; flushes the access log every
/// second; reopens it on SIGHUP; drains what is left when told to stop.
async fn run_sampler(
    ring: RingBuf<MapData>,
    mut sampler: Sampler,
    mut hup: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) -> Result<Sampler> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for
    // as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("cannot watch the sample ring buffer: {e}"))?;
    let mut flush = ticker(Duration::from_secs(1));
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                // A bounded batch, then back to the loop: a producer faster than
                // the pipeline must not starve flushes, signals and stop.
                if drain(guard.get_inner_mut(), &mut sampler, BATCH) < BATCH {
                    guard.clear_ready();
                }
            }
            _ = flush.tick() => sampler.flush(),
            _ = hup.recv() => sampler.reopen(),
            _ = stop.changed() => break,
        }
    }
    // What the kernel wrote before the stop, bounded: the programs still run,
    // and a flood must not keep the daemon from stopping.
    drain(ring.get_mut(), &mut sampler, FINAL_DRAIN);
    sampler.flush();
    Ok(sampler)
}

/// Records handled per wake-up of the sampler.
const BATCH: usize = 4096;
/// Records handled at most after the stop.
const FINAL_DRAIN: usize = 1 << 20;

/// Handles up to `max` records; returns how many there were.
fn drain(ring: &mut RingBuf<MapData>, sampler: &mut Sampler, max: usize) -> usize {
    let mut n = 0;
    while n < max {
        let Some(record) = ring.next() else { break };
        if let Err(e) = sampler.handle(&record) {
            warn!("sample dropped: {e:#}");
        }
        n += 1;
    }
    n
}
