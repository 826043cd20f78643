//! Request accounting on a TCP byte stream: where each HTTP/1.x request that the
//! server will read begins, whatever the segmentation.
//!
//! The kernel keeps one [`Framing`] per connection (the `CONNS` map) and feeds it
//! the bytes of each new segment in order. It follows the server's own framing
//! (RFC 9112): empty lines before a request line are skipped, a request head ends
//! at an empty line, a body of `Content-Length` bytes is skipped, and the next byte
//! starts the next request. So pipelined requests in one segment, a request split
//! across segments at any offset, and leading CRLFs all count exactly once.
//!
//! Where the framing cannot be trusted (the stream was picked up mid-way, a
//! segment arrived out of order, `Transfer-Encoding` is in use), the parser runs
//! *untrusted*: it never skips a body, so every request start is still seen and
//! some body lines may count too. It errs high, never low: a request the server
//! reads always begins after an empty line or a body, and a body, scanned as head
//! bytes, is itself counted as one start.

/// Expecting a request line; CR and LF are skipped (RFC 9112 §2.2).
pub const MODE_LINE: u8 = 0;
/// Inside a request head, until an empty line.
pub const MODE_HEAD: u8 = 1;
/// Skipping `left` body bytes.
pub const MODE_BODY: u8 = 2;
/// Not HTTP: the stream began with a byte no request can begin with (a TLS
/// ClientHello, say). An HTTP server answers such a stream with one error and
/// closes it, so nothing more is counted. Only a trusted stream start gets here.
pub const MODE_OPAQUE: u8 = 3;

/// `Framing::flags`: the framing is not known to be aligned with the server's,
/// so bodies are never skipped (sticky for the connection).
pub const UNTRUSTED: u8 = 1 << 0;
/// The current head line has had no byte but CR so far.
const LINE_EMPTY: u8 = 1 << 1;
/// In the request line, where no header is matched.
const REQUEST_LINE: u8 = 1 << 2;
/// The head carries `Transfer-Encoding`: its body is not skipped.
const CHUNKED: u8 = 1 << 3;
/// No byte has been seen on this stream yet (for [`MODE_OPAQUE`]).
const FRESH: u8 = 1 << 4;
/// A request with `Transfer-Encoding` was seen: its body is scanned as heads, so
/// the starts after it may count high (sticky; requests are no longer paired
/// with responses, see `crate::exchange`).
pub const INEXACT: u8 = 1 << 5;
/// Flags a new request line keeps.
const STICKY: u8 = UNTRUSTED | INEXACT;

/// `Framing::name`: what the current header line is matched against.
const NAME_SKIP: u8 = 0;
const NAME_ANY: u8 = 1;
const NAME_LENGTH: u8 = 2;
const NAME_ENCODING: u8 = 3;
/// In the value of `Content-Length`; `pos` is 1 once a digit was seen.
const VALUE_LENGTH: u8 = 4;

const CONTENT_LENGTH: &[u8; 15] = b"content-length:";
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";

/// Bodies longer than this are taken to be this long (no server takes more).
const MAX_BODY: u64 = 1 << 60;

/// Where a stream's parser stands, kept per connection between segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    /// `MODE_BODY`: body bytes still to skip. `MODE_HEAD`: the `Content-Length`
    /// read so far.
    pub left: u64,
    /// `MODE_*`.
    pub mode: u8,
    /// Flag bits (`UNTRUSTED` and private ones).
    pub flags: u8,
    /// The header name being matched on this line (private `NAME_*`).
    pub name: u8,
    /// Bytes of that name matched so far.
    pub pos: u8,
    pub _pad: u32,
}

impl Framing {
    /// A stream at its very first byte.
    #[inline(always)]
    pub const fn start() -> Self {
        Self {
            left: 0,
            mode: MODE_LINE,
            flags: FRESH,
            name: NAME_SKIP,
            pos: 0,
            _pad: 0,
        }
    }

    /// A stream picked up at an unknown point: bodies are never skipped, and a
    /// first byte that is not CR or LF counts as a request start.
    #[inline(always)]
    pub const fn untrusted() -> Self {
        Self {
            left: 0,
            mode: MODE_LINE,
            flags: UNTRUSTED,
            name: NAME_SKIP,
            pos: 0,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub const fn is_trusted(&self) -> bool {
        self.flags & UNTRUSTED == 0
    }

    /// Whether each request start found so far is exactly one request (trusted,
    /// and no chunked body scanned as heads).
    #[inline(always)]
    pub const fn is_exact(&self) -> bool {
        self.flags & (UNTRUSTED | INEXACT) == 0
    }

    /// Whether no request has started on this trusted stream yet.
    #[inline(always)]
    pub const fn is_fresh(&self) -> bool {
        self.flags & (FRESH | UNTRUSTED) == FRESH && self.mode == MODE_LINE
    }

    /// Marks the framing as untrusted from here on.
    #[inline(always)]
    pub fn distrust(&mut self) {
        self.flags |= UNTRUSTED;
        if self.mode == MODE_BODY {
            // Where the body ends is no longer known: scan for heads instead.
            self.mode = MODE_HEAD;
            self.flags &= !(LINE_EMPTY | REQUEST_LINE);
            self.name = NAME_SKIP;
        }
    }

    /// In `MODE_BODY`, skips up to `avail` body bytes at once; returns how many.
    #[inline(always)]
    pub fn skip_body(&mut self, avail: u64) -> u64 {
        let n = if self.left < avail { self.left } else { avail };
        self.left -= n;
        if self.left == 0 {
            self.mode = MODE_LINE;
        }
        n
    }

    /// Inside a head line that matches no header of interest, only the line's
    /// end matters: takes the leading bytes of `word` (its first `n` of 8 are
    /// stream bytes) up to the first LF, all at once, and returns how many. 0
    /// when the state needs byte-by-byte steps. Equivalent to [`Framing::step`]
    /// on each of those bytes.
    #[inline(always)]
    pub fn skim(&mut self, word: u64, n: u32) -> u32 {
        if self.mode != MODE_HEAD || self.name != NAME_SKIP {
            return 0;
        }
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let lf = word ^ (ONES * b'\n' as u64);
        // The lowest flagged byte is exactly the first LF (the rest may not be).
        let found = lf.wrapping_sub(ONES) & !lf & HIGH;
        let mut k = if found == 0 {
            8
        } else {
            found.trailing_zeros() / 8
        };
        if k > n {
            k = n;
        }
        if k == 0 {
            return 0;
        }
        let mask = if k >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * k)) - 1
        };
        // Any byte but CR among them makes the line non-empty.
        if (word ^ (ONES * b'\r' as u64)) & mask != 0 {
            self.flags &= !LINE_EMPTY;
        }
        k
    }

    /// Feeds one byte (not in `MODE_BODY`); returns whether a request starts at it.
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> bool {
        match self.mode {
            MODE_LINE => self.line_byte(b),
            MODE_HEAD => {
                self.head_byte(b);
                false
            }
            // MODE_OPAQUE, and MODE_BODY if misused: nothing starts here.
            _ => false,
        }
    }

    #[inline(always)]
    fn line_byte(&mut self, b: u8) -> bool {
        if b == b'\r' || b == b'\n' {
            return false;
        }
        // NUL excepted: it follows the CRLFs of a PROXY v2 header, which a
        // server taking PROXY headers from anyone reads past (a peer outside
        // --trusted-proxy names no client, but its requests still count).
        if self.flags & FRESH != 0 && self.flags & UNTRUSTED == 0 && !is_tchar(b) && b != 0 {
            // No method begins with this byte: not HTTP (TLS on this port).
            self.mode = MODE_OPAQUE;
            self.flags &= !FRESH;
            return false;
        }
        self.flags = (self.flags & STICKY) | REQUEST_LINE;
        self.mode = MODE_HEAD;
        self.left = 0;
        self.name = NAME_SKIP;
        self.pos = 0;
        true
    }

    #[inline(always)]
    fn head_byte(&mut self, b: u8) {
        if b == b'\n' {
            if self.flags & LINE_EMPTY != 0 {
                self.end_of_head();
            } else {
                self.flags = (self.flags & !REQUEST_LINE) | LINE_EMPTY;
                self.name = NAME_ANY;
                self.pos = 0;
            }
            return;
        }
        if b == b'\r' {
            // CR ends a line only with the LF after it; it keeps a line empty.
            return;
        }
        self.flags &= !LINE_EMPTY;
        match self.name {
            NAME_ANY => {
                self.name = match lower(b) {
                    b'c' => NAME_LENGTH,
                    b't' => NAME_ENCODING,
                    _ => NAME_SKIP,
                };
                self.pos = 1;
            }
            NAME_LENGTH => {
                let at = self.pos as usize;
                if at < CONTENT_LENGTH.len() && lower(b) == CONTENT_LENGTH[at] {
                    self.pos += 1;
                    if self.pos as usize == CONTENT_LENGTH.len() {
                        // A later Content-Length replaces an earlier one.
                        self.name = VALUE_LENGTH;
                        self.pos = 0;
                        self.left = 0;
                    }
                } else {
                    self.name = NAME_SKIP;
                }
            }
            NAME_ENCODING => {
                let at = self.pos as usize;
                if at < TRANSFER_ENCODING.len() && lower(b) == TRANSFER_ENCODING[at] {
                    self.pos += 1;
                    if self.pos as usize == TRANSFER_ENCODING.len() {
                        self.flags |= CHUNKED;
                        self.name = NAME_SKIP;
                    }
                } else {
                    self.name = NAME_SKIP;
                }
            }
            VALUE_LENGTH => {
                if b.is_ascii_digit() {
                    let v = self.left * 10 + (b - b'0') as u64;
                    self.left = if v > MAX_BODY { MAX_BODY } else { v };
                    self.pos = 1;
                } else if !(self.pos == 0 && (b == b' ' || b == b'\t')) {
                    // Trailing text after the digits: the value is what was read.
                    self.name = NAME_SKIP;
                }
            }
            _ => {}
        }
    }

    #[inline(always)]
    fn end_of_head(&mut self) {
        let skip = self.flags & (UNTRUSTED | CHUNKED) == 0 && self.left > 0;
        if self.flags & CHUNKED != 0 {
            self.flags |= INEXACT;
        }
        self.flags &= STICKY;
        self.name = NAME_SKIP;
        self.pos = 0;
        if skip {
            self.mode = MODE_BODY;
        } else {
            self.mode = MODE_LINE;
            self.left = 0;
        }
    }
}

impl Default for Framing {
    fn default() -> Self {
        Self::start()
    }
}

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// RFC 9110 `tchar`: the bytes a method token is made of.
#[inline(always)]
const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Feeds `bytes` to `f` and returns the request starts and the offset of the
/// first (the reference loop; the kernel runs the same steps, a body skip, a
/// skimmed word or a byte a round).
pub fn feed(f: &mut Framing, bytes: &[u8]) -> (u32, Option<usize>) {
    let mut starts = 0;
    let mut first = None;
    let mut i = 0;
    while i < bytes.len() {
        if f.mode == MODE_BODY {
            i += f.skip_body((bytes.len() - i) as u64) as usize;
            continue;
        }
        let mut word = [0u8; 8];
        let n = (bytes.len() - i).min(8);
        word[..n].copy_from_slice(&bytes[i..i + n]);
        let k = f.skim(u64::from_le_bytes(word), n as u32);
        if k > 0 {
            i += k as usize;
            continue;
        }
        if f.step(bytes[i]) {
            starts += 1;
            first.get_or_insert(i);
        }
        i += 1;
    }
    (starts, first)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn count(f: &mut Framing, segments: &[&[u8]]) -> u32 {
        segments.iter().map(|s| feed(f, s).0).sum()
    }

    #[test]
    fn pipelined_requests_in_one_segment_each_count() {
        let seg = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(feed(&mut Framing::start(), seg), (2, Some(0)));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let seg = b"\r\n\r\n\nGET / HTTP/1.1\r\n\r\n\r\nGET / HTTP/1.1\n\n";
        assert_eq!(feed(&mut Framing::start(), seg), (2, Some(5)));
    }

    #[test]
    fn a_split_method_counts_once() {
        let mut f = Framing::start();
        assert_eq!(count(&mut f, &[b"GE", b"T / HTTP/1.1\r\n", b"\r\n"]), 1);
    }

    #[test]
    fn bodies_are_skipped_and_can_hide_nothing() {
        let body = b"GET /hidden HTTP/1.1\r\n\r\n";
        let mut s = Vec::new();
        s.extend_from_slice(b"POST / HTTP/1.1\r\ncontent-LENGTH:  24\r\n\r\n");
        s.extend_from_slice(body);
        s.extend_from_slice(b"GET /real HTTP/1.1\r\n\r\n");
        assert_eq!(feed(&mut Framing::start(), &s).0, 2);
    }

    /// Byte-by-byte steps only: the model `feed`'s skims must agree with.
    fn stepwise(f: &mut Framing, bytes: &[u8]) -> u32 {
        let mut starts = 0;
        let mut i = 0;
        while i < bytes.len() {
            if f.mode == MODE_BODY {
                i += f.skip_body((bytes.len() - i) as u64) as usize;
                continue;
            }
            starts += f.step(bytes[i]) as u32;
            i += 1;
        }
        starts
    }

    #[test]
    fn skimming_words_agrees_with_stepping_bytes() {
        // A small deterministic generator over an alphabet rich in CR, LF and
        // header-name letters.
        let alphabet = b"\r\n\r\nGET /a HTTP/1.1Content-Length: 12\r\ntransfer-encoding:xX 0";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            for start in [Framing::start(), Framing::untrusted()] {
                let (mut a, mut b) = (start, start);
                assert_eq!(
                    feed(&mut a, &bytes).0,
                    stepwise(&mut b, &bytes),
                    "{bytes:?}"
                );
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn tls_is_not_counted() {
        let mut f = Framing::start();
        assert_eq!(
            feed(&mut f, &[0x16, 3, 1, 0, 0xa5, b'\n', b'\n', b'G']).0,
            0
        );
        assert_eq!(f.mode, MODE_OPAQUE);
    }

    #[test]
    fn a_proxy_v2_header_is_no_tls_its_request_counts() {
        // From a peer not trusted to name a client: a server reading PROXY
        // headers from anyone serves the request after it, so it counts.
        let mut f = Framing::start();
        let mut s = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        s.extend_from_slice(&[198, 19, 0, 1, 198, 18, 0, 1, 0xd4, 0x31, 0x1f, 0x90]);
        s.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(feed(&mut f, &s).0, 2);
    }

    #[test]
    fn untrusted_framing_never_skips_a_body() {
        let mut f = Framing::untrusted();
        let s = b"POST / HTTP/1.1\r\nContent-Length: 9999\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(feed(&mut f, s).0, 2);
        // A body picked up mid-way counts as a start; it cannot hide what follows.
        let mut f = Framing::untrusted();
        assert_eq!(feed(&mut f, b"abcdeGET / HTTP/1.1\r\n\r\nGET /").0, 2);
    }

    #[test]
    fn transfer_encoding_bodies_are_scanned() {
        let mut f = Framing::start();
        let s = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        // Errs high: the chunk lines count, the next request is not hidden.
        assert!(feed(&mut f, s).0 >= 2);
        assert!(f.is_trusted() && !f.is_exact());
    }

    #[test]
    fn a_stream_is_fresh_until_its_first_request_and_exact_until_a_chunked_one() {
        let mut f = Framing::start();
        assert!(f.is_fresh() && f.is_exact());
        feed(&mut f, b"\r\n");
        assert!(f.is_fresh());
        feed(&mut f, b"GET / HTTP/1.1\r\n\r\nGET");
        assert!(!f.is_fresh() && f.is_exact());
        assert!(!Framing::untrusted().is_fresh() && !Framing::untrusted().is_exact());
    }
}
