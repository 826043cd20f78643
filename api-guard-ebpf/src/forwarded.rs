//! The forwarded stage (`--trusted-hops`): a program of its own (tail slot
//! 8), tail-called by the proxy program for a trusted peer's segment whose
//! connection named no client by PROXY header, before the proxied judge. It
//! reads the segment's new bytes with the framing the stream stage will read
//! them with (the connection's `CONNS` state, committed by the judge after
//! this stage), byte by byte, with the list parser of
//! `api_guard_common::forwarded` whose place is kept per connection in
//! `FWD_CONNS`; each head's end notes the client its list named (or the peer
//! if it named no one), and a second loop charges them (bucketed as the TC
//! path buckets). The judge then lets the peer through as exempt: a request
//! whose client is unknown at its start is charged once, at its head's end,
//! and the proxy never for its clients.
//!
//! On a connection that has carried one client, a refused request drops the
//! segment as the judge would; on one that carried two or more (an L7 proxy's
//! pool), it is let through, counted `forwarded_reported` and noted in
//! `FWD_REPORTED` for the daemon's blocklist. The parser's state is kept only
//! if the segment goes through ([`commit`]).

use core::ffi::c_void;

use api_guard_common::{
    client::{ClientKey, ClientState},
    config::{Config, flags},
    conn::ConnKey,
    counters::{Event, Verdict},
    forwarded::{FwdConn, HEADER_FORWARDED, HEADER_XFF, Head, Reported},
    stream::{Framing, MODE_BODY, MODE_HEAD},
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{bpf_loop, bpf_skb_load_bytes},
    programs::TcContext,
};

use crate::{
    atomic,
    clock::Clock,
    count::{self, Seen},
    enforce,
    maps::{CLIENTS, CONFIG, CONNS, FWD_CONNS, FWD_REPORTED, FWD_SCRATCH, PENALTIES},
    parse::TcpPacket,
    proxy, stream,
};

/// The stage's working state (per CPU): in map memory, so the loop's rounds
/// see unknown values and converge.
#[repr(C)]
pub struct FwdScratch {
    /// The connection parsed (its state is committed only to it).
    key: ConnKey,
    conn: FwdConn,
    framing: Framing,
    pos: u32,
    end: u32,
    base: u32,
    word_at: u32,
    word: [u8; 8],
    /// The trusted peer, bucketed: charged when the list names no one.
    peer: [u8; 16],
    /// The verdict once a request was refused on a single-client connection
    /// (0: none): the segment is dropped, no later charge is taken.
    limited: u32,
    /// Requests refused, and reported (over the limit, let through).
    refused: u32,
    reported: u32,
    /// `conn` is this segment's (it had new bytes): only then is it kept.
    parsed: u32,
    /// The client being charged (its address, and its bucket), and a new
    /// client entry while it is made: here, not on the stack (the charge
    /// loop's frame and the program's share 512 bytes).
    raw: ClientKey,
    key_of: ClientKey,
    blank: ClientState,
    no_reports: Reported,
    /// The stream's framing is trusted: lists are read (else a body could
    /// be read as a head, and every head is charged to the peer).
    trusted: u32,
    /// The heads that ended in the segment, charged after the parse (two
    /// loops: the verifier walks the parser and the charge apart).
    pending: u32,
    heads: [Pending; PENDING],
}

/// Runs of heads that ended in a segment, per client.
const PENDING: usize = 32;

/// A run of consecutive heads of one client (`named` 0: the list named no
/// one, the peer is charged).
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    client: [u8; 16],
    count: u32,
    named: u32,
}

/// Parses the segment's new bytes (those the stream stage will read, with
/// the framing it will read them with: the connection's `CONNS` state, which
/// the proxied judge commits after this stage) and charges each head that ends
/// in them. Returns the segment's verdict (`None`: every request admitted)
/// and the requests refused or reported.
#[inline(always)]
pub fn judge(ctx: &TcContext, pkt: &TcpPacket, peer: &ClientKey) -> Option<(Verdict, u32)> {
    let cfg = CONFIG.get(0)?;
    let fp = FWD_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let f = unsafe { &mut *fp };
    f.limited = 0;
    f.refused = 0;
    f.reported = 0;
    f.parsed = 0;
    f.pending = 0;
    let seq = stream::conn_key_loaded(ctx, pkt, &peer.addr, &mut f.key)?;
    let len = pkt.payload_len as u32;
    if len == 0 {
        return None;
    }
    // Bytes before this are a PROXY header's (LOCAL or UNKNOWN).
    let skip = proxy::skip_before().wrapping_sub(seq);
    let mut from = if skip > 0 && skip <= len { skip } else { 0 };
    f.trusted = 0;
    match CONNS.get_ptr(&f.key) {
        Some(c) => {
            // SAFETY: a live map value (RCU), read at once, in place.
            let c = unsafe { &*c };
            let ahead = c.next_seq.wrapping_sub(seq);
            if (ahead as i32) < 0 {
                // New bytes past a gap: the gap's bytes (a list line) would
                // come later. Dropped until the gap is filled.
                return Some((Verdict::OutOfOrder, 0));
            }
            if ahead >= len {
                // Nothing new (a retransmission): charged when first seen.
                return None;
            }
            if ahead > from {
                from = ahead;
            }
            f.framing = c.framing;
            f.trusted = c.framing.is_trusted() as u32;
        }
        None => f.framing = Framing::untrusted(),
    }
    match FWD_CONNS.get_ptr(&f.key) {
        // SAFETY: a live map value (RCU), copied out at once, in place.
        Some(c) => unsafe { core::ptr::copy_nonoverlapping(c, &mut f.conn, 1) },
        None => {
            // A new connection's entry: nothing carried yet (the parse is
            // reset below; set field by field, not built on the stack).
            f.conn.clients = 0;
            f.conn.next_seq = !seq;
        }
    }
    let at = seq.wrapping_add(from);
    if f.conn.next_seq != at {
        // Bytes this parser never saw: wait for the next request start (what
        // the connection carried stays).
        f.conn.idle();
    }
    f.parsed = 1;
    f.pos = from;
    f.end = len;
    f.base = pkt.payload_off as u32;
    f.word_at = u32::MAX;
    f.peer = peer.bucketed(cfg.ipv6_prefix).addr;
    let mut s = Scan {
        skb: ctx.skb.skb,
        fs: fp,
    };
    let rounds = len - from + 4;
    // SAFETY: the callback gets `s`, which lives on this frame for the whole loop.
    unsafe { bpf_loop(rounds, round as *mut c_void, (&raw mut s).cast(), 0) };
    f.conn.next_seq = seq.wrapping_add(len);
    let n = f.pending;
    // SAFETY: as above.
    unsafe { bpf_loop(n, charge_round as *mut c_void, (&raw mut s).cast(), 0) };
    if f.limited != 0 {
        let v = if f.limited == Verdict::Blocked as u32 {
            Verdict::Blocked
        } else if f.limited == Verdict::Denied as u32 {
            Verdict::Denied
        } else {
            Verdict::RateLimited
        };
        return Some((v, f.refused));
    }
    if f.reported != 0 {
        return Some((Verdict::ForwardedReported, f.reported));
    }
    None
}

/// Keeps the parser's state of the segment let through.
#[inline(always)]
pub fn commit() {
    let Some(fp) = FWD_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, filled by `judge` in this run.
    let f = unsafe { &mut *fp };
    if f.parsed == 0 {
        return;
    }
    f.parsed = 0;
    let _ = FWD_CONNS.insert(&f.key, &f.conn, 0);
}

#[repr(C)]
struct Scan {
    skb: *mut __sk_buff,
    fs: *mut FwdScratch,
}

/// One byte a round (a body skipped at once), as the stream stage's framing
/// steps it.
extern "C" fn round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `judge` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, used by this run only.
    let f = unsafe { &mut *s.fs };
    if f.pos >= f.end {
        return 1;
    }
    if f.framing.mode == MODE_BODY {
        f.pos += f.framing.skip_body((f.end - f.pos) as u64) as u32;
        return 0;
    }
    if f.pos < f.word_at || f.pos - f.word_at >= 8 {
        f.word_at = if f.end - f.pos >= 8 { f.pos } else { f.end - 8 };
        // SAFETY: `word` holds 8 bytes; the skb pointer is the program's context.
        let rc = unsafe {
            bpf_skb_load_bytes(
                s.skb as *const c_void,
                f.base.wrapping_add(f.word_at),
                f.word.as_mut_ptr().cast(),
                8,
            )
        };
        if rc != 0 {
            return 1;
        }
    }
    let b = f.word[((f.pos - f.word_at) & 7) as usize];
    f.pos += 1;
    let in_head = f.framing.mode == MODE_HEAD;
    let start = f.framing.step(b);
    let ended = in_head && f.framing.mode != MODE_HEAD;
    let Some(cfg) = CONFIG.get(0) else {
        return 1;
    };
    let header = if cfg.has(flags::FORWARDED_RFC7239) {
        HEADER_FORWARDED
    } else {
        HEADER_XFF
    };
    if let Some(h) = f.conn.byte(header, cfg.forwarded_hops, b, start, ended) {
        note(f, &h);
    }
    0
}

/// Notes a head's client for the charge loop: a run of one client's heads is
/// one entry; past `PENDING` runs, the last entry's client pays for the rest
/// (a segment of that many clients' heads is a proxy's flood).
#[inline(always)]
fn note(f: &mut FwdScratch, h: &Head) {
    let (client, named) = match h.client {
        Some(a) if f.trusted != 0 => (a, 1),
        _ => (f.peer, 0),
    };
    let n = f.pending as usize;
    if n > 0
        && let Some(last) = f.heads.get_mut((n - 1) & (PENDING - 1))
        && ((last.client == client && last.named == named) || n >= PENDING)
    {
        last.count += 1;
        return;
    }
    if let Some(e) = f.heads.get_mut(n & (PENDING - 1)) {
        e.client = client;
        e.named = named;
        e.count = 1;
        f.pending = n as u32 + 1;
    }
}

/// Charges one run of heads.
extern "C" fn charge_round(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `judge` passed to bpf_loop.
    let s = unsafe { &*(ctx as *const Scan) };
    // SAFETY: this CPU's scratch entry, used by this run only.
    let f = unsafe { &mut *s.fs };
    let Some(cfg) = CONFIG.get(0) else {
        return 1;
    };
    let i = (index as usize) & (PENDING - 1);
    let Some(e) = f.heads.get(i) else {
        return 1;
    };
    let (client, count, named) = (e.client, e.count, e.named != 0);
    f.raw = ClientKey { addr: client };
    charge(f, cfg, count, named);
    0
}

/// Charges one request to its client: the lists, its block, its request
/// bucket; refused on a single-client connection, reported on a pooled one.
#[inline(always)]
fn charge(f: &mut FwdScratch, cfg: &Config, count: u32, named: bool) {
    let mut clock = Clock::new();
    f.key_of = if named {
        f.raw.bucketed(cfg.ipv6_prefix)
    } else {
        count::event(Event::ForwardedUnnamed);
        f.raw
    };
    let key = &f.key_of;
    if f.conn.carried(&key.addr) {
        count::event(Event::ForwardedPooled);
    }
    let Some(state) = state_of(f, &mut clock) else {
        count::event(Event::ClientsRefused);
        return;
    };
    let ev = Seen {
        starts: count,
        connection: false,
        named: true,
    };
    count::client(state, ev, &mut clock);
    if f.limited != 0 {
        // The segment is dropped: its later requests come back with it.
        f.refused += count;
        return;
    }
    // The lists hold for a forwarded client as for a direct one (the peer's
    // were asked by the ingress program already).
    let list = if named {
        enforce::lists(cfg, &f.raw, &mut clock)
    } else {
        None
    };
    let over = match list {
        Some(Verdict::Allowed) => None,
        Some(v @ (Verdict::Denied | Verdict::Blocked)) => Some(v),
        _ => {
            if enforce::is_blocked(state, &mut clock) {
                Some(Verdict::Blocked)
            } else {
                let j = enforce::client(cfg, &f.key_of, state, ev, &mut clock);
                if j.verdict == Verdict::Allowed {
                    None
                } else {
                    Some(j.verdict)
                }
            }
        }
    };
    let Some(v) = over else {
        return;
    };
    if f.conn.pooled() {
        f.reported += count;
        report(f, count, &mut clock);
    } else {
        f.limited = v as u32;
        f.refused += count;
    }
}

/// The client's state (`f.key_of`), created when new from what `PENALTIES`
/// kept (as `count::state`, with the new entry built in the scratch).
#[inline(always)]
fn state_of(f: &mut FwdScratch, clock: &mut Clock) -> Option<&'static mut ClientState> {
    if let Some(s) = CLIENTS.get_ptr_mut(&f.key_of) {
        // SAFETY: the map value lives for this program run (RCU).
        return Some(unsafe { &mut *s });
    }
    f.blank = ClientState::default();
    if let Some(p) = PENALTIES.get_ptr(&f.key_of) {
        // SAFETY: a live map value (RCU), read field by field.
        let p = unsafe { &*p };
        if p.in_force(clock.now()) {
            f.blank.blocked_until_ns = p.blocked_until_ns;
            f.blank.request_tat_ns = p.request_tat_ns;
            f.blank.conn_tat_ns = p.conn_tat_ns;
        }
    }
    if CLIENTS
        .insert(&f.key_of, &f.blank, BPF_NOEXIST as u64)
        .is_ok()
    {
        count::event(Event::ClientsCreated);
    }
    // SAFETY: as above.
    CLIENTS.get_ptr_mut(&f.key_of).map(|s| unsafe { &mut *s })
}

/// Notes `n` reported requests of `f.key_of` in `FWD_REPORTED`.
#[inline(always)]
fn report(f: &mut FwdScratch, n: u32, clock: &mut Clock) {
    let now = clock.now();
    if FWD_REPORTED.get_ptr_mut(&f.key_of).is_none() {
        f.no_reports = Reported::default();
        let _ = FWD_REPORTED.insert(&f.key_of, &f.no_reports, BPF_NOEXIST as u64);
    }
    if let Some(r) = FWD_REPORTED.get_ptr_mut(&f.key_of) {
        // SAFETY: a live map value (RCU), updated atomically.
        unsafe {
            atomic::write(&mut (*r).last_ns, now);
            atomic::add(&mut (*r).requests, u64::from(n));
        }
    }
}
