//! What userspace adds to [`super`]: `aya::Pod` for the map value.

use super::ProxyConn;

// SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding (checked by
// a test of the size).
unsafe impl aya::Pod for ProxyConn {}
