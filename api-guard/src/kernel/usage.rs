//! What the fleet sync needs to know of the kernel's per-client counters
//! beyond [`super::KernelMaps::clients`]: which client map they live in, so
//! that counts reported from one map are never reported again from another
//! (a restarted daemon that adopted the pinned map keeps its identity; a fresh
//! map gets a new one).

use anyhow::Result;
use api_guard_common::maps as names;

use super::source::MapSource;

/// The kernel's id of the client map (unique while the kernel runs).
pub fn client_map_id(maps: &impl MapSource) -> Result<u32> {
    let aya::maps::Map::LruHashMap(data) = maps.map(names::CLIENTS)? else {
        anyhow::bail!("map CLIENTS is not an LRU hash");
    };
    Ok(data.info()?.id())
}
