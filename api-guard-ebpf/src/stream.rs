//! Stage 3, stream: the request starts in a segment's new bytes, found by the
//! per-connection parser of `api_guard_common::stream`, whatever the
//! segmentation. Bytes the server already has are not charged again; bytes that
//! were accounted but that the server has not taken (its socket's `rcv_nxt` is
//! behind them: a segment it refused, a forged one) are charged again, untrusted.
//!
//! The parser's new state is committed only once the segment is let through
//! ([`Accounted::commit`]): a dropped segment comes back as a retransmission and
//! is accounted then.

use core::{ffi::c_void, mem::size_of};

use api_guard_common::{
    conn::{CONN_SUSPECT, ConnKey, ConnState},
    counters::Event,
    stream::{Framing, MODE_BODY},
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_loop, bpf_sk_release, bpf_skb_load_bytes, bpf_skc_lookup_tcp, bpf_tcp_sock},
    programs::TcContext,
};

use crate::{
    count,
    exchange::{self, Pushed},
    maps::{CONNS, STREAM_SCRATCH},
    parse::{TCP_ACK, TCP_SYN, TcpPacket, header},
};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
/// `first_off` when no request starts in the segment.
pub const NO_START: u32 = u32::MAX;

/// TCP states in which the server still takes the client's bytes.
const TCP_ESTABLISHED: u32 = 1;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_FIN_WAIT2: u32 = 5;

/// What a segment carries, and what to do with the connection's state if the
/// segment is let through (the new state itself waits in `STREAM_SCRATCH`).
pub struct Accounted {
    /// Request starts to charge.
    pub starts: u32,
    /// Payload offset of the first start in the new bytes (for the sampler).
    pub first_off: u32,
    keep: u8,
    /// The key stage parsed the segment: keep its state too (keys.rs).
    pub keys: bool,
}

const KEEP_NOTHING: u8 = 0;
const KEEP_STATE: u8 = 1;
/// The client closed its side (FIN or RST): forget the connection.
const KEEP_FORGET: u8 = 2;

/// The connection's key and new state between accounting and commit: too large
/// for the BPF stack beside the rest of the pipeline.
#[repr(C)]
pub struct StreamScratch {
    pub key: ConnKey,
    next: ConnState,
    /// The parser and cursor while a scan runs: in map memory, not on the stack,
    /// so the verifier sees their fields as unknown values and the rounds of the
    /// loop converge instead of being walked one by one.
    framing: Framing,
    cur: Cursor,
    word: [u8; 8],
    /// The requests of the segment to number for pairing (exchange.rs).
    pub pushed: Pushed,
    /// A request start's first bytes, to tell a `HEAD`.
    method: [u8; 8],
    /// A new connection's pairing entry, before it is inserted.
    fresh: api_guard_common::exchange::Exchange,
    /// Payload bytes before this offset are a PROXY header's (proxy.rs): no
    /// request is in them.
    skip: u32,
    /// The segment's sequence number.
    seq: u32,
    /// What the connection's own framing scanned (payload offsets; none when
    /// equal) and the framing before it: the key stage reads the same bytes
    /// with the same framing (keys.rs).
    pub main_from: u32,
    pub main_to: u32,
    pub main_seq: u32,
    pub main_before: Framing,
    /// What the segment's scans cover, decided before them (see
    /// `account_with`).
    plan: Plan,
}

/// The scans a segment needs: `untrusted` bytes (from..to) with a fresh
/// untrusted framing, then the stream's `main` new bytes with its own.
#[repr(C)]
#[derive(Clone, Copy)]
struct Plan {
    untrusted_from: u32,
    untrusted_to: u32,
    main_from: u32,
    main_to: u32,
    /// The untrusted scan's framing is the one the stream goes on with.
    goes_on: u32,
    /// Keep the connection's state (else forget it: a FIN).
    keep: u32,
}

/// Where a scan stands (payload offsets), and what it found.
#[repr(C)]
struct Cursor {
    /// skb offset of the payload.
    base: u32,
    /// The next byte to read, and the end.
    pos: u32,
    end: u32,
    starts: u32,
    first: u32,
    /// Offset of the word in `StreamScratch::word`.
    word_at: u32,
    /// Scanning with the connection's own framing: note each start's method.
    main: u32,
    /// Bit i: start i is a `HEAD`; a start past 32, or whose method the
    /// segment cuts, is unknown.
    heads: u32,
    unknown: u32,
}

impl Accounted {
    /// No accounting: a packet dropped before it (deny and block lists).
    pub const NOTHING: Accounted = Accounted {
        starts: 0,
        first_off: NO_START,
        keep: KEEP_NOTHING,
        keys: false,
    };

    /// What a tail-called stage needs to finish this accounting (keys.rs).
    #[inline(always)]
    pub fn parts(&self) -> (u32, u32, u32) {
        (self.starts, self.first_off, self.keep as u32)
    }

    #[inline(always)]
    pub fn from_parts(starts: u32, first_off: u32, keep: u32, keys: bool) -> Self {
        Accounted {
            starts,
            first_off,
            keep: if keep > KEEP_FORGET as u32 {
                KEEP_NOTHING
            } else {
                keep as u8
            },
            keys,
        }
    }

    /// Keeps the parser's new state: the segment was let through.
    #[inline(always)]
    pub fn commit(&self) {
        let Some(sc) = STREAM_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch entry, filled by `account` in this program run.
        let sc = unsafe { &mut *sc };
        if self.keep == KEEP_NOTHING {
            // Nothing numbered: the sampler must not read an older packet's number.
            sc.pushed.first_index = api_guard_common::sample::NO_EXCHANGE;
            return;
        }
        let exact = sc.next.framing.is_exact();
        exchange::push(&sc.key, &mut sc.pushed, exact, &mut sc.fresh);
        if sc.pushed.first_off != self.first_off {
            // The sampler captures from another start (a rescan's).
            sc.pushed.first_index = api_guard_common::sample::NO_EXCHANGE;
        }
        if self.keys {
            crate::keys::commit(&sc.key, self.keep == KEEP_FORGET);
        }
        if self.keep == KEEP_FORGET {
            let _ = CONNS.remove(&sc.key);
        } else {
            // An insert, not a write in place: it swaps the whole element, so a
            // CPU reading the connection at once never sees half of two states
            // (a torn framing could skip a body's worth of requests). An LRU
            // map: a full one evicts its least recently seen connection.
            let _ = CONNS.insert(&sc.key, &sc.next, 0);
        }
    }
}

/// What the `bpf_loop` callback needs that only the stack can carry: the
/// context pointer keeps its type there (the scratch pointer rides along).
#[repr(C)]
struct Scan {
    skb: *mut __sk_buff,
    sc: *mut StreamScratch,
}

/// Accounts the segment `pkt` from `client` (its address, not its bucket);
/// stream bytes before `skip_before` (a PROXY header's) are not scanned.
#[inline(always)]
pub fn account(
    ctx: &TcContext,
    pkt: &TcpPacket,
    client: &[u8; 16],
    skip_before: Option<u32>,
) -> Accounted {
    account_with::<false>(ctx, pkt, client, skip_before)
}

/// [`account`] reading the headers with a helper, for a program whose packet
/// offsets the verifier knows only from a handoff and where LLVM merges the
/// direct reads' checks out of its sight (the proxy program).
#[inline(always)]
pub fn account_loaded(
    ctx: &TcContext,
    pkt: &TcpPacket,
    client: &[u8; 16],
    skip_before: Option<u32>,
) -> Accounted {
    account_with::<true>(ctx, pkt, client, skip_before)
}

#[inline(always)]
fn account_with<const LOADED: bool>(
    ctx: &TcContext,
    pkt: &TcpPacket,
    client: &[u8; 16],
    skip_before: Option<u32>,
) -> Accounted {
    let Some(sc) = STREAM_SCRATCH.get_ptr_mut(0) else {
        return Accounted::NOTHING;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let sc = unsafe { &mut *sc };
    sc.pushed = Pushed::NONE;
    sc.main_from = 0;
    sc.main_to = 0;
    let Some(seq) = (if LOADED {
        conn_key_loaded(ctx, pkt, client, &mut sc.key)
    } else {
        conn_key(ctx, pkt, client, &mut sc.key)
    }) else {
        return Accounted::NOTHING;
    };
    let key = &sc.key;
    let ack = if LOADED {
        ctx.load::<[u8; 4]>(pkt.l4_off + 8).ok()
    } else {
        header::<12>(ctx, pkt.l4_off)
            .ok()
            .map(|th| [th[8], th[9], th[10], th[11]])
    };
    let Some(ack) = ack else {
        return Accounted::NOTHING;
    };
    sc.seq = seq;
    sc.pushed.ack = u32::from_be_bytes(ack);
    let len = pkt.payload_len as u32;
    let mut out = Accounted::NOTHING;
    sc.skip = match skip_before {
        Some(end) => {
            // Data on a SYN starts after the SYN's own number.
            let data_seq = if pkt.flags & TCP_SYN != 0 {
                seq.wrapping_add(1)
            } else {
                seq
            };
            let ahead = end.wrapping_sub(data_seq) as i32;
            if ahead <= 0 {
                0
            } else if ahead as u32 > len {
                len
            } else {
                ahead as u32
            }
        }
        None => 0,
    };

    // What to scan is decided first and scanned after, at one call site per
    // kind of scan: each `bpf_loop` site makes the verifier walk the scan
    // round again, and the judges are near its limit of a million
    // instructions. `untrusted`: bytes scanned with a fresh untrusted framing
    // (data on a SYN, or bytes seen before that the server did not take);
    // `main`: the stream's new bytes with its own framing.
    let syn = pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut untrusted = (0u32, 0u32);
    let mut main = (0u32, 0u32);
    // Whether the untrusted scan's framing is where the stream goes on from.
    let mut untrusted_goes_on = true;
    let mut state;
    if syn {
        // A new connection: its stream starts right after the SYN. A SYN with
        // another number on a tracked connection is a new connection on a reused
        // port, or a forgery: bytes before the new number are charged again.
        state = ConnState {
            framing: Framing::start(),
            next_seq: seq.wrapping_add(1),
            flags: 0,
        };
        if let Some(old) = conn(key) {
            if old.next_seq == state.next_seq {
                return out;
            }
            state.flags = CONN_SUSPECT;
        }
        if len > 0 {
            // Data on the SYN (TCP Fast Open): charged, untrusted.
            untrusted = (0, len);
            state.next_seq = state.next_seq.wrapping_add(len);
        }
    } else {
        if pkt.flags & TCP_RST != 0 {
            // Only a RST the server's stack takes (its number the next one
            // expected, RFC 5961) ends the stream; another is answered with a
            // challenge ACK and the connection goes on, so its framing must
            // too (forgotten, a body could be read as heads from then on).
            if !matches!(server_next(ctx, pkt, key), Some((rcv_nxt, _)) if rcv_nxt != seq) {
                out.keep = KEEP_FORGET;
            }
            return out;
        }
        if len == 0 {
            if pkt.flags & TCP_FIN != 0 {
                out.keep = KEEP_FORGET;
            }
            return out;
        }

        // The server's socket is asked only where it decides something: for a
        // connection seen for the first time, and for bytes seen before. A
        // segment in order, the common case, needs no lookup.
        state = match conn(key) {
            Some(s) => s,
            None => ConnState {
                // Picked up at the server's first byte, or mid-way (missed SYN,
                // an evicted entry, a daemon started on live connections).
                framing: match server_next(ctx, pkt, key) {
                    Some((rcv_nxt, 0)) if rcv_nxt == seq => Framing::start(),
                    _ => {
                        count::event(Event::StreamsUntrusted);
                        Framing::untrusted()
                    }
                },
                next_seq: seq,
                flags: 0,
            },
        };

        // Bytes before `next_seq` were accounted. Those the server has (before
        // its rcv_nxt) are free; the rest are charged again, untrusted: a forged
        // or refused segment must not pass its bytes off as accounted.
        let behind = state.next_seq.wrapping_sub(seq) as i32;
        if behind > 0 {
            let old_end = if (behind as u32) < len {
                behind as u32
            } else {
                len
            };
            let server = if state.flags & CONN_SUSPECT == 0 {
                server_next(ctx, pkt, key)
            } else {
                None
            };
            let from = match server {
                Some((rcv_nxt, _)) => {
                    let have = rcv_nxt.wrapping_sub(seq) as i32;
                    if have <= 0 { 0 } else { have as u32 }
                }
                _ => 0,
            };
            if from < old_end {
                count::event(Event::StreamsUntrusted);
                untrusted = (from, old_end);
                // The framing at `next_seq` came from a copy the server did not
                // take (refused, forged, or other bytes than these): a body it
                // announced must not hide what follows. Where these bytes reach
                // `next_seq`, their own (untrusted) framing is the one to go on
                // with; else where the stream stands is unknown: err high.
                untrusted_goes_on = old_end == behind as u32;
            }
            if old_end < len {
                main = (old_end, len);
                state.next_seq = seq.wrapping_add(len);
            }
        } else {
            if behind < 0 {
                // A gap: bytes before this segment were never seen here (lost
                // on the way, or sent out of order). Where it stands in the
                // stream is unknown.
                count::event(Event::StreamsUntrusted);
                state.framing = Framing::untrusted();
            }
            main = (0, len);
            state.next_seq = seq.wrapping_add(len);
        }
    }
    sc.next = state;
    sc.plan = Plan {
        untrusted_from: untrusted.0,
        untrusted_to: untrusted.1,
        main_from: main.0,
        main_to: main.1,
        goes_on: untrusted_goes_on as u32,
        keep: (syn || pkt.flags & TCP_FIN == 0) as u32,
    };
    // Read back from map memory: every path above reaches the scans with the
    // same state (unknown values, not each path's constants), so the
    // verifier walks the scans' rounds once instead of once per path.
    // SAFETY: a field of this live map value.
    let plan = unsafe { core::ptr::read_volatile(&sc.plan) };
    if plan.untrusted_from < plan.untrusted_to {
        let mut again = Framing::untrusted();
        scan(
            ctx,
            pkt,
            &mut again,
            plan.untrusted_from,
            plan.untrusted_to,
            &mut out,
            false,
        );
        if plan.goes_on != 0 {
            sc.next.framing = again;
        } else {
            sc.next.framing.distrust();
            out.starts += 1;
        }
    }
    if plan.main_from < plan.main_to {
        sc.pushed.fresh = sc.next.framing.is_fresh() as u32;
        let mut framing = sc.next.framing;
        scan(
            ctx,
            pkt,
            &mut framing,
            plan.main_from,
            plan.main_to,
            &mut out,
            true,
        );
        sc.next.framing = framing;
    }
    out.keep = if plan.keep != 0 {
        KEEP_STATE
    } else {
        KEEP_FORGET
    };
    out
}

/// A copy of the connection's state.
#[inline(always)]
fn conn(key: &ConnKey) -> Option<ConnState> {
    // SAFETY: a live map value (RCU), copied out at once.
    CONNS.get_ptr(key).map(|p| unsafe { *p })
}

/// Scans payload bytes `from..to` with `framing`, adding to `out`'s starts.
#[inline(always)]
fn scan(
    ctx: &TcContext,
    pkt: &TcpPacket,
    framing: &mut Framing,
    from: u32,
    to: u32,
    out: &mut Accounted,
    main: bool,
) {
    let Some(sc) = STREAM_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let scr = unsafe { &mut *sc };
    let from = if from < scr.skip { scr.skip } else { from };
    if from >= to {
        return;
    }
    scr.framing = *framing;
    if main {
        scr.main_before = *framing;
    }
    scr.cur = Cursor {
        base: pkt.payload_off as u32,
        pos: from,
        end: to,
        starts: 0,
        first: NO_START,
        word_at: u32::MAX,
        main: main as u32,
        heads: 0,
        unknown: 0,
    };
    let mut s = Scan {
        skb: ctx.skb.skb,
        sc,
    };
    // Each round parses at least a byte or skips a body; a body needs a head of
    // at least 16 bytes before it, so len + len / 8 + 4 rounds always reach the
    // end.
    let rounds = (to - from) + (to - from) / 8 + 4;
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe { bpf_loop(rounds, scan_round as *mut c_void, (&raw mut s).cast(), 0) };
    // The last word read may be a credential's: no map keeps it.
    scr.word = [0; 8];
    *framing = scr.framing;
    let c = &scr.cur;
    let mut starts = c.starts;
    if c.pos < c.end {
        // The bound was reached (it cannot be, by the rule above): err high.
        starts += 1;
        framing.distrust();
    }
    out.starts += starts;
    if out.first_off == NO_START {
        out.first_off = c.first;
    }
    if main {
        scr.main_from = from;
        scr.main_to = to;
        scr.main_seq = scr.seq.wrapping_add(from);
        scr.pushed.starts = starts;
        scr.pushed.heads = c.heads;
        scr.pushed.first_off = c.first;
        scr.pushed.unknown = c.unknown;
    }
}

/// One round of the scan: a body skipped at once, up to 8 bytes of a head line
/// skimmed, or one byte parsed (from a word read 8 bytes at a time). One step a round keeps the verifier's work
/// small: it checks the round, not every path through many bytes.
extern "C" fn scan_round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `scan` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, set by `scan`, used by this run only.
    let sc = unsafe { &mut *s.sc };
    let c = &mut sc.cur;
    if c.pos >= c.end {
        return 1;
    }
    if sc.framing.mode == MODE_BODY {
        let n = sc.framing.skip_body((c.end - c.pos) as u64);
        c.pos += n as u32;
        return 0;
    }
    if c.pos < c.word_at || c.pos - c.word_at >= 8 {
        // Always a whole word (the verifier's rule for loads): the next 8 bytes,
        // or near the end the payload's last 8. Headers come before the payload,
        // so the word never starts before the skb.
        c.word_at = if c.end - c.pos >= 8 { c.pos } else { c.end - 8 };
        // SAFETY: `word` holds 8 bytes; the skb pointer is the program's context.
        let rc = unsafe {
            bpf_skb_load_bytes(
                s.skb as *const c_void,
                c.base.wrapping_add(c.word_at),
                sc.word.as_mut_ptr().cast(),
                8,
            )
        };
        if rc != 0 {
            return 1;
        }
    }
    let idx = (c.pos - c.word_at) & 7;
    // Head bytes that only matter for where the line ends: up to 8 at once.
    let avail = c.end - c.pos;
    let k = sc.framing.skim(
        u64::from_le_bytes(sc.word) >> (8 * idx),
        if avail < 8 - idx { avail } else { 8 - idx },
    );
    if k > 0 {
        c.pos += k;
        return 0;
    }
    let b = sc.word[idx as usize];
    if sc.framing.step(b) {
        if c.main != 0 && b == b'H' {
            // A HEAD's response has no body: egress must know to frame it.
            note_head(s.skb, c, &mut sc.method);
        }
        c.starts += 1;
        if c.first == NO_START {
            c.first = c.pos;
        }
    }
    c.pos += 1;
    0
}

/// Notes whether the request starting at `c.pos` (with an `H`) is a `HEAD`.
#[inline(always)]
fn note_head(skb: *mut __sk_buff, c: &mut Cursor, method: &mut [u8; 8]) {
    if c.starts >= 32 || c.end - c.pos < 5 {
        c.unknown = 1;
        return;
    }
    // SAFETY: `method` holds 8 >= 5 bytes; the skb pointer is the program's context.
    let rc = unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            c.base.wrapping_add(c.pos),
            method.as_mut_ptr().cast(),
            5,
        )
    };
    if rc != 0 {
        c.unknown = 1;
    } else if method[..5] == *b"HEAD " {
        c.heads |= 1 << c.starts;
    }
}

/// The connection's key: client and server address and port; and the
/// segment's sequence number.
#[inline(always)]
pub(crate) fn conn_key(
    ctx: &TcContext,
    pkt: &TcpPacket,
    client: &[u8; 16],
    key: &mut ConnKey,
) -> Option<u32> {
    let server = if pkt.ipv6 {
        *header::<16>(ctx, pkt.l3_off + 24).ok()?
    } else {
        let d = header::<4>(ctx, pkt.l3_off + 16).ok()?;
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, d[0], d[1], d[2], d[3],
        ]
    };
    let th = header::<8>(ctx, pkt.l4_off).ok()?;
    key.client = *client;
    key.server = server;
    key.client_port = u16::from_be_bytes([th[0], th[1]]);
    key.server_port = u16::from_be_bytes([th[2], th[3]]);
    key._pad = 0;
    Some(u32::from_be_bytes([th[4], th[5], th[6], th[7]]))
}

/// [`conn_key`] through `bpf_skb_load_bytes` (see [`account_loaded`]).
#[inline(always)]
pub fn conn_key_loaded(
    ctx: &TcContext,
    pkt: &TcpPacket,
    client: &[u8; 16],
    key: &mut ConnKey,
) -> Option<u32> {
    key.server = if pkt.ipv6 {
        ctx.load::<[u8; 16]>(pkt.l3_off + 24).ok()?
    } else {
        let [a, b, c, d] = ctx.load::<[u8; 4]>(pkt.l3_off + 16).ok()?;
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
    };
    let th = ctx.load::<[u8; 8]>(pkt.l4_off).ok()?;
    key.client = *client;
    key.client_port = u16::from_be_bytes([th[0], th[1]]);
    key.server_port = u16::from_be_bytes([th[2], th[3]]);
    key._pad = 0;
    Some(u32::from_be_bytes([th[4], th[5], th[6], th[7]]))
}

/// The server socket's next expected sequence number and the bytes it has
/// received, if the connection's socket is in this network namespace.
#[inline(always)]
pub(crate) fn server_next(ctx: &TcContext, pkt: &TcpPacket, key: &ConnKey) -> Option<(u32, u64)> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if pkt.ipv6 {
        // SAFETY: writing plain integers into the union's IPv6 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            t.saddr = words(&key.client);
            t.daddr = words(&key.server);
            t.sport = key.client_port.to_be();
            t.dport = key.server_port.to_be();
        }
        size_of::<[u32; 9]>()
    } else {
        // SAFETY: writing plain integers into the union's IPv4 member.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = words(&key.client)[3];
            t.daddr = words(&key.server)[3];
            t.sport = key.client_port.to_be();
            t.dport = key.server_port.to_be();
        }
        size_of::<[u32; 3]>()
    };
    // SAFETY: the context and tuple are valid for the call; the socket it returns
    // is released below on every path.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut c_void,
            &mut tuple,
            size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is a live socket reference until the release below.
    let found = unsafe {
        let state = (*sk).state;
        let tp = bpf_tcp_sock(sk);
        if tp.is_null()
            || !(state == TCP_ESTABLISHED || state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2)
        {
            None
        } else {
            Some(((*tp).rcv_nxt, (*tp).bytes_received))
        }
    };
    // SAFETY: releases the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    found
}

/// 16 address bytes as four network-order words, as the tuple holds them.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

// No implicit padding: the verifier refuses reads of uninitialised stack.
const _: () = assert!(size_of::<Scan>() == 16);
