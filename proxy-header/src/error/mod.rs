//! The crate-level errors: one for decoding either version, one for encoding.

pub(crate) mod v1;
pub(crate) mod v2;

/// Why [`decode`](crate::decode) rejected a buffer. The sidecar turns it into one log line
/// and one metric increment (by [`reason`](Self::reason)), then closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes start with neither the v1 nor the v2 signature: the peer is not speaking
    /// PROXY protocol at all (a direct client, a probe, a misconfigured load balancer).
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A v1 (text) line that breaks the spec.
    #[error(transparent)]
    V1(#[from] v1::Error),
    /// A v2 (binary) header that breaks the spec or the configured limits.
    #[error(transparent)]
    V2(#[from] v2::Error),
}

impl DecodeError {
    /// A stable snake_case label for this failure, safe as a metric label value: it never
    /// carries input bytes and its set of values is fixed (`not_proxy`, `v1_*`, `v2_*`,
    /// `crc32c_mismatch`). Renaming one is a breaking change for dashboards.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotProxy => "not_proxy",
            Self::V1(error) => error.reason(),
            Self::V2(error) => error.reason(),
        }
    }
}

/// Why a [`Header`](crate::Header) could not be written as v2: the format has fixed-size
/// length fields, and a header built in memory can exceed them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded form does not fit its length field: `len` is the size in bytes of the
    /// part that overflowed, either the v2 payload (addresses plus TLVs, at most 65 535
    /// bytes), one TLV or SSL sub-TLV value (at most 65 535 bytes), or one UNIX address
    /// (at most 108 bytes).
    #[error("PROXY header too long to encode: {len} bytes do not fit the length field")]
    TooLong {
        /// Size in bytes of the part that does not fit.
        len: usize,
    },
}
