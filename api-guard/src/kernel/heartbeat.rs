//! The heartbeat `--fail-mode open` watches: a thread of its own writing the
//! time into `HEARTBEAT` through a map handle of its own, so that no scrape,
//! client-map walk or sample burst can delay it. It beats only while the
//! daemon's event loop turns (its [`Pulse`]): a daemon whose loop is stuck
//! stops beating, and the kernel fails open once the beat is
//! `--heartbeat-timeout` old.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData};

use crate::{clock::monotonic_ns, periodic::Periodic};

/// When the daemon's event loop last turned (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug)]
pub struct Pulse(Arc<AtomicU64>);

impl Pulse {
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(monotonic_ns())))
    }

    /// The loop turned now.
    pub fn turn(&self) {
        self.0.store(monotonic_ns(), Ordering::Relaxed);
    }

    fn age(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

impl Default for Pulse {
    fn default() -> Self {
        Self::new()
    }
}

/// The beating thread; it stops when this drops.
pub struct Heartbeat {
    _thread: Periodic,
}

impl Heartbeat {
    /// Beats into `map` (a handle to `HEARTBEAT` of its own) every `every`,
    /// while `pulse` is no older than `stall`. Beats once before returning.
    pub fn start(map: Map, every: Duration, pulse: Pulse, stall: Duration) -> Result<Self> {
        let mut beat: Array<MapData, u64> =
            Array::try_from(map).context("map HEARTBEAT is not an array")?;
        beat.set(0, monotonic_ns(), 0)
            .context("cannot write the heartbeat")?;
        let mut stuck = false;
        let thread = Periodic::start("heartbeat", every, move || {
            let now = monotonic_ns();
            if pulse.age(now) > stall {
                if !stuck {
                    tracing::warn!(
                        "the event loop has not turned for {:?}: no heartbeat until it does",
                        pulse.age(now)
                    );
                }
                stuck = true;
                return;
            }
            stuck = false;
            if let Err(e) = beat.set(0, now, 0) {
                tracing::warn!("cannot write the heartbeat: {e}");
            }
        })?;
        Ok(Self { _thread: thread })
    }
}
