//! The ring record's layout: a fixed [`SampleHeader`], then `captured` bytes.
//! The header's size and field offsets are checked at compile time, so a change
//! on the kernel side that moves a field fails the build instead of misreading
//! every record.

use core::mem::{offset_of, size_of};

use api_guard_common::sample::{HEADER_LEN, SampleHeader};

use super::DecodeError;

const _: () = assert!(size_of::<SampleHeader>() == 64);
const _: () = assert!(HEADER_LEN == size_of::<SampleHeader>());
const _: () = assert!(offset_of!(SampleHeader, ts_ns) == 0);
const _: () = assert!(offset_of!(SampleHeader, client) == 8);
const _: () = assert!(offset_of!(SampleHeader, server) == 24);
const _: () = assert!(offset_of!(SampleHeader, source) == 40);
const _: () = assert!(offset_of!(SampleHeader, verdict) == 42);
const _: () = assert!(offset_of!(SampleHeader, flags) == 43);
const _: () = assert!(offset_of!(SampleHeader, client_port) == 44);
const _: () = assert!(offset_of!(SampleHeader, server_port) == 46);
const _: () = assert!(offset_of!(SampleHeader, ifindex) == 48);
const _: () = assert!(offset_of!(SampleHeader, payload_len) == 52);
const _: () = assert!(offset_of!(SampleHeader, captured) == 56);

/// Splits a record into its header and captured bytes.
pub fn split(record: &[u8]) -> Result<(SampleHeader, &[u8]), DecodeError> {
    SampleHeader::parse(record).ok_or(DecodeError::Short { len: record.len() })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The ring-record split, the one length-driven step before the parser:
        /// any bytes give a header and exactly `captured` bytes inside the record,
        /// or nothing.
        #[test]
        fn any_record_splits_inside_itself_or_is_refused(
            mut record in proptest::collection::vec(any::<u8>(), 0..200),
            captured in 0u32..160,
        ) {
            // A `captured` near the record's length, so both answers come up.
            let at = core::mem::offset_of!(SampleHeader, captured);
            if let Some(field) = record.get_mut(at..at + 4) {
                field.copy_from_slice(&captured.to_ne_bytes());
            }
            match split(&record) {
                Ok((hdr, data)) => {
                    prop_assert_eq!(hdr.captured, captured);
                    prop_assert_eq!(data, &record[HEADER_LEN..HEADER_LEN + captured as usize]);
                }
                Err(_) => prop_assert!(record.len() < HEADER_LEN + captured as usize),
            }
        }

        #[test]
        fn a_record_comes_back_whole(
            data in proptest::collection::vec(any::<u8>(), 0..120),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let hdr = SampleHeader { captured: data.len() as u32, payload_len: 999, ..Default::default() };
            let mut record = hdr.as_bytes().to_vec();
            record.extend(&data);
            record.extend(&trailing);
            let (back, got) = split(&record).unwrap();
            prop_assert_eq!(got, &data[..]);
            prop_assert_eq!(back.payload_len, 999);
        }
    }
}
