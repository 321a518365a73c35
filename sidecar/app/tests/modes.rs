//! The restore modes end to end over loopback: what the app receives, byte for byte.

mod support;

use std::time::Duration;

use support::{App, Behaviour, CLIENT, DESTINATION, Harness, util, v1_header, v2_header};
use tokio::io::AsyncWriteExt;
use trueip_proxy_header::{self as header, Command, Limits, Tlvs, kind};
use trueip_sidecar_app::{config::Mode, metrics::RestoreOutcome};

fn tlvs() -> Tlvs {
    let mut t = Tlvs::default();
    t.push(kind::AUTHORITY, b"shop.example".to_vec());
    t.push(kind::UNIQUE_ID, b"req-42".to_vec());
    t.push(0xF0, b"private-to-the-lb".to_vec());
    t.push(kind::AWS, [&[0x01][..], b"vpce-0123456789abcdef0"].concat());
    t
}

/// Sends `header` + `payload` in one write, half-closes, and returns what the app got.
async fn one_shot(h: &Harness, app: &mut App, header: &[u8], payload: &[u8]) -> util::AppConn {
    let mut c = util::connect(h.addr).await;
    c.write_all(&[header, payload].concat()).await.unwrap();
    c.shutdown().await.unwrap();
    let _ = util::read_all(&mut c).await;
    app.conn().await
}

#[tokio::test]
async fn none_strips_v2_and_v1_headers() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let payload = b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n";
    for hdr in [v2_header(tlvs(), true), v1_header()] {
        let got = one_shot(&h, &mut app, &hdr, payload).await;
        assert_eq!(got.received, payload, "the app gets the payload only");
        assert!(got.peer.ip().is_loopback());
    }
    let s = h.settled(2).await;
    assert_eq!(s.restored(RestoreOutcome::Restored), 2);
    assert_eq!(s.bytes_to_app, 2 * payload.len() as u64);
}

#[tokio::test]
async fn proxy_v1_reemits_a_clean_line() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV1).await;
    let got = one_shot(&h, &mut app, &v2_header(tlvs(), true), b"hello").await;
    assert_eq!(
        String::from_utf8_lossy(&got.received),
        "PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nhello"
    );
}

#[tokio::test]
async fn proxy_v2_reemits_allowed_tlvs_and_a_fresh_crc() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.mode = Mode::ProxyV2;
        l.crc32c = true;
    })
    .await;
    let got = one_shot(&h, &mut app, &v2_header(tlvs(), false), b"payload").await;
    let (emitted, len) = header::decode(&got.received, &Limits::default())
        .expect("the re-emitted header is valid, CRC32c included")
        .expect("complete");
    assert_eq!(&got.received[len..], b"payload");
    assert_eq!(emitted.command, Command::Proxy);
    assert_eq!(emitted.client(), Some(CLIENT.parse().unwrap()));
    assert_eq!(
        emitted.original_destination(),
        Some(DESTINATION.parse().unwrap())
    );
    let kinds: Vec<u8> = emitted.tlvs.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        [kind::AUTHORITY, kind::UNIQUE_ID, kind::AWS, kind::CRC32C],
        "the private 0xF0 TLV is dropped, a fresh CRC32c added"
    );
    assert_eq!(emitted.tlvs.authority(), Some("shop.example"));
    assert_eq!(emitted.tlvs.aws_vpce_id(), Some("vpce-0123456789abcdef0"));
}

#[tokio::test]
async fn v1_in_v2_out_and_ipv6() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV2).await;
    let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8443\r\n";
    let got = one_shot(&h, &mut app, v1, b"x").await;
    let (emitted, len) = header::decode(&got.received, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        emitted.client(),
        Some("[2001:db8::7]:40000".parse().unwrap())
    );
    assert_eq!(
        emitted.original_destination(),
        Some("[2001:db8::1]:8443".parse().unwrap())
    );
    assert_eq!(&got.received[len..], b"x");
}

#[tokio::test]
async fn local_and_unspec_use_the_real_connection() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV1).await;
    // v2 LOCAL with a declared length covering IPv4 addresses and a TLV: all of it skipped.
    let mut local = header::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x11, 0x00, 12 + 5]);
    local.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x1F, 0x90, 0x00, 0x50]);
    local.extend_from_slice(&[kind::NOOP, 0x00, 0x02, 0, 0]);
    let unspec = [&header::V2_SIGNATURE[..], &[0x21, 0x00, 0x00, 0x00]].concat();
    // LOCAL with 100 bytes that are no TLVs: the spec says to discard the block and serve.
    let mut opaque = header::V2_SIGNATURE.to_vec();
    opaque.extend_from_slice(&[0x20, 0x00, 0x00, 100]);
    opaque.extend_from_slice(&[0xAB; 100]);
    // PROXY with IPv4 addresses but an UNSPEC transport: the addresses must be ignored.
    let mut inet_unspec = header::V2_SIGNATURE.to_vec();
    inet_unspec.extend_from_slice(&[0x21, 0x10, 0x00, 12]);
    inet_unspec.extend_from_slice(&[203, 0, 113, 7, 198, 51, 100, 1, 0xC8, 0x22, 0x01, 0xBB]);
    for hdr in [
        local,
        unspec,
        b"PROXY UNKNOWN\r\n".to_vec(),
        opaque,
        inet_unspec,
    ] {
        let got = one_shot(&h, &mut app, &hdr, b"ping").await;
        let text = String::from_utf8_lossy(&got.received).into_owned();
        let port = h.addr.port();
        assert!(
            text.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ")
                && text.ends_with(&format!(" {port}\r\nping")),
            "the app is told the real peer and local address: {text:?}"
        );
    }
    let s = h.settled(5).await;
    assert_eq!(s.restored(RestoreOutcome::NoClient), 5);
}

#[tokio::test]
async fn header_split_into_single_bytes_with_payload_glued_to_the_last() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV1).await;
    for hdr in [v2_header(tlvs(), true), v1_header()] {
        let bytes = [hdr.as_slice(), b"payload after"].concat();
        let cuts: Vec<usize> = (1..hdr.len()).collect();
        let mut c = util::connect(h.addr).await;
        util::write_fragmented(&mut c, &bytes, &cuts, Duration::from_millis(1))
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        let got = app.conn().await;
        assert_eq!(
            String::from_utf8_lossy(&got.received),
            "PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\npayload after"
        );
    }
}

#[tokio::test]
async fn loxilb_shape_header_glued_to_data() {
    // LoxiLB's datapath inserts exactly this 28-byte v2 TCP4 header, no TLVs, into the
    // client's first data segment.
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.mode = Mode::ProxyV1).await;
    let mut hdr = header::V2_SIGNATURE.to_vec();
    hdr.extend_from_slice(&[
        0x21, 0x11, 0x00, 0x0C, 203, 0, 113, 7, 10, 0, 0, 1, 0xC8, 0x32, 0x1F, 0x90,
    ]);
    assert_eq!(hdr.len(), 28);
    let got = one_shot(&h, &mut app, &hdr, b"SSH-2.0-client\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&got.received),
        "PROXY TCP4 203.0.113.7 10.0.0.1 51250 8080\r\nSSH-2.0-client\r\n"
    );
}

#[tokio::test]
async fn large_payloads_both_ways_with_half_close() {
    const SIZE: usize = 64 << 20;
    let mut app = App::start(Behaviour::Echo).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let c = util::connect(h.addr).await;
    let (mut r, mut w) = c.into_split();
    let data = util::pattern(SIZE);
    let send = async {
        w.write_all(&v2_header(Tlvs::default(), false)).await?;
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let recv = async {
        let mut out = Vec::with_capacity(SIZE);
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out)
            .await
            .map(|_| out)
    };
    let (sent, echoed) = tokio::join!(send, recv);
    sent.unwrap();
    let echoed = echoed.unwrap();
    assert!(
        echoed == data,
        "64 MiB echoed intact ({} bytes back)",
        echoed.len()
    );
    let got = app.conn().await;
    assert!(
        got.received == data && got.clean_eof,
        "the app got 64 MiB intact and the FIN"
    );
    let s = h.settled(1).await;
    assert_eq!(
        (s.bytes_to_app, s.bytes_to_client),
        (SIZE as u64, SIZE as u64)
    );
}

#[tokio::test]
async fn download_and_request_reply_after_half_close() {
    const SIZE: usize = 64 << 20;
    let mut app = App::start(Behaviour::Download(SIZE)).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&v2_header(Tlvs::default(), false))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    assert!(util::read_all(&mut c).await.unwrap() == util::pattern(SIZE));
    assert!(app.conn().await.clean_eof);

    let mut app = App::start(Behaviour::Reply(b"answer after your FIN".to_vec())).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&[v1_header().as_slice(), b"question"].concat())
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(
        util::read_all(&mut c).await.unwrap(),
        b"answer after your FIN"
    );
    assert_eq!(app.conn().await.received, b"question");
}

#[tokio::test]
async fn the_app_finishes_first_and_the_client_goes_on_sending() {
    // The app's FIN is passed on by a shutdown; the client's, which comes last, by the
    // sidecar closing both sockets: the app must still get every byte and a clean EOF.
    const SIZE: usize = 4 << 20;
    let mut app = App::start(Behaviour::Download(1024)).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&v2_header(Tlvs::default(), false))
        .await
        .unwrap();
    assert!(util::read_all(&mut c).await.unwrap() == util::pattern(1024));
    let data = util::pattern(SIZE);
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
    let got = app.conn().await;
    assert!(
        got.received == data && got.clean_eof,
        "the app got {} of {SIZE} bytes after its own FIN, clean EOF: {}",
        got.received.len(),
        got.clean_eof
    );
    let s = h.settled(1).await;
    assert_eq!((s.bytes_to_app, s.bytes_to_client), (SIZE as u64, 1024));
}

/// Writes `msg`, reads as many bytes back, and records both.
async fn round(
    c: &mut tokio::net::TcpStream,
    msg: Vec<u8>,
    sent: &mut Vec<u8>,
    echoed: &mut Vec<u8>,
) {
    c.write_all(&msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    tokio::io::AsyncReadExt::read_exact(c, &mut back)
        .await
        .unwrap();
    sent.extend_from_slice(&msg);
    echoed.extend_from_slice(&back);
}

#[tokio::test]
async fn small_messages_then_bulk_then_small_again_on_one_connection() {
    // The relay copies small messages and switches a direction to splice(2) once a read fills
    // its buffer; neither the switch nor the ping-pong may lose, duplicate or reorder a byte.
    let mut app = App::start(Behaviour::Echo).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&v1_header()).await.unwrap();
    let (mut sent, mut echoed) = (Vec::new(), Vec::new());
    for i in 0..500u32 {
        round(
            &mut c,
            format!("ping {i}\n").into_bytes(),
            &mut sent,
            &mut echoed,
        )
        .await;
    }
    round(&mut c, util::pattern(1 << 20), &mut sent, &mut echoed).await;
    for i in 0..500u32 {
        round(
            &mut c,
            format!("pong {i}\n").into_bytes(),
            &mut sent,
            &mut echoed,
        )
        .await;
    }
    c.shutdown().await.unwrap();
    assert!(util::read_all(&mut c).await.unwrap().is_empty());
    assert!(echoed == sent, "every byte back, in order");
    let got = app.conn().await;
    assert!(got.received == sent && got.clean_eof);
}
