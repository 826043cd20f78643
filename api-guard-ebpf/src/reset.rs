//! `--on-limit reset`: the over-limit request segment becomes a bare RST to the
//! server, so the server frees the connection at once instead of waiting on a
//! client whose request never arrives. The segment keeps its sequence number,
//! which is exactly the one the server expects next, so the RST is accepted
//! (RFC 5961). The client's retransmission then meets no connection and gets a
//! reset from the server.

use api_guard_common::checksum;
use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, helpers::bpf_skb_change_tail, programs::TcContext};

use crate::{
    parse::{TCP_ACK, TCP_MIN_HLEN, TCP_RST, header},
    tail::Handoff,
};

/// Writes with BPF_F_RECOMPUTE_CSUM keep skb->csum right for CHECKSUM_COMPLETE.
const RECOMPUTE: u64 = BPF_F_RECOMPUTE_CSUM as u64;

#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Handoff) -> Result<(), ()> {
    // Keep the headers up to a 20-byte TCP header: no payload, no TCP options.
    let new_len = pkt.l4_off + TCP_MIN_HLEN;
    // SAFETY: the skb pointer is the program's own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len as u32, 0) } != 0 {
        return Err(());
    }
    let ip_len = (new_len - pkt.l3_off) as u16;
    let mut sum = if pkt.ipv6 {
        let ext_and_tcp = ip_len - 40;
        ctx.store(pkt.l3_off + 4, &ext_and_tcp.to_be_bytes(), RECOMPUTE)
            .map_err(|_| ())?;
        let src = header::<16>(ctx, pkt.l3_off + 8).map_err(|_| ())?;
        let dst = header::<16>(ctx, pkt.l3_off + 24).map_err(|_| ())?;
        checksum::pseudo_header(src, dst, TCP_MIN_HLEN as u32)
    } else {
        let ip = header::<20>(ctx, pkt.l3_off).map_err(|_| ())?;
        let old_total = u16::from_ne_bytes([ip[2], ip[3]]);
        let new_total = ip_len.to_be_bytes();
        // No RECOMPUTE here: the IP checksum update below keeps the header's sum
        // unchanged, so skb->csum must not move for this store either.
        ctx.store(pkt.l3_off + 2, &new_total, 0).map_err(|_| ())?;
        ctx.l3_csum_replace(
            pkt.l3_off + 10,
            old_total as u64,
            u16::from_ne_bytes(new_total) as u64,
            2,
        )
        .map_err(|_| ())?;
        let ip = header::<20>(ctx, pkt.l3_off).map_err(|_| ())?;
        checksum::pseudo_header(&ip[12..16], &ip[16..20], TCP_MIN_HLEN as u32)
    };
    // Data offset 5 (no options), flags RST|ACK, checksum zero while summing.
    ctx.store(pkt.l4_off + 12, &[0x50u8, TCP_RST | TCP_ACK], RECOMPUTE)
        .map_err(|_| ())?;
    ctx.store(pkt.l4_off + 16, &[0u8, 0u8], RECOMPUTE)
        .map_err(|_| ())?;
    let tcp = header::<TCP_MIN_HLEN>(ctx, pkt.l4_off).map_err(|_| ())?;
    sum = checksum::add_words(sum, tcp);
    ctx.store(
        pkt.l4_off + 16,
        &checksum::finish(sum).to_be_bytes(),
        RECOMPUTE,
    )
    .map_err(|_| ())
}
