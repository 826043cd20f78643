//! What the kernel's maps hold, read by bpftool (not by the daemon): for the
//! suites that prove no credential stays in any map.

use anyhow::{Context, Result, ensure};

use crate::netns::Netns;

/// Every byte of every map of the loaded api-guard programs, with the map's
/// name. Ring buffers cannot be dumped and are left out.
pub fn all_map_bytes(ns: &Netns) -> Result<Vec<(String, Vec<u8>)>> {
    let progs = ns.exec("bpftool", &["-j", "prog", "show"])?;
    let progs: serde_json::Value = serde_json::from_str(&progs)?;
    let mut ids: Vec<u64> = progs
        .as_array()
        .context("prog list")?
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("api_guard"))
        })
        .filter_map(|p| p["map_ids"].as_array())
        .flatten()
        .filter_map(|i| i.as_u64())
        .collect();
    ids.sort();
    ids.dedup();
    ensure!(!ids.is_empty(), "no maps of api-guard found");
    let mut maps = Vec::new();
    for id in ids {
        let Ok(dump) = ns.exec("bpftool", &["-j", "map", "dump", "id", &id.to_string()]) else {
            continue; // a ring buffer cannot be dumped
        };
        let info = ns.exec("bpftool", &["-j", "map", "show", "id", &id.to_string()])?;
        let info: serde_json::Value = serde_json::from_str(&info)?;
        let name = info["name"].as_str().unwrap_or("?").to_string();
        let mut bytes = Vec::new();
        let mut stack = vec![serde_json::from_str::<serde_json::Value>(&dump)?];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::String(s) if s.starts_with("0x") => {
                    if let Ok(b) = u8::from_str_radix(&s[2..], 16) {
                        bytes.push(b);
                    }
                }
                serde_json::Value::Array(a) => stack.extend(a.into_iter().rev()),
                serde_json::Value::Object(o) => stack.extend(o.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
        maps.push((name, bytes));
    }
    Ok(maps)
}

/// The maps holding any `window` consecutive bytes of `secret`.
pub fn maps_holding(maps: &[(String, Vec<u8>)], secret: &[u8], window: usize) -> Vec<String> {
    maps.iter()
        .filter(|(_, bytes)| {
            secret
                .windows(window)
                .any(|w| bytes.windows(window).any(|b| b == w))
        })
        .map(|(name, _)| name.clone())
        .collect()
}
