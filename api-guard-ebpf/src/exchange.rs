//! The ingress half of request/response pairing (`api_guard_common::exchange`):
//! each request start the stream stage lets through is numbered on its
//! connection and pushed, with the segment's arrival time and whether it is a
//! `HEAD`, for the egress program to pop at its response. Only exactly counted
//! request streams are numbered: a connection picked up mid-way never gets an
//! entry, and one whose count turns inexact stops numbering (its later
//! responses are counted unpaired, never paired with the wrong request).

use api_guard_common::{
    conn::ConnKey,
    exchange::{
        Exchange, FIFO_SLOTS, HEAD_BITS, REPLY_SEQ_KNOWN, REQ_INEXACT, RESPONSE_SLOTS,
        ResponseCount, SLOT_HEAD, SLOT_SAMPLED, Slot,
    },
    response::Reply,
    sample::NO_EXCHANGE,
};
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_loop};

use crate::maps::{EXCHANGES, RESPONSES};

/// What the stream stage found in a segment's new bytes, for the push.
#[repr(C)]
pub struct Pushed {
    /// Request starts found by the connection's own framing (not a rescan).
    pub starts: u32,
    /// Bit i: start i (of the first 32) is a `HEAD`.
    pub heads: u32,
    /// Payload offset of the first of them.
    pub first_off: u32,
    /// A start whose method could not be read (cut by the segment's end).
    pub unknown: u32,
    /// The stream had no request before this segment (its entry is made now).
    pub fresh: u32,
    /// The client's acknowledgment number: the server's next byte.
    pub ack: u32,
    /// The number given to the first start, or `NO_EXCHANGE`.
    pub first_index: u32,
    pub _pad: u32,
}

impl Pushed {
    pub const NONE: Pushed = Pushed {
        starts: 0,
        heads: 0,
        first_off: u32::MAX,
        unknown: 0,
        fresh: 0,
        ack: 0,
        first_index: NO_EXCHANGE,
        _pad: 0,
    };
}

/// Adds one to a per-CPU response counter.
#[inline(always)]
pub fn count(c: ResponseCount, n: u64) {
    let i = c as usize;
    // SAFETY: a read of a local. Opaque to LLVM, so it cannot fold a computed
    // counter (a status class) into a negative offset from the block, which the
    // verifier refuses.
    let i = unsafe { core::ptr::read_volatile(&i) };
    if let Some(block) = RESPONSES.get_ptr_mut(0)
        && i < RESPONSE_SLOTS as usize
    {
        // SAFETY: this CPU's block; the index is checked in range.
        unsafe { (*block)[i] += n };
    }
}

/// Numbers and pushes the requests of a segment that was let through.
/// `exact`: the connection's framing after the segment still counts exactly.
#[inline(always)]
pub fn push(key: &ConnKey, p: &mut Pushed, exact: bool, fresh: &mut Exchange) {
    p.first_index = NO_EXCHANGE;
    if p.starts == 0 {
        return;
    }
    if p.fresh != 0 {
        // Built in scratch memory: too large for the stack beside the judge's.
        fresh.head_bits = 0;
        fresh.tail = 0;
        fresh.req_flags = 0;
        fresh.head = 0;
        fresh.reply = Reply::start();
        fresh.reply_seq = p.ack;
        fresh.reply_flags = REPLY_SEQ_KNOWN;
        fresh.write_len = 0;
        // The slots stay as the scratch has them: zeroes (only this copy is
        // ever written here), and read only below `tail`, once written.
        // A new connection (or a reused port): whatever was kept goes.
        if EXCHANGES.insert(key, fresh, 0).is_err() {
            return;
        }
    }
    let Some(ex) = EXCHANGES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value (RCU); ingress writes only its own fields.
    let ex = unsafe { &mut *ex };
    if ex.req_flags & REQ_INEXACT != 0 {
        return;
    }
    if !exact || p.unknown != 0 || p.starts > 32 {
        ex.req_flags |= REQ_INEXACT;
        return;
    }
    let tail = ex.tail;
    // Egress may have popped more since: an older `head` only errs toward
    // "no room".
    let head = ex.head;
    if tail.wrapping_add(p.starts).wrapping_sub(head) > HEAD_BITS {
        // More outstanding than the HEAD bits can tell: stop numbering.
        ex.req_flags |= REQ_INEXACT;
        count(ResponseCount::FifoFull, p.starts as u64);
        return;
    }
    let rounds = p.starts;
    let mut run = PushRun {
        ex: ex as *mut Exchange,
        p: p as *mut Pushed,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        now: unsafe { bpf_ktime_get_ns() },
        tail,
        head,
        full: 0,
    };
    // One request a round, in a callback the verifier checks once.
    // SAFETY: the callback gets `run`, which lives on this frame for the loop.
    unsafe { bpf_loop(rounds, push_one as *mut c_void, (&raw mut run).cast(), 0) };
    if run.full > 0 {
        count(ResponseCount::FifoFull, run.full);
    }
    // SAFETY: the same live map value and scratch entry as before the loop.
    let (ex, p) = unsafe { (&mut *run.ex, &mut *run.p) };
    // After the slots: egress reads a slot only below `tail`.
    ex.tail = tail.wrapping_add(p.starts);
    p.first_index = tail;
}

/// What the push's rounds share (pointers the verifier keeps typed on the stack).
#[repr(C)]
struct PushRun {
    ex: *mut Exchange,
    p: *mut Pushed,
    now: u64,
    tail: u32,
    head: u32,
    full: u64,
}

/// Pushes start `i` of the segment.
extern "C" fn push_one(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `PushRun` that `push` passed to bpf_loop; its
    // pointers are a live map value and this CPU's scratch entry.
    let run = unsafe { &mut *(ctx as *mut PushRun) };
    let (ex, p) = unsafe { (&mut *run.ex, &*run.p) };
    let i = i as u32;
    if i >= 32 {
        return 1;
    }
    let r = run.tail.wrapping_add(i);
    let is_head = (p.heads >> i) & 1 != 0;
    let bit = 1u64 << (r % HEAD_BITS);
    if is_head {
        ex.head_bits |= bit;
    } else {
        ex.head_bits &= !bit;
    }
    if r.wrapping_sub(run.head) >= FIFO_SLOTS as u32 {
        run.full += 1;
        return 0;
    }
    ex.slots[(r as usize) % FIFO_SLOTS] = Slot {
        arrival_ns: run.now,
        index: r,
        flags: if is_head { SLOT_HEAD } else { 0 },
    };
    0
}

/// Marks request `index` on `key` as sampled, so its response is recorded.
#[inline(always)]
pub fn mark_sampled(key: &ConnKey, index: u32) -> bool {
    let Some(ex) = EXCHANGES.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a live map value (RCU); the slot is ingress's.
    let slot = unsafe { &mut (*ex).slots[(index as usize) % FIFO_SLOTS] };
    if slot.index != index {
        return false;
    }
    slot.flags |= SLOT_SAMPLED;
    true
}
