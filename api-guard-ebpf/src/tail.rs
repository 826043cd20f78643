//! Handing a packet to a tail-called program (sampler, reset rewriter). These run
//! as programs of their own so the verifier checks them once, not once for every
//! parse path of the ingress program. What they need travels in skb->cb.

use aya_ebpf::programs::TcContext;

use crate::{
    maps::TAILS,
    parse::{MAX_L4_OFF, TcpPacket},
};

const IPV6: u32 = 1 << 0;
const RESET: u32 = 1 << 1;
const DROP: u32 = 1 << 2;

/// What the ingress program decided, for the program it tail-calls.
pub struct Handoff {
    pub l3_off: usize,
    pub l4_off: usize,
    pub ipv6: bool,
    pub payload_len: usize,
    pub verdict: u32,
    /// Turn the packet into a RST (`--on-limit reset`).
    pub reset: bool,
    /// Drop the packet (when not reset).
    pub drop: bool,
}

impl Handoff {
    #[inline(always)]
    pub fn new(pkt: &TcpPacket, verdict: u32, reset: bool, drop: bool) -> Self {
        Self {
            l3_off: pkt.l3_off,
            l4_off: pkt.l4_off,
            ipv6: pkt.ipv6,
            payload_len: pkt.payload_len,
            verdict,
            reset,
            drop,
        }
    }

    /// Stores the handoff in skb->cb and tail-calls `slot`. Returns only if the
    /// call failed (nothing in the slot).
    #[inline(always)]
    pub fn call(&self, ctx: &mut TcContext, slot: u32) {
        let cb = ctx.cb_mut();
        cb[0] = self.l3_off as u32;
        cb[1] = self.l4_off as u32;
        cb[2] = (self.ipv6 as u32 * IPV6) | (self.reset as u32 * RESET) | (self.drop as u32 * DROP);
        cb[3] = self.payload_len as u32;
        cb[4] = self.verdict;
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
            verdict: cb[4],
            reset: cb[2] & RESET != 0,
            drop: cb[2] & DROP != 0,
        })
    }
}
