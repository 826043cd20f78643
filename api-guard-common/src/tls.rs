//! TLS plaintext seen by the libssl uprobes: the types the uprobe programs and
//! the daemon share. The uprobes read what `SSL_read` returned, tie the `SSL*`
//! to its TCP connection (a `tcp_recvmsg` kprobe on the same thread during the
//! call, cached per process and `SSL*`), count its request starts with the same
//! framing as the TC path, and charge the same client state. A request over the
//! limit cannot be unread: its verdict goes to `TLS_VERDICTS`, which the TC
//! ingress judge acts on at the connection's next packet.

use crate::conn::ConnKey;

/// Offsets into the kernel's `struct sock` (its `sock_common` head), read from
/// the kernel's BTF at load time: the kernel crate has no CO-RE. `ready` is 0
/// until the daemon wrote them; the programs attribute nothing before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// The peer's IPv4 address (`skc_daddr`, network order).
    pub daddr: u32,
    /// The local IPv4 address (`skc_rcv_saddr`).
    pub rcv_saddr: u32,
    /// The peer's port (`skc_dport`, network order).
    pub dport: u32,
    /// The local port (`skc_num`, host order).
    pub num: u32,
    /// The address family (`skc_family`, u16).
    pub family: u32,
    /// The peer's and the local IPv6 address (`skc_v6_daddr`, `skc_v6_rcv_saddr`).
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    pub ready: u32,
}

/// `AF_INET` and `AF_INET6` as `skc_family` holds them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// An `SSL*` of one process (the `TLS_SSL_CONNS` cache key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ssl: u64,
}

/// `TlsCall::kind`.
pub const CALL_READ: u32 = 0;
pub const CALL_WRITE: u32 = 1;
/// The thread is in no SSL call: its entry stays (an update in place costs a
/// fraction of an LRU insert and delete per call) until the LRU evicts it.
pub const CALL_NONE: u32 = 2;

/// One thread's `SSL_read`/`SSL_write` in progress, from entry to return
/// (`TLS_CALLS`, keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    pub ssl: u64,
    pub buf: u64,
    /// `SSL_read_ex`'s `size_t *readbytes` (0 for `SSL_read`).
    pub readbytes: u64,
    /// A write's plaintext length (`num`, the third argument of `SSL_write`,
    /// `SSL_write_ex` and their shared internal function).
    pub len: u64,
    /// The `struct sock *` a `tcp_recvmsg`/`tcp_sendmsg` on this thread saw
    /// during the call (0: none, the plaintext was buffered).
    pub sock: u64,
    /// `CALL_*`.
    pub kind: u32,
    pub _pad: u32,
}

/// `TlsStream::flags`: the stream opened with the HTTP/2 preface: counted as a
/// connection only, its requests are not parsed.
pub const STREAM_H2: u32 = 1 << 0;

/// Where the request parser stands in one TLS connection's plaintext
/// (`TLS_STREAMS`, keyed by the connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsStream {
    pub framing: crate::stream::Framing,
    pub flags: u32,
    pub _pad: u32,
}

/// `TLS_VERDICTS` values: what the TC ingress judge does with the connection's
/// next packets (a `counters::Verdict`, `RateLimited`).
pub type ConnVerdict = u32;

/// Per-CPU TLS event counters, in the `TLS_EVENTS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsEvent {
    /// `SSL_read` returns whose plaintext was accounted.
    Reads = 0,
    /// Returns tied to their connection by the cache (buffered plaintext, no
    /// `tcp_recvmsg` during the call).
    FromCache = 1,
    /// Returns whose connection is not known (no `tcp_recvmsg`, nothing cached):
    /// not counted, and counted here.
    Unattributed = 2,
    /// Plaintext the program could not read from the process.
    ReadFailed = 3,
    /// Connections whose plaintext opened with the HTTP/2 preface.
    H2Streams = 4,
    /// Over-limit requests whose verdict went to the packet path.
    Verdicts = 5,
    /// `SSL_write` calls tied to their connection.
    Writes = 6,
    /// `SSL_write` calls whose plaintext was framed for responses (a
    /// connection whose requests are numbered).
    ResponseWrites = 7,
    /// `SSL_write` calls taken for the repeat of one that hit a full socket,
    /// or for the rest of a partial write: not framed again.
    WriteRetries = 8,
}

pub const TLS_EVENT_SLOTS: u32 = 16;
pub type TlsEventBlock = [u64; TLS_EVENT_SLOTS as usize];

/// Map names (the kernel declares them, the daemon looks them up).
pub const TLS_PIDS: &str = "TLS_PIDS";
pub const TLS_CALLS: &str = "TLS_CALLS";
pub const TLS_SSL_CONNS: &str = "TLS_SSL_CONNS";
pub const TLS_STREAMS: &str = "TLS_STREAMS";
pub const TLS_VERDICTS: &str = "TLS_VERDICTS";
pub const TLS_OFFSETS: &str = "TLS_OFFSETS";
pub const TLS_EVENTS: &str = "TLS_EVENTS";
pub const TLS_SCRATCH: &str = "TLS_SCRATCH";
/// Set once a followed process entered an SSL call (the socket tracepoints
/// return at once before).
pub const TLS_ARMED: &str = "TLS_ARMED";
/// `SSL*`s whose handshake was seen: their plaintext is followed from its
/// first byte (trusted framing).
pub const TLS_FRESH: &str = "TLS_FRESH";

/// What `--tls auto` found for one listening process of a watched port, for
/// `api-guard status` (`TLS_STATUS`, written by the daemon, pinned; the
/// programs never read it).
pub const TLS_STATUS: &str = "TLS_STATUS";
/// Entries in `TLS_STATUS` (port, process).
pub const STATUS_SLOTS: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsStatusKey {
    pub port: u16,
    pub _pad: u16,
    pub pid: u32,
}

/// `TlsStatus::state`.
pub const STATUS_FOLLOWED: u32 = 1;
pub const STATUS_NOT_SEEN: u32 = 2;

/// The text is the library followed, or why the process's TLS is not seen.
pub const STATUS_TEXT: usize = 248;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsStatus {
    pub state: u32,
    pub len: u32,
    pub text: [u8; STATUS_TEXT],
}

/// Processes the uprobes serve at once (the daemon fills it).
pub const PID_SLOTS: u32 = 4096;
/// Threads inside an SSL call at once.
pub const CALL_SLOTS: u32 = 16_384;
/// `SSL*`s cached, and TLS connections tracked (LRU).
pub const SSL_SLOTS: u32 = 65_536;
/// Connections with a verdict pending for the packet path (LRU).
pub const VERDICT_SLOTS: u32 = 16_384;

/// The sample source of TLS request heads (family 0x02).
pub const SOURCE_TLS_READ: u16 = 0x0201;
/// The sample source of TLS responses to sampled requests, read from the
/// plaintext `SSL_write` sends: a [`crate::exchange::ResponseRecord`] follows,
/// as for TC egress's.
pub const SOURCE_TLS_WRITE: u16 = 0x0202;

/// The connection key of a TLS connection, as the TC path keys it.
pub type TlsConnKey = ConnKey;

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_types_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SslKey>(), 16);
        assert_eq!(core::mem::size_of::<TlsCall>(), 48);
        assert_eq!(core::mem::size_of::<TlsStream>(), 24);
        assert_eq!(core::mem::size_of::<SockOffsets>(), 32);
        assert_eq!(core::mem::size_of::<TlsStatusKey>(), 8);
        assert_eq!(core::mem::size_of::<TlsStatus>(), 256);
    }
}
