//! Networks (CIDRs) as LPM-trie keys: 16 address bytes in network order, IPv4 as
//! IPv4-mapped IPv6 (like [`crate::client::ClientKey`]), so a /n IPv4 network is a
//! /(96 + n) key and one trie holds both families.

/// The data part of an LPM key (the trie adds the prefix length).
pub type NetKey = [u8; 16];

/// Bits an IPv4 prefix is shifted by in the mapped form.
pub const V4_MAPPED_BITS: u32 = 96;

/// Keeps the first `prefix` bits of `addr` and zeroes the rest (on two 64-bit
/// halves: few instructions per packet, and no 128-bit arithmetic for BPF).
#[inline(always)]
pub fn mask(addr: &mut [u8; 16], prefix: u32) {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = *addr;
    let hi = u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
    let lo = u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
    let (mh, ml) = if prefix >= 128 {
        (u64::MAX, u64::MAX)
    } else if prefix > 64 {
        (u64::MAX, u64::MAX << (128 - prefix))
    } else if prefix == 64 {
        (u64::MAX, 0)
    } else if prefix > 0 {
        (u64::MAX << (64 - prefix), 0)
    } else {
        (0, 0)
    };
    let (h, l) = ((hi & mh).to_be_bytes(), (lo & ml).to_be_bytes());
    *addr = [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ];
}

/// Whether `addr` is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_at_any_bit() {
        for p in 0..=128u32 {
            let mut a = [0xffu8; 16];
            mask(&mut a, p);
            assert_eq!(u128::from_be_bytes(a).count_ones(), p, "/{p}");
            assert_eq!(u128::from_be_bytes(a).leading_ones(), p, "/{p}");
        }
        let mut a = [0xffu8; 16];
        mask(&mut a, 64);
        assert_eq!(
            a,
            [
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let mut b = [0xffu8; 16];
        mask(&mut b, 13);
        assert_eq!(&b[..3], &[0xff, 0xf8, 0]);
        let mut c = [0xabu8; 16];
        mask(&mut c, 128);
        assert_eq!(c, [0xab; 16]);
        mask(&mut c, 0);
        assert_eq!(c, [0; 16]);
    }
}
