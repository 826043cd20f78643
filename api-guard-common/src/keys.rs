//! Limits by API key (`--key-header`, `--key-rate`) and by route
//! (`--route-limit`), decided in the kernel's key stage (api-guard-ebpf
//! keys.rs) on the same framing as the stream stage: each new head byte is read
//! once, whatever the segmentation, and the parser's place is kept per
//! connection ([`KeyParse`], the `KEY_CONNS` map) between segments.
//!
//! A credential never reaches a map: the key header's value is hashed byte by
//! byte with SipHash-2-4 under a key drawn at random at each daemon start (the
//! `KEY_SECRET` map, never pinned nor logged); buckets are keyed by that hash.
//!
//! Decisions, one request at a time:
//! - at the end of each key header value: the key's bucket, and (when a route
//!   limit matched the request line) the route's bucket of that key;
//! - at the end of the head: a matched route's bucket of the client, always
//!   (a key is the sender's to make up: a new one must not buy a fresh route
//!   bucket).
//!
//! Routes match on the method and a byte prefix of the path (the query string
//! and fragment are not part of it). A target that is not a plain origin-form
//! path (percent-encoding, a backslash, a `;` path parameter, an empty or dot
//! segment, an absolute URI) may name the route in a form the server normalises: it is charged to
//! the strictest limit of its method, so no spelling escapes a limit.

use crate::config::Limit;

/// Bytes of a key header's name, with its colon.
pub const NAME_MAX: usize = 32;
/// Bytes of a route's method.
pub const METHOD_MAX: usize = 8;
/// Bytes of a route's path prefix.
pub const PREFIX_MAX: usize = 64;
/// Route limits at once.
pub const ROUTE_SLOTS: usize = 16;
/// `KeyParse::route`: no route limit matched.
pub const NO_ROUTE: u8 = 0xff;

/// `KeyPolicy::flags`: lower-case the value's first word (the scheme of an
/// `Authorization` value, which servers compare case-insensitively), so a
/// respelled scheme is the same key.
pub const FOLD_SCHEME: u32 = 1 << 0;

/// One route limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub limit: Limit,
    /// The method, exactly (servers compare methods case-sensitively); empty
    /// for any method.
    pub method: [u8; METHOD_MAX],
    pub prefix: [u8; PREFIX_MAX],
    pub method_len: u8,
    pub prefix_len: u8,
    pub _pad: [u8; 6],
}

impl Route {
    pub const EMPTY: Route = Route {
        limit: Limit::NONE,
        method: [0; METHOD_MAX],
        prefix: [0; PREFIX_MAX],
        method_len: 0,
        prefix_len: 0,
        _pad: [0; 6],
    };
}

/// The key and route policy (the `KEY_POLICY` map, one entry), changed live
/// by `api-guard limit --key-rate` and `--route`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Requests per key (unset: keys are not limited, only routes per key).
    pub key_limit: Limit,
    /// The key header's name, lower-case, with its colon.
    pub name: [u8; NAME_MAX],
    /// Bytes of `name` (0: no key header).
    pub name_len: u32,
    pub flags: u32,
    /// Routes in use, the most specific first (the first that matches wins).
    pub route_count: u32,
    pub _pad: u32,
    pub routes: [Route; ROUTE_SLOTS],
    /// The routes as bit masks (bit i: route i), so the kernel matches a
    /// byte against every route with one load and no branch per route.
    pub tables: RouteTables,
}

/// [`KeyPolicy::routes`] compiled into masks (built by the daemon).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTables {
    /// `[p][b]`: routes whose method's byte `p` is `b`, and those of any
    /// method.
    pub method: [[u16; 256]; METHOD_MAX],
    /// `[p]`: routes whose method is `p` bytes long, and those of any method
    /// (`p` = `METHOD_MAX + 1`: longer than any).
    pub method_end: [u16; METHOD_MAX + 2],
    /// As `method` and `method_end`, in the strictest-first numbering.
    pub method_strict: [[u16; 256]; METHOD_MAX],
    pub method_end_strict: [u16; METHOD_MAX + 2],
    /// `[p][b]`: routes whose prefix's byte `p` is `b`, or whose prefix is
    /// at most `p` bytes long.
    pub prefix: [[u16; 256]; PREFIX_MAX],
    /// `[p]`: routes whose prefix is at most `p` bytes long.
    pub done: [u16; PREFIX_MAX + 1],
    /// Strictest-first bit `j` → route index.
    pub strict_route: [u8; ROUTE_SLOTS],
    pub _pad: [u8; 6],
}

impl RouteTables {
    pub const EMPTY: RouteTables = RouteTables {
        method: [[0; 256]; METHOD_MAX],
        method_end: [0; METHOD_MAX + 2],
        method_strict: [[0; 256]; METHOD_MAX],
        method_end_strict: [0; METHOD_MAX + 2],
        prefix: [[0; 256]; PREFIX_MAX],
        done: [0; PREFIX_MAX + 1],
        strict_route: [NO_ROUTE; ROUTE_SLOTS],
        _pad: [0; 6],
    };
}

impl KeyPolicy {
    pub const NONE: KeyPolicy = KeyPolicy {
        key_limit: Limit::NONE,
        name: [0; NAME_MAX],
        name_len: 0,
        flags: 0,
        route_count: 0,
        _pad: 0,
        routes: [Route::EMPTY; ROUTE_SLOTS],
        tables: RouteTables::EMPTY,
    };
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self::NONE
    }
}

/// `BucketKey::kind`.
pub const BUCKET_KEY: u32 = 1;
/// A route's bucket of one client (its bucketed address).
pub const BUCKET_ROUTE_CLIENT: u32 = 2;
/// A route's bucket of one key.
pub const BUCKET_ROUTE_KEY: u32 = 3;

/// A bucket of the `LIMIT_BUCKETS` map (its value: the GCRA clock, a u64).
/// `id`: a client's address, or a key's keyed hash (8 bytes, little-endian,
/// then zeros) — never the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub id: [u8; 16],
    pub kind: u32,
    pub route: u32,
}

impl BucketKey {
    #[inline(always)]
    pub const fn key(hash: u64) -> Self {
        Self::keyed(BUCKET_KEY, 0, hash)
    }

    #[inline(always)]
    pub const fn keyed(kind: u32, route: u32, hash: u64) -> Self {
        let h = hash.to_le_bytes();
        Self {
            id: [
                h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            kind,
            route,
        }
    }

    /// The key hash of a key's bucket.
    pub fn hash(&self) -> u64 {
        let mut h = [0u8; 8];
        h.copy_from_slice(&self.id[..8]);
        u64::from_le_bytes(h)
    }
}

/// The short fingerprint `top` and the access log show for a key: the top 32
/// bits of its keyed hash, so it names the same bucket while this daemon runs
/// and says nothing of the key.
pub const fn fingerprint(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// SipHash-2-4 fed one byte at a time, so a value split across segments
/// hashes as if whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sip {
    pub v: [u64; 4],
    /// Bytes of the current word not yet compressed.
    pub tail: u64,
    /// Bytes fed.
    pub len: u64,
}

impl Sip {
    /// No state (between key values).
    pub const CLEAR: Sip = Sip {
        v: [0; 4],
        tail: 0,
        len: 0,
    };

    #[inline(always)]
    pub const fn new(k: [u64; 2]) -> Self {
        Self {
            v: [
                k[0] ^ 0x736f_6d65_7073_6575,
                k[1] ^ 0x646f_7261_6e64_6f6d,
                k[0] ^ 0x6c79_6765_6e65_7261,
                k[1] ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    #[inline(always)]
    pub fn write(&mut self, b: u8) {
        self.tail |= (b as u64) << (8 * (self.len & 7));
        self.len += 1;
        if self.len & 7 == 0 {
            let m = self.tail;
            self.tail = 0;
            self.compress(m);
        }
    }

    #[inline(always)]
    pub fn finish(&self) -> u64 {
        let mut s = *self;
        let b = ((s.len & 0xff) << 56) | s.tail;
        s.compress(b);
        s.v[2] ^= 0xff;
        s.round();
        s.round();
        s.round();
        s.round();
        s.v[0] ^ s.v[1] ^ s.v[2] ^ s.v[3]
    }
}

/// The keyed hash of a key header's value, as the kernel reckons it (the
/// same steps: whitespace around it dropped, a run inside it one space, the
/// first word lower-cased if `fold`); None for an empty value. The daemon
/// uses it for the access log's fingerprint of a sampled head.
pub fn hash_value(secret: [u64; 2], fold: bool, value: &[u8]) -> Option<u64> {
    let mut p = KeyParse::IDLE;
    p.phase = P_VALUE;
    p.sip = Sip::new(secret);
    p.fold = fold as u8;
    for &b in value {
        if b == b'\r' || b == b'\n' {
            break;
        }
        p.value_byte(b);
    }
    p.value_byte(b'\r').and_then(|c| c.key)
}

/// What to charge at a byte (see the module's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// A key's hash (its bucket, and the route's bucket of it).
    pub key: Option<u64>,
    /// The route matched by the request line ([`NO_ROUTE`]: none).
    pub route: u8,
}

const P_IDLE: u8 = 0;
const P_METHOD: u8 = 1;
const P_TARGET: u8 = 2;
/// The rest of the request line.
const P_LINE: u8 = 3;
/// At a header line's name.
const P_NAME: u8 = 4;
/// The rest of a header line that is not the key's.
const P_SKIP: u8 = 5;
/// In the key header's value.
const P_VALUE: u8 = 6;

/// Where the key and route parser stands in a connection's stream, kept per
/// connection between segments (the kernel's `KEY_CONNS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyParse {
    pub sip: Sip,
    /// The stream's sequence number this state is at (kept by the kernel).
    pub next_seq: u32,
    /// Routes the request line still matches.
    pub alive: u16,
    /// Routes whose method matches, in the strictest-first numbering.
    pub strict: u16,
    pub phase: u8,
    /// Bytes of the method, target or header name read.
    pub pos: u8,
    /// The two target bytes before this one.
    pub prev: u8,
    pub prev2: u8,
    /// The target is not a plain origin-form path.
    pub odd: u8,
    pub route: u8,
    /// A key of this request paid its route bucket (informational: the
    /// client's bucket is charged at the head's end all the same).
    pub keyed: u8,
    /// Whitespace inside the value not yet hashed.
    pub ws: u8,
    /// Still in the value's first word, lower-cased (`FOLD_SCHEME`).
    pub fold: u8,
    pub _pad: [u8; 7],
}

impl Default for KeyParse {
    fn default() -> Self {
        Self::IDLE
    }
}

impl KeyParse {
    /// Waiting for the next request start.
    pub const IDLE: KeyParse = KeyParse {
        sip: Sip::CLEAR,
        next_seq: 0,
        alive: 0,
        strict: 0,
        phase: P_IDLE,
        pos: 0,
        prev: 0,
        prev2: 0,
        odd: 0,
        route: NO_ROUTE,
        keyed: 0,
        ws: 0,
        fold: 0,
        _pad: [0; 7],
    };

    /// One byte of the stream. `start`: a request starts at it (the framing's
    /// word); `ended`: its head ends at it. Returns what to charge, if anything.
    #[inline(always)]
    pub fn byte(
        &mut self,
        p: &KeyPolicy,
        secret: [u64; 2],
        b: u8,
        start: bool,
        ended: bool,
    ) -> Option<Charge> {
        if ended {
            let route = self.route;
            // The client's bucket, keyed or not: a key header is the sender's
            // to make up, and a new key a request must not buy a fresh route
            // bucket (its key's route bucket is charged on top).
            let pay = route != NO_ROUTE && self.phase != P_IDLE;
            self.phase = P_IDLE;
            return if pay {
                Some(Charge { key: None, route })
            } else {
                None
            };
        }
        if start {
            self.phase = P_METHOD;
            self.pos = 0;
            let n = if p.route_count as usize > ROUTE_SLOTS {
                ROUTE_SLOTS as u32
            } else {
                p.route_count
            };
            self.alive = ((1u32 << n) - 1) as u16;
            self.strict = self.alive;
            self.route = NO_ROUTE;
            self.keyed = 0;
            self.odd = 0;
        }
        match self.phase {
            P_METHOD => self.method_byte(p, b),
            P_TARGET => self.target_byte(p, b),
            // The rest of the request line, or of a header not the key's.
            P_LINE | P_SKIP if b == b'\n' => self.line_start(),
            P_NAME => self.name_byte(p, secret, b),
            P_VALUE => return self.value_byte(b),
            _ => {}
        }
        None
    }

    #[inline(always)]
    fn line_start(&mut self) {
        self.phase = P_NAME;
        self.pos = 0;
    }

    #[inline(always)]
    fn method_byte(&mut self, p: &KeyPolicy, b: u8) {
        let t = &p.tables;
        let at = self.pos as usize;
        if b == b' ' {
            let end = if at > METHOD_MAX { METHOD_MAX + 1 } else { at };
            self.alive &= at_or_zero(&t.method_end, end);
            self.strict &= at_or_zero(&t.method_end_strict, end);
            self.phase = P_TARGET;
            self.pos = 0;
            self.prev = 0;
            self.prev2 = 0;
            return;
        }
        if b == b'\n' {
            self.line_start();
            return;
        }
        if at < METHOD_MAX {
            self.alive &= t.method.get(at).map_or(0, |m| m[b as usize]);
            self.strict &= t.method_strict.get(at).map_or(0, |m| m[b as usize]);
        } else {
            self.alive &= at_or_zero(&t.method_end, METHOD_MAX + 1);
            self.strict &= at_or_zero(&t.method_end_strict, METHOD_MAX + 1);
        }
        self.pos = self.pos.saturating_add(1);
    }

    #[inline(always)]
    fn target_byte(&mut self, p: &KeyPolicy, b: u8) {
        if self.pos == 0 && b == b' ' {
            // Spaces before the target: servers skip them.
            return;
        }
        let end = matches!(b, b' ' | b'?' | b'#' | b'\r' | b'\n');
        if (b == b'/' || end) && self.prev == b'.' && (self.prev2 == b'/' || self.prev2 == b'.') {
            // A dot segment ("/./", "/../"), which the server removes.
            self.odd = 1;
        }
        if end {
            self.choose(p);
            if b == b'\n' {
                self.line_start();
            } else {
                self.phase = P_LINE;
            }
            return;
        }
        if (self.pos == 0 && b != b'/')
            || b == b'%'
            || b == b';'
            || b == b'\\'
            || (b == b'/' && self.prev == b'/')
        {
            self.odd = 1;
        }
        let at = self.pos as usize;
        if at < PREFIX_MAX {
            self.alive &= p.tables.prefix.get(at).map_or(0, |m| m[b as usize]);
        }
        self.prev2 = self.prev;
        self.prev = b;
        self.pos = self.pos.saturating_add(1);
    }

    /// The route of the request line: the first (most specific) whose whole
    /// prefix matched; for an odd target, the strictest of its method.
    #[inline(always)]
    fn choose(&mut self, p: &KeyPolicy) {
        let t = &p.tables;
        self.route = if self.odd != 0 {
            let s = self.strict;
            if s == 0 {
                NO_ROUTE
            } else {
                // The verifier bounds this index by its own reckoning of the
                // bit count, looser than LLVM's: a volatile read keeps the
                // check LLVM would drop.
                let j = s.trailing_zeros() as usize;
                // SAFETY: a read of a local.
                let j = unsafe { core::ptr::read_volatile(&j) };
                t.strict_route.get(j).copied().unwrap_or(NO_ROUTE)
            }
        } else {
            let at = self.pos as usize;
            let done = at_or_zero(&t.done, if at > PREFIX_MAX { PREFIX_MAX } else { at });
            let m = self.alive & done;
            if m == 0 {
                NO_ROUTE
            } else {
                (m.trailing_zeros() & (ROUTE_SLOTS as u32 - 1)) as u8
            }
        };
    }

    #[inline(always)]
    fn name_byte(&mut self, p: &KeyPolicy, secret: [u64; 2], b: u8) {
        if b == b'\n' {
            self.line_start();
            return;
        }
        let at = self.pos as usize;
        let len = p.name_len as usize;
        if len == 0 || at >= len || p.name.get(at).is_none_or(|n| lower(b) != *n) {
            self.phase = P_SKIP;
            return;
        }
        self.pos += 1;
        if self.pos as usize == len {
            self.phase = P_VALUE;
            self.sip = Sip::new(secret);
            self.ws = 0;
            self.fold = (p.flags & FOLD_SCHEME != 0) as u8;
        }
    }

    #[inline(always)]
    fn value_byte(&mut self, b: u8) -> Option<Charge> {
        if b == b'\r' || b == b'\n' {
            if b == b'\n' {
                self.line_start();
            } else {
                self.phase = P_SKIP;
            }
            if self.sip.len == 0 {
                return None;
            }
            if self.route != NO_ROUTE {
                self.keyed = 1;
            }
            let key = self.sip.finish();
            // The unhashed tail holds the value's last bytes: none is kept.
            self.sip = Sip::CLEAR;
            return Some(Charge {
                key: Some(key),
                route: self.route,
            });
        }
        if b == b' ' || b == b'\t' {
            // Leading and trailing whitespace is not the value's; a run
            // inside it hashes as one space.
            if self.sip.len != 0 {
                self.ws = 1;
                self.fold = 0;
            }
            return None;
        }
        if self.ws != 0 {
            self.sip.write(b' ');
            self.ws = 0;
        }
        self.sip.write(if self.fold != 0 { lower(b) } else { b });
        None
    }
}

/// `t[i]`, or no route if out of range (never, by construction; no panic
/// path for the kernel).
#[inline(always)]
fn at_or_zero(t: &[u16], i: usize) -> u16 {
    t.get(i).copied().unwrap_or(0)
}

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

#[cfg(feature = "user")]
pub mod user;

// The tests build policies with the user side's parser.
#[cfg(all(test, feature = "user"))]
mod tests;
