//! Request heads the kernel samples into the `SAMPLES` ring buffer: a fixed
//! header, then `captured` bytes of the TCP payload. The header names its source,
//! so one pipeline can take events from several kernel programs (TC ingress today;
//! TC egress responses or libssl uprobes later).

/// The most payload bytes one sample can carry (`--capture-bytes` is at most this).
pub const MAX_CAPTURE: usize = 8192;

/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Under `--sample-wakeup batched`, a record wakes the daemon once this many
/// bytes wait in the ring (about 30 samples of the default capture).
pub const WAKE_AT_BYTES: u64 = 64 << 10;

/// Under `--sample-wakeup batched`, how often the daemon reads the ring
/// without being woken (ms): the most a sample waits.
pub const WAKE_EVERY_MS: u64 = 10;

/// Which kernel program produced a sample.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request start seen by the TC ingress classifier.
    TcIngress = 1,
    /// A response to a sampled request, seen by the TC egress classifier
    /// (family 0x01: egress); a [`crate::exchange::ResponseRecord`] follows.
    TcEgress = 0x0101,
}

/// `SampleHeader::exchange` when the request has no number on its connection
/// (its request stream is not counted exactly, so no response is paired).
pub const NO_EXCHANGE: u32 = u32::MAX;

/// `SampleHeader::flags` bits.
pub const SAMPLE_IPV6: u8 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen.
    pub ts_ns: u64,
    /// Client (source) and server (destination) addresses, 16 bytes each in
    /// network order; IPv4 as IPv4-mapped IPv6.
    pub client: [u8; 16],
    pub server: [u8; 16],
    /// A [`Source`].
    pub source: u16,
    /// The kernel's verdict (`counters::Verdict`).
    pub verdict: u8,
    /// `SAMPLE_*` bits.
    pub flags: u8,
    pub client_port: u16,
    pub server_port: u16,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// The TCP payload length of the packet (the capture may be shorter).
    pub payload_len: u32,
    /// Payload bytes that follow this header.
    pub captured: u32,
    /// The request's number on its connection ([`crate::exchange`]), which
    /// its response record carries too; [`NO_EXCHANGE`] if none.
    pub exchange: u32,
}

pub const HEADER_LEN: usize = core::mem::size_of::<SampleHeader>();

/// A whole sample as the kernel builds it in per-CPU scratch space before copying
/// `HEADER_LEN + captured` bytes of it into the ring buffer.
#[repr(C)]
pub struct SampleBuf {
    pub header: SampleHeader,
    pub data: [u8; MAX_CAPTURE],
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_has_no_implicit_padding() {
        assert_eq!(HEADER_LEN, 64);
        assert_eq!(HEADER_LEN % 8, 0);
    }
}
