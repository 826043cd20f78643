//! What userspace adds to [`super`]: `aya::Pod` for the map types.

// SAFETY: `#[repr(C)]`, all fields plain integers, no padding (see the size test).
unsafe impl aya::Pod for super::SockOffsets {}

// SAFETY: as above.
unsafe impl aya::Pod for super::TlsStatusKey {}

// SAFETY: as above.
unsafe impl aya::Pod for super::TlsStatus {}
