//! A real sidecar run exports one span per connection to an OTLP receiver, over gRPC and over
//! HTTP/protobuf, with the semantic-convention attributes operators search by.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use trueip_proxy_header::{
    Addresses, Command as PpCommand, Header, Tlvs, Transport, Version, kind,
};
use trueip_sidecar_test_util::otlp::{Collector, attrs};

const BIN: &str = env!("CARGO_BIN_EXE_trueip-sidecar");

/// The span of one connection.
const CONNECTION_SPAN: &str = "trueip.connection";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sidecar(port: u16, app: SocketAddr, endpoint: &str, protocol: &str) -> Child {
    sidecar_in(port, app, endpoint, protocol, "proxy-v2")
}

fn sidecar_in(port: u16, app: SocketAddr, endpoint: &str, protocol: &str, mode: &str) -> Child {
    let child = Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &app.to_string(),
        ])
        .args(["--mode", mode, "--trusted", "127.0.0.0/8"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env("K8S_POD_NAME", "shop-7f9c")
        .env("K8S_NAMESPACE_NAME", "shop")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn send(port: u16, bytes: &[u8]) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(bytes).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::io::Read::read_to_end(&mut c, &mut Vec::new());
}

fn run(grpc: bool) {
    let (received, collector) = Collector::start(grpc);
    let (endpoint, protocol) = if grpc {
        (format!("http://{collector}"), "grpc")
    } else {
        (format!("http://{collector}"), "http/protobuf")
    };
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in app.incoming() {
            let _ = std::io::Read::read_to_end(&mut s.unwrap(), &mut Vec::new());
        }
    });
    let port = free_port();
    let mut child = sidecar(port, app_addr, &endpoint, protocol);

    send(
        port,
        b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nhello",
    );
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AUTHORITY, b"shop.example".to_vec());
    tlvs.push(kind::UNIQUE_ID, b"req-42".to_vec());
    tlvs.push(kind::AWS, [&[0x01][..], b"vpce-0123456789abcdef0"].concat());
    let v2 = Header {
        version: Version::V2,
        command: PpCommand::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: "[2001:db8::7]:40000".parse().unwrap(),
            destination: "[2001:db8::1]:8443".parse().unwrap(),
        },
        tlvs,
    };
    send(port, &[v2.to_v2(true).unwrap().as_slice(), b"hi"].concat());
    send(port, b"GET / HTTP/1.1\r\n\r\n");
    // A load balancer on a dual-stack socket names IPv4 clients IPv4-mapped.
    send(
        port,
        b"PROXY TCP6 ::ffff:203.0.113.9 ::ffff:198.51.100.1 51235 443\r\nyo",
    );

    let spans = received.wait_for_named(CONNECTION_SPAN, 5);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let conns: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.name == "trueip.connection")
        .map(|(r, s)| (r, attrs(&s.attributes), s))
        .collect();
    let find = |key: &str, value: &str| {
        conns
            .iter()
            .find(|(_, a, _)| a.get(key).map(String::as_str) == Some(value))
            .unwrap_or_else(|| panic!("no span with {key}={value}: {conns:#?}"))
    };
    let (resource, v1, span) = find("trueip.proxy.version", "1");
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("trueip-sidecar")
    );
    assert_eq!(
        resource.get("k8s.pod.name").map(String::as_str),
        Some("shop-7f9c")
    );
    assert_eq!(
        resource.get("k8s.namespace.name").map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        resource.get("deployment.environment").map(String::as_str),
        Some("test")
    );
    assert_eq!(span.kind, 2, "SERVER");
    for (k, v) in [
        ("client.address", "203.0.113.7"),
        ("client.port", "51234"),
        ("server.address", "198.51.100.1"),
        ("server.port", "443"),
        ("network.peer.address", "127.0.0.1"),
        ("network.transport", "tcp"),
        ("trueip.proxy.command", "proxy"),
        ("trueip.restore.mode", "proxy-v2"),
        ("trueip.restore.outcome", "restored"),
        ("trueip.bytes.to_app", "5"),
    ] {
        assert_eq!(v1.get(k).map(String::as_str), Some(v), "{k} in {v1:?}");
    }
    let (_, v2, _) = find("trueip.proxy.version", "2");
    for (k, v) in [
        ("client.address", "2001:db8::7"),
        ("client.port", "40000"),
        ("server.address", "2001:db8::1"),
        ("trueip.tlv.authority", "shop.example"),
        ("trueip.tlv.unique_id", "req-42"),
        ("trueip.tlv.aws_vpce_id", "vpce-0123456789abcdef0"),
    ] {
        assert_eq!(v2.get(k).map(String::as_str), Some(v), "{k} in {v2:?}");
    }
    // Canonical: an IPv4-mapped address is the IPv4 one.
    let (_, mapped, _) = find("client.port", "51235");
    for (k, v) in [
        ("client.address", "203.0.113.9"),
        ("server.address", "198.51.100.1"),
    ] {
        assert_eq!(
            mapped.get(k).map(String::as_str),
            Some(v),
            "{k} in {mapped:?}"
        );
    }
    // The start-up probe's connect-and-close is a span too (closed_before_header).
    let rejected = conns
        .iter()
        .filter_map(|(_, _, s)| s.status.as_ref().filter(|st| st.code == 2))
        .map(|st| st.message.as_str())
        .collect::<Vec<_>>();
    assert!(
        rejected.contains(&"missing_header"),
        "the rejected connection's span has status ERROR with its reason: {rejected:?}"
    );
}

#[test]
fn spans_over_grpc() {
    run(true);
}

#[test]
fn spans_over_http_protobuf() {
    run(false);
}

/// `mode: http`: a request with a `traceparent` gets a span in the caller's trace (child of the
/// caller's span, linked to the connection's span), and the app receives a `traceparent` that
/// names that span, so the app's own spans join the same trace.
#[test]
fn http_requests_join_the_callers_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00f067aa0ba902b7";
    let (received, collector) = Collector::start(false);
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in app.incoming() {
            let mut s = s.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if std::io::Read::read(&mut s, &mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = seen_tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let port = free_port();
    let mut child = sidecar_in(
        port,
        app_addr,
        &format!("http://{collector}"),
        "http/protobuf",
        "http",
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(
        format!(
            "PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nGET /cart HTTP/1.1\r\nHost: shop\r\n\
             traceparent: 00-{TRACE}-{CALLER}-01\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut c, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let app_head = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let spans = received.wait_for_named("trueip.request", 1);
    received.wait_for_named(CONNECTION_SPAN, 1);
    let spans = [spans, received.spans()].concat();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let (_, request) = spans
        .iter()
        .find(|(_, s)| s.name == "trueip.request")
        .unwrap();
    assert_eq!(hex(&request.trace_id), TRACE, "the caller's trace");
    assert_eq!(
        hex(&request.parent_span_id),
        CALLER,
        "a child of the caller's span"
    );
    assert_eq!(request.kind, 2, "SERVER");
    let a = attrs(&request.attributes);
    assert_eq!(
        a.get("http.request.method").map(String::as_str),
        Some("GET")
    );
    assert_eq!(a.get("url.path").map(String::as_str), Some("/cart"));
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("200")
    );
    let connection = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| {
            s.name == "trueip.connection"
                && attrs(&s.attributes)
                    .get("trueip.restore.mode")
                    .map(String::as_str)
                    == Some("http")
                && attrs(&s.attributes)
                    .get("client.address")
                    .map(String::as_str)
                    == Some("203.0.113.7")
        })
        .expect("the connection's span");
    assert!(
        request
            .links
            .iter()
            .any(|l| l.span_id == connection.span_id),
        "linked to the connection's span: {:?}",
        request.links
    );
    // The app is told the request span as its parent, in the same trace.
    let traceparent = app_head
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent reached the app: {app_head}"));
    assert_eq!(
        traceparent,
        format!("00-{TRACE}-{}-01", hex(&request.span_id)),
        "{app_head}"
    );
    assert!(
        app_head.contains("x-forwarded-for: 203.0.113.7"),
        "{app_head}"
    );
}
