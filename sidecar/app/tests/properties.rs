//! Property: whatever valid header the load balancer sends, followed by whatever payload, cut
//! into whatever segments, the app gets a header with the same addresses and (allowed) TLVs and
//! then the payload, byte for byte (clients no load balancer relays are refused: `edge.rs`).

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proptest::prelude::*;
use support::{App, Behaviour, Harness, util};
use tokio::{io::AsyncWriteExt, runtime::Runtime};
use trueip_proxy_header::{
    self as header, Addresses, Command, Header, Limits, Tlvs, Transport, Version, kind,
};
use trueip_sidecar_app::config::Mode;

/// Endpoint pairs whose client a load balancer can relay (not unspecified, multicast,
/// broadcast or loopback, which the sidecar refuses).
fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let pairs = prop_oneof![
        (any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(a, p, b, q)| (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b)), q)
        )),
        (any::<u128>(), any::<u16>(), any::<u128>(), any::<u16>()).prop_map(|(a, p, b, q)| (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), q)
        )),
    ];
    pairs.prop_filter("a relayable client", |(client, _)| {
        trueip_sidecar_app::client::check(client.ip(), false).is_ok()
    })
}

fn tlvs() -> impl Strategy<Value = Tlvs> {
    let tlv = prop_oneof![
        "[a-z0-9.-]{1,60}".prop_map(|s| (kind::AUTHORITY, s.into_bytes())),
        proptest::collection::vec(any::<u8>(), 1..128).prop_map(|v| (kind::UNIQUE_ID, v)),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(|v| (kind::ALPN, v)),
        "vpce-[0-9a-f]{17}".prop_map(|s| (kind::AWS, [&[0x01][..], s.as_bytes()].concat())),
    ];
    proptest::collection::vec(tlv, 0..5).prop_map(|list| {
        let mut t = Tlvs::default();
        for (k, v) in list {
            t.push(k, v);
        }
        t
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_header_any_payload_any_segmentation(
        (client, destination) in endpoints(),
        tlvs in tlvs(),
        v1 in any::<bool>(),
        crc in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..8192),
        cuts in proptest::collection::vec(0usize..9000, 0..8),
    ) {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut app = App::start(Behaviour::Sink).await;
            let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV2).await;
            let sent = Header {
                version: if v1 { Version::V1 } else { Version::V2 },
                command: Command::Proxy,
                transport: Transport::Stream,
                addresses: Addresses::Inet { source: client, destination },
                tlvs: if v1 { Tlvs::default() } else { tlvs.clone() },
            };
            let wire = if v1 { sent.to_v1() } else { sent.to_v2(crc).unwrap() };
            let bytes = [wire.as_slice(), &payload].concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut c = util::connect(h.addr).await;
            util::write_fragmented(&mut c, &bytes, &cuts, Duration::from_micros(300)).await.unwrap();
            c.shutdown().await.unwrap();
            let got = app.conn().await.received;
            let (emitted, len) = header::decode(&got, &Limits::default()).unwrap().unwrap();
            assert_eq!(emitted.client(), Some(client));
            assert_eq!(emitted.original_destination(), Some(destination));
            assert_eq!(emitted.tlvs, sent.tlvs, "allowed TLVs pass in order");
            assert!(got[len..] == payload[..], "payload intact");
        });
    }
}
