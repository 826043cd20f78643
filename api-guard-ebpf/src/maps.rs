//! The kernel's maps. Names and sizes come from `api_guard_common::maps`, the one
//! place both sides read them from.

use api_guard_common::{
    client::{ClientKey, ClientState, Penalty},
    config::{Config, Limit},
    conn::{ConnKey, ConnState, DEFAULT_MAX_CONNS_TRACKED},
    counters,
    maps::{
        DEFAULT_MAX_CLIENTS, NETWORK_SLOTS, OPEN_CONN_SLOTS, PENALTY_SLOTS, PORT_SLOTS, TAIL_SLOTS,
    },
    network::NetKey,
    sample::{DEFAULT_RING_BYTES, SampleBuf},
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};

/// Port flags by destination port (`api_guard_common::ports`), set by the daemon.
#[map(name = "PORTS")]
pub static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// The policy, one entry.
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-client state; the daemon resizes it from `--max-clients` before loading.
#[map(name = "CLIENTS")]
pub static CLIENTS: LruHashMap<ClientKey, ClientState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CLIENTS, 0);

/// Networks never limited or dropped.
#[map(name = "ALLOW")]
pub static ALLOW: LpmTrie<NetKey, u8> = LpmTrie::with_max_entries(NETWORK_SLOTS, BPF_F_NO_PREALLOC);

/// Networks always dropped.
#[map(name = "DENY")]
pub static DENY: LpmTrie<NetKey, u8> = LpmTrie::with_max_entries(NETWORK_SLOTS, BPF_F_NO_PREALLOC);

/// Operator and auth blocks: network → deadline (CLOCK_MONOTONIC ns).
#[map(name = "BLOCKS")]
pub static BLOCKS: LpmTrie<NetKey, u64> =
    LpmTrie::with_max_entries(NETWORK_SLOTS, BPF_F_NO_PREALLOC);

/// Per-network request limits; the longest matching prefix wins.
#[map(name = "OVERRIDES")]
pub static OVERRIDES: LpmTrie<NetKey, Limit> =
    LpmTrie::with_max_entries(NETWORK_SLOTS, BPF_F_NO_PREALLOC);

/// Verdict counters, indexed by `api_guard_common::counters::index`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<counters::CounterBlock> = PerCpuArray::with_max_entries(1, 0);

/// The daemon's last sign of life (CLOCK_MONOTONIC ns), for `--fail-mode open`.
#[map(name = "HEARTBEAT")]
pub static HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

/// Tail-call targets (`api_guard_common::maps::TAIL_*`), filled by the daemon.
#[map(name = "TAILS")]
pub static TAILS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

/// Event counters, indexed by `api_guard_common::counters::Event`.
#[map(name = "EVENTS")]
pub static EVENTS: PerCpuArray<counters::EventBlock> = PerCpuArray::with_max_entries(1, 0);

/// Sampled request heads for the daemon; resized from `--sample-buffer`.
#[map(name = "SAMPLES")]
pub static SAMPLES: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU space where a sample is built before it is copied out.
#[map(name = "SAMPLE_SCRATCH")]
pub static SAMPLE_SCRATCH: PerCpuArray<SampleBuf> = PerCpuArray::with_max_entries(1, 0);

/// Where the request parser stands in each connection (stream.rs).
#[map(name = "CONNS")]
pub static CONNS: LruHashMap<ConnKey, ConnState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS_TRACKED, 0);

/// Blocks and bucket debts the client map's eviction cannot erase (not LRU).
#[map(name = "PENALTIES")]
pub static PENALTIES: HashMap<ClientKey, Penalty> = HashMap::with_max_entries(PENALTY_SLOTS, 0);

/// Established connections per client, for `--max-conns` (not LRU, so eviction
/// cannot reset a count).
#[map(name = "OPEN_CONNS")]
pub static OPEN_CONNS: HashMap<ClientKey, u64> = HashMap::with_max_entries(OPEN_CONN_SLOTS, 0);

/// Per-CPU space for the stream stage's connection key, new state and words.
#[map(name = "STREAM_SCRATCH")]
pub static STREAM_SCRATCH: PerCpuArray<crate::stream::StreamScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-connection request FIFO and response framing (exchange.rs, egress.rs).
#[map(name = "EXCHANGES")]
pub static EXCHANGES: LruHashMap<ConnKey, api_guard_common::exchange::Exchange> =
    LruHashMap::with_max_entries(api_guard_common::exchange::DEFAULT_MAX_EXCHANGES, 0);

/// Response counters, indexed by `api_guard_common::exchange::ResponseCount`.
#[map(name = "RESPONSES")]
pub static RESPONSES: PerCpuArray<api_guard_common::exchange::ResponseBlock> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU space for the egress program's connection, snapshot and record.
#[map(name = "REPLY_SCRATCH")]
pub static REPLY_SCRATCH: PerCpuArray<crate::egress::ReplyScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// The per-second sample budget (budget.rs), written by the daemon.
#[map(name = "SAMPLE_BUDGET")]
pub static SAMPLE_BUDGET: Array<api_guard_common::budget::SampleBudget> =
    Array::with_max_entries(1, 0);
/// `--trusted-proxy` networks: their connections' PROXY headers name the client.
#[map(name = "TRUSTED_PROXIES")]
pub static TRUSTED_PROXIES: LpmTrie<NetKey, u8> =
    LpmTrie::with_max_entries(NETWORK_SLOTS, BPF_F_NO_PREALLOC);

/// Connections from trusted peers: where their PROXY header's parser stands and
/// the client it named (proxy.rs).
#[map(name = "PROXY_CONNS")]
pub static PROXY_CONNS: LruHashMap<ConnKey, api_guard_common::proxy::ProxyConn> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS_TRACKED, 0);

/// Per-CPU space for the PROXY header stage.
#[map(name = "PROXY_SCRATCH")]
pub static PROXY_SCRATCH: PerCpuArray<crate::proxy::ProxyScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// What the daemon's detectors know per client, for `api-guard status` and
/// `top`: written by the daemon, pinned, never read here.
#[map(name = "DETECT_CLIENTS")]
pub static DETECT_CLIENTS: HashMap<ClientKey, api_guard_common::detect::DetectClient> =
    HashMap::with_max_entries(api_guard_common::detect::DETECT_SLOTS, 0);

/// The key and route policy (keys.rs), one entry, changed live.
#[map(name = "KEY_POLICY")]
pub static KEY_POLICY: Array<api_guard_common::keys::KeyPolicy> = Array::with_max_entries(1, 0);

/// The keyed hash's secret, drawn at each daemon start.
#[map(name = "KEY_SECRET")]
pub static KEY_SECRET: Array<[u64; 2]> = Array::with_max_entries(1, 0);

/// Key and route buckets: GCRA clocks keyed by a key's keyed hash or a
/// client's address, never by a key.
#[map(name = "LIMIT_BUCKETS")]
pub static LIMIT_BUCKETS: LruHashMap<api_guard_common::keys::BucketKey, u64> =
    LruHashMap::with_max_entries(api_guard_common::maps::LIMIT_BUCKET_SLOTS, 0);

/// Where the key parser stands in each connection (keys.rs).
#[map(name = "KEY_CONNS")]
pub static KEY_CONNS: LruHashMap<ConnKey, api_guard_common::keys::KeyParse> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS_TRACKED, 0);

/// Per-CPU space for the key stage.
#[map(name = "KEY_SCRATCH")]
pub static KEY_SCRATCH: PerCpuArray<crate::keys::KeyScratch> = PerCpuArray::with_max_entries(1, 0);

/// Where the forwarded-list parser stands in each trusted peer's connection,
/// and the clients it carried (forwarded.rs).
#[map(name = "FWD_CONNS")]
pub static FWD_CONNS: LruHashMap<ConnKey, api_guard_common::forwarded::FwdConn> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS_TRACKED, 0);

/// Forwarded clients over their limit on pooled connections: the daemon's
/// forwarded blocklist is made from it.
#[map(name = "FWD_REPORTED")]
pub static FWD_REPORTED: LruHashMap<ClientKey, api_guard_common::forwarded::Reported> =
    LruHashMap::with_max_entries(api_guard_common::maps::FWD_REPORTED_SLOTS, 0);

/// Per-CPU space for the forwarded stage.
#[map(name = "FWD_SCRATCH")]
pub static FWD_SCRATCH: PerCpuArray<crate::forwarded::FwdScratch> =
    PerCpuArray::with_max_entries(1, 0);
