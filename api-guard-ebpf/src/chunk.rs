//! Stream bytes read a block at a time for egress's response scan (egress.rs;
//! the ingress stream stage still reads a word a round): one `bpf_skb_load_bytes` brings up to
//! 64 bytes into map memory, and each round of a scan takes the 8 bytes at its
//! position from there. A helper call costs more than the rest of a round, so
//! reading 8 bytes per call (as the scans did) made a 250-byte response head
//! cost some 35 calls; a block a call makes it 5 (K2 in BENCHMARKS).

use core::ffi::c_void;

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_load_bytes};

/// Bytes one load brings (a power of two).
pub const CHUNK: u32 = 64;

/// A block of stream bytes, in a per-CPU scratch map value (not the stack).
#[repr(C)]
pub struct Chunk {
    /// Payload offset of `bytes[0]`; `u32::MAX` when nothing is loaded.
    at: u32,
    /// The last word's index in `bytes`, kept in memory (see [`Chunk::word`]).
    idx: u32,
    /// The last word read.
    word: u64,
    /// The block, and 8 bytes of slack so that a word read at any index below
    /// `CHUNK` stays inside the array (the verifier's bound).
    bytes: [u8; CHUNK as usize + 8],
}

impl Chunk {
    /// Forgets the block (before a scan of another segment).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.at = u32::MAX;
    }

    /// Forgets the block and zeroes its bytes, which may be a credential's:
    /// no map keeps them past the scan.
    #[inline(always)]
    pub fn wipe(&mut self) {
        self.at = u32::MAX;
        self.word = 0;
        self.bytes = [0; CHUNK as usize + 8];
    }

    /// The 8 bytes at payload offset `pos` (`pos < end`) as a little-endian word
    /// (byte `pos` lowest); only the first `end - pos` of them are stream
    /// bytes, the rest are left over and must be ignored. Loads the block at
    /// `pos` when fewer than 8 of its bytes lie ahead. None when the load fails.
    #[inline(always)]
    pub fn word(&mut self, skb: *mut __sk_buff, base: u32, pos: u32, end: u32) -> Option<u64> {
        if pos < self.at || pos - self.at > CHUNK - 8 {
            let n = end - pos;
            let n = if n > CHUNK { CHUNK } else { n };
            // 1..=CHUNK in a form the verifier can bound (n >= 1 as pos < end).
            let len = (n.wrapping_sub(1) & (CHUNK - 1)) + 1;
            // SAFETY: `bytes` holds more than CHUNK >= len bytes; the skb pointer
            // is the program's context.
            let rc = unsafe {
                bpf_skb_load_bytes(
                    skb as *const c_void,
                    base.wrapping_add(pos),
                    self.bytes.as_mut_ptr().cast(),
                    len,
                )
            };
            if rc != 0 {
                return None;
            }
            self.at = pos;
        }
        // Through memory and masked: LLVM would otherwise drop the mask (it
        // knows the index is at most CHUNK - 8 from the test above) and the
        // verifier, which tracked that test on another register, would see an
        // unbounded offset.
        self.idx = pos - self.at;
        // SAFETY: fields of this live value; idx < CHUNK, and `bytes` has
        // CHUNK + 8 bytes, so the 8 read lie inside it. Unaligned loads of map
        // memory are allowed on this target.
        unsafe {
            let idx = core::ptr::read_volatile(&self.idx) & (CHUNK - 1);
            let w = core::ptr::read_unaligned(self.bytes.as_ptr().add(idx as usize) as *const u64);
            // Back through memory: read from there the word is an unknown value
            // to the verifier, as the scans' words always were, and the loop's
            // states converge instead of being told apart by it.
            core::ptr::write_volatile(&mut self.word, w);
            Some(u64::from_le(core::ptr::read_volatile(&self.word)))
        }
    }
}
