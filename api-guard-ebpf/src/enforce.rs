//! Stage 4, enforce: allow and deny networks, blocks, connection limits and the
//! per-client request limit, decided per packet from the `CONFIG` map.

use api_guard_common::{
    client::{ClientKey, ClientState, Penalty},
    config::{Config, Limit, Take, flags},
    counters::{Event, Verdict},
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::{
    atomic::{self, Tat},
    clock::Clock,
    count::{self, Seen},
    maps::{ALLOW, BLOCKS, CLIENTS, DENY, HEARTBEAT, OPEN_CONNS, OVERRIDES, PENALTIES},
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

/// Whether the client serves a `--block-for` block now.
#[inline(always)]
pub fn is_blocked(state: &ClientState, clock: &mut Clock) -> bool {
    let until = atomic::read(&state.blocked_until_ns);
    until != 0 && until > clock.now()
}

/// The per-client verdict and whether the connection can never be admitted.
pub struct Judged {
    pub verdict: Verdict,
    /// The segment holds more request starts than the burst: reset it.
    pub never: bool,
}

/// The per-client verdict of a client not blocked (the judge asks
/// [`is_blocked`] first, before the stream stage): connection limits for a new
/// connection, then the request limit for the segment's request starts.
#[inline(always)]
pub fn client(
    cfg: &Config,
    key: &ClientKey,
    state: &mut ClientState,
    ev: Seen,
    clock: &mut Clock,
) -> Judged {
    let mut j = Judged {
        verdict: Verdict::Allowed,
        never: false,
    };
    if ev.connection
        && let Some(v) = connection(cfg, key, state, clock)
    {
        j.verdict = v;
        return j;
    }
    if ev.starts > 0 {
        let limit = request_limit(cfg, key);
        if limit.is_set() {
            let now = clock.now();
            let taken = limit.take(&mut Tat(&mut state.request_tat_ns), now, ev.starts as u64);
            if taken != Take::Admitted {
                block(cfg, key, state, now);
                j.verdict = Verdict::RateLimited;
                j.never = taken == Take::Never;
                return j;
            }
            debt(&limit, key, state, &state.request_tat_ns, now);
        }
    }
    j
}

/// The connection limits for a new connection of a client not blocked:
/// `--max-conns`, then `--conn-rate`.
#[inline(always)]
pub fn connection(
    cfg: &Config,
    key: &ClientKey,
    state: &mut ClientState,
    clock: &mut Clock,
) -> Option<Verdict> {
    if cfg.max_conns != 0 && open_conns(key) >= cfg.max_conns {
        return Some(Verdict::ConnLimited);
    }
    if cfg.connections.is_set() {
        let now = clock.now();
        let taken = cfg
            .connections
            .take(&mut Tat(&mut state.conn_tat_ns), now, 1);
        if taken != Take::Admitted {
            block(cfg, key, state, now);
            return Some(Verdict::ConnLimited);
        }
        debt(&cfg.connections, key, state, &state.conn_tat_ns, now);
    }
    None
}

/// Open connections of the client (`OPEN_CONNS`, kept by the sock_ops program).
#[inline(always)]
fn open_conns(key: &ClientKey) -> u64 {
    OPEN_CONNS.get_ptr(key).map_or(0, |n| {
        // SAFETY: a live map value (RCU), read atomically.
        atomic::read(unsafe { &*n })
    })
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
fn block(cfg: &Config, key: &ClientKey, state: &mut ClientState, now: u64) {
    if cfg.block_ns != 0 {
        atomic::write(&mut state.blocked_until_ns, now + cfg.block_ns);
        penalize(key, state);
    }
}

/// An admitted event that left the bucket empty: a debt the client must not
/// shed by being evicted.
#[inline(always)]
fn debt(limit: &Limit, key: &ClientKey, state: &ClientState, tat: &u64, now: u64) {
    if atomic::read(tat) + limit.interval_ns > now + limit.burst_ns {
        penalize(key, state);
    }
}

/// Copies the client's block and bucket clocks to `PENALTIES`.
#[inline(always)]
fn penalize(key: &ClientKey, state: &ClientState) {
    let p = Penalty {
        blocked_until_ns: atomic::read(&state.blocked_until_ns),
        request_tat_ns: atomic::read(&state.request_tat_ns),
        conn_tat_ns: atomic::read(&state.conn_tat_ns),
    };
    if PENALTIES.insert(key, &p, 0).is_err() {
        count::event(Event::PenaltiesFull);
    }
}

/// A new client entry starts from what `PENALTIES` kept of an evicted one.
#[inline(always)]
pub fn restored(key: &ClientKey, clock: &mut Clock) -> ClientState {
    let mut state = ClientState::default();
    // SAFETY: a live map value (RCU), copied out at once.
    if let Some(p) = PENALTIES.get_ptr(key).map(|p| unsafe { *p }) {
        if p.in_force(clock.now()) {
            state.blocked_until_ns = p.blocked_until_ns;
            state.request_tat_ns = p.request_tat_ns;
            state.conn_tat_ns = p.conn_tat_ns;
        } else {
            let _ = PENALTIES.remove(key);
        }
    }
    state
}

/// The verdict for a packet whose TCP header cannot be read (a fragment): dropped
/// if its client is blocked or has no request token left, else passed. Nothing
/// is charged or created for it.
#[inline(always)]
pub fn opaque(cfg: &Config, key: &ClientKey, clock: &mut Clock) -> Option<Verdict> {
    let now = clock.now();
    let p = match CLIENTS.get_ptr(key) {
        // SAFETY: a live map value (RCU), read field by field.
        Some(s) => unsafe {
            Penalty {
                blocked_until_ns: atomic::read(&(*s).blocked_until_ns),
                request_tat_ns: atomic::read(&(*s).request_tat_ns),
                conn_tat_ns: 0,
            }
        },
        // SAFETY: as above, copied out at once.
        None => unsafe { *PENALTIES.get_ptr(key)? },
    };
    if p.blocked_until_ns > now {
        return Some(Verdict::Blocked);
    }
    let limit = request_limit(cfg, key);
    if limit.is_set() && p.request_tat_ns + limit.interval_ns > now + limit.burst_ns {
        return Some(Verdict::RateLimited);
    }
    None
}

/// Whether the client's request bucket would refuse a request now (a peek:
/// nothing is taken). A new connection to a TLS port from such a client would
/// carry a request that cannot be unread.
#[inline(always)]
pub fn bucket_empty(cfg: &Config, key: &ClientKey, state: &ClientState, clock: &mut Clock) -> bool {
    let limit = request_limit(cfg, key);
    limit.is_set()
        && atomic::read(&state.request_tat_ns) + limit.interval_ns > clock.now() + limit.burst_ns
}
