//! `mode: http` end to end on loopback: a real HTTP app behind the sidecar that answers with the
//! headers and the peer it saw, and real clients (curl with `--haproxy-protocol`, raw requests
//! behind a PROXY v2 header): the app learns the client from the sidecar's headers, never from
//! the client's own, on every request of a connection, over HTTP/1.1, HTTP/2 and TLS; upgrades
//! and streamed bodies pass through; a non-HTTP first request is a 400.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use support::{Harness, proxy_header, read_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc},
};
use trueip_proxy_header::{Addresses, Command, Header, Tlvs, Transport, Version, kind};
use trueip_sidecar_app::config::{ClientHeaders, HeaderSlot, ListenerConfig, Mode, TlsConfig};

/// The address the test headers name as the client (without the port).
const CLIENT_IP: &str = "203.0.113.7";

// === the app ===

/// An HTTP app on loopback: `/` answers with `peer: <addr>` and every request header, one
/// per line; `/stream` sends one chunk, waits for the test, then a second; an `Upgrade` or
/// `CONNECT` request is switched and the raw bytes are echoed back.
struct EchoApp {
    addr: SocketAddr,
    release: Arc<Notify>,
}

type AppBody = UnsyncBoxBody<Bytes, Infallible>;

impl EchoApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(Notify::new());
        let notify = Arc::clone(&release);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let notify = Arc::clone(&notify);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, peer, Arc::clone(&notify)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, release }
    }
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

async fn answer(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    release: Arc<Notify>,
) -> Result<Response<AppBody>, Infallible> {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if upgrade || req.method() == hyper::Method::CONNECT {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
        if upgrade {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert(header::CONNECTION, "upgrade".parse().unwrap());
        }
        return Ok(response);
    }
    if req.uri().path() == "/stream" {
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"first\n")).await.unwrap();
            release.notified().await;
            let _ = tx.send(Bytes::from_static(b"second\n")).await;
        });
        return Ok(Response::new(ChannelBody(rx).boxed_unsync()));
    }
    let mut text = format!("peer: {peer}\n");
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            value.to_str().unwrap_or("<binary>")
        ));
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    text.push_str(&format!("body-bytes: {}\n", body.len()));
    Ok(Response::new(Full::new(Bytes::from(text)).boxed_unsync()))
}

/// The values of curl's `-w 'name=value'` lines, in order.
fn written<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .collect()
}

/// The values of `name` in an echo, in order.
fn seen<'a>(echo: &'a str, name: &str) -> Vec<&'a str> {
    echo.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

async fn http_sidecar(app: &EchoApp, tune: impl FnOnce(&mut ListenerConfig)) -> Harness {
    Harness::start(app.addr, |l| {
        l.mode = Mode::Http;
        tune(l);
    })
    .await
}

// === raw clients ===

/// Connects, sends `header` (a PROXY header) and `request`, and reads until the peer closes
/// or `until` appears.
async fn exchange(addr: SocketAddr, header: &[u8], request: &[u8], until: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&[header, request].concat()).await.unwrap();
    read_until(&mut c, until).await
}

fn v2(source: &str, tlvs: Tlvs) -> Vec<u8> {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: source.parse().unwrap(),
            destination: if source.starts_with('[') {
                "[2001:db8::1]:443".parse().unwrap()
            } else {
                "198.51.100.1:443".parse().unwrap()
            },
        },
        tlvs,
    }
    .to_v2(false)
    .unwrap()
}

// === curl ===

/// Runs curl; its stdout, or a panic with its stderr.
async fn curl(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (scripts/setup.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl {args:?} failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

// === tests ===

#[tokio::test]
async fn spoofed_forwarding_headers_are_replaced_with_the_client() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |_| {}).await;
    let echo = exchange(
        sidecar.addr,
        &support::v2_header(Tlvs::default(), false),
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
          X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n",
        "body-bytes",
    )
    .await;
    assert!(echo.starts_with("HTTP/1.1 200 OK"), "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-for"), [CLIENT_IP]);
    assert_eq!(seen(&echo, "x-real-ip"), [CLIENT_IP]);
    assert_eq!(
        seen(&echo, "forwarded"),
        [format!("for={CLIENT_IP};proto=http;host=shop.example")]
    );
    assert_eq!(seen(&echo, "host"), ["shop.example"]);
    // The app's peer is the sidecar on loopback: the client is in the headers only.
    assert!(seen(&echo, "peer")[0].starts_with("127.0.0.1:"), "{echo}");
    let s = sidecar.settled(1).await;
    assert_eq!(s.http_requests.get("2xx"), Some(&1), "{s:?}");
    for h in ["x-forwarded-for", "x-real-ip", "forwarded"] {
        assert_eq!(s.http_headers_removed.get(h), Some(&1), "{h}: {s:?}");
    }
}

#[tokio::test]
async fn an_ebpf_listener_without_the_agent_falls_back_to_http() {
    let app = EchoApp::start().await;
    // No agent answers at the configuration's socket here: `fallback: http` serves instead.
    let sidecar = Harness::start(app.addr, |l| {
        l.mode = Mode::Ebpf;
        l.fallback = Some(Mode::Http);
    })
    .await;
    sidecar
        .logs
        .wait_for(&["eBPF restore unavailable; using the fallback mode"])
        .await;
    let echo = exchange(
        sidecar.addr,
        &support::v2_header(Tlvs::default(), false),
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
        "body-bytes",
    )
    .await;
    assert!(echo.starts_with("HTTP/1.1 200 OK"), "{echo}");
    assert_eq!(seen(&echo, "x-forwarded-for"), [CLIENT_IP]);
}

#[tokio::test]
async fn append_policy_extends_the_chain_behind_a_trusted_header() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |l| l.http.client_headers = ClientHeaders::Append).await;
    let echo = exchange(
        sidecar.addr,
        &support::v2_header(Tlvs::default(), false),
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.50\r\n\
          Forwarded: for=192.0.2.50\r\nConnection: close\r\n\r\n",
        "body-bytes",
    )
    .await;
    assert_eq!(
        seen(&echo, "x-forwarded-for"),
        [format!("192.0.2.50, {CLIENT_IP}")]
    );
    assert_eq!(
        seen(&echo, "forwarded"),
        [format!("for=192.0.2.50, for={CLIENT_IP};proto=http;host=a")]
    );
    assert!(sidecar.settled(1).await.http_headers_removed.is_empty());
}

#[tokio::test]
async fn ipv6_client_and_tlv_headers() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |l| {
        l.http.tlv_headers.authority = HeaderSlot(Some("x-sni".parse().unwrap()));
        l.http.tlv_headers.unique_id = HeaderSlot(Some("x-lb-conn".parse().unwrap()));
        l.http.x_real_ip = HeaderSlot(None);
        l.http.x_forwarded_for = HeaderSlot(Some("x-client".parse().unwrap()));
    })
    .await;
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AUTHORITY, b"shop.example".to_vec());
    tlvs.push(kind::UNIQUE_ID, b"lb-42".to_vec());
    let echo = exchange(
        sidecar.addr,
        &v2("[2001:db8:c::7]:40000", tlvs),
        b"GET / HTTP/1.1\r\nHost: shop.example:8443\r\nX-SNI: evil.example\r\n\
          Connection: close\r\n\r\n",
        "body-bytes",
    )
    .await;
    assert_eq!(seen(&echo, "x-client"), ["2001:db8:c::7"]);
    assert_eq!(
        seen(&echo, "forwarded"),
        ["for=\"[2001:db8:c::7]\";proto=http;host=\"shop.example:8443\""]
    );
    assert_eq!(seen(&echo, "x-sni"), ["shop.example"]);
    assert_eq!(seen(&echo, "x-lb-conn"), ["lb-42"]);
    assert!(seen(&echo, "x-real-ip").is_empty(), "disabled: {echo}");
}

#[tokio::test]
async fn pipelined_requests_keep_their_connections_client() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |_| {}).await;
    let request = b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n\
                    POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                    GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let mut c = TcpStream::connect(sidecar.addr).await.unwrap();
    c.write_all(
        &[
            support::v2_header(Tlvs::default(), false).as_slice(),
            request,
        ]
        .concat(),
    )
    .await
    .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).await.unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 3, "{all}");
    assert_eq!(seen(&all, "x-forwarded-for"), [CLIENT_IP; 3]);
    assert_eq!(seen(&all, "body-bytes"), ["0", "5", "0"]);

    // A second connection from another client on the same listener gets its own client.
    let echo = exchange(
        sidecar.addr,
        &v2("198.51.100.77:1234", Tlvs::default()),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "body-bytes",
    )
    .await;
    assert_eq!(seen(&echo, "x-forwarded-for"), ["198.51.100.77"]);
    let s = sidecar.settled(2).await;
    assert_eq!(s.http_requests.get("2xx"), Some(&4), "{s:?}");
}

#[tokio::test]
async fn shutdown_closes_an_idle_keep_alive_connection_without_waiting_for_the_deadline() {
    let app = EchoApp::start().await;
    let mut sidecar = http_sidecar(&app, |_| {}).await;
    let mut c = TcpStream::connect(sidecar.addr).await.unwrap();
    c.write_all(
        &[
            support::v2_header(Tlvs::default(), false).as_slice(),
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat(),
    )
    .await
    .unwrap();
    let first = read_until(&mut c, "body-bytes").await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    // The connection is now idle and kept alive. A relayed stream would be waited for until
    // the drain deadline (5 s here); an HTTP connection between requests is closed at once.
    let cut = sidecar.shutdown().await;
    assert_eq!(cut, 0, "the idle connection was cut at the drain deadline");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 "),
        "no second response: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn curl_keep_alive_and_http2_prior_knowledge() {
    let app = EchoApp::start().await;
    // curl's header names its own address, on loopback.
    let sidecar = http_sidecar(&app, |l| l.allow_loopback_clients = true).await;
    let url = format!("http://{}/", sidecar.addr);
    // Three requests on one connection (curl reuses it), one PROXY header at its start.
    let (out, _) = curl(&[
        "--haproxy-protocol",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        &url,
        &url,
        &url,
        "-w",
        "connects=%{num_connects}\n",
    ])
    .await;
    // curl's header names its own address, 127.0.0.1.
    assert_eq!(seen(&out, "x-forwarded-for"), ["127.0.0.1"; 3], "{out}");
    assert_eq!(
        written(&out, "connects"),
        ["1", "0", "0"],
        "one connection: {out}"
    );

    let (out, _) = curl(&[
        "--haproxy-protocol",
        "--http2-prior-knowledge",
        &url,
        "-w",
        "version=%{http_version}\n",
    ])
    .await;
    assert_eq!(written(&out, "version"), ["2"], "{out}");
    assert_eq!(seen(&out, "x-forwarded-for"), ["127.0.0.1"], "{out}");
    // HTTP/2's :authority reaches the HTTP/1.1 app as Host.
    assert_eq!(seen(&out, "host"), [sidecar.addr.to_string()], "{out}");
    let s = sidecar.settled(2).await;
    assert_eq!(s.http_requests.get("2xx"), Some(&4), "{s:?}");
}

#[tokio::test]
async fn websocket_upgrade_and_connect_become_tunnels() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |l| l.http.allow_connect = true).await;
    let mut c = TcpStream::connect(sidecar.addr).await.unwrap();
    let handshake = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                      Sec-WebSocket-Version: 13\r\n\r\n";
    c.write_all(
        &[
            support::v2_header(Tlvs::default(), false).as_slice(),
            handshake,
        ]
        .concat(),
    )
    .await
    .unwrap();
    let head = read_until(&mut c, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    // Raw bytes (here a masked text frame) pass both ways untouched.
    let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    c.write_all(frame).await.unwrap();
    let mut back = [0u8; 11];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, frame);
    drop(c);

    let mut c = TcpStream::connect(sidecar.addr).await.unwrap();
    c.write_all(
        &[
            support::v2_header(Tlvs::default(), false).as_slice(),
            b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n",
        ]
        .concat(),
    )
    .await
    .unwrap();
    let head = read_until(&mut c, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"any bytes at all\x00\xff").await.unwrap();
    let mut back = [0u8; 18];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"any bytes at all\x00\xff");
    drop(c);
    let s = sidecar.settled(2).await;
    assert!(s.bytes_to_app >= 29 && s.bytes_to_client >= 29, "{s:?}");
}

#[tokio::test]
async fn streamed_bodies_are_not_buffered() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |_| {}).await;
    let mut c = TcpStream::connect(sidecar.addr).await.unwrap();
    c.write_all(
        &[
            support::v2_header(Tlvs::default(), false).as_slice(),
            b"GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ]
        .concat(),
    )
    .await
    .unwrap();
    // The first chunk arrives while the app still holds the rest of the body.
    let first = read_until(&mut c, "first").await;
    assert!(!first.contains("second"), "{first}");
    app.release.notify_one();
    let rest = read_until(&mut c, "second").await;
    assert!(rest.contains("second"), "{rest}");
}

#[tokio::test]
async fn a_non_http_first_request_is_a_400() {
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |_| {}).await;
    let answer = exchange(
        sidecar.addr,
        &support::v1_header(),
        b"\x00\x01binary protocol\r\n\r\n",
        "\u{0}never",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("trueip: not an HTTP request"), "{answer}");
    let answer = exchange(
        sidecar.addr,
        &support::v1_header(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        "\u{0}never",
    )
    .await;
    assert!(answer.contains("TLS handshake on a cleartext"), "{answer}");
    sidecar
        .logs
        .wait_for(&["connection rejected", "not_http", "not an HTTP request"])
        .await;
    let s = sidecar.settled(2).await;
    assert_eq!(s.rejected("not_http"), 2, "{s:?}");
    assert_eq!(s.http_requests.get("4xx"), Some(&2), "{s:?}");
}

#[tokio::test]
async fn an_unreachable_app_is_a_502() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let sidecar = Harness::start(addr, |l| l.mode = Mode::Http).await;
    let answer = exchange(
        sidecar.addr,
        &support::v2_header(Tlvs::default(), false),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "unreachable",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let s = sidecar.settled(1).await;
    assert_eq!(s.upstream_errors, 1, "{s:?}");
    assert_eq!(s.http_requests.get("5xx"), Some(&1), "{s:?}");
}

// === TLS ===

/// A throw-away CA and leaf certificates for `app.test` it signs.
struct TestCa {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trueip test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes a leaf for `app.test` with `cn` as its Common Name to `dir/tls.{crt,key}`.
    fn leaf(&self, dir: &Path, cn: &str) {
        let mut params = rcgen::CertificateParams::new(vec!["app.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        // Written to a temporary name and renamed, as a Secret update swaps files.
        std::fs::write(dir.join("tls.key.tmp"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls.crt.tmp"), cert.pem()).unwrap();
        std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
        std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
    }
}

#[tokio::test]
async fn tls_termination_with_alpn_and_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.leaf(dir.path(), "first");
    std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |l| {
        // curl's header names its own address, on loopback.
        l.allow_loopback_clients = true;
        l.http.tls = Some(TlsConfig {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            reload_interval: Duration::from_millis(100),
        });
    })
    .await;
    let port = sidecar.addr.port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}/");
    let cacert = dir.path().join("ca.pem");
    let cacert = cacert.to_str().unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (out, err) = curl(&[
            "-v",
            "--haproxy-protocol",
            flag,
            "--cacert",
            cacert,
            "--resolve",
            &resolve,
            "-H",
            "X-Real-IP: 6.6.6.6",
            &url,
            "-w",
            "version=%{http_version}\n",
        ])
        .await;
        assert_eq!(written(&out, "version"), [version], "{out}");
        assert_eq!(seen(&out, "x-real-ip"), ["127.0.0.1"], "{out}");
        assert_eq!(
            seen(&out, "forwarded"),
            [format!(
                "for=127.0.0.1;proto=https;host=\"app.test:{port}\""
            )]
        );
        assert!(err.contains("CN=first"), "{err}");
    }

    // New files: served within a few reload intervals, without a restart.
    ca.leaf(dir.path(), "second");
    let mut served = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, err) = curl(&[
            "-v",
            "--haproxy-protocol",
            "--cacert",
            cacert,
            "--resolve",
            &resolve,
            &url,
        ])
        .await;
        served = err;
        if served.contains("CN=second") {
            break;
        }
    }
    assert!(served.contains("CN=second"), "{served}");
    sidecar
        .logs
        .wait_for(&["serving the new certificate"])
        .await;
}

#[tokio::test]
async fn tls_listener_refuses_cleartext_with_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    TestCa::new().leaf(dir.path(), "only");
    let app = EchoApp::start().await;
    let sidecar = http_sidecar(&app, |l| {
        // curl's header names its own address, on loopback.
        l.allow_loopback_clients = true;
        l.http.tls = Some(TlsConfig {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            reload_interval: Duration::from_secs(10),
        });
    })
    .await;
    let _ = exchange(
        sidecar.addr,
        &proxy_header(Version::V1, Tlvs::default()).to_v1(),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "\u{0}never",
    )
    .await;
    sidecar
        .logs
        .wait_for(&["connection rejected", "tls_handshake"])
        .await;
    assert_eq!(sidecar.settled(1).await.rejected("tls_handshake"), 1);
}

#[tokio::test]
async fn a_missing_certificate_stops_the_listener_from_starting() {
    let app = EchoApp::start().await;
    let mut listener = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), app.addr);
    listener.trusted_sources = vec!["127.0.0.0/8".parse().unwrap()];
    listener.mode = Mode::Http;
    listener.http.tls = Some(TlsConfig {
        cert: "/nonexistent/tls.crt".into(),
        key: "/nonexistent/tls.key".into(),
        reload_interval: Duration::from_secs(10),
    });
    let err = trueip_telemetry::error_chain(
        &trueip_sidecar_app::Sidecar::bind(&trueip_sidecar_app::Config::single(listener))
            .unwrap_err(),
    );
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");
}
