//! The Internet checksum (RFC 1071), for the TCP RST the kernel writes in place of
//! an over-limit request (`--on-limit reset`).

/// Adds big-endian 16-bit words of `bytes` (an even number of them) to `sum`.
#[inline(always)]
pub fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds the carries of a one's-complement sum and complements it: the value to
/// store in the checksum field.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The pseudo-header sum for TCP over IPv4 or IPv6 (addresses as on the wire).
#[inline(always)]
pub fn pseudo_header(src: &[u8], dst: &[u8], tcp_len: u32) -> u32 {
    const IPPROTO_TCP: u32 = 6;
    let sum = add_words(add_words(0, src), dst);
    sum + IPPROTO_TCP + (tcp_len >> 16) + (tcp_len & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 (before the
        // complement).
        let sum = add_words(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(finish(sum), !0xddf2);
    }

    #[test]
    fn a_segment_with_its_checksum_sums_to_zero() {
        // A SYN from 198.18.0.2:40000 to 198.18.0.1:8080 with its checksum filled.
        let src = [198, 18, 0, 2];
        let dst = [198, 18, 0, 1];
        let mut tcp = [
            0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
        ];
        let check = finish(add_words(pseudo_header(&src, &dst, 20), &tcp));
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        assert_eq!(finish(add_words(pseudo_header(&src, &dst, 20), &tcp)), 0);
    }
}
