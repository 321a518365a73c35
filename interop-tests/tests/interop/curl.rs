//! curl `--haproxy-protocol` (a PROXY v1 header naming curl's own connection) straight to the
//! sidecar, routed through the LB namespace without a proxy: trusted and untrusted sources.

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{
    Family, Topology, curl,
    nginx::{self, Nginx, logged_client},
    sidecar::{self, REJECT_REASON},
};
use trueip_test_kit::{Need, prereq::require};

use crate::{TIMEOUT, TRUSTED_LB, sidecar_addr};

/// The client's subnets, trusted as if the client were the load balancer.
const TRUSTED_CLIENTS: [&str; 2] = ["203.0.113.0/24", "2001:db8:c::/64"];

/// With the client's subnet trusted, curl's header is honoured: nginx logs curl's address and
/// port, over IPv4 and IPv6.
pub(crate) fn curl_haproxy_protocol_to_proxy_v1_mode_nginx_logs_curl() -> Result<()> {
    require(&[Need::Nginx, Need::Curl, Need::Sidecar])?;
    let topo = Topology::new()?;
    let nginx = Nginx::start(&topo, None)?;
    let mut sidecars = Vec::new();
    for family in Family::BOTH {
        let listen = sidecar_addr(family);
        let name = format!("sidecar-{family}");
        let launch = sidecar::launch(
            &name,
            listen,
            nginx::PROXY_PROTOCOL,
            "proxy-v1",
            &TRUSTED_CLIENTS,
        )?;
        sidecars.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
    }
    for family in Family::BOTH {
        let path = format!("/curl-{family}");
        let response = curl::get(&topo.client, sidecar_addr(family), &path, true)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let client = response.local.context("curl reported no local address")?;
        let line = nginx.proxy_protocol_line(&path)?;
        ensure!(
            logged_client(&line) == Some(client) && client.ip() == family.client(),
            "{family}: expected nginx to log curl's {client}: {line}"
        );
    }
    Ok(())
}

/// The same header from a source outside `--trusted` (only the LB is trusted): curl's
/// connection is closed without a response, nginx logs nothing, and the sidecar logs the
/// reason and the peer.
pub(crate) fn curl_haproxy_protocol_from_an_untrusted_source_is_rejected() -> Result<()> {
    require(&[Need::Nginx, Need::Curl, Need::Sidecar])?;
    let topo = Topology::new()?;
    let mut nginx = Nginx::start(&topo, None)?;
    let listen = sidecar_addr(Family::V4);
    let launch = sidecar::launch(
        "sidecar",
        listen,
        nginx::PROXY_PROTOCOL,
        "proxy-v1",
        &TRUSTED_LB,
    )?;
    let sidecar = sidecar::start(&topo, &topo.pod, launch, listen)?;

    let response = curl::get(&topo.client, listen, "/untrusted", true)?;
    ensure!(response.http_code == 0, "curl got a response: {response:?}");
    let peer = format!("peer={}:", Family::V4.client());
    let line = sidecar.wait_for_log(&[REJECT_REASON, &peer], TIMEOUT)?;
    nginx.proc().ensure_running()?;
    ensure!(
        nginx.proxy_protocol_log().is_empty(),
        "nginx served the rejected client: {}",
        nginx.proxy_protocol_log()
    );
    eprintln!("curl: {} / sidecar: {line}", response.stderr);
    Ok(())
}
