//! Request heads the libssl uprobes sample from decrypted plaintext: the
//! connection's addresses, the verdict the uprobe charged, and the head.
//! Records of family `0x02nn`; the same [`RequestSample`] as TC ingress,
//! marked as TLS so the sinks say `https` and where it was seen. Their
//! responses, read from `SSL_write`'s plaintext, come as the same
//! [`super::ResponseSample`] as TC egress's and join the same way.

use api_guard_common::{
    sample::SampleHeader,
    tls::{SOURCE_TLS_READ, SOURCE_TLS_WRITE},
};

use super::{DecodeError, Event, Family, RequestSample, Source, SourceId};

/// `SSL_read`'s return as a source.
pub struct TlsRead;

impl TlsRead {
    pub const ID: SourceId = SourceId(SOURCE_TLS_READ);
}

const _: () = assert!(TlsRead::ID.0 >> 8 == Family::Tls as u16);

impl Source for TlsRead {
    fn id(&self) -> SourceId {
        Self::ID
    }

    fn decode(&self, hdr: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError> {
        Ok(Event::TlsRequest(RequestSample::of(hdr, data)))
    }
}

/// `SSL_write`'s plaintext as a source: responses to sampled TLS requests,
/// the same records as TC egress's (status, time to first byte from the
/// `SSL_read` return that delivered the request).
pub struct TlsWrite;

impl TlsWrite {
    pub const ID: SourceId = SourceId(SOURCE_TLS_WRITE);
}

const _: () = assert!(TlsWrite::ID.0 >> 8 == Family::Tls as u16);

impl Source for TlsWrite {
    fn id(&self) -> SourceId {
        Self::ID
    }

    fn decode(&self, hdr: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError> {
        super::tc_egress::decode_response(hdr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Sources;

    #[test]
    fn a_tls_record_decodes_to_a_tls_request() {
        let hdr = SampleHeader {
            source: SOURCE_TLS_READ,
            client: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2],
            client_port: 40000,
            server_port: 443,
            captured: 3,
            ..Default::default()
        };
        let mut record = hdr.as_bytes().to_vec();
        record.extend(b"GET");
        let Ok(Event::TlsRequest(r)) = Sources::kernel().decode(&record) else {
            panic!("not a TLS request");
        };
        assert_eq!(r.head, b"GET");
        assert_eq!(r.client.to_string(), "198.18.0.2");
        assert_eq!(r.server_port, 443);
    }

    #[test]
    fn a_tls_write_record_decodes_to_a_response_joined_like_egress_ones() {
        use api_guard_common::exchange::{RESPONSE_PAIRED, ResponseRecord};
        let hdr = SampleHeader {
            source: SOURCE_TLS_WRITE,
            client: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2],
            client_port: 40000,
            server_port: 443,
            exchange: 3,
            captured: size_of::<ResponseRecord>() as u32,
            ..Default::default()
        };
        let rec = ResponseRecord {
            request_ns: 10,
            ttfb_ns: 7,
            status: 401,
            _pad: 0,
            flags: RESPONSE_PAIRED,
        };
        let mut record = hdr.as_bytes().to_vec();
        // SAFETY: a plain integer struct viewed as its bytes.
        record.extend_from_slice(unsafe {
            std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<ResponseRecord>())
        });
        let Ok(Event::Response(r)) = Sources::kernel().decode(&record) else {
            panic!("not a response");
        };
        assert_eq!((r.status, r.exchange, r.ttfb_ns), (401, 3, 7));
        assert_eq!(
            (r.client.to_string().as_str(), r.server_port),
            ("198.18.0.2", 443)
        );
    }
}
