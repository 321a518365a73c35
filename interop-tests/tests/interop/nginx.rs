//! nginx from `examples/nginx/nginx.conf` behind HAProxy: what its access log shows without
//! trueip (the load balancer) and with the sidecar re-emitting a clean header (the client).

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{
    Family, Topology, curl,
    haproxy::{self, Route, SendProxy},
    nginx::{self, Nginx, logged_client, logged_remote_addr},
    sidecar,
};
use trueip_test_kit::{Need, prereq::require};

use crate::{TRUSTED_LB, lb_addr, sidecar_addr};

/// The problem trueip solves: HAProxy straight to nginx, and nginx logs HAProxy's address.
pub(crate) fn without_trueip_nginx_logs_the_load_balancer() -> Result<()> {
    require(&[Need::Haproxy, Need::Nginx, Need::Curl])?;
    let topo = Topology::new()?;
    let nginx = Nginx::start(&topo, None)?;
    let routes = Family::BOTH.map(|family| Route {
        bind: lb_addr(family),
        server: SocketAddr::new(family.pod(), nginx::PLAIN_PORT),
        send_proxy: SendProxy::Off,
    });
    let _haproxy = haproxy::start(&topo, &routes)?;
    for family in Family::BOTH {
        let path = format!("/without-trueip-{family}");
        let response = curl::get(&topo.client, lb_addr(family), &path, false)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let line = nginx.access_line(&path)?;
        ensure!(
            logged_remote_addr(&line) == Some(family.lb_back()),
            "{family}: expected nginx to log the load balancer {}: {line}",
            family.lb_back()
        );
    }
    Ok(())
}

pub(crate) fn send_proxy_v2_through_proxy_v1_mode_nginx_logs_the_client() -> Result<()> {
    nginx_logs_the_client(SendProxy::V2, "proxy-v1")
}

pub(crate) fn send_proxy_v1_through_proxy_v2_mode_nginx_logs_the_client() -> Result<()> {
    nginx_logs_the_client(SendProxy::V1, "proxy-v2")
}

/// Client → HAProxy (`send_proxy`) → sidecar `--mode <mode>` → nginx `proxy_protocol`, over
/// IPv4 and IPv6: nginx logs curl's own address and port, never the load balancer's.
fn nginx_logs_the_client(send_proxy: SendProxy, mode: &str) -> Result<()> {
    require(&[Need::Haproxy, Need::Nginx, Need::Curl, Need::Sidecar])?;
    let topo = Topology::new()?;
    let nginx = Nginx::start(&topo, None)?;
    let mut sidecars = Vec::new();
    let mut routes = Vec::new();
    for family in Family::BOTH {
        let listen = sidecar_addr(family);
        let name = format!("sidecar-{family}");
        let launch = sidecar::launch(&name, listen, nginx::PROXY_PROTOCOL, mode, &TRUSTED_LB)?;
        sidecars.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
        routes.push(Route {
            bind: lb_addr(family),
            server: listen,
            send_proxy,
        });
    }
    let _haproxy = haproxy::start(&topo, &routes)?;

    for family in Family::BOTH {
        let path = format!("/{mode}-{family}");
        let response = curl::get(&topo.client, lb_addr(family), &path, false)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let client = response.local.context("curl reported no local address")?;
        ensure!(
            client.ip() == family.client(),
            "{family}: curl ran from {client}"
        );
        let line = nginx.proxy_protocol_line(&path)?;
        ensure!(
            logged_client(&line) == Some(client),
            "{family}: expected nginx to log the client {client}: {line}"
        );
        ensure!(
            !line.contains(&family.lb_back().to_string()),
            "{family}: the load balancer's address leaked into the log: {line}"
        );
        ensure!(
            response.body.contains(&family.client().to_string()),
            "{family}: nginx answered {:?}",
            response.body
        );
    }
    Ok(())
}

/// Client → HAProxy `send-proxy-v2` → sidecar `--mode http` → nginx with `realip` trusting
/// `X-Forwarded-For` from loopback, over IPv4 and IPv6: nginx's stock `combined` log shows
/// curl's address, never the load balancer's, and never the `X-Forwarded-For` curl forged.
pub(crate) fn http_mode_nginx_realip_logs_the_client() -> Result<()> {
    require(&[Need::Haproxy, Need::Nginx, Need::Curl, Need::Sidecar])?;
    let topo = Topology::new()?;
    let nginx = Nginx::start(&topo, None)?;
    let mut sidecars = Vec::new();
    let mut routes = Vec::new();
    for family in Family::BOTH {
        let listen = sidecar_addr(family);
        let name = format!("sidecar-{family}");
        let launch = sidecar::launch(&name, listen, nginx::REALIP, "http", &TRUSTED_LB)?;
        sidecars.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
        routes.push(Route {
            bind: lb_addr(family),
            server: listen,
            send_proxy: SendProxy::V2,
        });
    }
    let _haproxy = haproxy::start(&topo, &routes)?;

    for family in Family::BOTH {
        let path = format!("/http-{family}");
        let response = curl::get_url(
            &topo.client,
            &["--header", "X-Forwarded-For: 198.51.100.66"],
            &format!("http://{}{path}", lb_addr(family)),
        )?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let line = nginx.realip_line(&path)?;
        ensure!(
            logged_remote_addr(&line) == Some(family.client()),
            "{family}: expected nginx to log the client {}: {line}",
            family.client()
        );
        ensure!(
            !line.contains("198.51.100.66"),
            "{family}: the forged X-Forwarded-For reached nginx: {line}"
        );
        ensure!(
            response.body.trim() == format!("hello {}", family.client()),
            "{family}: nginx answered {:?}",
            response.body
        );
    }
    Ok(())
}
