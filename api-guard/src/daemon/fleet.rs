//! The fleet task (`--fleet`): a thread of its own, with its own async
//! runtime and map handles, so that Redis being slow or gone can delay
//! nothing else (not a packet: the kernel decides alone; not the heartbeat or
//! the event loop: they run elsewhere). Every `--fleet-sync` it walks the
//! client map, sends the counts that moved and this host's new blocks
//! (`sinks::fleet`), and writes what comes back through `enforce::fleet`.
//! While Redis does not answer, the local limit is the fallback's.

use std::{
    collections::HashSet,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::{
    cli::FleetConfig,
    enforce::fleet::FleetEnforcer,
    kernel::{KernelMaps, MapSet, usage},
    sinks::{
        fleet::{Budget, FleetStore, Outbox, UsageTracker},
        metrics::FleetMetrics,
    },
};

/// The running fleet thread; dropping this stops it (after the sync in
/// progress, which gives up within its timeout) and joins it.
pub struct FleetTask {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How long one sync may take before it counts as failed: Redis slower than
/// this is treated as gone.
fn sync_timeout(sync: Duration) -> Duration {
    (sync * 4).max(Duration::from_secs(1))
}

impl FleetTask {
    /// Starts syncing. `clients`: a handle of its own to the client map;
    /// `enforcer`: the fleet's writer of verdicts. The kernel starts at the
    /// fallback's limit (the policy wrote it), raised on the first answer.
    pub fn start(
        config: FleetConfig,
        clients: MapSet,
        enforcer: FleetEnforcer,
        metrics: FleetMetrics,
    ) -> Result<Self> {
        let instance = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .context("cannot read the boot id")?
                .trim(),
            usage::client_map_id(&clients)?
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the fleet's async runtime")?;
        let budget = config.rate.map(|r| Budget {
            requests: u64::from(r.burst),
            window: r.window(),
        });
        let (stop, stopped) = oneshot::channel();
        let timeout = sync_timeout(config.sync);
        let thread = thread::Builder::new()
            .name("fleet".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Made inside the runtime: the connection manager needs
                    // one. The URL was checked before anything was attached.
                    let store =
                        match FleetStore::new(&config.url, &config.name, instance, budget, timeout)
                        {
                            Ok(store) => store,
                            Err(e) => {
                                warn!("fleet: {e:#}; no fleet sync");
                                return;
                            }
                        };
                    let mut sync = FleetSync {
                        config,
                        store,
                        clients,
                        enforcer,
                        metrics,
                        tracker: UsageTracker::default(),
                        up: None,
                    };
                    sync.run(stopped).await
                })
            })
            .context("cannot start the fleet thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for FleetTask {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Clients and their cumulative request counts.
type Usage = Vec<(IpAddr, u64)>;

struct FleetSync {
    config: FleetConfig,
    store: FleetStore,
    clients: MapSet,
    enforcer: FleetEnforcer,
    metrics: FleetMetrics,
    tracker: UsageTracker,
    /// Whether Redis answered the last sync (None before the first).
    up: Option<bool>,
}

impl FleetSync {
    async fn run(&mut self, mut stopped: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.config.sync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            tokio::select! {
                _ = &mut stopped => break,
                _ = self.once() => {}
            }
            self.metrics
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// One sync; failures are counted and logged once per outage.
    async fn once(&mut self) {
        let (usage, tracked) = match self.walk() {
            Ok(w) => w,
            Err(e) => {
                self.metrics.sync_errors.inc();
                warn!("fleet: cannot read the client map: {e:#}");
                return;
            }
        };
        let local = match self.enforcer.local_changes() {
            Ok(l) => l,
            Err(e) => {
                self.metrics.sync_errors.inc();
                warn!("fleet: cannot read the block list: {e:#}");
                return;
            }
        };
        let out = Outbox {
            usage,
            publish: local.publish.clone(),
            withdraw: local.withdraw.clone(),
        };
        let answer = tokio::time::timeout(sync_timeout(self.config.sync), self.store.sync(&out))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {:?}",
                    sync_timeout(self.config.sync)
                ))
            });
        match answer {
            Ok(verdicts) => {
                self.tracker.sent(&out.usage, &tracked);
                self.enforcer.commit(local);
                self.metrics.clients_synced.inc_by(out.usage.len() as u64);
                self.metrics
                    .blocks_published
                    .inc_by(out.publish.len() as u64);
                self.answered(true);
                match self.enforcer.apply(&verdicts.over, &verdicts.blocks) {
                    Ok(done) => {
                        let m = &self.metrics.blocks_applied;
                        m.with_label_values(&["over_limit"])
                            .inc_by(done.over_limit as u64);
                        m.with_label_values(&["remote"]).inc_by(done.remote as u64);
                        self.metrics
                            .blocks_refused
                            .inc_by((done.refused + verdicts.malformed) as u64);
                    }
                    Err(e) => warn!("fleet: cannot write the fleet's verdicts: {e:#}"),
                }
            }
            Err(e) => {
                self.metrics.sync_errors.inc();
                if self.up != Some(false) {
                    let limit = self
                        .config
                        .fallback
                        .map_or("no fleet limit".to_string(), |(r, b)| {
                            format!("a local limit of {r}/s (burst {b}) per host")
                        });
                    warn!("fleet: Redis does not answer ({e:#}); {limit} until it does");
                }
                self.answered(false);
            }
        }
    }

    /// Walks the client map: the counts that moved since the last sync that
    /// went through, and every client seen.
    fn walk(&self) -> Result<(Usage, HashSet<IpAddr>)> {
        if self.config.rate.is_none() {
            return Ok((Vec::new(), HashSet::new()));
        }
        let clients = self.clients.clients()?;
        let tracked = clients.iter().map(|c| c.addr).collect();
        let usage = self
            .tracker
            .changed(clients.iter().map(|c| (c.addr, c.state.requests)));
        Ok((usage, tracked))
    }

    /// Records whether Redis answered, and switches the local limit when
    /// that changes.
    fn answered(&mut self, up: bool) {
        if self.up == Some(up) {
            return;
        }
        let limit = if up {
            self.config.normal
        } else {
            self.config.fallback
        };
        if let Some((rate, burst)) = limit
            && let Err(e) = self.enforcer.set_request_limit(rate, burst)
        {
            warn!("fleet: cannot set the local limit: {e:#}");
            return;
        }
        if up && self.up.is_some() {
            info!("fleet: Redis answers again; the fleet's limits are in force");
        } else if up {
            info!("fleet: Redis answers; the fleet's limits are in force");
        }
        self.metrics.up.set(i64::from(up));
        self.up = Some(up);
    }
}
