//! Stage 2b, proxy: who the client of a `--trusted-proxy` peer's connection is.
//! The PROXY header at the start of each such connection (v1 or v2, parsed by
//! `api_guard_common::proxy`, whatever the segmentation) names the client; it is
//! kept per connection in `PROXY_CONNS` and is the client key for every request
//! and for the connection limits on that connection. The header's bytes are no
//! request: the stream stage skips them. Peers outside the trusted networks are
//! never parsed, so their PROXY bytes are just bytes.

use core::{ffi::c_void, ptr::read_volatile};

use api_guard_common::{
    client::ClientKey,
    config::{Config, flags},
    conn::ConnKey,
    counters::{Event, Verdict},
    proxy::{PROXY_CLIENT, PROXY_CONN_COUNTED, PROXY_LOCAL, PROXY_PENDING, ProxyConn},
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::{bpf_loop, bpf_skb_load_bytes},
    maps::lpm_trie::Key,
    programs::{SockOpsContext, TcContext},
};

use crate::{
    atomic,
    clock::Clock,
    count, enforce,
    maps::{OPEN_CONNS, PROXY_CONNS, PROXY_SCRATCH, TRUSTED_PROXIES},
    parse::{TCP_ACK, TCP_SYN, TcpPacket},
    stream,
};

/// Who a trusted peer's segment is charged to (`Outcome::identity`).
/// The peer itself: its connection's header named no client (`LOCAL`,
/// `UNKNOWN`), or carried none under `--proxy-protocol optional`, or the
/// connection's start was not seen.
pub const ID_PEER: u8 = 0;
/// The client its PROXY header named ([`named_client`]).
pub const ID_NAMED: u8 = 1;
/// Header bytes only so far: nobody to charge yet.
pub const ID_PENDING: u8 = 2;
/// No valid header under `--proxy-protocol required`: reset.
pub const ID_MISSING: u8 = 3;
/// Bytes past a gap in an unfinished header (sent out of order): dropped, the
/// sender sends them again once the gap is filled.
pub const ID_GAP: u8 = 4;

/// What the proxy program decided, for the judge (through `PROXY_SCRATCH`).
pub struct Outcome {
    pub identity: u8,
    /// Who is charged: the named client, or the peer.
    pub client: [u8; 16],
    /// The header was decided in this segment: the client's connection begins
    /// here (for `--conn-rate` and the connection counts).
    pub opened: bool,
    /// Stream bytes before this sequence number are the header's (the stream
    /// stage skips them; the segment's own number when none are).
    pub skip_before: u32,
    /// The lists' verdict for the named client (allow, deny, block), if one
    /// matched.
    pub list: Option<Verdict>,
}

/// The connection's key and entry while a segment is fed, and the feed's
/// cursor: in map memory (the stack is the pipeline's), so the loop's rounds
/// see unknown values and converge.
#[repr(C)]
pub struct ProxyScratch {
    key: ConnKey,
    pub conn: ProxyConn,
    /// skb offset of the payload; the next payload byte to read, and the end.
    base: u32,
    pos: u32,
    end: u32,
    byte: [u8; 4],
    /// The outcome, for the judge.
    client: [u8; 16],
    identity: u32,
    opened: u32,
    skip_before: u32,
    /// `Verdict as u32 + 1` of the lists for a named client; 0: none matched.
    list: u32,
}

/// The packet's source, read with a helper: packet pointers checked against
/// offsets the verifier knows only from `Judge::load` are refused once LLVM
/// merges the checks.
#[inline(always)]
pub fn peer(ctx: &TcContext, pkt: &TcpPacket) -> Option<ClientKey> {
    if pkt.ipv6 {
        ctx.load::<[u8; 16]>(pkt.l3_off + 8).ok().map(ClientKey::v6)
    } else {
        ctx.load::<[u8; 4]>(pkt.l3_off + 12).ok().map(ClientKey::v4)
    }
}

/// Whether `source` is a `--trusted-proxy` peer.
#[inline(always)]
pub fn is_trusted(source: &ClientKey) -> bool {
    TRUSTED_PROXIES.get(&Key::new(128, source.addr)).is_some()
}

/// Decides who `pkt`, from the trusted peer `source`, is charged to, and
/// leaves the [`Outcome`] in this CPU's scratch for the judge; the network
/// lists hold for a named client as for a direct one.
#[inline(always)]
pub fn identify(ctx: &TcContext, pkt: &TcpPacket, source: &ClientKey, cfg: &Config) {
    let required = cfg.has(flags::PROXY_REQUIRED);
    let Some(scp) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let sc = unsafe { &mut *scp };
    sc.identity = ID_PEER as u32;
    sc.client = source.addr;
    sc.opened = 0;
    sc.list = 0;
    sc.skip_before = 0;
    let Some(seq) = stream::conn_key_loaded(ctx, pkt, &source.addr, &mut sc.key) else {
        return;
    };
    // Nothing to skip unless a header says so (a SYN's data starts after it).
    let syn = pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    sc.skip_before = if syn { seq.wrapping_add(1) } else { seq };
    let len = pkt.payload_len as u32;
    let mut data_seq = seq;
    let mut changed = false;
    if syn {
        // A new connection (or a port reused): its header starts after the SYN.
        sc.conn.header.reset();
        sc.conn.start_seq = seq.wrapping_add(1);
        sc.conn.flags = 0;
        data_seq = seq.wrapping_add(1);
        changed = true;
    } else {
        match PROXY_CONNS.get_ptr(&sc.key) {
            // SAFETY: a live map value (RCU), copied out at once, in place (not
            // through the stack).
            Some(c) => unsafe { core::ptr::copy_nonoverlapping(c, &mut sc.conn, 1) },
            None => {
                if len > 0 {
                    count::event(Event::ProxyUnknownStreams);
                }
                return;
            }
        }
    }
    let before = sc.conn.header.state;
    if before == PROXY_PENDING && len > 0 {
        // Where the segment stands against the header bytes taken so far.
        let off = data_seq.wrapping_sub(sc.conn.start_seq) as i32 as i64;
        let got = sc.conn.header.got as i64;
        if off > got {
            sc.identity = ID_GAP as u32;
            sc.skip_before = sc.conn.end_seq();
            return;
        }
        let from = got - off;
        if from < len as i64 {
            feed(ctx, pkt, sc, from as u32, len);
            changed = true;
        }
    }
    if changed {
        // An LRU map: a full one evicts its least recently seen connection, whose
        // next segment is then charged to the peer (counted).
        let _ = PROXY_CONNS.insert(&sc.key, &sc.conn, 0);
    }
    let state = sc.conn.header.state;
    let opened = before == PROXY_PENDING && state != PROXY_PENDING;
    let identity = match state {
        PROXY_PENDING => ID_PENDING,
        PROXY_CLIENT => {
            if opened {
                count::event(Event::ProxyClients);
            }
            sc.client = sc.conn.header.client;
            let named = ClientKey { addr: sc.client };
            if let Some(v) = enforce::lists(cfg, &named, &mut Clock::new()) {
                sc.list = v as u32 + 1;
            }
            ID_NAMED
        }
        PROXY_LOCAL => ID_PEER,
        _ => {
            if opened {
                count::event(Event::ProxyHeaderMissing);
            }
            if required { ID_MISSING } else { ID_PEER }
        }
    };
    sc.identity = identity as u32;
    sc.opened = opened as u32;
    sc.skip_before = sc.conn.end_seq();
}

/// `Outcome::skip_before` alone.
#[inline(always)]
pub fn skip_before() -> u32 {
    // SAFETY: this CPU's scratch entry, filled by `identify` in this run.
    PROXY_SCRATCH
        .get_ptr(0)
        .map_or(0, |sc| unsafe { (*sc).skip_before })
}

/// `Outcome::client` in place (the peer, for a connection that named none).
#[inline(always)]
pub fn client() -> Option<&'static ClientKey> {
    // SAFETY: this CPU's scratch entry, filled by `identify` in this run; a
    // ClientKey is its 16 bytes.
    PROXY_SCRATCH
        .get_ptr(0)
        .map(|sc| unsafe { &*(&raw const (*sc).client).cast::<ClientKey>() })
}

/// Marks the outcome's client as exempt for the judge (the lists' allow):
/// the forwarded stage charged the peer's requests to their clients.
#[inline(always)]
pub fn exempt() {
    if let Some(sc) = PROXY_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch entry, filled by `identify` in this run.
        unsafe { (*sc).list = Verdict::Allowed as u32 + 1 };
    }
}

/// What `identify` decided for this packet (in the same program run).
#[inline(always)]
pub fn outcome() -> Outcome {
    let Some(sc) = PROXY_SCRATCH.get_ptr(0) else {
        return Outcome {
            identity: ID_PEER,
            client: [0; 16],
            opened: false,
            skip_before: 0,
            list: None,
        };
    };
    // SAFETY: this CPU's scratch entry, filled by `identify` in this run.
    let sc = unsafe { &*sc };
    Outcome {
        identity: sc.identity as u8,
        client: sc.client,
        opened: sc.opened != 0,
        skip_before: sc.skip_before,
        list: match sc.list {
            0 => None,
            v if v == Verdict::Allowed as u32 + 1 => Some(Verdict::Allowed),
            v if v == Verdict::Denied as u32 + 1 => Some(Verdict::Denied),
            _ => Some(Verdict::Blocked),
        },
    }
}

/// Counts the named client's new connection in `OPEN_CONNS` (for
/// `--max-conns`), to be taken out by [`closed`] when the connection closes.
/// Only while `--max-conns` is set: the connection tracker that sees the close
/// is attached only then.
#[inline(always)]
pub fn count_open(key: &ClientKey) {
    let Some(sc) = PROXY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch entry, filled by `identify` in this run.
    let sc = unsafe { &mut *sc };
    if OPEN_CONNS.get_ptr_mut(key).is_none()
        && OPEN_CONNS.insert(key, &0, BPF_NOEXIST as u64).is_err()
        && OPEN_CONNS.get_ptr_mut(key).is_none()
    {
        count::event(Event::OpenConnsFull);
        return;
    }
    let Some(n) = OPEN_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the map value lives for this program run (RCU).
    atomic::add(unsafe { &mut *n }, 1);
    sc.conn.flags |= PROXY_CONN_COUNTED;
    let _ = PROXY_CONNS.insert(&sc.key, &sc.conn, 0);
}

/// A trusted peer's connection closed (sock_ops): its named client's count is
/// taken out, and the connection forgotten. `peer` is the peer's address (not
/// bucketed), `port` the server's.
#[inline(always)]
pub fn closed(ctx: &SockOpsContext, peer: &ClientKey, port: u16, ipv6_prefix: u32) {
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's context; the fields are readable in
    // sock_ops. Each its own load, as in sockops.rs.
    let (family, local4, local6, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    let server = if family == AF_INET {
        let [a, b, c, d] = local4.to_ne_bytes();
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
    } else {
        let (w0, w1, w2, w3) = (
            local6[0].to_ne_bytes(),
            local6[1].to_ne_bytes(),
            local6[2].to_ne_bytes(),
            local6[3].to_ne_bytes(),
        );
        [
            w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
            w3[0], w3[1], w3[2], w3[3],
        ]
    };
    let key = ConnKey {
        client: peer.addr,
        server,
        // remote_port holds the port in network order in its upper 16 bits.
        client_port: u32::from_be(remote_port) as u16,
        server_port: port,
        _pad: 0,
    };
    // SAFETY: a live map value (RCU), copied out at once.
    let Some(conn) = PROXY_CONNS.get_ptr(&key).map(|c| unsafe { *c }) else {
        return;
    };
    let _ = PROXY_CONNS.remove(&key);
    if conn.flags & PROXY_CONN_COUNTED == 0 {
        return;
    }
    let named = ClientKey {
        addr: conn.header.client,
    }
    .bucketed(ipv6_prefix);
    let Some(n) = OPEN_CONNS.get_ptr_mut(&named) else {
        return;
    };
    // SAFETY: as in sockops.rs: never below zero.
    if atomic::dec_floor(unsafe { &mut *n }) == 0 {
        let _ = OPEN_CONNS.remove(&named);
    }
}

const AF_INET: u32 = 2;

/// Who the last `identify` on this CPU charged (the named client, or the
/// peer), in the same program run.
#[inline(always)]
pub fn named_client() -> Option<[u8; 16]> {
    let sc = PROXY_SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's scratch entry, filled by `identify` in this run.
    Some(unsafe { (*sc).client })
}

/// The client a trusted peer's PROXY header named on connection `key` (peer
/// side as the client), for the programs that see the connection without the
/// ingress path's scratch: egress (response records join their requests on
/// the same client) and the libssl uprobes (charged to the named client).
#[inline(always)]
pub fn named_by_conn(cfg: &api_guard_common::config::Config, key: &ConnKey) -> Option<[u8; 16]> {
    if !cfg.has(api_guard_common::config::flags::HAS_TRUSTED_PROXIES) {
        return None;
    }
    let p = PROXY_CONNS.get_ptr(key)?;
    // SAFETY: a live map value, read at once.
    let h = unsafe { &(*p).header };
    (h.state == api_guard_common::proxy::PROXY_CLIENT).then_some(h.client)
}

/// What the `bpf_loop` callback needs that only the stack can carry.
#[repr(C)]
struct Feed {
    skb: *mut __sk_buff,
    sc: *mut ProxyScratch,
}

/// Feeds payload bytes `from..to` to the connection's header parser.
#[inline(always)]
fn feed(ctx: &TcContext, pkt: &TcpPacket, sc: &mut ProxyScratch, from: u32, to: u32) {
    sc.base = pkt.payload_off as u32;
    sc.pos = from;
    sc.end = to;
    let mut f = Feed {
        skb: ctx.skb.skb,
        sc,
    };
    // A round takes a byte or skips bytes that carry nothing, or ends the loop,
    // so one more round than bytes always reaches the end.
    let rounds = (to - from) + 1;
    // SAFETY: the callback gets `f`, which lives on this frame for the whole loop.
    unsafe { bpf_loop(rounds, feed_round as *mut c_void, (&raw mut f).cast(), 0) };
}

extern "C" fn feed_round(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Feed` that `feed` passed to bpf_loop.
    let f = unsafe { &*(ctx as *const Feed) };
    // SAFETY: this CPU's scratch entry, set by `feed`, used by this run only.
    let sc = unsafe { &mut *f.sc };
    if sc.pos >= sc.end || sc.conn.header.state != PROXY_PENDING {
        return 1;
    }
    let skippable = sc.conn.header.skippable();
    if skippable > 0 {
        let avail = sc.end - sc.pos;
        let n = if skippable < avail { skippable } else { avail };
        sc.conn.header.skip(n);
        sc.pos += n;
        return 0;
    }
    // SAFETY: `byte` holds 4 bytes; the skb pointer is the program's context.
    let rc = unsafe {
        bpf_skb_load_bytes(
            f.skb as *const c_void,
            sc.base.wrapping_add(sc.pos),
            sc.byte.as_mut_ptr().cast(),
            1,
        )
    };
    if rc != 0 {
        return 1;
    }
    sc.conn.header.step(sc.byte[0]);
    sc.pos += 1;
    0
}

// No implicit padding: the verifier refuses reads of uninitialised stack.
const _: () = assert!(core::mem::size_of::<Feed>() == 16);
