//! The sample ring buffer as the kernel fills it: records of bytes, taken one
//! at a time. `sources::ring` waits on it and decodes what it yields.

use std::{
    ops::Deref,
    os::fd::{AsRawFd, RawFd},
};

use aya::maps::{MapData, RingBuf};

/// The `SAMPLES` ring buffer, taken out of the loaded programs.
pub struct SampleRing(RingBuf<MapData>);

impl SampleRing {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self(ring)
    }

    /// The next record, if the kernel has committed one; it is released back
    /// to the kernel when the returned value drops.
    #[allow(clippy::should_implement_trait)] // items borrow the ring: not an Iterator
    pub fn next(&mut self) -> Option<impl Deref<Target = [u8]> + '_> {
        self.0.next()
    }
}

impl AsRawFd for SampleRing {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
