//! `trueip-demo`, run by `make demo` (as root): an unmodified nginx behind HAProxy, and the
//! client address it logs
//!
//! * (a) without trueip: HAProxy's own address;
//! * (b) with `trueip-sidecar --mode proxy-v1` in front of nginx's `proxy_protocol` server;
//! * (c) with `trueip-sidecar --mode ebpf --steer` and `trueip-agent`, nginx's stock `combined`
//!   log (`$remote_addr`), when the agent is built and the kernel allows it. nginx keeps its
//!   usual port: the agent's sk_lookup program steers the pod's connections to it from outside
//!   the pod to the sidecar (no iptables), which reaches nginx over loopback. (a) and (b) are
//!   shown before steering starts, since (a) uses the same port.
//!
//! It builds nothing: the binaries come from `$TRUEIP_BIN_DIR` or the workspace's target
//! directory. Exits non-zero when (b) — or (c), when it runs — does not show the client.

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use trueip_interop_tests::{
    Family, Topology,
    agent::Agent,
    curl,
    haproxy::{self, Route, SendProxy},
    nginx::{self, Nginx, logged_client, logged_remote_addr},
    sidecar,
};
use trueip_test_kit::{
    Cgroup, Need, Proc,
    prereq::{self, BPFFS},
};

/// Where the agent pins its programs, maps and links for the demo; removed afterwards.
const DEMO_PINS: &str = "trueip-demo";

/// Where the steering sidecars of (c) listen, IPv4 and IPv6: ports of their own, which
/// connections reach by steering.
const STEER_LISTEN: [&str; 2] = ["0.0.0.0:15008", "[::]:15009"];

/// One way of putting nginx behind HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// (a) HAProxy straight to nginx's plain server.
    Direct,
    /// (b) HAProxy `send-proxy-v2` → sidecar `proxy-v1` → nginx `proxy_protocol`.
    ProxyV1,
    /// (c) HAProxy `send-proxy-v2` → nginx's plain server's port, steered to sidecar `ebpf`.
    Ebpf,
}

impl Scenario {
    const ALL: [Self; 3] = [Self::Direct, Self::ProxyV1, Self::Ebpf];

    fn tag(self) -> &'static str {
        match self {
            Self::Direct => "(a)",
            Self::ProxyV1 => "(b)",
            Self::Ebpf => "(c)",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Direct => "HAProxy → nginx (no trueip), default log: $remote_addr",
            Self::ProxyV1 => {
                "HAProxy send-proxy-v2 → trueip-sidecar --mode proxy-v1 → nginx proxy_protocol, \
                 log: $proxy_protocol_addr:$proxy_protocol_port"
            }
            Self::Ebpf => {
                "HAProxy send-proxy-v2 → nginx's own port, steered to trueip-sidecar --mode ebpf \
                 --steer (+ trueip-agent) → nginx, default log: $remote_addr"
            }
        }
    }

    /// The column heading of the summary.
    fn column(self) -> &'static str {
        match self {
            Self::Direct => "(a) without trueip",
            Self::ProxyV1 => "(b) trueip proxy-v1",
            Self::Ebpf => "(c) trueip ebpf",
        }
    }

    /// HAProxy's frontend port for this scenario.
    fn lb_port(self) -> u16 {
        match self {
            Self::Direct => 80,
            Self::ProxyV1 => 81,
            Self::Ebpf => 82,
        }
    }

    /// Where HAProxy sends this scenario's connections in the pod.
    fn pod_port(self) -> u16 {
        match self {
            Self::Direct => nginx::PLAIN_PORT,
            Self::ProxyV1 => 8080,
            // Steering: nginx's own port.
            Self::Ebpf => nginx::PLAIN_PORT,
        }
    }

    /// The request path, so that each log line names its scenario.
    fn path(self, family: Family) -> String {
        let name = match self {
            Self::Direct => "a-without-trueip",
            Self::ProxyV1 => "b-trueip-proxy-v1",
            Self::Ebpf => "c-trueip-ebpf",
        };
        format!("/{name}-{}", family.to_string().to_lowercase())
    }

    fn route(self, family: Family) -> Route {
        Route {
            bind: SocketAddr::new(family.lb_front(), self.lb_port()),
            server: SocketAddr::new(family.pod(), self.pod_port()),
            send_proxy: if self == Self::Direct {
                SendProxy::Off
            } else {
                SendProxy::V2
            },
        }
    }
}

/// What nginx logged for one request.
#[derive(Debug)]
struct Seen {
    /// The address as the log shows it.
    who: String,
    /// Whether that is the client.
    is_client: bool,
    /// The log line itself.
    line: String,
}

/// The eBPF scenario's processes; the sidecars stop before the agent.
#[derive(Debug)]
struct EbpfPath {
    sidecars: Vec<Proc>,
    agent: Agent,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            trueip_test_kit::run::note(&format!("trueip-demo: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    if let Some(reason) = prereq::missing(&[Need::Haproxy, Need::Nginx, Need::Curl, Need::Sidecar])
    {
        bail!("cannot run the demo: {reason}");
    }
    let mut out = io::stdout().lock();
    let topo = Topology::new()?;
    // The eBPF path needs the pod's processes in a cgroup v2 from the start.
    let cgroup = match prereq::missing(&[Need::Agent]) {
        Some(reason) => Err(reason),
        None => Cgroup::create().map_err(|e| format!("{e:#}")),
    };
    let nginx = Nginx::start(&topo, cgroup.as_ref().ok())?;

    let mut proxy_sidecars = Vec::new();
    let mut commands = Vec::new();
    for family in Family::BOTH {
        let listen = SocketAddr::new(family.pod(), Scenario::ProxyV1.pod_port());
        let launch = sidecar::launch(
            &format!("sidecar-proxy-v1-{family}"),
            listen,
            nginx::PROXY_PROTOCOL,
            "proxy-v1",
            &[&lb_cidr(family)],
        )?;
        commands.push(format!("in the pod:  {}", launch.command_line()));
        proxy_sidecars.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
    }
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| *s != Scenario::Ebpf || cgroup.is_ok())
        .collect();
    let routes: Vec<Route> = scenarios
        .iter()
        .flat_map(|s| Family::BOTH.map(|f| s.route(f)))
        .collect();
    let _haproxy = haproxy::start(&topo, &routes)?;

    print_topology(&mut out, &routes)?;
    let mut results = Vec::new();
    // (a) and (b) first: once steering is on, (a)'s connections to nginx's port would be
    // steered to the sidecar too.
    let mut observed = scenarios.clone();
    observed.retain(|s| *s != Scenario::Ebpf);
    observe_all(&topo, &nginx, observed.iter().copied(), &mut results)?;
    let ebpf = match &cgroup {
        Ok(cgroup) => start_ebpf(&topo, cgroup, &mut commands).map_err(|e| one_line(&e)),
        Err(reason) => Err(reason.clone()),
    };
    for command in &commands {
        writeln!(out, "  {command}")?;
    }
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| *s != Scenario::Ebpf || ebpf.is_ok())
        .collect();
    let rest = scenarios.iter().copied().filter(|s| !observed.contains(s));
    observe_all(&topo, &nginx, rest, &mut results)?;
    print_summary(&mut out, &results)?;
    print_log_lines(&mut out, &scenarios, &results, ebpf.as_ref().err())?;
    let ok = results
        .iter()
        .all(|(scenario, _, seen)| *scenario == Scenario::Direct || seen.is_client);
    if ok {
        writeln!(out, "\nwith trueip, nginx sees the client — unmodified.")?;
    } else {
        writeln!(
            out,
            "\nFAILED: with trueip, nginx did not see the client (see above)"
        )?;
        let ebpf_sidecars = ebpf.iter().flat_map(|e| &e.sidecars);
        for proc in proxy_sidecars.iter().chain(ebpf_sidecars) {
            writeln!(out, "--- {} ---\n{}", proc.name(), proc.log_tail())?;
        }
        if let Ok(ebpf) = &ebpf {
            writeln!(out, "--- agent ---\n{}", ebpf.agent.log_tail())?;
        }
    }
    Ok(ok)
}

/// Who is where, and the routes HAProxy was given.
fn print_topology(out: &mut impl Write, routes: &[Route]) -> Result<()> {
    writeln!(
        out,
        "trueip demo: client {} / {}  →  HAProxy {} / {} \
         (connects to the pod from {} / {})  →  pod {} / {}\n",
        Family::V4.client(),
        Family::V6.client(),
        Family::V4.lb_front(),
        Family::V6.lb_front(),
        Family::V4.lb_back(),
        Family::V6.lb_back(),
        Family::V4.pod(),
        Family::V6.pod(),
    )?;
    for route in routes {
        let header = match route.send_proxy {
            SendProxy::Off => "no header",
            SendProxy::V1 => "send-proxy",
            SendProxy::V2 => "send-proxy-v2",
        };
        writeln!(
            out,
            "  on the LB:   haproxy {} → {} ({header})",
            route.bind, route.server
        )?;
    }
    Ok(())
}

/// Observes each of `scenarios` over both families, in order.
fn observe_all(
    topo: &Topology,
    nginx: &Nginx,
    scenarios: impl Iterator<Item = Scenario>,
    results: &mut Vec<(Scenario, Family, Seen)>,
) -> Result<()> {
    for scenario in scenarios {
        for family in Family::BOTH {
            let seen = observe(topo, nginx, scenario, family)
                .with_context(|| format!("{} {family}", scenario.tag()))?;
            results.push((scenario, family, seen));
        }
    }
    Ok(())
}

/// What nginx logged for each scenario, and why the eBPF one is missing when it is.
fn print_log_lines(
    out: &mut impl Write,
    scenarios: &[Scenario],
    results: &[(Scenario, Family, Seen)],
    ebpf_missing: Option<&String>,
) -> Result<()> {
    writeln!(
        out,
        "\nnginx's log lines (the unmodified app, examples/nginx/nginx.conf):"
    )?;
    for &scenario in scenarios {
        writeln!(out, "  {} {}", scenario.tag(), scenario.title())?;
        for (_, family, seen) in results.iter().filter(|(s, ..)| *s == scenario) {
            writeln!(out, "      {family}: {}", seen.line)?;
        }
    }
    if let Some(reason) = ebpf_missing {
        writeln!(out, "  (c) eBPF mode not shown: {reason}")?;
    }
    Ok(())
}

/// The side-by-side table: one row per family, one column per scenario.
fn print_summary(out: &mut impl Write, results: &[(Scenario, Family, Seen)]) -> Result<()> {
    const FIRST: usize = 31;
    const WIDTH: usize = 32;
    let columns: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| results.iter().any(|(r, ..)| r == s))
        .collect();
    let mut heading = format!("  {:FIRST$}", "");
    for scenario in &columns {
        heading.push_str(&format!("{:WIDTH$}", scenario.column()));
    }
    writeln!(
        out,
        "\nwhat the app (nginx) logged as its client:\n{}",
        heading.trim_end()
    )?;
    for family in Family::BOTH {
        let mut row = format!(
            "  {:FIRST$}",
            format!("client {} ({family})", family.client())
        );
        for scenario in &columns {
            if let Some((.., seen)) = results
                .iter()
                .find(|(s, f, _)| s == scenario && *f == family)
            {
                let verdict = if seen.is_client { "✓" } else { "✗ the LB" };
                row.push_str(&format!("{:WIDTH$}", format!("{} {verdict}", seen.who)));
            }
        }
        writeln!(out, "{}", row.trim_end())?;
    }
    Ok(())
}

/// Sends one request for `scenario` over `family` and reads what nginx logged for it.
fn observe(topo: &Topology, nginx: &Nginx, scenario: Scenario, family: Family) -> Result<Seen> {
    let path = scenario.path(family);
    let lb = SocketAddr::new(family.lb_front(), scenario.lb_port());
    let response = curl::get(&topo.client, lb, &path, false)?;
    if !response.is_ok() {
        bail!("curl {lb}{path} failed: {response:?}");
    }
    let client = response.local.context("curl reported no local address")?;
    Ok(match scenario {
        Scenario::ProxyV1 => {
            let line = nginx.proxy_protocol_line(&path)?;
            let logged = logged_client(&line);
            Seen {
                who: logged.map_or_else(|| "?".into(), |a| a.to_string()),
                is_client: logged == Some(client),
                line,
            }
        }
        Scenario::Direct | Scenario::Ebpf => {
            let line = nginx.access_line(&path)?;
            let logged = logged_remote_addr(&line);
            Seen {
                who: logged.map_or_else(|| "?".into(), |a| a.to_string()),
                is_client: logged == Some(client.ip()),
                line,
            }
        }
    })
}

/// Starts the agent on the host and the steering eBPF sidecars in the pod's cgroup: one per
/// family, since nginx has one socket per family (`listen 8082; listen [::]:8082;`) and an IPv6
/// client can only be shown to an IPv6 socket. They listen on ports of their own; the agent
/// steers IPv4 connections to the IPv4 listener, IPv6 ones to the dual-stack `[::]` one.
fn start_ebpf(topo: &Topology, cgroup: &Cgroup, commands: &mut Vec<String>) -> Result<EbpfPath> {
    let agent = Agent::start_pinned(topo, Path::new(BPFFS).join(DEMO_PINS))?;
    commands.push(format!("on the host: {}", agent.command_line()));
    let mut sidecars = Vec::new();
    for (family, listen) in Family::BOTH.into_iter().zip(STEER_LISTEN) {
        let listen: SocketAddr = listen.parse()?;
        let upstream = SocketAddr::new(family.loopback(), Scenario::Ebpf.pod_port());
        let launch = sidecar::launch(
            &format!("sidecar-ebpf-{family}"),
            listen,
            upstream,
            "ebpf",
            &[&lb_cidr(family)],
        )?
        .args(["--steer", "--header", "optional"])
        .args(["--agent-socket".as_ref(), agent.socket().as_os_str()])
        .cgroup(cgroup);
        commands.push(format!("in the pod:  {}", launch.command_line()));
        sidecars.push(sidecar::start(topo, &topo.pod, launch, listen)?);
    }
    Ok(EbpfPath { sidecars, agent })
}

/// `--trusted` for the load balancer's address of `family`.
fn lb_cidr(family: Family) -> String {
    let len = if family == Family::V4 { 32 } else { 128 };
    format!("{}/{len}", family.lb_back())
}

/// The first line of an error chain: a reason that fits on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}
