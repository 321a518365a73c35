//! Version 2: the binary header opening with [`V2_SIGNATURE`](crate::V2_SIGNATURE).
//!
//! ```text
//! offset  0..12  signature
//!        12      version (high nibble, must be 2) | command (low nibble: 0 LOCAL, 1 PROXY)
//!        13      family (high: UNSPEC, INET, INET6, UNIX) | transport (low: UNSPEC, STREAM, DGRAM)
//!        14..16  len, big-endian: bytes after offset 16 (addresses, then TLVs)
//!        16..    address block (0, 12, 36 or 216 bytes by family), then TLVs up to 16 + len
//! ```
//!
//! The fixed part and the address block are parsed by `ppp::v2::Header::try_from`, wrapped:
//! bytes 12 and 13 are checked as soon as they arrive (ppp waits for all 16 fixed bytes), the
//! declared length is capped before anything waits for it (ppp has no cap), and the TLVs are
//! walked eagerly by this crate, starting right after the family's address block: ppp's own
//! `Header::tlvs()` treats the whole payload of an AF_UNSPEC header as "address bytes", which
//! would hide the TLVs of LOCAL health checks. TLV storage, CRC32c and SSL sub-TLV validation
//! are this crate's (see [`Tlvs`](crate::Tlvs)). Encoding uses `ppp::v2::Builder`.
//!
//! Two spec rules shape what a decoded header holds:
//!
//! * **LOCAL discards the block.** A `LOCAL` header (byte 12 = `0x20`) is always accepted once
//!   its declared length has arrived (and fits [`Limits::max_v2_len`]): its addresses are
//!   dropped ([`Addresses::Unspec`]); its TLVs are kept when they parse, and dropped with the
//!   rest of the block when they do not (an overrun, a bad CRC32c, malformed SSL sub-TLVs, an
//!   address block too short for its family). A `PROXY` header with the same faults is refused.
//! * **An UNSPEC transport voids the addresses.** `PROXY` with family INET/INET6 but transport
//!   UNSPEC (byte 13 = `0x10`, `0x20`) decodes with [`Addresses::Unspec`]: the receiver must
//!   ignore the addresses and use the real connection endpoints, as for family UNSPEC. The
//!   12- or 36-byte block is still skipped, and the TLVs after it read.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use crate::error::v2::Error;
use ppp::v2 as wire;

use crate::{
    error::{DecodeError, EncodeError},
    header::{Addresses, Command, Header, Transport, Version, same_family},
    limits::Limits,
    tlv::{self, kind},
};

impl Header {
    /// Encodes this header as v2, for apps that parse v2 themselves. Writes [`tlvs`](Self::tlvs)
    /// in order except any CRC32c TLV (a stale checksum would be wrong for the new bytes),
    /// then, when `with_crc32c`, a CRC32c TLV computed over the result. An IPv4/IPv6 mix is
    /// written as INET6 with the IPv4 side IPv4-mapped; UNIX paths shorter than 108 bytes are
    /// NUL-padded.
    ///
    /// ```
    /// use trueip_proxy_header::{decode, Addresses, Command, Header, Limits, Tlvs, Transport, Version, kind};
    ///
    /// let mut tlvs = Tlvs::default();
    /// tlvs.push(kind::AUTHORITY, b"example.com".to_vec());
    /// let header = Header {
    ///     version: Version::V2,
    ///     command: Command::Proxy,
    ///     transport: Transport::Stream,
    ///     addresses: Addresses::Inet {
    ///         source: "203.0.113.7:51234".parse().unwrap(),
    ///         destination: "198.51.100.1:443".parse().unwrap(),
    ///     },
    ///     tlvs,
    /// };
    /// let wire = header.to_v2(true)?;
    /// assert_eq!(wire.len(), 16 + 12 + (3 + 11) + (3 + 4));
    ///
    /// let (decoded, consumed) = decode(&wire, &Limits::default()).unwrap().expect("complete");
    /// assert_eq!(consumed, wire.len());
    /// assert_eq!(decoded.tlvs.authority(), Some("example.com"));
    /// assert!(decoded.tlvs.crc32c().is_some()); // verified by decode
    /// # Ok::<(), trueip_proxy_header::EncodeError>(())
    /// ```
    pub fn to_v2(&self, with_crc32c: bool) -> Result<Vec<u8>, EncodeError> {
        encode(self, with_crc32c)
    }
}

/// Offset of the version (high nibble) / command (low nibble) byte.
const VERSION_COMMAND: usize = 12;
/// Offset of the family (high nibble) / transport (low nibble) byte.
const FAMILY_TRANSPORT: usize = 13;
/// Offset of the big-endian length of everything after the fixed part.
const LENGTH: usize = 14;
/// Size of the fixed part: signature, two bytes above, length.
const FIXED_LEN: usize = 16;
/// The only version this format defines.
const VERSION_2: u8 = 0x2;
/// The LOCAL command: a connection made by the proxy itself, such as a health check.
const COMMAND_LOCAL: u8 = 0x0;
/// Highest defined command: PROXY (LOCAL is 0).
const COMMAND_MAX: u8 = 0x1;
/// Highest defined family: AF_UNIX (UNSPEC 0, INET 1, INET6 2).
const FAMILY_MAX: u8 = 0x3;
/// Highest defined transport: DGRAM (UNSPEC 0, STREAM 1).
const TRANSPORT_MAX: u8 = 0x2;
/// Selects the low nibble of a byte.
const LOW_NIBBLE: u8 = 0x0F;
/// Shift bringing the high nibble of a byte down.
const HIGH_NIBBLE_SHIFT: u32 = 4;
/// Size of one `AF_UNIX` address (`sun_path`).
const UNIX_PATH_LEN: usize = 108;

/// Decodes a v2 header; `buf` starts with the signature (the caller checked).
pub(crate) fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Header, usize)>, DecodeError> {
    if let Some(&byte) = buf.get(VERSION_COMMAND) {
        check_version_command(byte)?;
    }
    if let Some(&byte) = buf.get(FAMILY_TRANSPORT) {
        check_family_transport(byte)?;
    }
    let Some(&[high, low]) = buf.get(LENGTH..FIXED_LEN) else {
        return Ok(None);
    };
    let len = FIXED_LEN + usize::from(u16::from_be_bytes([high, low]));
    if len > limits.max_v2_len {
        return Err(Error::TooLong {
            len,
            max: limits.max_v2_len,
        }
        .into());
    }
    // Matched by reference: ppp's header is ~250 bytes (its UNIX variant holds both paths
    // inline), and moving it out of the `Result` was a quarter of this function's time.
    let parsed = wire::Header::try_from(buf);
    let parsed = match &parsed {
        Ok(parsed) => parsed,
        // LOCAL: the spec says to discard the protocol block, family included, and use the
        // real connection. A block too short for its family is still a valid health check.
        Err(wire::ParseError::InvalidAddresses(..))
            if buf[VERSION_COMMAND] & LOW_NIBBLE == COMMAND_LOCAL =>
        {
            return Ok(buf
                .get(..len)
                .map(|_| (local_without_block(buf[FAMILY_TRANSPORT]), len)));
        }
        Err(error) => return wire_error(error),
    };
    let bytes = parsed.as_bytes();
    let tlvs_at = FIXED_LEN + parsed.address_family().byte_length().unwrap_or(0);
    let tlvs = match tlv::parse(bytes, tlvs_at) {
        Ok(tlvs) => tlvs,
        // LOCAL again: TLVs that do not parse are part of the block the receiver discards.
        // Decided on the whole declared length only, so every longer buffer decides the same.
        Err(_) if parsed.command == wire::Command::Local => {
            return Ok(Some((
                local_without_block(buf[FAMILY_TRANSPORT]),
                bytes.len(),
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let transport = match parsed.protocol {
        wire::Protocol::Unspecified => Transport::Unspec,
        wire::Protocol::Stream => Transport::Stream,
        wire::Protocol::Datagram => Transport::Datagram,
    };
    let (command, addresses) = match (parsed.command, &parsed.addresses) {
        (wire::Command::Local, _) => (Command::Local, Addresses::Unspec),
        // INET/INET6 over an UNSPEC transport: the spec says to ignore the address information
        // and use the real connection endpoints. The block was still skipped (`tlvs_at`).
        (wire::Command::Proxy, wire::Addresses::IPv4(_) | wire::Addresses::IPv6(_))
            if transport == Transport::Unspec =>
        {
            (Command::Proxy, Addresses::Unspec)
        }
        (wire::Command::Proxy, other) => (Command::Proxy, addresses(other)),
    };
    let header = Header {
        version: Version::V2,
        command,
        transport,
        addresses,
        tlvs,
    };
    Ok(Some((header, bytes.len())))
}

/// A LOCAL header whose block is discarded unread: no addresses, no TLVs. Used when the block
/// is too short for its family or its TLVs do not parse: the spec says a LOCAL connection must
/// be accepted and its protocol block discarded, so neither is an error.
fn local_without_block(family_transport: u8) -> Header {
    Header {
        version: Version::V2,
        command: Command::Local,
        transport: match family_transport & LOW_NIBBLE {
            1 => Transport::Stream,
            2 => Transport::Datagram,
            _ => Transport::Unspec,
        },
        addresses: Addresses::Unspec,
        tlvs: crate::Tlvs::default(),
    }
}

/// What a ppp parse error means here: need more bytes, or which of our errors.
fn wire_error(error: &wire::ParseError) -> Result<Option<(Header, usize)>, DecodeError> {
    let error = match *error {
        wire::ParseError::Incomplete(_) | wire::ParseError::Partial(..) => return Ok(None),
        wire::ParseError::Prefix => return Err(DecodeError::NotProxy),
        wire::ParseError::Version(version) => Error::BadVersion {
            version: version >> HIGH_NIBBLE_SHIFT,
        },
        wire::ParseError::Command(command) => Error::BadCommand { command },
        wire::ParseError::AddressFamily(family) | wire::ParseError::Protocol(family) => {
            Error::BadFamily { family }
        }
        wire::ParseError::InvalidAddresses(len, needed) => Error::AddressOverrun { len, needed },
        wire::ParseError::InvalidTLV(..) | wire::ParseError::Leftovers(..) => {
            Error::TlvOverrun { offset: FIXED_LEN }
        }
    };
    Err(error.into())
}

/// Rejects byte 12 as soon as it arrives.
fn check_version_command(byte: u8) -> Result<(), Error> {
    let version = byte >> HIGH_NIBBLE_SHIFT;
    let command = byte & LOW_NIBBLE;
    if version != VERSION_2 {
        Err(Error::BadVersion { version })
    } else if command > COMMAND_MAX {
        Err(Error::BadCommand { command })
    } else {
        Ok(())
    }
}

/// Rejects byte 13 as soon as it arrives.
fn check_family_transport(byte: u8) -> Result<(), Error> {
    if byte >> HIGH_NIBBLE_SHIFT > FAMILY_MAX || byte & LOW_NIBBLE > TRANSPORT_MAX {
        Err(Error::BadFamily { family: byte })
    } else {
        Ok(())
    }
}

/// ppp's addresses as ours. By reference: ppp's enum is 217 bytes (its UNIX variant holds
/// both paths inline), and moving it costs a copy on every decode.
fn addresses(addresses: &wire::Addresses) -> Addresses {
    match *addresses {
        wire::Addresses::Unspecified => Addresses::Unspec,
        wire::Addresses::IPv4(ip) => Addresses::Inet {
            source: SocketAddr::from((ip.source_address, ip.source_port)),
            destination: SocketAddr::from((ip.destination_address, ip.destination_port)),
        },
        wire::Addresses::IPv6(ip) => Addresses::Inet {
            source: SocketAddr::from((ip.source_address, ip.source_port)),
            destination: SocketAddr::from((ip.destination_address, ip.destination_port)),
        },
        wire::Addresses::Unix(ref unix) => Addresses::Unix {
            source: unix.source.to_vec(),
            destination: unix.destination.to_vec(),
        },
    }
}

/// Encodes `header` as v2 with ppp's builder, then patches in the CRC32c.
pub(crate) fn encode(header: &Header, with_crc32c: bool) -> Result<Vec<u8>, EncodeError> {
    let addresses = wire_addresses(&header.addresses)?;
    let kept = || {
        header
            .tlvs
            .entries()
            .filter(|&(tlv_kind, _)| tlv_kind != kind::CRC32C)
    };
    let crc32c_len = if with_crc32c {
        tlv::TLV_HEADER_LEN + tlv::CRC32C_LEN
    } else {
        0
    };
    let tlvs_len = kept()
        .map(|(_, value)| tlv::TLV_HEADER_LEN + value.len())
        .sum::<usize>()
        + crc32c_len;
    let payload_len = addresses.len() + tlvs_len;
    let too_long = || EncodeError::TooLong { len: payload_len };
    if payload_len > usize::from(u16::MAX) {
        return Err(too_long());
    }
    let command = match header.command {
        Command::Local => wire::Command::Local,
        Command::Proxy => wire::Command::Proxy,
    };
    let protocol = match header.transport {
        Transport::Unspec => wire::Protocol::Unspecified,
        Transport::Stream => wire::Protocol::Stream,
        Transport::Datagram => wire::Protocol::Datagram,
    };
    let mut builder =
        wire::Builder::with_addresses(wire::Version::Two | command, protocol, addresses)
            .reserve_capacity(tlvs_len);
    for (tlv_kind, value) in kept() {
        builder = builder.write_tlv(tlv_kind, value).map_err(|_| too_long())?;
    }
    if with_crc32c {
        builder = builder
            .write_tlv(kind::CRC32C, &[0; tlv::CRC32C_LEN])
            .map_err(|_| too_long())?;
    }
    let mut bytes = builder.build().map_err(|_| too_long())?;
    if with_crc32c {
        let checksum = crc32c::crc32c(&bytes);
        if let Some((_, field)) = bytes.split_last_chunk_mut::<{ tlv::CRC32C_LEN }>() {
            *field = checksum.to_be_bytes();
        }
    }
    Ok(bytes)
}

/// Our addresses as ppp's, bringing IP families together and padding UNIX paths.
fn wire_addresses(addresses: &Addresses) -> Result<wire::Addresses, EncodeError> {
    Ok(match addresses {
        Addresses::Unspec => wire::Addresses::Unspecified,
        Addresses::Inet {
            source,
            destination,
        } => wire::Addresses::from(same_family(*source, *destination)),
        Addresses::Unix {
            source,
            destination,
        } => wire::Addresses::Unix(wire::Unix::new(unix_path(source)?, unix_path(destination)?)),
    })
}

/// A UNIX path NUL-padded to its fixed wire size.
fn unix_path(path: &[u8]) -> Result<[u8; UNIX_PATH_LEN], EncodeError> {
    let mut padded = [0; UNIX_PATH_LEN];
    padded
        .get_mut(..path.len())
        .ok_or(EncodeError::TooLong { len: path.len() })?
        .copy_from_slice(path);
    Ok(padded)
}
