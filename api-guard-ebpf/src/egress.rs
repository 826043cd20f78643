//! The TC egress stage: the server's answers on watched ports (source port
//! watched). Each connection's response stream is framed
//! (`api_guard_common::response`) from where ingress numbered its first
//! request; at each final response the next request number is popped from the
//! connection's FIFO (`EXCHANGES`, pushed by ingress), so pipelined requests pair
//! in order. Every status is counted (`RESPONSES`); a sampled request's response
//! gets a ring record with its status and time to first byte.
//!
//! On `lo` a packet passes egress then ingress: egress looks only at segments
//! *from* a watched port and ingress only at segments *to* one, so neither sees
//! the other's.

use core::ffi::c_void;

use api_guard_common::{
    conn::ConnKey,
    exchange::{
        Exchange, FIFO_SLOTS, HEAD_BITS, REPLY_AHEAD, REPLY_SEQ_KNOWN, RESPONSE_PAIRED,
        ResponseCount, ResponseRecord, SLOT_HEAD, SLOT_SAMPLED, class_of, watched_status,
    },
    ports,
    response::{REPLY_BODY, REPLY_DONE, Reply, Step},
    sample::{SAMPLE_IPV6, SampleHeader, Source},
};
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_loop},
    programs::TcContext,
};

use crate::{
    chunk::Chunk,
    classify,
    exchange::count,
    maps::{EXCHANGES, REPLY_SCRATCH, SAMPLES},
    parse::{TCP_RST, TcpPacket, header},
};

const TCP_FIN: u8 = 0x01;

/// A response record as it goes into the ring: the common header, then the
/// response.
#[repr(C)]
pub struct ResponseOut {
    header: SampleHeader,
    rec: ResponseRecord,
}

/// The egress program's working state, too large for the stack: the
/// connection, a copy of its entry (the scan pops from it), the scan's cursor.
/// The TLS write path (tls.rs) frames plaintext with the same state, in a
/// per-CPU entry of its own.
#[repr(C)]
pub struct ReplyScratch {
    pub(crate) key: ConnKey,
    pub(crate) ex: Exchange,
    out: ResponseOut,
    /// `bpf_ktime_get_ns()` when the segment left, read at its first sampled
    /// response (0 before): a response nobody sampled needs no clock, and most
    /// are not sampled under `--sample-budget`. The TLS write path sets it when
    /// the write is sent.
    pub(crate) now: u64,
    /// The TLS write's plaintext in the process's memory (0 on the TC path).
    pub(crate) buf: u64,
    pub(crate) base: u32,
    pub(crate) pos: u32,
    pub(crate) end: u32,
    /// The TLS path's block: where `plain` starts and how many of its bytes
    /// are valid (the process's reads may be short).
    pub(crate) word_at: u32,
    pub(crate) word_len: u32,
    pub(crate) _pad: u32,
    /// The TC path's block of segment bytes.
    chunk: Chunk,
    /// The TLS write path's bytes of the process, read `tls::CHUNK` at a
    /// time (a helper call each), and 8 more so a word at any of them is in
    /// bounds.
    pub(crate) plain: [u8; 72],
}

/// The bpf_loop callback's context (the scratch pointer rides along).
#[repr(C)]
struct Scan {
    skb: *mut __sk_buff,
    sc: *mut ReplyScratch,
}

/// Frames the response bytes of a segment from a watched port.
#[inline(always)]
pub fn run(ctx: &TcContext, pkt: &TcpPacket) {
    let Ok(th) = header::<16>(ctx, pkt.l4_off) else {
        return;
    };
    let sport = u16::from_be_bytes([th[0], th[1]]);
    let port_flags = classify::flags_of_port(sport);
    if !classify::is_watched(port_flags) {
        return;
    }
    let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
    let tcp_flags = th[13];
    let Some(sc) = REPLY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let sc = unsafe { &mut *sc };
    if conn_key(ctx, pkt, sport, &mut sc.key).is_err() {
        return;
    }
    let len = pkt.payload_len as u32;
    if port_flags & ports::TLS != 0 {
        // A TLS port: its responses are read from the plaintext `SSL_write`
        // sends (tls.rs), never from these encrypted bytes. Its entry still
        // goes with the connection.
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            let _ = EXCHANGES.remove(&sc.key);
        }
        return;
    }
    let Some(ex) = EXCHANGES.get_ptr_mut(&sc.key) else {
        if len > 0 {
            untracked(ctx, pkt);
        }
        return;
    };
    // SAFETY: a live map value (RCU); egress writes only its own fields back.
    sc.ex = unsafe { *ex };
    if len > 0 {
        frame(ctx, pkt, sc, seq, len);
        // SAFETY: as above; ingress's fields are left alone.
        unsafe {
            (*ex).head = sc.ex.head;
            (*ex).reply = sc.ex.reply;
            (*ex).reply_seq = sc.ex.reply_seq;
            (*ex).reply_flags = sc.ex.reply_flags;
        }
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // The server is done with the connection: no more responses on it.
        let _ = EXCHANGES.remove(&sc.key);
    }
}

/// Frames the new bytes of one segment in `sc.ex`.
#[inline(always)]
fn frame(ctx: &TcContext, pkt: &TcpPacket, sc: &mut ReplyScratch, seq: u32, len: u32) {
    let ex = &mut sc.ex;
    if ex.reply_flags & REPLY_SEQ_KNOWN == 0 {
        ex.reply_seq = seq;
        ex.reply_flags |= REPLY_SEQ_KNOWN;
    }
    let behind = ex.reply_seq.wrapping_sub(seq) as i32;
    let from = if behind > 0 {
        if behind as u32 >= len {
            // All framed before (a retransmission).
            return;
        }
        behind as u32
    } else {
        if behind < 0 && !ex.reply.is_lost() {
            // Bytes the framing never saw: where responses begin is unknown.
            ex.reply = Reply::lost();
            count(ResponseCount::Lost, 1);
        }
        0
    };
    ex.reply_seq = seq.wrapping_add(len);
    if ex.reply.mode == REPLY_DONE {
        if ex.reply.is_lost() {
            // Not framed any more, still counted: a status line at the
            // segment's start, unpaired.
            untracked(ctx, pkt);
        }
        return;
    }
    sc.now = 0;
    sc.base = pkt.payload_off as u32;
    sc.pos = from;
    sc.end = len;
    sc.chunk.reset();
    let was_lost = sc.ex.reply.is_lost();
    let mut s = Scan {
        skb: ctx.skb.skb,
        sc: sc as *mut ReplyScratch,
    };
    // Each round takes a byte, a skimmed word or a body: a response head is at
    // least 16 bytes before its body, so this bound always reaches the end.
    let n = len - from;
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe {
        bpf_loop(
            n + n / 8 + 4,
            scan_round as *mut c_void,
            (&raw mut s).cast(),
            0,
        )
    };
    // The block may hold a credential (a cookie being set): no map keeps it.
    sc.chunk.wipe();
    if sc.pos < sc.end && sc.ex.reply.mode != REPLY_DONE {
        // The bound was reached (it cannot be, by the rule above): stop framing.
        sc.ex.reply = Reply::lost();
    }
    if !was_lost && sc.ex.reply.is_lost() {
        count(ResponseCount::Lost, 1);
    }
    let _ = ctx;
}

/// One round of the scan: a body skipped, a head word skimmed, or a byte.
extern "C" fn scan_round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `frame` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, set by `frame`, used by this run only.
    let sc = unsafe { &mut *s.sc };
    if sc.pos >= sc.end || sc.ex.reply.mode == REPLY_DONE {
        return 1;
    }
    let reply = &mut sc.ex.reply;
    if reply.mode == REPLY_BODY {
        let n = reply.skip_body((sc.end - sc.pos) as u64);
        sc.pos += n as u32;
        return 0;
    }
    // The next 8 bytes, read from a block loaded 64 bytes at a time.
    let Some(word) = sc.chunk.word(s.skb, sc.base, sc.pos, sc.end) else {
        sc.ex.reply = Reply::lost();
        return 1;
    };
    let avail = sc.end - sc.pos;
    let k = sc.ex.reply.skim(word, if avail < 8 { avail } else { 8 });
    if k > 0 {
        sc.pos += k;
        return 0;
    }
    let b = word as u8;
    if sc.ex.reply.step(b) == Step::Status {
        answered(sc, Source::TcEgress as u16);
    }
    sc.pos += 1;
    0
}

/// A status line was read: count it, and pair it if it is final; a sampled
/// request's response goes to the ring as a record of `source`.
#[inline(always)]
pub(crate) fn answered(sc: &mut ReplyScratch, source: u16) {
    let status = sc.ex.reply.status;
    if sc.ex.reply.is_interim() {
        count(ResponseCount::Interim, 1);
        return;
    }
    if let Some(c) = class_of(status) {
        count(c, 1);
    }
    if let Some(c) = watched_status(status) {
        count(c, 1);
    }
    let ex = &mut sc.ex;
    let r = ex.head;
    ex.head = r.wrapping_add(1);
    if ex.reply_flags & REPLY_AHEAD != 0 || r.wrapping_sub(ex.tail) as i32 >= 0 {
        // No request numbered for it: what follows cannot be paired either
        // (unless ingress stopped numbering, which keeps `tail` below it).
        ex.reply_flags |= REPLY_AHEAD;
        count(ResponseCount::Unseen, 1);
        return;
    }
    if (ex.head_bits >> (r % HEAD_BITS)) & 1 != 0 {
        ex.reply.no_body();
    }
    let slot = ex.slots[(r as usize) % FIFO_SLOTS];
    if slot.index != r {
        count(ResponseCount::Overflow, 1);
        return;
    }
    if slot.flags & SLOT_HEAD != 0 {
        ex.reply.no_body();
    }
    count(ResponseCount::Paired, 1);
    if slot.flags & SLOT_SAMPLED == 0 {
        return;
    }
    if sc.now == 0 {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        sc.now = unsafe { bpf_ktime_get_ns() };
    }
    let h = &mut sc.out.header;
    h.ts_ns = sc.now;
    // The client the request's sample named: a trusted proxy's header's, if
    // any (the join matches on it).
    h.client = match crate::maps::CONFIG.get(0) {
        Some(cfg) => crate::proxy::named_by_conn(cfg, &sc.key).unwrap_or(sc.key.client),
        None => sc.key.client,
    };
    h.server = sc.key.server;
    h.source = source;
    h.verdict = 0;
    h.flags = if is_v4_mapped(&h.client) {
        0
    } else {
        SAMPLE_IPV6
    };
    h.client_port = sc.key.client_port;
    h.server_port = sc.key.server_port;
    h.ifindex = 0;
    h.payload_len = 0;
    h.captured = core::mem::size_of::<ResponseRecord>() as u32;
    h.exchange = r;
    sc.out.rec = ResponseRecord {
        request_ns: slot.arrival_ns,
        ttfb_ns: sc.now.wrapping_sub(slot.arrival_ns),
        status,
        _pad: 0,
        flags: RESPONSE_PAIRED,
    };
    if SAMPLES
        .output::<ResponseOut>(&sc.out, crate::sample::wakeup())
        .is_ok()
    {
        count(ResponseCount::Recorded, 1);
    } else {
        count(ResponseCount::RecordsLost, 1);
    }
}

/// A segment on a connection with no entry (picked up mid-way, never numbered,
/// or evicted): a status line at its very start is counted, unpaired.
#[inline(always)]
fn untracked(ctx: &TcContext, pkt: &TcpPacket) {
    if pkt.payload_len < 12 {
        return;
    }
    let Ok(line) = ctx.load::<[u8; 12]>(pkt.payload_off) else {
        return;
    };
    let mut r = Reply::start();
    for b in line {
        if r.step(b) == Step::Status {
            if r.is_interim() {
                count(ResponseCount::Interim, 1);
                return;
            }
            if let Some(c) = class_of(r.status) {
                count(c, 1);
            }
            if let Some(c) = watched_status(r.status) {
                count(c, 1);
            }
            count(ResponseCount::Unseen, 1);
            return;
        }
    }
}

#[inline(always)]
pub(crate) fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// The connection's key as ingress sees it: client = the destination here.
#[inline(always)]
fn conn_key(ctx: &TcContext, pkt: &TcpPacket, sport: u16, key: &mut ConnKey) -> Result<(), ()> {
    if pkt.ipv6 {
        key.server = *header::<16>(ctx, pkt.l3_off + 8).map_err(|_| ())?;
        key.client = *header::<16>(ctx, pkt.l3_off + 24).map_err(|_| ())?;
    } else {
        let ip = header::<20>(ctx, pkt.l3_off).map_err(|_| ())?;
        key.server = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[12], ip[13], ip[14], ip[15],
        ];
        key.client = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[16], ip[17], ip[18], ip[19],
        ];
    }
    key.client_port = pkt.dport;
    key.server_port = sport;
    key._pad = 0;
    Ok(())
}

const _: () = assert!(core::mem::size_of::<Scan>() == 16);
