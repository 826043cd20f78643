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
    const SHORT: usize = 4;
    let mut head = [0u8; HEAD_LEN];
    if pkt.payload_len >= HEAD_LEN {
        head = ctx.load::<[u8; HEAD_LEN]>(pkt.payload_off).ok()?;
    } else if pkt.payload_len >= SHORT {
        // "GET " and "PUT " fit in 4 bytes; the matcher ignores bytes past the payload.
        let short = ctx.load::<[u8; SHORT]>(pkt.payload_off).ok()?;
        head[..SHORT].copy_from_slice(&short);
    } else {
        return None;
    }
    http::request_method(&head, pkt.payload_len)
}
