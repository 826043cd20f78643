//! Request heads the kernel samples into the `SAMPLES` ring buffer: a fixed
//! header, then `captured` bytes of the TCP payload. The header names its source,
//! so one pipeline can take events from several kernel programs (TC ingress today;
//! TC egress responses or libssl uprobes later).

/// The most payload bytes one sample can carry (`--capture-bytes` is at most this).
pub const MAX_CAPTURE: usize = 8192;

/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Which kernel program produced a sample.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request start seen by the TC ingress classifier.
    TcIngress = 1,
}

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
    /// Explicit padding: the verifier refuses reads of uninitialised bytes.
    pub _pad: u32,
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
mod user {
    use super::{HEADER_LEN, SampleHeader};

    // SAFETY: `#[repr(C)]` with explicit padding, all fields plain integers.
    unsafe impl aya::Pod for SampleHeader {}

    impl SampleHeader {
        /// Splits a ring buffer record into its header and captured bytes; None
        /// if the record is shorter than it says.
        pub fn parse(record: &[u8]) -> Option<(SampleHeader, &[u8])> {
            if record.len() < HEADER_LEN {
                return None;
            }
            // SAFETY: the record holds at least HEADER_LEN bytes, SampleHeader is
            // Pod (any bytes are a valid value), and read_unaligned copes with the
            // record's alignment.
            let header =
                unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<SampleHeader>()) };
            let data = record.get(HEADER_LEN..HEADER_LEN + header.captured as usize)?;
            Some((header, data))
        }

        /// The header's bytes as the kernel writes them into a record (what
        /// `parse` reads back): for tests and benchmarks that build records.
        pub fn as_bytes(&self) -> &[u8] {
            // SAFETY: `#[repr(C)]` with explicit padding and no implicit padding
            // (see the size test), so all HEADER_LEN bytes are initialised, and
            // they live as long as `self`.
            unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), HEADER_LEN) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_has_no_implicit_padding() {
        assert_eq!(HEADER_LEN, 64);
        assert_eq!(HEADER_LEN % 8, 0);
    }
}
