//! PROXY v2 in front of a UDP datagram (the go-mmproxy / caddy-l4 / LoxiLB convention: each
//! datagram, or the first of a flow, starts with a whole v2 header).
//!
//! A datagram is complete when it arrives: there is no "read more". So where [`decode`](crate::decode)
//! answers `Ok(None)`, [`decode_datagram`] answers [`DatagramError::Truncated`]. Only v2 can carry
//! UDP; a v1 line in a datagram is refused, and so is a v2 header naming a `STREAM` transport
//! (`TCP4`/`TCP6`): a header that says "TCP" on a UDP socket was built for something else, and
//! honouring it would show the app a client of another protocol.

use crate::{
    detect::{Detect, detect},
    error::DecodeError,
    header::{Command, Header, Transport},
    limits::Limits,
    v2,
};

/// Why a datagram's header was refused; every variant has a stable [`reason`](Self::reason) for
/// logs and the drop counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The datagram does not start with the v2 signature (nor a prefix of a v1 line).
    #[error("the datagram does not start with a PROXY v2 header")]
    NotProxy,
    /// The datagram ends before its header does (shorter than the signature, the fixed part,
    /// or the length the header declares).
    #[error("the datagram ends inside its PROXY header ({len} bytes)")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// A v1 text line: v1 only names TCP, so it has no business in a datagram.
    #[error("PROXY v1 header in a datagram (v1 cannot describe UDP)")]
    V1,
    /// A v2 `PROXY` header naming a stream (TCP) transport.
    #[error("PROXY v2 header with a STREAM (TCP) family in a datagram")]
    StreamFamily,
    /// The v2 header itself is invalid (bad version, CRC32c mismatch, too long, ...).
    #[error(transparent)]
    Invalid(#[from] DecodeError),
}

impl DatagramError {
    /// A stable snake_case label, safe as a metric label value: `not_proxy`, `truncated`,
    /// `v1_in_datagram`, `stream_in_datagram`, or the [`DecodeError::reason`] of an invalid header.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotProxy => "not_proxy",
            Self::Truncated { .. } => "truncated",
            Self::V1 => "v1_in_datagram",
            Self::StreamFamily => "stream_in_datagram",
            Self::Invalid(e) => e.reason(),
        }
    }
}

/// Decodes the v2 header at the start of one whole datagram: the header and its length, the
/// payload being `datagram[len..]`.
///
/// `DGRAM` (`UDP4`/`UDP6`) headers are accepted, and so are `UNSPEC` transports (whose addresses
/// the spec says to ignore: they decode without any, so [`Header::client`] is `None` and the
/// datagram's own source applies) and every `LOCAL` header (health checks: the addresses are
/// ignored anyway, and TLVs that do not parse are discarded with them); a `PROXY` header with a
/// `STREAM` transport is [`DatagramError::StreamFamily`]. CRC32c and [`Limits::max_v2_len`] are
/// checked exactly as for a connection (a `PROXY` header with a bad CRC32c is refused).
///
/// This is the one caller for which [`Header::client`] is right as is: on a UDP socket the
/// client of a `Datagram` header is the one to restore. A TCP receiver uses
/// [`Header::stream_client`].
///
/// ```
/// use trueip_proxy_header::{Addresses, Command, Header, Limits, Tlvs, Transport, Version, decode_datagram};
///
/// let header = Header {
///     version: Version::V2,
///     command: Command::Proxy,
///     transport: Transport::Datagram,
///     addresses: Addresses::Inet {
///         source: "203.0.113.7:5353".parse().unwrap(),
///         destination: "198.51.100.1:53".parse().unwrap(),
///     },
///     tlvs: Tlvs::default(),
/// };
/// let mut datagram = header.to_v2(true).unwrap();
/// datagram.extend(b"query");
/// let (decoded, len) = decode_datagram(&datagram, &Limits::default()).unwrap();
/// assert_eq!(decoded.client(), Some("203.0.113.7:5353".parse().unwrap()));
/// assert_eq!(&datagram[len..], b"query");
///
/// // Cut short: a datagram cannot be completed by a later read.
/// let err = decode_datagram(&datagram[..20], &Limits::default()).unwrap_err();
/// assert_eq!(err.reason(), "truncated");
/// ```
pub fn decode_datagram(datagram: &[u8], limits: &Limits) -> Result<(Header, usize), DatagramError> {
    match detect(datagram) {
        Detect::NotProxy => Err(DatagramError::NotProxy),
        Detect::V1 => Err(DatagramError::V1),
        // A datagram that is a strict prefix of a signature: a header cut short (or a payload of
        // a few bytes that happens to look like one; either way there is no header to honour).
        Detect::NeedMore => Err(DatagramError::Truncated {
            len: datagram.len(),
        }),
        Detect::V2 => match v2::decode(datagram, limits)? {
            None => Err(DatagramError::Truncated {
                len: datagram.len(),
            }),
            Some((header, _))
                if header.command == Command::Proxy && header.transport == Transport::Stream =>
            {
                Err(DatagramError::StreamFamily)
            }
            Some(decoded) => Ok(decoded),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addresses, Tlvs, V2_SIGNATURE, Version};

    fn header(command: Command, transport: Transport, source: &str, dst: &str) -> Header {
        Header {
            version: Version::V2,
            command,
            transport,
            addresses: Addresses::Inet {
                source: source.parse().unwrap(),
                destination: dst.parse().unwrap(),
            },
            tlvs: Tlvs::default(),
        }
    }

    fn udp(source: &str, dst: &str) -> Header {
        header(Command::Proxy, Transport::Datagram, source, dst)
    }

    #[test]
    fn udp4_and_udp6_are_accepted_and_stripped() {
        for (source, dst) in [
            ("203.0.113.7:5353", "198.51.100.1:53"),
            ("[2001:db8:c::7]:5353", "[2001:db8::1]:53"),
        ] {
            let mut datagram = udp(source, dst).to_v2(false).unwrap();
            let header_len = datagram.len();
            datagram.extend(b"payload");
            let (decoded, len) = decode_datagram(&datagram, &Limits::default()).unwrap();
            assert_eq!(len, header_len);
            assert_eq!(decoded.transport, Transport::Datagram);
            assert_eq!(decoded.client(), Some(source.parse().unwrap()));
            assert_eq!(&datagram[len..], b"payload");
        }
    }

    #[test]
    fn an_empty_payload_is_a_valid_datagram() {
        let datagram = udp("203.0.113.7:1", "198.51.100.1:2").to_v2(true).unwrap();
        let (_, len) = decode_datagram(&datagram, &Limits::default()).unwrap();
        assert_eq!(len, datagram.len());
    }

    #[test]
    fn stream_families_are_refused() {
        let tcp = header(
            Command::Proxy,
            Transport::Stream,
            "203.0.113.7:1",
            "198.51.100.1:2",
        );
        let err = decode_datagram(&tcp.to_v2(false).unwrap(), &Limits::default()).unwrap_err();
        assert_eq!(err, DatagramError::StreamFamily);
        assert_eq!(err.reason(), "stream_in_datagram");
    }

    #[test]
    fn local_is_accepted_whatever_its_family() {
        let local = header(
            Command::Local,
            Transport::Stream,
            "203.0.113.7:1",
            "198.51.100.1:2",
        );
        let (decoded, _) =
            decode_datagram(&local.to_v2(false).unwrap(), &Limits::default()).unwrap();
        assert_eq!(decoded.client(), None);
    }

    #[test]
    fn local_with_unparsable_tlvs_is_accepted() {
        let mut datagram = V2_SIGNATURE.to_vec();
        datagram.extend([0x20, 0x12, 0x00, 12 + 2]);
        datagram.extend([203, 0, 113, 7, 198, 51, 100, 1, 0x14, 0xe9, 0x00, 0x35]);
        datagram.extend([crate::kind::NOOP, 0x00]);
        datagram.extend(b"query");
        let (decoded, len) = decode_datagram(&datagram, &Limits::default()).unwrap();
        assert_eq!(len, 30);
        assert_eq!(&datagram[len..], b"query");
        assert_eq!(decoded.command, Command::Local);
        assert_eq!(decoded.client(), None);
        assert!(decoded.tlvs.is_empty());
        datagram[12] = 0x21;
        assert_eq!(
            decode_datagram(&datagram, &Limits::default())
                .unwrap_err()
                .reason(),
            "v2_tlv_overrun"
        );
    }

    #[test]
    fn unspec_transport_names_no_client() {
        let mut datagram = V2_SIGNATURE.to_vec();
        datagram.extend([0x21, 0x10, 0x00, 12]);
        datagram.extend([203, 0, 113, 7, 198, 51, 100, 1, 0x14, 0xe9, 0x00, 0x35]);
        datagram.extend(b"query");
        let (decoded, len) = decode_datagram(&datagram, &Limits::default()).unwrap();
        assert_eq!(len, 28);
        assert_eq!(decoded.transport, Transport::Unspec);
        assert_eq!(decoded.addresses, Addresses::Unspec);
        assert_eq!(decoded.client(), None);
    }

    #[test]
    fn v1_and_garbage_are_refused() {
        let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 1 2\r\nhello";
        assert_eq!(
            decode_datagram(v1, &Limits::default())
                .unwrap_err()
                .reason(),
            "v1_in_datagram"
        );
        assert_eq!(
            decode_datagram(b"\x12\x34 dns query", &Limits::default())
                .unwrap_err()
                .reason(),
            "not_proxy"
        );
    }

    #[test]
    fn every_cut_of_a_header_is_truncated() {
        let datagram = udp("203.0.113.7:5353", "198.51.100.1:53")
            .to_v2(true)
            .unwrap();
        for cut in 1..datagram.len() {
            let err = decode_datagram(&datagram[..cut], &Limits::default()).unwrap_err();
            assert_eq!(err.reason(), "truncated", "cut at {cut}");
        }
        assert_eq!(
            decode_datagram(&V2_SIGNATURE[..5], &Limits::default())
                .unwrap_err()
                .reason(),
            "truncated"
        );
    }

    #[test]
    fn crc_and_length_cap_apply() {
        let mut datagram = udp("203.0.113.7:5353", "198.51.100.1:53")
            .to_v2(true)
            .unwrap();
        let last = datagram.len() - 1;
        datagram[last] ^= 0xff;
        assert_eq!(
            decode_datagram(&datagram, &Limits::default())
                .unwrap_err()
                .reason(),
            "crc32c_mismatch"
        );
        let long = udp("[2001:db8:c::7]:5353", "[2001:db8::1]:53")
            .to_v2(false)
            .unwrap();
        let err = decode_datagram(&long, &Limits { max_v2_len: 30 }).unwrap_err();
        assert_eq!(err.reason(), "v2_too_long");
    }
}
