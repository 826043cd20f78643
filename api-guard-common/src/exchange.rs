//! Request/response pairing per connection (the `EXCHANGES` map): the ingress
//! stream stage pushes each request the server will read, in order, with its
//! arrival time; the TC egress program pops one at each final response, so
//! pipelined requests pair in order. Keyed by the connection's
//! [`crate::conn::ConnKey`] as ingress sees it (client = the peer).
//!
//! Requests are numbered from 0 on each connection. Ingress owns `tail`, the
//! slots and `req_flags`; egress owns `head`, `reply` and `reply_seq`: each side
//! writes only its own fields in place, so neither undoes the other's work. The
//! n-th final response answers request n; its slot holds request n only if the
//! FIFO had room when it came (else the response is counted unpaired).

use crate::response::Reply;

/// Requests a connection can have outstanding with their times kept.
pub const FIFO_SLOTS: usize = 8;

/// `Slot::flags`: the request's method is `HEAD` (its response has no body).
pub const SLOT_HEAD: u32 = 1 << 0;
/// `Slot::flags`: the request was sampled; its response gets a ring record.
pub const SLOT_SAMPLED: u32 = 1 << 1;

/// One request waiting for its response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// `bpf_ktime_get_ns()` when the segment carrying its start came in.
    pub arrival_ns: u64,
    /// Its number on the connection (so a reused slot is never mistaken).
    pub index: u32,
    pub flags: u32,
}

/// `Exchange::req_flags`: requests after `tail` were not counted exactly (the
/// request stream was picked up mid-way, had a gap, or a chunked body): no
/// response past `tail` is paired.
pub const REQ_INEXACT: u32 = 1 << 0;
/// `Exchange::reply_flags`: `reply_seq` holds the server's next byte.
pub const REPLY_SEQ_KNOWN: u32 = 1 << 0;
/// `Exchange::reply_flags`: a final response came with no request numbered for
/// it (the server answered something the framing did not count): from here on
/// no response is paired.
pub const REPLY_AHEAD: u32 = 1 << 1;
/// `Exchange::reply_flags`: a TLS write on the connection hit a full socket
/// (`EAGAIN`): libssl requires the next `SSL_write` to repeat the same call
/// (its buffer may move), so a next write of `write_len` bytes is that repeat
/// and is not framed again. Set and read only by the libssl uprobes (the TC
/// egress path never sees a TLS connection's responses).
pub const REPLY_RETRY: u32 = 1 << 2;
/// Outstanding requests whose `HEAD` bit is kept (the bits of `head_bits`).
pub const HEAD_BITS: u32 = 64;

/// A connection's outstanding requests and its response framing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchange {
    pub slots: [Slot; FIFO_SLOTS],
    /// Bit `n % 64`: request `n` is `HEAD` (kept for requests with no slot, so
    /// their responses are still framed right); ingress stops numbering
    /// requests when [`HEAD_BITS`] are outstanding.
    pub head_bits: u64,
    /// Requests numbered so far (ingress).
    pub tail: u32,
    pub req_flags: u32,
    /// Final responses seen so far (egress).
    pub head: u32,
    pub reply_flags: u32,
    /// The server's next sequence number not yet framed (egress). On a TLS
    /// connection (no sequence numbers: plaintext): the low 32 bits of the
    /// address where the last framed write's buffer ended, so that the rest
    /// of a partial write (libssl's `SSL_MODE_ENABLE_PARTIAL_WRITE`: the same
    /// buffer from further in) is not framed twice.
    pub reply_seq: u32,
    /// The length of the last framed TLS write (its low 32 bits), for
    /// [`REPLY_RETRY`] and partial writes. 0 on the TC path.
    pub write_len: u32,
    pub reply: Reply,
}

/// Connections paired at once (plaintext ones and TLS ones share the map: a
/// TLS port's entries are numbered by the `SSL_read` uprobe and popped by the
/// `SSL_write` one; an LRU map: the least recently seen goes first;
/// its later responses are counted unpaired).
pub const DEFAULT_MAX_EXCHANGES: u32 = 65_536;

/// `ResponseRecord::flags`: the request's slot was found (else the request was
/// not seen or the FIFO was full, and `request_ns`/`ttfb_ns` are 0).
pub const RESPONSE_PAIRED: u32 = 1 << 0;

/// What follows the `SampleHeader` of a response record (source
/// [`crate::sample::Source::TcEgress`]); the header's `exchange` is the
/// request's number on its connection, and its addresses are the connection's
/// as ingress sees it (client first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseRecord {
    /// When the request's first segment came in (ingress).
    pub request_ns: u64,
    /// From then to the response's first byte leaving (egress).
    pub ttfb_ns: u64,
    pub status: u16,
    pub _pad: u16,
    pub flags: u32,
}

/// Response counters, per CPU (the `RESPONSES` array of one block).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCount {
    /// Final responses by status class 1xx (101 only), 2xx, ..., 5xx.
    Class1xx = 0,
    Class2xx = 1,
    Class3xx = 2,
    Class4xx = 3,
    Class5xx = 4,
    /// Statuses the detectors watch, counted besides their class.
    Status401 = 5,
    Status403 = 6,
    Status404 = 7,
    Status429 = 8,
    /// Interim (1xx) responses: they answer nothing.
    Interim = 9,
    /// A final response paired with its request.
    Paired = 10,
    /// A final response whose request was not seen exactly (the connection was
    /// picked up mid-way, its request stream was inexact, or its entry was
    /// evicted): counted, not paired.
    Unseen = 11,
    /// A final response whose request came when the FIFO was full.
    Overflow = 12,
    /// A request that found the FIFO full (ingress).
    FifoFull = 13,
    /// A response stream that could not be framed (not HTTP/1, garbage): its
    /// later responses are not seen.
    Lost = 14,
    /// A response record for a sampled request was written to the ring.
    Recorded = 15,
    /// A response record was lost: the ring buffer was full.
    RecordsLost = 16,
    /// A request sample not taken: over `--sample-budget`.
    OverBudget = 17,
}

pub const RESPONSE_SLOTS: u32 = 18;
pub type ResponseBlock = [u64; RESPONSE_SLOTS as usize];

/// The counter of a final status's class (None if not 1xx..5xx).
#[inline(always)]
pub const fn class_of(status: u16) -> Option<ResponseCount> {
    Some(match status / 100 {
        1 => ResponseCount::Class1xx,
        2 => ResponseCount::Class2xx,
        3 => ResponseCount::Class3xx,
        4 => ResponseCount::Class4xx,
        5 => ResponseCount::Class5xx,
        _ => return None,
    })
}

/// The detector-watched status counter of `status`, if any.
#[inline(always)]
pub const fn watched_status(status: u16) -> Option<ResponseCount> {
    Some(match status {
        401 => ResponseCount::Status401,
        403 => ResponseCount::Status403,
        404 => ResponseCount::Status404,
        429 => ResponseCount::Status429,
        _ => return None,
    })
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<Slot>(), 16);
        assert_eq!(size_of::<Reply>(), 16);
        assert_eq!(size_of::<Exchange>(), 16 * FIFO_SLOTS + 8 + 24 + 16);
        assert_eq!(size_of::<ResponseRecord>(), 24);
    }
}
