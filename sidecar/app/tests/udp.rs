//! UDP listeners on loopback: a fake load balancer sends datagrams behind v2 headers, a UDP echo
//! app answers; what the app received, what came back to the load balancer, and the counters.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::UdpSocket, sync::oneshot, task::JoinHandle};
use trueip_proxy_header::{
    Addresses, Command, Header, Limits, Tlvs, Transport, Version, decode_datagram,
};
use trueip_sidecar_app::{
    Config, Sidecar,
    config::{DatagramHeader, ListenerConfig, Mode, Protocol},
    udp::{FlowClosed, UdpMetrics, UdpSnapshot},
};

const FRONTEND: &str = "198.51.100.1:53";
const FRONTEND6: &str = "[2001:db8::1]:53";

/// The load balancer frontend a client of that family sent to.
fn frontend(client: SocketAddr) -> SocketAddr {
    sa(if client.is_ipv4() {
        FRONTEND
    } else {
        FRONTEND6
    })
}
const WAIT: Duration = Duration::from_secs(5);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn header(client: SocketAddr, transport: Transport) -> Vec<u8> {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport,
        addresses: Addresses::Inet {
            source: client,
            destination: frontend(client),
        },
        tlvs: Tlvs::default(),
    }
    .to_v2(true)
    .unwrap()
}

fn datagram(client: SocketAddr, payload: &[u8]) -> Vec<u8> {
    [header(client, Transport::Datagram), payload.to_vec()].concat()
}

/// An app on loopback that records each datagram (source, bytes) and echoes it back.
struct EchoApp {
    addr: SocketAddr,
    received: tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>,
    _task: JoinHandle<()>,
}

impl EchoApp {
    async fn start(bind: &str) -> Self {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (len, from) = socket.recv_from(&mut buf).await.unwrap();
                let _ = tx.send((from, buf[..len].to_vec()));
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Self {
            addr,
            received,
            _task: task,
        }
    }

    async fn next(&mut self) -> (SocketAddr, Vec<u8>) {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("the app got a datagram")
            .unwrap()
    }

    fn nothing_more(&mut self) {
        assert!(self.received.try_recv().is_err(), "the app got more");
    }
}

/// A running sidecar with one UDP listener.
struct Udp {
    addr: SocketAddr,
    metrics: Arc<UdpMetrics>,
    _stop: oneshot::Sender<()>,
}

impl Udp {
    async fn start(upstream: SocketAddr, tune: impl FnOnce(&mut ListenerConfig)) -> Self {
        let listen = if upstream.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let mut l = ListenerConfig::new(sa(listen), upstream);
        l.protocol = Protocol::Udp;
        l.trusted_sources = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        tune(&mut l);
        let config = Config::single(l);
        config.validate().expect("valid");
        let sidecar = Sidecar::bind(&config).expect("binds");
        let addr = sidecar.local_addrs()[0].1;
        let metrics = sidecar.udp_metrics()[0].1.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            _stop: stop,
        }
    }

    fn snapshot(&self) -> UdpSnapshot {
        self.metrics.snapshot()
    }

    async fn until(&self, what: &str, done: impl Fn(&UdpSnapshot) -> bool) -> UdpSnapshot {
        for _ in 0..500 {
            let s = self.snapshot();
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: {:?}", self.snapshot());
    }
}

async fn lb(bind: &str) -> UdpSocket {
    UdpSocket::bind(bind).await.unwrap()
}

async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let len = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test]
async fn none_mode_strips_headers_and_replies_carry_a_swapped_header() {
    for (app_bind, lb_bind, client) in [
        ("127.0.0.1:0", "127.0.0.1:0", "203.0.113.7:5353"),
        ("[::1]:0", "[::1]:0", "[2001:db8:c::7]:5353"),
    ] {
        let mut app = EchoApp::start(app_bind).await;
        let sidecar = Udp::start(app.addr, |l| l.reply_header = true).await;
        let lb = lb(lb_bind).await;
        let client = sa(client);
        // Up to 64 KiB, in order.
        let sizes = [0usize, 1, 1400, 65_000];
        for (i, &size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
            lb.send_to(&datagram(client, &payload), sidecar.addr)
                .await
                .unwrap();
            let (from, got) = app.next().await;
            assert_eq!(got, payload, "size {size}");
            assert!(from.ip().is_loopback());
            let reply = recv(&lb).await;
            let (h, at) = decode_datagram(&reply, &Limits::default()).unwrap();
            assert_eq!(h.transport, Transport::Datagram);
            assert_eq!(h.client(), Some(frontend(client)));
            assert_eq!(h.original_destination(), Some(client));
            assert_eq!(&reply[at..], &payload[..]);
        }
        let s = sidecar
            .until("replies counted", |s| s.to_client == sizes.len() as u64)
            .await;
        assert_eq!(s.to_app, sizes.len() as u64);
        assert_eq!(s.opened_total(), 1, "one client, one flow: {s:?}");
        assert_eq!(s.active, 1);
    }
}

#[tokio::test]
async fn each_client_gets_its_own_flow_and_bare_replies() {
    let mut app = EchoApp::start("127.0.0.1:0").await;
    let sidecar = Udp::start(app.addr, |_| {}).await;
    let lb = lb("127.0.0.1:0").await;
    let mut sources = Vec::new();
    for port in [1000, 1001, 1000] {
        let client = SocketAddr::new("203.0.113.7".parse().unwrap(), port);
        lb.send_to(&datagram(client, b"hi"), sidecar.addr)
            .await
            .unwrap();
        sources.push(app.next().await.0);
        assert_eq!(recv(&lb).await, b"hi", "bare reply");
    }
    assert_ne!(sources[0], sources[1]);
    assert_eq!(sources[0], sources[2], "same client, same flow socket");
    assert_eq!(sidecar.snapshot().opened_total(), 2);
}

#[tokio::test]
async fn proxy_v2_mode_gives_the_app_a_clean_udp_header() {
    let mut app = EchoApp::start("127.0.0.1:0").await;
    let sidecar = Udp::start(app.addr, |l| {
        l.mode = Mode::ProxyV2;
        l.crc32c = true;
    })
    .await;
    let lb = lb("127.0.0.1:0").await;
    let client = sa("203.0.113.7:4444");
    for payload in [&b"one"[..], b"two"] {
        lb.send_to(&datagram(client, payload), sidecar.addr)
            .await
            .unwrap();
        let (_, got) = app.next().await;
        let (h, at) = decode_datagram(&got, &Limits::default()).unwrap();
        assert_eq!(h.client(), Some(client));
        assert_eq!(h.transport, Transport::Datagram);
        assert!(h.tlvs.crc32c().is_some());
        assert_eq!(&got[at..], payload);
    }
}

#[tokio::test]
async fn bad_datagrams_are_dropped_by_reason_and_never_forwarded() {
    let mut app = EchoApp::start("127.0.0.1:0").await;
    let sidecar = Udp::start(app.addr, |l| {
        l.trusted_sources = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let lb = lb("127.0.0.1:0").await;
    let client = sa("203.0.113.7:4444");
    let good = datagram(client, b"good");
    let mut bad_crc = good.clone();
    bad_crc[header(client, Transport::Datagram).len() - 1] ^= 1;
    let cases = [
        ("truncated", good[..30].to_vec()),
        ("crc32c_mismatch", bad_crc),
        (
            "stream_in_datagram",
            [header(client, Transport::Stream), b"x".to_vec()].concat(),
        ),
        (
            "v1_in_datagram",
            b"PROXY TCP4 203.0.113.7 198.51.100.1 1 2\r\nx".to_vec(),
        ),
        ("missing_header", b"plain".to_vec()),
    ];
    for (_, d) in &cases {
        lb.send_to(d, sidecar.addr).await.unwrap();
    }
    // 127.0.0.2 is loopback but not trusted.
    let untrusted = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    untrusted.send_to(&good, sidecar.addr).await.unwrap();
    lb.send_to(&good, sidecar.addr).await.unwrap();
    assert_eq!(app.next().await.1, b"good");
    let s = sidecar
        .until("every drop counted", |s| {
            cases.iter().all(|(r, _)| s.dropped(r) == 1) && s.dropped("untrusted_source") == 1
        })
        .await;
    app.nothing_more();
    assert_eq!(s.to_app, 1);
    assert_eq!(s.opened_total(), 1);
}

#[tokio::test]
async fn idle_flows_expire_and_a_full_table_evicts_the_idle_longest() {
    let mut app = EchoApp::start("127.0.0.1:0").await;
    let sidecar = Udp::start(app.addr, |l| {
        l.max_flows = 2.try_into().unwrap();
        l.flow_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let lb = lb("127.0.0.1:0").await;
    let clients: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::new("203.0.113.7".parse().unwrap(), p))
        .collect();
    let mut sources = Vec::new();
    for &client in &clients {
        lb.send_to(&datagram(client, b"x"), sidecar.addr)
            .await
            .unwrap();
        sources.push(app.next().await.0);
        recv(&lb).await;
        // So that "idle the longest" is not a tie.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = sidecar.snapshot();
    assert_eq!(s.closed(FlowClosed::Evicted), 1, "{s:?}");
    assert_eq!(s.active, 2);
    assert_eq!(s.opened_total(), 3);
    // The first client's flow was the one evicted: it comes back on a new flow (its socket may
    // reuse the closed one's port), which evicts the second client's.
    lb.send_to(&datagram(clients[0], b"x"), sidecar.addr)
        .await
        .unwrap();
    app.next().await;
    recv(&lb).await;
    let s = sidecar.snapshot();
    assert_eq!(
        (s.opened_total(), s.closed(FlowClosed::Evicted)),
        (4, 2),
        "{s:?}"
    );
    // The third client's flow was not evicted: same flow, no new one.
    lb.send_to(&datagram(clients[2], b"x"), sidecar.addr)
        .await
        .unwrap();
    assert_eq!(app.next().await.0, sources[2]);
    recv(&lb).await;
    assert_eq!(sidecar.snapshot().opened_total(), 4);
    let s = sidecar.until("idle flows expire", |s| s.active == 0).await;
    assert_eq!(s.closed(FlowClosed::Expired), 2, "{s:?}");
}

#[tokio::test]
async fn first_mode_takes_the_header_once_per_load_balancer_flow() {
    let mut app = EchoApp::start("127.0.0.1:0").await;
    let sidecar = Udp::start(app.addr, |l| {
        l.datagram_header = DatagramHeader::First;
        l.mode = Mode::ProxyV2;
    })
    .await;
    let client = sa("203.0.113.7:4444");
    let lb = lb("127.0.0.1:0").await;
    lb.send_to(&datagram(client, b"first"), sidecar.addr)
        .await
        .unwrap();
    lb.send_to(b"second", sidecar.addr).await.unwrap();
    for want in [&b"first"[..], b"second"] {
        let (_, got) = app.next().await;
        let (h, at) = decode_datagram(&got, &Limits::default()).unwrap();
        assert_eq!(h.client(), Some(client));
        assert_eq!(&got[at..], want);
    }
    // Another load balancer port without a header first: no flow to belong to.
    let other = self::lb("127.0.0.1:0").await;
    other.send_to(b"orphan", sidecar.addr).await.unwrap();
    sidecar
        .until("orphan dropped", |s| s.dropped("missing_header") == 1)
        .await;
    app.nothing_more();
}

#[test]
fn udp_config_is_checked() {
    let base = "listeners:\n  - name: dns\n    protocol: udp\n    listen: 0.0.0.0:53\n    upstream: 127.0.0.1:5353\n    trusted_sources: [10.0.0.0/8]\n";
    let ok = Config::from_yaml(&format!(
        "{base}    mode: proxy-v2\n    reply_header: true\n    datagram_header: first\n    flow_idle_timeout: 30s\n    max_flows: 100\n"
    ))
    .unwrap();
    let l = &ok.listeners[0];
    assert_eq!(l.protocol, Protocol::Udp);
    assert_eq!(l.datagram_header, DatagramHeader::First);
    assert_eq!(l.flow_idle_timeout, Duration::from_secs(30));
    for (extra, key) in [
        ("    mode: proxy-v1\n", "dns: mode"),
        ("    steer: true\n", "dns: steer"),
        ("    flow_idle_timeout: 0s\n", "dns: flow_idle_timeout"),
        (
            "    datagram_header: first\n    header: optional\n",
            "dns: datagram_header",
        ),
    ] {
        let e = Config::from_yaml(&format!("{base}{extra}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra} => {e}");
    }
    // TCP and UDP on the same address are two listeners, not a clash.
    Config::from_yaml(&format!(
        "{base}  - name: dns-tcp\n    listen: 0.0.0.0:53\n    upstream: 127.0.0.1:5353\n    trusted_sources: [10.0.0.0/8]\n"
    ))
    .unwrap();
}
