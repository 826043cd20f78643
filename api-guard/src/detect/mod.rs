//! Findings from events: each detector looks at what the pipeline made of one
//! event and may ask for an action. Detectors never touch the kernel: the
//! caller decides whether a finding is acted on (through `enforce`) or only
//! reported, so dry-run is the caller's, not the detector's.

pub mod auth;

use std::{net::IpAddr, time::Instant};

use crate::pipeline::http::RequestHead;

/// One request as the detectors see it.
pub struct Observation<'a> {
    pub client: IpAddr,
    /// The client's bucket: its address, or its IPv6 prefix.
    pub bucket: IpAddr,
    /// The kernel's verdict on the packet (`counters::Verdict`).
    pub verdict: u8,
    pub head: &'a RequestHead<'a>,
    /// Whether it lacks a credential it should carry (see `auth`).
    pub missing_auth: bool,
}

/// What a detector asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Block this client's bucket for `--block-for`.
    Block { client: IpAddr, reason: Reason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Too many requests without credentials.
    NoCredentials,
}

impl Reason {
    pub const fn describe(self) -> &'static str {
        match self {
            Reason::NoCredentials => "too many requests without credentials",
        }
    }
}

pub trait Detector: Send {
    /// Looks at one request; a finding when it calls for action.
    fn observe(&mut self, seen: &Observation<'_>, now: Instant) -> Option<Finding>;
    /// Forgets what is too old to matter (called every second).
    fn prune(&mut self, _now: Instant) {}
}
