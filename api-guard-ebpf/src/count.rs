//! Stage 5, count: per-client state in the LRU client map and per-CPU verdict
//! counters.

use api_guard_common::{
    client::{ClientKey, ClientState},
    counters::{self, Event, Kind, Verdict},
};
use aya_ebpf::bindings::BPF_NOEXIST;

use crate::{
    atomic,
    clock::Clock,
    maps::{CLIENTS, COUNTERS, EVENTS},
};

/// The counter slot of (kind, verdict), checked where the verifier sees it:
/// LLVM takes the enum's range as proved and drops a bounds check, while a
/// path it thinks unreachable (an `Option<Verdict>`'s None merged by a select)
/// can reach the verifier with any value. A volatile read hides the range.
#[inline(always)]
fn slot(block: &mut counters::CounterBlock, kind: Kind, verdict: Verdict) -> Option<&mut u64> {
    let i = counters::index(kind, verdict);
    // SAFETY: a read of a local.
    let i = unsafe { core::ptr::read_volatile(&i) } as usize;
    block.get_mut(i)
}

/// Adds one to the per-CPU counter of (kind, verdict).
#[inline(always)]
pub fn verdict(kind: Kind, verdict: Verdict) {
    if let Some(block) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: this CPU's block, written only by this CPU, and the program is
        // not preempted by itself on one CPU.
        if let Some(c) = slot(unsafe { &mut *block }, kind, verdict) {
            *c += 1;
        }
    }
}

/// Adds one to a per-CPU event counter.
#[inline(always)]
pub fn event(event: Event) {
    if let Some(block) = EVENTS.get_ptr_mut(0) {
        // SAFETY: as in `verdict`.
        unsafe { (*block)[event as usize] += 1 };
    }
}

/// What one packet was seen to be: the kinds its verdict is counted under.
#[derive(Clone, Copy)]
pub struct Seen {
    /// Request starts it carries (each counted and charged).
    pub starts: u32,
    pub connection: bool,
    /// The client is one a trusted peer's PROXY header named (proxy.rs), not
    /// the packet's source.
    pub named: bool,
}

/// Counts `verdict` for the packet and for the request or connection it carries.
#[inline(always)]
pub fn verdicts(ev: Seen, v: Verdict) {
    let Some(block) = COUNTERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `verdict`: one lookup for up to three slots.
    let block = unsafe { &mut *block };
    if let Some(c) = slot(block, Kind::Packets, v) {
        *c += 1;
    }
    if ev.starts > 0
        && let Some(c) = slot(block, Kind::Requests, v)
    {
        *c += ev.starts as u64;
    }
    if ev.connection
        && let Some(c) = slot(block, Kind::Connections, v)
    {
        *c += 1;
    }
}

/// The client's state, created when new (from what `PENALTIES` kept, if it was
/// evicted while judged). None only if the map refuses both the insert and the
/// lookup.
#[inline(always)]
pub fn state(key: &ClientKey, clock: &mut Clock) -> Option<&'static mut ClientState> {
    if let Some(state) = CLIENTS.get_ptr_mut(key) {
        // SAFETY: the map value lives for this program run (RCU).
        return Some(unsafe { &mut *state });
    }
    // NOEXIST: if the other CPU created the entry meanwhile, use its entry instead
    // of overwriting its counts.
    if CLIENTS
        .insert(
            key,
            &crate::enforce::restored(key, clock),
            BPF_NOEXIST as u64,
        )
        .is_ok()
    {
        event(Event::ClientsCreated);
    }
    // SAFETY: as above.
    CLIENTS.get_ptr_mut(key).map(|s| unsafe { &mut *s })
}

/// Records one packet in the client's state.
#[inline(always)]
pub fn client(state: &mut ClientState, ev: Seen, clock: &mut Clock) {
    // Packets are counted with a plain add: a lost update when both CPUs hit one
    // client at once costs less than an atomic on every packet. Requests and
    // connections, which limits and reports rely on, stay exact.
    state.packets += 1;
    if ev.starts > 0 {
        atomic::add(&mut state.requests, ev.starts as u64);
    }
    if ev.connection {
        atomic::add(&mut state.connections, 1);
    }
    // The last request or connection: a bare ACK does not read the clock.
    if ev.starts > 0 || ev.connection {
        state.last_seen_ns = clock.now();
    }
}

/// Counts `n` requests under `v` (the TLS plaintext's, which no packet carries).
#[inline(always)]
pub fn requests(n: u32, v: Verdict) {
    if let Some(block) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: as in `verdict`.
        if let Some(c) = slot(unsafe { &mut *block }, Kind::Requests, v) {
            *c += n as u64;
        }
    }
}
