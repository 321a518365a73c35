//! `mode: http` at the internet edge, played by a hostile client against a catch-all app (one
//! that answers 200 to everything, as many do) behind a trusted load balancer: no proxy header
//! the client forges reaches the app, no response opens a tunnel past the header rewrite, a
//! certificate CN needs a verified certificate, every limit answers (431, 503, a closed
//! connection) with a reason and a metric (the memory a few hundred hostile connections cost is
//! measured on the binary, `sidecar/tests/memory.rs`). Header clients no load balancer relays
//! are refused, and addresses are canonical.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use support::{CLIENT, DESTINATION, Harness, read_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use trueip_proxy_header::{Addresses, Command, Header, Ssl, Tlvs, Transport, Version, kind};
use trueip_sidecar_app::config::{HeaderSlot, ListenerConfig, Mode};

/// The client's address as the app must see it.
const CLIENT_IP: &str = "203.0.113.7";

// === the app ===

/// What the app received: request line and headers, in order.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A catch-all app: 200 to every request, CONNECT included; `/101?upgrade=X` answers
/// `101 Switching Protocols` with `Upgrade: X` whatever the request asked; `/slow` answers once
/// the test releases it; `/big` sends 1 MiB. Records every request it gets.
struct CatchAll {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
}

impl CatchAll {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (record, notify) = (Arc::clone(&seen), Arc::clone(&release));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (record, notify) = (Arc::clone(&record), Arc::clone(&notify));
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        answer(req, Arc::clone(&record), Arc::clone(&notify))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            release,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    record.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect(),
    });
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    if let Some(upgrade) = req.uri().query().and_then(|q| q.strip_prefix("upgrade=")) {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::UPGRADE, upgrade.parse().unwrap());
        response
            .headers_mut()
            .insert(header::CONNECTION, "upgrade".parse().unwrap());
        *response.body_mut() = Full::new(Bytes::new());
    }
    if req.uri().path() == "/slow" {
        release.notified().await;
    }
    if req.uri().path() == "/big" {
        *response.body_mut() = Full::new(Bytes::from(vec![b'b'; 1024 * 1024]));
    }
    let _ = req.into_body().collect().await;
    Ok(response)
}

// === the load balancer and the client ===

/// A v2 header for `source` (IPv4 or IPv6) with `tlvs`, over `transport`.
fn header(source: &str, transport: Transport, tlvs: Tlvs) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = if source.is_ipv4() {
        DESTINATION.parse().unwrap()
    } else {
        "[2001:db8::1]:443".parse().unwrap()
    };
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport,
        addresses: Addresses::Inet {
            source,
            destination,
        },
        tlvs,
    }
    .to_v2(false)
    .unwrap()
}

/// The load balancer's header for [`CLIENT`].
fn lb_header() -> Vec<u8> {
    header(CLIENT, Transport::Stream, Tlvs::default())
}

/// Connects and sends the load balancer's header and `bytes`.
async fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    send_with(addr, &lb_header(), bytes).await
}

/// Connects and sends `header` (a PROXY header) and `bytes` in one write.
async fn send_with(addr: SocketAddr, header: &[u8], bytes: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[header, bytes].concat()).await.unwrap();
    c
}

async fn edge(app: &CatchAll, tune: impl FnOnce(&mut ListenerConfig)) -> Harness {
    Harness::start(app.addr, |l| {
        l.mode = Mode::Http;
        tune(l);
    })
    .await
}

/// Reads until the peer closes (within 10 s).
async fn until_closed(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "still open after 10 s; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

// === forged headers ===

#[tokio::test]
async fn the_whole_family_of_proxy_headers_is_the_sidecars() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        l.http.strip_headers = vec![header::HeaderName::from_static("x-authenticated-user")];
    })
    .await;
    let forged = "GET /whoami HTTP/1.1\r\nHost: shop.example\r\n\
                  X-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nForwarded: for=127.0.0.1\r\n\
                  X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
                  X-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\n\
                  True-Client-IP: 127.0.0.1\r\nX-Client-IP: 127.0.0.1\r\n\
                  CF-Connecting-IP: 127.0.0.1\r\nFastly-Client-IP: 127.0.0.1\r\n\
                  X-Cluster-Client-IP: 127.0.0.1\r\nX-Authenticated-User: admin\r\n\
                  Accept: */*\r\nConnection: close\r\n\r\n";
    let mut c = send(sidecar.addr, forged.as_bytes()).await;
    let response = until_closed(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let seen = app.seen();
    let [req] = seen.as_slice() else {
        panic!("{seen:?}")
    };
    assert_eq!(req.all("x-forwarded-for"), [CLIENT_IP]);
    assert_eq!(req.all("x-real-ip"), [CLIENT_IP]);
    assert_eq!(
        req.all("forwarded"),
        [format!("for={CLIENT_IP};proto=http;host=shop.example")]
    );
    // Written by the sidecar from what it knows: cleartext, no SSL TLV.
    assert_eq!(req.all("x-forwarded-proto"), ["http"]);
    for forged in [
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-authenticated-user",
    ] {
        assert!(
            req.all(forged).is_empty(),
            "{forged} reached the app: {req:?}"
        );
    }
    assert_eq!(req.all("accept"), ["*/*"]);
    let s = sidecar.settled(1).await;
    for name in ["x-forwarded-host", "true-client-ip", "x-authenticated-user"] {
        assert_eq!(s.http_headers_removed.get(name), Some(&1), "{name}: {s:?}");
    }

    // The SSL TLV says the client spoke TLS to the load balancer: https.
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::SSL, ssl(Ssl::CLIENT_SSL, 0, None));
    let mut c = send_with(
        sidecar.addr,
        &header(CLIENT, Transport::Stream, tlvs),
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
    )
    .await;
    until_closed(&mut c).await;
    assert_eq!(app.seen()[1].all("x-forwarded-proto"), ["https"]);
}

fn ssl(client: u8, verify: u32, cn: Option<&str>) -> Vec<u8> {
    Ssl {
        client,
        verify,
        version: Some("TLSv1.3".into()),
        cn: cn.map(str::to_owned),
        cipher: None,
        sig_alg: None,
        key_alg: None,
    }
    .encode()
    .unwrap()
}

#[tokio::test]
async fn a_certificate_cn_reaches_the_app_only_when_the_certificate_was_verified() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        l.http.tlv_headers.ssl_cn =
            HeaderSlot(Some(header::HeaderName::from_static("x-client-cert-cn")));
    })
    .await;
    let cert = Ssl::CLIENT_SSL | Ssl::CLIENT_CERT_CONN;
    for (client, verify, expected) in [
        // The load balancer verified the certificate: its CN is the client's.
        (cert, 0, Some("alice")),
        (Ssl::CLIENT_SSL | Ssl::CLIENT_CERT_SESS, 0, Some("alice")),
        // Verification failed (verify ≠ 0): the CN is whatever the client wrote.
        (cert, 1, None),
        // No certificate presented, whatever verify says.
        (Ssl::CLIENT_SSL, 0, None),
    ] {
        let mut tlvs = Tlvs::default();
        tlvs.push(kind::SSL, ssl(client, verify, Some("alice")));
        let mut c = send_with(
            sidecar.addr,
            &header(CLIENT, Transport::Stream, tlvs),
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Cert-Cn: admin\r\nConnection: close\r\n\r\n",
        )
        .await;
        until_closed(&mut c).await;
        let seen = app.seen();
        let last = seen.last().unwrap();
        assert_eq!(
            last.all("x-client-cert-cn"),
            expected.into_iter().collect::<Vec<_>>(),
            "client {client:#x} verify {verify}"
        );
    }
}

// === tunnels ===

#[tokio::test]
async fn connect_is_refused_and_smuggles_nothing() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    // CONNECT, then (as if the tunnel were open) a request no rewrite would see.
    let mut c = send(
        sidecar.addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n\
          GET /admin HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n",
    )
    .await;
    let response = until_closed(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(!response.contains("HTTP/1.1 200"), "{response}");
    assert!(
        app.seen().is_empty(),
        "the app got requests: {:?}",
        app.seen()
    );
    sidecar
        .logs
        .wait_for(&["request refused", "connect_refused"])
        .await;
    let s = sidecar.settled(1).await;
    assert_eq!(s.http_limits.get("connect_refused"), Some(&1), "{s:?}");
    assert_eq!(s.http_requests.get("4xx"), Some(&1), "{s:?}");
}

#[tokio::test]
async fn only_a_101_to_the_protocol_asked_for_opens_a_tunnel() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    // The client asks for WebSocket; the app switches to something else.
    let mut c = send(
        sidecar.addr,
        b"GET /101?upgrade=raw HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\
          Upgrade: websocket\r\n\r\n",
    )
    .await;
    let head = read_until(&mut c, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // The connection is still HTTP: the next bytes are a request, rewritten as every request.
    c.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let rest = until_closed(&mut c).await;
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    let seen = app.seen();
    let after = seen.iter().find(|s| s.path == "/after").expect("a request");
    assert_eq!(after.method, "GET");
    assert_eq!(after.all("x-forwarded-for"), [CLIENT_IP]);

    // No upgrade asked for at all: a 101 is not passed on either.
    let mut c = send(
        sidecar.addr,
        b"GET /101?upgrade=websocket HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let response = until_closed(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    let s = sidecar.settled(2).await;
    assert_eq!(s.http_limits.get("upgrade_mismatch"), Some(&2), "{s:?}");
}

// === limits ===

#[tokio::test]
async fn heads_beyond_the_limits_get_431() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n",
        "c".repeat(40 * 1024)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for request in [big, many] {
        let mut c = send(sidecar.addr, request.as_bytes()).await;
        let response = until_closed(&mut c).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    let s = sidecar.settled(2).await;
    assert_eq!(
        s.http_limits.get("request_head_too_large"),
        Some(&2),
        "{s:?}"
    );
    assert_eq!(s.rejected("request_head_too_large"), 2, "{s:?}");
}

#[tokio::test]
async fn a_slow_head_and_an_idle_keep_alive_connection_are_closed() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        l.http.limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // Slowloris: a head that never ends.
    let mut c = send(sidecar.addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await;
    for _ in 0..3 {
        // Trickled bytes do not restart the timer.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = c.write_all(b"a").await;
    }
    until_closed(&mut c).await;
    // A keep-alive connection that goes idle after its response.
    let mut c = send(sidecar.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let response = until_closed(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let s = sidecar.settled(2).await;
    assert_eq!(s.http_limits.get("header_read_timeout"), Some(&2), "{s:?}");
    assert_eq!(s.rejected("request_timeout"), 1, "{s:?}");
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn requests_in_flight_and_app_connections_are_capped() {
    for limit in [
        "max_requests_in_flight",
        "max_requests_in_flight_per_client",
        "max_app_connections",
    ] {
        let app = CatchAll::start().await;
        let sidecar = edge(&app, |l| {
            let one = 1.try_into().unwrap();
            let limits = &mut l.http.limits;
            match limit {
                "max_requests_in_flight" => limits.max_requests_in_flight = one,
                "max_requests_in_flight_per_client" => {
                    limits.max_requests_in_flight_per_client = one;
                }
                _ => limits.max_app_connections = one,
            }
        })
        .await;
        let mut busy = send(sidecar.addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await;
        while app.seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut c = send(
            sidecar.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let refused = until_closed(&mut c).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        app.release.notify_one();
        let head = read_until(&mut busy, "ok\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        drop(busy);
        let s = sidecar.settled(2).await;
        assert_eq!(s.http_limits.get(limit), Some(&1), "{s:?}");
        assert_eq!(s.http_requests.get("5xx"), Some(&1), "{s:?}");
        // The budget is back once the slow request is done.
        for _ in 0..100 {
            let mut c = send(
                sidecar.addr,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await;
            if until_closed(&mut c).await.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sidecar.snapshot().http_requests.get("2xx"), Some(&2));
    }
}

// === HTTP/2 ===

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

/// Reads one frame: (type, flags, payload); `None` once the connection is closed.
async fn read_frame(c: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut head))
        .await
        .expect("a frame or a close within 10 s")
        .ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    c.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// Opens an HTTP/2 connection (prior knowledge) and returns it with the server's settings.
async fn h2(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut c = send(
        addr,
        &[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &frame(SETTINGS, 0, 0, &[]),
        ]
        .concat(),
    )
    .await;
    let (kind, _, payload) = read_frame(&mut c).await.expect("the server's SETTINGS");
    assert_eq!(kind, SETTINGS);
    let settings = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    (c, settings)
}

/// Reads frames until a GOAWAY; returns its error code.
async fn goaway(c: &mut TcpStream) -> u32 {
    while let Some((kind, _, payload)) = read_frame(c).await {
        if kind == GOAWAY {
            return u32::from_be_bytes(payload[4..8].try_into().unwrap());
        }
    }
    panic!("closed without a GOAWAY");
}

#[tokio::test]
async fn http2_announces_its_limits_and_closes_idle_connections() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        l.http.limits.keep_alive_timeout = Duration::from_millis(300);
        // Bounds the graceful close too: this client never acknowledges the server's PING.
        l.http.limits.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let (mut c, settings) = h2(sidecar.addr).await;
    // MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE: the defaults.
    for (id, value) in [(0x3, 100), (0x4, 65_536), (0x6, 32_768)] {
        assert!(
            settings.contains(&(id, value)),
            "{id:#x}={value} not in {settings:?}"
        );
    }
    // Pings do not keep a connection without requests open.
    for _ in 0..4 {
        c.write_all(&frame(0x6, 0, 0, &[7; 8])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(goaway(&mut c).await, 0, "NO_ERROR: a graceful close");
    until_closed(&mut c).await;
    let s = sidecar.settled(1).await;
    assert_eq!(s.http_limits.get("keep_alive_timeout"), Some(&1), "{s:?}");
}

#[tokio::test]
async fn http2_rapid_reset_closes_the_connection_and_spares_the_others() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    let (mut c, _) = h2(sidecar.addr).await;
    // HEADERS (GET / over http, END_STREAM | END_HEADERS) then RST_STREAM(CANCEL), 500 times.
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(0x1, 0x5, stream, &[0x82, 0x86, 0x84]));
        flood.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = c.write_all(&flood).await;
    assert_eq!(goaway(&mut c).await, 0xb, "ENHANCE_YOUR_CALM");
    assert!(
        app.seen().len() < 500,
        "every reset stream reached the app ({})",
        app.seen().len()
    );
    // Another client is served.
    let mut other = send(
        sidecar.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut other).await.starts_with("HTTP/1.1 200"));
}

// === addresses ===

#[tokio::test]
async fn clients_no_load_balancer_relays_are_refused() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    for (source, reason) in [
        ("0.0.0.0:1", "client_unspecified"),
        ("[::]:1", "client_unspecified"),
        ("224.0.0.1:1", "client_multicast"),
        ("[ff02::1]:1", "client_multicast"),
        ("255.255.255.255:1", "client_broadcast"),
        ("127.0.0.1:1", "client_loopback"),
        ("[::1]:1", "client_loopback"),
        ("[::ffff:127.0.0.1]:1", "client_loopback"),
    ] {
        let mut c = send_with(
            sidecar.addr,
            &header(source, Transport::Stream, Tlvs::default()),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!(until_closed(&mut c).await, "", "{source}");
        sidecar
            .logs
            .wait_for(&["connection rejected", reason])
            .await;
    }
    let s = sidecar.settled(8).await;
    assert_eq!(s.rejected("client_loopback"), 3, "{s:?}");
    assert_eq!(s.rejected("client_unspecified"), 2, "{s:?}");
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn a_listener_may_allow_loopback_clients() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| l.allow_loopback_clients = true).await;
    let mut c = send_with(
        sidecar.addr,
        &header("127.0.0.1:1", Transport::Stream, Tlvs::default()),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200"));
    assert_eq!(app.seen()[0].all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn headers_name_an_ipv4_mapped_client_as_ipv4() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    let mut c = send_with(
        sidecar.addr,
        &header(
            "[::ffff:203.0.113.7]:4242",
            Transport::Stream,
            Tlvs::default(),
        ),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    until_closed(&mut c).await;
    let seen = app.seen();
    assert_eq!(seen[0].all("x-forwarded-for"), [CLIENT_IP]);
    assert_eq!(seen[0].all("x-real-ip"), [CLIENT_IP]);
    assert_eq!(
        seen[0].all("forwarded"),
        [format!("for={CLIENT_IP};proto=http;host=a")]
    );
}

#[tokio::test]
async fn a_udp_header_on_a_tcp_listener_is_refused_and_an_unspec_transport_ignored() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |_| {}).await;
    let mut c = send_with(
        sidecar.addr,
        &header(CLIENT, Transport::Datagram, Tlvs::default()),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(until_closed(&mut c).await, "");
    sidecar
        .logs
        .wait_for(&["connection rejected", "transport_mismatch"])
        .await;

    // INET with an UNSPEC transport (0x10): the addresses are ignored, the real peer is used.
    let mut c = send_with(
        sidecar.addr,
        &header(CLIENT, Transport::Unspec, Tlvs::default()),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200"));
    assert_eq!(app.seen()[0].all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn a_stalled_http2_client_gives_its_slots_back() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        let limits = &mut l.http.limits;
        limits.max_requests_in_flight = 1.try_into().unwrap();
        limits.stream_idle_timeout = Duration::from_millis(300);
        limits.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    // A window of 0: a response larger than the sidecar's send buffer can never be sent, so
    // the request stays in flight. (GET /big over http.)
    let get_big = [0x82, 0x86, 0x04, 0x04, b'/', b'b', b'i', b'g'];
    let mut c = send(
        sidecar.addr,
        &[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            &frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]),
            &frame(0x1, 0x5, 1, &get_big),
        ]
        .concat(),
    )
    .await;
    while app.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut other = send(
        sidecar.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut other).await.starts_with("HTTP/1.1 503"));
    // The stalled connection is closed after stream_idle_timeout, and the slot is back.
    goaway(&mut c).await;
    until_closed(&mut c).await;
    let mut other = send(
        sidecar.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut other).await.starts_with("HTTP/1.1 200"));
    let s = sidecar.snapshot();
    assert_eq!(s.http_limits.get("stream_idle_timeout"), Some(&1), "{s:?}");
    sidecar
        .logs
        .wait_for(&["stream_idle_timeout", "made no progress"])
        .await;
}

#[tokio::test]
async fn aliases_trailers_h2c_and_host_games_do_not_reach_the_app() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| {
        l.http.tlv_headers.ssl_cn =
            HeaderSlot(Some(header::HeaderName::from_static("x-client-cn")));
    })
    .await;
    // Underscore aliases of the family (`HTTP_X_CLIENT_CN` to a CGI-style app), an
    // `X-Forwarded-*` name off the list, and a forged header in a trailer.
    let mut c = send(
        sidecar.addr,
        b"POST /up HTTP/1.1\r\nHost: a\r\nX_Client_CN: admin\r\nX_Forwarded_For: 6.6.6.6\r\n\
          X-Forwarded-Ssl: on\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For\r\n\
          Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200"));
    let seen = app.seen();
    let up = &seen[0];
    for forged in [
        "x_client_cn",
        "x-client-cn",
        "x_forwarded_for",
        "x-forwarded-ssl",
        "trailer",
    ] {
        assert!(up.all(forged).is_empty(), "{forged}: {up:?}");
    }
    assert_eq!(up.all("x-forwarded-for"), [CLIENT_IP]);

    // h2c is no upgrade the sidecar passes on.
    let mut c = send(
        sidecar.addr,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200"));
    let seen = app.seen();
    let h2c = seen.iter().find(|s| s.path == "/h2c").unwrap();
    assert!(h2c.all("upgrade").is_empty(), "{h2c:?}");
    assert!(h2c.all("http2-settings").is_empty(), "{h2c:?}");

    // An absolute target wins over Host, so Host and `Forwarded: host=` agree; two Hosts: 400.
    let mut c = send(
        sidecar.addr,
        b"GET http://shop.example/abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(until_closed(&mut c).await.starts_with("HTTP/1.1 200"));
    let seen = app.seen();
    let abs = seen.iter().find(|s| s.path == "/abs").unwrap();
    assert_eq!(abs.all("host"), ["shop.example"]);
    assert_eq!(
        abs.all("forwarded"),
        [format!("for={CLIENT_IP};proto=http;host=shop.example")]
    );
    let mut c = send(
        sidecar.addr,
        b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    let response = until_closed(&mut c).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(!app.seen().iter().any(|s| s.path == "/two"));
}

#[tokio::test]
async fn http2_requests_are_held_to_the_header_count_too() {
    let app = CatchAll::start().await;
    let sidecar = edge(&app, |l| l.http.limits.max_headers = 4).await;
    let (mut c, _) = h2(sidecar.addr).await;
    // GET / over http, then 5 literal fields "a: " (literal without indexing, new name).
    let mut block = vec![0x82, 0x86, 0x84];
    for name in [b'a', b'b', b'c', b'd', b'e'] {
        block.extend([0x00, 0x01, name, 0x00]);
    }
    c.write_all(&frame(0x1, 0x5, 1, &block)).await.unwrap();
    // The response HEADERS: `:status` (static index 8) with the Huffman-coded literal "431"
    // (`4` 011010, `3` 011001, `1` 00001, padded with ones).
    loop {
        let (kind, _, payload) = read_frame(&mut c).await.expect("a response");
        if kind == 0x1 {
            assert!(
                payload.starts_with(&[0x48, 0x83, 0x69, 0x90, 0xff]),
                "not a 431: {payload:02x?}"
            );
            break;
        }
    }
    assert!(app.seen().is_empty());
}
