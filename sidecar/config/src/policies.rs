//! The choices a listener makes: how the app learns the client, whether a header is expected,
//! and what happens to untrusted headers, a full map, a taken port and the app's replies.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the app → load balancer bytes of an `ebpf` listener travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedPolicy {
    /// Close the connection.
    #[default]
    Reject,
    /// Deliver the bytes as they came, header included, without honouring it.
    Passthrough,
}

/// What an `ebpf` listener does when the pod's map has no room for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapFullPolicy {
    /// Deliver the connection; the app sees the sidecar as its peer.
    #[default]
    Deliver,
    /// Close the connection.
    Refuse,
}

/// What a `transparent` listener does when the client's address and port are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortInUsePolicy {
    /// Connect from the client's address with a port the kernel chooses: the app sees the
    /// client's address, not its port.
    #[default]
    AnyPort,
    /// Close the connection.
    Refuse,
}
