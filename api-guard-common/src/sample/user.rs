//! What userspace adds to [`super`]: `aya::Pod` for the map types, and
//! conversions and names the kernel has no use for.

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
        let header = unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<SampleHeader>()) };
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
