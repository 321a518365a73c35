//! What the load generator and the bench app say to each other, after any PROXY header.
//!
//! Every connection opens with a 9-byte preamble: one mode byte and a big-endian `u64`
//! argument. Then, by mode:
//!
//! | mode | the client | the app |
//! |---|---|---|
//! | [`SINK`] | sends payload, then its FIN | reads to EOF, answers the byte count (8 bytes, BE), closes |
//! | [`SOURCE`] | reads; sends its FIN to stop early | sends `arg` bytes ([`UNLIMITED`]: until the client's FIN), then its FIN |
//! | [`ECHO`] | sends anything | echoes every byte until EOF |
//! | [`STATS`] | nothing | answers one JSON line of [`AppStats`], closes |
//!
//! A connection that starts with `GET ` instead of a preamble ([`HTTP`]) is HTTP/1.1 keep-alive:
//! each `GET /<n>` is answered with `200` and an `n`-byte body of the pattern (the `http`
//! workload, which `mode: http` and HTTP reverse proxies can serve, and every TCP relay too).

use serde::{Deserialize, Serialize};

/// Upload: the app discards what it reads and reports the count at EOF.
pub const SINK: u8 = b'S';
/// Download: the app writes `arg` bytes.
pub const SOURCE: u8 = b'D';
/// Request/response and idle connections: the app echoes.
pub const ECHO: u8 = b'E';
/// The app's counters, for the runner's sanity checks.
pub const STATS: u8 = b'Q';
/// Not a preamble: the first byte of `GET `, an HTTP/1.1 request.
pub const HTTP: u8 = b'G';

/// Length of the preamble: mode + `u64` argument.
pub const PREAMBLE_LEN: usize = 9;

/// [`SOURCE`] argument: send until the client's FIN.
pub const UNLIMITED: u64 = u64::MAX;

/// The bytes every payload is cut from (a fixed pattern, so nothing is compressible by accident
/// and a reader can spot garbage when debugging).
pub const PATTERN_LEN: usize = 1 << 20;

/// The preamble for `mode` with `arg`.
#[must_use]
pub fn preamble(mode: u8, arg: u64) -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    out[0] = mode;
    out[1..].copy_from_slice(&arg.to_be_bytes());
    out
}

/// Splits a preamble into mode and argument.
#[must_use]
pub fn parse_preamble(bytes: &[u8; PREAMBLE_LEN]) -> (u8, u64) {
    let mut arg = [0u8; 8];
    arg.copy_from_slice(&bytes[1..]);
    (bytes[0], u64::from_be_bytes(arg))
}

/// A payload buffer of `len` bytes of the pattern.
#[must_use]
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or_default())
        .collect()
}

/// What the app has seen since it started (answer to [`STATS`]; its own query not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStats {
    /// Connections that sent a preamble.
    pub connections: u64,
    /// Of those, how many had a loopback peer (a relay's own address: nothing restored).
    pub loopback_peers: u64,
    /// How many had a non-loopback peer (direct clients, or restored by eBPF).
    pub other_peers: u64,
    /// PROXY v1 lines skipped.
    pub v1_headers: u64,
    /// PROXY v2 headers skipped.
    pub v2_headers: u64,
    /// Connections that ended with an I/O error or a malformed preamble.
    pub errors: u64,
    /// HTTP requests answered.
    #[serde(default)]
    pub http_requests: u64,
    /// Of those, how many carried an `X-Forwarded-For` header naming a non-loopback client.
    #[serde(default)]
    pub http_forwarded: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips() {
        let p = preamble(SOURCE, 1 << 40);
        assert_eq!(parse_preamble(&p), (SOURCE, 1 << 40));
    }
}
