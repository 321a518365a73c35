//! Why a v2 header is rejected.

/// A v2 header that breaks the spec or the configured [`Limits`](crate::Limits). Offsets are
/// byte positions from the start of the header (the first signature byte is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The high nibble of byte 12 is not 2.
    #[error("PROXY v2 version {version} is not 2")]
    BadVersion {
        /// The version nibble received.
        version: u8,
    },
    /// The low nibble of byte 12 is neither 0 (LOCAL) nor 1 (PROXY).
    #[error("PROXY v2 command {command:#x} is neither LOCAL nor PROXY")]
    BadCommand {
        /// The command nibble received.
        command: u8,
    },
    /// Byte 13 is not one of AF_UNSPEC/INET/INET6/UNIX (high nibble 0 to 3) combined with
    /// UNSPEC/STREAM/DGRAM (low nibble 0 to 2).
    #[error("PROXY v2 family/transport byte {family:#04x} is not supported by the spec")]
    BadFamily {
        /// The byte (or, where only one was known, nibble) received.
        family: u8,
    },
    /// The whole header (16 fixed bytes plus the declared length) exceeds
    /// [`Limits::max_v2_len`](crate::Limits::max_v2_len).
    #[error("PROXY v2 header declares {len} bytes, over the {max}-byte limit")]
    TooLong {
        /// Declared size of the whole header.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The declared length cannot hold the address block of the declared family.
    #[error("PROXY v2 length {len} cannot hold the {needed}-byte address block of its family")]
    AddressOverrun {
        /// Declared length (after the 16 fixed bytes).
        len: usize,
        /// Size of the family's address block.
        needed: usize,
    },
    /// The TLVs do not exactly fill the space after the address block: one runs past the
    /// end, or fewer than 3 bytes (a TLV's type and length) are left over.
    #[error("PROXY v2 TLV at byte {offset} runs past the end of the header")]
    TlvOverrun {
        /// Where the offending TLV starts.
        offset: usize,
    },
    /// An SSL TLV (0x20) is shorter than its 5 fixed bytes, or its sub-TLVs do not exactly
    /// fill it.
    #[error("PROXY v2 SSL TLV at byte {offset} is malformed")]
    BadSslTlv {
        /// Where the SSL TLV starts.
        offset: usize,
    },
    /// A CRC32c TLV (0x03) whose value is not 4 bytes, or a second CRC32c TLV (which would
    /// make "the checksum field" ambiguous).
    #[error("PROXY v2 CRC32c TLV at byte {offset} is not a single 4-byte value")]
    BadCrc32cTlv {
        /// Where the CRC32c TLV starts.
        offset: usize,
    },
    /// The CRC32c TLV does not match the header: corrupted in transit, or altered.
    #[error("PROXY v2 CRC32c mismatch: header says {expected:#010x}, bytes give {computed:#010x}")]
    Crc32cMismatch {
        /// The checksum carried by the TLV.
        expected: u32,
        /// The checksum of the received header with the TLV's value zeroed.
        computed: u32,
    },
}

impl Error {
    /// The stable metric/log label, see [`DecodeError::reason`](crate::DecodeError::reason).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadVersion { .. } => "v2_bad_version",
            Self::BadCommand { .. } => "v2_bad_command",
            Self::BadFamily { .. } => "v2_bad_family",
            Self::TooLong { .. } => "v2_too_long",
            Self::AddressOverrun { .. } => "v2_address_overrun",
            Self::TlvOverrun { .. } => "v2_tlv_overrun",
            Self::BadSslTlv { .. } => "v2_bad_ssl_tlv",
            Self::BadCrc32cTlv { .. } => "v2_bad_crc32c_tlv",
            Self::Crc32cMismatch { .. } => "crc32c_mismatch",
        }
    }
}
