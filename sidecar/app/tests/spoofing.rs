//! The spoofing table: nothing a client can put in the stream changes the address the app is
//! told. Only the first header, from a trusted source, counts; everything after it is payload,
//! delivered verbatim and never interpreted.

mod support;

use std::time::Duration;

use support::{App, Behaviour, Harness, util, v1_header, v2_header};
use tokio::io::AsyncWriteExt;
use trueip_proxy_header::Tlvs;
use trueip_sidecar_app::config::{HeaderPolicy, Mode};

const TOLD: &str = "PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n";
const SPOOF_V1: &[u8] = b"PROXY TCP4 6.6.6.6 198.51.100.1 666 443\r\n";

/// Sends `stream` through a proxy-v1 sidecar and returns what the app received after the
/// header trueip wrote, asserting that header names the real client.
async fn app_view(stream: &[u8]) -> Vec<u8> {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV1).await;
    let mut c = util::connect(h.addr).await;
    util::write_fragmented(&mut c, stream, &[7, 40], Duration::from_millis(2))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let got = app.conn().await.received;
    let rest = got.strip_prefix(TOLD.as_bytes()).unwrap_or_else(|| {
        panic!(
            "the app is told the real client: {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    rest.to_vec()
}

#[tokio::test]
async fn a_header_inside_the_payload_is_payload() {
    let inner = [b"GET / HTTP/1.1\r\n\r\n".as_slice(), SPOOF_V1].concat();
    let stream = [v2_header(Tlvs::default(), false), inner.clone()].concat();
    assert_eq!(app_view(&stream).await, inner);
}

#[tokio::test]
async fn a_second_header_is_payload() {
    for second in [v2_header(Tlvs::default(), true), SPOOF_V1.to_vec()] {
        let stream = [v1_header(), second.clone(), b"data".to_vec()].concat();
        assert_eq!(app_view(&stream).await, [second, b"data".to_vec()].concat());
    }
}

#[tokio::test]
async fn v1_inside_v2_is_payload() {
    let stream = [v2_header(Tlvs::default(), false), SPOOF_V1.to_vec()].concat();
    assert_eq!(app_view(&stream).await, SPOOF_V1);
}

#[tokio::test]
async fn a_fake_forwarded_header_does_not_change_the_address() {
    let request = b"GET / HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n";
    let stream = [v1_header().as_slice(), request].concat();
    assert_eq!(app_view(&stream).await, request);
}

#[tokio::test]
async fn on_an_optional_listener_a_late_header_is_still_payload() {
    // Headerless first bytes decide "no header"; a header later in the stream is not honoured.
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.mode = Mode::ProxyV1;
        l.header = HeaderPolicy::Optional;
    })
    .await;
    let stream = [b"HELO x\r\n".as_slice(), SPOOF_V1].concat();
    let mut c = util::connect(h.addr).await;
    c.write_all(&stream).await.unwrap();
    c.shutdown().await.unwrap();
    let got = String::from_utf8_lossy(&app.conn().await.received).into_owned();
    let (told, rest) = got.split_once("\r\n").unwrap();
    assert!(
        told.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{told}"
    );
    assert_eq!(rest.as_bytes(), stream.as_slice());
}
