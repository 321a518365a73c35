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
    // Duration mode ends by itself and moves something.
    let timed = loadgen::bulk(v2, Direction::Download, 1, Amount::Duration(short))
        .await
        .unwrap();
    assert!(timed.bytes > 0 && timed.secs >= 0.2, "{timed:?}");

    let rr = loadgen::request_response(v2, 4, 64, short).await.unwrap();
    assert!(rr.requests > 0 && rr.p50_us > 0.0, "{rr:?}");
    assert!(rr.p50_us <= rr.p99_us && rr.p99_us <= rr.p999_us, "{rr:?}");
    let conns = loadgen::short_connections(plain, 2, 32, short)
        .await
        .unwrap();
    assert!(conns.conns > 0, "{conns:?}");
    let (open, idle) = loadgen::open_idle(v2, 50).await.unwrap();
    assert_eq!((open.len(), idle.open), (50, 50));

    let stats = loadgen::app_stats(addr).await.unwrap();
    let expected = 2 + 3 + 1 + 4 + conns.conns + 50;
    assert_eq!(stats.connections, expected, "{stats:?}");
    assert_eq!(stats.v2_headers, 2 + 1 + 4 + 50, "{stats:?}");
    assert_eq!(stats.loopback_peers, expected, "{stats:?}");
    assert_eq!((stats.v1_headers, stats.errors), (0, 0), "{stats:?}");
    drop(open);
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
