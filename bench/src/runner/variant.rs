//! The middle hops under test, each started in the pod namespace in front of the same app, and
//! the direct connection that has none.
//!
//! ```text
//!  client ns                 lb ns (IP forwarding only)            pod ns
//!  trueip-loadgen ──veth──►  router  ──veth──►  192.0.2.10:80xx  middle hop ──► 127.0.0.1:9000 app
//!  203.0.113.7                                  192.0.2.10:9000  ◄── direct (no hop) ──────────┘
//! ```

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use trueip_interop_tests::{Topology, agent::Agent};
use trueip_test_kit::{Cgroup, Launch, Proc, run};

use crate::loadgen::HeaderKind;

/// The pod's address, where every hop and the direct app listen.
pub const POD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

/// The app's port: `0.0.0.0:9000` (direct clients and every hop but eBPF's).
pub const APP_PORT: u16 = 9000;

/// The second app instance, inside the eBPF variant's cgroup, on `127.0.0.1:9001`.
pub const EBPF_APP_PORT: u16 = 9001;

/// Where the pod's main app also answers OTLP/HTTP exports (the traces variant's collector).
pub const OTLP_SINK: &str = "127.0.0.1:4318";
/// The app instances of the steering variants, inside the eBPF cgroup, on `0.0.0.0:<port>`
/// (the app keeps its port; the load generator connects to it): `ebpf+steering`, `ebpf+sk_msg`.
pub const STEERED_APP_PORTS: [u16; 2] = [9002, 9003];

/// The load balancers the sidecar trusts (the load generator is the "load balancer"): the
/// client namespace's range (routed layout) and the pod's own address, where the load
/// generator runs in the loopback layout.
pub const TRUSTED: [&str; 2] = ["203.0.113.0/24", "192.0.2.10/32"];

/// `--trusted` for each of [`TRUSTED`].
fn trusted_args() -> impl Iterator<Item = String> {
    TRUSTED
        .into_iter()
        .flat_map(|cidr| ["--trusted".to_owned(), cidr.to_owned()])
}

/// Connections every hop is configured to hold at most (idle workload), with head room; lower
/// when the open-file limit is lower (HAProxy refuses to start when it cannot get the
/// descriptors its `maxconn` implies).
fn max_conns() -> u64 {
    40_000u64.min(crate::fds::fd_limit().saturating_sub(500) / 2)
}

/// How long a hop gets to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One row of the results.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Variant {
    /// Client → app, no hop, no header: the ceiling.
    Direct,
    /// `trueip-sidecar --mode none`.
    TrueipNone,
    /// `trueip-sidecar --mode proxy-v1` (the app skips the re-emitted line).
    TrueipProxyV1,
    /// `trueip-sidecar --mode none` serving `/metrics` (issue 9's "metrics only").
    TrueipMetrics,
    /// `trueip-sidecar --mode none` exporting every connection's span over OTLP (issue 9's
    /// "traces on at 100 % sampling").
    TrueipTraces,
    /// `trueip-sidecar --mode none` as the Helm chart runs it: JSON logs and `/metrics` served.
    TrueipChart,
    /// `trueip-sidecar --mode ebpf` with `trueip-agent`, sidecar and app in a cgroup v2.
    TrueipEbpf,
    /// `trueip-sidecar --mode transparent`: connects to the app from the client's address.
    TrueipTransparent,
    /// As `TrueipEbpf`, with steering: the app listens on its own port, sk_lookup hands the
    /// connections to the sidecar; both directions relayed by the sidecar.
    TrueipEbpfSteering,
    /// As `TrueipEbpfSteering`, with the kernel fast path (`--fast-path sk-msg`): the app's
    /// bytes to the client leave its socket through the sidecar's client-facing socket.
    TrueipEbpfSkMsg,
    /// HAProxy 2.6 `mode tcp`, `bind ... accept-proxy`.
    Haproxy,
    /// nginx `stream`, `listen ... proxy_protocol`.
    Nginx,
    /// socat `fork` relay, no header: a plain userspace copy.
    Socat,
    /// `trueip-sidecar --mode http`: HTTP termination, `X-Forwarded-For` etc. for the app.
    TrueipHttp,
    /// nginx `http` reverse proxy, `listen ... proxy_protocol`, keep-alive to the app.
    NginxHttp,
}

impl Variant {
    /// Every variant, in table order.
    pub const ALL: [Self; 15] = [
        Self::Direct,
        Self::TrueipNone,
        Self::TrueipProxyV1,
        Self::TrueipMetrics,
        Self::TrueipTraces,
        Self::TrueipChart,
        Self::TrueipEbpf,
        Self::TrueipTransparent,
        Self::TrueipEbpfSteering,
        Self::TrueipEbpfSkMsg,
        Self::Haproxy,
        Self::Nginx,
        Self::Socat,
        Self::TrueipHttp,
        Self::NginxHttp,
    ];

    /// Whether the hop speaks HTTP itself, so that only the `http` workload applies (the
    /// others speak the bench's own protocol).
    #[must_use]
    pub fn http_only(self) -> bool {
        matches!(self, Self::TrueipHttp | Self::NginxHttp)
    }

    /// The row label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::TrueipNone => "trueip none",
            Self::TrueipProxyV1 => "trueip proxy-v1",
            Self::TrueipMetrics => "trueip none + metrics",
            Self::TrueipTraces => "trueip none + traces",
            Self::TrueipChart => "trueip none, chart defaults",
            Self::TrueipEbpf => "trueip ebpf",
            Self::TrueipTransparent => "trueip transparent",
            Self::TrueipEbpfSteering => "trueip ebpf+steering",
            Self::TrueipEbpfSkMsg => "trueip ebpf+sk_msg",
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx stream",
            Self::Socat => "socat",
            Self::TrueipHttp => "trueip http",
            Self::NginxHttp => "nginx http",
        }
    }

    /// A short name for command lines and file names.
    #[must_use]
    pub fn slug(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::TrueipNone => "none",
            Self::TrueipProxyV1 => "proxy-v1",
            Self::TrueipMetrics => "none-metrics",
            Self::TrueipTraces => "none-traces",
            Self::TrueipChart => "none-chart",
            Self::TrueipEbpf => "ebpf",
            Self::TrueipTransparent => "transparent",
            Self::TrueipEbpfSteering => "ebpf-steering",
            Self::TrueipEbpfSkMsg => "ebpf-sk-msg",
            Self::Haproxy => "haproxy",
            Self::Nginx => "nginx",
            Self::Socat => "socat",
            Self::TrueipHttp => "http",
            Self::NginxHttp => "nginx-http",
        }
    }

    /// Where clients connect.
    #[must_use]
    pub fn target(self) -> SocketAddr {
        let port = match self {
            Self::Direct => APP_PORT,
            Self::TrueipNone => 8001,
            Self::TrueipProxyV1 => 8002,
            Self::TrueipEbpf => 8003,
            Self::TrueipEbpfSteering => STEERED_APP_PORTS[0],
            Self::TrueipEbpfSkMsg => STEERED_APP_PORTS[1],
            Self::Haproxy => 8004,
            Self::Nginx => 8005,
            Self::Socat => 8006,
            Self::TrueipMetrics => 8007,
            Self::TrueipTraces => 8008,
            Self::TrueipTransparent => 8009,
            Self::TrueipHttp => 8010,
            Self::NginxHttp => 8011,
            Self::TrueipChart => 8012,
        };
        SocketAddr::new(POD_IP, port)
    }

    /// Whether the client sends a PROXY v2 header (not to direct, not to socat).
    #[must_use]
    pub fn header(self) -> HeaderKind {
        match self {
            Self::Direct | Self::Socat => HeaderKind::None,
            _ => HeaderKind::V2,
        }
    }

    /// Where the hop forwards to.
    #[must_use]
    pub fn upstream(self) -> SocketAddr {
        let port = match self {
            Self::TrueipEbpf => EBPF_APP_PORT,
            Self::TrueipEbpfSteering | Self::TrueipEbpfSkMsg => self.target().port(),
            _ => APP_PORT,
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// Where the hop itself listens: the target, except with steering (any free port: the
    /// agent hands it the connections to the app's port).
    #[must_use]
    pub fn listen(self) -> SocketAddr {
        match self {
            Self::TrueipEbpfSteering => SocketAddr::new(POD_IP, 15008),
            Self::TrueipEbpfSkMsg => SocketAddr::new(POD_IP, 15009),
            _ => self.target(),
        }
    }

    /// Whether the variant needs the agent and the eBPF cgroup.
    #[must_use]
    pub fn is_ebpf(self) -> bool {
        matches!(
            self,
            Self::TrueipEbpf | Self::TrueipEbpfSteering | Self::TrueipEbpfSkMsg
        )
    }

    /// How the hop is configured, for the method section.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => {
                "the load generator connects straight to the app on 192.0.2.10:9000, no header"
            }
            Self::TrueipNone => {
                "`trueip-sidecar --mode none --trusted 203.0.113.0/24` (defaults otherwise: tokio multi-thread, copies small messages, splices bulk flows through 1 MiB pipes); metrics are counted but not served, no traces"
            }
            Self::TrueipMetrics => {
                "as `trueip none`, plus `--metrics-listen 127.0.0.1:9902` (the Prometheus endpoint is served; counters are updated in every variant)"
            }
            Self::TrueipChart => {
                "as `trueip none`, with what the Helm chart's sidecars run with: the image's static musl binary (when built; `make bench` builds it), `--log-format json` (the chart's `sidecar.logFormat`) and `/metrics` served (`--metrics-listen 127.0.0.1:9903`)"
            }
            Self::TrueipTraces => {
                "as `trueip none`, plus `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`, `http/protobuf`, `OTEL_TRACES_SAMPLER=always_on`: one span per connection, batched and exported to a sink in the app process that reads and acknowledges every export"
            }
            Self::TrueipProxyV1 => {
                "`trueip-sidecar --mode proxy-v1`: re-emits a v1 line, which the app skips"
            }
            Self::TrueipEbpf => {
                "`trueip-sidecar --mode ebpf --fast-path off` + `trueip-agent --pod-cgroup own`; sidecar and a second app instance in a scratch cgroup v2; the app's accept() sees the client"
            }
            Self::TrueipEbpfSteering => {
                "as `trueip ebpf`, with `--steer`: the app (a third instance) listens on 0.0.0.0:9002 itself and the client connects to that port; the agent's sk_lookup program hands the connections to the sidecar on :15008; `--fast-path off`"
            }
            Self::TrueipEbpfSkMsg => {
                "as `trueip ebpf+steering` (app on 0.0.0.0:9003, sidecar on :15009), with `--fast-path sk-msg`: the app's bytes to the client are redirected by the kernel (sockops + sk_msg) from its socket to the sidecar's client-facing socket; client → app still through the sidecar (splice)"
            }
            Self::TrueipTransparent => {
                "`trueip-sidecar --mode transparent` (as root): connects to the app on 127.0.0.1:9000 from the client's address and port (IP_TRANSPARENT), with the policy routing it installs in the pod namespace; the app's accept() sees the client"
            }
            Self::Haproxy => {
                "`haproxy` 2.6, `mode tcp`, `bind 192.0.2.10:8004 accept-proxy`, `maxconn` 40000 or what the open-file limit allows, no logging, default threads (one per CPU), no splice"
            }
            Self::Nginx => {
                "`nginx` stream, `listen 192.0.2.10:8005 proxy_protocol`, `proxy_pass 127.0.0.1:9000`, `proxy_half_close on` (the workloads half-close), `worker_processes auto`, no access log"
            }
            Self::Socat => {
                "`socat TCP4-LISTEN:8006,fork,reuseaddr TCP4:127.0.0.1:9000` (one process per connection, default 8 KiB buffer), client sends no header"
            }
            Self::TrueipHttp => {
                "`trueip-sidecar --mode http`: serves HTTP/1.1, writes X-Forwarded-For, X-Real-IP and Forwarded, keep-alive to the app; `http` workload only"
            }
            Self::NginxHttp => {
                "`nginx` http, `listen 192.0.2.10:8008 proxy_protocol`, `proxy_pass` to an upstream with `keepalive 64`, `proxy_set_header X-Forwarded-For $proxy_protocol_addr`, `worker_processes auto`, no access log; `http` workload only"
            }
        }
    }
}

/// The UDP listener of the `udp` workload: the app's own port (direct) or a second sidecar
/// process with `--protocol udp` (trueip none); `None` for hops without PROXY-over-UDP support.
#[must_use]
pub fn udp_target(variant: Variant) -> Option<SocketAddr> {
    match variant {
        Variant::Direct => Some(SocketAddr::new(POD_IP, APP_PORT)),
        Variant::TrueipNone => Some(SocketAddr::new(POD_IP, 8101)),
        _ => None,
    }
}

/// Starts `variant`'s UDP hop (see [`udp_target`]) and waits until it is bound.
pub fn start_udp(variant: Variant, topo: &Topology, programs: &Programs) -> Result<Hop> {
    let Some(target) = udp_target(variant) else {
        bail!("{} has no UDP listener", variant.slug());
    };
    if variant == Variant::Direct {
        return Ok(Hop { proc: None });
    }
    let sidecar = programs.sidecar.clone().map_err(anyhow::Error::msg)?;
    let launch = pinned(
        &format!("sidecar-udp-{}", variant.slug()),
        &sidecar,
        programs,
    )
    .args([
        "--protocol".to_owned(),
        "udp".to_owned(),
        "--listen".to_owned(),
        target.to_string(),
        "--upstream".to_owned(),
        variant.upstream().to_string(),
        "--mode".to_owned(),
        "none".to_owned(),
    ])
    .args(trusted_args())
    .env("NO_COLOR", "1");
    let mut proc = launch.netns(&topo.pod).spawn(topo.dir())?;
    trueip_interop_tests::udp::wait_bound(&topo.pod, &mut proc, target)?;
    Ok(Hop { proc: Some(proc) })
}

/// Programs the hops are run with.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `trueip-sidecar`, or why not.
    pub sidecar: Result<PathBuf, String>,
    /// The chart-defaults row's `trueip-sidecar`: the image's static musl build when there is
    /// one (what the chart runs: a different allocator and no shared libraries), else `sidecar`.
    pub image_sidecar: Option<PathBuf>,
    /// `taskset -c <cpus>` prefix for the hop, if pinned.
    pub pin: Option<String>,
    /// Extra arguments for `trueip-sidecar`.
    pub sidecar_args: Vec<String>,
    /// Extra `KEY=VALUE` environment for `trueip-sidecar`.
    pub sidecar_env: Vec<String>,
}

/// The eBPF variant's extra pieces, kept for the whole run.
#[derive(Debug)]
pub struct Ebpf {
    /// The agent, on the host.
    pub agent: Agent,
    /// The scratch cgroup the sidecar and the second app run in.
    pub cgroup: Cgroup,
}

/// A started hop; dropping it stops it.
#[derive(Debug)]
pub struct Hop {
    /// The process (group leader); `None` for direct.
    pub proc: Option<Proc>,
}

impl Hop {
    /// Its process group, which every measurement sums over.
    #[must_use]
    pub fn pgid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

/// Starts `variant`'s hop in the pod namespace and waits until it listens.
pub fn start(
    variant: Variant,
    topo: &Topology,
    programs: &Programs,
    ebpf: Option<&Ebpf>,
) -> Result<Hop> {
    let dir = topo.dir();
    let launch = match variant {
        Variant::Direct => return Ok(Hop { proc: None }),
        Variant::TrueipNone
        | Variant::TrueipProxyV1
        | Variant::TrueipEbpf
        | Variant::TrueipMetrics
        | Variant::TrueipTraces
        | Variant::TrueipChart
        | Variant::TrueipTransparent
        | Variant::TrueipHttp
        | Variant::TrueipEbpfSteering
        | Variant::TrueipEbpfSkMsg => sidecar_launch(variant, programs, ebpf)?,
        Variant::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            write(&cfg, &haproxy_config(variant))?;
            check_haproxy(topo, &cfg)?;
            pinned("haproxy", Path::new("haproxy"), programs)
                .args(["-db", "-f"])
                .args([&cfg])
        }
        Variant::Nginx | Variant::NginxHttp => nginx_launch(variant, dir, programs)?,
        Variant::Socat => {
            let listen = variant.target();
            let up = variant.upstream();
            pinned("socat", Path::new("socat"), programs).args([
                format!(
                    "TCP4-LISTEN:{},bind={},reuseaddr,fork,backlog=4096",
                    listen.port(),
                    listen.ip()
                ),
                format!("TCP4:{}:{}", up.ip(), up.port()),
            ])
        }
    };
    let mut proc = launch.netns(&topo.pod).spawn(dir)?;
    proc.wait_listening(&topo.pod, variant.listen(), START_TIMEOUT)?;
    Ok(Hop { proc: Some(proc) })
}

/// `trueip-sidecar` as `variant` runs it: its mode, the agent for the eBPF variants, the
/// metrics endpoint or the trace export, and the run's extra arguments and environment.
fn sidecar_launch<'a>(
    variant: Variant,
    programs: &Programs,
    ebpf: Option<&'a Ebpf>,
) -> Result<Launch<'a>> {
    let sidecar = match (&programs.image_sidecar, variant) {
        (Some(image), Variant::TrueipChart) => image.clone(),
        _ => programs.sidecar.clone().map_err(anyhow::Error::msg)?,
    };
    let mut args: Vec<String> = vec![
        "--listen".into(),
        variant.listen().to_string(),
        "--upstream".into(),
        variant.upstream().to_string(),
        "--mode".into(),
        match variant {
            Variant::TrueipProxyV1 => "proxy-v1",
            Variant::TrueipEbpf | Variant::TrueipEbpfSteering | Variant::TrueipEbpfSkMsg => "ebpf",
            Variant::TrueipTransparent => "transparent",
            Variant::TrueipHttp => "http",
            _ => "none",
        }
        .into(),
        // The idle workload's 10 000 connections must not queue.
        "--max-connections".into(),
        max_conns().to_string(),
    ];
    args.extend(trusted_args());
    let mut launch = pinned(&format!("sidecar-{}", variant.slug()), &sidecar, programs);
    if variant.is_ebpf() {
        let ebpf = ebpf.context("the eBPF variant needs the agent")?;
        args.push("--agent-socket".into());
        args.push(ebpf.agent.socket().display().to_string());
        let fast = if variant == Variant::TrueipEbpfSkMsg {
            "sk-msg"
        } else {
            "off"
        };
        args.extend(["--fast-path".into(), fast.into()]);
        if variant != Variant::TrueipEbpf {
            args.push("--steer".into());
        }
        launch = launch.cgroup(&ebpf.cgroup);
    }
    if variant == Variant::TrueipMetrics {
        args.push("--metrics-listen".into());
        args.push("127.0.0.1:9902".into());
    }
    if variant == Variant::TrueipChart {
        args.extend(
            ["--log-format", "json", "--metrics-listen", "127.0.0.1:9903"].map(String::from),
        );
    }
    args.extend(programs.sidecar_args.iter().cloned());
    launch = launch.args(args).env("NO_COLOR", "1");
    if variant == Variant::TrueipTraces {
        launch = launch
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{OTLP_SINK}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_SERVICE_NAME", "trueip-bench");
    }
    for kv in &programs.sidecar_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        launch = launch.env(k, v);
    }
    Ok(launch)
}

/// nginx with the stream (or, for [`Variant::NginxHttp`], http) configuration of `variant`,
/// its prefix under `dir`.
fn nginx_launch<'a>(variant: Variant, dir: &Path, programs: &Programs) -> Result<Launch<'a>> {
    let prefix = dir.join(variant.slug());
    std::fs::create_dir_all(prefix.join("logs"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    let cfg = prefix.join("nginx.conf");
    let text = if variant == Variant::Nginx {
        nginx_config(variant, &prefix)
    } else {
        nginx_http_config(variant, &prefix)
    };
    write(&cfg, &text)?;
    Ok(pinned("nginx", Path::new("nginx"), programs)
        .args([
            "-p".as_ref(),
            prefix.as_os_str(),
            "-c".as_ref(),
            cfg.as_os_str(),
        ])
        .args(["-e".as_ref(), prefix.join("logs/error.log").as_os_str()]))
}

/// A launch of `program`, behind `taskset` when the hop is pinned.
fn pinned<'a>(name: &str, program: &Path, programs: &Programs) -> Launch<'a> {
    match &programs.pin {
        Some(cpus) => Launch::new(name, "taskset")
            .args(["-c", cpus])
            .args([program]),
        None => Launch::new(name, program),
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// HAProxy in TCP mode taking the PROXY header on its bind line, no logging.
fn haproxy_config(variant: Variant) -> String {
    let mut cfg = String::from("# Generated by trueip-bench.\nglobal\n");
    let max = max_conns();
    // Writing to a String cannot fail.
    let _ = write!(
        cfg,
        "    maxconn {max}\n\n\
         defaults\n    mode tcp\n    maxconn {max}\n\
         \x20   timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\n\
         frontend fe\n    bind {} accept-proxy\n    default_backend be\n\n\
         backend be\n    server app {} maxconn {max}\n",
        variant.target(),
        variant.upstream()
    );
    cfg
}

fn check_haproxy(topo: &Topology, cfg: &Path) -> Result<()> {
    let mut check = topo.pod.command("haproxy");
    check.arg("-c").arg("-f").arg(cfg);
    let out = run::output(&mut check, START_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "haproxy rejects {}: {}{}",
            cfg.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Debian's dynamic stream module, when nginx was not built with it.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx in the foreground with one `stream` server taking the PROXY header.
fn nginx_config(variant: Variant, prefix: &Path) -> String {
    let mut cfg = String::from("# Generated by trueip-bench.\n");
    if Path::new(NGINX_STREAM_MODULE).exists() {
        let _ = writeln!(cfg, "load_module {NGINX_STREAM_MODULE};");
    }
    let limit = crate::fds::fd_limit();
    let _ = write!(
        cfg,
        "daemon off;\nmaster_process on;\nworker_processes auto;\n\
         worker_rlimit_nofile {limit};\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\n\
         events {{\n    worker_connections {conns};\n}}\n\n\
         stream {{\n    server {{\n        listen {listen} proxy_protocol backlog=4096;\n\
         \x20       proxy_pass {up};\n        proxy_timeout 120s;\n        proxy_half_close on;\n    }}\n}}\n",
        conns = limit.saturating_sub(500),
        dir = prefix.display(),
        listen = variant.target(),
        up = variant.upstream()
    );
    cfg
}

/// nginx in the foreground as an HTTP reverse proxy taking the PROXY header, telling the app
/// the client the way `mode: http` does, with keep-alive connections to the app.
fn nginx_http_config(variant: Variant, prefix: &Path) -> String {
    let limit = crate::fds::fd_limit();
    format!(
        "# Generated by trueip-bench.\ndaemon off;\nmaster_process on;\nworker_processes auto;\n\
         worker_rlimit_nofile {limit};\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\n\
         events {{\n    worker_connections {conns};\n}}\n\n\
         http {{\n    access_log off;\n    keepalive_requests 1000000;\n\
         \x20   client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;\n\
         \x20   upstream app {{\n        server {up};\n        keepalive 64;\n    }}\n\
         \x20   server {{\n        listen {listen} proxy_protocol backlog=4096;\n\
         \x20       location / {{\n            proxy_pass http://app;\n\
         \x20           proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_protocol_addr;\n\
         \x20           proxy_set_header X-Real-IP $proxy_protocol_addr;\n\
         \x20           proxy_buffering off;\n        }}\n    }}\n}}\n",
        conns = limit.saturating_sub(500),
        dir = prefix.display(),
        listen = variant.target(),
        up = variant.upstream()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_the_addresses() {
        let h = haproxy_config(Variant::Haproxy);
        assert!(h.contains("bind 192.0.2.10:8004 accept-proxy"), "{h}");
        assert!(h.contains("server app 127.0.0.1:9000"), "{h}");
        let n = nginx_config(Variant::Nginx, Path::new("/tmp/x"));
        assert!(
            n.contains("listen 192.0.2.10:8005 proxy_protocol backlog=4096;"),
            "{n}"
        );
        assert!(n.contains("proxy_pass 127.0.0.1:9000;"), "{n}");
        let h = nginx_http_config(Variant::NginxHttp, Path::new("/tmp/x"));
        assert!(
            h.contains("listen 192.0.2.10:8011 proxy_protocol backlog=4096;"),
            "{h}"
        );
        assert!(h.contains("server 127.0.0.1:9000;"), "{h}");
    }

    #[test]
    fn every_variant_has_its_own_port() {
        let mut ports: Vec<u16> = Variant::ALL.iter().map(|v| v.target().port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Variant::ALL.len());
    }
}
