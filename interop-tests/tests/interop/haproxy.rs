//! HAProxy `send-proxy-v2` and `send-proxy` (v1) through the sidecar in `--mode none` to the
//! recording app: the header is stripped and every payload byte arrives, in both directions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Result, ensure};
use trueip_interop_tests::{
    Family, Topology,
    app::{EchoApp, exchange, fnv1a, random_bytes},
    haproxy::{self, Route, SendProxy},
    sidecar::{self, REJECT_REASON},
};
use trueip_test_kit::{Need, prereq::require};

use crate::{TIMEOUT, TRUSTED_LB, lb_addr, sidecar_addr};

/// The echo app, behind the sidecar.
const APP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000);

/// 1 MiB: many segments, so reassembly and ordering are exercised.
const PAYLOAD_LEN: usize = 1 << 20;

pub(crate) fn send_proxy_v2_payload_reaches_the_app_intact() -> Result<()> {
    payload_reaches_the_app_intact(SendProxy::V2)
}

pub(crate) fn send_proxy_v1_payload_reaches_the_app_intact() -> Result<()> {
    payload_reaches_the_app_intact(SendProxy::V1)
}

/// Client → HAProxy (`send_proxy`) → sidecar `--mode none` → app, over IPv4 and IPv6: the app
/// reads exactly the client's random payload (same length and checksum: no header bytes,
/// nothing lost or reordered), sees the FIN, and its echo reaches the client intact.
fn payload_reaches_the_app_intact(send_proxy: SendProxy) -> Result<()> {
    require(&[Need::Haproxy, Need::Sidecar])?;
    let topo = Topology::new()?;
    let mut app = EchoApp::start(&topo, &topo.pod, &[APP], None)?;
    let mut sidecars = Vec::new();
    let mut routes = Vec::new();
    for family in Family::BOTH {
        let listen = sidecar_addr(family);
        let launch = sidecar::launch(
            &format!("sidecar-{family}"),
            listen,
            APP,
            "none",
            &TRUSTED_LB,
        )?;
        sidecars.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
        routes.push(Route {
            bind: lb_addr(family),
            server: listen,
            send_proxy,
        });
    }
    let _haproxy = haproxy::start(&topo, &routes)?;

    for (i, family) in Family::BOTH.into_iter().enumerate() {
        let payload = random_bytes(PAYLOAD_LEN)?;
        let reply = exchange(&topo.client, lb_addr(family), &payload)?;
        let served = app.wait_served(i + 1, TIMEOUT)?;
        let got = &served[i];
        ensure!(
            got.bytes == payload.len() as u64 && got.fnv1a == fnv1a(&payload),
            "{family}: the app received {} bytes (checksum {:016x}), the client sent {} ({:016x})",
            got.bytes,
            got.fnv1a,
            payload.len(),
            fnv1a(&payload)
        );
        ensure!(
            got.clean_eof,
            "{family}: the app did not see the client's FIN"
        );
        ensure!(
            got.accept.is_some_and(|peer| peer.ip().is_loopback()),
            "{family}: in mode none the app's peer is the sidecar on loopback: {got:?}"
        );
        ensure!(
            !reply.reset && reply.bytes == payload,
            "{family}: the echo was {} bytes ({:016x}, reset: {}), the payload {} ({:016x})",
            reply.bytes.len(),
            fnv1a(&reply.bytes),
            reply.reset,
            payload.len(),
            fnv1a(&payload)
        );
    }
    Ok(())
}

/// HAProxy's header arrives from an address the sidecar does not trust: the connection is
/// closed without a byte of reply, the app never sees it, and the sidecar logs why and who.
pub(crate) fn header_from_an_untrusted_load_balancer_is_rejected() -> Result<()> {
    require(&[Need::Haproxy, Need::Sidecar])?;
    let topo = Topology::new()?;
    let app = EchoApp::start(&topo, &topo.pod, &[APP], None)?;
    let listen = sidecar_addr(Family::V4);
    let launch = sidecar::launch("sidecar", listen, APP, "none", &["10.0.0.0/8"])?;
    let sidecar = sidecar::start(&topo, &topo.pod, launch, listen)?;
    let route = Route {
        bind: lb_addr(Family::V4),
        server: listen,
        send_proxy: SendProxy::V2,
    };
    let _haproxy = haproxy::start(&topo, &[route])?;

    let reply = exchange(&topo.client, route.bind, b"GET / HTTP/1.0\r\n\r\n")?;
    let peer = format!("peer={}:", Family::V4.lb_back());
    let line = sidecar.wait_for_log(&[REJECT_REASON, &peer], TIMEOUT)?;
    ensure!(
        reply.bytes.is_empty(),
        "the client got a reply: {:?}",
        String::from_utf8_lossy(&reply.bytes)
    );
    ensure!(
        app.accepted().is_empty(),
        "the app accepted a rejected client: {:?}",
        app.accepted()
    );
    eprintln!("sidecar: {line}");
    Ok(())
}
