//! PROXY protocol v1/v2 decoding and encoding, with typed TLVs and CRC32c, for trueip.
//!
//! This crate is the one place in trueip that reads and writes PROXY protocol headers
//! (HAProxy `doc/proxy-protocol.txt`). It does no I/O: the sidecar reads bytes from the load
//! balancer, calls [`decode`] on everything received so far, and either gets a [`Header`] plus
//! the number of bytes it occupied, `Ok(None)` ("read more"), or a [`DecodeError`] whose
//! [`reason`](DecodeError::reason) becomes the log field and metric label.
//!
//! ```
//! use trueip_proxy_header::{decode, Limits};
//!
//! let wire = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nGET / HTTP/1.1\r\n";
//! // Split across two reads: the first half is not enough, and says so.
//! assert!(decode(&wire[..20], &Limits::default())?.is_none());
//! let (header, consumed) = decode(wire, &Limits::default())?.expect("complete");
//! // On a TCP listener: the client only if the header describes TCP (v1 always does).
//! assert_eq!(header.stream_client(), Some("203.0.113.7:51234".parse()?));
//! assert_eq!(&wire[consumed..], b"GET / HTTP/1.1\r\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a header tells the receiver
//!
//! The spec leaves the receiver little choice in three cases, and this crate follows it:
//!
//! * **LOCAL is always accepted.** A v2 `LOCAL` header (a load balancer's own connection, such
//!   as a health check) must be accepted and its protocol block discarded, so, within
//!   [`Limits::max_v2_len`] and with a valid family/transport byte, it decodes with
//!   [`Command::Local`] and [`Addresses::Unspec`], whatever its family. Its TLVs are kept when
//!   they parse; when they do not (a TLV running past the end, a bad CRC32c, malformed SSL
//!   sub-TLVs, a block too short for its family) they are discarded with the block and the
//!   header is still accepted, the whole declared length consumed. A `PROXY` header with the
//!   same faults is refused with its [`reason`](DecodeError::reason).
//! * **An UNSPEC transport carries no client.** v2 family `INET`/`INET6` with transport
//!   `UNSPEC` (byte 13 `0x10`/`0x20`) decodes with [`Addresses::Unspec`], as family `UNSPEC`
//!   does: the receiver must ignore the addresses and use the real connection endpoints. The
//!   address block is still skipped, so the TLVs after it are read and checked.
//! * **Only `Stream` is TCP.** [`Header::client`] names the source of any `PROXY` header with
//!   IP addresses, UDP (`Datagram`) included: that is what [`decode_datagram`] callers want.
//!   A receiver on a TCP listener uses [`Header::stream_client`], which is `None` unless the
//!   header describes a TCP connection, so a UDP-described client is never taken for a TCP
//!   one. Likewise [`Header::to_v1`] writes `TCP4`/`TCP6` only for a `Stream` header (v1 can
//!   only say TCP) and `PROXY UNKNOWN` for anything else.
//!
//! # Guarantees
//!
//! * **Fail early.** [`decode`] never answers `Ok(None)` for bytes that can no longer become a
//!   valid header: a bad v2 version/command nibble fails when byte 13 arrives, a bad family
//!   byte when byte 14 arrives, an oversize v2 length right after the 16 fixed bytes, a v1
//!   field as soon as its text cannot be completed into a valid literal, a v1 line with no CR
//!   in its first 106 bytes (so no CRLF can end within [`V1_MAX_LEN`]) at byte 106.
//! * **Prefix consistency.** Once a prefix yields a header or an error, every longer buffer
//!   yields the same header or an error with the same reason. (A v2 header's TLVs are judged
//!   only once its whole declared length has arrived, and only those bytes are read, so
//!   accepting a LOCAL whose TLVs do not parse decides no earlier, and no differently on
//!   longer buffers, than refusing it did.)
//! * **Payload untouched.** `buf[consumed..]` is never read beyond what the header declares.
//! * **Bounded allocation.** Nothing is allocated for a v2 header before its declared length
//!   has been checked against [`Limits::max_v2_len`].
//! * **No panics, no `unsafe`.**
//!
//! # How this builds on `ppp`
//!
//! The wire work is done by the [`ppp`](https://docs.rs/ppp/2.3) crate where it fits; this
//! crate wraps it where it falls short and replaces it where it is too lenient:
//!
//! | concern | ppp 2.3 | here |
//! |---|---|---|
//! | v2 fixed header and address block | `ppp::v2::Header::try_from` | used as is, after the early checks below |
//! | v2 early rejection | waits for all 16 fixed bytes | bytes 12 and 13 checked as soon as they arrive |
//! | v2 length cap | none: it waits for any declared length, up to 64 KiB | [`Limits::max_v2_len`], checked right after 16 bytes |
//! | v2 TLV walk | `ppp::v2::TypeLengthValues`, lazy: errors only surface if the caller iterates; values come out as `Cow`s that cannot be lent from a buffer | own walk, eager: a TLV running past the end is an error; the TLV bytes are kept in one buffer and read in place (one allocation per header instead of one per TLV, see `v2::tlv`) |
//! | TLVs of AF_UNSPEC headers | `Header::tlvs()` counts the whole UNSPEC payload as address bytes, so LOCAL/UNSPEC TLVs are invisible | TLVs start right after the family's address block (0 bytes for UNSPEC) |
//! | INET/INET6 over an UNSPEC transport (`0x10`, `0x20`) | addresses parsed as for TCP | [`Addresses::Unspec`] (the spec: ignore them); block skipped, TLVs read |
//! | LOCAL whose block does not parse | too short for its family: `InvalidAddresses`; TLVs: lazy, so the caller's choice | accepted without addresses or TLVs, the declared length consumed |
//! | CRC32c TLV | not checked | verified over the whole header with the field zeroed; computed on encode |
//! | SSL sub-TLVs, AWS/Azure/GCP TLVs | type numbers only (no AWS/Azure/GCP) | SSL sub-TLVs must tile; typed accessors on [`Tlvs`] |
//! | "need more bytes" across versions | per version (`PartialResult`); `HeaderResult::parse` guesses v2-then-v1 | [`detect`] by signature, [`decode`] returns `Ok(None)` |
//! | v1 decode | `ppp::v1::Header::try_from` | **replaced** (see [`v1`]): not incremental, accepts `+80` as a port, requires UTF-8 in the ignored tail of `UNKNOWN` |
//! | v1 encode | `ppp::v1::Addresses` `Display` | used as is, for `Stream` headers only: anything else (UDP, UNSPEC) is `PROXY UNKNOWN` |
//! | v2 encode | `ppp::v2::Builder` | used as is; the CRC32c TLV is patched in after `build` |
//!
//! Measured cost of each part is in the crate's `README.md` (criterion, `benches/decode.rs`).
//!
//! # Layout
//!
//! From the bottom up: `detect` (signatures) and `limits`; `error` (each version's errors and
//! the crate's); `tlv`; `header` (the decoded header); [`v1`] and [`v2`], each with its decoder
//! and `Header`'s encoder for it; `datagram`. This root re-exports them and dispatches
//! [`decode`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod datagram;
mod detect;
mod error;
mod header;
mod limits;
mod tlv;
pub mod v1;
pub mod v2;

pub use datagram::{DatagramError, decode_datagram};
pub use detect::{Detect, V1_MAX_LEN, V2_SIGNATURE, detect};
pub use error::{DecodeError, EncodeError};
pub use header::{Addresses, Command, Header, Transport, Version};
pub use limits::{DEFAULT_MAX_V2_LEN, Limits};
pub use tlv::{RawTlv, Ssl, Tlvs, kind};

/// Decodes the PROXY header at the start of `buf`, v1 or v2.
///
/// * `Ok(Some((header, consumed)))`: a complete, valid header occupies `buf[..consumed]`;
///   `buf[consumed..]` is application payload, not inspected.
/// * `Ok(None)`: `buf` is a strict prefix of what may still become a valid header; call again
///   with more bytes (the same ones plus what arrived since).
/// * `Err(_)`: `buf` is not, and can no longer become, a valid header. See the crate docs for
///   how early each case is caught.
///
/// Call it on the whole buffer received so far each time; it keeps no state.
///
/// ```
/// use trueip_proxy_header::{decode, Command, Limits, V2_SIGNATURE};
///
/// // A v2 LOCAL header (a load balancer health check), then payload.
/// let mut wire = V2_SIGNATURE.to_vec();
/// wire.extend([0x20, 0x00, 0x00, 0x00]);
/// wire.extend(b"ping");
/// let (header, consumed) = decode(&wire, &Limits::default())?.expect("complete");
/// assert_eq!(header.command, Command::Local);
/// assert_eq!(header.client(), None); // LOCAL: use the connection's own addresses
/// assert_eq!(&wire[consumed..], b"ping");
///
/// // Rejected before the rest arrives: version nibble 1 instead of 2.
/// let err = decode(&[&V2_SIGNATURE[..], &[0x11]].concat(), &Limits::default()).unwrap_err();
/// assert_eq!(err.reason(), "v2_bad_version");
/// # Ok::<(), trueip_proxy_header::DecodeError>(())
/// ```
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Header, usize)>, DecodeError> {
    match detect(buf) {
        Detect::NeedMore => Ok(None),
        Detect::NotProxy => Err(DecodeError::NotProxy),
        Detect::V1 => Ok(v1::decode(buf)?),
        Detect::V2 => v2::decode(buf, limits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_ppp() {
        assert_eq!(&V2_SIGNATURE[..], ppp::v2::PROTOCOL_PREFIX);
    }

    #[test]
    fn detect_decides_on_first_divergent_byte() {
        assert_eq!(detect(b""), Detect::NeedMore);
        assert_eq!(detect(b"P"), Detect::NeedMore);
        assert_eq!(detect(b"\r\n\r\n\0"), Detect::NeedMore);
        assert_eq!(detect(b"\r\n\r\n\0\r\nQUIT\n"), Detect::V2);
        assert_eq!(detect(b"PROXY "), Detect::V1);
        assert_eq!(detect(b"G"), Detect::NotProxy);
        assert_eq!(detect(b"PROXZ"), Detect::NotProxy);
        assert_eq!(detect(b"PROXY\r"), Detect::NotProxy);
        assert_eq!(detect(b"\r\n\r\n\x01"), Detect::NotProxy);
        assert_eq!(detect(b"\r\nGET"), Detect::NotProxy);
    }

    #[test]
    fn decode_not_proxy() {
        let err = decode(b"SSH-2.0-OpenSSH_9.6\r\n", &Limits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::NotProxy));
        assert_eq!(err.reason(), "not_proxy");
        assert_eq!(decode(b"PROX", &Limits::default()).unwrap(), None);
    }

    /// Headers cross tokio tasks in the sidecar; `Tlvs` caches its list in a `OnceLock`.
    #[test]
    fn header_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Header>();
        assert_send_sync::<DecodeError>();
    }

    #[test]
    fn default_limits() {
        assert_eq!(Limits::default().max_v2_len, DEFAULT_MAX_V2_LEN);
    }
}
