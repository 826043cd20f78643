//! A sampled request joined with its response: what the detectors consume
//! (identity, route template and path parameters, status, credential), with
//! no credential value and nothing of the response's content.

use std::net::IpAddr;

use super::{http::AuthScheme, routes::Route};

#[derive(Clone, Copy, Debug)]
pub struct Answered<'a> {
    /// The client's address, and its bucket (IPv6 by `--ipv6-prefix`).
    pub client: IpAddr,
    pub bucket: IpAddr,
    pub method: &'a str,
    /// The path, without its query.
    pub path: &'a str,
    /// Its route template and the values of its parameters.
    pub route: &'a Route,
    pub status: u16,
    /// Request arrival at ingress to the response's first byte at egress.
    pub duration_ns: u64,
    /// The credential's scheme (`None`: no credential).
    pub auth: AuthScheme,
    /// A keyed fingerprint of the credential (see `fingerprint`), never the
    /// credential itself.
    pub credential: Option<u64>,
    /// The kernel's verdict on the request.
    pub verdict: u8,
}
