//! Who a client is (the map key) and what the kernel keeps about it (the value).

/// A client address, always 16 bytes in network order: IPv6 as is, IPv4 as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one map holds both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: [u8; 16],
}

impl ClientKey {
    /// The IPv4-mapped form of an IPv4 address given as its 4 network-order bytes.
    #[inline(always)]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }

    #[inline(always)]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }

    /// The key of an IPv6 client bucketed by `prefix` bits; IPv4 keys stay whole.
    #[inline(always)]
    pub fn bucketed(mut self, ipv6_prefix: u32) -> Self {
        if !crate::network::is_v4_mapped(&self.addr) {
            crate::network::mask(&mut self.addr, ipv6_prefix);
        }
        self
    }
}

/// What the kernel keeps per client. Counters are bumped with atomic adds because
/// both CPUs may update one client at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientState {
    /// HTTP request starts seen from this client to watched ports.
    pub requests: u64,
    /// New connections (SYN without ACK) to watched ports.
    pub connections: u64,
    /// All TCP packets to watched ports.
    pub packets: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last request or connection.
    pub last_seen_ns: u64,
    /// GCRA theoretical arrival time of the request limit (see `config::Limit`).
    pub request_tat_ns: u64,
    /// GCRA theoretical arrival time of the connection-rate limit.
    pub conn_tat_ns: u64,
    /// Every packet to a watched port is dropped until this time (0: not blocked).
    pub blocked_until_ns: u64,
    /// Established connections now open: a copy of the `OPEN_CONNS` count (kept
    /// by the sock_ops program), which eviction cannot reset.
    pub open_conns: u64,
}

/// What survives the client map's eviction of a client the kernel has judged: its
/// block and its buckets' clocks (a debt), kept in the non-LRU `PENALTIES` map and
/// restored when the client is tracked again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Penalty {
    pub blocked_until_ns: u64,
    pub request_tat_ns: u64,
    pub conn_tat_ns: u64,
}

impl Penalty {
    /// Whether it still says anything at `now`.
    #[inline(always)]
    pub const fn in_force(&self, now: u64) -> bool {
        self.blocked_until_ns > now || self.request_tat_ns > now || self.conn_tat_ns > now
    }
}

#[cfg(feature = "user")]
mod user;
