//! What userspace adds to [`super`]: `aya::Pod` for the map types, and
//! conversions and names the kernel has no use for.

// SAFETY: `#[repr(C)]` u64 fields, no padding.
unsafe impl aya::Pod for super::Limit {}
// SAFETY: `#[repr(C)]`: 2 Limits, 4 u64, 4 u32 — no padding.
unsafe impl aya::Pod for super::Config {}
