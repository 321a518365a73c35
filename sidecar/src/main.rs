//! `trueip-sidecar`: reads the PROXY header the load balancer sends and hands the plain stream
//! to the app, which learns the real client address by the listener's restore mode.
//!
//! Thin by design: options → configuration → logging → [`trueip_sidecar_app::Sidecar`].

#![forbid(unsafe_code)]

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Parser;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use trueip_sidecar_app::{
    Config, Sidecar,
    config::{
        DatagramHeader, FastPathMode, HeaderPolicy, ListenerConfig, MapFullPolicy, Mode,
        OtlpConfig, OtlpProtocol, PortInUsePolicy, Protocol, TlvKind, UntrustedPolicy,
    },
};
use trueip_telemetry::{LogFormat, otlp};

/// Strips and validates PROXY protocol headers (v1 and v2) in front of an unmodified app, and
/// gives the app the real client address.
///
/// Either describe one listener with the flags below, or several in a YAML file (--config).
#[derive(Debug, Parser)]
#[command(name = "trueip-sidecar", version, about, long_about)]
struct Opt {
    /// YAML configuration file with one or more listeners (excludes the single-listener flags).
    #[arg(long, short, env = "TRUEIP_CONFIG", value_name = "FILE",
          conflicts_with_all = ["listen", "upstream"])]
    config: Option<PathBuf>,

    /// The SHA-256 (hex) the --config file must have; otherwise the sidecar refuses to start.
    /// The injector sets it: the file comes from a pod annotation, which anyone who may edit
    /// the pod can change after admission, while the container's arguments cannot change.
    #[arg(long, value_name = "HEX", requires = "config")]
    config_sha256: Option<String>,

    /// Validate the configuration, print a summary and exit (non-zero when invalid).
    #[arg(long)]
    check_config: bool,

    /// Address the load balancer connects to, e.g. 0.0.0.0:8080 or [::]:8080.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "upstream",
        required_unless_present = "config"
    )]
    listen: Option<SocketAddr>,

    /// The app, normally on loopback, e.g. 127.0.0.1:80.
    #[arg(long, value_name = "ADDR", requires = "listen")]
    upstream: Option<SocketAddr>,

    /// How the app learns the client: none, proxy-v1, proxy-v2, ebpf, transparent or http
    /// (forwarding headers; its options are in the config file's `http:` section) [default: none].
    #[arg(long, value_name = "MODE", value_parser = yaml::<Mode>)]
    mode: Option<Mode>,

    /// A load balancer's address range whose headers are honoured (repeat for several).
    #[arg(long = "trusted", value_name = "CIDR")]
    trusted: Vec<IpNet>,

    /// Whether a header is required, optional (health checks without one) or off [default: required].
    #[arg(long, value_name = "POLICY", value_parser = yaml::<HeaderPolicy>)]
    header: Option<HeaderPolicy>,

    /// Accept headers naming a loopback client (127.0.0.0/8, ::1); without it they are refused,
    /// like unspecified, multicast and broadcast clients.
    #[arg(long)]
    allow_loopback_clients: bool,

    /// What a header from an untrusted source gets: reject or passthrough [default: reject].
    #[arg(long, value_name = "POLICY", value_parser = yaml::<UntrustedPolicy>)]
    untrusted: Option<UntrustedPolicy>,

    /// Close connections whose header is not complete by then, e.g. 5s [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    header_timeout: Option<Duration>,

    /// With --header optional: wait this long for a first byte before serving without a header
    /// (server-speaks-first protocols) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    detect_timeout: Option<Duration>,

    /// Largest v2 header accepted, in bytes [default: 4096].
    #[arg(long, value_name = "BYTES")]
    max_header_len: Option<usize>,

    /// Connections served at once; more wait in the accept queue [default: 16384].
    #[arg(long, value_name = "N")]
    max_connections: Option<NonZeroUsize>,

    /// TLVs passed on by proxy-v2, comma-separated names or numbers
    /// (alpn, authority, noop, unique-id, ssl, netns, gcp, aws, azure, 0xNN)
    /// [default: authority,alpn,ssl,unique-id,aws,azure,gcp].
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_tlv)]
    tlv_allow: Option<Vec<TlvKind>>,

    /// proxy-v2: append a fresh CRC32c TLV to the re-emitted header.
    #[arg(long)]
    crc32c: bool,

    /// ebpf: when the pod's map is full, deliver (unrestored) or refuse [default: deliver].
    #[arg(long, value_name = "POLICY", value_parser = yaml::<MapFullPolicy>)]
    on_map_full: Option<MapFullPolicy>,

    /// ebpf: mode to use when the agent is unreachable at start (none, proxy-v1, proxy-v2);
    /// without it the sidecar refuses to start.
    #[arg(long, value_name = "MODE", value_parser = yaml::<Mode>)]
    fallback: Option<Mode>,

    /// transparent: when the client's address and port are taken, connect from another port
    /// (any-port) or close the connection (refuse) [default: any-port].
    #[arg(long, value_name = "POLICY", value_parser = yaml::<PortInUsePolicy>)]
    on_port_in_use: Option<PortInUsePolicy>,

    /// transparent: the routing table for the `local default dev lo` route [default: 29810].
    #[arg(long, value_name = "TABLE")]
    transparent_table: Option<u32>,

    /// transparent: the priority of the `from <loopback> iif lo` rule [default: 29810].
    #[arg(long, value_name = "PRIORITY")]
    transparent_priority: Option<u32>,

    /// Kernel pipe size for splice(2) of bulk flows, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pipe_size: Option<NonZeroUsize>,

    /// Steering (needs the node agent): the app keeps its port (--upstream's, e.g. on
    /// 0.0.0.0:8080) and the agent hands the pod's connections to it from outside the pod to
    /// this listener (sk_lookup); --listen is then any free address, e.g. [::]:14008.
    #[arg(long)]
    steer: bool,

    /// tcp or udp: what the listener receives; udp takes PROXY v2 in front of datagrams
    /// (modes none, proxy-v2, ebpf) [default: tcp].
    #[arg(long, value_name = "PROTOCOL", value_parser = yaml::<Protocol>)]
    protocol: Option<Protocol>,

    /// udp: which datagrams carry the header: every, or only the first of each load-balancer
    /// flow [default: every].
    #[arg(long, value_name = "WHICH", value_parser = yaml::<DatagramHeader>)]
    datagram_header: Option<DatagramHeader>,

    /// udp: put a v2 header (addresses swapped) in front of the app's replies to the load balancer.
    #[arg(long)]
    reply_header: bool,

    /// udp: close a client flow idle this long [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    flow_idle_timeout: Option<Duration>,

    /// udp: client flows served at once; a new one beyond it closes the flow idle the longest
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    max_flows: Option<NonZeroUsize>,

    /// ebpf: the app's bytes to the load balancer go straight from the app's socket to the
    /// load balancer's connection in the kernel (sk-msg, needs the node agent), or through the
    /// sidecar (off) [default: off].
    #[arg(long, value_name = "MODE", value_parser = yaml::<FastPathMode>)]
    fast_path: Option<FastPathMode>,

    /// The node agent's Unix socket (ebpf mode) [default: /run/trueip/agent.sock].
    #[arg(long, env = "TRUEIP_AGENT_SOCKET", value_name = "PATH")]
    agent_socket: Option<PathBuf>,

    /// Serve /metrics (Prometheus), /healthz and /readyz on this address, e.g. 0.0.0.0:9902.
    #[arg(long, env = "TRUEIP_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,

    /// How long SIGTERM waits for open connections [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,

    /// Log format: text or json (`human`: the old spelling of text). Levels come from RUST_LOG
    /// (default: info).
    #[arg(long, value_name = "FORMAT", default_value = "text",
          value_parser = |s: &str| LogFormat::parse(s).map(|_| s.to_owned()))]
    log_format: String,
}

/// Parses a flag the way the YAML file spells the same value, so both accept the same words.
fn yaml<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_norway::from_str(s).map_err(|e| e.to_string())
}

fn parse_tlv(s: &str) -> Result<TlvKind, String> {
    s.parse()
}

impl Opt {
    /// The configuration: the file, or one listener from the flags; explicit flags win.
    fn config(&self) -> Result<Config> {
        let mut config = match (&self.config, self.listen, self.upstream) {
            (Some(path), _, _) => read_config(path, self.config_sha256.as_deref())?,
            (None, Some(listen), Some(upstream)) => Config::single(self.listener(listen, upstream)),
            _ => anyhow::bail!("give --config FILE, or --listen ADDR with --upstream ADDR"),
        };
        if let Some(socket) = &self.agent_socket {
            config.agent_socket.clone_from(socket);
        }
        if let Some(addr) = self.metrics_listen {
            config.metrics_listen = Some(addr);
        }
        if let Some(drain) = self.drain_timeout {
            config.drain_timeout = drain;
        }
        if let Some(table) = self.transparent_table {
            config.transparent.table = table;
        }
        if let Some(priority) = self.transparent_priority {
            config.transparent.priority = priority;
        }
        config.validate()?;
        Ok(config)
    }

    fn listener(&self, listen: SocketAddr, upstream: SocketAddr) -> ListenerConfig {
        let mut l = ListenerConfig::new(listen, upstream);
        l.trusted_sources.clone_from(&self.trusted);
        l.crc32c = self.crc32c;
        l.allow_loopback_clients = self.allow_loopback_clients;
        l.fallback = self.fallback;
        l.pipe_size = self.pipe_size;
        l.steer = self.steer;
        l.reply_header = self.reply_header;
        if let Some(v) = self.protocol {
            l.protocol = v;
        }
        if let Some(v) = self.datagram_header {
            l.datagram_header = v;
        }
        if let Some(v) = self.flow_idle_timeout {
            l.flow_idle_timeout = v;
        }
        if let Some(v) = self.max_flows {
            l.max_flows = v;
        }
        if let Some(v) = self.fast_path {
            l.fast_path = v;
        }
        if let Some(v) = self.mode {
            l.mode = v;
        }
        if let Some(v) = self.header {
            l.header = v;
        }
        if let Some(v) = self.untrusted {
            l.untrusted = v;
        }
        if let Some(v) = self.header_timeout {
            l.header_timeout = v;
        }
        if let Some(v) = self.detect_timeout {
            l.detect_timeout = v;
        }
        if let Some(v) = self.max_header_len {
            l.max_header_len = v;
        }
        if let Some(v) = self.max_connections {
            l.max_connections = v;
        }
        if let Some(v) = &self.tlv_allow {
            l.tlv_allow.clone_from(v);
        }
        if let Some(v) = self.on_map_full {
            l.on_map_full = v;
        }
        if let Some(v) = self.on_port_in_use {
            l.on_port_in_use = v;
        }
        l
    }
}

/// Every connection costs two descriptors; the default soft limit (often 1024) would cap the
/// sidecar far below `max_connections`, so take what the hard limit allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

/// Reads the configuration file once, checks its digest against `sha256` when given (before
/// anything of it is used), and parses what was checked.
fn read_config(path: &std::path::Path, sha256: Option<&str>) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(want) = sha256 {
        let got = Config::digest(&text);
        anyhow::ensure!(
            got.eq_ignore_ascii_case(want.trim()),
            "{} does not have the SHA-256 of --config-sha256 ({got}, not {want}): the \
             configuration was changed after the pod was admitted (its trueip.io/sidecar-config \
             annotation); refusing to start. Recreate the pod to change it.",
            path.display()
        );
    }
    Ok(Config::from_file_text(path, &text)?)
}

/// The config file's `otlp` section, for what the `OTEL_*` variables leave unset.
fn otlp_fallback(otlp: &OtlpConfig) -> otlp::Fallback<'_> {
    otlp::Fallback {
        endpoint: &otlp.endpoint,
        protocol: match otlp.protocol {
            OtlpProtocol::Grpc => otlp::Protocol::Grpc,
            OtlpProtocol::HttpProtobuf => otlp::Protocol::HttpProtobuf,
        },
    }
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trueip-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP clients live on the runtime, so it is entered before they are built.
    let _entered = runtime.enter();
    let config = opt.config().context("invalid configuration");
    // Traces only for a configuration that runs (not for --check-config).
    let fallback = config.as_ref().ok().and_then(|c| c.otlp.as_ref());
    let (telemetry, traces_error) = otlp::Telemetry::start(
        "trueip-sidecar",
        &opt.log_format,
        config.is_ok() && !opt.check_config,
        fallback.map(otlp_fallback),
    );
    let result = match (config, traces_error) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(e)) => Err(e.into()),
        (Ok(config), None) => run(&opt, &config, &runtime),
    };
    telemetry.shutdown();
    trueip_telemetry::exit_code(result)
}

fn run(opt: &Opt, config: &Config, runtime: &tokio::runtime::Runtime) -> Result<()> {
    if opt.check_config {
        for l in &config.listeners {
            tracing::info!(
                listener = %l.name(), listen = %l.listen, upstream = %l.upstream,
                protocol = ?l.protocol, mode = ?l.mode, header = ?l.header,
                allow_loopback_clients = l.allow_loopback_clients, "listener ok"
            );
            if l.mode == Mode::Http {
                let h = &l.http;
                let limits = &h.limits;
                tracing::info!(
                    listener = %l.name(),
                    client_headers = ?h.client_headers,
                    strip_headers = ?h.strip_headers,
                    allow_connect = h.allow_connect,
                    max_request_head = limits.max_request_head,
                    max_headers = limits.max_headers,
                    header_read_timeout = %humantime::format_duration(limits.header_read_timeout),
                    keep_alive_timeout = %humantime::format_duration(limits.keep_alive_timeout),
                    stream_idle_timeout = %humantime::format_duration(limits.stream_idle_timeout),
                    h2_max_concurrent_streams = limits.h2_max_concurrent_streams,
                    h2_stream_window = limits.h2_stream_window,
                    h2_connection_window = limits.h2_connection_window,
                    h2_max_pending_resets = limits.h2_max_pending_resets,
                    h2_max_local_resets = limits.h2_max_local_resets,
                    max_app_connections = limits.max_app_connections,
                    max_requests_in_flight = limits.max_requests_in_flight,
                    max_requests_in_flight_per_client = limits.max_requests_in_flight_per_client,
                    "http limits"
                );
            }
        }
        if let Some(addr) = config.metrics_listen {
            tracing::info!(
                listen = %addr,
                header_timeout = %humantime::format_duration(config.admin.header_timeout),
                max_connections = config.admin.max_connections,
                "admin endpoint ok"
            );
        }
        tracing::info!(listeners = config.listeners.len(), "configuration is valid");
        return Ok(());
    }
    raise_fd_limit();
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let sidecar = Sidecar::bind(config)?;
        let cut = sidecar
            .run(async {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            })
            .await;
        if cut > 0 {
            tracing::warn!(
                cut,
                "exiting with connections still open at the drain deadline"
            );
        }
        Ok(())
    })
}
