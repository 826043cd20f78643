//! What userspace adds to [`super`]: `aya::Pod` for the map value.

// SAFETY: `#[repr(C)]`, all fields plain integers, no padding (see the size test).
unsafe impl aya::Pod for super::DetectClient {}
