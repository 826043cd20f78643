//! Stage 2, classify: is the packet for a watched port, does it open a connection,
//! does its payload start an HTTP request?

use api_guard_common::{
    http::{self, HEAD_LEN, Method},
    ports,
};
use aya_ebpf::programs::TcContext;

use crate::{
    maps::PORTS,
    parse::{TCP_ACK, TCP_SYN, TcpPacket},
};

/// The port flags of the packet's destination port (0 when not watched).
#[inline(always)]
pub fn port_flags(pkt: &TcpPacket) -> u8 {
    flags_of_port(pkt.dport)
}

#[inline(always)]
pub fn flags_of_port(port: u16) -> u8 {
    PORTS.get(port as u32).copied().unwrap_or(0)
}

#[inline(always)]
pub fn is_watched(flags: u8) -> bool {
    flags & ports::WATCHED != 0
}

/// A connection attempt: SYN without ACK.
#[inline(always)]
pub fn is_connection_start(pkt: &TcpPacket) -> bool {
    pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The HTTP method when the payload starts a request.
#[inline(always)]
pub fn request_method(ctx: &TcContext, pkt: &TcpPacket) -> Option<Method> {
    let mut head = [0u8; HEAD_LEN];
    let off = pkt.payload_off;
    // Constant-size loads only (the verifier's rule); the matcher ignores bytes
    // past the payload.
    match pkt.payload_len {
        0..=3 => return None,
        4 => head[..4].copy_from_slice(&ctx.load::<[u8; 4]>(off).ok()?),
        5 => head[..5].copy_from_slice(&ctx.load::<[u8; 5]>(off).ok()?),
        6 => head[..6].copy_from_slice(&ctx.load::<[u8; 6]>(off).ok()?),
        7 => head[..7].copy_from_slice(&ctx.load::<[u8; 7]>(off).ok()?),
        _ => head = ctx.load::<[u8; HEAD_LEN]>(off).ok()?,
    }
    http::request_method(&head, pkt.payload_len)
}
