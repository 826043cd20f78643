//! Per-connection state for request accounting (the `CONNS` map): where the
//! kernel's parser stands in each client→server byte stream.

use crate::stream::Framing;

/// A connection as the server's ingress sees it. Addresses are 16 bytes, IPv4 as
/// IPv4-mapped IPv6, like [`crate::client::ClientKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub _pad: u32,
}

/// `ConnState::flags`: a SYN with another initial sequence number was seen on a
/// tracked connection, so bytes before `next_seq` are not known to be the ones
/// that were accounted: they are charged again when they come.
pub const CONN_SUSPECT: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// The parser at `next_seq`.
    pub framing: Framing,
    /// Sequence number of the first byte not yet accounted.
    pub next_seq: u32,
    pub flags: u32,
}

/// Connections tracked at once; the least recently seen is evicted past this (its
/// next segment is then accounted untrusted, erring high).
pub const DEFAULT_MAX_CONNS_TRACKED: u32 = 131_072;
