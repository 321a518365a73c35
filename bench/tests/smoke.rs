//! Smoke test of the harness, in a second and without root: the load generator against the
//! bench app on loopback, every workload, every count checked against the app's own counters.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use trueip_bench::{
    app,
    loadgen::{self, Amount, Direction, HeaderKind, Target},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_and_app_agree_on_every_workload() {
    let listener = app::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(app::serve_listeners(vec![listener]));
    let plain = Target {
        addr,
        header: HeaderKind::None,
    };
    let v2 = Target {
        addr,
        header: HeaderKind::V2,
    };
    let short = Duration::from_millis(200);

    // Exact byte counts: the app confirms uploads, downloads are counted to EOF.
    let up = loadgen::bulk(v2, Direction::Upload, 2, Amount::Bytes(3 << 20))
        .await
        .unwrap();
    assert_eq!((up.streams, up.bytes), (2, 6 << 20));
    assert!(up.gbps > 0.0);
    let down = loadgen::bulk(plain, Direction::Download, 3, Amount::Bytes(1 << 20))
        .await
        .unwrap();
    assert_eq!(down.bytes, 3 << 20);
    // Duration mode ends by itself and moves something (how long it took is not asserted: the
    // clock of a loaded machine says nothing about the harness).
    let timed = loadgen::bulk(v2, Direction::Download, 1, Amount::Duration(short))
        .await
        .unwrap();
    assert!(timed.bytes > 0 && timed.secs > 0.0, "{timed:?}");

    let rr = loadgen::request_response(v2, 4, 64, short).await.unwrap();
    assert!(rr.requests > 0 && rr.p50_us > 0.0, "{rr:?}");
    assert!(rr.p50_us <= rr.p99_us && rr.p99_us <= rr.p999_us, "{rr:?}");
    let conns = loadgen::short_connections(plain, 2, 32, short)
        .await
        .unwrap();
    assert!(conns.conns > 0, "{conns:?}");
    let (open, idle) = loadgen::open_idle(v2, 50).await.unwrap();
    assert_eq!((open.len(), idle.open), (50, 50));
    // HTTP keep-alive, the header once per connection; bodies compared with the pattern.
    let http = loadgen::http_requests(v2, 3, 1000, short).await.unwrap();
    assert!(http.requests > 3 && http.p50_us > 0.0, "{http:?}");

    let stats = loadgen::app_stats(addr).await.unwrap();
    let expected = 2 + 3 + 1 + 4 + conns.conns + 50 + 3;
    assert_eq!(stats.connections, expected, "{stats:?}");
    assert_eq!(stats.v2_headers, 2 + 1 + 4 + 50 + 3, "{stats:?}");
    assert_eq!(stats.http_requests, http.requests, "{stats:?}");
    assert_eq!(stats.loopback_peers, expected, "{stats:?}");
    assert_eq!((stats.v1_headers, stats.errors), (0, 0), "{stats:?}");
    drop(open);
    server.abort();
}

#[tokio::test]
async fn otlp_sink_acknowledges_and_counts_exports() {
    use std::sync::{Arc, atomic::Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trueip_bench::otlp_sink::{self, SinkCounters};

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(SinkCounters::default());
    let server = tokio::spawn(otlp_sink::serve_listener(listener, Arc::clone(&counters)));

    let body = [0x0a_u8; 300];
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        let mut reply = [0u8; 512];
        let n = stream.read(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.contains("application/x-protobuf"), "{reply}");
    }
    assert_eq!(counters.requests.load(Ordering::Relaxed), 2);
    assert_eq!(counters.bytes.load(Ordering::Relaxed), 600);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trips_are_checked_and_counted() {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let server = tokio::spawn(trueip_bench::udp::echo(socket));
    let target = Target {
        addr,
        header: HeaderKind::None,
    };
    let r = trueip_bench::udp::request_response(target, 4, 512, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!((r.flows, r.size, r.lost), (4, 512, 0), "{r:?}");
    assert!(r.datagrams > 0 && r.dps > 0.0, "{r:?}");
    assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us, "{r:?}");
    server.abort();
}
