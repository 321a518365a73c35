//! Property tests: valid headers decode identically however the bytes are split, payload is
//! left alone, prefixes never produce a wrong answer, arbitrary bytes never panic, LOCAL is
//! accepted whatever its block holds, and v1 (and `stream_client`) only ever say TCP for a
//! `Stream` header.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::{collection::vec, prelude::*};
use trueip_proxy_header::{
    Addresses, Command, DecodeError, Header, Limits, RawTlv, Ssl, Transport, V2_SIGNATURE, Version,
    decode, kind,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).expect("regex")
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(source, sport, destination, dport)| (
                SocketAddr::from((Ipv4Addr::from(source), sport)),
                SocketAddr::from((Ipv4Addr::from(destination), dport)),
            )),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(source, sport, destination, dport)| (
                SocketAddr::from((Ipv6Addr::from(source), sport)),
                SocketAddr::from((Ipv6Addr::from(destination), dport)),
            )),
    ]
}

fn ssl() -> impl Strategy<Value = Ssl> {
    (
        any::<u8>(),
        any::<u32>(),
        proptest::option::of(text(12)),
        proptest::option::of(text(24)),
        proptest::option::of(text(24)),
        proptest::option::of(text(8)),
        proptest::option::of(text(8)),
    )
        .prop_map(
            |(client, verify, version, cn, cipher, sig_alg, key_alg)| Ssl {
                client,
                verify,
                version,
                cn,
                cipher,
                sig_alg,
                key_alg,
            },
        )
}

/// Any TLV a sender may put in a header (the CRC32c one is `to_v2`'s to add).
fn tlv() -> impl Strategy<Value = RawTlv> {
    prop_oneof![
        bytes(16).prop_map(|value| (kind::ALPN, value)),
        text(32).prop_map(|value| (kind::AUTHORITY, value.into_bytes())),
        bytes(40).prop_map(|value| (kind::NOOP, value)),
        bytes(128).prop_map(|value| (kind::UNIQUE_ID, value)),
        ssl().prop_map(|ssl| (kind::SSL, ssl.encode().expect("small"))),
        text(16).prop_map(|value| (kind::NETNS, value.into_bytes())),
        any::<u64>().prop_map(|id| (kind::GCP, id.to_be_bytes().to_vec())),
        text(24).prop_map(|id| (kind::AWS, [&[0x01], id.as_bytes()].concat())),
        any::<u32>().prop_map(|id| (kind::AZURE, [&[0x01][..], &id.to_le_bytes()].concat())),
        (0xE1_u8..=0xE9, bytes(32)).prop_map(|(kind, value)| (kind, value)),
    ]
    .prop_map(|(kind, value)| RawTlv { kind, value })
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        Just(Transport::Unspec),
        Just(Transport::Stream),
        Just(Transport::Datagram)
    ]
}

/// Any v2 header, LOCAL included (with any address block, which decode must skip).
fn v2_header() -> impl Strategy<Value = Header> {
    let addresses = prop_oneof![
        Just(Addresses::Unspec),
        socket_pair().prop_map(|(source, destination)| Addresses::Inet {
            source,
            destination
        }),
        (vec(any::<u8>(), 108), vec(any::<u8>(), 108)).prop_map(|(source, destination)| {
            Addresses::Unix {
                source,
                destination,
            }
        }),
    ];
    (
        prop_oneof![Just(Command::Local), Just(Command::Proxy)],
        transport(),
        addresses,
        vec(tlv(), 0..8),
    )
        .prop_map(|(command, transport, addresses, tlvs)| Header {
            version: Version::V2,
            command,
            transport,
            addresses,
            tlvs: tlvs.into_iter().collect(),
        })
}

/// Any v1 header: TCP4/TCP6, or UNKNOWN.
fn v1_header() -> impl Strategy<Value = Header> {
    proptest::option::of(socket_pair()).prop_map(|pair| Header {
        version: Version::V1,
        command: Command::Proxy,
        transport: if pair.is_some() {
            Transport::Stream
        } else {
            Transport::Unspec
        },
        addresses: pair.map_or(Addresses::Unspec, |(source, destination)| Addresses::Inet {
            source,
            destination,
        }),
        tlvs: trueip_proxy_header::Tlvs::default(),
    })
}

/// What decoding `header.to_v2(..)` must give: LOCAL drops the addresses, so does an UNSPEC
/// transport with IP addresses (the spec: ignore them), and a fresh CRC32c TLV (whose value
/// decode verified) comes last.
fn expected_v2(header: &Header, crc32c: Option<u32>) -> Header {
    let mut expected = header.clone();
    let unspec_inet = expected.transport == Transport::Unspec
        && matches!(expected.addresses, Addresses::Inet { .. });
    if expected.command == Command::Local || unspec_inet {
        expected.addresses = Addresses::Unspec;
    }
    if let Some(checksum) = crc32c {
        expected
            .tlvs
            .push(kind::CRC32C, checksum.to_be_bytes().to_vec());
    }
    expected
}

/// Feeds `wire` to `decode` in growing prefixes cut after `cuts` bytes (cycled), as a socket
/// would deliver it; the header and consumed count of the first complete decode.
fn feed(
    wire: &[u8],
    header_len: usize,
    cuts: &[usize],
) -> Result<(Header, usize, usize), TestCaseError> {
    let mut fed = 0;
    for cut in cuts.iter().cycle() {
        fed = (fed + cut).min(wire.len());
        match decode(&wire[..fed], &Limits::default()) {
            Ok(None) => prop_assert!(fed < header_len, "Ok(None) with the whole header"),
            Ok(Some((header, consumed))) => return Ok((header, consumed, fed)),
            Err(error) => return Err(TestCaseError::fail(format!("{error} at {fed} bytes"))),
        }
    }
    Err(TestCaseError::fail("no cut sizes"))
}

/// Flips bytes of `wire` at the given (position, xor) pairs.
fn mutate(mut wire: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    let len = wire.len();
    for &(at, xor) in flips {
        wire[at % len] ^= xor;
    }
    wire
}

/// Checks that once a prefix of `wire` decodes to a header or an error, every longer prefix
/// decodes to the same one.
fn prefixes_are_consistent(wire: &[u8]) -> Result<(), TestCaseError> {
    let mut settled: Option<Result<(Header, usize), DecodeError>> = None;
    for end in 0..=wire.len() {
        let result = decode(&wire[..end], &Limits::default());
        match (&settled, result) {
            (None, Ok(None)) => {}
            (None, Ok(Some(done))) => settled = Some(Ok(done)),
            (None, Err(error)) => settled = Some(Err(error)),
            (Some(first), result) => {
                prop_assert_eq!(Some(first.clone()), result.transpose(), "at {} bytes", end);
            }
        }
    }
    Ok(())
}

/// Any valid v2 family/transport byte (byte 13).
fn family_transport() -> impl Strategy<Value = u8> {
    (0_u8..=3, 0_u8..=2).prop_map(|(family, transport)| family << 4 | transport)
}

/// The transport a LOCAL header with byte 13 `family_transport` decodes with.
fn transport_of(family_transport: u8) -> Transport {
    match family_transport & 0x0f {
        1 => Transport::Stream,
        2 => Transport::Datagram,
        _ => Transport::Unspec,
    }
}

proptest! {
    #[test]
    fn v2_decodes_the_same_however_split(
        header in v2_header(),
        with_crc32c in any::<bool>(),
        payload in bytes(64),
        cuts in vec(1_usize..48, 1..16),
    ) {
        let encoded = header.to_v2(with_crc32c).expect("fits");
        let wire = [&encoded[..], &payload[..]].concat();
        let (decoded, consumed, fed) = feed(&wire, encoded.len(), &cuts)?;
        prop_assert_eq!(consumed, encoded.len());
        prop_assert_eq!(&wire[consumed..fed], &payload[..fed - consumed]);
        prop_assert_eq!(decoded.tlvs.crc32c().is_some(), with_crc32c);
        prop_assert_eq!(decoded.clone(), expected_v2(&header, decoded.tlvs.crc32c()));
    }

    #[test]
    fn v1_decodes_the_same_however_split(
        header in v1_header(),
        payload in bytes(64),
        cuts in vec(1_usize..24, 1..16),
    ) {
        let encoded = header.to_v1();
        let wire = [&encoded[..], &payload[..]].concat();
        let (decoded, consumed, fed) = feed(&wire, encoded.len(), &cuts)?;
        prop_assert_eq!(consumed, encoded.len());
        prop_assert_eq!(&wire[consumed..fed], &payload[..fed - consumed]);
        prop_assert_eq!(decoded, header);
    }

    #[test]
    fn strict_prefixes_of_valid_headers_need_more(
        v2 in v2_header(),
        v1 in v1_header(),
        with_crc32c in any::<bool>(),
    ) {
        for encoded in [v2.to_v2(with_crc32c).expect("fits"), v1.to_v1()] {
            for end in 0..encoded.len() {
                prop_assert_eq!(decode(&encoded[..end], &Limits::default()), Ok(None));
            }
        }
    }

    #[test]
    fn damaged_headers_never_give_a_wrong_answer_on_a_prefix(
        v2 in v2_header(),
        v1 in v1_header(),
        with_crc32c in any::<bool>(),
        flips in vec((any::<usize>(), 1_u8..), 1..4),
        payload in bytes(16),
    ) {
        for encoded in [v2.to_v2(with_crc32c).expect("fits"), v1.to_v1()] {
            let wire = mutate([&encoded[..], &payload[..]].concat(), &flips);
            prefixes_are_consistent(&wire)?;
        }
    }

    /// The spec: a LOCAL connection must be accepted and its protocol block discarded. Any
    /// block (too short for its family, TLVs that do not parse, anything) is skipped whole;
    /// the decision waits for the declared length and never changes after it.
    #[test]
    fn local_is_accepted_whatever_its_block(
        family in family_transport(),
        block in bytes(300),
        payload in bytes(16),
    ) {
        let len = u16::try_from(block.len()).expect("small").to_be_bytes();
        let header = [&V2_SIGNATURE[..], &[0x20, family, len[0], len[1]], &block[..]].concat();
        let wire = [&header[..], &payload[..]].concat();
        let (decoded, consumed) = decode(&wire, &Limits::default())
            .expect("LOCAL is accepted")
            .expect("complete");
        prop_assert_eq!(consumed, header.len());
        prop_assert_eq!(decoded.command, Command::Local);
        prop_assert_eq!(decoded.transport, transport_of(family));
        prop_assert_eq!(&decoded.addresses, &Addresses::Unspec);
        prop_assert_eq!(decoded.client(), None);
        for end in 0..header.len() {
            prop_assert_eq!(decode(&wire[..end], &Limits::default()), Ok(None));
        }
        prefixes_are_consistent(&wire)?;
    }

    /// A LOCAL header damaged after its fixed part (addresses, TLVs, CRC32c) is still accepted,
    /// whole: with the TLVs that still parse, or with none.
    #[test]
    fn damaged_local_is_still_accepted(
        header in v2_header(),
        with_crc32c in any::<bool>(),
        flips in vec((any::<usize>(), 1_u8..), 1..4),
    ) {
        let local = Header { command: Command::Local, ..header };
        let encoded = local.to_v2(with_crc32c).expect("fits");
        let mut wire = encoded.clone();
        if let Some(span) = wire.len().checked_sub(16).filter(|&span| span > 0) {
            for &(at, xor) in &flips {
                wire[16 + at % span] ^= xor;
            }
        }
        let (decoded, consumed) = decode(&wire, &Limits::default())
            .expect("LOCAL is accepted")
            .expect("complete");
        prop_assert_eq!(consumed, encoded.len());
        prop_assert_eq!(decoded.command, Command::Local);
        prop_assert_eq!(decoded.transport, local.transport);
        prop_assert_eq!(&decoded.addresses, &Addresses::Unspec);
        prefixes_are_consistent(&wire)?;
    }

    /// v1 has only TCP and a TCP listener must never take a UDP client: `to_v1` and
    /// `stream_client` name a client exactly for `Stream` headers; `client` for any transport.
    #[test]
    fn only_stream_headers_name_a_tcp_client(header in v2_header()) {
        let client = match (header.command, &header.addresses) {
            (Command::Proxy, Addresses::Inet { source, .. }) => Some(*source),
            _ => None,
        };
        prop_assert_eq!(header.client(), client);
        let tcp_client = client.filter(|_| header.transport == Transport::Stream);
        prop_assert_eq!(header.stream_client(), tcp_client);
        let v1 = header.to_v1();
        let (from_v1, consumed) = decode(&v1, &Limits::default())
            .expect("our v1 decodes")
            .expect("complete");
        prop_assert_eq!(consumed, v1.len());
        prop_assert_eq!(from_v1.client(), tcp_client);
        prop_assert_eq!(from_v1.stream_client(), tcp_client);
        if tcp_client.is_none() {
            prop_assert_eq!(&v1[..], &b"PROXY UNKNOWN\r\n"[..]);
        }
        // Decoded from v2, the same holds (an UNSPEC transport loses its addresses).
        let (decoded, _) = decode(&header.to_v2(false).expect("fits"), &Limits::default())
            .expect("our v2 decodes")
            .expect("complete");
        prop_assert_eq!(decoded.stream_client(), tcp_client);
        prop_assert_eq!(decoded.to_v1(), v1);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in prop_oneof![
            Just(Vec::new()),
            Just(b"PROXY ".to_vec()),
            Just(b"PROXY TCP4 ".to_vec()),
            Just(b"PROXY TCP6 ".to_vec()),
            Just(V2_SIGNATURE.to_vec()),
            (0x20_u8..=0x21, 0_u8..=0x32).prop_map(|(command, family)| {
                [&V2_SIGNATURE[..], &[command, family]].concat()
            }),
        ],
        rest in bytes(300),
        max_v2_len in prop_oneof![Just(4096_usize), 0_usize..400],
    ) {
        let wire = [&prefix[..], &rest[..]].concat();
        if let Ok(Some((_, consumed))) = decode(&wire, &Limits { max_v2_len }) {
            prop_assert!(consumed <= wire.len());
        }
        prefixes_are_consistent(&wire)?;
    }
}
