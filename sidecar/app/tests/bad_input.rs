//! The bad-input table: every malformed or hostile start of a connection is closed, logged with
//! its reason and counted, and the app never receives a byte of it.

mod support;

use std::time::Duration;

use support::{App, Behaviour, Harness, util, v1_header, v2_header};
use tokio::io::AsyncWriteExt;
use trueip_proxy_header::{self as header, Tlvs, kind};

/// Sends `bytes` (then keeps the connection open) and asserts the rejection.
async fn rejected(bytes: &[u8], reason: &str) {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(bytes).await.unwrap();
    assert!(
        util::closed_without_data(&mut c, Duration::from_secs(5)).await,
        "{reason}: the connection is closed"
    );
    h.logs
        .wait_for(&[
            "connection rejected",
            &format!("reason=\"{reason}\""),
            "peer=127.0.0.1",
        ])
        .await;
    app.assert_no_conn(Duration::from_millis(200)).await;
    assert_eq!(h.settled(1).await.rejected(reason), 1, "{reason} counted");
}

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap().to_be_bytes();
    [&header::V2_SIGNATURE[..], &[ver_cmd, fam], &len, body].concat()
}

const V4_ADDRS: [u8; 12] = [203, 0, 113, 7, 198, 51, 100, 1, 0xC8, 0x32, 0x01, 0xBB];

#[tokio::test]
async fn garbage_on_a_required_listener() {
    rejected(b"GET / HTTP/1.1\r\n\r\n", "missing_header").await;
}

#[tokio::test]
async fn v1_longer_than_107_bytes() {
    // UNKNOWN may carry anything up to the CRLF, so only the length can make it invalid.
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(120, b'x');
    rejected(&line, "v1_too_long").await;
}

#[tokio::test]
async fn v1_bad_address_port_and_family() {
    rejected(
        b"PROXY TCP4 203.0.113.999 198.51.100.1 51234 443\r\n",
        "v1_bad_address",
    )
    .await;
    rejected(
        b"PROXY TCP4 203.0.113.7 198.51.100.1 65536 443\r\n",
        "v1_bad_port",
    )
    .await;
    rejected(
        b"PROXY TCP5 203.0.113.7 198.51.100.1 51234 443\r\n",
        "v1_bad_family",
    )
    .await;
    rejected(
        b"PROXY TCP6 203.0.113.7 198.51.100.1 51234 443\r\n",
        "v1_bad_address",
    )
    .await;
}

#[tokio::test]
async fn v2_bad_version_command_family() {
    rejected(&v2(0x11, 0x11, &V4_ADDRS), "v2_bad_version").await;
    rejected(&v2(0x2F, 0x11, &V4_ADDRS), "v2_bad_command").await;
    rejected(&v2(0x21, 0x41, &V4_ADDRS), "v2_bad_family").await;
}

#[tokio::test]
async fn v2_length_over_the_cap() {
    // Rejected from the 16 fixed bytes alone: the sidecar does not wait for 60 KB.
    let mut hdr = header::V2_SIGNATURE.to_vec();
    hdr.extend_from_slice(&[0x21, 0x11, 0xEA, 0x60]);
    rejected(&hdr, "v2_too_long").await;
}

#[tokio::test]
async fn v2_truncated_then_eof() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let full = v2_header(Tlvs::default(), false);
    let mut c = util::connect(h.addr).await;
    c.write_all(&full[..full.len() - 3]).await.unwrap();
    c.shutdown().await.unwrap();
    assert!(util::closed_without_data(&mut c, Duration::from_secs(5)).await);
    h.logs.wait_for(&["reason=\"truncated\""]).await;
    app.assert_no_conn(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn crc32c_mismatch() {
    let mut hdr = v2_header(Tlvs::default(), true);
    let last = hdr.len() - 1;
    hdr[last] ^= 0xFF;
    rejected(&hdr, "crc32c_mismatch").await;
}

#[tokio::test]
async fn tlv_running_past_the_header() {
    let body = [&V4_ADDRS[..], &[kind::AUTHORITY, 0x00, 0x20, b'a', b'b']].concat();
    rejected(&v2(0x21, 0x11, &body), "v2_tlv_overrun").await;
}

#[tokio::test]
async fn header_one_byte_a_second_is_cut_at_the_timeout() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.header_timeout = Duration::from_millis(1500);
    })
    .await;
    let hdr = v1_header();
    let mut c = util::connect(h.addr).await;
    let dribble = async {
        for b in &hdr {
            if c.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), dribble).await;
    h.logs.wait_for(&["reason=\"header_timeout\""]).await;
    app.assert_no_conn(Duration::from_millis(200)).await;
    assert_eq!(h.settled(1).await.rejected("header_timeout"), 1);
}

#[tokio::test]
async fn app_down_gives_the_client_a_clean_close() {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start(down, |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&[v1_header().as_slice(), b"hello?"].concat())
        .await
        .unwrap();
    assert!(util::closed_without_data(&mut c, Duration::from_secs(5)).await);
    let line = h.logs.wait_for(&["reason=\"upstream_connect\""]).await;
    assert!(
        line.contains(&down.to_string()),
        "the log names the app: {line}"
    );
    let s = h.settled(1).await;
    assert_eq!((s.rejected("upstream_connect"), s.upstream_errors), (1, 1));
}

#[tokio::test]
async fn app_reset_mid_stream_reaches_the_client() {
    let mut app = App::start(Behaviour::ResetAfter(1000)).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&v1_header()).await.unwrap();
    let data = util::pattern(1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(5), c.write_all(&data)).await;
    let end = util::read_all(&mut c).await;
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            || matches!(&end, Ok(rest) if rest.is_empty()),
        "the client sees the connection end, without a hang: {end:?}"
    );
    assert_eq!(app.conn().await.received, data[..1000]);
    h.logs.wait_for(&["connection broken"]).await;
    assert_eq!(h.settled(1).await.upstream_errors, 1);
}
