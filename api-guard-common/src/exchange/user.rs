//! What userspace adds to [`super`]: `aya::Pod` for the map types, names.

use super::{Exchange, ResponseCount, ResponseRecord};

// SAFETY: plain `#[repr(C)]` integers with explicit padding, valid for any bytes.
unsafe impl aya::Pod for Exchange {}
// SAFETY: as above.
unsafe impl aya::Pod for ResponseRecord {}

impl ResponseCount {
    pub const ALL: [ResponseCount; super::RESPONSE_SLOTS as usize] = [
        ResponseCount::Class1xx,
        ResponseCount::Class2xx,
        ResponseCount::Class3xx,
        ResponseCount::Class4xx,
        ResponseCount::Class5xx,
        ResponseCount::Status401,
        ResponseCount::Status403,
        ResponseCount::Status404,
        ResponseCount::Status429,
        ResponseCount::Interim,
        ResponseCount::Paired,
        ResponseCount::Unseen,
        ResponseCount::Overflow,
        ResponseCount::FifoFull,
        ResponseCount::Lost,
        ResponseCount::Recorded,
        ResponseCount::RecordsLost,
        ResponseCount::OverBudget,
    ];

    /// The label value metrics and reports use.
    pub const fn name(self) -> &'static str {
        match self {
            ResponseCount::Class1xx => "1xx",
            ResponseCount::Class2xx => "2xx",
            ResponseCount::Class3xx => "3xx",
            ResponseCount::Class4xx => "4xx",
            ResponseCount::Class5xx => "5xx",
            ResponseCount::Status401 => "401",
            ResponseCount::Status403 => "403",
            ResponseCount::Status404 => "404",
            ResponseCount::Status429 => "429",
            ResponseCount::Interim => "interim",
            ResponseCount::Paired => "paired",
            ResponseCount::Unseen => "unseen",
            ResponseCount::Overflow => "overflow",
            ResponseCount::FifoFull => "fifo_full",
            ResponseCount::Lost => "lost",
            ResponseCount::Recorded => "recorded",
            ResponseCount::RecordsLost => "records_lost",
            ResponseCount::OverBudget => "over_budget",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_in_its_slot() {
        for (i, c) in ResponseCount::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
