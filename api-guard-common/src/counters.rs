//! Per-CPU verdict counters: one slot per (what was counted, verdict) pair, so the
//! daemon can report packets, requests and connections by verdict from one array.

/// What a counter counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Packets = 0,
    Requests = 1,
    Connections = 2,
}

/// What the datapath decided.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Subject to policy (a watched port) and let through.
    Allowed = 0,
    /// Not API traffic (another port, another protocol, not IP): passed untouched.
    Passed = 1,
    /// Could not be parsed (truncated or inconsistent headers): passed untouched.
    Malformed = 2,
    /// Over the client's request limit.
    RateLimited = 3,
    /// From a client serving a block (`--block-for`, or an operator's block).
    Blocked = 4,
    /// From a denied network.
    Denied = 5,
    /// A new connection over `--conn-rate` or `--max-conns`.
    ConnLimited = 6,
    /// Would have been dropped, but `--dry-run` let it through.
    WouldDrop = 7,
    /// Would have been dropped, but the daemon's heartbeat stopped and
    /// `--fail-mode open` let it through.
    FailedOpen = 8,
    /// From a `--trusted-proxy` peer: a connection without a valid PROXY header
    /// under `--proxy-protocol required` (reset), or a segment past a gap in an
    /// unfinished header (dropped until the gap is filled). Also, while key or
    /// route limits are set, a segment past a gap in its stream (dropped until
    /// the gap is filled, so the key stage reads every byte in order).
    ProxyRefused = 9,
    /// A request over its API key's limit (`--key-rate`), at the end of the
    /// key header's value.
    KeyLimited = 10,
    /// A request over a route's limit (`--route-limit`), of its client or key.
    RouteLimited = 11,
    /// From a denied network, dropped by the XDP pre-filter (before an skb
    /// exists); the TC program never sees the packet.
    XdpDenied = 12,
    /// From a blocked network or a client serving a block, dropped by the XDP
    /// pre-filter.
    XdpBlocked = 13,
    /// While key or route limits are set: a segment past a gap in its stream,
    /// dropped until the gap is filled (the key stage reads heads in order).
    OutOfOrder = 14,
    /// A request over its forwarded client's limit (`--trusted-hops`) on a
    /// connection that has carried more than one client (an L7 proxy's pooled
    /// connection): counted and reported (the forwarded blocklist), never
    /// dropped nor reset, as that would hurt every client on it.
    ForwardedReported = 15,
}

pub const KINDS: [Kind; 3] = [Kind::Packets, Kind::Requests, Kind::Connections];
pub const VERDICTS: [Verdict; 16] = [
    Verdict::Allowed,
    Verdict::Passed,
    Verdict::Malformed,
    Verdict::RateLimited,
    Verdict::Blocked,
    Verdict::Denied,
    Verdict::ConnLimited,
    Verdict::WouldDrop,
    Verdict::FailedOpen,
    Verdict::ProxyRefused,
    Verdict::KeyLimited,
    Verdict::RouteLimited,
    Verdict::XdpDenied,
    Verdict::XdpBlocked,
    Verdict::OutOfOrder,
    Verdict::ForwardedReported,
];

/// Per-CPU counts of datapath events that are not verdicts, in the `EVENTS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client entry was created. Minus the entries now tracked, this is the
    /// number of evictions: the LRU map drops its least recently seen client when
    /// full (userspace never deletes clients).
    ClientsCreated = 0,
    /// A request head was sampled into the ring buffer.
    Sampled = 1,
    /// A sample was lost: the ring buffer was full.
    SamplesLost = 2,
    /// A packet from a client the client map could not take (an insert refused
    /// while other CPUs churned the full LRU): passed without per-client limits.
    ClientsRefused = 3,
    /// A block or bucket debt could not be kept in `PENALTIES` (full): it holds in
    /// the client map only, where eviction can lift it.
    PenaltiesFull = 4,
    /// A segment's bytes were accounted without trusted framing (a stream picked up
    /// mid-way, out of order, or retransmitted bytes the server has not taken):
    /// bodies are not skipped, so it may count high.
    StreamsUntrusted = 5,
    /// A connection whose one segment holds more request starts than the burst was
    /// reset: no wait would ever admit it.
    ConnectionsReset = 6,
    /// A client with connections open could not get an `OPEN_CONNS` entry (full):
    /// its connections are not counted for `--max-conns`.
    OpenConnsFull = 7,
    /// A connection from a `--trusted-proxy` peer whose first bytes are no valid
    /// PROXY header (counted once, when that is known).
    ProxyHeaderMissing = 8,
    /// A connection from a trusted peer whose PROXY header named a client.
    ProxyClients = 9,
    /// A segment from a trusted peer on a connection whose start was not seen
    /// (picked up mid-way, or its entry evicted): charged to the peer's address.
    ProxyUnknownStreams = 10,
    /// A request head from a trusted peer whose forwarded list named no client
    /// (`--trusted-hops`): charged to the peer itself.
    ForwardedUnnamed = 11,
    /// A trusted peer's connection began carrying a second client (pooled):
    /// its over-limit requests are reported from then on, not dropped.
    ForwardedPooled = 12,
}

pub const EVENT_SLOTS: u32 = 13;

/// The value of the single `COUNTERS` entry (per CPU): every (kind, verdict)
/// slot in one block, so a packet costs one map lookup however many slots it
/// bumps.
pub type CounterBlock = [u64; SLOTS as usize];

/// The value of the single `EVENTS` entry (per CPU), indexed by [`Event`].
pub type EventBlock = [u64; EVENT_SLOTS as usize];

/// Slots in a [`CounterBlock`].
pub const SLOTS: u32 = (KINDS.len() * VERDICTS.len()) as u32;

/// The slot of a (kind, verdict) pair.
#[inline(always)]
pub const fn index(kind: Kind, verdict: Verdict) -> u32 {
    kind as u32 * VERDICTS.len() as u32 + verdict as u32
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_in_range() {
        let mut seen = [false; SLOTS as usize];
        for k in KINDS {
            for v in VERDICTS {
                let i = index(k, v) as usize;
                assert!(!seen[i]);
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
