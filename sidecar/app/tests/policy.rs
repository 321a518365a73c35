//! Listener policies: optional and absent headers, untrusted sources, the connection limit and
//! the graceful drain.

mod support;

use std::time::{Duration, Instant};

use support::{App, Behaviour, Harness, util, v1_header, v2_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trueip_proxy_header::Tlvs;
use trueip_sidecar_app::{
    config::{HeaderPolicy, Mode, UntrustedPolicy},
    metrics::RestoreOutcome,
};

#[tokio::test]
async fn optional_serves_headerless_clients_intact() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.header = HeaderPolicy::Optional).await;
    let probe = b"GET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n";
    let mut c = util::connect(h.addr).await;
    c.write_all(probe).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(app.conn().await.received, probe);
    // A header is still honoured on the same listener.
    let mut c = util::connect(h.addr).await;
    c.write_all(&[v2_header(Tlvs::default(), false).as_slice(), b"x"].concat())
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(app.conn().await.received, b"x");
    let s = h.settled(2).await;
    assert_eq!(s.restored(RestoreOutcome::NoClient), 1);
    assert_eq!(s.restored(RestoreOutcome::Restored), 1);
}

#[tokio::test]
async fn optional_does_not_hang_a_server_that_speaks_first() {
    let app = App::start(Behaviour::Download(18)).await;
    let h = Harness::start(app.addr(), |l| {
        l.header = HeaderPolicy::Optional;
        l.detect_timeout = Duration::from_millis(200);
    })
    .await;
    let started = Instant::now();
    let mut c = util::connect(h.addr).await;
    let mut greeting = vec![0; 18];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting))
        .await
        .expect("the greeting arrives after the detection timeout")
        .unwrap();
    assert_eq!(greeting, util::pattern(18));
    assert!(started.elapsed() >= Duration::from_millis(200));
    h.logs
        .wait_for(&["serving without a header", "Silent"])
        .await;
}

#[tokio::test]
async fn header_off_forwards_everything_untouched() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.header = HeaderPolicy::Off;
        l.trusted_sources.clear();
    })
    .await;
    let bytes = [v1_header().as_slice(), b"raw"].concat();
    let mut c = util::connect(h.addr).await;
    c.write_all(&bytes).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(app.conn().await.received, bytes);
}

#[tokio::test]
async fn untrusted_header_is_rejected() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.mode = Mode::ProxyV1;
        l.trusted_sources = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut c = util::connect(h.addr).await;
    c.write_all(&[v2_header(Tlvs::default(), false).as_slice(), b"secret"].concat())
        .await
        .unwrap();
    assert!(util::closed_without_data(&mut c, Duration::from_secs(5)).await);
    let line = h
        .logs
        .wait_for(&["connection rejected", "reason=\"untrusted_source\""])
        .await;
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    app.assert_no_conn(Duration::from_millis(300)).await;
    assert_eq!(h.settled(1).await.rejected("untrusted_source"), 1);
}

#[tokio::test]
async fn untrusted_header_passthrough_is_delivered_unhonoured() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| {
        l.mode = Mode::ProxyV1;
        l.trusted_sources = vec!["10.0.0.0/8".parse().unwrap()];
        l.untrusted = UntrustedPolicy::Passthrough;
    })
    .await;
    let spoofed = [v1_header().as_slice(), b"data"].concat();
    let mut c = util::connect(h.addr).await;
    c.write_all(&spoofed).await.unwrap();
    c.shutdown().await.unwrap();
    let got = app.conn().await;
    let text = String::from_utf8_lossy(&got.received).into_owned();
    let (ours, theirs) = text.split_once("\r\n").unwrap();
    assert!(
        ours.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "the app is told the real peer: {ours}"
    );
    assert_eq!(
        theirs.as_bytes(),
        spoofed.as_slice(),
        "the spoofed header stays in the payload"
    );
    assert_eq!(h.settled(1).await.restored(RestoreOutcome::Passthrough), 1);
}

#[tokio::test]
async fn connection_limit_queues_instead_of_dropping() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |l| l.max_connections = 1.try_into().unwrap()).await;
    let mut first = util::connect(h.addr).await;
    first
        .write_all(&[v1_header().as_slice(), b"one"].concat())
        .await
        .unwrap();
    let mut second = util::connect(h.addr).await;
    second
        .write_all(&[v1_header().as_slice(), b"two"].concat())
        .await
        .unwrap();
    second.shutdown().await.unwrap();
    h.logs.wait_for(&["connection limit reached"]).await;
    app.assert_no_conn(Duration::from_millis(300)).await;
    first.shutdown().await.unwrap();
    let mut got: Vec<Vec<u8>> = vec![app.conn().await.received, app.conn().await.received];
    got.sort();
    assert_eq!(
        got,
        [b"one".to_vec(), b"two".to_vec()],
        "both served, in turn"
    );
}

#[tokio::test]
async fn shutdown_drains_open_connections() {
    let mut app = App::start(Behaviour::Reply(b"bye".to_vec())).await;
    let mut h = Harness::start(app.addr(), |_| {}).await;
    let mut open = util::connect(h.addr).await;
    open.write_all(&[v1_header().as_slice(), b"in flight"].concat())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = h.addr;
    let finish = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no new connections while draining"
        );
        open.shutdown().await.unwrap();
        util::read_all(&mut open).await.unwrap()
    };
    let (cut, reply) = tokio::join!(h.shutdown(), finish);
    assert_eq!(reply, b"bye");
    assert_eq!(
        cut, 0,
        "the open connection finished within the drain deadline"
    );
    assert_eq!(app.conn().await.received, b"in flight");
}

#[tokio::test]
async fn tcp_health_check_connect_and_close_is_counted_quietly() {
    let mut app = App::start(Behaviour::Sink).await;
    let h = Harness::start(app.addr(), |_| {}).await;
    drop(util::connect(h.addr).await);
    assert_eq!(h.settled(1).await.rejected("closed_before_header"), 1);
    h.logs
        .wait_for(&["DEBUG", "connection closed before any byte"])
        .await;
    assert!(!h.logs.text().contains("WARN"), "{}", h.logs.text());
    app.assert_no_conn(Duration::from_millis(100)).await;
}
