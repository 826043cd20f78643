//! Stage 4, count: per-client state in the LRU client map and per-CPU verdict
//! counters. (Stage 3, enforce, comes between classify and count.)

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use api_guard_common::{
    client::{ClientKey, ClientState},
    counters::{self, Kind, Verdict},
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};

use crate::maps::{CLIENTS, COUNTERS};

/// Adds one to the per-CPU counter of (kind, verdict).
#[inline(always)]
pub fn verdict(kind: Kind, verdict: Verdict) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counters::index(kind, verdict)) {
        // SAFETY: a per-CPU slot is only written by this CPU, and the program is
        // not preempted by itself on one CPU.
        unsafe { *slot += 1 };
    }
}

/// What one packet adds to its client's state.
pub struct Delta {
    pub requests: u64,
    pub connections: u64,
}

#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // Both CPUs may update one client: atomic adds keep the counts exact. The BPF
    // target has no compare-and-swap, so `AtomicU64::fetch_add` is not offered;
    // the intrinsic lowers to BPF's atomic add all the same.
    // SAFETY: the pointer comes from a live map value, aligned to 8 bytes.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Records one packet from `key` in the client map, creating the entry when new.
#[inline(always)]
pub fn client(key: &ClientKey, delta: &Delta) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    for _ in 0..2 {
        if let Some(state) = CLIENTS.get_ptr_mut(key) {
            // SAFETY: the map value lives as long as this program run (RCU).
            let state = unsafe { &mut *state };
            add(&mut state.packets, 1);
            if delta.requests != 0 {
                add(&mut state.requests, delta.requests);
            }
            if delta.connections != 0 {
                add(&mut state.connections, delta.connections);
            }
            state.last_seen_ns = now;
            return;
        }
        let fresh = ClientState {
            requests: delta.requests,
            connections: delta.connections,
            packets: 1,
            last_seen_ns: now,
        };
        // NOEXIST: if the other CPU created the entry meanwhile, loop and add to it
        // instead of overwriting its counts.
        if CLIENTS.insert(key, &fresh, BPF_NOEXIST as u64).is_ok() {
            return;
        }
    }
}
