//! One listener's keys: where it listens, where the app is, how the client is handed over, and
//! its defaults.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    http::HttpConfig,
    policies::{FastPathMode, HeaderPolicy, MapFullPolicy, Mode, PortInUsePolicy, UntrustedPolicy},
    tlv::TlvKind,
    udp::{self, DatagramHeader, Protocol},
};

/// One listener: an address the load balancer connects to, the app it forwards to, and how the
/// client address is handed over.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default = "defaults::header_timeout", with = "crate::duration")]
    pub header_timeout: Duration,
    /// With `header: optional`, how long to wait for the first byte before treating the
    /// connection as headerless, so that protocols where the server speaks first still work.
    #[serde(default = "defaults::detect_timeout", with = "crate::duration")]
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
    #[serde(default = "udp::defaults::flow_idle_timeout", with = "crate::duration")]
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

/// Defaults of a listener's keys, each with why.
mod defaults {
    use std::{num::NonZeroUsize, time::Duration};

    use trueip_proxy_header::kind;

    use crate::tlv::TlvKind;

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
