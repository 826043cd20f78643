//! Handing a packet to a tail-called program (sampler, reset rewriter). These run
//! as programs of their own so the verifier checks them once, not once for every
//! parse path of the ingress program. What they need travels in skb->cb.

use aya_ebpf::programs::TcContext;

use api_guard_common::maps::{TAIL_FORWARDED, TAIL_JUDGE_PROXIED, TAIL_JUDGE_PROXIED_TLS};

use crate::{
    maps::TAILS,
    parse::{MAX_L4_OFF, TcpPacket},
};

const IPV6: u32 = 1 << 0;
const RESET: u32 = 1 << 1;
const DROP: u32 = 1 << 2;
/// The client is the one a PROXY header named (in `PROXY_SCRATCH`).
const NAMED: u32 = 1 << 3;
const VERDICT_SHIFT: u32 = 8;

/// What the ingress program decided, for the program it tail-calls.
pub struct Handoff {
    pub l3_off: usize,
    pub l4_off: usize,
    pub ipv6: bool,
    pub payload_len: usize,
    /// Payload offset of the first request start (the sampler captures from it).
    pub start_off: usize,
    pub verdict: u32,
    /// Turn the packet into a RST (`--on-limit reset`).
    pub reset: bool,
    /// Drop the packet (when not reset).
    pub drop: bool,
    /// The client is the one a trusted peer's PROXY header named.
    pub named: bool,
}

impl Handoff {
    #[inline(always)]
    pub fn new(pkt: &TcpPacket, start_off: u32, verdict: u32, reset: bool, drop: bool) -> Self {
        Self {
            l3_off: pkt.l3_off,
            l4_off: pkt.l4_off,
            ipv6: pkt.ipv6,
            payload_len: pkt.payload_len,
            start_off: if start_off as usize > pkt.payload_len {
                0
            } else {
                start_off as usize
            },
            verdict,
            reset,
            drop,
            named: false,
        }
    }

    #[inline(always)]
    pub fn named(mut self, named: bool) -> Self {
        self.named = named;
        self
    }

    /// Stores the handoff in skb->cb and tail-calls `slot`. Returns only if the
    /// call failed (nothing in the slot).
    #[inline(always)]
    pub fn call(&self, ctx: &mut TcContext, slot: u32) {
        let cb = ctx.cb_mut();
        cb[0] = self.l3_off as u32;
        cb[1] = self.l4_off as u32;
        cb[2] = (self.ipv6 as u32 * IPV6)
            | (self.reset as u32 * RESET)
            | (self.drop as u32 * DROP)
            | (self.named as u32 * NAMED)
            | ((self.verdict & 0xff) << VERDICT_SHIFT);
        cb[3] = self.payload_len as u32;
        cb[4] = self.start_off as u32;
        // SAFETY: the context is the program's own; on success the call does not return.
        unsafe { TAILS.tail_call(ctx, slot) };
    }

    /// Reads the handoff in a tail-called program, checked again: the verifier
    /// knows nothing of skb->cb.
    #[inline(always)]
    pub fn load(ctx: &TcContext) -> Option<Self> {
        let cb = ctx.cb();
        let (l3_off, l4_off) = (cb[0] as usize, cb[1] as usize);
        if l4_off > MAX_L4_OFF || l3_off + 20 > l4_off {
            return None;
        }
        Some(Self {
            l3_off,
            l4_off,
            ipv6: cb[2] & IPV6 != 0,
            payload_len: cb[3] as usize,
            start_off: cb[4] as usize,
            verdict: (cb[2] >> VERDICT_SHIFT) & 0xff,
            reset: cb[2] & RESET != 0,
            drop: cb[2] & DROP != 0,
            named: cb[2] & NAMED != 0,
        })
    }
}

/// `Judge::flags`: the packet's source is on the allow list.
const ALLOWED: u32 = 1 << 1;

/// What the ingress program hands the judge: the parsed packet and whether its
/// source is allowed. The judge is verified on its own, with offsets it knows
/// only by the checks in `load`, the same whatever path the parser took.
pub struct Judge {
    pub pkt: TcpPacket,
    pub allowed: bool,
}

impl Judge {
    /// Stores the handoff in skb->cb and tail-calls the judge, or first the
    /// proxy program (`slot` TAIL_PROXY) for a trusted peer. Returns only if the
    /// call failed (nothing in the slot).
    #[inline(always)]
    pub fn call(ctx: &mut TcContext, pkt: &TcpPacket, allowed: bool, slot: u32) {
        let cb = ctx.cb_mut();
        cb[0] = pkt.l3_off as u32;
        cb[1] = pkt.l4_off as u32;
        cb[2] = pkt.payload_off as u32;
        cb[3] = pkt.payload_len as u32;
        cb[4] = ((pkt.dport as u32) << 16)
            | ((pkt.flags as u32) << 8)
            | (allowed as u32 * ALLOWED)
            | pkt.ipv6 as u32;
        // SAFETY: the context is the program's own; on success the call does not return.
        unsafe { TAILS.tail_call(ctx, slot) };
    }

    /// From the proxy program: on to the proxied judge, with the outcome in
    /// `PROXY_SCRATCH` (the skb->cb handoff unchanged). Returns only if the
    /// call failed.
    #[inline(always)]
    pub fn call_proxied(ctx: &mut TcContext, tls: bool) {
        let slot = if tls {
            TAIL_JUDGE_PROXIED_TLS
        } else {
            TAIL_JUDGE_PROXIED
        };
        // SAFETY: the context is the program's own; on success the call does not return.
        unsafe { TAILS.tail_call(ctx, slot) };
    }

    /// From the proxy program: on to the forwarded stage (`--trusted-hops`),
    /// the skb->cb handoff unchanged. Returns only if the call failed.
    #[inline(always)]
    pub fn call_forwarded(ctx: &mut TcContext) {
        // SAFETY: the context is the program's own; on success the call does not return.
        unsafe { TAILS.tail_call(ctx, TAIL_FORWARDED) };
    }

    #[inline(always)]
    pub fn load(ctx: &TcContext) -> Option<Self> {
        let cb = ctx.cb();
        let (l3_off, l4_off, payload_off) = (cb[0] as usize, cb[1] as usize, cb[2] as usize);
        let payload_len = cb[3] as usize;
        if l4_off > MAX_L4_OFF
            || l3_off + 20 > l4_off
            || payload_off < l4_off + 20
            || payload_off > l4_off + 60
            || payload_len > 0xffff
        {
            return None;
        }
        Some(Self {
            pkt: TcpPacket {
                l3_off,
                ipv6: cb[4] & 1 != 0,
                l4_off,
                dport: (cb[4] >> 16) as u16,
                flags: (cb[4] >> 8) as u8,
                payload_off,
                payload_len,
            },
            allowed: cb[4] & ALLOWED != 0,
        })
    }
}
