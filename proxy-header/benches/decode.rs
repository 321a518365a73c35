//! Decode cost per header shape (README.md has the numbers and what each row is).
//!
//! Run: `cargo bench -p trueip-proxy-header --bench decode -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use trueip_proxy_header::{
    Addresses, Command, Header, Limits, Ssl, Tlvs, Transport, Version, decode, kind,
};

/// Bytes a client sends after the header; decode must not look at them.
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn inet(source: &str, destination: &str, tlvs: Tlvs) -> Header {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: source.parse().expect("address"),
            destination: destination.parse().expect("address"),
        },
        tlvs,
    }
}

/// What HAProxy sends with `proxy-v2-options ssl,authority,unique-id,crc32c` and ALPN.
fn haproxy_tlvs() -> Tlvs {
    let ssl = Ssl {
        client: Ssl::CLIENT_SSL,
        verify: 0,
        version: Some("TLSv1.3".into()),
        cn: None,
        cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        sig_alg: None,
        key_alg: None,
    };
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::ALPN, b"h2".to_vec());
    tlvs.push(kind::AUTHORITY, b"example.com".to_vec());
    tlvs.push(
        kind::UNIQUE_ID,
        b"0A1B2C3D:01BB_0A000001:C3A2_65F0A1B2_0001:0042".to_vec(),
    );
    tlvs.push(kind::SSL, ssl.encode().expect("fits"));
    tlvs
}

/// An AWS NLB header: CRC32c, VPC endpoint id, 36 bytes of NOOP padding.
fn aws_tlvs() -> Tlvs {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AWS, b"\x01vpce-08d2bf15fac5001c9".to_vec());
    tlvs.push(kind::NOOP, vec![0; 36]);
    tlvs
}

fn with_payload(header: &[u8]) -> Vec<u8> {
    [header, PAYLOAD].concat()
}

fn benches(c: &mut Criterion) {
    let limits = Limits::default();
    let v4 = inet("203.0.113.7:51234", "198.51.100.1:443", Tlvs::default());
    let v6 = inet(
        "[2001:db8::7]:51234",
        "[2001:db8:ffff::1]:443",
        Tlvs::default(),
    );
    let haproxy = inet("203.0.113.7:51234", "198.51.100.1:443", haproxy_tlvs());
    let aws = inet("203.0.113.7:51234", "198.51.100.1:443", aws_tlvs());
    let inputs = [
        ("v1_tcp4", with_payload(&v4.to_v1())),
        ("v1_tcp6", with_payload(&v6.to_v1())),
        ("v2_tcp4", with_payload(&v4.to_v2(false).expect("fits"))),
        ("v2_tcp6", with_payload(&v6.to_v2(false).expect("fits"))),
        (
            "v2_aws_crc32c",
            with_payload(&aws.to_v2(true).expect("fits")),
        ),
        (
            "v2_tlvs_crc32c",
            with_payload(&haproxy.to_v2(true).expect("fits")),
        ),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, wire) in &inputs {
        group.bench_function(*name, |b| {
            b.iter(|| decode(black_box(wire), black_box(&limits)));
        });
    }
    group.finish();

    // How much of v2_tlvs_crc32c is ppp's: its fixed-part parse plus a walk over the TLVs.
    let (_, tlvs_wire) = &inputs[5];
    c.bench_function("ppp/v2_tlvs_walk", |b| {
        b.iter(|| {
            let header = ppp::v2::Header::try_from(black_box(tlvs_wire.as_slice()));
            header.map(|header| header.tlvs().count())
        });
    });
    let header_only = &tlvs_wire[..tlvs_wire.len() - PAYLOAD.len()];
    c.bench_function("crc32c/v2_tlvs_crc32c", |b| {
        b.iter(|| crc32c::crc32c(black_box(header_only)));
    });
    c.bench_function("encode/v2_tlvs_crc32c", |b| {
        b.iter(|| black_box(&haproxy).to_v2(true));
    });
}

criterion_group!(decode_benches, benches);
criterion_main!(decode_benches);
