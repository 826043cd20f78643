//! Request starts the TC ingress classifier samples: the packet's addresses,
//! the kernel's verdict, and the head of the request.

use std::net::{IpAddr, Ipv6Addr};

use api_guard_common::sample::{SAMPLE_IPV6, SampleHeader};

use super::{DecodeError, Event, Source, SourceId};

/// A sampled request start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSample {
    /// CLOCK_MONOTONIC ns when the packet was seen.
    pub ts_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
    pub ipv6: bool,
    /// The interface it came in on.
    pub ifindex: u32,
    /// The kernel's verdict (`counters::Verdict`).
    pub verdict: u8,
    /// The TCP payload length (the capture may be shorter).
    pub payload_len: u32,
    /// The captured payload: the request head, or its start.
    pub head: Vec<u8>,
    /// The request's number on its connection, which its response record
    /// carries too; `NO_EXCHANGE` when it has none (not paired).
    pub exchange: u32,
}

/// The TC ingress classifier as a source.
pub struct TcIngress;

impl Source for TcIngress {
    fn id(&self) -> SourceId {
        SourceId::TC_INGRESS
    }

    fn decode(&self, hdr: &SampleHeader, data: &[u8]) -> Result<Event, DecodeError> {
        Ok(Event::Request(RequestSample::of(hdr, data)))
    }
}

impl RequestSample {
    /// A request record's header and captured head (TC ingress and the TLS
    /// uprobes write the same layout).
    pub(super) fn of(hdr: &SampleHeader, data: &[u8]) -> Self {
        RequestSample {
            ts_ns: hdr.ts_ns,
            client: address(hdr.client),
            client_port: hdr.client_port,
            server: address(hdr.server),
            server_port: hdr.server_port,
            ipv6: hdr.flags & SAMPLE_IPV6 != 0,
            ifindex: hdr.ifindex,
            verdict: hdr.verdict,
            payload_len: hdr.payload_len,
            head: data.to_vec(),
            exchange: hdr.exchange,
        }
    }
}

pub(super) fn address(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}
