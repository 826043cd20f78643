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
