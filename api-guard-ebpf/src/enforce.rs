//! Stage 3, enforce: allow and deny networks, blocks, connection limits and the
//! per-client request limit, decided per packet from the `CONFIG` map.

use api_guard_common::{
    client::{ClientKey, ClientState},
    config::{Config, Limit, flags},
    counters::Verdict,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    atomic,
    clock::Clock,
    count::Seen,
    maps::{ALLOW, BLOCKS, DENY, HEARTBEAT, OVERRIDES},
};

/// Why a packet the policy would drop is let through, if it is: `--dry-run`, or
/// `--fail-mode open` with the daemon's heartbeat older than its timeout. Asked
/// only for packets to be dropped, so the allowed path never reads the heartbeat.
#[inline(always)]
pub fn released(cfg: &Config, clock: &mut Clock) -> Option<Verdict> {
    if cfg.has(flags::DRY_RUN) {
        return Some(Verdict::WouldDrop);
    }
    if cfg.heartbeat_timeout_ns != 0 {
        // No heartbeat at all counts as lost: the daemon beats before it attaches.
        let last = HEARTBEAT.get(0).map_or(0, |t| atomic::read(t));
        if clock.now().saturating_sub(last) > cfg.heartbeat_timeout_ns {
            return Some(Verdict::FailedOpen);
        }
    }
    None
}

/// The verdict of the network lists, when one matches: allow, then deny, then
/// operator and auth blocks.
#[inline(always)]
pub fn lists(cfg: &Config, key: &ClientKey, clock: &mut Clock) -> Option<Verdict> {
    if cfg.flags & (flags::HAS_ALLOW | flags::HAS_DENY | flags::HAS_BLOCKS) == 0 {
        return None;
    }
    let lpm = Key::new(128, key.addr);
    if cfg.has(flags::HAS_ALLOW) && ALLOW.get(&lpm).is_some() {
        return Some(Verdict::Allowed);
    }
    if cfg.has(flags::HAS_DENY) && DENY.get(&lpm).is_some() {
        return Some(Verdict::Denied);
    }
    if cfg.has(flags::HAS_BLOCKS)
        && let Some(until) = BLOCKS.get(&lpm)
        && *until > clock.now()
    {
        return Some(Verdict::Blocked);
    }
    None
}

/// The per-client verdict: a block in force, then connection limits for a new
/// connection, then the request limit for a request start.
#[inline(always)]
pub fn client(
    cfg: &Config,
    key: &ClientKey,
    state: &mut ClientState,
    ev: Seen,
    clock: &mut Clock,
) -> Verdict {
    let blocked_until = atomic::read(&state.blocked_until_ns);
    if blocked_until != 0 && blocked_until > clock.now() {
        return Verdict::Blocked;
    }
    if ev.connection {
        if cfg.max_conns != 0 && open_conns(state) >= cfg.max_conns {
            return Verdict::ConnLimited;
        }
        if cfg.connections.is_set() && !take(&mut state.conn_tat_ns, &cfg.connections, clock.now())
        {
            block(cfg, state, clock.now());
            return Verdict::ConnLimited;
        }
    }
    if ev.request {
        let limit = request_limit(cfg, key);
        if limit.is_set() && !take(&mut state.request_tat_ns, &limit, clock.now()) {
            block(cfg, state, clock.now());
            return Verdict::RateLimited;
        }
    }
    Verdict::Allowed
}

/// Open connections, read defensively: a close racing another close (or one seen
/// after the client was evicted and created again) can take the count below zero,
/// which wraps; that reads as none open rather than as a client at its limit.
#[inline(always)]
fn open_conns(state: &ClientState) -> u64 {
    let n = atomic::read(&state.open_conns);
    if n > u64::MAX / 2 { 0 } else { n }
}

/// The request limit for this client: the most specific override, else the default.
#[inline(always)]
fn request_limit(cfg: &Config, key: &ClientKey) -> Limit {
    if cfg.has(flags::HAS_OVERRIDES)
        && let Some(limit) = OVERRIDES.get(&Key::new(128, key.addr))
    {
        return *limit;
    }
    cfg.requests
}

#[inline(always)]
fn block(cfg: &Config, state: &mut ClientState, now: u64) {
    if cfg.block_ns != 0 {
        atomic::write(&mut state.blocked_until_ns, now + cfg.block_ns);
    }
}

/// GCRA with atomic adds (see `Limit::admit` for the rule on plain values):
/// reserve one interval, then look at where the reservations stand. Both CPUs
/// reserve before they look, so under contention both may see the other's
/// reservation and refuse: the limit can err low by an event, never high, and the
/// long-run rate stays exact because only admitted events keep their interval.
#[inline(always)]
fn take(tat: &mut u64, limit: &Limit, now: u64) -> bool {
    let cur = atomic::read(tat);
    if cur < now {
        // Idle since the last event: the bucket is full again. Move the clock up
        // with an add, not a store, so a reservation the other CPU made meanwhile
        // is kept (two CPUs both adding errs low, never high).
        atomic::add(tat, now - cur);
    }
    atomic::add(tat, limit.interval_ns);
    if atomic::read(tat) > now + limit.burst_ns {
        atomic::sub(tat, limit.interval_ns);
        return false;
    }
    true
}
