//! The per-second sample budget, taken in the sampler (a tail-called program
//! of its own, so the judge's verifier load does not grow): one token a sample
//! from a bucket shared by every CPU (GCRA, compare-and-swap). Over it, the
//! sample is not taken, and counted.

use api_guard_common::{config::Take, exchange::ResponseCount};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{atomic::Tat, exchange::count, maps::SAMPLE_BUDGET};

/// Whether this sample fits in the second's budget (always, with none set).
#[inline(always)]
pub fn take() -> bool {
    let Some(b) = SAMPLE_BUDGET.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the map's one live value; the clock is only touched atomically.
    let b = unsafe { &mut *b };
    if !b.limit.is_set() {
        return true;
    }
    let limit = b.limit;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if limit.take(&mut Tat(&mut b.tat), now, 1) == Take::Admitted {
        return true;
    }
    count(ResponseCount::OverBudget, 1);
    false
}
