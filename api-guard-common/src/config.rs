//! The policy the daemon pushes into the `CONFIG` map. Programs read it on every
//! packet, so a change takes effect on the next packet without a reload.

/// A GCRA limit (the token bucket as a "theoretical arrival time"): one event per
/// `interval_ns` on average, up to `burst_ns / interval_ns` at once.
/// `interval_ns == 0` means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    pub interval_ns: u64,
    pub burst_ns: u64,
}

impl Limit {
    pub const NONE: Limit = Limit {
        interval_ns: 0,
        burst_ns: 0,
    };

    /// `rate` events per second with bursts of `burst` (both at least 1).
    pub const fn per_second(rate: u64, burst: u64) -> Limit {
        let interval_ns = 1_000_000_000 / rate;
        Limit {
            interval_ns,
            burst_ns: interval_ns * burst,
        }
    }

    #[inline(always)]
    pub const fn is_set(&self) -> bool {
        self.interval_ns != 0
    }

    /// The GCRA decision on plain values: given the client's theoretical arrival
    /// time `tat` and the time `now`, the new `tat` if the event is admitted.
    /// (The kernel applies the same rule with atomic adds, see enforce.rs.)
    #[inline(always)]
    pub const fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let start = if tat < now { now } else { tat };
        let next = start + self.interval_ns;
        if next > now + self.burst_ns {
            None
        } else {
            Some(next)
        }
    }
}

/// `Config::flags` bits.
pub mod flags {
    /// Compute and count every decision, drop nothing.
    pub const DRY_RUN: u32 = 1 << 0;
    /// Turn an over-limit request into a TCP RST toward the server.
    pub const ON_LIMIT_RESET: u32 = 1 << 1;
    /// The allow list has entries (skip the lookup when empty).
    pub const HAS_ALLOW: u32 = 1 << 2;
    /// The deny list has entries.
    pub const HAS_DENY: u32 = 1 << 3;
    /// Per-network limit overrides exist.
    pub const HAS_OVERRIDES: u32 = 1 << 4;
    /// The block list (operator and auth blocks) has entries.
    pub const HAS_BLOCKS: u32 = 1 << 5;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Requests per client.
    pub requests: Limit,
    /// New connections (SYNs) per client.
    pub connections: Limit,
    /// How long a client that went over a limit stays blocked (0: not blocked).
    pub block_ns: u64,
    /// Concurrent established connections per client (0: no limit).
    pub max_conns: u64,
    /// The network namespace whose sockets the sock_ops program counts (its
    /// cookie); sockets of other namespaces are ignored.
    pub netns_cookie: u64,
    /// `--fail-mode open`: once the daemon's heartbeat (the `HEARTBEAT` map) is
    /// older than this, nothing is dropped (counted `failed_open`). 0: closed,
    /// the programs keep enforcing without a daemon.
    pub heartbeat_timeout_ns: u64,
    /// IPv6 clients are bucketed by this prefix length (1..=128).
    pub ipv6_prefix: u32,
    /// `flags::*` bits.
    pub flags: u32,
    /// Request starts are sampled when `bpf_get_prandom_u32() < sample_below`;
    /// `u32::MAX` samples all, 0 none.
    pub sample_below: u32,
    /// Payload bytes captured per sample (at most `sample::MAX_CAPTURE`).
    pub capture_bytes: u32,
}

/// IPv6 clients are bucketed by /64 unless told otherwise.
pub const DEFAULT_IPV6_PREFIX: u32 = 64;

impl Config {
    /// No limits, no lists: watch and count only.
    pub const fn unlimited() -> Config {
        Config {
            requests: Limit::NONE,
            connections: Limit::NONE,
            block_ns: 0,
            max_conns: 0,
            netns_cookie: 0,
            heartbeat_timeout_ns: 0,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            flags: 0,
            sample_below: 0,
            capture_bytes: 0,
        }
    }

    #[inline(always)]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits events at `times` and returns how many got through.
    fn admitted(limit: Limit, times: impl IntoIterator<Item = u64>) -> u64 {
        let mut tat = 0;
        let mut n = 0;
        for now in times {
            if let Some(next) = limit.admit(tat, now) {
                tat = next;
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limit = Limit::per_second(10, 5);
        let start = 1_000_000_000;
        // 100 events at one instant: the burst.
        assert_eq!(admitted(limit, core::iter::repeat_n(start, 100)), 5);
        // A flood every millisecond for 2 s (0 ms to 2000 ms): burst + rate × T.
        assert_eq!(
            admitted(limit, (0..=2000).map(|ms| start + ms * 1_000_000)),
            5 + 20
        );
    }

    #[test]
    fn an_idle_client_gets_its_burst_back() {
        let limit = Limit::per_second(1, 3);
        let t0 = 5_000_000_000;
        let mut times: [u64; 8] = [t0; 8];
        for t in times.iter_mut().skip(4) {
            *t = t0 + 10_000_000_000;
        }
        assert_eq!(admitted(limit, times), 6);
    }
}
