//! The PROXY protocol (HAProxy's `doc/proxy-protocol.txt`, versions 1 and 2) as
//! a byte-at-a-time parser: a load balancer that keeps no client address in the
//! packets (HAProxy in TCP mode, cloud NLBs) sends one header at the start of
//! each connection naming the client. The kernel feeds the parser the
//! connection's first bytes, whatever the segmentation, keeping it per
//! connection (the `PROXY_CONNS` map) between segments; only connections from
//! `--trusted-proxy` peers are parsed, so no one else can name a client.
//!
//! What is read: v2 (binary) `PROXY` and `LOCAL` commands, TCP over IPv4
//! (family 0x11) and IPv6 (0x21), TLVs skipped; v1 (text) `TCP4`, `TCP6` and
//! `UNKNOWN`. The client is the header's *source* address. A header without a
//! client (`LOCAL`, `UNKNOWN`, another family) is the balancer's own connection
//! ([`PROXY_LOCAL`]). Anything else, including a v1 IPv6 source written with an
//! embedded IPv4 part (`::ffff:1.2.3.4`) or a v1 line over 107 bytes, is
//! [`PROXY_INVALID`].

/// `ProxyHeader::state`: more header bytes are needed.
pub const PROXY_PENDING: u8 = 0;
/// A whole header naming a client (`ProxyHeader::client`).
pub const PROXY_CLIENT: u8 = 1;
/// A whole header naming no client: the balancer's own connection.
pub const PROXY_LOCAL: u8 = 2;
/// No PROXY header, or a malformed one.
pub const PROXY_INVALID: u8 = 3;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 preamble.
const V1_PREAMBLE: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included (the spec's bound).
pub const V1_MAX_LEN: u32 = 107;
/// The v2 fixed part: signature, command, family, length.
pub const V2_FIXED_LEN: u32 = 16;

const FAM_TCP4: u8 = 0x11;
const FAM_TCP6: u8 = 0x21;

/// `ProxyHeader::field` in v1.
const F_PROTO: u8 = 0;
const F_SRC4: u8 = 1;
const F_SRC6: u8 = 2;
const F_REST: u8 = 3;

/// `ProxyHeader::flags`.
/// The header names no client (v2 `LOCAL`, v1 `UNKNOWN`).
const LOCAL: u8 = 1 << 0;
/// v1: the last byte was CR.
const CR: u8 = 1 << 1;

/// `ProxyHeader::prev` in a v1 IPv6 source: what the last byte was.
const P_START: u8 = 0;
const P_DIGIT: u8 = 1;
const P_COLON: u8 = 2;
/// A single colon at the very start (must be the first of `::`).
const P_LEAD: u8 = 3;
const P_DOUBLE: u8 = 4;

const NO_GAP: u8 = 0xff;

/// Where a connection's PROXY header parser stands.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client the header names, 16 bytes, IPv4 as IPv4-mapped IPv6 (valid in
    /// [`PROXY_CLIENT`]).
    pub client: [u8; 16],
    /// An IPv6 source's groups read so far (v1), or its bytes (v2). Written and
    /// read at constant offsets only (`set_group`, `group`): the verifier
    /// refuses an index whose bound LLVM checked on another copy of it.
    groups: [u16; 8],
    /// Header bytes taken so far.
    pub got: u32,
    /// v2: the whole header's length, once its fixed part is read (0 before).
    /// v1: the octets of an IPv4 source read so far.
    need: u32,
    /// v1: the number being read; v2: the length's high byte, then an IPv4
    /// source's bytes.
    acc: u32,
    /// `PROXY_*`.
    pub state: u8,
    /// 1 or 2 once the first byte is read, else 0.
    pub version: u8,
    /// v1: the field being read (`F_*`); v2: the address family.
    field: u8,
    /// v1: digits of the number, or bytes of the protocol token, read so far.
    digits: u8,
    /// v1: octets or groups of the source read so far.
    parts: u8,
    /// v1 IPv6: where `::` stands among the groups (`NO_GAP` if none).
    gap: u8,
    flags: u8,
    /// v1 IPv6: `P_*`.
    prev: u8,
}

impl Default for ProxyHeader {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyHeader {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            client: [0; 16],
            groups: [0; 8],
            got: 0,
            need: 0,
            acc: 0,
            state: PROXY_PENDING,
            version: 0,
            field: 0,
            digits: 0,
            parts: 0,
            gap: NO_GAP,
            flags: 0,
            prev: P_START,
        }
    }

    /// Back to [`ProxyHeader::new`], field by field (the kernel's copy lives in
    /// map memory; a whole new value would be built on its small stack).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.client = [0; 16];
        self.groups = [0; 8];
        self.got = 0;
        self.need = 0;
        self.acc = 0;
        self.state = PROXY_PENDING;
        self.version = 0;
        self.field = 0;
        self.digits = 0;
        self.parts = 0;
        self.gap = NO_GAP;
        self.flags = 0;
        self.prev = P_START;
    }

    /// v2 header bytes that carry nothing read here (the destination, ports and
    /// TLVs after the source): the caller may skip up to this many at once with
    /// [`ProxyHeader::skip`].
    #[inline(always)]
    pub fn skippable(&self) -> u32 {
        if self.state != PROXY_PENDING || self.version != 2 || self.need == 0 {
            return 0;
        }
        let src = match self.field {
            FAM_TCP4 => 4,
            FAM_TCP6 => 16,
            _ => 0,
        };
        if self.got < V2_FIXED_LEN + src {
            return 0;
        }
        self.need.saturating_sub(self.got)
    }

    /// Takes `n` bytes (at most [`ProxyHeader::skippable`]) without looking.
    #[inline(always)]
    pub fn skip(&mut self, n: u32) {
        self.got += n;
        self.finish_v2();
    }

    /// Feeds one header byte (the state must be [`PROXY_PENDING`]).
    #[inline(always)]
    pub fn step(&mut self, b: u8) {
        if self.state != PROXY_PENDING {
            return;
        }
        if self.got == 0 {
            self.version = match b {
                b'\r' => 2,
                b'P' => 1,
                _ => return self.invalid(),
            };
        }
        let before = self.got;
        if self.version == 2 {
            self.v2(b);
        } else {
            self.v1(b);
        }
        if self.state == PROXY_INVALID {
            // The byte that broke the header is not the header's: it is the
            // stream's first byte after what was taken.
            self.got = before;
        }
    }

    #[inline(always)]
    fn invalid(&mut self) {
        self.state = PROXY_INVALID;
    }

    #[inline(always)]
    fn v2(&mut self, b: u8) {
        let at = self.got;
        if at < 12 {
            if b != V2_SIGNATURE[at as usize % 12] {
                return self.invalid();
            }
        } else if at == 12 {
            if b >> 4 != 2 {
                return self.invalid();
            }
            match b & 0x0f {
                0 => self.flags |= LOCAL,
                1 => {}
                _ => return self.invalid(),
            }
        } else if at == 13 {
            self.field = b;
        } else if at == 14 {
            self.acc = b as u32;
        } else if at == 15 {
            let len = (self.acc << 8) | b as u32;
            let addrs = match self.field {
                FAM_TCP4 => 12,
                FAM_TCP6 => 36,
                _ => 0,
            };
            if len < addrs {
                return self.invalid();
            }
            self.need = V2_FIXED_LEN + len;
        } else {
            // The source address: the first 4 or 16 bytes after the fixed part.
            let i = at - V2_FIXED_LEN;
            if at == V2_FIXED_LEN {
                self.acc = 0;
            }
            if self.field == FAM_TCP4 && i < 4 {
                self.acc = (self.acc << 8) | b as u32;
            } else if self.field == FAM_TCP6 && i < 16 {
                let k = (i / 2) as u8;
                let g = (self.group(k) << 8) | b as u16;
                self.set_group(k, g);
            }
        }
        self.got += 1;
        self.finish_v2();
    }

    #[inline(always)]
    fn finish_v2(&mut self) {
        if self.need == 0 || self.got < self.need {
            return;
        }
        if self.flags & LOCAL != 0 || (self.field != FAM_TCP4 && self.field != FAM_TCP6) {
            self.state = PROXY_LOCAL;
            return;
        }
        if self.field == FAM_TCP4 {
            self.client_v4(self.acc);
        } else {
            self.parts = 8;
            self.gap = NO_GAP;
            self.expand();
        }
        self.state = PROXY_CLIENT;
    }

    #[inline(always)]
    fn v1(&mut self, b: u8) {
        let at = self.got;
        if at >= V1_MAX_LEN {
            return self.invalid();
        }
        self.got += 1;
        if at < 6 {
            if b != V1_PREAMBLE[at as usize % 6] {
                self.invalid();
            }
            return;
        }
        match self.field {
            F_PROTO => self.v1_proto(b),
            F_SRC4 => self.v1_src4(b),
            F_SRC6 => self.v1_src6(b),
            _ => self.v1_rest(b),
        }
    }

    /// `TCP4 `, `TCP6 ` or `UNKNOWN`.
    #[inline(always)]
    fn v1_proto(&mut self, b: u8) {
        let k = self.digits;
        self.digits += 1;
        let ok = match k {
            0 if b == b'U' => {
                // UNKNOWN: the rest of the line is ignored.
                self.flags |= LOCAL;
                self.field = F_REST;
                true
            }
            0 => b == b'T',
            1 => b == b'C',
            2 => b == b'P',
            3 => {
                self.parts = match b {
                    b'4' => 4,
                    b'6' => 6,
                    _ => 0,
                };
                self.parts != 0
            }
            _ => {
                if b != b' ' {
                    false
                } else {
                    self.field = if self.parts == 4 { F_SRC4 } else { F_SRC6 };
                    self.parts = 0;
                    self.digits = 0;
                    true
                }
            }
        };
        if !ok {
            self.invalid();
        }
    }

    /// A dotted-quad source, up to the space after it.
    #[inline(always)]
    fn v1_src4(&mut self, b: u8) {
        match b {
            b'0'..=b'9' => {
                self.acc = self.acc * 10 + (b - b'0') as u32;
                self.digits += 1;
                if self.digits > 3 || self.acc > 255 {
                    self.invalid();
                }
            }
            b'.' | b' ' => {
                let last = b == b' ';
                if self.digits == 0 || (last && self.parts != 3) || (!last && self.parts >= 3) {
                    return self.invalid();
                }
                self.need = (self.need << 8) | self.acc;
                self.parts += 1;
                self.acc = 0;
                self.digits = 0;
                if last {
                    self.client_v4(self.need);
                    self.field = F_REST;
                }
            }
            _ => self.invalid(),
        }
    }

    /// An IPv6 source in hex groups, `::` allowed once, up to the space after it.
    #[inline(always)]
    fn v1_src6(&mut self, b: u8) {
        let hex = match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        };
        if let Some(h) = hex {
            if self.prev == P_LEAD || self.digits >= 4 {
                return self.invalid();
            }
            self.acc = (self.acc << 4) | h as u32;
            self.digits += 1;
            self.prev = P_DIGIT;
            return;
        }
        match (b, self.prev) {
            (b':', P_DIGIT) => {
                if !self.push_group() {
                    return self.invalid();
                }
                self.prev = P_COLON;
            }
            (b':', P_START) => self.prev = P_LEAD,
            (b':', P_LEAD | P_COLON) => {
                if self.gap != NO_GAP {
                    return self.invalid();
                }
                self.gap = self.parts;
                self.prev = P_DOUBLE;
            }
            (b' ', P_DIGIT | P_DOUBLE) => {
                if self.prev == P_DIGIT && !self.push_group() {
                    return self.invalid();
                }
                let whole = if self.gap == NO_GAP {
                    self.parts == 8
                } else {
                    self.parts < 8
                };
                if !whole {
                    return self.invalid();
                }
                self.expand();
                self.field = F_REST;
            }
            _ => self.invalid(),
        }
    }

    #[inline(always)]
    fn push_group(&mut self) -> bool {
        if self.parts >= 8 {
            return false;
        }
        self.set_group(self.parts, self.acc as u16);
        self.parts += 1;
        self.acc = 0;
        self.digits = 0;
        true
    }

    #[inline(always)]
    fn group(&self, k: u8) -> u16 {
        match k {
            0 => self.groups[0],
            1 => self.groups[1],
            2 => self.groups[2],
            3 => self.groups[3],
            4 => self.groups[4],
            5 => self.groups[5],
            6 => self.groups[6],
            7 => self.groups[7],
            _ => 0,
        }
    }

    #[inline(always)]
    fn set_group(&mut self, k: u8, v: u16) {
        match k {
            0 => self.groups[0] = v,
            1 => self.groups[1] = v,
            2 => self.groups[2] = v,
            3 => self.groups[3] = v,
            4 => self.groups[4] = v,
            5 => self.groups[5] = v,
            6 => self.groups[6] = v,
            7 => self.groups[7] = v,
            _ => {}
        }
    }

    /// An IPv4 client (its 4 bytes in `v`, the first the highest), mapped.
    #[inline(always)]
    fn client_v4(&mut self, v: u32) {
        let [a, b, c, d] = v.to_be_bytes();
        self.client = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d];
    }

    /// The group at `i` of the whole address: zeros where `::` stands.
    #[inline(always)]
    fn expanded(&self, i: u8) -> u16 {
        let zeros = 8 - self.parts;
        if self.gap == NO_GAP || i < self.gap {
            self.group(i)
        } else if i < self.gap + zeros {
            0
        } else {
            self.group(i - zeros)
        }
    }

    /// Writes the groups into `client`.
    #[inline(always)]
    fn expand(&mut self) {
        let g = [
            self.expanded(0),
            self.expanded(1),
            self.expanded(2),
            self.expanded(3),
            self.expanded(4),
            self.expanded(5),
            self.expanded(6),
            self.expanded(7),
        ];
        let b = |i: usize| g[i].to_be_bytes();
        let (g0, g1, g2, g3) = (b(0), b(1), b(2), b(3));
        let (g4, g5, g6, g7) = (b(4), b(5), b(6), b(7));
        self.client = [
            g0[0], g0[1], g1[0], g1[1], g2[0], g2[1], g3[0], g3[1], g4[0], g4[1], g5[0], g5[1],
            g6[0], g6[1], g7[0], g7[1],
        ];
    }

    /// The rest of the line: done at CRLF.
    #[inline(always)]
    fn v1_rest(&mut self, b: u8) {
        if b == b'\n' {
            if self.flags & CR == 0 {
                return self.invalid();
            }
            self.state = if self.flags & LOCAL != 0 {
                PROXY_LOCAL
            } else {
                PROXY_CLIENT
            };
            return;
        }
        if b == b'\r' {
            self.flags |= CR;
        } else {
            self.flags &= !CR;
        }
    }

    /// Feeds `bytes` until the header is decided; returns how many were taken (the
    /// reference loop; the kernel runs the same steps, a byte or a skip a round).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() && self.state == PROXY_PENDING {
            let s = self.skippable() as usize;
            if s > 0 {
                let n = s.min(bytes.len() - i);
                self.skip(n as u32);
                i += n;
                continue;
            }
            self.step(bytes[i]);
            if self.state != PROXY_INVALID {
                i += 1;
            }
        }
        i
    }
}

/// A connection from a trusted peer, in `PROXY_CONNS` (keyed by
/// [`crate::conn::ConnKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyConn {
    pub header: ProxyHeader,
    /// Sequence number of the stream's first byte (the header's).
    pub start_seq: u32,
    /// `PROXY_CONN_*` bits.
    pub flags: u32,
}

/// `ProxyConn::flags`: the connection is in the named client's `OPEN_CONNS`
/// count (for `--max-conns`), to be taken out when it closes.
pub const PROXY_CONN_COUNTED: u32 = 1 << 0;

impl ProxyConn {
    /// The sequence number where the stream's bytes after the header begin (or,
    /// while pending or invalid, after the bytes taken so far).
    #[inline(always)]
    pub const fn end_seq(&self) -> u32 {
        self.start_seq.wrapping_add(self.header.got)
    }
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests;
