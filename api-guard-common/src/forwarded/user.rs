//! What userspace adds to [`super`]: `aya::Pod` for the map types.

use super::{FwdConn, Reported};

// SAFETY: `#[repr(C)]` integers and byte arrays, padding explicit (sizes
// checked by a test).
unsafe impl aya::Pod for FwdConn {}
// SAFETY: as above.
unsafe impl aya::Pod for Reported {}
