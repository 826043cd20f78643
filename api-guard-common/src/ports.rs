//! Per-port flags, the value type of the `PORTS` array (indexed by destination port).

/// Traffic to this port is API traffic: parsed, counted and (later) enforced.
pub const WATCHED: u8 = 1 << 0;
