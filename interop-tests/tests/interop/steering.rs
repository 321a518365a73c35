//! Steering end to end: the app itself listens on its own port in the pod (`[::]:8080` for the
//! echo app, nginx on its usual `8082`), no iptables; `trueip-agent`'s sk_lookup program hands the
//! pod's connections to that port from outside the pod to a `--steer` sidecar listening on
//! another port, which restores the client with the eBPF mode and connects to the app over
//! loopback — which the program leaves alone.
//!
//! Checked: the app's `accept()`/`getpeername()` and nginx's default log show the client behind
//! HAProxy `send-proxy-v2`; a probe without a header from the LB's namespace (a kubelet probe)
//! gets through the sidecar (`--header optional`); with the sidecar stopped, connections fall
//! through to the app (fail-open).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, ensure};
use trueip_interop_tests::{
    Family, Topology,
    agent::Agent,
    app::{EchoApp, exchange},
    curl,
    haproxy::{self, Route, SendProxy},
    nginx::{self, Nginx, logged_remote_addr},
    sidecar,
};
use trueip_test_kit::{Cgroup, Need, Proc, prereq::require};

use crate::{TIMEOUT, lb_addr};

/// The app's own port: the port the load balancer targets.
const APP_PORT: u16 = 8080;

/// Where the steering sidecars listen, IPv4 and IPv6 (any free ports: connections reach them by
/// steering; `[::]` is dual-stack, the agent prefers the IPv4 listener for IPv4 connections).
const STEER_LISTEN: [&str; 2] = ["0.0.0.0:15008", "[::]:15009"];

/// What every test here needs.
const NEEDS: [Need; 3] = [Need::Haproxy, Need::Sidecar, Need::Agent];

/// The sidecar's log line for a connection served without a header.
const NO_HEADER: &str = "serving without a header";

/// A v4-mapped address as the IPv4 address it stands for.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Per family, a `--steer --mode ebpf --header optional` sidecar in the pod's cgroup for the app
/// on that family's loopback, `<loopback>:<app_port>` (an app may have one socket per family, as
/// nginx does: an IPv6 client can only be shown to an IPv6 socket), trusting the LB's pod-side
/// addresses; and HAProxy `send-proxy-v2` from `<LB>:80` to `<pod>:<app_port>`. The agent
/// steers IPv4 connections to the IPv4 listener and IPv6 ones to the dual-stack one. Returns the
/// sidecars (IPv4, IPv6) and HAProxy, which must stay alive.
fn steered_path(
    topo: &Topology,
    cgroup: &Cgroup,
    agent: &Agent,
    app_port: u16,
) -> Result<([Proc; 2], Proc)> {
    let trusted = Family::BOTH.map(|family| {
        let len = if family == Family::V4 { 32 } else { 128 };
        format!("{}/{len}", family.lb_back())
    });
    let mut sidecars = Vec::new();
    for (family, listen) in Family::BOTH.into_iter().zip(STEER_LISTEN) {
        let listen: SocketAddr = listen.parse()?;
        let upstream = SocketAddr::new(family.loopback(), app_port);
        let launch = sidecar::launch(
            &format!("sidecar-steer-{family}"),
            listen,
            upstream,
            "ebpf",
            &[&trusted[0], &trusted[1]],
        )?
        .args(["--steer", "--header", "optional"])
        // With `header: optional` a header later than `detect_timeout` (default 1 s) makes the
        // sidecar take the connection for a silent header-less one and pass the header on to
        // the app. The one failure seen here (nginx answered 400, on a machine at load 10-12)
        // fits that. These tests have no server-speaks-first clients: waiting longer costs
        // nothing.
        .args(["--detect-timeout", "5s"])
        .args(["--agent-socket".as_ref(), agent.socket().as_os_str()])
        .cgroup(cgroup);
        sidecars.push(sidecar::start(topo, &topo.pod, launch, listen)?);
    }
    let routes = Family::BOTH.map(|family| Route {
        bind: lb_addr(family),
        server: SocketAddr::new(family.pod(), app_port),
        send_proxy: SendProxy::V2,
    });
    let lb = haproxy::start(topo, &routes)?;
    let sidecars: [Proc; 2] = sidecars
        .try_into()
        .map_err(|_| anyhow::anyhow!("one sidecar per family"))?;
    Ok((sidecars, lb))
}

/// The echo app listens on `[::]:8080` itself; through HAProxy its `accept()` and
/// `getpeername()` return the client, IPv4 and IPv6. A header-less probe from the LB's namespace
/// is served by the sidecar; with the sidecar stopped, the same probe reaches the app directly.
pub(crate) fn steering_hands_lb_connections_to_the_sidecar_and_the_app_sees_the_client()
-> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let app_addr = SocketAddr::new(IpAddr::from([0u16; 8]), APP_PORT);
    let mut app = EchoApp::start(&topo, &topo.pod, &[app_addr], Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let (mut sidecars, _lb) = steered_path(&topo, &cgroup, &agent, APP_PORT)?;

    let mut served = 0;
    for family in Family::BOTH {
        let reply = exchange(&topo.client, lb_addr(family), b"who am I?")?;
        ensure!(reply.bytes == b"who am I?", "{family}: echo {reply:?}");
        served += 1;
        let seen = app.wait_served(served, TIMEOUT)?;
        let got = &seen[served - 1];
        ensure!(
            got.accept.map(unmapped) == Some(reply.local)
                && got.getpeername.map(unmapped) == Some(reply.local),
            "{family}: the client is {}, the app saw {got:?}\nagent:\n{}",
            reply.local,
            agent.log_tail()
        );
    }

    // A kubelet-like probe: no header, from the LB's namespace straight to the pod's port. It
    // goes through the sidecar, which has no client to restore: the app sees the sidecar's
    // loopback address, not the prober's.
    for (family, sidecar) in Family::BOTH.into_iter().zip(&sidecars) {
        let before = sidecar.log().matches(NO_HEADER).count();
        let to = SocketAddr::new(family.pod(), APP_PORT);
        let reply = exchange(&topo.lb, to, b"probe")?;
        ensure!(reply.bytes == b"probe", "{family}: probe echo {reply:?}");
        served += 1;
        let seen = app.wait_served(served, TIMEOUT)?;
        let got = &seen[served - 1];
        ensure!(
            got.accept
                .is_some_and(|a| a.ip().to_canonical().is_loopback()),
            "{family}: the probe reached the app from {got:?}, not through the sidecar"
        );
        ensure!(
            sidecar.log().matches(NO_HEADER).count() > before,
            "{family}: the probe did not go through the sidecar:\n{}",
            sidecar.log_tail()
        );
    }

    // Fail-open: without the sidecar the port is the app's again.
    for sidecar in &mut sidecars {
        sidecar.stop();
    }
    for family in Family::BOTH {
        let to = SocketAddr::new(family.pod(), APP_PORT);
        let reply = exchange(&topo.lb, to, b"direct")?;
        ensure!(
            reply.bytes == b"direct",
            "{family}: with the sidecar stopped: {reply:?}"
        );
        served += 1;
        let seen = app.wait_served(served, TIMEOUT)?;
        ensure!(
            seen[served - 1].accept.map(unmapped) == Some(reply.local),
            "{family}: did not fall through to the app: {:?}",
            seen[served - 1]
        );
    }
    Ok(())
}

/// nginx on its usual port (`listen 8082; listen [::]:8082;`, the example configuration, with
/// its stock `combined` log): through HAProxy and steering, the log shows the client.
pub(crate) fn steering_nginx_on_its_own_port_logs_the_client() -> Result<()> {
    require(&[NEEDS.as_slice(), &[Need::Nginx, Need::Curl]].concat())?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let nginx = Nginx::start(&topo, Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let (sidecars, _lb) = steered_path(&topo, &cgroup, &agent, nginx::PLAIN_PORT)?;

    for (family, sidecar) in Family::BOTH.into_iter().zip(&sidecars) {
        let path = format!("/steer-{family}");
        let response = curl::get(&topo.client, lb_addr(family), &path, false)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let line = nginx.access_line(&path)?;
        ensure!(
            logged_remote_addr(&line) == Some(family.client()),
            "{family}: expected nginx to log the client {}: {line}\nsidecar:\n{}",
            family.client(),
            sidecar.log_tail()
        );
    }
    Ok(())
}
