//! UDP listeners end to end: a load balancer that puts a PROXY v2 header in front of every
//! datagram (our own encoder: no Debian package sends PROXY v2 over UDP) → `trueip-sidecar
//! --protocol udp --reply-header` → an unmodified UDP echo app, over IPv4 and IPv6; the client
//! gets its echo back through the load balancer.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{
    Family, Topology,
    agent::Agent,
    app::fnv1a,
    sidecar,
    udp::{self, HeaderLb, UdpEchoApp, header, udp_header},
};
use trueip_proxy_header::Transport;
use trueip_test_kit::{Cgroup, Need, Netns, Proc, prereq::require};

use crate::{LB_PORT, TIMEOUT, TRUSTED_LB, sidecar_addr};

/// The UDP app's port, on both loopback addresses.
const APP_PORT: u16 = 9053;
/// The sidecar's `/metrics` port in the pod.
const METRICS_PORT: u16 = 9902;

/// The app's address for `family`.
fn app_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.loopback(), APP_PORT)
}

/// The sidecar's admin endpoint.
fn metrics_addr() -> SocketAddr {
    SocketAddr::new(Family::V4.pod(), METRICS_PORT)
}

/// The load balancer's UDP frontend for `family`.
fn lb_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.lb_front(), LB_PORT)
}

/// A UDP sidecar for `family` in the pod (in `cgroup` when given), with `flags` added; waits
/// until it serves `/metrics` (bound after every listener).
fn start_sidecar(
    topo: &Topology,
    family: Family,
    mode: &str,
    cgroup: Option<&Cgroup>,
    flags: &[&str],
) -> Result<Proc> {
    let name = format!("sidecar-udp-{mode}-{family}");
    let mut launch = sidecar::launch(
        &name,
        sidecar_addr(family),
        app_addr(family),
        mode,
        &TRUSTED_LB,
    )?
    .args(["--protocol", "udp", "--reply-header"])
    .args(["--metrics-listen".to_owned(), metrics_addr().to_string()])
    .args(flags);
    if let Some(cgroup) = cgroup {
        launch = launch.cgroup(cgroup);
    }
    sidecar::start(topo, &topo.pod, launch, metrics_addr())
}

/// The load balancer for `family`, relaying to the sidecar.
fn start_lb(topo: &Topology, family: Family) -> Result<HeaderLb> {
    HeaderLb::start(
        &topo.lb,
        lb_addr(family),
        family.lb_back(),
        sidecar_addr(family),
    )
}

/// Sends a few datagrams of different sizes from the client through the load balancer; each
/// echo must come back intact. Returns the client's address and the payloads' hashes.
fn exchange_all(client: &Netns, family: Family) -> Result<(SocketAddr, Vec<u64>)> {
    let socket = udp::client_socket(client, lb_addr(family))?;
    let local = socket.local_addr()?;
    let mut hashes = Vec::new();
    for size in [5, 1200, 60_000] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        socket.send(&payload)?;
        let mut buf = vec![0u8; 65_536];
        let len = socket
            .recv(&mut buf)
            .with_context(|| format!("{family}: no echo of {size} bytes"))?;
        ensure!(
            buf[..len] == payload[..],
            "{family}: echo of {size} bytes came back as {len} different bytes"
        );
        hashes.push(fnv1a(&payload));
    }
    Ok((local, hashes))
}

/// `none`: the payload reaches the app without its header and the echo reaches the client; the
/// app sees the sidecar's flow socket (nothing restores the client in this mode).
pub(crate) fn udp_none_mode_relays_datagrams_both_ways() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let mut app = UdpEchoApp::start(&topo, &topo.pod, &Family::BOTH.map(app_addr), None, false)?;
    let mut seen = 0;
    for family in Family::BOTH {
        let _sidecar = start_sidecar(&topo, family, "none", None, &[])?;
        let _lb = start_lb(&topo, family)?;
        let (_client, hashes) = exchange_all(&topo.client, family)?;
        seen += hashes.len();
        let got = app.wait_datagrams(seen, TIMEOUT)?;
        for (d, hash) in got[seen - hashes.len()..].iter().zip(hashes) {
            ensure!(d.fnv1a == hash, "{family}: the app got other bytes: {d:?}");
            ensure!(
                d.from.ip() == family.loopback(),
                "{family}: in mode none the app should see the sidecar: {d:?}"
            );
        }
    }
    Ok(())
}

/// `proxy-v2`: every datagram reaches the app behind a clean v2 header naming the client, and
/// the app's echo (payload only) reaches the client.
pub(crate) fn udp_proxy_v2_mode_app_reads_the_client_from_a_clean_header() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let mut app = UdpEchoApp::start(&topo, &topo.pod, &Family::BOTH.map(app_addr), None, true)?;
    let mut seen = 0;
    for family in Family::BOTH {
        let _sidecar = start_sidecar(&topo, family, "proxy-v2", None, &["--crc32c"])?;
        let _lb = start_lb(&topo, family)?;
        let (client, hashes) = exchange_all(&topo.client, family)?;
        seen += hashes.len();
        let got = app.wait_datagrams(seen, TIMEOUT)?;
        for (d, hash) in got[seen - hashes.len()..].iter().zip(hashes) {
            ensure!(
                d.header == Some(Some(client)) && d.fnv1a == hash,
                "{family}: the client is {client}, the app saw {d:?}"
            );
        }
    }
    Ok(())
}

/// `ebpf`: the app's own `recvfrom()` returns the client, and its `sendto(client)` reaches the
/// client (through the sidecar), with `trueip-agent --udp` and the app in the pod's cgroup.
pub(crate) fn udp_ebpf_mode_recvfrom_returns_the_client_and_replies_reach_it() -> Result<()> {
    require(&[Need::Sidecar, Need::Agent])?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let mut app = UdpEchoApp::start(
        &topo,
        &topo.pod,
        &Family::BOTH.map(app_addr),
        Some(&cgroup),
        false,
    )?;
    let agent = Agent::start_with(&topo, &["--udp"])?;
    let socket = agent.socket().display().to_string();
    let mut seen = 0;
    for family in Family::BOTH {
        let _sidecar = start_sidecar(
            &topo,
            family,
            "ebpf",
            Some(&cgroup),
            &["--agent-socket", &socket],
        )?;
        let _lb = start_lb(&topo, family)?;
        let (client, hashes) = exchange_all(&topo.client, family)?;
        seen += hashes.len();
        let got = app.wait_datagrams(seen, TIMEOUT)?;
        for (d, hash) in got[seen - hashes.len()..].iter().zip(hashes) {
            ensure!(
                d.from == client && d.fnv1a == hash,
                "{family}: the client is {client}, the app's recvfrom() returned {d:?}\nagent:\n{}",
                agent.log_tail()
            );
        }
    }
    Ok(())
}

/// An agent started without `--udp` refuses `GET-MAP udp`: the sidecar does not start (no
/// fallback configured) and says why, instead of writing entries no hook would read.
pub(crate) fn udp_ebpf_mode_refuses_an_agent_without_udp_hooks() -> Result<()> {
    require(&[Need::Sidecar, Need::Agent])?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let agent = Agent::start(&topo)?;
    let socket = agent.socket().display().to_string();
    let mut sidecar = sidecar::launch(
        "sidecar-udp-no-hooks",
        sidecar_addr(Family::V4),
        app_addr(Family::V4),
        "ebpf",
        &TRUSTED_LB,
    )?
    .args(["--protocol", "udp", "--agent-socket", &socket])
    .netns(&topo.pod)
    .cgroup(&cgroup)
    .spawn(topo.dir())?;
    let status = sidecar.wait_exit(TIMEOUT);
    let log = sidecar.log();
    ensure!(
        status.is_some_and(|s| !s.success()) && log.contains("start it with --udp"),
        "the sidecar should refuse to start ({status:?}):\n{log}"
    );
    Ok(())
}

/// Bad datagrams — a truncated header, a CRC32c mismatch, a TCP family, a v1 line, a header from
/// an untrusted source, no header at all — never reach the app, and `/metrics` counts each by
/// reason; a good datagram sent after them still does.
pub(crate) fn udp_bad_datagrams_are_dropped_and_counted_by_reason() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let family = Family::V4;
    let mut app = UdpEchoApp::start(&topo, &topo.pod, &[app_addr(family)], None, false)?;
    let _sidecar = start_sidecar(&topo, family, "none", None, &[])?;
    let client: SocketAddr = SocketAddr::new(family.client(), 40_000);
    let front = lb_addr(family);
    let good = [udp_header(client, front), b"good".to_vec()].concat();
    let mut bad_crc = good.clone();
    bad_crc[udp_header(client, front).len() - 1] ^= 1;
    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated", good[..20].to_vec()),
        ("crc32c_mismatch", bad_crc),
        (
            "stream_in_datagram",
            [header(Transport::Stream, client, front), b"tcp".to_vec()].concat(),
        ),
        (
            "v1_in_datagram",
            b"PROXY TCP4 203.0.113.7 203.0.113.1 40000 80\r\nv1".to_vec(),
        ),
        ("missing_header", b"\x00\x01 no header".to_vec()),
    ];
    let lb_side = SocketAddr::new(family.lb_back(), 0);
    for (_, datagram) in &cases {
        udp::send_raw(&topo.lb, lb_side, sidecar_addr(family), datagram)?;
    }
    // From the client itself, past the load balancer: not a trusted source.
    udp::send_raw(
        &topo.client,
        SocketAddr::new(family.client(), 0),
        sidecar_addr(family),
        &good,
    )?;
    udp::send_raw(&topo.lb, lb_side, sidecar_addr(family), &good)?;
    let got = app.wait_datagrams(1, TIMEOUT)?;
    let dropped = "trueip_udp_datagrams_dropped_total";
    let text = trueip_test_kit::run::wait_for("every drop to be counted", TIMEOUT, || {
        let text = udp::metrics(&topo.pod, metrics_addr())?;
        let all = cases
            .iter()
            .map(|(reason, _)| *reason)
            .chain(["untrusted_source"])
            .all(|reason| udp::metric(&text, dropped, &[("reason", reason)]) == 1);
        Ok(all.then_some(text))
    })?;
    ensure!(
        got.len() == 1 && app.datagrams().len() == 1 && got[0].fnv1a == fnv1a(b"good"),
        "only the good datagram may reach the app: {:?}\n{text}",
        app.datagrams()
    );
    ensure!(
        udp::metric(
            &text,
            "trueip_udp_datagrams_total",
            &[("direction", "to_app")]
        ) == 1,
        "{text}"
    );
    Ok(())
}

/// With `--max-flows 4`, ten clients: the table never holds more than four flows, six are
/// evicted (counted), and the newest client is still served.
pub(crate) fn udp_flow_table_exhaustion_evicts_the_idle_longest() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let family = Family::V6;
    let mut app = UdpEchoApp::start(&topo, &topo.pod, &[app_addr(family)], None, false)?;
    let _sidecar = start_sidecar(&topo, family, "none", None, &["--max-flows", "4"])?;
    let lb_side = SocketAddr::new(family.lb_back(), 0);
    for port in 0..10u16 {
        let client = SocketAddr::new(family.client(), 50_000 + port);
        let datagram = [udp_header(client, lb_addr(family)), vec![port as u8]].concat();
        udp::send_raw(&topo.lb, lb_side, sidecar_addr(family), &datagram)?;
        // In order: each flow is idle longer than the next.
        app.wait_datagrams(usize::from(port) + 1, TIMEOUT)?;
    }
    let text = udp::metrics(&topo.pod, metrics_addr())?;
    let flows = |name, labels: &[(&str, &str)]| udp::metric(&text, name, labels);
    ensure!(
        flows("trueip_udp_flows_closed_total", &[("cause", "evicted")]) == 6
            && flows("trueip_udp_flows_active", &[]) == 4,
        "{text}"
    );
    Ok(())
}
