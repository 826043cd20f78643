//! Stage 1, parse: Ethernet (up to two VLAN tags) → IPv4 (with options) or IPv6
//! (skipping extension headers) → TCP. Headers are read by direct packet access,
//! the cheapest way; the payload, which may sit in page fragments, is read later
//! with `bpf_skb_load_bytes`.

use core::mem::size_of;

use api_guard_common::client::ClientKey;
use aya_ebpf::programs::{TcContext, XdpContext};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = 6;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const MAX_IPV6_EXT_HEADERS: usize = 6;

pub const TCP_MIN_HLEN: usize = 20;

/// Offsets past this are not parsed (the verifier needs a bound, and no real header
/// chain is this long).
pub const MAX_L4_OFF: usize = 512;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet was not parsed to TCP.
pub enum Skip {
    /// Not IPv4/IPv6 carrying TCP: not ours to look at.
    NotTcp,
    /// IP carrying TCP whose TCP header cannot be read or trusted here: a
    /// non-first fragment, a first fragment too short for the TCP header, an
    /// extension-header chain longer than we follow, a bad data offset. The
    /// network lists still apply by source address, so fragmenting cannot slip
    /// past a deny or a block.
    Opaque { l3_off: usize, ipv6: bool },
    /// IP headers cut short or inconsistent.
    Malformed,
    /// A header lies past the linear part of the skb: pull and parse again.
    NotLinear,
}

/// What the later stages need from a TCP packet.
pub struct TcpPacket {
    /// Network-layer header offset; the source address is read from it only when
    /// the packet turns out to be for a watched port.
    pub l3_off: usize,
    pub ipv6: bool,
    /// TCP header offset.
    pub l4_off: usize,
    pub dport: u16,
    pub flags: u8,
    /// Offset and length of the TCP payload (length from the IP header, so that
    /// Ethernet padding is never taken for payload).
    pub payload_off: usize,
    pub payload_len: usize,
}

/// A packet the parser reads by direct access: an skb (TC) or an XDP frame.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// The whole packet's length, its page fragments included.
    fn total_len(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len() as usize
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    /// The XDP program is loaded without `frags`: the frame is all linear.
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.data_end() - self.data()
    }
}

#[inline(always)]
fn ptr_at<C: Frame, T>(ctx: &C, off: usize) -> Result<*const T, Skip> {
    let start = ctx.start();
    let end = ctx.end();
    if start + off + size_of::<T>() > end {
        // Past the packet or only past its linear head? The caller decides on a pull.
        return Err(if off + size_of::<T>() <= ctx.total_len() {
            Skip::NotLinear
        } else {
            Skip::Malformed
        });
    }
    Ok((start + off) as *const T)
}

/// A header of `N` bytes at `off`, bounds-checked as a whole: one check per header
/// is cheaper than one per field, and it keeps LLVM from folding a one-byte check
/// into a form the verifier cannot use.
#[inline(always)]
pub fn header<const N: usize>(ctx: &impl Frame, off: usize) -> Result<&[u8; N], Skip> {
    // SAFETY: ptr_at checked that all N bytes lie inside the packet, which stays
    // put for the rest of this program run (nothing here resizes it).
    Ok(unsafe { &*ptr_at::<_, [u8; N]>(ctx, off)? })
}

#[inline(always)]
fn be16(h: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

/// Parses down to TCP.
#[inline(always)]
pub fn tcp<C: Frame>(ctx: &C) -> Result<TcpPacket, Skip> {
    let (ethertype, l3_off) = ethernet(ctx)?;
    let ipv6 = match ethertype {
        ETH_P_IP => false,
        ETH_P_IPV6 => true,
        _ => return Err(Skip::NotTcp),
    };
    let (l4_off, l4_len) = if ipv6 {
        ipv6_l4(ctx, l3_off)?
    } else {
        ipv4_l4(ctx, l3_off)?
    };
    let opaque = Skip::Opaque { l3_off, ipv6 };
    if l4_off > MAX_L4_OFF {
        return Err(opaque);
    }
    let th = match header::<TCP_MIN_HLEN>(ctx, l4_off) {
        Ok(th) => th,
        Err(Skip::NotLinear) => return Err(Skip::NotLinear),
        Err(_) => return Err(opaque),
    };
    let doff = ((th[12] >> 4) as usize) * 4;
    if doff < TCP_MIN_HLEN || doff > l4_len {
        return Err(opaque);
    }
    Ok(TcpPacket {
        l3_off,
        ipv6,
        l4_off,
        dport: be16(th, 2),
        flags: th[13],
        payload_off: l4_off + doff,
        payload_len: l4_len - doff,
    })
}

/// Returns the ethertype after at most two VLAN tags, and the network-header offset.
#[inline(always)]
fn ethernet<C: Frame>(ctx: &C) -> Result<(u16, usize), Skip> {
    let eth = header::<ETH_HLEN>(ctx, 0)?;
    let mut ethertype = be16(eth, 12);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(header::<VLAN_HLEN>(ctx, off)?, 2);
        off += VLAN_HLEN;
    }
    Ok((ethertype, off))
}

/// Returns the TCP header offset and the TCP segment length.
#[inline(always)]
fn ipv4_l4<C: Frame>(ctx: &C, off: usize) -> Result<(usize, usize), Skip> {
    let ip = header::<IPV4_MIN_HLEN>(ctx, off)?;
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = be16(ip, 2) as usize;
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN || total_len < ihl {
        return Err(Skip::Malformed);
    }
    if ip[9] != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    // A non-first fragment carries no TCP header.
    if be16(ip, 6) & 0x1fff != 0 {
        return Err(Skip::Opaque {
            l3_off: off,
            ipv6: false,
        });
    }
    Ok((off + ihl, total_len - ihl))
}

/// Returns the TCP header offset and the TCP segment length, after skipping
/// hop-by-hop, routing, destination-options, fragment and AH extension headers.
#[inline(always)]
fn ipv6_l4<C: Frame>(ctx: &C, off: usize) -> Result<(usize, usize), Skip> {
    let ip = header::<IPV6_HLEN>(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let mut next = ip[6];
    let mut hdr = off + IPV6_HLEN;
    let end = hdr + be16(ip, 4) as usize;
    let opaque = Skip::Opaque {
        l3_off: off,
        ipv6: true,
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP {
            break;
        }
        // Every extension header we skip is at least 8 bytes.
        let ext = match header::<8>(ctx, hdr) {
            Ok(ext) => ext,
            Err(Skip::NotLinear) => return Err(Skip::NotLinear),
            Err(_) => return Err(opaque),
        };
        let len = match next {
            // Hop-by-hop, routing, destination options: (hdr ext len + 1) * 8.
            0 | 43 | 60 => (ext[1] as usize + 1) * 8,
            // Fragment: only the first fragment carries the TCP header.
            44 => {
                if be16(ext, 2) & 0xfff8 != 0 {
                    return Err(opaque);
                }
                8
            }
            // Authentication header: (payload len + 2) * 4.
            51 => (ext[1] as usize + 2) * 4,
            _ => return Err(Skip::NotTcp),
        };
        next = ext[0];
        hdr += len;
        if hdr > MAX_L4_OFF {
            return Err(opaque);
        }
    }
    if next != IPPROTO_TCP {
        // A chain longer than we follow may still end in TCP.
        return Err(opaque);
    }
    if hdr > end {
        return Err(opaque);
    }
    Ok((hdr, end - hdr))
}

/// The client key from the source address of the IP header at `l3_off`.
#[inline(always)]
pub fn source<C: Frame>(ctx: &C, l3_off: usize, ipv6: bool) -> Result<ClientKey, Skip> {
    if ipv6 {
        Ok(ClientKey::v6(*header::<16>(ctx, l3_off + 8)?))
    } else {
        Ok(ClientKey::v4(*header::<4>(ctx, l3_off + 12)?))
    }
}
