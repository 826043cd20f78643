//! Per-port flags, the value type of the `PORTS` array (indexed by destination port).

/// Traffic to this port is API traffic: parsed, counted and (later) enforced.
pub const WATCHED: u8 = 1 << 0;
/// TLS is served on this port: the kernel sets it when it ties an `SSL_read`
/// to a connection to the port. The TC path then leaves request counting to
/// the uprobes, acts on their verdicts, and refuses new connections from a
/// client whose request bucket is empty.
pub const TLS: u8 = 1 << 1;
