//! Stage 0, the XDP pre-filter: drops the packets of denied networks, blocked
//! networks and clients serving a block before the kernel builds an skb for
//! them, from the same maps the TC judge reads. It decides nothing else:
//! whatever it passes, the TC program judges in full (limits, HTTP, samples),
//! so a packet it cannot read, or one it may not drop (`--dry-run`, fail-open),
//! simply goes on to TC, which counts it as it always did.

use api_guard_common::{
    config::{Config, flags},
    counters::Verdict,
    http::{self, HEAD_LEN},
};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};

use crate::{
    classify,
    clock::Clock,
    count::{self, Seen},
    enforce,
    maps::{CLIENTS, CONFIG},
    parse::{self, Skip, TcpPacket, header},
    proxy,
};

/// The XDP action for one frame.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let pkt = match parse::tcp(ctx) {
        Ok(pkt) => pkt,
        // A fragment: the lists hold by source address, as in TC.
        Err(Skip::Opaque { l3_off, ipv6 }) => return opaque(ctx, l3_off, ipv6),
        Err(_) => return XDP_PASS,
    };
    if !classify::is_watched(classify::port_flags(&pkt)) {
        return XDP_PASS;
    }
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Ok(source) = parse::source(ctx, pkt.l3_off, pkt.ipv6) else {
        return XDP_PASS;
    };
    let mut clock = Clock::new();
    let verdict = match enforce::lists(cfg, &source, &mut clock) {
        Some(Verdict::Denied) => Verdict::XdpDenied,
        Some(Verdict::Blocked) => Verdict::XdpBlocked,
        // Allowed networks are never dropped.
        Some(_) => return XDP_PASS,
        None => {
            // A trusted peer's packets carry other clients' requests: whose
            // block holds is known in TC only (the PROXY header).
            if !may_serve_block(cfg)
                || cfg.has(flags::HAS_TRUSTED_PROXIES) && proxy::is_trusted(&source)
            {
                return XDP_PASS;
            }
            let key = source.bucketed(cfg.ipv6_prefix);
            let Some(state) = CLIENTS.get_ptr_mut(&key) else {
                return XDP_PASS;
            };
            // SAFETY: a live map value (RCU) for this program run.
            let state = unsafe { &mut *state };
            if !enforce::is_blocked(state, &mut clock) {
                return XDP_PASS;
            }
            let ev = seen(ctx, &pkt);
            // The client's own counts go on as TC keeps them for a blocked client.
            count::client(state, ev, &mut clock);
            return drop(cfg, ev, Verdict::XdpBlocked, &mut clock);
        }
    };
    drop(cfg, seen(ctx, &pkt), verdict, &mut clock)
}

/// Whether any client can be serving a per-client block: only `--block-for`
/// sets one. (A block adopted from a daemon with other flags is still dropped,
/// by TC.) Spares the allowed path the client lookup.
#[inline(always)]
fn may_serve_block(cfg: &Config) -> bool {
    cfg.block_ns != 0
}

/// Drops and counts, unless `--dry-run` or fail-open lets the packet through:
/// then it passes uncounted, and TC counts what it would have done.
#[inline(always)]
fn drop(cfg: &Config, ev: Seen, verdict: Verdict, clock: &mut Clock) -> u32 {
    if enforce::released(cfg, clock).is_some() {
        return XDP_PASS;
    }
    count::verdicts(ev, verdict);
    XDP_DROP
}

/// A fragment from a denied or blocked network is dropped; any other goes to TC.
#[inline(always)]
fn opaque(ctx: &XdpContext, l3_off: usize, ipv6: bool) -> u32 {
    let (Some(cfg), Ok(source)) = (CONFIG.get(0), parse::source(ctx, l3_off, ipv6)) else {
        return XDP_PASS;
    };
    let mut clock = Clock::new();
    let verdict = match enforce::lists(cfg, &source, &mut clock) {
        Some(Verdict::Denied) => Verdict::XdpDenied,
        Some(Verdict::Blocked) => Verdict::XdpBlocked,
        _ => return XDP_PASS,
    };
    let ev = Seen {
        starts: 0,
        connection: false,
        named: false,
    };
    drop(cfg, ev, verdict, &mut clock)
}

/// What a dropped packet carried, told as TC tells a packet dropped before its
/// stream stage: a connection attempt, and a request by its method token.
#[inline(always)]
fn seen(ctx: &XdpContext, pkt: &TcpPacket) -> Seen {
    Seen {
        starts: request_method(ctx, pkt) as u32,
        connection: classify::is_connection_start(pkt),
        named: false,
    }
}

/// Whether the payload starts with a method token (as `classify::request_method`).
#[inline(always)]
fn request_method(ctx: &XdpContext, pkt: &TcpPacket) -> bool {
    let mut head = [0u8; HEAD_LEN];
    let off = pkt.payload_off;
    // Constant-size reads only; the matcher ignores bytes past the payload.
    let read = match pkt.payload_len {
        0..=3 => return false,
        4 => header::<4>(ctx, off).map(|h| head[..4].copy_from_slice(h)),
        5 => header::<5>(ctx, off).map(|h| head[..5].copy_from_slice(h)),
        6 => header::<6>(ctx, off).map(|h| head[..6].copy_from_slice(h)),
        7 => header::<7>(ctx, off).map(|h| head[..7].copy_from_slice(h)),
        _ => header::<HEAD_LEN>(ctx, off).map(|h| head = *h),
    };
    read.is_ok() && http::request_method(&head, pkt.payload_len).is_some()
}
