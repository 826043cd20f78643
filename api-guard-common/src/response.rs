//! Response framing on the server→client byte stream: where each HTTP/1.x
//! response begins and what its status is, whatever the segmentation, so the
//! TC egress program can pair the n-th final response of a connection with its
//! n-th request (RFC 9112 §6.3 message body length):
//!
//! - a status line `HTTP/1.x NNN` starts a response; `1xx` but `101` are interim
//!   and do not answer the request; `101` switches protocols (nothing after it
//!   is HTTP/1);
//! - a response to `HEAD`, and every `204` or `304`, has no body;
//! - `Transfer-Encoding` (chunked, the only coding servers frame with) is
//!   followed chunk by chunk; else `Content-Length` bytes are skipped; else the
//!   body runs until the connection closes.
//!
//! Anything else (a byte where a status line must begin, a malformed chunk
//! size) makes the stream *lost*: nothing more is reported on it, so no later
//! response can be paired with the wrong request.

/// Expecting a status line (CR and LF skipped).
pub const REPLY_LINE: u8 = 0;
/// Inside `HTTP/1.x NNN`: `pos` bytes of it matched.
pub const REPLY_STATUS: u8 = 1;
/// Inside a response head, until an empty line.
pub const REPLY_HEAD: u8 = 2;
/// Skipping `left` body bytes (a `Content-Length` body, or chunk data and its CRLF).
pub const REPLY_BODY: u8 = 3;
/// Reading a chunk-size line (hex digits, then extensions to the LF).
pub const REPLY_CHUNK_SIZE: u8 = 4;
/// After the last chunk: trailer lines until an empty line.
pub const REPLY_TRAILER: u8 = 5;
/// Nothing more to frame: a body until close, a protocol switch, or lost.
pub const REPLY_DONE: u8 = 6;

/// `Reply::flags`: the stream could not be followed; sticky.
pub const REPLY_LOST: u8 = 1 << 0;
/// The current line has had no byte but CR so far.
const LINE_EMPTY: u8 = 1 << 1;
/// The head carries `Transfer-Encoding`.
const CHUNKED: u8 = 1 << 2;
/// The head carries `Content-Length`.
const HAS_LENGTH: u8 = 1 << 3;
/// The response has no body whatever its headers (a HEAD request's, 204, 304).
const NO_BODY: u8 = 1 << 4;
/// In the chunk-size line, past the digits (an extension).
const CHUNK_EXT: u8 = 1 << 5;
/// At least one hex digit in the chunk-size line.
const CHUNK_DIGIT: u8 = 1 << 6;

const NAME_SKIP: u8 = 0;
const NAME_ANY: u8 = 1;
const NAME_LENGTH: u8 = 2;
const NAME_ENCODING: u8 = 3;
const VALUE_LENGTH: u8 = 4;

const STATUS_PREFIX: &[u8; 7] = b"HTTP/1.";
/// A status line's first 8 bytes, as a little-endian word (skimmed at once).
const HTTP_11: u64 = u64::from_le_bytes(*b"HTTP/1.1");
const HTTP_10: u64 = u64::from_le_bytes(*b"HTTP/1.0");
const CONTENT_LENGTH: &[u8; 15] = b"content-length:";
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";
/// Bodies and chunks longer than this are taken to be this long.
const MAX_BODY: u64 = 1 << 60;

/// What one byte completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// A status code was read (in `Reply::status`): a response begins. The
    /// caller says whether its request was `HEAD` ([`Reply::no_body`]) before
    /// feeding the next byte.
    Status,
}

/// Where a response stream's parser stands, kept per connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `REPLY_BODY`: bytes to skip; `REPLY_HEAD`: the `Content-Length` so far;
    /// `REPLY_CHUNK_SIZE`: the size so far.
    pub left: u64,
    /// The status of the response being framed.
    pub status: u16,
    /// `REPLY_*` mode.
    pub mode: u8,
    pub flags: u8,
    name: u8,
    pos: u8,
    _pad: u16,
}

impl Default for Reply {
    fn default() -> Self {
        Self::start()
    }
}

impl Reply {
    /// A stream at its first byte.
    #[inline(always)]
    pub const fn start() -> Self {
        Self {
            left: 0,
            status: 0,
            mode: REPLY_LINE,
            flags: 0,
            name: NAME_SKIP,
            pos: 0,
            _pad: 0,
        }
    }

    /// A stream that cannot be followed.
    #[inline(always)]
    pub const fn lost() -> Self {
        Self {
            left: 0,
            status: 0,
            mode: REPLY_DONE,
            flags: REPLY_LOST,
            name: NAME_SKIP,
            pos: 0,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub const fn is_lost(&self) -> bool {
        self.flags & REPLY_LOST != 0
    }

    /// After [`Step::Status`]: the request was `HEAD`, so no body follows.
    #[inline(always)]
    pub fn no_body(&mut self) {
        self.flags |= NO_BODY;
    }

    /// Whether the current status is interim (1xx but 101): it does not answer
    /// the request.
    #[inline(always)]
    pub const fn is_interim(&self) -> bool {
        self.status >= 100 && self.status < 200 && self.status != 101
    }

    #[inline(always)]
    fn lose(&mut self) {
        self.mode = REPLY_DONE;
        self.flags |= REPLY_LOST;
    }

    /// In `REPLY_BODY`, skips up to `avail` bytes at once; returns how many.
    #[inline(always)]
    pub fn skip_body(&mut self, avail: u64) -> u64 {
        let n = if self.left < avail { self.left } else { avail };
        self.left -= n;
        if self.left == 0 {
            self.mode = if self.flags & CHUNKED != 0 {
                REPLY_CHUNK_SIZE
            } else {
                REPLY_LINE
            };
            self.flags &= !(CHUNK_EXT | CHUNK_DIGIT);
        }
        n
    }

    /// Inside a head line of no interest, takes the leading bytes of `word`
    /// (its first `n` of 8 are stream bytes) up to the first LF; returns how
    /// many (0 when bytes must be stepped one by one). Same as stepping them.
    #[inline(always)]
    pub fn skim(&mut self, word: u64, n: u32) -> u32 {
        if self.mode == REPLY_LINE && n == 8 && (word == HTTP_11 || word == HTTP_10) {
            // A status line's first 8 bytes at once: the same as stepping `H`
            // (a response begins) and the 7 bytes of the version after it.
            self.mode = REPLY_STATUS;
            self.pos = 8;
            self.status = 0;
            self.left = 0;
            self.flags &= REPLY_LOST;
            return 8;
        }
        if self.mode == REPLY_HEAD && self.name == NAME_ANY {
            // A header line's first byte: unless it may begin `Content-Length`
            // or `Transfer-Encoding` (or ends the line), the line is of no
            // interest, as stepping it would decide; it is skimmed from here.
            let b = word as u8;
            if n == 0 || matches!(lower(b), b'c' | b't') || b == b'\r' || b == b'\n' {
                return 0;
            }
            self.name = NAME_SKIP;
            self.pos = 1;
            self.flags &= !LINE_EMPTY;
        }
        if !(self.mode == REPLY_HEAD || self.mode == REPLY_TRAILER) || self.name != NAME_SKIP {
            return 0;
        }
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let lf = word ^ (ONES * b'\n' as u64);
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
        if (word ^ (ONES * b'\r' as u64)) & mask != 0 {
            self.flags &= !LINE_EMPTY;
        }
        k
    }

    /// Feeds one byte (not in `REPLY_BODY`).
    #[inline(always)]
    pub fn step(&mut self, b: u8) -> Step {
        match self.mode {
            REPLY_LINE => {
                if b == b'\r' || b == b'\n' {
                    return Step::Nothing;
                }
                if b != b'H' {
                    self.lose();
                    return Step::Nothing;
                }
                self.mode = REPLY_STATUS;
                self.pos = 1;
                self.status = 0;
                self.left = 0;
                self.flags &= REPLY_LOST;
                Step::Nothing
            }
            REPLY_STATUS => self.status_byte(b),
            REPLY_HEAD => {
                self.head_byte(b);
                Step::Nothing
            }
            REPLY_CHUNK_SIZE => {
                self.chunk_size_byte(b);
                Step::Nothing
            }
            REPLY_TRAILER => {
                if b == b'\n' {
                    if self.flags & LINE_EMPTY != 0 {
                        self.mode = REPLY_LINE;
                        self.flags &= REPLY_LOST;
                    } else {
                        self.flags |= LINE_EMPTY;
                    }
                } else if b != b'\r' {
                    self.flags &= !LINE_EMPTY;
                }
                Step::Nothing
            }
            _ => Step::Nothing,
        }
    }

    #[inline(always)]
    fn status_byte(&mut self, b: u8) -> Step {
        let at = self.pos as usize;
        let ok = match at {
            0..=6 => b == STATUS_PREFIX[at],
            7 => b == b'0' || b == b'1',
            8 => b == b' ',
            _ => b.is_ascii_digit(),
        };
        if !ok {
            self.lose();
            return Step::Nothing;
        }
        if at >= 9 {
            self.status = self.status * 10 + (b - b'0') as u16;
        }
        self.pos += 1;
        if self.pos < 12 {
            return Step::Nothing;
        }
        if self.status < 100 {
            self.lose();
            return Step::Nothing;
        }
        // The rest of the status line is skipped as a head line.
        self.mode = REPLY_HEAD;
        self.name = NAME_SKIP;
        self.pos = 0;
        if self.status == 204 || self.status == 304 {
            self.flags |= NO_BODY;
        }
        Step::Status
    }

    #[inline(always)]
    fn head_byte(&mut self, b: u8) {
        if b == b'\n' {
            if self.flags & LINE_EMPTY != 0 {
                self.end_of_head();
            } else {
                self.flags |= LINE_EMPTY;
                self.name = NAME_ANY;
                self.pos = 0;
            }
            return;
        }
        if b == b'\r' {
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
                        self.name = VALUE_LENGTH;
                        self.flags |= HAS_LENGTH;
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
                    self.name = NAME_SKIP;
                }
            }
            _ => {}
        }
    }

    #[inline(always)]
    fn end_of_head(&mut self) {
        self.name = NAME_SKIP;
        self.pos = 0;
        let flags = self.flags;
        self.flags &= REPLY_LOST;
        if self.status == 101 {
            // Another protocol from here on.
            self.mode = REPLY_DONE;
        } else if self.is_interim() || flags & NO_BODY != 0 {
            self.mode = REPLY_LINE;
            self.left = 0;
        } else if flags & CHUNKED != 0 {
            self.mode = REPLY_CHUNK_SIZE;
            self.flags |= CHUNKED;
            self.left = 0;
        } else if flags & HAS_LENGTH != 0 {
            self.mode = if self.left > 0 {
                REPLY_BODY
            } else {
                REPLY_LINE
            };
        } else {
            // The body runs until the connection closes.
            self.mode = REPLY_DONE;
        }
    }

    #[inline(always)]
    fn chunk_size_byte(&mut self, b: u8) {
        if b == b'\n' {
            if self.flags & CHUNK_DIGIT == 0 {
                // The CRLF after chunk data is counted in the data; a bare line
                // here is not chunked framing.
                self.lose();
                return;
            }
            self.flags &= !(CHUNK_EXT | CHUNK_DIGIT);
            if self.left == 0 {
                self.mode = REPLY_TRAILER;
                self.flags = (self.flags & REPLY_LOST) | LINE_EMPTY;
            } else {
                // The data and the CRLF that ends it.
                self.left += 2;
                self.mode = REPLY_BODY;
            }
            return;
        }
        if self.flags & CHUNK_EXT != 0 || b == b'\r' {
            return;
        }
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b';' | b' ' | b'\t' if self.flags & CHUNK_DIGIT != 0 => {
                self.flags |= CHUNK_EXT;
                return;
            }
            _ => {
                self.lose();
                return;
            }
        };
        self.flags |= CHUNK_DIGIT;
        let v = (self.left << 4) | digit as u64;
        self.left = if v > MAX_BODY { MAX_BODY } else { v };
    }
}

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// Feeds `bytes` to `r`; calls `on_status(r)` at each status (it may call
/// [`Reply::no_body`]). The reference loop; the kernel runs the same steps.
pub fn feed(r: &mut Reply, bytes: &[u8], mut on_status: impl FnMut(&mut Reply)) {
    let mut i = 0;
    while i < bytes.len() {
        if r.mode == REPLY_DONE {
            return;
        }
        if r.mode == REPLY_BODY {
            i += r.skip_body((bytes.len() - i) as u64) as usize;
            continue;
        }
        let mut word = [0u8; 8];
        let n = (bytes.len() - i).min(8);
        word[..n].copy_from_slice(&bytes[i..i + n]);
        let k = r.skim(u64::from_le_bytes(word), n as u32);
        if k > 0 {
            i += k as usize;
            continue;
        }
        if r.step(bytes[i]) == Step::Status {
            on_status(r);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn statuses(r: &mut Reply, segments: &[&[u8]], heads: &[bool]) -> Vec<u16> {
        let mut out = Vec::new();
        for s in segments {
            feed(r, s, |r| {
                if !r.is_interim() && heads.get(out.len()).copied().unwrap_or(false) {
                    r.no_body();
                }
                out.push(r.status);
            });
        }
        out
    }

    #[test]
    fn pipelined_responses_with_lengths_chunks_and_no_bodies_are_each_found() {
        let s: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nHTTP/1.1 500 fake!!\r\n\
HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n\
HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nHTTP/\r\na\r\n0123456789\r\n0\r\nT: 1\r\n\r\n\
HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n\
HTTP/1.1 404 Not Found\r\ncontent-length:3\r\n\r\nabc";
        let mut r = Reply::start();
        assert_eq!(statuses(&mut r, &[s], &[]), [200, 204, 201, 304, 404]);
        assert!(!r.is_lost());
        assert_eq!(r.mode, REPLY_LINE);
    }

    #[test]
    fn every_split_of_the_stream_finds_the_same_responses() {
        let s: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 429 x\r\nContent-Length: 0\r\n\r\n";
        for at in 0..s.len() {
            for at2 in at..s.len() {
                let mut r = Reply::start();
                let got = statuses(&mut r, &[&s[..at], &s[at..at2], &s[at2..]], &[]);
                assert_eq!(got, [100, 200, 401, 429], "split at {at},{at2}");
                assert_eq!(r.mode, REPLY_LINE);
            }
        }
    }

    #[test]
    fn a_head_response_has_no_body_whatever_its_length() {
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut r = Reply::start();
        assert_eq!(statuses(&mut r, &[s], &[true, false]), [200, 200]);
        assert_eq!(r.mode, REPLY_LINE);
    }

    #[test]
    fn interim_responses_do_not_answer_the_request() {
        let mut r = Reply::start();
        feed(
            &mut r,
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n",
            |r| assert!(r.is_interim()),
        );
        assert_eq!(r.mode, REPLY_LINE);
    }

    #[test]
    fn a_body_until_close_or_a_protocol_switch_ends_the_framing() {
        let mut r = Reply::start();
        assert_eq!(
            statuses(
                &mut r,
                &[b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 500 x\r\n\r\n"],
                &[]
            ),
            [200]
        );
        assert_eq!(r.mode, REPLY_DONE);
        assert!(!r.is_lost());
        let mut r = Reply::start();
        let s = b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 x\r\n\r\n";
        assert_eq!(statuses(&mut r, &[s], &[]), [101]);
        assert_eq!(r.mode, REPLY_DONE);
    }

    #[test]
    fn garbage_loses_the_stream_and_reports_nothing_more() {
        for (junk, before) in [
            (&b"xTTP/1.1 200 OK\r\n\r\n"[..], &[][..]),
            (b"HTTP/2 200\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", &[]),
            (b"HTTP/1.1 2x0 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", &[]),
            (b"HTTP/1.1 099 x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", &[]),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nHTTP/1.1 200 OK\r\n\r\n",
                &[200][..],
            ),
        ] {
            let mut r = Reply::start();
            assert_eq!(statuses(&mut r, &[junk], &[]), before, "{junk:?}");
            assert!(r.is_lost());
        }
    }

    /// Byte steps only: the model the skims must agree with.
    fn stepwise(r: &mut Reply, bytes: &[u8]) -> Vec<u16> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() && r.mode != REPLY_DONE {
            if r.mode == REPLY_BODY {
                i += r.skip_body((bytes.len() - i) as u64) as usize;
                continue;
            }
            if r.step(bytes[i]) == Step::Status {
                out.push(r.status);
            }
            i += 1;
        }
        out
    }

    #[test]
    fn skimming_words_agrees_with_stepping_bytes() {
        let alphabet = b"\r\n\r\nHTTP/1.1 200 204 Content-Length: 3\r\ntransfer-encoding:a0\r\nServer: x\r\nHTTP/1.0 304 \r\nEtag";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let (mut a, mut b) = (Reply::start(), Reply::start());
            let mut got = Vec::new();
            feed(&mut a, &bytes, |r| got.push(r.status));
            assert_eq!(got, stepwise(&mut b, &bytes), "{bytes:?}");
            assert_eq!(a, b);
        }
    }

    #[test]
    fn skimming_status_lines_and_header_names_agrees_with_stepping_bytes() {
        // Whole tokens, so that status lines and header lines begin at every
        // alignment against the 8-byte words (single random bytes rarely
        // spell them).
        let tokens: [&[u8]; 16] = [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.0 204 No\r\n",
            b"HTTP/1.1 100 Continue\r\n",
            b"Content-Length: 3\r\n",
            b"content-length:0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Server: x\r\n",
            b"ETag: \"a\"\r\n",
            b"\r\n",
            b"abc",
            b"3\r\nabc\r\n0\r\n\r\n",
            b"C",
            b"t",
            b"\r",
            b"\n",
            b"HTTP/1.",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut framed = 0;
        for case in 0..5000 {
            // A response with an empty body first, shifted by 0-7 bytes of
            // blank lines, so that the next status line starts at any alignment.
            let mut bytes = b"\r\n\r\n\r\n\r\n"[..case % 8].to_vec();
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.extend_from_slice(tokens[(seed % tokens.len() as u64) as usize]);
            }
            let (mut a, mut b) = (Reply::start(), Reply::start());
            let mut got = Vec::new();
            feed(&mut a, &bytes, |r| got.push(r.status));
            assert_eq!(got, stepwise(&mut b, &bytes), "{bytes:?}");
            assert_eq!(a, b);
            framed += got.len();
        }
        assert!(
            framed > 5000,
            "every case frames its first response, some more: {framed}"
        );
    }
}
