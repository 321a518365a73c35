//! Why a v1 line is rejected.

use std::fmt;

use crate::detect::V1_MAX_LEN;

/// Which side of the connection a v1 field describes, so a log line says which one was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The first address/port pair: the client.
    Source,
    /// The second address/port pair: the proxy's frontend.
    Destination,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Source => "source",
            Self::Destination => "destination",
        })
    }
}

/// A v1 line that breaks the spec. Offsets are byte positions from the start of the line
/// (`P` of `PROXY` is 0), for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No CRLF can end the line within [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    TooLong,
    /// The protocol word is not `TCP4`, `TCP6` or `UNKNOWN` (case-sensitive).
    #[error("PROXY v1 protocol at byte {offset} is not TCP4, TCP6 or UNKNOWN")]
    BadFamily {
        /// Where the protocol word starts.
        offset: usize,
    },
    /// An address is not a literal of the protocol's family (`TCP4`: dotted quad without
    /// leading zeros; `TCP6`: an IPv6 literal without zone or brackets).
    #[error("PROXY v1 {endpoint} address at byte {offset} is not a valid literal of the family")]
    BadAddress {
        /// Which address.
        endpoint: Endpoint,
        /// Where it starts.
        offset: usize,
    },
    /// A port is not 0 to 65535 in plain decimal (no sign, no leading zero).
    #[error(
        "PROXY v1 {endpoint} port at byte {offset} is not a decimal 0-65535 without leading zeros"
    )]
    BadPort {
        /// Which port.
        endpoint: Endpoint,
        /// Where it starts.
        offset: usize,
    },
    /// The line's structure is wrong: an empty field (two spaces), a missing or extra
    /// field, or a CR not followed by LF.
    #[error("PROXY v1 line is malformed at byte {offset}: {problem}")]
    Malformed {
        /// Where the structure broke.
        offset: usize,
        /// What was expected there.
        problem: &'static str,
    },
}

impl Error {
    /// The stable metric/log label, see [`DecodeError::reason`](crate::DecodeError::reason).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "v1_too_long",
            Self::BadFamily { .. } => "v1_bad_family",
            Self::BadAddress { .. } => "v1_bad_address",
            Self::BadPort { .. } => "v1_bad_port",
            Self::Malformed { .. } => "v1_malformed",
        }
    }
}
