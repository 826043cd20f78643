//! What the daemon's detectors know per client, for `api-guard status` and
//! `top`: written by the daemon every second into `DETECT_CLIENTS` (pinned;
//! the programs never read it), read by the operator commands.

/// The map's name.
pub const DETECT_CLIENTS: &str = "DETECT_CLIENTS";
/// Clients in it at most: those with findings first, then the most answered
/// with error classes.
pub const DETECT_SLOTS: u32 = 1024;

/// The response classes counted, in `DetectClient::classes` order.
pub const CLASSES: [&str; 5] = ["401", "403", "404", "429", "5xx"];

/// `DetectClient::last_detector`: 0 none, else 1 + the index in this list.
pub const DETECTORS: [&str; 4] = ["auth", "bola", "stuffing", "probing"];

/// `DetectClient::last_action`.
pub const ACTION_NONE: u32 = 0;
pub const ACTION_LOG: u32 = 1;
pub const ACTION_BLOCK: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectClient {
    /// Answers of each class over the last minute (sampled, joined requests).
    pub classes: [u32; 5],
    /// Findings about this client since the daemon started.
    pub findings: u32,
    pub last_detector: u32,
    pub last_action: u32,
    /// When the last finding was made (CLOCK_MONOTONIC ns; 0: none).
    pub last_finding_ns: u64,
}

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_padding() {
        assert_eq!(core::mem::size_of::<DetectClient>(), 40);
    }
}
