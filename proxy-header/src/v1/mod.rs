//! Version 1: the text line `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
//!
//! Decoding is this crate's own; encoding uses `ppp::v1::Addresses`, and writes `TCP4`/`TCP6`
//! only for a header whose transport is `Stream` (`UNKNOWN` for UDP or unspecified ones, see
//! [`Header::to_v1`](crate::Header::to_v1)).
//!
//! # Why the v1 decoder does not use ppp
//!
//! `ppp::v1::Header::try_from` (ppp 2.3) does not fit a sidecar that must reject bad input
//! early and strictly:
//!
//! * **Not incremental.** It reports "incomplete" until all six fields are present, so
//!   `PROXY TCP4 garbage` keeps the connection waiting for more bytes. Here every field is
//!   judged as its bytes arrive: a partial address is kept only while some completion of it
//!   is still a valid literal, a partial port only while it is still a valid port.
//! * **Too lenient on ports.** It parses ports with `u16::from_str`, which accepts a sign:
//!   `+80` passes. The spec wants plain decimal; here only ASCII digits pass, without
//!   leading zeros (as ppp and HAProxy also require).
//! * **UTF-8 over the ignored tail.** It decodes the whole line as UTF-8, so `PROXY UNKNOWN`
//!   followed by arbitrary bytes (which the spec says to ignore) is rejected. Here the tail
//!   of an `UNKNOWN` line is skipped as bytes.
//!
//! Addresses are parsed with the standard library, as ppp does (dotted quads without leading
//! zeros, IPv6 literals without zone or brackets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::error::v1::{Endpoint, Error};

use crate::{
    detect::{V1_MAX_LEN, V1_SIGNATURE},
    header::{Addresses, Command, Header, Transport, Version, same_family},
    tlv::Tlvs,
};

impl Header {
    /// Encodes this header as a v1 line, for apps that parse v1 themselves: `PROXY TCP4 ...`
    /// or `PROXY TCP6 ...` when [`stream_client`](Self::stream_client) is `Some`, i.e. a
    /// `Proxy` header with IP addresses and a [`Transport::Stream`] transport;
    /// `PROXY UNKNOWN\r\n` otherwise. v1 can only say TCP, so a `Datagram` (UDP) header, or
    /// one with an `Unspec` transport, is written as `UNKNOWN`, never as TCP. An IPv4/IPv6 mix
    /// (only possible in a header built by hand) is written as TCP6 with the IPv4 side
    /// IPv4-mapped. The result is at most [`V1_MAX_LEN`](crate::V1_MAX_LEN) bytes.
    #[must_use]
    pub fn to_v1(&self) -> Vec<u8> {
        encode(self.stream_inet())
    }
}

/// Protocol word for TCP over IPv4.
const TCP4: &[u8] = b"TCP4";
/// Protocol word for TCP over IPv6.
const TCP6: &[u8] = b"TCP6";
/// Protocol word for anything else; the rest of the line is ignored.
const UNKNOWN: &[u8] = b"UNKNOWN";
/// The only field separator: exactly one space.
const SP: u8 = b' ';
/// First byte of the line terminator.
const CR: u8 = b'\r';
/// Second byte of the line terminator.
const LF: u8 = b'\n';
/// Offset of the protocol word, right after `PROXY `.
const FAMILY_AT: usize = V1_SIGNATURE.len();
/// How many bytes of a line can hold fields: its CR must sit at or before index 105 for the
/// LF to end the line within [`V1_MAX_LEN`] bytes.
const FIELDS_MAX_LEN: usize = V1_MAX_LEN - 1;
/// `65535` has five digits.
const MAX_PORT_DIGITS: usize = 5;
/// Suffixes that complete any viable partial dotted quad: a partial octet gets the missing
/// `.0` groups, a trailing dot gets `0` first.
const IPV4_COMPLETIONS: [&str; 7] = ["", "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0"];
/// Suffixes that complete any viable partial IPv6 literal: a partial group ends with `::`
/// (or as is, when eight groups or a `::` are already there), a trailing `:` with `:` or
/// `0`, and a partial embedded IPv4 with the [`IPV4_COMPLETIONS`].
const IPV6_COMPLETIONS: [&str; 9] = ["", "0", ":", "::", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0"];

/// Decodes a v1 line; `buf` starts with `PROXY ` (the caller checked).
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let mut line = Line::new(buf);
    let (at, token) = line.next_token();
    let family = match token {
        Token::Open(word) => {
            return if [TCP4, TCP6, UNKNOWN].iter().any(|w| w.starts_with(word)) {
                line.incomplete()
            } else {
                Err(Error::BadFamily { offset: at })
            };
        }
        Token::Closed(UNKNOWN, delimiter) => return line.unknown(delimiter),
        Token::Closed(TCP4, SP) => Family::V4,
        Token::Closed(TCP6, SP) => Family::V6,
        Token::Closed(TCP4 | TCP6, _) => {
            return Err(Error::Malformed {
                offset: line.pos - 1,
                problem: "expected addresses after the protocol",
            });
        }
        Token::Closed([], _) => return Err(empty_field(at)),
        Token::Closed(_, _) => return Err(Error::BadFamily { offset: at }),
    };
    let Some(source) = line.address(family, Endpoint::Source)? else {
        return line.incomplete();
    };
    let Some(destination) = line.address(family, Endpoint::Destination)? else {
        return line.incomplete();
    };
    let Some(source_port) = line.port(Endpoint::Source)? else {
        return line.incomplete();
    };
    let Some(destination_port) = line.port(Endpoint::Destination)? else {
        return line.incomplete();
    };
    let header = Header {
        version: Version::V1,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: SocketAddr::new(source, source_port),
            destination: SocketAddr::new(destination, destination_port),
        },
        tlvs: Tlvs::default(),
    };
    Ok(line.end(line.pos - 1)?.map(|consumed| (header, consumed)))
}

/// Encodes `PROXY TCP4|TCP6 ...` for a TCP client, `PROXY UNKNOWN` otherwise. The caller
/// passes addresses only for a `Stream` header: v1 has no word for anything but TCP.
pub(crate) fn encode(inet: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let addresses = match inet {
        Some((source, destination)) => ppp::v1::Addresses::from(same_family(source, destination)),
        None => ppp::v1::Addresses::Unknown,
    };
    addresses.to_string().into_bytes()
}

/// The address family named by the protocol word.
#[derive(Debug, Clone, Copy)]
enum Family {
    /// `TCP4`.
    V4,
    /// `TCP6`.
    V6,
}

impl Family {
    /// Parses a complete address field.
    fn parse(self, text: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(text).ok()?;
        match self {
            Self::V4 => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            Self::V6 => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        }
    }

    /// Whether a partial address field can still be completed into a valid one. Exact: the
    /// completion lists cover every way a valid literal can continue (see their docs), and
    /// each candidate goes through the same parser as a complete field.
    fn viable(self, partial: &[u8]) -> bool {
        let Ok(partial) = std::str::from_utf8(partial) else {
            return false;
        };
        let completions: &[&str] = match self {
            Self::V4 => &IPV4_COMPLETIONS,
            Self::V6 => &IPV6_COMPLETIONS,
        };
        completions.iter().any(|suffix| {
            let candidate = [partial, suffix].concat();
            self.parse(candidate.as_bytes()).is_some()
        })
    }
}

/// A port: 1 to 5 ASCII digits, no leading zero unless it is `0`, at most 65535.
fn parse_port(text: &[u8]) -> Option<u16> {
    if text.is_empty() || text.len() > MAX_PORT_DIGITS || (text.len() > 1 && text.starts_with(b"0"))
    {
        return None;
    }
    text.iter()
        .try_fold(0_u32, |value, &digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u32::from(digit - b'0'))
        })
        .and_then(|value| u16::try_from(value).ok())
}

/// An error for two consecutive separators.
fn empty_field(offset: usize) -> Error {
    Error::Malformed {
        offset,
        problem: "empty field (fields are separated by exactly one space)",
    }
}

/// One field of the line.
#[derive(Debug)]
enum Token<'a> {
    /// The field runs to the end of the bytes received: more may follow.
    Open(&'a [u8]),
    /// The field ended at a space or a CR (the second value).
    Closed(&'a [u8], u8),
}

/// A cursor over the received bytes of a v1 line.
#[derive(Debug)]
struct Line<'a> {
    /// Everything received.
    buf: &'a [u8],
    /// The part of `buf` that may hold fields: at most [`FIELDS_MAX_LEN`] bytes.
    fields: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

impl<'a> Line<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            fields: buf.get(..FIELDS_MAX_LEN).unwrap_or(buf),
            pos: FAMILY_AT,
        }
    }

    /// Reads the next field and its start offset.
    fn next_token(&mut self) -> (usize, Token<'a>) {
        let start = self.pos;
        let rest = self.fields.get(start..).unwrap_or_default();
        match rest.iter().position(|&b| b == SP || b == CR) {
            Some(len) => {
                self.pos = start + len + 1;
                (start, Token::Closed(&rest[..len], rest[len]))
            }
            None => {
                self.pos = self.fields.len();
                (start, Token::Open(rest))
            }
        }
    }

    /// Reads an address field followed by a space.
    fn address(&mut self, family: Family, endpoint: Endpoint) -> Result<Option<IpAddr>, Error> {
        let (at, token) = self.next_token();
        let bad = Error::BadAddress {
            endpoint,
            offset: at,
        };
        match token {
            Token::Open(text) if text.is_empty() || family.viable(text) => Ok(None),
            Token::Open(_) => Err(bad),
            Token::Closed([], _) => Err(empty_field(at)),
            Token::Closed(text, delimiter) => {
                let address = family.parse(text).ok_or(bad)?;
                if delimiter == SP {
                    Ok(Some(address))
                } else {
                    Err(Error::Malformed {
                        offset: self.pos - 1,
                        problem: "line ends before the ports",
                    })
                }
            }
        }
    }

    /// Reads a port field: followed by a space for the source, by the CR for the destination.
    fn port(&mut self, endpoint: Endpoint) -> Result<Option<u16>, Error> {
        let (at, token) = self.next_token();
        let bad = Error::BadPort {
            endpoint,
            offset: at,
        };
        match token {
            Token::Open(text) if text.is_empty() || parse_port(text).is_some() => Ok(None),
            Token::Open(_) => Err(bad),
            Token::Closed([], _) => Err(empty_field(at)),
            Token::Closed(text, delimiter) => {
                let port = parse_port(text).ok_or(bad)?;
                match (endpoint, delimiter) {
                    (Endpoint::Source, SP) | (Endpoint::Destination, CR) => Ok(Some(port)),
                    (Endpoint::Source, _) => Err(Error::Malformed {
                        offset: self.pos - 1,
                        problem: "line ends before the destination port",
                    }),
                    (Endpoint::Destination, _) => Err(Error::Malformed {
                        offset: self.pos - 1,
                        problem: "expected CRLF after the destination port",
                    }),
                }
            }
        }
    }

    /// Finishes an `UNKNOWN` line, whose remaining bytes up to the CRLF are ignored.
    fn unknown(&self, delimiter: u8) -> Result<Option<(Header, usize)>, Error> {
        let cr_at = if delimiter == CR {
            Some(self.pos - 1)
        } else {
            let rest = self.fields.get(self.pos..).unwrap_or_default();
            rest.iter().position(|&b| b == CR).map(|at| self.pos + at)
        };
        let Some(cr_at) = cr_at else {
            return self.incomplete();
        };
        let header = Header {
            version: Version::V1,
            command: Command::Proxy,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            tlvs: Tlvs::default(),
        };
        Ok(self.end(cr_at)?.map(|consumed| (header, consumed)))
    }

    /// Checks the LF after the CR at `cr_at`; the line's length when it is there.
    fn end(&self, cr_at: usize) -> Result<Option<usize>, Error> {
        match self.buf.get(cr_at + 1) {
            None => Ok(None),
            Some(&LF) => Ok(Some(cr_at + 2)),
            Some(_) => Err(Error::Malformed {
                offset: cr_at + 1,
                problem: "CR not followed by LF",
            }),
        }
    }

    /// The answer for a line that is valid so far but unfinished: wait for more, unless no
    /// CR can come in time any more.
    fn incomplete<T>(&self) -> Result<Option<T>, Error> {
        if self.fields.len() < FIELDS_MAX_LEN {
            Ok(None)
        } else {
            Err(Error::TooLong)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &[u8]) -> (Header, usize) {
        decode(line).unwrap().expect("complete")
    }

    fn err(line: &[u8]) -> Error {
        decode(line).unwrap_err()
    }

    fn inet(header: &Header) -> (SocketAddr, SocketAddr) {
        match header.addresses {
            Addresses::Inet {
                source,
                destination,
            } => (source, destination),
            ref other => panic!("not inet: {other:?}"),
        }
    }

    /// The examples of the spec (haproxy doc/proxy-protocol.txt, section 2.1).
    #[test]
    fn spec_examples() {
        let (header, len) =
            ok(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n");
        assert_eq!(len, 47);
        assert_eq!(header.version, Version::V1);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(header.transport, Transport::Stream);
        assert_eq!(
            inet(&header),
            (
                "192.168.0.1:56324".parse().unwrap(),
                "192.168.0.11:443".parse().unwrap()
            )
        );
        let max4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(ok(max4).1, 56);
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let max6 = format!("PROXY TCP6 {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(ok(max6.as_bytes()).1, 104);
        let (unknown, len) = ok(b"PROXY UNKNOWN\r\n");
        assert_eq!(len, 15);
        assert_eq!(unknown.addresses, Addresses::Unspec);
        assert_eq!(unknown.transport, Transport::Unspec);
        let longest = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(ok(longest.as_bytes()).1, V1_MAX_LEN);
    }

    #[test]
    fn unknown_ignores_any_bytes_before_crlf() {
        let line = b"PROXY UNKNOWN \xff\x00 anything\n at all\r\nxyz";
        let (header, len) = ok(line);
        assert_eq!(header.addresses, Addresses::Unspec);
        assert_eq!(len, line.len() - 3);
    }

    #[test]
    fn tcp6_forms() {
        let (header, _) = ok(b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 0 65535\r\n");
        assert_eq!(
            inet(&header),
            (
                "[::ffff:192.0.2.1]:0".parse().unwrap(),
                "[2001:db8::1]:65535".parse().unwrap()
            )
        );
    }

    #[test]
    fn too_long() {
        // 106 bytes without CR: no CRLF can end within 107 bytes any more.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(FIELDS_MAX_LEN - 1, b'a');
        assert_eq!(decode(&line), Ok(None));
        line.push(b'a');
        assert_eq!(err(&line), Error::TooLong);
        assert_eq!(err(&line).reason(), "v1_too_long");
        line.push(b'\r');
        line.push(b'\n');
        assert_eq!(err(&line), Error::TooLong);
        // A CR at index 105 still fits, once its LF comes.
        line.truncate(FIELDS_MAX_LEN - 1);
        line.push(b'\r');
        assert_eq!(decode(&line), Ok(None));
        line.push(b'\n');
        assert_eq!(ok(&line).1, V1_MAX_LEN);
        // A valid-so-far TCP6 line with long embedded-IPv4 literals runs out of room too.
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        let line = format!("PROXY TCP6 {long} {long} 65535 65535\r\n");
        assert_eq!(err(line.as_bytes()), Error::TooLong);
    }

    #[test]
    fn bad_family() {
        for line in [
            &b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n"[..],
            b"PROXY tcp4 ",
            b"PROXY UDP4",
            b"PROXY TCP44",
            b"PROXY UNKNOWNX\r\n",
        ] {
            assert_eq!(err(line), Error::BadFamily { offset: 6 }, "{line:?}");
        }
        assert_eq!(err(b"PROXY TCP5").reason(), "v1_bad_family");
    }

    #[test]
    fn bad_address() {
        let cases: [(&[u8], Endpoint, usize); 8] = [
            (b"PROXY TCP4 1.2.3.256 ", Endpoint::Source, 11),
            (b"PROXY TCP4 01.2.3.4 ", Endpoint::Source, 11),
            (b"PROXY TCP4 ::1 ", Endpoint::Source, 11),
            (b"PROXY TCP6 1.2.3.4 ", Endpoint::Source, 11),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8.9", Endpoint::Destination, 19),
            (b"PROXY TCP4 1.2.3.4 5.6.7.x", Endpoint::Destination, 19),
            (
                b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9",
                Endpoint::Destination,
                15,
            ),
            (b"PROXY TCP6 fe80::1%eth0 ", Endpoint::Source, 11),
        ];
        for (line, endpoint, offset) in cases {
            assert_eq!(
                err(line),
                Error::BadAddress { endpoint, offset },
                "{line:?}"
            );
        }
        assert_eq!(err(b"PROXY TCP4 x").reason(), "v1_bad_address");
    }

    #[test]
    fn bad_port() {
        let cases: [(&[u8], Endpoint, usize); 6] = [
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
                Endpoint::Source,
                27,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",
                Endpoint::Source,
                27,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", Endpoint::Source, 27),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 -1",
                Endpoint::Destination,
                30,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 100000",
                Endpoint::Destination,
                30,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 44 \r\n",
                Endpoint::Destination,
                30,
            ),
        ];
        for (line, endpoint, offset) in &cases[..5] {
            assert_eq!(
                err(line),
                Error::BadPort {
                    endpoint: *endpoint,
                    offset: *offset
                },
                "{line:?}"
            );
        }
        // A space after the last port is a structural error, not a bad port.
        assert_eq!(err(cases[5].0).reason(), "v1_malformed");
        assert_eq!(err(cases[0].0).reason(), "v1_bad_port");
    }

    #[test]
    fn malformed() {
        for (line, offset) in [
            (&b"PROXY  TCP4"[..], 6),
            (b"PROXY TCP4  1.2.3.4", 11),
            (b"PROXY TCP4\r\n", 10),
            (b"PROXY TCP4 1.2.3.4\r\n", 18),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", 29),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n", 33),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX", 34),
            (b"PROXY UNKNOWN\r\r\n", 14),
        ] {
            let error = err(line);
            assert!(
                matches!(error, Error::Malformed { offset: o, .. } if o == offset),
                "{line:?}: {error:?}"
            );
            assert_eq!(error.reason(), "v1_malformed");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_line_needs_more() {
        for line in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..],
            b"PROXY TCP6 2001:db8::ffff:1.2.3.4 ::ffff:10.0.0.1 0 8080\r\n",
            b"PROXY TCP6 1:2:3:4:5:6:7:: :: 1 2\r\n",
            b"PROXY UNKNOWN\r\n",
        ] {
            for end in V1_SIGNATURE.len()..line.len() {
                assert_eq!(decode(&line[..end]), Ok(None), "{:?}", &line[..end]);
            }
        }
    }

    #[test]
    fn partial_addresses_are_judged_exactly() {
        for viable in ["1", "1.", "1.2.3.4", "25", "0", "0.0.0."] {
            assert!(Family::V4.viable(viable.as_bytes()), "{viable}");
        }
        for doomed in ["256", "01", "1..", "1.2.3.4.", ":", "a"] {
            assert!(!Family::V4.viable(doomed.as_bytes()), "{doomed}");
        }
        for viable in [
            ":",
            "::",
            "1:",
            "1::",
            "1:2:3:4:5:6:7:",
            "1:2:3:4:5:6:7::",
            "::ffff:1.",
            "::1.2.",
            "1:2:3:4:5:6:1.2.3",
            "ffff",
            "0000",
        ] {
            assert!(Family::V6.viable(viable.as_bytes()), "{viable}");
        }
        for doomed in [
            ":::",
            "1::2::",
            "12345",
            "1:2:3:4:5:6:7:8:",
            "1:2:3:4:5:6:7:8:9",
            "1.2.3.4",
            "1:2:3:4:5:6:7:1.",
            "::1.2.3.4.",
            "g",
            "%",
        ] {
            assert!(!Family::V6.viable(doomed.as_bytes()), "{doomed}");
        }
    }

    /// Documents why v1 decoding does not delegate to ppp: it accepts a signed port.
    /// If this starts failing, ppp became stricter and could be reconsidered.
    #[test]
    fn ppp_v1_accepts_signed_ports() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n";
        assert!(ppp::v1::Header::try_from(&line[..]).is_ok());
        assert!(decode(line).is_err());
    }

    #[test]
    fn encode_uses_ppp_text() {
        let source: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let destination: SocketAddr = "192.0.2.2:80".parse().unwrap();
        assert_eq!(
            encode(Some((source, destination))),
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n"
        );
        assert_eq!(encode(None), b"PROXY UNKNOWN\r\n");
    }
}
