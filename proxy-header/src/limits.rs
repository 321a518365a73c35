//! The bounds a caller puts on what decoding accepts from an untrusted peer.

/// Default cap on a whole v2 header (16 fixed bytes plus the declared length). The format allows
/// 65 551 bytes; real senders stay far below (HAProxy with every TLV and SSL sub-TLV: a few
/// hundred), and the sidecar buffers the header before it can judge it, so it is capped.
pub const DEFAULT_MAX_V2_LEN: usize = 4096;

/// Caller-tunable bounds on what [`decode`] accepts, so untrusted input cannot make the sidecar
/// buffer more than it is willing to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole v2 header accepted, fixed part included. A header declaring more fails
    /// with `v2_too_long` as soon as its 16 fixed bytes have arrived.
    pub max_v2_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_v2_len: DEFAULT_MAX_V2_LEN,
        }
    }
}
