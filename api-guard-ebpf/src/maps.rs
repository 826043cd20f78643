//! The kernel's maps. Names and sizes come from `api_guard_common::maps`, the one
//! place both sides read them from.

use api_guard_common::{
    client::{ClientKey, ClientState},
    counters,
    maps::{DEFAULT_MAX_CLIENTS, PORT_SLOTS},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};

/// Port flags by destination port (`api_guard_common::ports`), set by the daemon.
#[map(name = "PORTS")]
pub static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// Per-client state; the daemon resizes it from `--max-clients` before loading.
#[map(name = "CLIENTS")]
pub static CLIENTS: LruHashMap<ClientKey, ClientState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CLIENTS, 0);

/// Verdict counters, indexed by `api_guard_common::counters::index`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::SLOTS, 0);
