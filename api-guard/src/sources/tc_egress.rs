//! Responses the TC egress classifier records for sampled requests: the
//! connection, the request's number on it, the status and the time to first
//! response byte. No body, no header: nothing of the response's content.

use std::net::{IpAddr, Ipv6Addr};

use api_guard_common::{
    exchange::{RESPONSE_PAIRED, ResponseRecord},
    sample::SampleHeader,
};

use super::{DecodeError, Event, Source, SourceId};

/// The response to a sampled request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseSample {
    /// CLOCK_MONOTONIC ns when its first byte left.
    pub ts_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    /// The request's number on its connection (the request sample's too).
    pub exchange: u32,
    pub status: u16,
    /// When the request came in (CLOCK_MONOTONIC ns).
    pub request_ns: u64,
    /// From the request's arrival at ingress to the response's first byte.
    pub ttfb_ns: u64,
}

/// The TC egress classifier as a source.
pub struct TcEgress;

impl Source for TcEgress {
    fn id(&self) -> SourceId {
        SourceId::TC_EGRESS
    }

    fn decode(&self, hdr: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError> {
        decode_response(hdr, data)
    }
}

/// A response record (TC egress's, or the `SSL_write` uprobe's: the same
/// layout) as an event.
pub fn decode_response(hdr: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError> {
    if data.len() != size_of::<ResponseRecord>() {
        return Err(DecodeError::Short { len: data.len() });
    }
    // SAFETY: `data` holds exactly one ResponseRecord's bytes (checked), a
    // plain integer struct valid for any bytes; read unaligned.
    let rec: ResponseRecord = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    if rec.flags & RESPONSE_PAIRED == 0 {
        return Err(DecodeError::Short { len: data.len() });
    }
    Ok(Event::Response(ResponseSample {
        ts_ns: hdr.ts_ns,
        client: address(hdr.client),
        client_port: hdr.client_port,
        server: address(hdr.server),
        server_port: hdr.server_port,
        exchange: hdr.exchange,
        status: rec.status,
        request_ns: rec.request_ns,
        ttfb_ns: rec.ttfb_ns,
    }))
}

fn address(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

#[cfg(test)]
mod tests {
    use api_guard_common::sample::Source as KernelSource;

    use super::*;
    use crate::sources::{Family, Sources};

    #[test]
    fn response_records_decode_and_wrong_sizes_are_refused() {
        let hdr = SampleHeader {
            source: KernelSource::TcEgress as u16,
            client: Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc612, 2]).octets(),
            client_port: 40000,
            exchange: 7,
            captured: size_of::<ResponseRecord>() as u32,
            ..Default::default()
        };
        let rec = ResponseRecord {
            request_ns: 10,
            ttfb_ns: 5,
            status: 404,
            _pad: 0,
            flags: RESPONSE_PAIRED,
        };
        let mut bytes = hdr.as_bytes().to_vec();
        // SAFETY: a plain integer struct viewed as its bytes.
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<ResponseRecord>())
        });
        let Ok(Event::Response(r)) = Sources::kernel().decode(&bytes) else {
            panic!("not a response");
        };
        assert_eq!((r.status, r.exchange, r.ttfb_ns), (404, 7, 5));
        assert_eq!(r.client, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(SourceId::TC_EGRESS.family(), Some(Family::Egress));
        let mut short = hdr;
        short.captured = 3;
        let mut bytes = short.as_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(Sources::kernel().decode(&bytes).is_err());
    }
}
