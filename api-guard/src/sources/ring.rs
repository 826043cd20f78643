//! The one ring-buffer reader: waits for the kernel's records and hands them,
//! decoded, to the caller, a bounded batch at a time.

use std::io;

use anyhow::Result;
use tokio::io::unix::AsyncFd;

use super::{DecodeError, Event, Sources};
use crate::kernel::ring::SampleRing;

pub struct RingReader {
    ring: AsyncFd<SampleRing>,
    sources: Sources,
}

impl RingReader {
    pub fn new(ring: SampleRing, sources: Sources) -> Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and the same
        // for as long as the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow::anyhow!("cannot watch the sample ring buffer: {e}"))?;
        Ok(Self { ring, sources })
    }

    /// Waits for records (a wake-up, or at most [`QUIET_WAIT`]: under
    /// `--sample-wakeup batched` the programs commit records without waking
    /// the reader until enough wait),
    /// then hands up to `max` of them to `each`; returns how many. Bounded, so
    /// that a producer faster than the pipeline cannot starve the caller's
    /// other work. Cancel-safe: it only waits before it takes anything.
    pub async fn read(
        &mut self,
        max: usize,
        each: impl FnMut(Result<Event, DecodeError>),
    ) -> io::Result<usize> {
        let Ok(guard) = tokio::time::timeout(QUIET_WAIT, self.ring.readable_mut()).await else {
            return Ok(self.drain(max, each));
        };
        let mut guard = guard?;
        let n = drain(guard.get_inner_mut(), &self.sources, max, each);
        if n < max {
            guard.clear_ready();
        }
        Ok(n)
    }

    /// What is there now, up to `max`, without waiting.
    pub fn drain(&mut self, max: usize, each: impl FnMut(Result<Event, DecodeError>)) -> usize {
        drain(self.ring.get_mut(), &self.sources, max, each)
    }
}

/// How long records committed without a wake-up wait at most.
pub const QUIET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

fn drain(
    ring: &mut SampleRing,
    sources: &Sources,
    max: usize,
    mut each: impl FnMut(Result<Event, DecodeError>),
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(record) = ring.next() else { break };
        each(sources.decode(&record));
        n += 1;
    }
    n
}
