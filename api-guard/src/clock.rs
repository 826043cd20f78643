//! The kernel stamps events with CLOCK_MONOTONIC (`bpf_ktime_get_ns`); logs want
//! wall-clock time. One offset, read at start, converts between them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the kernel programs' clock.
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC)
}

/// Converts kernel timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn new() -> Self {
        let real = now(libc::CLOCK_REALTIME) as i128;
        Self {
            offset_ns: real - monotonic_ns() as i128,
        }
    }

    pub fn at(&self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.offset_ns).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monotonic_stamp_of_now_is_now() {
        let wall = WallClock::new();
        let t = wall.at(monotonic_ns());
        let drift = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(drift < Duration::from_secs(1), "{drift:?}");
    }
}
