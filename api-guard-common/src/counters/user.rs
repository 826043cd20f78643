//! What userspace adds to [`super`]: `aya::Pod` for the map types, and
//! conversions and names the kernel has no use for.

use super::{Kind, Verdict};

impl Kind {
    /// The label value the metrics and reports use.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Packets => "packets",
            Kind::Requests => "requests",
            Kind::Connections => "connections",
        }
    }
}

impl Verdict {
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Passed => "passed",
            Verdict::Malformed => "malformed",
            Verdict::RateLimited => "rate_limited",
            Verdict::Blocked => "blocked",
            Verdict::Denied => "denied",
            Verdict::ConnLimited => "conn_limited",
            Verdict::WouldDrop => "would_drop",
            Verdict::FailedOpen => "failed_open",
            Verdict::ProxyRefused => "proxy_refused",
            Verdict::KeyLimited => "key_limited",
            Verdict::RouteLimited => "route_limited",
            Verdict::XdpDenied => "xdp_denied",
            Verdict::XdpBlocked => "xdp_blocked",
            Verdict::OutOfOrder => "out_of_order",
            Verdict::ForwardedReported => "forwarded_reported",
        }
    }
}
