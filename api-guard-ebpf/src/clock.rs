//! `bpf_ktime_get_ns`, read at most once a packet and only when a stage needs it:
//! a bare ACK or a denied packet never pays for the clock.

use aya_ebpf::helpers::bpf_ktime_get_ns;

pub struct Clock(u64);

impl Clock {
    #[inline(always)]
    pub const fn new() -> Self {
        Clock(0)
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}
