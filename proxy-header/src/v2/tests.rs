//! v2 decoding and encoding against real captures, every error, and round trips.

use std::net::SocketAddr;

use super::*;
use crate::{RawTlv, Ssl, Tlvs, V2_SIGNATURE, decode as decode_any};

/// The signature followed by `rest`.
fn v2(rest: &[u8]) -> Vec<u8> {
    [&V2_SIGNATURE[..], rest].concat()
}

/// Decodes hex written with optional spaces (as in HAProxy's reg-tests).
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn ok(buf: &[u8]) -> (Header, usize) {
    decode_any(buf, &Limits::default())
        .unwrap()
        .expect("complete")
}

fn err(buf: &[u8]) -> DecodeError {
    decode_any(buf, &Limits::default()).unwrap_err()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn inet_header(source: &str, destination: &str, tlvs: Tlvs) -> Header {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: addr(source),
            destination: addr(destination),
        },
        tlvs,
    }
}

fn full_ssl() -> Ssl {
    Ssl {
        client: Ssl::CLIENT_SSL | Ssl::CLIENT_CERT_CONN | Ssl::CLIENT_CERT_SESS,
        verify: 0,
        version: Some("TLSv1.3".into()),
        cn: Some("client.example".into()),
        cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        sig_alg: Some("SHA256".into()),
        key_alg: Some("RSA2048".into()),
    }
}

/// One TLV of every type this crate knows, plus an unknown one.
fn every_tlv() -> Tlvs {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::ALPN, b"h2".to_vec());
    tlvs.push(kind::AUTHORITY, b"example.com".to_vec());
    tlvs.push(kind::NOOP, vec![0; 5]);
    tlvs.push(kind::UNIQUE_ID, b"4a7b-12".to_vec());
    tlvs.push(kind::SSL, full_ssl().encode().unwrap());
    tlvs.push(kind::NETNS, b"blue".to_vec());
    tlvs.push(kind::GCP, 0x0102_0304_0506_0708_u64.to_be_bytes().to_vec());
    tlvs.push(kind::AWS, b"\x01vpce-08d2bf15fac5001c9".to_vec());
    tlvs.push(kind::AZURE, vec![0x01, 0xc1, 0x45, 0x00, 0x21]);
    tlvs.push(0xE1, b"custom".to_vec());
    tlvs
}

// === real byte vectors ===

/// HAProxy `send-proxy-v2` output captured with netcat, followed by the client's request
/// (github.com/seriousben/experiment-proxy-protocol README).
#[test]
fn haproxy_netcat_capture() {
    let wire = hex("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a 21 11 00 0c \
         ac 13 00 01 ac 13 00 03 a6 52 00 50 47 45 54 20 \
         2f 20 48 54 54 50 2f 31 2e 31 0d 0a");
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 28);
    assert_eq!(&wire[consumed..], b"GET / HTTP/1.1\r\n");
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.transport, Transport::Stream);
    assert_eq!(header.client(), Some(addr("172.19.0.1:42578")));
    assert_eq!(header.original_destination(), Some(addr("172.19.0.3:80")));
    assert!(header.tlvs.is_empty());
    assert_eq!(header.to_v2(false).unwrap(), &wire[..consumed]);
}

/// HAProxy reg-test `connection/proxy_protocol_tlv_validation.vtc`, client c1 (accepted).
#[test]
fn haproxy_reg_test_authority() {
    let wire = hex("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a 21 11 00 14 \
         7F 00 00 01 7F 00 00 01 00 2A 05 39 02 00 05 31 32 33 34 35");
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, wire.len());
    assert_eq!(header.client(), Some(addr("127.0.0.1:42")));
    assert_eq!(header.original_destination(), Some(addr("127.0.0.1:1337")));
    assert_eq!(header.tlvs.authority(), Some("12345"));
    assert_eq!(header.to_v2(false).unwrap(), wire);
}

/// Same reg-test, client c2: a TLV after the declared end is payload, not header.
#[test]
fn haproxy_reg_test_tlv_after_end_is_payload() {
    let wire = hex("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a 21 11 00 14 \
         7F 00 00 01 7F 00 00 01 00 2A 05 39 02 00 05 31 32 33 34 35 \
         02 00 05 35 34 33 32 31");
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 36);
    assert_eq!(header.tlvs.len(), 1);
    assert_eq!(&wire[consumed..], hex("02 00 05 35 34 33 32 31"));
}

/// Same reg-test, clients c3 and c4 (rejected by HAProxy): a TLV longer than the header,
/// and TLVs that stop one byte short of the declared end (the next byte is the request's).
#[test]
fn haproxy_reg_test_tlv_overruns() {
    let too_long = hex("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a 21 11 00 14 \
         7F 00 00 01 7F 00 00 01 00 2A 05 39 02 00 0A 31 32 33 34 35 31 32 33 34 35");
    assert_eq!(
        err(&too_long),
        DecodeError::V2(Error::TlvOverrun { offset: 28 })
    );
    let mut short = hex("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a 21 11 00 14 \
         7F 00 00 01 7F 00 00 01 00 2A 05 39 02 00 04 31 32 33 34");
    short.extend(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        err(&short),
        DecodeError::V2(Error::TlvOverrun { offset: 35 })
    );
    assert_eq!(err(&short).reason(), "v2_tlv_overrun");
}

/// HAProxy reg-test `connection/proxy_protocol_tlv_embedded_nul.vtc`: values holding NUL
/// bytes, and the 5-byte SSL TLV `send-proxy-v2-ssl` sends for a non-TLS client.
#[test]
fn haproxy_reg_test_embedded_nul() {
    let c1 = hex(
        "0d0a0d0a000d0a515549540a 2111 002f 7f0000017f000001002a0539 \
         020006 7075626c6963 050006 7075626c6963 e10006 7075626c6963 200005 0000000000",
    );
    let (header, consumed) = ok(&c1);
    assert_eq!(consumed, c1.len());
    assert_eq!(header.tlvs.authority(), Some("public"));
    assert_eq!(header.tlvs.unique_id(), Some(&b"public"[..]));
    assert_eq!(header.tlvs.get(0xE1), Some(&b"public"[..]));
    assert_eq!(
        header.tlvs.ssl(),
        Some(Ssl {
            client: 0,
            verify: 0,
            version: None,
            cn: None,
            cipher: None,
            sig_alg: None,
            key_alg: None,
        })
    );
    let c2 = hex(
        "0d0a0d0a000d0a515549540a 2111 002d 7f0000017f000001002a0539 \
         020008 7075626c69630078 050008 7075626c69630078 e10008 7075626c69630078",
    );
    let (header, _) = ok(&c2);
    assert_eq!(header.tlvs.authority(), Some("public\0x"));
    assert_eq!(header.tlvs.get(0xE1), Some(&b"public\0x"[..]));
}

/// HAProxy-sent SSL TLVs, transcribed from go-proxyproto `tlvparse/ssl_test.go`
/// ("SSL haproxy cn", "SSL haproxy cipher").
#[test]
fn haproxy_ssl_tlvs() {
    let cn = hex(
        "0d0a0d0a 000d0a51 5549540a 21110040 7f000001 7f000001 cc8a232e \
         20003107 00000000 21000754 4c537631 2e332200 1f457861 6d706c65 \
         20436f6d 6d6f6e20 4e616d65 20436c69 656e7420 43657274",
    );
    let (header, consumed) = ok(&cn);
    assert_eq!(consumed, cn.len());
    let ssl = header.tlvs.ssl().unwrap();
    assert_eq!(ssl.client, 0x07);
    assert_eq!(ssl.verify, 0);
    assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(ssl.cn.as_deref(), Some("Example Common Name Client Cert"));
    assert_eq!(ssl.cipher, None);

    let cipher = hex(
        "0d0a0d0a 000d0a51 5549540a 2121004f 00000000 00000000 0000ffff \
         0a015b0e 00000000 00000000 0000ffff 0a01019f f47c01bb 20002801 \
         00000000 21000754 4c537631 2e332300 16544c53 5f414553 5f323536 \
         5f47434d 5f534841 333834",
    );
    let (header, _) = ok(&cipher);
    assert_eq!(header.client(), Some(addr("[::ffff:10.1.91.14]:62588")));
    assert_eq!(
        header.original_destination(),
        Some(addr("[::ffff:10.1.1.159]:443"))
    );
    let ssl = header.tlvs.ssl().unwrap();
    assert_eq!(ssl.client, Ssl::CLIENT_SSL);
    assert_eq!(ssl.cipher.as_deref(), Some("TLS_AES_256_GCM_SHA384"));
}

/// AWS NLB headers with CRC32c, VPC endpoint id and NOOP padding, transcribed from
/// go-proxyproto `tlvparse/aws_test.go` (the AWS proprot compatibility example and a capture).
#[test]
fn aws_nlb_captures_verify_crc32c() {
    let example = hex(
        "0d0a0d0a 000d0a51 5549540a 21110054 ac1f0771 ac1f0a1f c8f20050 \
         030004e8 d6892dea 00170176 7063652d 30386432 62663135 66616335 \
         30303163 39040024 00000000 00000000 00000000 00000000 00000000 \
         00000000 00000000 00000000 00000000",
    );
    let capture = hex(
        "0d0a0d0a 000d0a51 5549540a 21110054 c0a82c0a c0a82c07 cc3e241b \
         030004b9 286fa6ea 00170176 7063652d 30306561 66633435 38656339 \
         37623833 33040024 00000000 00000000 00000000 00000000 00000000 \
         00000000 00000000 00000000 00000000",
    );
    for (wire, vpce, crc) in [
        (&example, "vpce-08d2bf15fac5001c9", 0xe8d6_892d),
        (&capture, "vpce-00eafc458ec97b833", 0xb928_6fa6),
    ] {
        let (header, consumed) = ok(wire);
        assert_eq!(consumed, wire.len());
        assert_eq!(header.tlvs.aws_vpce_id(), Some(vpce));
        assert_eq!(header.tlvs.crc32c(), Some(crc));
        let kinds: Vec<u8> = header.tlvs.iter().map(|tlv| tlv.kind).collect();
        assert_eq!(kinds, [kind::CRC32C, kind::AWS, kind::NOOP]);
        // Re-encoded: without the old checksum, or with a fresh one (appended last).
        assert_eq!(header.to_v2(false).unwrap().len(), wire.len() - 7);
        let (again, _) = ok(&header.to_v2(true).unwrap());
        assert_eq!(again.tlvs.aws_vpce_id(), Some(vpce));

        let mut corrupted = wire.clone();
        corrupted[20] ^= 1;
        let error = err(&corrupted);
        assert!(
            matches!(error, DecodeError::V2(Error::Crc32cMismatch { expected, .. }) if expected == crc)
        );
        assert_eq!(error.reason(), "crc32c_mismatch");
    }
    let (header, _) = ok(&capture);
    assert_eq!(header.client(), Some(addr("192.168.44.10:52286")));
    assert_eq!(
        header.original_destination(),
        Some(addr("192.168.44.7:9243"))
    );
}

/// The ppp behaviour this crate works around: for AF_UNSPEC, `Header::tlvs()` sees the whole
/// payload as address bytes, so the TLVs of a LOCAL health check are invisible.
#[test]
fn ppp_hides_unspec_tlvs() {
    let wire = v2(&[
        0x20,
        0x00,
        0x00,
        0x07,
        kind::AUTHORITY,
        0x00,
        0x04,
        b'h',
        b'o',
        b's',
        b't',
    ]);
    let parsed = wire::Header::try_from(&wire[..]).unwrap();
    assert_eq!(parsed.tlvs().count(), 0);
    let (header, _) = ok(&wire);
    assert_eq!(header.tlvs.authority(), Some("host"));
}

// === commands and families ===

#[test]
fn local_with_addresses_and_tlvs() {
    let mut body = vec![0x20, 0x11, 0x00, 12 + 7];
    body.extend([10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50]);
    body.extend([kind::AUTHORITY, 0x00, 0x04]);
    body.extend(b"host");
    let mut wire = v2(&body);
    wire.extend(b"payload");
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 16 + 19);
    assert_eq!(header.command, Command::Local);
    assert_eq!(header.transport, Transport::Stream);
    assert_eq!(header.addresses, Addresses::Unspec);
    assert_eq!(header.client(), None);
    assert_eq!(header.tlvs.authority(), Some("host"));
    assert_eq!(&wire[consumed..], b"payload");
}

#[test]
fn local_unspec_empty() {
    let (header, consumed) = ok(&v2(&[0x20, 0x00, 0x00, 0x00]));
    assert_eq!(consumed, 16);
    assert_eq!(header.command, Command::Local);
    assert_eq!(header.transport, Transport::Unspec);
    assert!(header.tlvs.is_empty());
    assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n");
}

#[test]
fn proxy_unspec_with_tlvs() {
    let (header, _) = ok(&v2(&[
        0x21,
        0x00,
        0x00,
        0x05,
        kind::ALPN,
        0x00,
        0x02,
        b'h',
        b'2',
    ]));
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.addresses, Addresses::Unspec);
    assert_eq!(header.client(), None);
    assert_eq!(header.tlvs.alpn(), Some(&b"h2"[..]));
}

#[test]
fn unix_round_trip() {
    let mut source = b"/run/lb.sock".to_vec();
    source.resize(108, 0);
    let header = Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Unix {
            source: b"/run/lb.sock".to_vec(),
            destination: vec![b'd'; 108],
        },
        tlvs: Tlvs::default(),
    };
    let wire = header.to_v2(false).unwrap();
    assert_eq!(wire.len(), 16 + 216);
    assert_eq!(wire[13], 0x31);
    let (decoded, _) = ok(&wire);
    assert_eq!(
        decoded.addresses,
        Addresses::Unix {
            source,
            destination: vec![b'd'; 108]
        }
    );
    assert_eq!(decoded.client(), None);
}

#[test]
fn datagram_ipv6() {
    let mut header = inet_header("[2001:db8::7]:5353", "[2001:db8::1]:53", Tlvs::default());
    header.transport = Transport::Datagram;
    let wire = header.to_v2(false).unwrap();
    assert_eq!(&wire[12..16], [0x21, 0x22, 0x00, 36]);
    assert_eq!(ok(&wire).0, header);
}

/// Byte 13 `0x10`: INET over an UNSPEC transport. The spec says the receiver must ignore the
/// addresses (use the real endpoints), as for family UNSPEC; the 12-byte block is skipped.
#[test]
fn inet_with_unspec_transport_ignores_addresses() {
    let mut wire = v2(&hex("21 10 000c cb007107 c6336401 c822 01bb"));
    wire.extend(b"GET / HTTP/1.1\r\n");
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 28);
    assert_eq!(&wire[consumed..], b"GET / HTTP/1.1\r\n");
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.transport, Transport::Unspec);
    assert_eq!(header.addresses, Addresses::Unspec);
    assert_eq!(header.client(), None);
    assert_eq!(header.stream_client(), None);
    assert_eq!(header.original_destination(), None);
    assert!(header.tlvs.is_empty());
    assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n");
    for end in 0..consumed {
        assert_eq!(
            decode_any(&wire[..end], &Limits::default()),
            Ok(None),
            "prefix of {end} bytes"
        );
    }
}

/// Byte 13 `0x20`: INET6 over an UNSPEC transport. Addresses ignored, but the 36-byte block
/// is still skipped, so the TLVs after it (CRC32c included) are read and checked.
#[test]
fn inet6_with_unspec_transport_still_reads_tlvs() {
    let wire = v2(&hex("21 20 0037 \
         20010db8 00000000 00000000 00000007 20010db8 00000000 00000000 00000001 c822 01bb \
         02000b 6578616d706c652e636f6d 010002 6832"));
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 16 + 36 + 14 + 5);
    assert_eq!(consumed, wire.len());
    assert_eq!(header.command, Command::Proxy);
    assert_eq!(header.transport, Transport::Unspec);
    assert_eq!(header.addresses, Addresses::Unspec);
    assert_eq!(header.client(), None);
    assert_eq!(header.tlvs.authority(), Some("example.com"));
    assert_eq!(header.tlvs.alpn(), Some(&b"h2"[..]));
    assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n");

    // Built by hand with addresses and an UNSPEC transport: written as 0x20, with a CRC32c.
    let mut built = inet_header("[2001:db8::7]:51234", "[2001:db8::1]:443", every_tlv());
    built.transport = Transport::Unspec;
    let wire = built.to_v2(true).unwrap();
    assert_eq!(wire[13], 0x20);
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, wire.len());
    assert_eq!(header.addresses, Addresses::Unspec);
    assert_eq!(header.client(), None);
    assert!(header.tlvs.crc32c().is_some());
    assert_eq!(header.tlvs.len(), every_tlv().len() + 1);
    // And the checksum still guards the whole header, addresses included.
    let mut corrupted = wire.clone();
    corrupted[20] ^= 1;
    assert_eq!(err(&corrupted).reason(), "crc32c_mismatch");
}

/// v1 can only say TCP: UDP headers (`0x12`, `0x22`) are `UNKNOWN` in v1 and name no client
/// for a TCP listener, though `client()` (the datagram decoder's) still gives their source.
#[test]
fn datagram_is_unknown_in_v1_and_no_stream_client() {
    let v4 = "cb007107 c6336401 c822 01bb";
    let v6 = "20010db8 00000000 00000000 00000007 20010db8 00000000 00000000 00000001 c822 01bb";
    for (family, block, client, tcp) in [
        ("12 000c", v4, "203.0.113.7:51234", None),
        ("22 0024", v6, "[2001:db8::7]:51234", None),
        (
            "11 000c",
            v4,
            "203.0.113.7:51234",
            Some(&b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n"[..]),
        ),
        (
            "21 0024",
            v6,
            "[2001:db8::7]:51234",
            Some(&b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n"[..]),
        ),
    ] {
        let wire = v2(&hex(&format!("21 {family} {block}")));
        let (header, consumed) = ok(&wire);
        assert_eq!(consumed, wire.len());
        assert_eq!(header.client(), Some(addr(client)), "{family}");
        match tcp {
            Some(line) => {
                assert_eq!(header.transport, Transport::Stream);
                assert_eq!(header.stream_client(), Some(addr(client)));
                assert_eq!(header.to_v1(), line);
                assert_eq!(ok(line).0.client(), Some(addr(client)));
            }
            None => {
                assert_eq!(header.transport, Transport::Datagram);
                assert_eq!(header.stream_client(), None, "{family}");
                assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n", "{family}");
            }
        }
    }
}

// === round trips ===

#[test]
fn round_trip_every_tlv_type() {
    for with_crc32c in [false, true] {
        for (source, destination) in [
            ("203.0.113.7:51234", "198.51.100.1:443"),
            ("[2001:db8::7]:51234", "[2001:db8::1]:443"),
        ] {
            let header = inet_header(source, destination, every_tlv());
            let mut wire = header.to_v2(with_crc32c).unwrap();
            let header_len = wire.len();
            wire.extend(b"\x16\x03\x01 payload");
            let (decoded, consumed) = ok(&wire);
            assert_eq!(consumed, header_len);
            let mut expected = header.clone();
            if with_crc32c {
                let checksum = decoded.tlvs.crc32c().expect("crc32c TLV");
                expected
                    .tlvs
                    .push(kind::CRC32C, checksum.to_be_bytes().to_vec());
            }
            assert_eq!(decoded, expected);

            let tlvs = &decoded.tlvs;
            assert_eq!(tlvs.alpn(), Some(&b"h2"[..]));
            assert_eq!(tlvs.authority(), Some("example.com"));
            assert_eq!(tlvs.get(kind::NOOP), Some(&[0; 5][..]));
            assert_eq!(tlvs.unique_id(), Some(&b"4a7b-12"[..]));
            assert_eq!(tlvs.ssl(), Some(full_ssl()));
            assert_eq!(tlvs.netns(), Some("blue"));
            assert_eq!(tlvs.gcp_psc_connection_id(), Some(0x0102_0304_0506_0708));
            assert_eq!(tlvs.aws_vpce_id(), Some("vpce-08d2bf15fac5001c9"));
            assert_eq!(tlvs.azure_private_link_id(), Some(0x2100_45c1));
            assert_eq!(tlvs.get(0xE1), Some(&b"custom"[..]));

            let v1 = decoded.to_v1();
            let (from_v1, _) = ok(&v1);
            assert_eq!(from_v1.client(), header.client());
            assert_eq!(
                from_v1.original_destination(),
                header.original_destination()
            );
        }
    }
}

#[test]
fn to_v2_replaces_stale_crc32c() {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::CRC32C, vec![0xde, 0xad, 0xbe, 0xef]);
    tlvs.push(kind::AUTHORITY, b"a".to_vec());
    let header = inet_header("192.0.2.1:1", "192.0.2.2:2", tlvs);
    let plain = header.to_v2(false).unwrap();
    assert_eq!(ok(&plain).0.tlvs.crc32c(), None);
    let fresh = header.to_v2(true).unwrap();
    let (decoded, _) = ok(&fresh);
    let kinds: Vec<u8> = decoded.tlvs.iter().map(|tlv| tlv.kind).collect();
    assert_eq!(kinds, [kind::AUTHORITY, kind::CRC32C]);
    assert_ne!(decoded.tlvs.crc32c(), Some(0xdead_beef));
}

#[test]
fn encode_too_long() {
    let mut tlvs = Tlvs::default();
    tlvs.push(0xE1, vec![0; usize::from(u16::MAX) - 12 - 3]);
    let header = inet_header("192.0.2.1:1", "192.0.2.2:2", tlvs.clone());
    assert_eq!(
        header.to_v2(false).unwrap().len(),
        16 + usize::from(u16::MAX)
    );
    assert_eq!(
        header.to_v2(true),
        Err(EncodeError::TooLong {
            len: usize::from(u16::MAX) + 7
        })
    );
    let unix = Header {
        addresses: Addresses::Unix {
            source: vec![b'x'; 109],
            destination: Vec::new(),
        },
        ..header
    };
    assert_eq!(unix.to_v2(false), Err(EncodeError::TooLong { len: 109 }));
    let huge = Ssl {
        cn: Some("x".repeat(70_000)),
        ..full_ssl()
    };
    assert_eq!(huge.encode(), Err(EncodeError::TooLong { len: 70_000 }));
}

// === every error, as early as the bytes allow ===

#[test]
fn bad_version_at_byte_13() {
    for byte in [0x01, 0x11, 0x31, 0xf1] {
        let error = err(&v2(&[byte]));
        assert_eq!(
            error,
            DecodeError::V2(Error::BadVersion { version: byte >> 4 })
        );
        assert_eq!(error.reason(), "v2_bad_version");
    }
}

#[test]
fn bad_command_at_byte_13() {
    for byte in [0x22, 0x2f] {
        let error = err(&v2(&[byte]));
        assert_eq!(
            error,
            DecodeError::V2(Error::BadCommand {
                command: byte & 0x0f
            })
        );
        assert_eq!(error.reason(), "v2_bad_command");
    }
}

#[test]
fn bad_family_at_byte_14() {
    for byte in [0x41, 0x13, 0xff] {
        let error = err(&v2(&[0x21, byte]));
        assert_eq!(error, DecodeError::V2(Error::BadFamily { family: byte }));
        assert_eq!(error.reason(), "v2_bad_family");
    }
    for byte in [0x00, 0x01, 0x02, 0x10, 0x12, 0x20, 0x21, 0x30, 0x32] {
        assert_eq!(decode_any(&v2(&[0x21, byte]), &Limits::default()), Ok(None));
    }
}

#[test]
fn too_long_right_after_16_bytes() {
    let error = err(&v2(&[0x21, 0x11, 0x0f, 0xf1]));
    assert_eq!(
        error,
        DecodeError::V2(Error::TooLong {
            len: 16 + 0x0ff1,
            max: 4096
        })
    );
    assert_eq!(error.reason(), "v2_too_long");
    assert_eq!(
        decode_any(&v2(&[0x21, 0x11, 0x0f, 0xf0]), &Limits::default()),
        Ok(None)
    );
    let tight = Limits { max_v2_len: 28 };
    let wire = inet_header("192.0.2.1:1", "192.0.2.2:2", Tlvs::default())
        .to_v2(false)
        .unwrap();
    assert!(decode_any(&wire, &tight).unwrap().is_some());
    let with_tlv = inet_header("192.0.2.1:1", "192.0.2.2:2", every_tlv())
        .to_v2(false)
        .unwrap();
    assert_eq!(
        decode_any(&with_tlv[..16], &tight).unwrap_err().reason(),
        "v2_too_long"
    );
}

#[test]
fn address_overrun_right_after_16_bytes() {
    for (family, len, needed) in [
        (0x11, 11, 12),
        (0x21, 35, 36),
        (0x31, 215, 216),
        (0x12, 0, 12),
    ] {
        let error = err(&v2(&[0x21, family, 0x00, len]));
        assert_eq!(
            error,
            DecodeError::V2(Error::AddressOverrun {
                len: usize::from(len),
                needed
            })
        );
        assert_eq!(error.reason(), "v2_address_overrun");
    }
}

#[test]
fn local_with_a_block_too_short_for_its_family_is_skipped() {
    // The spec: LOCAL discards the protocol block, family included. Skip `len`, keep nothing.
    let header = v2(&[0x20, 0x11, 0x00, 0x04, 1, 2, 3, 4, b'G']);
    let limits = Limits::default();
    assert_eq!(
        decode_any(&header[..19], &limits).unwrap(),
        None,
        "waits for len"
    );
    let (decoded, consumed) = decode_any(&header, &limits).unwrap().unwrap();
    assert_eq!(consumed, 20);
    assert_eq!(decoded.command, Command::Local);
    assert_eq!(decoded.addresses, Addresses::Unspec);
    assert!(decoded.tlvs.is_empty());
}

/// The spec: a LOCAL connection must be accepted and its protocol block discarded. 100 bytes
/// that do not parse as TLVs (the first one claims 65 535 bytes) are skipped, not refused.
#[test]
fn local_with_opaque_block_is_accepted() {
    let mut block = vec![kind::AUTHORITY, 0xff, 0xff];
    block.resize(100, 0xab);
    let mut wire = [v2(&hex("20 00 0064")), block].concat();
    wire.extend(b"GET / HTTP/1.1\r\n");
    for end in 0..116 {
        assert_eq!(
            decode_any(&wire[..end], &Limits::default()),
            Ok(None),
            "prefix of {end} bytes"
        );
    }
    let (header, consumed) = ok(&wire);
    assert_eq!(consumed, 116);
    assert_eq!(&wire[consumed..], b"GET / HTTP/1.1\r\n");
    assert_eq!(
        header,
        Header {
            version: Version::V2,
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: Addresses::Unspec,
            tlvs: Tlvs::default(),
        }
    );
    assert_eq!(header.client(), None);
    assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n");

    // The same block behind PROXY is refused.
    wire[12] = 0x21;
    assert_eq!(
        err(&wire),
        DecodeError::V2(Error::TlvOverrun { offset: 16 })
    );
}

/// A LOCAL header whose CRC32c does not match is accepted without its TLVs (the checksum
/// guards a block the receiver discards anyway); a PROXY one is refused.
#[test]
fn local_with_wrong_crc32c_is_accepted_without_tlvs() {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AUTHORITY, b"host".to_vec());
    for command in [Command::Local, Command::Proxy] {
        let sent = Header {
            command,
            ..inet_header("192.0.2.1:1000", "192.0.2.2:80", tlvs.clone())
        }
        .to_v2(true)
        .unwrap();
        let (intact, _) = ok(&sent);
        assert_eq!(intact.tlvs.authority(), Some("host"), "{command:?}");
        assert!(intact.tlvs.crc32c().is_some());

        let mut wire = sent.clone();
        *wire.last_mut().unwrap() ^= 0x01;
        wire.extend(b"payload");
        if command == Command::Proxy {
            assert_eq!(err(&wire).reason(), "crc32c_mismatch");
            continue;
        }
        let (header, consumed) = ok(&wire);
        assert_eq!(consumed, sent.len());
        assert_eq!(&wire[consumed..], b"payload");
        assert_eq!(header.command, Command::Local);
        assert_eq!(header.transport, Transport::Stream);
        assert_eq!(header.addresses, Addresses::Unspec);
        assert!(header.tlvs.is_empty());
        assert_eq!(header.tlvs.crc32c(), None);
    }
}

/// Every way `tlv::parse` rejects a TLV area: refused behind PROXY with its reason, accepted
/// behind LOCAL with no addresses and no TLVs, the whole declared length consumed.
#[test]
fn local_discards_tlv_areas_that_do_not_parse() {
    let ssl_sub_overrun = [
        kind::SSL,
        0x00,
        0x08,
        1,
        0,
        0,
        0,
        0,
        kind::SSL_CN,
        0x00,
        0x05,
    ];
    let two_crc32c = [
        [kind::CRC32C, 0x00, 0x04, 0, 0, 0, 0],
        [kind::CRC32C, 0x00, 0x04, 0, 0, 0, 0],
    ]
    .concat();
    let cases: [(u8, usize, &[u8], &str); 8] = [
        (0x00, 0, &[kind::NOOP, 0x00], "v2_tlv_overrun"),
        (
            0x11,
            12,
            &[kind::ALPN, 0x00, 0x09, b'h', b'2', b'x'],
            "v2_tlv_overrun",
        ),
        (
            0x22,
            36,
            &[kind::NOOP, 0x00, 0x00, kind::ALPN],
            "v2_tlv_overrun",
        ),
        (
            0x00,
            0,
            &[kind::SSL, 0x00, 0x04, 1, 0, 0, 0],
            "v2_bad_ssl_tlv",
        ),
        (0x10, 12, &ssl_sub_overrun, "v2_bad_ssl_tlv"),
        (
            0x00,
            0,
            &[kind::CRC32C, 0x00, 0x03, 1, 2, 3],
            "v2_bad_crc32c_tlv",
        ),
        (0x21, 36, &two_crc32c, "v2_bad_crc32c_tlv"),
        (
            0x31,
            216,
            &[kind::CRC32C, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef],
            "crc32c_mismatch",
        ),
    ];
    for (family, block, tlvs, reason) in cases {
        let len = u16::try_from(block + tlvs.len()).unwrap().to_be_bytes();
        let mut body = vec![0x21, family, len[0], len[1]];
        body.extend(vec![0x5a; block]);
        body.extend(tlvs);
        let mut wire = v2(&body);
        let header_len = wire.len();
        wire.extend(b"payload");
        assert_eq!(err(&wire).reason(), reason, "PROXY {family:#04x}");

        wire[12] = 0x20;
        let (header, consumed) = ok(&wire);
        assert_eq!(consumed, header_len, "LOCAL {family:#04x}");
        assert_eq!(&wire[consumed..], b"payload");
        assert_eq!(header.command, Command::Local);
        assert_eq!(header.addresses, Addresses::Unspec);
        assert!(header.tlvs.is_empty(), "LOCAL {family:#04x}");
        let transport = match family & 0x0f {
            0x1 => Transport::Stream,
            0x2 => Transport::Datagram,
            _ => Transport::Unspec,
        };
        assert_eq!(header.transport, transport);
        for end in 0..header_len {
            assert_eq!(
                decode_any(&wire[..end], &Limits::default()),
                Ok(None),
                "LOCAL {family:#04x}, prefix of {end} bytes"
            );
        }
    }
}

#[test]
fn tlv_overrun() {
    // Fewer than 3 bytes left after the addresses.
    let mut body = vec![0x21, 0x11, 0x00, 14];
    body.extend([0; 12]);
    body.extend([kind::NOOP, 0x00]);
    assert_eq!(
        err(&v2(&body)),
        DecodeError::V2(Error::TlvOverrun { offset: 28 })
    );
    // A TLV whose length runs past the end, after a good one.
    let mut body = vec![0x21, 0x00, 0x00, 9, kind::NOOP, 0x00, 0x00];
    body.extend([kind::ALPN, 0x00, 0x09, b'h', b'2', b'x']);
    assert_eq!(
        err(&v2(&body)),
        DecodeError::V2(Error::TlvOverrun { offset: 19 })
    );
}

#[test]
fn bad_ssl_tlv() {
    let short = v2(&[0x21, 0x00, 0x00, 7, kind::SSL, 0x00, 0x04, 1, 0, 0, 0]);
    assert_eq!(
        err(&short),
        DecodeError::V2(Error::BadSslTlv { offset: 16 })
    );
    assert_eq!(err(&short).reason(), "v2_bad_ssl_tlv");
    // A sub-TLV running past the end of the SSL TLV, though the outer TLVs tile.
    let overrun = v2(&[
        0x21,
        0x00,
        0x00,
        11,
        kind::SSL,
        0x00,
        0x08,
        1,
        0,
        0,
        0,
        0,
        kind::SSL_CN,
        0x00,
        0x05,
    ]);
    assert_eq!(err(&overrun).reason(), "v2_bad_ssl_tlv");
}

#[test]
fn bad_crc32c_tlv() {
    let three = v2(&[0x21, 0x00, 0x00, 6, kind::CRC32C, 0x00, 0x03, 1, 2, 3]);
    assert_eq!(
        err(&three),
        DecodeError::V2(Error::BadCrc32cTlv { offset: 16 })
    );
    assert_eq!(err(&three).reason(), "v2_bad_crc32c_tlv");
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AUTHORITY, b"a".to_vec());
    let once = inet_header("192.0.2.1:1", "192.0.2.2:2", tlvs)
        .to_v2(true)
        .unwrap();
    let crc_tlv = once[once.len() - 7..].to_vec();
    let mut twice = once.clone();
    twice.extend(&crc_tlv);
    twice[15] += 7;
    assert_eq!(
        err(&twice),
        DecodeError::V2(Error::BadCrc32cTlv { offset: once.len() })
    );
}

#[test]
fn crc32c_mismatch() {
    let wire = inet_header("192.0.2.1:1", "192.0.2.2:2", every_tlv())
        .to_v2(true)
        .unwrap();
    for at in [13, 16, 20, 31, wire.len() - 8, wire.len() - 1] {
        let mut corrupted = wire.clone();
        corrupted[at] ^= 0x01;
        let error = err(&corrupted);
        assert_eq!(error.reason(), "crc32c_mismatch", "flipped byte {at}");
    }
    // Byte 12 flipped to 0x20 turns the header into LOCAL, which the spec says to accept with
    // its block discarded: the checksum guards nothing the receiver uses, and no client is named.
    let mut local = wire.clone();
    local[12] ^= 0x01;
    let (header, consumed) = ok(&local);
    assert_eq!(consumed, wire.len());
    assert_eq!(header.command, Command::Local);
    assert_eq!(header.client(), None);
    assert!(header.tlvs.is_empty());
}

#[test]
fn strict_prefixes_need_more() {
    for with_crc32c in [false, true] {
        let wire = inet_header("[2001:db8::7]:1", "[2001:db8::1]:2", every_tlv())
            .to_v2(with_crc32c)
            .unwrap();
        for end in 0..wire.len() {
            assert_eq!(
                decode_any(&wire[..end], &Limits::default()),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }
}

// === typed accessors ===

/// The multi-TLV cases of go-proxyproto `tlvparse/{azure,gcp}_test.go`: the first TLV of the
/// type that decodes wins; wrong sub-types and lengths are skipped.
#[test]
fn cloud_accessors_skip_undecodable() {
    let tlvs: Tlvs = [
        (
            kind::AWS,
            vec![
                0x01, b'v', b'p', b'c', b'e', b'-', b'a', b'b', b'c', b'1', b'2', b'3',
            ],
        ),
        (kind::AZURE, vec![0x02, 0x01, 0x01, 0x01, 0x01]),
        (kind::AZURE, vec![0x02, 0x01, 0x01]),
        (kind::AZURE, vec![0x01, 0xc1, 0x45, 0x00, 0x21]),
        (kind::AZURE, vec![0x01, 0xc1, 0x45, 0x00, 0x22]),
        (kind::GCP, vec![0xff, 0xff, 0xff]),
        (
            kind::GCP,
            vec![0xff, 0xff, 0xff, 0xff, 0xc0, 0xa8, 0x64, 0x02],
        ),
    ]
    .into_iter()
    .map(|(kind, value)| RawTlv { kind, value })
    .collect();
    assert_eq!(tlvs.aws_vpce_id(), Some("vpce-abc123"));
    assert_eq!(tlvs.azure_private_link_id(), Some(0x2100_45c1));
    assert_eq!(
        tlvs.gcp_psc_connection_id(),
        Some(18_446_744_072_646_845_442)
    );
    assert_eq!(tlvs.len(), 7);

    let mut other = Tlvs::default();
    other.push(kind::AWS, b"\x02vpce-abc".to_vec());
    other.push(kind::AZURE, vec![0x02, 1, 2, 3, 4]);
    assert_eq!(other.aws_vpce_id(), None);
    assert_eq!(other.azure_private_link_id(), None);
    assert_eq!(other.gcp_psc_connection_id(), None);
    assert_eq!(other.authority(), None);
    assert_eq!(other.crc32c(), None);
    assert_eq!(other.ssl(), None);
    assert_eq!(other.netns(), None);
}

#[test]
fn ssl_accessor() {
    let mut value = full_ssl().encode().unwrap();
    value.extend([0x99, 0x00, 0x01, 0x00]);
    value.extend([kind::SSL_CN, 0x00, 0x03]);
    value.extend(b"two");
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::SSL, value);
    assert_eq!(
        tlvs.ssl(),
        Some(full_ssl()),
        "unknown sub-TLV skipped, first CN wins"
    );

    let mut bad_utf8 = vec![1, 0, 0, 0, 0, kind::SSL_CN, 0x00, 0x01, 0xff];
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::SSL, bad_utf8.clone());
    assert_eq!(tlvs.ssl(), None);
    bad_utf8.truncate(4);
    tlvs.push(kind::SSL, bad_utf8);
    assert_eq!(tlvs.ssl(), None);
}

#[test]
fn tlvs_list_operations() {
    let mut tlvs = every_tlv();
    assert_eq!(tlvs.len(), 10);
    tlvs.retain(|tlv| tlv.kind < 0x20);
    let kinds: Vec<u8> = (&tlvs).into_iter().map(|tlv| tlv.kind).collect();
    assert_eq!(
        kinds,
        [kind::ALPN, kind::AUTHORITY, kind::NOOP, kind::UNIQUE_ID]
    );
    tlvs.retain(|_| false);
    assert!(tlvs.is_empty());
}

/// Decoded TLVs stay as wire bytes until listed; they must behave exactly like built ones.
#[test]
fn decoded_tlvs_behave_like_built_ones() {
    let built = every_tlv();
    let wire = inet_header("192.0.2.1:1", "192.0.2.2:2", built.clone())
        .to_v2(false)
        .unwrap();
    let (decoded, _) = ok(&wire);
    let mut tlvs = decoded.tlvs.clone();
    assert_eq!(tlvs, built);
    assert_eq!(tlvs.len(), built.len());
    assert_eq!(format!("{tlvs:?}"), format!("{built:?}"));
    assert!(tlvs.iter().eq(built.iter()));
    assert!((&tlvs).into_iter().eq(&built));
    let mut edited = built.clone();
    tlvs.push(0xE2, b"x".to_vec());
    edited.push(0xE2, b"x".to_vec());
    assert_eq!(tlvs, edited);
    assert_ne!(tlvs, built);

    let mut filtered = decoded.tlvs;
    filtered.retain(|tlv| tlv.kind == kind::AWS);
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered.aws_vpce_id(), Some("vpce-08d2bf15fac5001c9"));
    assert_ne!(filtered, Tlvs::default());
    filtered.retain(|_| false);
    assert_eq!(filtered, Tlvs::default());
}

/// Headers larger than the stack copy used for the CRC32c take the three-pass path.
#[test]
fn crc32c_of_large_header() {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::NOOP, vec![0x5a; 1500]);
    let wire = inet_header("192.0.2.1:1", "192.0.2.2:2", tlvs)
        .to_v2(true)
        .unwrap();
    assert!(wire.len() > 1500);
    assert!(ok(&wire).0.tlvs.crc32c().is_some());
    let mut corrupted = wire.clone();
    corrupted[100] ^= 0x80;
    assert_eq!(err(&corrupted).reason(), "crc32c_mismatch");
}
