//! Atomics on map values shared by both CPUs. The BPF target spec offers no
//! compare-and-swap to `core::sync::atomic`, so the intrinsics are used directly;
//! they lower to BPF's atomic instructions, fetch and cmpxchg included, because
//! the linker targets BPF cpu v3 (see build.rs; the kernel has had them since 5.12).

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

#[inline(always)]
pub fn add(counter: &mut u64, n: u64) {
    // SAFETY: the pointer comes from a live map value, aligned to 8 bytes.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Replaces `current` with `new` if it still holds `current`; returns whether it did.
#[inline(always)]
pub fn cas(v: &mut u64, current: u64, new: u64) -> bool {
    // SAFETY: the pointer comes from a live map value, aligned to 8 bytes.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(v, current, new)
            .1
    }
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

/// Takes one from a count that must never go below zero (a close racing another
/// close, or one seen for a count that was never raised); returns the new count.
#[inline(always)]
pub fn dec_floor(v: &mut u64) -> u64 {
    // Bounded for the verifier; the other CPU can win a round at most a few times.
    for _ in 0..4 {
        let cur = read(v);
        if cur == 0 {
            return 0;
        }
        if cas(v, cur, cur - 1) {
            return cur - 1;
        }
    }
    read(v)
}

/// A bucket clock in a map value, shared by every CPU: GCRA's theoretical
/// arrival time, read and swapped atomically.
pub struct Tat<'a>(pub &'a mut u64);

impl api_guard_common::config::TatCell for Tat<'_> {
    #[inline(always)]
    fn load(&mut self) -> u64 {
        read(self.0)
    }
    #[inline(always)]
    fn cas(&mut self, current: u64, new: u64) -> bool {
        cas(self.0, current, new)
    }
}
