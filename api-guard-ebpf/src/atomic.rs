//! Atomic adds on map values shared by both CPUs. The BPF target has no
//! compare-and-swap, so `AtomicU64::fetch_add` is not offered; the intrinsic lowers
//! to BPF's atomic add all the same (the result is never used: that would need
//! BPF cpu v3, which the linker is not asked for).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

#[inline(always)]
pub fn add(counter: &mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value, aligned to 8 bytes.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
pub fn sub(counter: &mut u64, n: u64) {
    add(counter, 0u64.wrapping_sub(n));
}

/// A plain read that the compiler may not cache (another CPU may write it).
#[inline(always)]
pub fn read(v: &u64) -> u64 {
    // SAFETY: a valid, aligned reference.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn write(v: &mut u64, value: u64) {
    // SAFETY: a valid, aligned reference.
    unsafe { core::ptr::write_volatile(v, value) }
}
