//! The whole sidecar file: its listeners and the keys they share (drain, agent socket, admin
//! endpoint, traces, transparent-mode routing).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{limits::AdminConfig, listener::ListenerConfig};

/// Where the agent listens by default, as the Helm chart mounts it into the pod.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trueip/agent.sock";

/// The whole sidecar configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The listeners; each accepts load-balancer traffic and forwards it to one upstream app.
    pub listeners: Vec<ListenerConfig>,
    /// How long SIGTERM waits for open connections to finish before the process exits.
    #[serde(default = "defaults::drain_timeout", with = "crate::duration")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector, e.g. `http://otel-collector:4318` (HTTP) or `http://otel-collector:4317`.
    pub endpoint: String,
    /// How to talk to it.
    #[serde(default)]
    pub protocol: OtlpProtocol,
}

/// The OTLP transports trueip speaks, spelled as `OTEL_EXPORTER_OTLP_PROTOCOL` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318), the specification's default.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Config {
    /// A configuration with one listener, as the command line builds it.
    pub fn single(listener: ListenerConfig) -> Self {
        Self::with_listeners(vec![listener])
    }

    /// A configuration with these listeners and every shared key at its default.
    pub fn with_listeners(listeners: Vec<ListenerConfig>) -> Self {
        Self {
            listeners,
            drain_timeout: defaults::drain_timeout(),
            agent_socket: defaults::agent_socket(),
            metrics_listen: None,
            admin: AdminConfig::default(),
            otlp: None,
            transparent: TransparentConfig::default(),
        }
    }
}

/// Defaults of the shared keys, each with why.
mod defaults {
    use std::{path::PathBuf, time::Duration};

    /// Long enough for a Kubernetes rollout to finish in-flight requests.
    pub(super) fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn agent_socket() -> PathBuf {
        PathBuf::from(super::DEFAULT_AGENT_SOCKET)
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
}
