//! Who a `--trusted-proxy` peer's request is for, by its `X-Forwarded-For`
//! or `Forwarded` list (`--trusted-hops N`, `--forwarded-header`): read in
//! the kernel's forwarded stage (api-guard-ebpf forwarded.rs) one byte at a
//! time on the stream stage's framing, so a head split at any offset reads as
//! if whole; the parser's place is kept per connection ([`FwdConn`], the
//! `FWD_CONNS` map) between segments.
//!
//! The rules, one request at a time:
//! - only the configured header's lines count (its name in any case); all of
//!   them in a head form one list, in order;
//! - the client is the element `hops` from the right (1: the last, the one
//!   the nearest proxy appended). Elements left of it are the sender's to
//!   make up and are never read for the decision: garbage there changes
//!   nothing;
//! - an element names a client only if it is an IPv4 or IPv6 address in text
//!   (`1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`,
//!   `[2001:db8::1]:443`, each optionally in double quotes); `unknown`, an
//!   obfuscated `_name`, an IPv4-embedded IPv6 form, or anything else names no
//!   one. In `Forwarded`, the element's `for=` parameter (any case) is read; an
//!   element with none, or with two, names no one;
//! - a list shorter than `hops`, or whose chosen element names no one, names
//!   no one: the request is charged to the peer (the proxy) itself.

/// Hops from the right at most (`--trusted-hops`).
pub const MAX_HOPS: u32 = 4;

/// `Config::forwarded`: the header read.
pub const HEADER_XFF: u32 = 1;
pub const HEADER_FORWARDED: u32 = 2;

const XFF_NAME: &[u8; 16] = b"x-forwarded-for:";
const FWD_NAME: &[u8; 10] = b"forwarded:";

// Address parser states.
const A_PRE: u8 = 0;
const A_ADDR: u8 = 1;
/// After `]`.
const A_AFTER: u8 = 2;
const A_PORT: u8 = 3;
/// Trailing whitespace or the closing quote.
const A_TAIL: u8 = 4;
const A_BAD: u8 = 5;

const K_NONE: u8 = 0;
const K_V4: u8 = 1;
const K_V6: u8 = 2;

const NO_GAP: u8 = 0xff;

/// One element's address, fed a byte at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    /// IPv6 groups (or IPv4 octets) read so far.
    pub groups: [u16; 8],
    /// The number being read, in hex and in decimal (which one is meant is
    /// known only at the next `.` or `:`).
    pub hex: u32,
    pub dec: u32,
    pub n: u8,
    pub digits: u8,
    /// Where `::` stands (the group count then), or `NO_GAP`.
    pub gap: u8,
    pub kind: u8,
    pub state: u8,
    /// 1: opened by `[`; 2: closed.
    pub bracket: u8,
    /// 1: opened by `"`; 2: closed.
    pub quote: u8,
    /// The previous byte was a `:` (2: it was the second of `::`).
    pub colon: u8,
    /// Bytes fed (saturating).
    pub len: u8,
    pub _pad: [u8; 3],
}

impl Addr {
    pub const EMPTY: Addr = Addr {
        groups: [0; 8],
        hex: 0,
        dec: 0,
        n: 0,
        digits: 0,
        gap: NO_GAP,
        kind: K_NONE,
        state: A_PRE,
        bracket: 0,
        quote: 0,
        colon: 0,
        len: 0,
        _pad: [0; 3],
    };

    /// Whether nothing but whitespace was fed (an empty list element).
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn bad(&mut self) {
        self.state = A_BAD;
    }

    /// One byte of the element (its delimiters are the caller's).
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        let ws = b == b' ' || b == b'\t';
        if self.state == A_PRE && ws {
            return;
        }
        self.len = self.len.saturating_add(1);
        match self.state {
            A_PRE => {
                if b == b'"' && self.quote == 0 && self.bracket == 0 {
                    self.quote = 1;
                } else if b == b'[' && self.bracket == 0 {
                    self.bracket = 1;
                    self.kind = K_V6;
                    self.state = A_ADDR;
                } else {
                    self.state = A_ADDR;
                    self.addr_byte(b);
                }
            }
            A_ADDR => self.addr_byte(b),
            A_AFTER => match b {
                b':' => self.state = A_PORT,
                _ => self.tail_byte(b),
            },
            A_PORT if b.is_ascii_digit() => {}
            A_PORT | A_TAIL => self.tail_byte(b),
            _ => {}
        }
    }

    #[inline(always)]
    fn tail_byte(&mut self, b: u8) {
        if b == b'"' && self.quote == 1 {
            self.quote = 2;
            self.state = A_TAIL;
        } else if (b == b' ' || b == b'\t') && self.quote != 1 {
            self.state = A_TAIL;
        } else {
            self.bad();
        }
    }

    #[inline(always)]
    fn addr_byte(&mut self, b: u8) {
        let hexval = match b {
            b'0'..=b'9' => Some((b - b'0') as u32),
            b'a'..=b'f' => Some((b - b'a' + 10) as u32),
            b'A'..=b'F' => Some((b - b'A' + 10) as u32),
            _ => None,
        };
        if let Some(h) = hexval {
            if self.colon == 1 && self.n == 0 && self.gap == NO_GAP && self.digits == 0 {
                // One leading ':' that is not '::'.
                self.bad();
                return;
            }
            self.colon = 0;
            if self.kind == K_V4 && h > 9 {
                self.bad();
                return;
            }
            self.digits = self.digits.saturating_add(1);
            if self.digits > 4 {
                self.bad();
                return;
            }
            self.hex = (self.hex << 4) | h;
            self.dec = self.dec * 10 + h;
            return;
        }
        match b {
            b'.' => {
                if self.kind == K_V6 || self.digits == 0 || self.digits > 3 || self.dec > 255 {
                    self.bad();
                    return;
                }
                self.kind = K_V4;
                self.push(self.dec as u16, 3);
            }
            b':' => {
                if self.kind == K_V4 {
                    // The address is whole: a port follows (not in brackets).
                    if self.close_v4() {
                        self.state = A_PORT;
                    }
                    return;
                }
                self.kind = K_V6;
                if self.digits > 0 {
                    self.push(self.hex as u16, 7);
                    self.colon = 1;
                } else if self.colon == 1 && self.gap == NO_GAP {
                    self.gap = self.n;
                    self.colon = 2;
                } else if self.n == 0 && self.colon == 0 && self.gap == NO_GAP {
                    // A leading ':' (must be '::').
                    self.colon = 1;
                } else {
                    self.bad();
                }
            }
            b']' if self.bracket == 1 => {
                if self.close_v6() {
                    self.bracket = 2;
                    self.state = A_AFTER;
                }
            }
            _ => {
                if self.bracket == 1 {
                    self.bad();
                    return;
                }
                self.finish_addr();
                if self.state != A_BAD {
                    self.tail_byte(b);
                }
            }
        }
    }

    /// Ends the number read as group `n` (at most `max` before it).
    #[inline(always)]
    fn push(&mut self, v: u16, max: u8) {
        if self.n > max {
            self.bad();
            return;
        }
        let i = (self.n & 7) as usize;
        self.groups[i] = v;
        self.n += 1;
        self.hex = 0;
        self.dec = 0;
        self.digits = 0;
    }

    #[inline(always)]
    fn close_v4(&mut self) -> bool {
        if self.digits == 0 || self.digits > 3 || self.dec > 255 || self.n != 3 {
            self.bad();
            return false;
        }
        self.push(self.dec as u16, 3);
        true
    }

    #[inline(always)]
    fn close_v6(&mut self) -> bool {
        if self.digits > 0 {
            self.push(self.hex as u16, 7);
            if self.state == A_BAD {
                return false;
            }
        } else if self.colon != 2 {
            // Ends in a single ':' (or nothing at all).
            self.bad();
            return false;
        }
        let ok = if self.gap == NO_GAP {
            self.n == 8
        } else {
            self.n <= 7
        };
        if !ok {
            self.bad();
        }
        ok
    }

    /// Ends the address at a byte that is not part of it.
    #[inline(always)]
    fn finish_addr(&mut self) {
        let ok = match self.kind {
            K_V4 => self.close_v4(),
            K_V6 => self.close_v6(),
            _ => false,
        };
        if ok {
            self.state = A_TAIL;
        } else {
            self.bad();
        }
    }

    /// The address the element named, in the 16-byte form of
    /// [`crate::client::ClientKey`], if it named one.
    #[inline(always)]
    pub fn finish(&mut self) -> Option<[u8; 16]> {
        if self.state == A_ADDR {
            if self.bracket == 1 {
                return None;
            }
            self.finish_addr();
        }
        if self.state == A_PORT {
            self.state = A_TAIL;
        }
        if self.state == A_AFTER {
            self.state = A_TAIL;
        }
        if self.state != A_TAIL || self.quote == 1 || self.bracket == 1 {
            return None;
        }
        let g = &self.groups;
        if self.kind == K_V4 {
            return Some([
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, g[0] as u8, g[1] as u8, g[2] as u8,
                g[3] as u8,
            ]);
        }
        let mut out = [0u8; 16];
        let n = self.n as usize;
        let gap = if self.gap == NO_GAP {
            8
        } else {
            self.gap as usize
        };
        let shift = 8usize.saturating_sub(n);
        let mut j = 0;
        while j < 8 {
            if j < n {
                // Groups before the gap keep their place; those after it move
                // right by the gap's width.
                let d = if j < gap { j } else { j + shift };
                // The verifier bounds the index by its own reckoning, looser
                // than LLVM's: a volatile read keeps the mask LLVM would drop.
                // SAFETY: a read of a local.
                let d = unsafe { core::ptr::read_volatile(&d) } & 7;
                let v = g[j & 7];
                out[2 * d] = (v >> 8) as u8;
                out[2 * d + 1] = v as u8;
            }
            j += 1;
        }
        Some(out)
    }
}

// List parser phases.
const P_IDLE: u8 = 0;
/// The request line, or a header line that is not the list's.
const P_SKIP: u8 = 1;
const P_NAME: u8 = 2;
/// In an `X-Forwarded-For` element.
const P_XFF: u8 = 3;
/// In a `Forwarded` element, at a parameter's name.
const P_PARAM: u8 = 4;
/// In a `Forwarded` element's `for=` value.
const P_FOR: u8 = 5;
/// In another parameter's value.
const P_OTHER: u8 = 6;

/// Where the list parser stands in a connection's stream, and what the
/// connection has carried (kept per connection, the kernel's `FWD_CONNS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FwdConn {
    /// The element being read.
    pub addr: Addr,
    /// The last `MAX_HOPS` elements' addresses, the rightmost first.
    pub ring: [[u8; 16]; MAX_HOPS as usize],
    /// The first client charged on this connection.
    pub first: [u8; 16],
    /// The stream's sequence number this state is at (kept by the kernel).
    pub next_seq: u32,
    /// Bit i: `ring[i]` named a client.
    pub ok: u8,
    /// Elements read in this head (saturating).
    pub count: u8,
    pub phase: u8,
    /// Bytes of the header name matched.
    pub pos: u8,
    /// In a quoted string (`Forwarded`), and after its backslash.
    pub inq: u8,
    pub esc: u8,
    /// `for=` parameters seen in the element.
    pub fors: u8,
    /// The element had bytes other than whitespace.
    pub some: u8,
    /// Client identities charged on this connection: 0, 1, or 2 (two or
    /// more: pooled).
    pub clients: u8,
    pub _pad: [u8; 7],
}

impl Default for FwdConn {
    fn default() -> Self {
        Self::NEW
    }
}

/// What a head's end decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The forwarded client, if the list named one.
    pub client: Option<[u8; 16]>,
}

impl FwdConn {
    /// A connection whose start (or whose next request start) is awaited.
    pub const NEW: FwdConn = FwdConn {
        addr: Addr::EMPTY,
        ring: [[0; 16]; MAX_HOPS as usize],
        first: [0; 16],
        next_seq: 0,
        ok: 0,
        count: 0,
        phase: P_IDLE,
        pos: 0,
        inq: 0,
        esc: 0,
        fors: 0,
        some: 0,
        clients: 0,
        _pad: [0; 7],
    };

    /// Whether more than one client was charged on this connection.
    #[inline(always)]
    pub const fn pooled(&self) -> bool {
        self.clients >= 2
    }

    /// Notes the client charged for a request (its bucketed address): a
    /// second identity makes the connection pooled for good. Returns whether
    /// it just became so.
    #[inline(always)]
    pub fn carried(&mut self, client: &[u8; 16]) -> bool {
        match self.clients {
            0 => {
                self.first = *client;
                self.clients = 1;
                false
            }
            1 if self.first != *client => {
                self.clients = 2;
                true
            }
            _ => false,
        }
    }

    /// Forgets the parse (not what the connection carried): a gap or a new
    /// connection's bytes.
    #[inline(always)]
    pub fn idle(&mut self) {
        self.phase = P_IDLE;
        self.addr = Addr::EMPTY;
        self.ok = 0;
        self.count = 0;
    }

    #[inline(always)]
    fn element_start(&mut self) {
        self.addr = Addr::EMPTY;
        self.fors = 0;
        self.some = 0;
        self.inq = 0;
        self.esc = 0;
    }

    /// Ends an element: its address goes to the ring's front.
    #[inline(always)]
    fn element_end(&mut self) {
        let named = if self.phase == P_XFF {
            if self.addr.is_empty() {
                // An empty list element ("a, , b"): not an element.
                self.element_start();
                return;
            }
            self.addr.finish()
        } else {
            if self.some == 0 {
                self.element_start();
                return;
            }
            if self.fors == 1 {
                self.addr.finish()
            } else {
                None
            }
        };
        self.ring[3] = self.ring[2];
        self.ring[2] = self.ring[1];
        self.ring[1] = self.ring[0];
        self.ok = (self.ok << 1) & 0xf;
        match named {
            Some(a) => {
                self.ring[0] = a;
                self.ok |= 1;
            }
            None => self.ring[0] = [0; 16],
        }
        self.count = self.count.saturating_add(1);
        self.element_start();
    }

    /// One byte of the stream. `start`: a request starts at it; `ended`: its
    /// head ends at it (the stream stage's framing). `header`: `HEADER_XFF`
    /// or `HEADER_FORWARDED`; `hops`: 1..=`MAX_HOPS`. Returns the head's
    /// decision at its end.
    #[inline(always)]
    pub fn byte(
        &mut self,
        header: u32,
        hops: u32,
        b: u8,
        start: bool,
        ended: bool,
    ) -> Option<Head> {
        if ended {
            if self.phase == P_IDLE {
                return None;
            }
            // A value the head's end cut short (no line end seen) ends here.
            if matches!(self.phase, P_XFF | P_PARAM | P_FOR | P_OTHER) {
                self.element_end();
            }
            let h = hops.clamp(1, MAX_HOPS);
            let client = if (self.count as u32) >= h && self.ok & (1 << (h - 1)) != 0 {
                Some(self.ring[((h - 1) & 3) as usize])
            } else {
                None
            };
            self.idle();
            return Some(Head { client });
        }
        if start {
            self.idle();
            self.phase = P_SKIP;
        }
        match self.phase {
            P_SKIP if b == b'\n' => {
                self.phase = P_NAME;
                self.pos = 0;
            }
            P_NAME => self.name_byte(header, b),
            P_XFF => match b {
                b',' => self.element_end(),
                b'\r' | b'\n' => self.line_end(b),
                _ => self.addr.byte(b),
            },
            P_PARAM | P_FOR | P_OTHER => self.forwarded_byte(b),
            _ => {}
        }
        None
    }

    #[inline(always)]
    fn line_end(&mut self, b: u8) {
        self.element_end();
        if b == b'\n' {
            self.phase = P_NAME;
            self.pos = 0;
        } else {
            self.phase = P_SKIP;
        }
    }

    #[inline(always)]
    fn name_byte(&mut self, header: u32, b: u8) {
        if b == b'\n' {
            self.pos = 0;
            return;
        }
        let lb = if b.is_ascii_uppercase() { b | 0x20 } else { b };
        let at = self.pos as usize;
        let (want, len) = if header == HEADER_FORWARDED {
            (FWD_NAME.get(at).copied(), FWD_NAME.len())
        } else {
            (XFF_NAME.get(at).copied(), XFF_NAME.len())
        };
        if want != Some(lb) {
            self.phase = P_SKIP;
            return;
        }
        self.pos += 1;
        if self.pos as usize == len {
            self.element_start();
            self.phase = if header == HEADER_FORWARDED {
                self.pos = 0;
                P_PARAM
            } else {
                P_XFF
            };
        }
    }

    /// A byte of a `Forwarded` value: `pair *( ";" pair )` elements separated
    /// by `,`, values tokens or quoted strings.
    #[inline(always)]
    fn forwarded_byte(&mut self, b: u8) {
        if self.inq != 0 {
            if self.esc != 0 {
                self.esc = 0;
            } else if b == b'\\' {
                self.esc = 1;
            } else if b == b'"' {
                self.inq = 0;
            }
            if b == b'\r' || b == b'\n' {
                // An unterminated quote: the element names no one.
                self.fors = 2;
                self.inq = 0;
                self.line_end(b);
                return;
            }
            if self.phase == P_FOR {
                self.addr.byte(b);
            }
            return;
        }
        match b {
            b'\r' | b'\n' => self.line_end(b),
            b',' => {
                self.element_end();
                self.phase = P_PARAM;
                self.pos = 0;
            }
            b';' => {
                self.phase = P_PARAM;
                self.pos = 0;
            }
            _ => {
                if b != b' ' && b != b'\t' {
                    self.some = 1;
                }
                match self.phase {
                    P_PARAM => self.param_byte(b),
                    P_FOR => {
                        if b == b'"' {
                            self.inq = 1;
                        }
                        self.addr.byte(b);
                    }
                    _ => {
                        if b == b'"' {
                            self.inq = 1;
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn param_byte(&mut self, b: u8) {
        if (b == b' ' || b == b'\t') && self.pos == 0 {
            return;
        }
        let lb = if b.is_ascii_uppercase() { b | 0x20 } else { b };
        let want = b"for=".get(self.pos as usize).copied();
        if want == Some(lb) {
            self.pos += 1;
            if self.pos == 4 {
                self.fors = self.fors.saturating_add(1);
                self.addr = Addr::EMPTY;
                self.phase = P_FOR;
            }
            return;
        }
        self.phase = P_OTHER;
        if b == b'"' {
            self.inq = 1;
        }
    }
}

/// A forwarded client over its limit on a pooled connection (the
/// `FWD_REPORTED` map's value, keyed by its bucketed address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// CLOCK_MONOTONIC nanoseconds of its last reported request.
    pub last_ns: u64,
    /// Its requests reported (over the limit, let through).
    pub requests: u64,
}

#[cfg(feature = "user")]
pub mod user;

#[cfg(test)]
mod tests;
