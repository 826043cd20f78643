//! Where typed map access finds its maps: a leaf, so the loader, the pins and
//! the typed access (`maps`) need not import each other. Each kind of holder
//! implements [`MapSource`] next to its own type.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::maps::Map;

/// Where the maps come from: the daemon's own loaded programs
/// ([`super::loader::Datapath`]), the pins a running daemon left for operator
/// commands ([`super::pins::Pinned`]), or a task's own handles ([`MapSet`]).
pub trait MapSource {
    fn map(&self, name: &str) -> Result<&Map>;
    fn map_mut(&mut self, name: &str) -> Result<&mut Map>;
}

/// Maps opened on their own file descriptors: one task's handles to the
/// kernel's maps, shared with no other task (no lock between them).
pub struct MapSet {
    maps: HashMap<&'static str, Map>,
    /// Where they came from, for errors.
    what: &'static str,
}

impl MapSet {
    pub fn new(what: &'static str, maps: HashMap<&'static str, Map>) -> Self {
        Self { maps, what }
    }
}

impl MapSource for MapSet {
    fn map(&self, name: &str) -> Result<&Map> {
        self.maps
            .get(name)
            .with_context(|| format!("map {name} is not {}", self.what))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.maps
            .get_mut(name)
            .with_context(|| format!("map {name} is not {}", self.what))
    }
}
