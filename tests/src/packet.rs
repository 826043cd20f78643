//! Crafted frames for BPF_PROG_TEST_RUN: Ethernet (optionally VLAN-tagged) carrying
//! IPv4 (optionally with options) or IPv6 (optionally with extension headers) and
//! TCP. The IPv4 header checksum is filled in (the reset rewriter updates it
//! incrementally); TCP checksums are left zero: nothing verifies them on input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    /// TCP options (padded to a multiple of 4 when built).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp {
    /// A data segment (PSH|ACK) carrying `payload`.
    pub fn data(dport: u16, payload: &[u8]) -> Self {
        Self {
            sport: 40000,
            dport,
            seq: 1,
            flags: PSH | ACK,
            options: Vec::new(),
            payload: payload.to_vec(),
        }
    }

    /// A connection attempt.
    pub fn syn(dport: u16) -> Self {
        Self {
            flags: SYN,
            ..Self::data(dport, b"")
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let doff = (20 + options.len()) / 4;
        let mut b = Vec::with_capacity(20 + options.len() + self.payload.len());
        b.extend(self.sport.to_be_bytes());
        b.extend(self.dport.to_be_bytes());
        b.extend(self.seq.to_be_bytes());
        b.extend(0u32.to_be_bytes()); // ack
        b.push((doff as u8) << 4);
        b.push(self.flags);
        b.extend(64240u16.to_be_bytes()); // window
        b.extend([0, 0, 0, 0]); // checksum, urgent pointer
        b.extend(&options);
        b.extend(&self.payload);
        b
    }
}

/// An IPv4 packet around `l4` (protocol `proto`), with `options` after the header.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, options: &[u8], proto: u8, l4: &[u8]) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let ihl = (20 + options.len()) / 4;
    let total = 20 + options.len() + l4.len();
    let mut b = Vec::with_capacity(total);
    b.push(0x40 | ihl as u8);
    b.push(0);
    b.extend((total as u16).to_be_bytes());
    b.extend([0, 1, 0x40, 0]); // id, DF
    b.push(64);
    b.push(proto);
    b.extend([0, 0]);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend(options);
    let check = api_guard_common::checksum::finish(api_guard_common::checksum::add_words(0, &b));
    b[10..12].copy_from_slice(&check.to_be_bytes());
    b.extend(l4);
    b
}

/// An IPv6 extension header: its protocol number and its body after the
/// next-header byte (the builder fills in next header and, where it applies, length).
#[derive(Clone, Debug)]
pub struct Ext {
    pub proto: u8,
    pub body: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop options padded to 8 bytes (PadN).
    pub fn hop_by_hop() -> Self {
        Self {
            proto: 0,
            body: vec![0, 1, 4, 0, 0, 0, 0],
        }
    }

    /// Destination options of `units` × 8 bytes.
    pub fn dest_opts(units: usize) -> Self {
        let mut body = vec![(units - 1) as u8, 1, (units * 8 - 4) as u8];
        body.resize(units * 8 - 1, 0);
        Self { proto: 60, body }
    }

    /// A fragment header; `offset` in 8-byte units, `more` for the MF flag.
    pub fn fragment(offset: u16, more: bool) -> Self {
        let field = (offset << 3) | more as u16;
        let mut body = vec![0];
        body.extend(field.to_be_bytes());
        body.extend([0, 0, 0, 7]);
        Self { proto: 44, body }
    }
}

/// An IPv6 packet around `l4` (protocol `proto`) behind extension headers `exts`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |e| e.proto);
        chain.push(next);
        chain.extend(&ext.body);
    }
    let first = exts.first().map_or(proto, |e| e.proto);
    let payload_len = chain.len() + l4.len();
    let mut b = Vec::with_capacity(40 + payload_len);
    b.extend([0x60, 0, 0, 0]);
    b.extend((payload_len as u16).to_be_bytes());
    b.push(first);
    b.push(64);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend(chain);
    b.extend(l4);
    b
}

/// An Ethernet frame with `vlans` tags (TPIDs, outermost first) around `l3`.
pub fn ethernet(vlans: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in vlans.iter().enumerate() {
        b.extend(tpid.to_be_bytes());
        b.extend((100 + i as u16).to_be_bytes()); // VLAN id
    }
    b.extend(ethertype.to_be_bytes());
    b.extend(l3);
    b
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// 198.18.0.2 → 198.18.0.1: the usual client and server of the crafted packets.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// An untagged TCP frame from `src` to SERVER4 or SERVER6.
pub fn from(src: IpAddr, tcp: &Tcp) -> Vec<u8> {
    match src {
        IpAddr::V4(s) => ethernet(
            &[],
            ETH_P_IP,
            &ipv4(s, SERVER4, &[], IPPROTO_TCP, &tcp.bytes()),
        ),
        IpAddr::V6(s) => ethernet(
            &[],
            ETH_P_IPV6,
            &ipv6(s, SERVER6, &[], IPPROTO_TCP, &tcp.bytes()),
        ),
    }
}

/// An untagged IPv4 TCP frame from CLIENT4 to SERVER4.
pub fn v4(tcp: &Tcp) -> Vec<u8> {
    from(CLIENT4.into(), tcp)
}

/// An untagged IPv6 TCP frame from CLIENT6 to SERVER6.
pub fn v6(tcp: &Tcp) -> Vec<u8> {
    from(CLIENT6.into(), tcp)
}

/// An untagged TCP frame from SERVER4 or SERVER6 to `dst` (a response).
pub fn to(dst: IpAddr, tcp: &Tcp) -> Vec<u8> {
    match dst {
        IpAddr::V4(d) => ethernet(
            &[],
            ETH_P_IP,
            &ipv4(SERVER4, d, &[], IPPROTO_TCP, &tcp.bytes()),
        ),
        IpAddr::V6(d) => ethernet(
            &[],
            ETH_P_IPV6,
            &ipv6(SERVER6, d, &[], IPPROTO_TCP, &tcp.bytes()),
        ),
    }
}
