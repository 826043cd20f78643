//! Kernel records to owned events: the one way kernel data comes in. The ring
//! reader (`ring`) takes records off the sample ring buffer; each record's
//! header names the kernel program that wrote it (its [`SourceId`]), and the
//! [`Source`] for that producer decodes it into an [`Event`]. A new kernel
//! producer (TC egress responses, libssl uprobes) is a new `Source` and a new
//! `Event` variant; nothing downstream reads ring bytes.

pub mod record;
pub mod ring;
pub mod tc_egress;
pub mod tc_ingress;
pub mod tls;

use api_guard_common::sample::{SampleHeader, Source as KernelSource};

pub use tc_egress::{ResponseSample, TcEgress};
pub use tc_ingress::{RequestSample, TcIngress};

/// Which kernel producer wrote a record (the header's `source` field). The high
/// byte is its [`Family`], the low byte the producer within it, so each family
/// has room for 256 producers: `0x00nn` ingress, `0x01nn` egress, `0x02nn` TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceId(pub u16);

/// Where in the stack a producer sees traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Packets coming in (TC ingress).
    Ingress = 0,
    /// Packets going out (TC egress: responses).
    Egress = 1,
    /// Plaintext around a TLS library (uprobes on SSL_read / SSL_write).
    Tls = 2,
}

impl SourceId {
    /// Request starts seen by the TC ingress classifier.
    pub const TC_INGRESS: SourceId = SourceId(KernelSource::TcIngress as u16);
    /// Responses to sampled requests, seen by the TC egress classifier.
    pub const TC_EGRESS: SourceId = SourceId(KernelSource::TcEgress as u16);

    /// The family its high byte names, if any.
    pub const fn family(self) -> Option<Family> {
        match self.0 >> 8 {
            0 => Some(Family::Ingress),
            1 => Some(Family::Egress),
            2 => Some(Family::Tls),
            _ => None,
        }
    }
}

const _: () = assert!(SourceId::TC_INGRESS.0 >> 8 == Family::Ingress as u16);
const _: () = assert!(SourceId::TC_EGRESS.0 >> 8 == Family::Egress as u16);

/// One thing the kernel saw, owned: it outlives the ring record it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request start on ingress, with the head bytes captured.
    Request(RequestSample),
    /// A request start in TLS plaintext (libssl uprobes), with its head.
    TlsRequest(RequestSample),
    /// The response to a sampled request, on egress.
    Response(ResponseSample),
}

/// A ring record that is not an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ring record shorter than its header says ({len} bytes)")]
    Short { len: usize },
    #[error("ring record from an unknown kernel source {0}")]
    UnknownSource(u16),
}

impl DecodeError {
    /// The bounded label the parse-error metric counts it under.
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "bad_record",
            DecodeError::UnknownSource(_) => "unknown_source",
        }
    }
}

/// One kernel producer: decodes the records it writes.
pub trait Source: Send {
    fn id(&self) -> SourceId;
    /// Decodes a record whose header names this source.
    fn decode(&self, header: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError>;
}

/// Every source the daemon reads, by id.
pub struct Sources {
    list: Vec<Box<dyn Source>>,
}

impl Sources {
    pub fn new(list: Vec<Box<dyn Source>>) -> Self {
        Self { list }
    }

    /// The kernel producers this build loads.
    pub fn kernel() -> Self {
        Self::new(vec![
            Box::new(TcIngress),
            Box::new(TcEgress),
            Box::new(tls::TlsRead),
            Box::new(tls::TlsWrite),
        ])
    }

    /// Decodes one ring record.
    pub fn decode(&self, record: &[u8]) -> Result<Event, DecodeError> {
        let (header, data) = record::split(record)?;
        self.list
            .iter()
            .find(|s| s.id().0 == header.source)
            .ok_or(DecodeError::UnknownSource(header.source))?
            .decode(&header, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_source_or_say_why_not() {
        let sources = Sources::kernel();
        let mut hdr = SampleHeader {
            source: SourceId::TC_INGRESS.0,
            captured: 3,
            ..Default::default()
        };
        let mut record = hdr.as_bytes().to_vec();
        record.extend(b"GET");
        let Ok(Event::Request(r)) = sources.decode(&record) else {
            panic!("not a request");
        };
        assert_eq!(r.head, b"GET");
        assert_eq!(
            sources.decode(&record[..10]),
            Err(DecodeError::Short { len: 10 })
        );
        hdr.source = 0x02ff;
        hdr.captured = 0;
        let record = hdr.as_bytes().to_vec();
        let err = sources.decode(&record).unwrap_err();
        assert_eq!(err, DecodeError::UnknownSource(0x02ff));
        assert_eq!(err.kind(), "unknown_source");
        assert_eq!(SourceId(0x02ff).family(), Some(Family::Tls));
        assert_eq!(SourceId::TC_INGRESS.family(), Some(Family::Ingress));
    }
}
