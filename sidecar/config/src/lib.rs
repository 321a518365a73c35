//! The sidecar's configuration: one YAML file with any number of listeners, or the single
//! listener the command line describes.
//!
//! Everything a value can get wrong is caught while deserialising, so the error carries the key
//! and the line (`listeners[0].mode: unknown variant ... at line 4 column 11`); what needs two
//! fields at once is checked by [`Config::validate`], which names the listener and the key.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, de};
use trueip_proxy_header::kind;

pub use self::{
    http::{ClientHeaders, HeaderSlot, HttpConfig, PROXY_HEADERS, TlsConfig, TlvHeaders},
    limits::{AdminConfig, HttpLimits},
    udp::{DatagramHeader, Protocol},
};

mod http;
mod limits;
mod udp;

/// The largest v2 header the protocol can express: 16 fixed bytes and a 16-bit length.
const MAX_V2_WIRE_LEN: usize = 16 + u16::MAX as usize;
/// The smallest useful cap: a v2 header with IPv6 addresses and no TLVs.
const MIN_V2_CAP: usize = 16 + 36;

/// Where the agent listens by default, as the Helm chart mounts it into the pod.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trueip/agent.sock";

/// The whole sidecar configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The listeners; each accepts load-balancer traffic and forwards it to one upstream app.
    pub listeners: Vec<ListenerConfig>,
    /// How long SIGTERM waits for open connections to finish before the process exits.
    #[serde(default = "defaults::drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// The node agent's Unix socket, used by listeners in `ebpf` mode to obtain this pod's map.
    #[serde(default = "defaults::agent_socket")]
    pub agent_socket: PathBuf,
    /// Where to serve `/metrics` (Prometheus), `/healthz` and `/readyz`. Unset: not served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Bounds of the `metrics_listen` endpoint: header timeout and connection cap.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where traces go when the `OTEL_EXPORTER_OTLP_*` variables do not say. Unset (and no
    /// variable): no traces.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
    /// The policy routing that listeners in `transparent` mode install in the pod's network
    /// namespace at start and remove at exit.
    #[serde(default)]
    pub transparent: TransparentConfig,
}

/// Where the `transparent` mode puts its policy routing: one rule per address family,
/// `from 127.0.0.0/8 iif lo lookup <table>` (`from ::1` for IPv6) at `priority`, and one route
/// in that table, `local default dev lo`. Together they deliver the app's replies to the
/// client address back to the sidecar's socket on loopback instead of out of the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// The routing table that holds the `local default dev lo` route; trueip owns it (it is
    /// removed at exit), so choose one nothing else in the pod uses.
    #[serde(default = "defaults::transparent_table")]
    pub table: u32,
    /// The rule's priority (preference); lower is looked up first, and it must come before
    /// the `main` table's rule (32766).
    #[serde(default = "defaults::transparent_priority")]
    pub priority: u32,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        Self {
            table: defaults::transparent_table(),
            priority: defaults::transparent_priority(),
        }
    }
}

/// An OTLP trace destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector, e.g. `http://otel-collector:4318` (HTTP) or `http://otel-collector:4317`.
    pub endpoint: String,
    /// How to talk to it.
    #[serde(default)]
    pub protocol: OtlpProtocol,
}

/// The OTLP transports trueip speaks, spelled as `OTEL_EXPORTER_OTLP_PROTOCOL` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318), the specification's default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// One listener: an address the load balancer connects to, the app it forwards to, and how the
/// client address is handed over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A name for logs and metrics; defaults to the listen address.
    #[serde(default)]
    pub name: Option<String>,
    /// The address the load balancer connects to.
    pub listen: SocketAddr,
    /// The app, normally on loopback.
    pub upstream: SocketAddr,
    /// How the app learns the client address.
    #[serde(default)]
    pub mode: Mode,
    /// Whether a PROXY header must, may or must not be present.
    #[serde(default)]
    pub header: HeaderPolicy,
    /// Sources whose PROXY header is honoured (the load balancers). Empty trusts nobody.
    #[serde(default)]
    pub trusted_sources: Vec<IpNet>,
    /// What a header from a source outside `trusted_sources` gets.
    #[serde(default)]
    pub untrusted: UntrustedPolicy,
    /// Accept PROXY headers that name a loopback client (127.0.0.0/8, ::1). Off: refused like
    /// unspecified, multicast and broadcast clients, because no load balancer relays a client
    /// from its own loopback, and an app that trusts loopback callers would trust the header.
    #[serde(default)]
    pub allow_loopback_clients: bool,
    /// A connection that has not completed its header by then is closed (slowloris).
    #[serde(default = "defaults::header_timeout", deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// With `header: optional`, how long to wait for the first byte before treating the
    /// connection as headerless, so that protocols where the server speaks first still work.
    #[serde(default = "defaults::detect_timeout", deserialize_with = "duration")]
    pub detect_timeout: Duration,
    /// The largest v2 header accepted, in bytes (fixed part, addresses and TLVs).
    #[serde(default = "defaults::max_header_len")]
    pub max_header_len: usize,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: NonZeroUsize,
    /// TLVs passed on when re-emitting a header (`proxy-v1` ignores TLVs). Names or numbers.
    #[serde(default = "defaults::tlv_allow")]
    pub tlv_allow: Vec<TlvKind>,
    /// `proxy-v2`: append a freshly computed CRC32c TLV to the re-emitted header.
    #[serde(default)]
    pub crc32c: bool,
    /// `ebpf`: what happens when the pod's restore map is full.
    #[serde(default)]
    pub on_map_full: MapFullPolicy,
    /// `transparent`: what happens when the client's exact address and port cannot be bound
    /// (another connection already uses it: two load balancers' clients with the same
    /// address and port).
    #[serde(default)]
    pub on_port_in_use: PortInUsePolicy,
    /// `ebpf`: the mode used when the agent cannot be reached at start-up. Unset: refuse to start.
    #[serde(default)]
    pub fallback: Option<Mode>,
    /// Capacity of the kernel pipes used to splice bulk flows, in bytes. Unset: 1 MiB (the
    /// kernel gives less once the user's pipe budget, `fs.pipe-user-pages-soft`, is spent).
    #[serde(default)]
    pub pipe_size: Option<NonZeroUsize>,
    /// Steering (needs the node agent): the app keeps listening on its own port (`upstream`'s
    /// port, e.g. `0.0.0.0:8080`) and the agent hands the pod's TCP connections to that port
    /// that come from outside the pod (not over loopback, not from the pod's own address) to
    /// this listener instead, with an sk_lookup program on the pod's network namespace; no
    /// iptables. `listen` is then any free sidecar address, typically `[::]:14008` (dual-stack,
    /// so both IPv4 and IPv6 connections can be handed over). `upstream` must be on loopback.
    /// Node probes without a header reach the app through the sidecar only with
    /// `header: optional`. While the sidecar is not running, connections reach the app directly
    /// (or are refused: the agent's `--steer-when-gone closed`).
    #[serde(default)]
    pub steer: bool,
    /// `tcp` (connections, the default) or `udp` (datagrams with a PROXY v2 header in front;
    /// `mode` is then `none`, `proxy-v2` or `ebpf`). See the README's "UDP listeners".
    #[serde(default)]
    pub protocol: Protocol,
    /// `udp`: which datagrams carry the header: `every` one (the default), or only the `first`
    /// of each load-balancer flow (source address and port).
    #[serde(default)]
    pub datagram_header: DatagramHeader,
    /// `udp`: put a v2 header (the client's addresses swapped) in front of each reply to the
    /// load balancer; without it replies go back bare.
    #[serde(default)]
    pub reply_header: bool,
    /// `udp`: a client flow with no datagram either way for this long is closed.
    #[serde(
        default = "udp::defaults::flow_idle_timeout",
        deserialize_with = "duration"
    )]
    pub flow_idle_timeout: Duration,
    /// `udp`: client flows served at once; a new one beyond it closes the flow idle the longest.
    #[serde(default = "udp::defaults::max_flows")]
    pub max_flows: NonZeroUsize,
    /// `http`: forwarding headers, TLV headers and TLS termination.
    #[serde(default)]
    pub http: HttpConfig,
    /// `ebpf`: how the app's bytes travel back to the load balancer. `sk-msg` (needs the node
    /// agent): the kernel sends them out of the load balancer's connection straight from the
    /// app's `sendmsg()` (sockops + sk_msg), without a copy through the sidecar; the load
    /// balancer → app direction stays in the sidecar (splice). `off`: the sidecar relays both
    /// directions. If the agent cannot set the fast path up, connections use the sidecar's path
    /// (logged once, counted per connection). Other modes ignore it.
    #[serde(default)]
    pub fast_path: FastPathMode,
}

/// How the app → load balancer bytes of an `ebpf` listener travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FastPathMode {
    /// Through the sidecar (splice or copy), like the other direction.
    #[default]
    Off,
    /// Redirected by the kernel (sk_msg) from the app's socket to the LB-facing socket.
    #[serde(alias = "sk_msg")]
    SkMsg,
}

impl FastPathMode {
    /// The mode as the configuration spells it, for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::SkMsg => "sk-msg",
        }
    }
}

/// How the app learns the real client address. `Serialize` too: the injector writes it into
/// the sidecar's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Strip the header and forward the payload only: the app sees the sidecar as its peer.
    #[default]
    None,
    /// Re-emit a clean v1 header for apps that parse PROXY (nginx `proxy_protocol`).
    ProxyV1,
    /// Re-emit a clean v2 header with the allowed TLVs.
    ProxyV2,
    /// Record the client in the pod's eBPF map; the app's `getpeername()` returns it.
    Ebpf,
    /// Connect to the app from the client's own address and port (IP_TRANSPARENT plus policy
    /// routing); needs CAP_NET_ADMIN, no agent.
    Transparent,
    /// Speak HTTP to both sides and tell the app the client in `X-Forwarded-For`,
    /// `X-Real-IP` and `Forwarded` headers.
    Http,
}

impl Mode {
    /// The mode as the configuration spells it, for logs, metrics and spans.
    pub fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ProxyV1 => "proxy-v1",
            Self::ProxyV2 => "proxy-v2",
            Self::Ebpf => "ebpf",
            Self::Transparent => "transparent",
            Self::Http => "http",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Whether a PROXY header is expected. `Serialize` too: the injector writes it into the
/// sidecar's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderPolicy {
    /// Every connection must start with a header; others are closed.
    #[default]
    Required,
    /// Connections with and without a header are served (health checks, kubelet probes).
    Optional,
    /// No detection: bytes are forwarded as they come.
    Off,
}

/// What a header from an untrusted source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedPolicy {
    /// Close the connection.
    #[default]
    Reject,
    /// Deliver the bytes as they came, header included, without honouring it.
    Passthrough,
}

/// What an `ebpf` listener does when the pod's map has no room for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapFullPolicy {
    /// Deliver the connection; the app sees the sidecar as its peer.
    #[default]
    Deliver,
    /// Close the connection.
    Refuse,
}

/// What a `transparent` listener does when the client's address and port are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortInUsePolicy {
    /// Connect from the client's address with a port the kernel chooses: the app sees the
    /// client's address, not its port.
    #[default]
    AnyPort,
    /// Close the connection.
    Refuse,
}

/// A TLV type in the allow-list, written as a name (`authority`) or a number (`0xEA`, `234`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlvKind(pub u8);

/// The names accepted in `tlv_allow`, with the type each stands for.
const TLV_NAMES: &[(&str, u8)] = &[
    ("alpn", kind::ALPN),
    ("authority", kind::AUTHORITY),
    ("noop", kind::NOOP),
    ("unique-id", kind::UNIQUE_ID),
    ("ssl", kind::SSL),
    ("netns", kind::NETNS),
    ("gcp", kind::GCP),
    ("aws", kind::AWS),
    ("azure", kind::AZURE),
];

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a bad value; the message names key and line.
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with the key path and the line.
        #[source]
        source: serde_norway::Error,
    },
    /// Values that are fine alone but not together.
    #[error("{listener}: {key}: {problem}")]
    Invalid {
        /// The listener's name.
        listener: String,
        /// The key at fault.
        key: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The file declares no listener.
    #[error("no listeners configured")]
    NoListeners,
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_text(path, &text)
    }

    /// The SHA-256 of a configuration file's text, in hex: what the injector pins in the
    /// sidecar's `--config-sha256` and what the sidecar checks, computed by one function.
    pub fn digest(text: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Parses and validates `text`, read from `path` (which parse errors name): for a caller
    /// that checks the bytes it read before parsing them.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml(text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration with one listener, as the command line builds it.
    pub fn single(listener: ListenerConfig) -> Self {
        Self {
            listeners: vec![listener],
            drain_timeout: defaults::drain_timeout(),
            agent_socket: defaults::agent_socket(),
            metrics_listen: None,
            admin: AdminConfig::default(),
            otlp: None,
            transparent: TransparentConfig::default(),
        }
    }

    /// Checks what the types alone cannot: combinations of values and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NoListeners);
        }
        self.transparent.validate()?;
        let mut seen_addrs = HashSet::new();
        let mut seen_names = HashSet::new();
        for l in &self.listeners {
            l.validate()?;
            let name = l.name();
            let invalid = |key, problem: String| ConfigError::Invalid {
                listener: name.clone(),
                key,
                problem,
            };
            if !seen_addrs.insert((l.protocol, l.listen)) {
                return Err(invalid(
                    "listen",
                    format!("{} is used by another listener", l.listen),
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(invalid("name", "is used by another listener".into()));
            }
        }
        Ok(())
    }
}

// === impl TransparentConfig ===

impl TransparentConfig {
    /// The kernel's own tables (`unspec`, `default`, `main`, `local`) are never trueip's.
    const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
    /// The priority of the `main` table's rule: trueip's must come first.
    const MAIN_RULE_PRIORITY: u32 = 32766;

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid {
            listener: "transparent".into(),
            key,
            problem,
        };
        if Self::RESERVED_TABLES.contains(&self.table) {
            return Err(invalid(
                "table",
                format!(
                    "{} is one of the kernel's tables (0, 253 default, 254 main, 255 local); \
                     choose a table of its own",
                    self.table
                ),
            ));
        }
        if self.priority == 0 || self.priority >= Self::MAIN_RULE_PRIORITY {
            return Err(invalid(
                "priority",
                format!(
                    "{} must be in 1..{}, before the rule of the main table",
                    self.priority,
                    Self::MAIN_RULE_PRIORITY
                ),
            ));
        }
        Ok(())
    }
}

// === impl ListenerConfig ===

impl ListenerConfig {
    /// A listener with every policy at its default.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            name: None,
            listen,
            upstream,
            mode: Mode::default(),
            header: HeaderPolicy::default(),
            trusted_sources: Vec::new(),
            untrusted: UntrustedPolicy::default(),
            allow_loopback_clients: false,
            header_timeout: defaults::header_timeout(),
            detect_timeout: defaults::detect_timeout(),
            max_header_len: defaults::max_header_len(),
            max_connections: defaults::max_connections(),
            tlv_allow: defaults::tlv_allow(),
            crc32c: false,
            on_map_full: MapFullPolicy::default(),
            on_port_in_use: PortInUsePolicy::default(),
            fallback: None,
            pipe_size: None,
            steer: false,
            protocol: Protocol::default(),
            datagram_header: DatagramHeader::default(),
            reply_header: false,
            flow_idle_timeout: udp::defaults::flow_idle_timeout(),
            max_flows: udp::defaults::max_flows(),
            http: HttpConfig::default(),
            fast_path: FastPathMode::default(),
        }
    }

    /// The name used in logs and metrics.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// Whether a header from `source` may be honoured.
    pub fn is_trusted(&self, source: std::net::IpAddr) -> bool {
        let source = canonical(source);
        self.trusted_sources.iter().any(|net| net.contains(&source))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid {
            listener: self.name(),
            key,
            problem,
        };
        if self.header_timeout.is_zero() {
            return Err(invalid("header_timeout", "must be longer than 0s".into()));
        }
        if self.header == HeaderPolicy::Optional && self.detect_timeout > self.header_timeout {
            return Err(invalid(
                "detect_timeout",
                format!(
                    "{} is longer than header_timeout ({})",
                    humantime::format_duration(self.detect_timeout),
                    humantime::format_duration(self.header_timeout)
                ),
            ));
        }
        if !(MIN_V2_CAP..=MAX_V2_WIRE_LEN).contains(&self.max_header_len) {
            return Err(invalid(
                "max_header_len",
                format!(
                    "{} is outside {MIN_V2_CAP}..={MAX_V2_WIRE_LEN}",
                    self.max_header_len
                ),
            ));
        }
        if self.header != HeaderPolicy::Off && self.trusted_sources.is_empty() {
            return Err(invalid(
                "trusted_sources",
                "is empty, so every header would be refused; list the load balancers' \
                 addresses (0.0.0.0/0 and ::/0 trust everyone), or set `header: off`"
                    .into(),
            ));
        }
        if self.header == HeaderPolicy::Off && self.mode != Mode::None {
            return Err(invalid(
                "mode",
                "needs a PROXY header to restore from; with `header: off` use `mode: none`".into(),
            ));
        }
        if matches!(self.mode, Mode::Ebpf | Mode::Transparent) && !self.upstream.ip().is_loopback()
        {
            return Err(invalid(
                "upstream",
                format!(
                    "{} is not on loopback; `mode: {}` restores connections to an app in \
                     the same pod (127.0.0.1 or ::1)",
                    self.upstream,
                    self.mode.label()
                ),
            ));
        }
        if self.fallback == Some(Mode::Ebpf) {
            return Err(invalid("fallback", "cannot be ebpf itself".into()));
        }
        if self.fallback == Some(Mode::Transparent) {
            return Err(invalid(
                "fallback",
                "cannot be transparent (its routing is set up at start, for listeners in that \
                 mode); use none, proxy-v1 or proxy-v2"
                    .into(),
            ));
        }
        if self.fallback.is_some() && self.mode != Mode::Ebpf {
            return Err(invalid("fallback", "applies to `mode: ebpf` only".into()));
        }
        if self.mode == Mode::Http && self.untrusted == UntrustedPolicy::Passthrough {
            return Err(invalid(
                "untrusted",
                "`passthrough` would hand the PROXY header to the HTTP parser; `mode: http` \
                 needs `reject`"
                    .into(),
            ));
        }
        if self.http.tls.is_some() && self.mode != Mode::Http {
            return Err(invalid("http.tls", "applies to `mode: http` only".into()));
        }
        if self.steer && !self.upstream.ip().is_loopback() {
            return Err(invalid(
                "steer",
                format!(
                    "needs the upstream on loopback (127.0.0.1 or ::1), not {}: the sidecar's own \
                     connections to the app would be steered back to the sidecar",
                    self.upstream
                ),
            ));
        }
        if self.steer && self.mode == Mode::Transparent {
            return Err(invalid(
                "steer",
                "cannot be used with `mode: transparent`: the sidecar connects to the app from \
                 the client's address, and steering would hand that connection back to the \
                 sidecar; point the load balancer at the sidecar's port"
                    .into(),
            ));
        }
        if let Some((key, problem)) = self.http.limits.problem() {
            return Err(invalid(key, problem));
        }
        udp::validate(self).map_err(|(key, problem)| invalid(key, problem))
    }
}

/// A v4-mapped IPv6 address is the IPv4 client it maps, for trust checks on `[::]` listeners.
pub fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

// === impl TlvKind ===

impl std::str::FromStr for TlvKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(&(_, k)) = TLV_NAMES.iter().find(|(name, _)| *name == s) {
            return Ok(Self(k));
        }
        let number = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u8::from_str_radix(hex, 16),
            None => s.parse(),
        };
        match number {
            Ok(kind::CRC32C) => {
                Err("crc32c is never passed on (set `crc32c: true` to add a fresh one)".into())
            }
            Ok(k) => Ok(Self(k)),
            Err(_) => {
                let names: Vec<_> = TLV_NAMES.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "unknown TLV `{s}`, expected a number 0..=255 or one of {}",
                    names.join(", ")
                ))
            }
        }
    }
}

impl<'de> Deserialize<'de> for TlvKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = TlvKind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLV name or a number 0..=255")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TlvKind, E> {
                u8::try_from(v)
                    .map_err(|_| E::custom(format!("TLV type {v} is over 255")))
                    .and_then(|k| k.to_string().parse().map_err(E::custom))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TlvKind, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("TLV type {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TlvKind, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses `5s`, `250ms`, `1m 30s`. A visitor, so that an error carries the key and the line.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 5s or 250ms")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "`{v}` is not a duration ({e}); write e.g. 5s or 250ms"
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
}

/// Defaults, one place, each with why.
mod defaults {
    use super::{Duration, NonZeroUsize, PathBuf, TlvKind, kind};

    /// Long enough for a Kubernetes rollout to finish in-flight requests.
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn agent_socket() -> PathBuf {
        PathBuf::from(super::DEFAULT_AGENT_SOCKET)
    }

    /// Load balancers send the header at once (HAProxy) or with the client's first bytes
    /// (LoxiLB); 5 s leaves room for slow clients and still bounds slowloris.
    pub(super) fn header_timeout() -> Duration {
        Duration::from_secs(5)
    }

    /// Short enough that a server-speaks-first greeting is not noticeably delayed.
    pub(super) fn detect_timeout() -> Duration {
        Duration::from_secs(1)
    }

    /// Room for the TLVs clouds and HAProxy send (SSL, unique id, endpoint ids) and then some.
    pub(super) fn max_header_len() -> usize {
        trueip_proxy_header::DEFAULT_MAX_V2_LEN
    }

    /// "tr" (0x7472) for trueip: a table number no distribution or CNI plugin is known to use.
    pub(super) fn transparent_table() -> u32 {
        0x7472
    }

    /// Ahead of the `main` table's rule (32766) and of rules added without a priority (the
    /// kernel numbers those down from 32765), so they cannot shadow it by accident.
    pub(super) fn transparent_priority() -> u32 {
        0x7472
    }

    /// Bounds memory and file descriptors; the accept queue absorbs bursts above it.
    pub(super) fn max_connections() -> NonZeroUsize {
        NonZeroUsize::new(16_384).expect("non-zero")
    }

    /// What apps and clouds use; never CRC32c, which would be stale once TLVs are filtered.
    pub(super) fn tlv_allow() -> Vec<TlvKind> {
        [
            kind::AUTHORITY,
            kind::ALPN,
            kind::SSL,
            kind::UNIQUE_ID,
            kind::AWS,
            kind::AZURE,
            kind::GCP,
        ]
        .into_iter()
        .map(TlvKind)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
listeners:
  - name: web
    listen: 0.0.0.0:8080
    upstream: 127.0.0.1:80
    mode: proxy-v2
    trusted_sources: [10.0.0.0/8, 'fd00::/8']
    header_timeout: 2s
    tlv_allow: [authority, 0xEA, 5]
  - listen: '[::]:8443'
    upstream: '[::1]:443'
    header: optional
    trusted_sources: [0.0.0.0/0]
drain_timeout: 10s
";

    #[test]
    fn parses_a_full_file() {
        let c = Config::from_yaml(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 2);
        let web = &c.listeners[0];
        assert_eq!(web.name(), "web");
        assert_eq!(web.mode, Mode::ProxyV2);
        assert_eq!(web.header_timeout, Duration::from_secs(2));
        assert_eq!(
            web.tlv_allow,
            vec![TlvKind(kind::AUTHORITY), TlvKind(0xEA), TlvKind(5)]
        );
        assert!(web.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(web.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!web.is_trusted("192.0.2.1".parse().unwrap()));
        assert_eq!(c.listeners[1].name(), "[::]:8443");
        assert_eq!(c.listeners[1].header, HeaderPolicy::Optional);
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn transparent_mode_and_its_routing() {
        let yaml = "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    \
                    trusted_sources: [0.0.0.0/0]\n    mode: transparent\n    \
                    on_port_in_use: refuse\n";
        let c = Config::from_yaml(yaml).unwrap();
        assert_eq!(c.listeners[0].mode, Mode::Transparent);
        assert_eq!(c.listeners[0].on_port_in_use, PortInUsePolicy::Refuse);
        assert_eq!(c.transparent, TransparentConfig::default());
        let c =
            Config::from_yaml(&format!("{yaml}transparent:\n  table: 7\n  priority: 9\n")).unwrap();
        assert_eq!((c.transparent.table, c.transparent.priority), (7, 9));
        for (extra, key) in [
            ("transparent:\n  table: 254\n", "table"),
            ("transparent:\n  priority: 32766\n", "priority"),
            ("transparent:\n  fwmark: 1\n", "unknown field `fwmark`"),
        ] {
            let e = parse_err(&format!("{yaml}{extra}"));
            assert!(e.contains(key), "{extra} => {e}");
        }
        let e = parse_err(&yaml.replace("127.0.0.1:2", "10.0.0.1:2"));
        assert!(e.contains("upstream") && e.contains("transparent"), "{e}");
        let e = parse_err(
            &yaml
                .replace("transparent", "ebpf")
                .replace("on_port_in_use: refuse", "fallback: transparent"),
        );
        assert!(e.contains("fallback"), "{e}");
    }

    fn parse_err(yaml: &str) -> String {
        trueip_telemetry::error_chain(&Config::from_yaml(yaml).unwrap_err())
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse_err(
            "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    trusted: [10.0.0.0/8]\n",
        );
        assert!(e.contains("unknown field `trusted`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        for (yaml, key, line) in [
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    mode: magic\n",
                "mode",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:99999\n    upstream: 127.0.0.1:2\n",
                "listen",
                "line 2",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    trusted_sources: [10.0.0.0/33]\n",
                "trusted_sources",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    header_timeout: soon\n",
                "header_timeout",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    max_connections: 0\n",
                "max_connections",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    tlv_allow: [bogus]\n",
                "tlv_allow",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    tlv_allow: [3]\n",
                "tlv_allow",
                "line 4",
            ),
        ] {
            let e = parse_err(yaml);
            assert!(e.contains(key) && e.contains(line), "{yaml}\n=> {e}");
        }
    }

    #[test]
    fn fast_path_is_off_unless_asked_for() {
        let base = "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    \
                    mode: ebpf\n    trusted_sources: [10.0.0.0/8]\n";
        let l = |extra: &str| {
            Config::from_yaml(&format!("{base}{extra}")).map(|c| c.listeners[0].fast_path)
        };
        assert_eq!(l("").unwrap(), FastPathMode::Off);
        assert_eq!(l("    fast_path: sk-msg\n").unwrap(), FastPathMode::SkMsg);
        assert_eq!(l("    fast_path: sk_msg\n").unwrap(), FastPathMode::SkMsg);
        assert_eq!(l("    fast_path: off\n").unwrap(), FastPathMode::Off);
        let e = trueip_telemetry::error_chain(&l("    fast_path: sockmap\n").unwrap_err());
        assert!(e.contains("fast_path") && e.contains("sk-msg"), "{e}");
    }

    #[test]
    fn combinations_are_checked() {
        let base = "listeners:\n  - name: a\n    listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n";
        let e = parse_err(base);
        assert!(e.contains("trusted_sources"), "{e}");
        let e = parse_err(&format!("{base}    header: off\n    mode: proxy-v1\n"));
        assert!(e.contains("a: mode"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n    fallback: none\n"
        ));
        assert!(e.contains("fallback"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n    mode: transparent\n    steer: true\n"
        ));
        assert!(e.contains("a: steer") && e.contains("transparent"), "{e}");
        let e = parse_err(&base.replace("127.0.0.1:2", "10.0.0.5:2").replace(
            "upstream: 10.0.0.5:2\n",
            "upstream: 10.0.0.5:2\n    trusted_sources: [0.0.0.0/0]\n    steer: true\n",
        ));
        assert!(e.contains("a: steer") && e.contains("loopback"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:3\n    trusted_sources: [0.0.0.0/0]\n"
        ));
        assert!(e.contains("is used by another listener"), "{e}");
        assert_eq!(parse_err("listeners: []\n"), "no listeners configured");
    }
}
