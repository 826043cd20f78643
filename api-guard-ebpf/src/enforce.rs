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
    count::Seen,
    maps::{ALLOW, DENY, OVERRIDES},
};

/// The verdict of the allow and deny lists, when one of them matches.
#[inline(always)]
pub fn lists(cfg: &Config, key: &ClientKey) -> Option<Verdict> {
    if cfg.flags & (flags::HAS_ALLOW | flags::HAS_DENY) == 0 {
        return None;
    }
    let lpm = Key::new(128, key.addr);
    if cfg.has(flags::HAS_ALLOW) && ALLOW.get(&lpm).is_some() {
        return Some(Verdict::Allowed);
    }
    if cfg.has(flags::HAS_DENY) && DENY.get(&lpm).is_some() {
        return Some(Verdict::Denied);
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
    now: u64,
) -> Verdict {
    if atomic::read(&state.blocked_until_ns) > now {
        return Verdict::Blocked;
    }
    if ev.connection {
        if cfg.max_conns != 0 && atomic::read(&state.open_conns) >= cfg.max_conns {
            return Verdict::ConnLimited;
        }
        if cfg.connections.is_set() && !take(&mut state.conn_tat_ns, &cfg.connections, now) {
            block(cfg, state, now);
            return Verdict::ConnLimited;
        }
    }
    if ev.request {
        let limit = request_limit(cfg, key);
        if limit.is_set() && !take(&mut state.request_tat_ns, &limit, now) {
            block(cfg, state, now);
            return Verdict::RateLimited;
        }
    }
    Verdict::Allowed
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
    if atomic::read(tat) < now {
        // Idle since the last event: the bucket is full again.
        atomic::write(tat, now);
    }
    atomic::add(tat, limit.interval_ns);
    if atomic::read(tat) > now + limit.burst_ns {
        atomic::sub(tat, limit.interval_ns);
        return false;
    }
    true
}
