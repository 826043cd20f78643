//! The key stage (`--key-header`, `--key-rate`, `--route-limit`): a program
//! of its own, tail-called by a judge that let a segment through, so the
//! judges' verification is unchanged. It reads the same new bytes the stream
//! stage framed, with the same framing (from `STREAM_SCRATCH`), byte by byte,
//! with the key and route parser of `api_guard_common::keys` whose place is
//! kept per connection in `KEY_CONNS`; it charges key and route buckets in
//! `LIMIT_BUCKETS` (keyed by a keyed hash, never the key). Its state is kept
//! only if the segment goes through ([`commit`], with the stream's), so a
//! dropped segment's retransmission is parsed and charged again.

use core::ffi::c_void;

use api_guard_common::{
    client::ClientKey,
    config::Take,
    conn::ConnKey,
    counters::Verdict,
    keys::{BUCKET_ROUTE_CLIENT, BUCKET_ROUTE_KEY, BucketKey, Charge, KeyParse},
    stream::{Framing, MODE_BODY, MODE_HEAD},
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};

use crate::{
    atomic::Tat,
    clock::Clock,
    count::Seen,
    maps::{CONNS, KEY_CONNS, KEY_POLICY, KEY_SCRATCH, KEY_SECRET, LIMIT_BUCKETS, STREAM_SCRATCH},
};

/// What the judge hands the key stage beside skb->cb, and the stage's own
/// working state (per CPU).
#[repr(C)]
pub struct KeyScratch {
    /// The judge's accounting and what it saw (to finish as it would have).
    pub starts: u32,
    pub first_off: u32,
    pub keep: u32,
    pub seen_starts: u32,
    pub connection: u32,
    pub named: u32,
    /// The client's bucketed address (its route buckets).
    pub client: ClientKey,
    /// The parser while a scan runs, and what it decided.
    parse: KeyParse,
    framing: Framing,
    pos: u32,
    end: u32,
    base: u32,
    word_at: u32,
    word: [u8; 8],
    /// `Verdict::KeyLimited` or `RouteLimited` once a charge was refused (0:
    /// none); no later charge of the segment is taken.
    limited: u32,
    /// Requests refused in the segment.
    refused: u32,
    /// The request being read was counted as refused (a request pays up to
    /// two charges: its key's at the value, its client's at the head's end).
    head_refused: u32,
    /// `parse` is this segment's (it had new bytes): only then is it kept.
    parsed: u32,
}

/// Hands the judge's decision to the key stage (before its tail call).
#[inline(always)]
pub fn hand(client: &ClientKey, ev: Seen, parts: (u32, u32, u32)) {
    let Some(ks) = KEY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let ks = unsafe { &mut *ks };
    ks.starts = parts.0;
    ks.first_off = parts.1;
    ks.keep = parts.2;
    ks.seen_starts = ev.starts;
    ks.connection = ev.connection as u32;
    ks.named = ev.named as u32;
    ks.client = *client;
}

/// What the judge handed over.
pub struct Handed {
    pub ev: Seen,
    pub parts: (u32, u32, u32),
}

#[inline(always)]
pub fn handed() -> Option<Handed> {
    // SAFETY: this CPU's scratch entry, filled by the judge in this run.
    let ks = unsafe { &*KEY_SCRATCH.get_ptr(0)? };
    Some(Handed {
        ev: Seen {
            starts: ks.seen_starts,
            connection: ks.connection != 0,
            named: ks.named != 0,
        },
        parts: (ks.starts, ks.first_off, ks.keep),
    })
}

/// Parses the segment's new bytes; returns the verdict (`None`: all charges
/// admitted) and the requests refused.
#[inline(always)]
pub fn judge(ctx: &TcContext, payload_off: usize) -> Option<(Verdict, u32)> {
    // SAFETY: this CPU's scratch entries, filled in this run.
    let sc = unsafe { &*STREAM_SCRATCH.get_ptr(0)? };
    let ks = KEY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: as above.
    let k = unsafe { &mut *ks };
    k.limited = 0;
    k.refused = 0;
    k.parsed = 0;
    k.head_refused = 0;
    // No byte of another run stays here (a key's hash state).
    k.parse = KeyParse::IDLE;
    if sc.main_to <= sc.main_from {
        // No new bytes (a SYN, an ACK, a retransmission): nothing to keep.
        return None;
    }
    // SAFETY: a live map value (RCU), read at once; the stream's state before
    // this segment (it is committed after this stage).
    let stream_next = CONNS.get_ptr(&sc.key).map(|c| unsafe { (*c).next_seq });
    // The segment's own first byte (the scan may start later in it: bytes
    // already read, or a PROXY header's).
    let seg_seq = sc.main_seq.wrapping_sub(sc.main_from);
    if stream_next.is_some_and(|n| seg_seq.wrapping_sub(n) as i32 > 0) {
        // New bytes past a gap in the stream: the bytes of the gap would come
        // later, behind what was scanned, and the key stage would never read
        // them (a key header, a request line). Dropped: the sender sends them
        // again once the gap is filled, in order.
        return Some((Verdict::OutOfOrder, 0));
    }
    // SAFETY: a live map value (RCU), copied out at once.
    let mut parse = KEY_CONNS
        .get_ptr(&sc.key)
        .map_or(KeyParse::IDLE, |p| unsafe { *p });
    if parse.next_seq != sc.main_seq {
        // Bytes this parser never saw (a new connection, or a gap the stream
        // stage distrusted): wait for the next request start.
        parse = KeyParse::IDLE;
    }
    k.parse = parse;
    k.parsed = 1;
    k.framing = sc.main_before;
    k.pos = sc.main_from;
    k.end = sc.main_to;
    k.base = payload_off as u32;
    k.word_at = u32::MAX;
    let mut s = Scan {
        skb: ctx.skb.skb,
        ks,
    };
    let rounds = sc.main_to - sc.main_from + 4;
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe { bpf_loop(rounds, round as *mut c_void, (&raw mut s).cast(), 0) };
    k.parse.next_seq = sc.main_seq.wrapping_add(sc.main_to - sc.main_from);
    // The last word read may be a key's: no map keeps it.
    k.word = [0; 8];
    match k.limited {
        0 => None,
        v if v == Verdict::KeyLimited as u32 => Some((Verdict::KeyLimited, k.refused)),
        _ => Some((Verdict::RouteLimited, k.refused)),
    }
}

/// Keeps the parser's state of the segment let through (from
/// `Accounted::commit`).
#[inline(always)]
pub fn commit(key: &ConnKey, forget: bool) {
    if forget {
        let _ = KEY_CONNS.remove(key);
        return;
    }
    let Some(ks) = KEY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, filled by `judge` in this run.
    let k = unsafe { &mut *ks };
    if k.parsed == 0 {
        // No new bytes: the scratch's parser is not this connection's.
        return;
    }
    let _ = KEY_CONNS.insert(key, &k.parse, 0);
    // The hash state of a key value still open stays in KEY_CONNS only.
    k.parse = KeyParse::IDLE;
    k.parsed = 0;
}

#[repr(C)]
struct Scan {
    skb: *mut __sk_buff,
    ks: *mut KeyScratch,
}

/// One byte a round (a body skipped at once), as the stream stage's framing
/// steps it.
extern "C" fn round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `judge` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, used by this run only.
    let k = unsafe { &mut *s.ks };
    if k.pos >= k.end {
        return 1;
    }
    if k.framing.mode == MODE_BODY {
        k.pos += k.framing.skip_body((k.end - k.pos) as u64) as u32;
        return 0;
    }
    if k.pos < k.word_at || k.pos - k.word_at >= 8 {
        // A whole word (see stream.rs): the next 8 bytes, or the last 8.
        k.word_at = if k.end - k.pos >= 8 { k.pos } else { k.end - 8 };
        // SAFETY: `word` holds 8 bytes; the skb pointer is the program's context.
        let rc = unsafe {
            bpf_skb_load_bytes(
                s.skb as *const c_void,
                k.base.wrapping_add(k.word_at),
                k.word.as_mut_ptr().cast(),
                8,
            )
        };
        if rc != 0 {
            return 1;
        }
    }
    let b = k.word[((k.pos - k.word_at) & 7) as usize];
    k.pos += 1;
    let in_head = k.framing.mode == MODE_HEAD;
    let start = k.framing.step(b);
    let ended = in_head && k.framing.mode != MODE_HEAD;
    let (Some(p), Some(secret)) = (KEY_POLICY.get(0), KEY_SECRET.get(0)) else {
        return 1;
    };
    if start {
        k.head_refused = 0;
    }
    if let Some(c) = k.parse.byte(p, *secret, b, start, ended) {
        charge(k, &c);
    }
    if ended {
        k.head_refused = 0;
    }
    0
}

/// Counts the request being read as refused, once.
#[inline(always)]
fn refuse(k: &mut KeyScratch) {
    if k.head_refused == 0 {
        k.head_refused = 1;
        k.refused += 1;
    }
}

/// Takes the charge's buckets; the first refusal decides the segment.
#[inline(always)]
fn charge(k: &mut KeyScratch, c: &Charge) {
    if k.limited != 0 {
        refuse(k);
        return;
    }
    let Some(p) = KEY_POLICY.get(0) else {
        return;
    };
    if let Some(hash) = c.key
        && p.key_limit.is_set()
        && !take(&BucketKey::key(hash), &p.key_limit)
    {
        k.limited = Verdict::KeyLimited as u32;
        refuse(k);
        return;
    }
    let i = c.route as usize;
    let Some(route) = p.routes.get(i) else {
        return;
    };
    let limit = &route.limit;
    let bucket = match c.key {
        Some(hash) => BucketKey::keyed(BUCKET_ROUTE_KEY, i as u32, hash),
        None => BucketKey {
            id: k.client.addr,
            kind: BUCKET_ROUTE_CLIENT,
            route: i as u32,
        },
    };
    if limit.is_set() && !take(&bucket, limit) {
        k.limited = Verdict::RouteLimited as u32;
        refuse(k);
    }
}

/// One event from the bucket; a new bucket starts full.
#[inline(always)]
fn take(bucket: &BucketKey, limit: &api_guard_common::config::Limit) -> bool {
    let tat = match LIMIT_BUCKETS.get_ptr_mut(bucket) {
        Some(t) => t,
        None => {
            // An LRU map: a full one evicts its least recently used bucket.
            // Only if absent: another CPU may have made it (and charged it)
            // since the lookup; then its clock is taken, not reset.
            let _ = LIMIT_BUCKETS.insert(bucket, &0, BPF_NOEXIST as u64);
            match LIMIT_BUCKETS.get_ptr_mut(bucket) {
                Some(t) => t,
                None => return true,
            }
        }
    };
    let now = Clock::new().now();
    // SAFETY: a live map value (RCU), updated atomically.
    limit.take(&mut Tat(unsafe { &mut *tat }), now, 1) == Take::Admitted
}
