//! The one place that knows map names and sizes. The kernel crate declares its maps
//! with these names; the daemon and the tests look them up by the same constants.

/// Per-port flags ([`crate::ports`]), an array indexed by TCP destination port.
pub const PORTS: &str = "PORTS";
/// Per-client state ([`crate::client::ClientState`]), an LRU hash keyed by client.
pub const CLIENTS: &str = "CLIENTS";
/// Per-CPU verdict counters, an array indexed by [`crate::counters::index`].
pub const COUNTERS: &str = "COUNTERS";

/// Default bound of the client map; the LRU evicts the least recently seen client
/// beyond it.
pub const DEFAULT_MAX_CLIENTS: u32 = 65_536;
/// One slot per possible TCP port.
pub const PORT_SLOTS: u32 = 65_536;
/// Per-CPU event counters, an array indexed by [`crate::counters::Event`].
pub const EVENTS: &str = "EVENTS";
/// The policy ([`crate::config::Config`]), an array of one.
pub const CONFIG: &str = "CONFIG";
/// Networks never limited or dropped, an LPM trie of [`crate::network::NetKey`].
pub const ALLOW: &str = "ALLOW";
/// Networks always dropped.
pub const DENY: &str = "DENY";
/// Operator and auth blocks: networks dropped until a deadline (a u64 of
/// CLOCK_MONOTONIC nanoseconds; u64::MAX for no deadline).
pub const BLOCKS: &str = "BLOCKS";
/// Per-network request limits ([`crate::config::Limit`]); the longest prefix wins.
pub const OVERRIDES: &str = "OVERRIDES";

/// The daemon's heartbeat: CLOCK_MONOTONIC nanoseconds of its last sign of life,
/// an array of one u64 (see `Config::heartbeat_timeout_ns`).
pub const HEARTBEAT: &str = "HEARTBEAT";

/// Entries in each network list.
pub const NETWORK_SLOTS: u32 = 16_384;
/// Tail-call targets of the ingress program, indexed by the `TAIL_*` slots.
pub const TAILS: &str = "TAILS";
/// Slot of the reset rewriter (`--on-limit reset`): a program of its own so that
/// the verifier checks it once, not once per parse path of the ingress program.
pub const TAIL_RESET: u32 = 0;
/// Slot of the sampler: copies a request head into the ring buffer.
pub const TAIL_SAMPLE: u32 = 1;
/// Slot of the judge: per-client state, the stream stage, limits and counts. A
/// program of its own so the verifier checks it once, whatever path the parser
/// took (VLAN tags, IP options, extension headers) to reach it.
pub const TAIL_JUDGE: u32 = 2;
/// Slot of the proxy program: who a `--trusted-proxy` peer's client is (its
/// PROXY header), before the judge. A program of its own for the verifier, and
/// so the judge's stack stays its own.
pub const TAIL_PROXY: u32 = 3;
/// Slot of the judge for a trusted peer's packets (tail-called by the proxy
/// program): a program of its own, so the direct judge is verified unchanged.
pub const TAIL_JUDGE_PROXIED: u32 = 4;
/// Slots of the judges for a TLS port's packets (direct, and a trusted peer's):
/// no stream stage (the libssl uprobes count the plaintext), the uprobes'
/// verdicts and the empty-bucket gate instead. Programs of their own: with
/// both ways in one program the verifier went past its million instructions.
pub const TAIL_JUDGE_TLS: u32 = 5;
pub const TAIL_JUDGE_PROXIED_TLS: u32 = 6;
/// Slot of the key stage (`--key-header`, `--route-limit`): key and route
/// limits after the judge let a segment through (its own program, so the
/// judges stay under the verifier's limit).
pub const TAIL_KEYS: u32 = 7;
/// Slot of the forwarded stage (`--trusted-hops`): a trusted peer's requests
/// charged to the client its `X-Forwarded-For` / `Forwarded` list names,
/// after the proxied judge let the segment through.
pub const TAIL_FORWARDED: u32 = 8;
pub const TAIL_SLOTS: u32 = 9;
/// Sampled request heads ([`crate::sample`]), a ring buffer.
pub const SAMPLES: &str = "SAMPLES";
/// Per-CPU scratch space where a sample is built before it is copied out.
pub const SAMPLE_SCRATCH: &str = "SAMPLE_SCRATCH";

/// Per-connection accounting state ([`crate::conn::ConnState`]), an LRU hash keyed
/// by [`crate::conn::ConnKey`].
pub const CONNS: &str = "CONNS";
/// Blocks and bucket debts that the client map's eviction cannot erase
/// ([`crate::client::Penalty`]), a hash keyed by client; not LRU, so a spoofed
/// flood cannot push an entry out. Full: counted (`Event::PenaltiesFull`).
pub const PENALTIES: &str = "PENALTIES";
/// Entries in `PENALTIES`.
pub const PENALTY_SLOTS: u32 = 16_384;
/// Established connections per client (a u64), for `--max-conns`; a hash keyed
/// by client, an entry only while the client has connections open.
pub const OPEN_CONNS: &str = "OPEN_CONNS";
/// Entries in `OPEN_CONNS`: clients with connections open at once.
pub const OPEN_CONN_SLOTS: u32 = 65_536;
/// Per-connection request FIFO and response framing
/// ([`crate::exchange::Exchange`]), an LRU hash keyed by [`crate::conn::ConnKey`].
pub const EXCHANGES: &str = "EXCHANGES";
/// Per-CPU response counters ([`crate::exchange::ResponseBlock`]), an array of one.
pub const RESPONSES: &str = "RESPONSES";
/// The per-second sample budget ([`crate::budget::SampleBudget`]), an array of one.
pub const SAMPLE_BUDGET: &str = "SAMPLE_BUDGET";
/// Peers whose PROXY protocol headers name the client (`--trusted-proxy`), an
/// LPM trie of [`crate::network::NetKey`].
pub const TRUSTED_PROXIES: &str = "TRUSTED_PROXIES";
/// Connections from trusted peers and the client their PROXY header named
/// ([`crate::proxy::ProxyConn`]), an LRU hash keyed by [`crate::conn::ConnKey`].
pub const PROXY_CONNS: &str = "PROXY_CONNS";
/// Per-CPU space for the PROXY header stage.
pub const PROXY_SCRATCH: &str = "PROXY_SCRATCH";
/// The key and route policy ([`crate::keys::KeyPolicy`]), an array of one.
pub const KEY_POLICY: &str = "KEY_POLICY";
/// The keyed hash's secret (two u64), an array of one: drawn at each daemon
/// start, never pinned.
pub const KEY_SECRET: &str = "KEY_SECRET";
/// Key and route buckets ([`crate::keys::BucketKey`] → GCRA clock u64), an
/// LRU hash.
pub const LIMIT_BUCKETS: &str = "LIMIT_BUCKETS";
/// Entries in `LIMIT_BUCKETS`.
pub const LIMIT_BUCKET_SLOTS: u32 = 65_536;
/// Where the key parser stands in each connection
/// ([`crate::keys::KeyParse`]), an LRU hash keyed by [`crate::conn::ConnKey`].
pub const KEY_CONNS: &str = "KEY_CONNS";
/// Where the forwarded-list parser stands in each trusted peer's connection,
/// and which clients the connection carried
/// ([`crate::forwarded::FwdConn`]), an LRU hash keyed by [`crate::conn::ConnKey`].
pub const FWD_CONNS: &str = "FWD_CONNS";
/// Forwarded clients whose requests went over their limit on a pooled
/// connection ([`crate::forwarded::Reported`]), an LRU hash keyed by the
/// client's bucketed address: what the forwarded blocklist is made from.
pub const FWD_REPORTED: &str = "FWD_REPORTED";
/// Entries in `FWD_REPORTED`.
pub const FWD_REPORTED_SLOTS: u32 = 16_384;
