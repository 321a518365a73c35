//! The transparent restore mode end to end, with no agent and no eBPF: HAProxy
//! `send-proxy-v2` → `trueip-sidecar` (`mode: transparent`, one process with an IPv4 and an
//! IPv6 listener) → unmodified apps on loopback, whose own `accept()` / `getpeername()` return
//! the client because the sidecar connects *from* the client's address.
//!
//! Checked: the echo app and nginx's default log see the client over IPv4 and IPv6 with every
//! byte intact both ways and half-close passed on; the sidecar's policy routing is in the pod's
//! namespace while it runs, survives a crash (SIGKILL), is reused by the restarted sidecar and is
//! gone after SIGTERM; a taken client port is served from another port (`any-port`) or refused
//! (`refuse`) and counted; a `LOCAL` header connects from the sidecar's own address; without
//! CAP_NET_ADMIN the sidecar refuses to start with one actionable line.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use trueip_interop_tests::{
    Family, Topology,
    app::{EchoApp, exchange, fnv1a, random_bytes},
    curl,
    haproxy::{self, Route, SendProxy},
    nginx::{self, Nginx, logged_remote_addr},
};
use trueip_proxy_header::{Addresses, Command as HeaderCommand, Header, Tlvs, Transport, Version};
use trueip_test_kit::{
    Launch, Need, Netns, Proc,
    prereq::{find_program, require, skip, trueip_binary},
    run,
};

use crate::{SIDECAR_PORT, TIMEOUT, lb_addr, sidecar_addr};

/// The echo app's port, on both loopback addresses.
const APP_PORT: u16 = 9000;

/// The sidecar's default routing table (`transparent.table`), as `ip` prints it.
const TABLE: &str = "29810";

/// The sidecar's `/metrics`, inside the pod.
const METRICS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9902);

/// 1 MiB: many segments, so splice and half-close are exercised, not one small copy.
const PAYLOAD_LEN: usize = 1 << 20;

/// What every HAProxy test here needs.
const NEEDS: [Need; 2] = [Need::Haproxy, Need::Sidecar];

/// A sidecar configuration with one `mode: transparent` listener per family on the pod's
/// address, `SIDECAR_PORT`, to `<loopback>:app_port`, trusting the LB, plus `/metrics`.
fn two_family_config(app_port: u16) -> String {
    let mut yaml = String::from("listeners:\n");
    for family in Family::BOTH {
        // Writing to a String cannot fail.
        let _ = write!(
            yaml,
            "  - name: {}\n    listen: '{}'\n    upstream: '{}'\n    mode: transparent\n    \
             trusted_sources: ['{}/{}']\n",
            family_name(family),
            sidecar_addr(family),
            SocketAddr::new(family.loopback(), app_port),
            family.lb_back(),
            if family == Family::V4 { 32 } else { 128 },
        );
    }
    let _ = writeln!(yaml, "metrics_listen: '{METRICS}'\ndrain_timeout: 5s");
    yaml
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

/// `trueip-sidecar --config <name>.yaml` in the pod, started (optionally under `wrapper`, e.g.
/// setpriv) but not waited for.
fn launch<'a>(topo: &Topology, name: &str, yaml: &str, wrapper: &[&str]) -> Result<Launch<'a>> {
    let path = topo.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    let sidecar = trueip_binary("trueip-sidecar")?;
    let launch = match wrapper.split_first() {
        None => Launch::new(name, &sidecar),
        Some((program, args)) => Launch::new(name, program).args(args).args([&sidecar]),
    };
    Ok(launch
        .args(["--config".as_ref(), path.as_os_str()])
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1"))
}

/// Starts the sidecar of `yaml` in the pod and waits until it listens on every `listens`.
fn start(topo: &Topology, name: &str, yaml: &str, listens: &[SocketAddr]) -> Result<Proc> {
    let mut proc = launch(topo, name, yaml, &[])?
        .netns(&topo.pod)
        .spawn(topo.dir())?;
    for &listen in listens {
        proc.wait_listening(&topo.pod, listen, TIMEOUT)?;
    }
    Ok(proc)
}

/// `ip -n <ns> args...`'s output.
fn ip(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(ns.name()).args(args);
    let out = run::output(&mut cmd, TIMEOUT)?;
    // A table that never held a route does not exist: it is empty.
    if String::from_utf8_lossy(&out.stderr).contains("FIB table does not exist") {
        return Ok(String::new());
    }
    ensure!(
        out.status.success(),
        "`ip -n {} {}` failed: {}",
        ns.name(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pod's rules and routes that send loopback replies to trueip's table, both families.
fn policy_routing(ns: &Netns) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for flag in ["-4", "-6"] {
        let rules = ip(ns, &[flag, "rule", "show"])?;
        found.extend(
            rules
                .lines()
                .filter(|l| l.contains(&format!("lookup {TABLE}")))
                .map(|l| format!("{flag} rule {}", l.trim())),
        );
        let routes = ip(ns, &[flag, "route", "show", "table", TABLE])?;
        found.extend(routes.lines().map(|l| format!("{flag} route {}", l.trim())));
    }
    Ok(found)
}

/// Fails unless both families' rule and route are installed exactly once each.
fn ensure_installed(ns: &Netns) -> Result<()> {
    let found = policy_routing(ns)?;
    let expected = [
        "-4 rule 29810:\tfrom 127.0.0.0/8 iif lo lookup 29810",
        "-4 route local default dev lo scope host",
        "-6 rule 29810:\tfrom ::1 iif lo lookup 29810",
        "-6 route local default dev lo metric 1024 pref medium",
    ];
    ensure!(
        found.len() == expected.len()
            && expected.iter().all(|e| found
                .iter()
                .any(|f| f.replace('\t', " ") == e.replace('\t', " "))),
        "the pod's policy routing is not the expected one rule and route per family:\n{}",
        found.join("\n")
    );
    Ok(())
}

/// `/metrics` of the sidecar in `ns`.
fn metrics(ns: &Netns) -> Result<String> {
    ns.run(|| -> Result<String> {
        let mut s = TcpStream::connect_timeout(&METRICS, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: sidecar\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })?
}

/// The value of `metric{...}` whose labels include every one of `labels`; 0 when absent.
fn counter(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// HAProxy `send-proxy-v2` from `<LB>:80` to each family's sidecar listener.
fn haproxy_routes() -> [Route; 2] {
    Family::BOTH.map(|family| Route {
        bind: lb_addr(family),
        server: sidecar_addr(family),
        send_proxy: SendProxy::V2,
    })
}

/// 1 MiB each way over IPv4 and IPv6 through HAProxy: the app's `accept()` and `getpeername()`
/// (at accept and again at the end) return the client's address and port, it reads exactly the
/// payload and then the FIN, and the client reads exactly the echo and then the FIN. `done` is
/// how many connections the app has served before.
fn round_trip(topo: &Topology, app: &mut EchoApp, done: usize) -> Result<()> {
    for (i, family) in Family::BOTH.into_iter().enumerate() {
        let payload = random_bytes(PAYLOAD_LEN)?;
        let reply = exchange(&topo.client, lb_addr(family), &payload)?;
        let served = app.wait_served(done + i + 1, TIMEOUT)?;
        let got = served
            .iter()
            .find(|s| s.accept == Some(reply.local))
            .with_context(|| {
                format!(
                    "{family}: the client is {}, the app saw {served:?}",
                    reply.local
                )
            })?;
        ensure!(
            got.getpeername == Some(reply.local),
            "{family}: getpeername() returned {:?}, the client is {}",
            got.getpeername,
            reply.local
        );
        ensure!(
            got.bytes == payload.len() as u64 && got.fnv1a == fnv1a(&payload) && got.clean_eof,
            "{family}: the app received {} bytes ({:016x}, FIN: {}), the client sent {} ({:016x})",
            got.bytes,
            got.fnv1a,
            got.clean_eof,
            payload.len(),
            fnv1a(&payload)
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

/// The echo app sees the client over IPv4 and IPv6, bytes intact both ways with half-close; the
/// policy routing is there while the sidecar runs, is left by a SIGKILL, reused (not
/// duplicated) by the restarted sidecar, and gone after its SIGTERM.
pub(crate) fn transparent_mode_app_sees_the_client_and_routing_is_cleaned_up() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let app_addrs = Family::BOTH.map(|family| SocketAddr::new(family.loopback(), APP_PORT));
    let mut app = EchoApp::start(&topo, &topo.pod, &app_addrs, None)?;
    let listens = Family::BOTH.map(sidecar_addr);
    let yaml = two_family_config(APP_PORT);
    let mut sidecar = start(&topo, "sidecar", &yaml, &listens)?;
    ensure_installed(&topo.pod)?;
    let haproxy = haproxy::start(&topo, &haproxy_routes())?;
    // A short upload once reached the app with a clean FIN (CI, under load): who ended it?
    let logs = |sidecar: &Proc| {
        format!(
            "sidecar log:\n{}\nHAProxy log:\n{}",
            sidecar.log_tail(),
            haproxy.log_tail()
        )
    };
    round_trip(&topo, &mut app, 0).with_context(|| logs(&sidecar))?;
    let text = metrics(&topo.pod)?;
    for family in Family::BOTH {
        let listener = format!("listener=\"{}\"", family_name(family));
        ensure!(
            counter(
                &text,
                "trueip_restore_total",
                &[&listener, "outcome=\"restored\""]
            ) == 1,
            "{family}: not counted as restored:\n{text}"
        );
    }

    sidecar.kill();
    ensure_installed(&topo.pod).context("after SIGKILL the routing stays (nobody removed it)")?;
    let mut sidecar = start(&topo, "sidecar-restarted", &yaml, &listens)?;
    sidecar.wait_for_log(&["reused=true", "left by an earlier run"], TIMEOUT)?;
    ensure_installed(&topo.pod).context("the restarted sidecar duplicated the routing")?;
    round_trip(&topo, &mut app, 2).with_context(|| logs(&sidecar))?;

    sidecar.terminate();
    let status = sidecar
        .wait_exit(TIMEOUT)
        .context("the sidecar did not exit after SIGTERM")?;
    ensure!(status.success(), "the sidecar exited with {status}");
    let left = policy_routing(&topo.pod)?;
    ensure!(
        left.is_empty(),
        "the sidecar left its routing behind:\n{}",
        left.join("\n")
    );
    Ok(())
}

/// nginx's stock `combined` log (`$remote_addr`) shows curl's address, IPv4 and IPv6.
pub(crate) fn transparent_mode_nginx_default_log_shows_the_client() -> Result<()> {
    require(&[NEEDS.as_slice(), &[Need::Nginx, Need::Curl]].concat())?;
    let topo = Topology::new()?;
    let nginx = Nginx::start(&topo, None)?;
    let listens = Family::BOTH.map(sidecar_addr);
    let _sidecar = start(
        &topo,
        "sidecar",
        &two_family_config(nginx::PLAIN_PORT),
        &listens,
    )?;
    let _haproxy = haproxy::start(&topo, &haproxy_routes())?;
    for family in Family::BOTH {
        let path = format!("/transparent-{family}");
        let response = curl::get(&topo.client, lb_addr(family), &path, false)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let line = nginx.access_line(&path)?;
        ensure!(
            logged_remote_addr(&line) == Some(family.client()),
            "{family}: expected nginx to log the client {}: {line}",
            family.client()
        );
    }
    Ok(())
}

/// A v2 header naming `client` (`PROXY`), or none (`LOCAL`, a health check).
fn header(client: Option<SocketAddr>) -> Result<Vec<u8>> {
    let (command, addresses) = match client {
        Some(source) => (
            HeaderCommand::Proxy,
            Addresses::Inet {
                source,
                destination: "203.0.113.1:80".parse()?,
            },
        ),
        None => (HeaderCommand::Local, Addresses::Unspec),
    };
    Ok(Header {
        version: Version::V2,
        command,
        transport: Transport::Stream,
        addresses,
        tlvs: Tlvs::default(),
    }
    .to_v2(false)?)
}

/// A connection from the LB's namespace that sent `header` and `payload` and stays open.
fn send(topo: &Topology, to: SocketAddr, header: &[u8], payload: &[u8]) -> Result<TcpStream> {
    let mut s = topo
        .lb
        .run(|| TcpStream::connect_timeout(&to, TIMEOUT))?
        .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(&[header, payload].concat())?;
    Ok(s)
}

/// Half-closes and reads the echo to the end.
fn finish(mut s: TcpStream) -> Result<Vec<u8>> {
    s.shutdown(Shutdown::Write)?;
    let mut echo = Vec::new();
    s.read_to_end(&mut echo)?;
    Ok(echo)
}

/// Two connections whose headers name the same client address and port, both open at once:
/// with `on_port_in_use: any-port` the second reaches the app from the client's address with
/// another port (counted `port_changed`), with `refuse` it is closed before the app sees it
/// (counted as rejected, `port_in_use`). A `LOCAL` header reaches the app from the sidecar's
/// own loopback address (`no_client`).
pub(crate) fn transparent_mode_taken_client_port_and_local_header() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let app_addr = SocketAddr::new(Family::V4.loopback(), APP_PORT);
    let mut app = EchoApp::start(&topo, &topo.pod, &[app_addr], None)?;
    let any_port = sidecar_addr(Family::V4);
    let refuse = SocketAddr::new(Family::V4.pod(), SIDECAR_PORT + 1);
    let yaml = format!(
        "listeners:\n\
         \x20 - {{name: any, listen: '{any_port}', upstream: '{app_addr}', mode: transparent, \
         trusted_sources: ['{lb}/32']}}\n\
         \x20 - {{name: refuse, listen: '{refuse}', upstream: '{app_addr}', mode: transparent, \
         on_port_in_use: refuse, trusted_sources: ['{lb}/32']}}\n\
         metrics_listen: '{METRICS}'\n",
        lb = Family::V4.lb_back(),
    );
    let sidecar = start(&topo, "sidecar", &yaml, &[any_port, refuse])?;
    let client: SocketAddr = "198.18.0.9:4000".parse()?;
    let proxy = header(Some(client))?;

    let first = send(&topo, any_port, &proxy, b"first")?;
    let accepted = app.wait_accepted(1, TIMEOUT)?;
    ensure!(
        accepted[0].accept == Some(client),
        "the first connection reached the app as {:?}, not {client}",
        accepted[0].accept
    );
    let second = send(&topo, any_port, &proxy, b"second")?;
    let accepted = app.wait_accepted(2, TIMEOUT)?;
    let moved = accepted[1].accept.context("no address for the second")?;
    ensure!(
        moved.ip() == client.ip() && moved.port() != client.port(),
        "the second connection should come from {} with another port, the app saw {moved}",
        client.ip()
    );

    let refused = send(&topo, refuse, &proxy, b"refused")?;
    let echo = finish(refused)?;
    ensure!(echo.is_empty(), "the refused connection got {echo:?}");
    sidecar.wait_for_log(&["reason=\"port_in_use\""], TIMEOUT)?;
    ensure!(
        app.accepted().len() == 2,
        "the app accepted the refused connection: {:?}",
        app.accepted()
    );

    let local = send(&topo, any_port, &header(None)?, b"health")?;
    ensure!(finish(local)? == b"health", "the LOCAL connection's echo");
    ensure!(finish(second)? == b"second", "the second connection's echo");
    ensure!(finish(first)? == b"first", "the first connection's echo");
    let served = app.wait_served(3, TIMEOUT)?;
    let health = served
        .iter()
        .find(|s| s.fnv1a == fnv1a(b"health"))
        .context("the LOCAL connection was not served")?;
    ensure!(
        health.accept.is_some_and(|a| a.ip().is_loopback()),
        "a LOCAL header names no client: the app should see the sidecar on loopback: {health:?}"
    );

    let text = metrics(&topo.pod)?;
    for (labels, want) in [
        (["listener=\"any\"", "outcome=\"restored\""], 1),
        (["listener=\"any\"", "outcome=\"port_changed\""], 1),
        (["listener=\"any\"", "outcome=\"no_client\""], 1),
    ] {
        let got = counter(&text, "trueip_restore_total", &labels);
        ensure!(got == want, "{labels:?}: {got}, expected {want}:\n{text}");
    }
    let rejected = counter(
        &text,
        "trueip_connections_rejected_total",
        &["listener=\"refuse\"", "reason=\"port_in_use\""],
    );
    ensure!(rejected == 1, "port_in_use rejections: {rejected}:\n{text}");
    Ok(())
}

/// Without CAP_NET_ADMIN (dropped by setpriv from the bounding set, so the sidecar never has
/// it) the sidecar exits non-zero at once with one line that names the capability and how to
/// grant it, and installs nothing.
pub(crate) fn transparent_mode_without_net_admin_exits_with_a_clear_error() -> Result<()> {
    require(&[Need::Sidecar])?;
    if find_program("setpriv").is_none() {
        return Err(skip("`setpriv` (util-linux) not found"));
    }
    let topo = Topology::new()?;
    let yaml = two_family_config(APP_PORT);
    let mut sidecar = launch(
        &topo,
        "sidecar",
        &yaml,
        &["setpriv", "--bounding-set=-net_admin"],
    )?
    .netns(&topo.pod)
    .spawn(topo.dir())?;
    let Some(status) = sidecar.wait_exit(TIMEOUT) else {
        bail!(
            "the sidecar kept running without CAP_NET_ADMIN:\n{}",
            sidecar.log_tail()
        );
    };
    ensure!(!status.success(), "exited with {status}");
    let log = sidecar.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    ensure!(
        errors.len() == 1
            && errors[0].contains("needs CAP_NET_ADMIN")
            && errors[0].contains("capabilities.add"),
        "expected one actionable error line, got:\n{log}"
    );
    eprintln!("sidecar: {}", errors[0]);
    let left = policy_routing(&topo.pod)?;
    ensure!(left.is_empty(), "routing was installed: {left:?}");
    Ok(())
}
