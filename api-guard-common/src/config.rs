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

    /// Events the burst holds (at least 1 for a set limit).
    #[inline(always)]
    pub const fn burst_events(&self) -> u64 {
        if self.interval_ns == 0 {
            return u64::MAX;
        }
        let n = self.burst_ns / self.interval_ns;
        if n == 0 { 1 } else { n }
    }

    /// Takes `n` events (the request starts of one segment) from the bucket in
    /// `cell`, safe against other CPUs taking at once. Admitted as soon as one
    /// token is free, and charged all `n` (a debt the next events wait out), so
    /// what is served stays within burst + rate × T + one segment's worth; a
    /// segment of more starts than the burst is [`Take::Never`] admitted.
    #[inline(always)]
    pub fn take<C: TatCell>(&self, cell: &mut C, now: u64, n: u64) -> Take {
        if n > self.burst_events() {
            return Take::Never;
        }
        let mut op = TakeOp::new(now, n);
        // A load and a compare-and-swap per round.
        for _ in 0..(2 * CAS_ROUNDS) {
            if let Some(t) = op.step(self, cell) {
                return t;
            }
        }
        Take::Refused
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

/// A GCRA clock shared by CPUs: read and compare-and-swap. The kernel's is a map
/// value updated with BPF atomics; the model test's interleaves steps by hand.
pub trait TatCell {
    fn load(&mut self) -> u64;
    /// Replaces `current` with `new` if the cell still holds `current`.
    fn cas(&mut self, current: u64, new: u64) -> bool;
}

/// The outcome of [`Limit::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    Admitted,
    /// No token now; the bucket is unchanged.
    Refused,
    /// More events at once than the burst: no wait would ever admit them.
    Never,
}

/// Compare-and-swap rounds a take tries before it refuses (bounded for the
/// verifier). A round is lost only to another CPU's admitted event, so a refusal
/// after losing them all errs low by events that were admitted.
pub const CAS_ROUNDS: u32 = 4;

/// One take of `n` events, as a machine of single steps (a load, or a
/// compare-and-swap), so a model can interleave two CPUs' steps in every order.
/// The kernel runs it to the end at once ([`Limit::take`]).
#[derive(Clone, Copy, Debug)]
pub struct TakeOp {
    now: u64,
    n: u64,
    cur: u64,
    next: u64,
    round: u32,
    loaded: bool,
}

impl TakeOp {
    #[inline(always)]
    pub const fn new(now: u64, n: u64) -> Self {
        Self {
            now,
            n,
            cur: 0,
            next: 0,
            round: 0,
            loaded: false,
        }
    }

    /// One step; `Some` once decided.
    #[inline(always)]
    pub fn step<C: TatCell>(&mut self, limit: &Limit, cell: &mut C) -> Option<Take> {
        if !self.loaded {
            let cur = cell.load();
            // Idle since the last event: the bucket is full again, from now.
            let start = if cur < self.now { self.now } else { cur };
            // The debt rule: one free token admits the whole segment.
            if start + limit.interval_ns > self.now + limit.burst_ns {
                return Some(Take::Refused);
            }
            self.cur = cur;
            self.next = start + self.n * limit.interval_ns;
            self.loaded = true;
            return None;
        }
        if cell.cas(self.cur, self.next) {
            return Some(Take::Admitted);
        }
        self.loaded = false;
        self.round += 1;
        if self.round >= CAS_ROUNDS {
            return Some(Take::Refused);
        }
        None
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
    /// `--trusted-proxy` networks exist: their connections' PROXY headers name
    /// the client.
    pub const HAS_TRUSTED_PROXIES: u32 = 1 << 6;
    /// `--proxy-protocol required`: a trusted peer's connection without a
    /// header is reset.
    pub const PROXY_REQUIRED: u32 = 1 << 7;
    /// Key or route limits exist (`KEY_POLICY`): the key stage runs.
    pub const KEY_LIMITS: u32 = 1 << 8;
    /// `--sample-wakeup batched`: the sample ring wakes the daemon only once
    /// `sample::WAKE_AT_BYTES` wait; the daemon also reads on a timer.
    pub const SAMPLE_WAKEUP_BATCHED: u32 = 1 << 9;
    /// `--trusted-hops`: a trusted peer's requests are charged to the client
    /// its forwarded list names (`Config::forwarded_hops` from the right).
    pub const FORWARDED: u32 = 1 << 10;
    /// The list is the `Forwarded` header's (RFC 7239), not `X-Forwarded-For`'s.
    pub const FORWARDED_RFC7239: u32 = 1 << 11;
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
    /// `--trusted-hops`: the client is this many elements from the right of a
    /// trusted peer's forwarded list (1..=`forwarded::MAX_HOPS`; read only
    /// under `flags::FORWARDED`).
    pub forwarded_hops: u32,
    pub _pad: u32,
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
            forwarded_hops: 0,
            _pad: 0,
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

    /// A plain cell: the model's memory, one step at a time.
    #[derive(Clone, Copy)]
    struct Plain(u64);

    impl TatCell for Plain {
        fn load(&mut self) -> u64 {
            self.0
        }
        fn cas(&mut self, current: u64, new: u64) -> bool {
            if self.0 == current {
                self.0 = new;
                true
            } else {
                false
            }
        }
    }

    /// Runs `ops` on one cell in every interleaving of their steps and calls
    /// `check` with the final cell and each op's outcome.
    fn interleavings(
        limit: &Limit,
        cell: Plain,
        ops: &mut [(TakeOp, Option<Take>)],
        check: &mut impl FnMut(u64, &[Option<Take>]),
    ) {
        let mut any = false;
        for i in 0..ops.len() {
            if ops[i].1.is_some() {
                continue;
            }
            any = true;
            let (mut c, saved) = (cell, ops[i]);
            ops[i].1 = ops[i].0.step(limit, &mut c);
            interleavings(limit, c, ops, check);
            ops[i] = saved;
        }
        if !any {
            let outcomes: std::vec::Vec<_> = ops.iter().map(|o| o.1).collect();
            check(cell.0, &outcomes);
        }
    }

    extern crate std;

    #[test]
    fn two_cpus_on_an_idle_client_are_both_admitted_and_the_clock_stays_near_now() {
        let limit = Limit::per_second(5, 5);
        let iv = limit.interval_ns;
        // Idle for a long time: the old add-based update moved the clock about one
        // idle period into the future when both CPUs saw the idle bucket.
        for idle_tat in [0, 1_000, 3_000_000_000] {
            for skew in [0, 1, iv / 2, iv, 3 * iv] {
                let (now1, now2) = (10_000_000_000, 10_000_000_000 + skew);
                let mut ops = [(TakeOp::new(now1, 1), None), (TakeOp::new(now2, 1), None)];
                let mut seen = 0;
                interleavings(&limit, Plain(idle_tat), &mut ops, &mut |tat, out| {
                    seen += 1;
                    assert!(
                        out.iter().all(|o| *o == Some(Take::Admitted)),
                        "refused on an idle bucket: {out:?} (skew {skew})"
                    );
                    assert!(tat <= now2 + 2 * iv, "clock {tat} ran ahead of {now2}");
                    assert!(tat >= now1 + 2 * iv, "an admitted event was not charged");
                });
                assert!(seen > 1, "the model explored one order only");
            }
        }
    }

    #[test]
    fn no_interleaving_admits_more_than_the_tokens_in_the_bucket() {
        // Three CPUs at one instant against a bucket with room for `free` events.
        let limit = Limit::per_second(10, 2);
        let iv = limit.interval_ns;
        let now = 50 * iv;
        for free in 0..=2u64 {
            let tat = now + limit.burst_ns - free * iv;
            let mut ops = [
                (TakeOp::new(now, 1), None),
                (TakeOp::new(now, 1), None),
                (TakeOp::new(now, 1), None),
            ];
            interleavings(&limit, Plain(tat), &mut ops, &mut |end, out| {
                let admitted = out.iter().filter(|o| **o == Some(Take::Admitted)).count() as u64;
                assert_eq!(admitted, free, "{out:?}");
                assert_eq!(end, tat.max(now) + admitted * iv);
            });
        }
    }

    #[test]
    fn a_segment_is_admitted_on_one_token_and_pays_for_all_its_starts() {
        let limit = Limit::per_second(5, 5);
        let iv = limit.interval_ns;
        let now = 100 * iv;
        let mut cell = Plain(0);
        assert_eq!(limit.take(&mut cell, now, 5), Take::Admitted);
        assert_eq!(cell.0, now + 5 * iv);
        // Empty now: refused until one interval has passed, then admitted again.
        assert_eq!(limit.take(&mut cell, now, 1), Take::Refused);
        assert_eq!(limit.take(&mut cell, now + iv, 3), Take::Admitted);
        // More starts than the burst in one segment can never be admitted.
        assert_eq!(limit.take(&mut Plain(0), now, 6), Take::Never);
    }
}
