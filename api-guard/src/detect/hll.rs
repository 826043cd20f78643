//! HyperLogLog: an approximate distinct counter in a fixed 256 bytes (about
//! 6.5% standard error), for a window's distinct values past the exact bound.

/// Register index bits: 2^8 registers of one byte.
const P: u32 = 8;
const M: usize = 1 << P;

#[derive(Clone)]
pub struct Hll {
    registers: [u8; M],
}

impl Default for Hll {
    fn default() -> Self {
        Self { registers: [0; M] }
    }
}

/// A 64-bit mixer (splitmix64's finalizer): values that are small numbers
/// (object IDs) must spread over the registers.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Hll {
    pub fn insert(&mut self, value: u64) {
        let h = mix(value);
        let idx = (h >> (64 - P)) as usize;
        // Rank of the first set bit in the remaining bits (1-based).
        let rest = (h << P) | (1 << (P - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if self.registers[idx] < rank {
            self.registers[idx] = rank;
        }
    }

    /// Takes the maximum register by register: the union of both sets.
    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.registers.iter_mut().zip(&other.registers) {
            *a = (*a).max(*b);
        }
    }

    pub fn estimate(&self) -> u64 {
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let sum: f64 = self
            .registers
            .iter()
            .map(|r| 2f64.powi(-i32::from(*r)))
            .sum();
        let raw = alpha * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        // Small ranges: linear counting is the better estimate.
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_within_a_few_standard_errors() {
        for n in [10u64, 100, 1_000, 10_000, 100_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.insert(i);
                // Repeats change nothing.
                h.insert(i);
            }
            let e = h.estimate() as f64;
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.2, "n={n} estimate={e}");
        }
    }

    #[test]
    fn merge_is_the_union() {
        let (mut a, mut b) = (Hll::default(), Hll::default());
        for i in 0..500 {
            a.insert(i);
        }
        for i in 250..750 {
            b.insert(i);
        }
        a.merge(&b);
        let e = a.estimate() as f64;
        assert!((e - 750.0).abs() / 750.0 < 0.2, "{e}");
    }
}
