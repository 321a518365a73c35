//! The chart's `sidecar` section: everything about the injected container that is the same for
//! every pod (image, user, addresses, the sections every sidecar file gets).

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Deserializer};
use serde_norway::Mapping;
use trueip_sidecar_config::Mode;

/// Everything about the injected container that is the same for every pod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SidecarTemplate {
    /// The sidecar image, with its tag or digest.
    pub(crate) image: String,
    /// The container's `imagePullPolicy`.
    #[serde(default)]
    pub(crate) image_pull_policy: PullPolicy,
    /// Requests and limits of the sidecar container.
    #[serde(default)]
    pub(crate) resources: ResourceRequirements,
    /// The unprivileged user the sidecar runs as.
    #[serde(default = "defaults::run_as")]
    pub(crate) run_as_user: i64,
    /// The group the sidecar runs as.
    #[serde(default = "defaults::run_as")]
    pub(crate) run_as_group: i64,
    /// The node agent's socket on the node; its directory is mounted at the same path in pods
    /// that use the `ebpf` mode.
    #[serde(default = "defaults::agent_socket")]
    pub(crate) agent_socket: PathBuf,
    /// The address the sidecar's listeners bind (`0.0.0.0`, or `::` for IPv6 and dual-stack).
    #[serde(default = "defaults::listen_address")]
    pub(crate) listen_address: IpAddr,
    /// The app's address, on loopback.
    #[serde(default = "defaults::upstream_address")]
    pub(crate) upstream_address: IpAddr,
    /// The first port the sidecar may take for a steered port listed alone (the app keeps the
    /// listed port; the sidecar's own listener needs another).
    #[serde(default = "defaults::steer_port")]
    pub(crate) steer_port: u16,
    /// Port of the sidecar's `/metrics`, `/healthz` and `/readyz`; 0: not served.
    #[serde(default)]
    pub(crate) metrics_port: u16,
    /// `ebpf` mode: the mode to use when the agent cannot be reached at start; unset: the
    /// sidecar refuses to start (the pod shows it) rather than silently not restoring.
    #[serde(default)]
    pub(crate) fallback: Option<Mode>,
    /// The sidecar's log format.
    #[serde(default)]
    pub(crate) log_format: LogFormat,
    /// The sidecar's `RUST_LOG`.
    #[serde(default = "defaults::log_level")]
    pub(crate) log_level: String,
    /// Every listener's `allow_loopback_clients`: honour PROXY headers that name a loopback
    /// client. Only a load balancer on the node itself relays such clients.
    #[serde(default)]
    pub(crate) allow_loopback_clients: bool,
    /// The `http` section of every listener in `http` mode, in the sidecar's own keys
    /// (`client_headers`, `limits.max_request_head`, ...). Checked once at start as it is, by
    /// the sidecar's parser in a sample listener, then read as the sidecar's `HttpConfig` for
    /// each pod's file. `tls` is refused: the injector mounts no certificate.
    #[serde(default, deserialize_with = "mapping_or_null")]
    pub(crate) http: Mapping,
    /// Bounds of the sidecar's `/metrics`, `/healthz`, `/readyz` endpoint (when served).
    #[serde(default)]
    pub(crate) admin: AdminTemplate,
    /// Where the sidecars export traces; no endpoint: none.
    #[serde(default)]
    pub(crate) otlp: OtlpTemplate,
}

impl SidecarTemplate {
    /// What the types alone cannot catch: the key at fault and what is wrong.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.image.trim().is_empty() {
            return Err(("sidecar.image", "is empty".into()));
        }
        let socket_dir = self.agent_socket.parent();
        // `..` is refused too: the webhook compares pods' host paths with this directory.
        if !self.agent_socket.is_absolute()
            || socket_dir.is_none_or(|dir| dir == Path::new("/"))
            || self
                .agent_socket
                .components()
                .any(|c| c == Component::ParentDir)
        {
            return Err((
                "sidecar.agentSocket",
                format!(
                    "{} must be an absolute path without `..`, in a directory of its own (that \
                     directory is mounted into pods)",
                    self.agent_socket.display()
                ),
            ));
        }
        if let Some(mode @ (Mode::Ebpf | Mode::Transparent)) = self.fallback {
            return Err((
                "sidecar.fallback",
                format!(
                    "cannot be {mode} (it needs set-up at start); use none, proxy-v1 or proxy-v2"
                ),
            ));
        }
        if self.http.contains_key("tls") {
            return Err((
                "sidecar.http.tls",
                "cannot be set here: the injector mounts no certificate into pods".into(),
            ));
        }
        if self.admin.header_timeout.is_zero() {
            return Err((
                "sidecar.admin.headerTimeout",
                "must be longer than 0s".into(),
            ));
        }
        Ok(())
    }
}

/// The sidecars' OTLP export, passed as the standard `OTEL_*` variables (which the sidecar
/// reads, as any OpenTelemetry SDK does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(crate) struct OtlpTemplate {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://otel-collector.observability:4318`; empty:
    /// no traces.
    pub(crate) endpoint: String,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` or `grpc`; empty: the sidecar's default.
    pub(crate) protocol: String,
    /// `OTEL_TRACES_SAMPLER` (`parentbased_traceidratio`, `always_on`, ...); empty: the SDK's.
    pub(crate) sampler: String,
    /// `OTEL_TRACES_SAMPLER_ARG` (the ratio of `*traceidratio` samplers).
    pub(crate) sampler_arg: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, e.g. `{deployment.environment: prod}`.
    pub(crate) resource_attributes: std::collections::BTreeMap<String, String>,
}

impl OtlpTemplate {
    /// The sidecar container's `OTEL_*` variables; none without an endpoint.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        if self.endpoint.trim().is_empty() {
            return Vec::new();
        }
        let attributes = self
            .resource_attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", self.protocol.clone()),
            ("OTEL_TRACES_SAMPLER", self.sampler.clone()),
            ("OTEL_TRACES_SAMPLER_ARG", self.sampler_arg.clone()),
            ("OTEL_RESOURCE_ATTRIBUTES", attributes),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect()
    }
}

/// The sidecar's `admin` section: bounds of its metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(crate) struct AdminTemplate {
    /// How long a scraper or probe has to send its request head (`5s`).
    #[serde(deserialize_with = "trueip_sidecar_config::deserialize_duration")]
    pub(crate) header_timeout: Duration,
    /// Connections served at once.
    pub(crate) max_connections: NonZeroUsize,
}

impl Default for AdminTemplate {
    /// The sidecar's own defaults.
    fn default() -> Self {
        let admin = trueip_sidecar_config::AdminConfig::default();
        Self {
            header_timeout: admin.header_timeout,
            max_connections: admin.max_connections,
        }
    }
}

/// A mapping; `null` (a chart value set to `null`) is an empty one.
fn mapping_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Mapping, D::Error> {
    Option::<Mapping>::deserialize(d).map(Option::unwrap_or_default)
}

/// A container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub(crate) enum PullPolicy {
    /// Pull every time the container starts.
    Always,
    /// Pull when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

/// The sidecar's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines (`human`: the old spelling, still taken).
    #[serde(alias = "human")]
    Text,
    /// One JSON object per line (log collectors).
    #[default]
    Json,
}

// === impl PullPolicy ===

impl PullPolicy {
    /// The spelling Kubernetes uses.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

// === impl LogFormat ===

impl LogFormat {
    /// The sidecar's flag value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Defaults of the template's keys.
mod defaults {
    use std::{
        net::{IpAddr, Ipv4Addr},
        path::PathBuf,
    };

    /// distroless' `nonroot` user and group.
    pub(super) fn run_as() -> i64 {
        65532
    }

    pub(super) fn agent_socket() -> PathBuf {
        PathBuf::from(trueip_sidecar_config::DEFAULT_AGENT_SOCKET)
    }

    pub(super) fn listen_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    pub(super) fn steer_port() -> u16 {
        14008
    }

    pub(super) fn upstream_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    pub(super) fn log_level() -> String {
        "info".to_owned()
    }
}
