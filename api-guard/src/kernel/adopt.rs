//! Adopted state: pinned maps an earlier daemon left are reused only if this
//! build lays them out the same way.

use std::path::Path;

use anyhow::Result;
use api_guard_common::maps as names;
use aya::Ebpf;

use super::layout::PINNED;
use crate::failure::Failure;

/// Key and value sizes of the pinned maps, as this build lays them out.
fn expected_sizes(name: &str) -> Option<(usize, usize)> {
    use api_guard_common::{client, config, conn, counters, network::NetKey};
    use std::mem::size_of;
    let lpm_key = size_of::<u32>() + size_of::<NetKey>();
    Some(match name {
        names::PORTS => (4, 1),
        names::CONFIG => (4, size_of::<config::Config>()),
        names::CLIENTS => (
            size_of::<client::ClientKey>(),
            size_of::<client::ClientState>(),
        ),
        names::ALLOW | names::DENY => (lpm_key, 1),
        names::BLOCKS => (lpm_key, 8),
        names::OVERRIDES => (lpm_key, size_of::<config::Limit>()),
        names::COUNTERS => (4, size_of::<counters::CounterBlock>()),
        names::EVENTS => (4, size_of::<counters::EventBlock>()),
        names::HEARTBEAT => (4, 8),
        names::CONNS => (size_of::<conn::ConnKey>(), size_of::<conn::ConnState>()),
        names::PENALTIES => (size_of::<client::ClientKey>(), size_of::<client::Penalty>()),
        names::OPEN_CONNS => (size_of::<client::ClientKey>(), 8),
        api_guard_common::tls::TLS_STATUS => (
            size_of::<api_guard_common::tls::TlsStatusKey>(),
            size_of::<api_guard_common::tls::TlsStatus>(),
        ),
        names::EXCHANGES => (
            size_of::<conn::ConnKey>(),
            size_of::<api_guard_common::exchange::Exchange>(),
        ),
        names::RESPONSES => (4, size_of::<api_guard_common::exchange::ResponseBlock>()),
        names::TRUSTED_PROXIES => (lpm_key, 1),
        names::PROXY_CONNS => (
            size_of::<conn::ConnKey>(),
            size_of::<api_guard_common::proxy::ProxyConn>(),
        ),
        api_guard_common::detect::DETECT_CLIENTS => (
            size_of::<client::ClientKey>(),
            size_of::<api_guard_common::detect::DetectClient>(),
        ),
        _ => return None,
    })
}

/// Refuses pinned state laid out by another api-guard build: adopting it would
/// misread every entry.
pub fn check(ebpf: &Ebpf, dir: &Path) -> Result<()> {
    use aya::maps::Map;
    for name in PINNED {
        let Some((key, value)) = expected_sizes(name) else {
            continue;
        };
        let data = match ebpf.map(name) {
            Some(
                Map::Array(d)
                | Map::LruHashMap(d)
                | Map::LpmTrie(d)
                | Map::PerCpuArray(d)
                | Map::HashMap(d),
            ) => d,
            _ => continue,
        };
        let info = data.info()?;
        if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
            return Err(Failure::PinDir(format!(
                    "the pinned state in {} is from an incompatible api-guard (map {name} has {}-byte keys and {}-byte values, this build uses {key} and {value}); remove it with `api-guard detach --pin-dir {}`",
                    dir.display(),
                    info.key_size(),
                    info.value_size(),
                dir.display()
            ))
            .into());
        }
    }
    Ok(())
}
