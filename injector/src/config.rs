//! The injector's configuration file: what the injected sidecar looks like, and the settings of
//! pods that leave an annotation out. The Helm chart renders it into a ConfigMap from its values,
//! so each setting has one source (values.yaml) and the chart tests feed the rendered file to
//! this parser.

use std::{
    net::IpAddr,
    num::NonZeroUsize,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::{Deserialize, Deserializer};
use serde_norway::Mapping;

use crate::settings::{self, Defaults, HeaderPolicy, Mode, Steer};

/// The parsed, checked configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The sidecar container every injected pod gets.
    pub(crate) sidecar: SidecarTemplate,
    /// Settings for pods without the matching annotation.
    pub(crate) defaults: Defaults,
    /// The modes a pod may ask for (chart value [`ALLOWED_MODES_VALUE`]); the others are refused
    /// at admission, so that an annotation alone never gives a container root and CAP_NET_ADMIN
    /// (`transparent`) unless the operator allowed it.
    pub(crate) allowed_modes: Vec<Mode>,
    /// Whether pods may be steered (chart value [`ALLOW_STEERING_VALUE`], off without the
    /// agent): steering attaches a program to the pod's network namespace and mounts the
    /// agent's socket, in any mode.
    pub(crate) allow_steering: bool,
}

/// The chart value behind `allowSteering`, which refusals name.
pub(crate) const ALLOW_STEERING_VALUE: &str = "injector.allowSteering";

/// The chart value behind `allowedModes`, which refusals name so the user knows whom to ask.
pub(crate) const ALLOWED_MODES_VALUE: &str = "injector.allowedModes";

/// The file's layout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    sidecar: SidecarTemplate,
    #[serde(default)]
    defaults: DefaultsFile,
    /// The modes pods may use; default: all but `transparent`.
    #[serde(default = "defaults::allowed_modes")]
    allowed_modes: Vec<Mode>,
    /// Whether pods may be steered; default: yes.
    #[serde(default = "defaults::allow_steering")]
    allow_steering: bool,
}

/// The `defaults` section, in the annotations' syntax.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DefaultsFile {
    /// Like `trueip.io/ports`; empty (and no `udpPorts`): pods without the annotation are not
    /// injected.
    #[serde(default)]
    ports: String,
    /// Like `trueip.io/udp-ports`.
    #[serde(default)]
    udp_ports: String,
    /// Like `trueip.io/steer`.
    #[serde(default)]
    steer: Steer,
    /// Like `trueip.io/mode`; default: `ebpf`, the mode that needs nothing of the app.
    #[serde(default = "defaults::mode")]
    mode: Mode,
    /// Like `trueip.io/header`.
    #[serde(default)]
    header: HeaderPolicy,
    /// Like `trueip.io/trusted-cidrs`, one CIDR or address per item.
    #[serde(default, rename = "trustedCIDRs")]
    trusted_cidrs: Vec<String>,
}

impl Default for DefaultsFile {
    fn default() -> Self {
        Self {
            ports: String::new(),
            udp_ports: String::new(),
            steer: Steer::default(),
            mode: defaults::mode(),
            header: HeaderPolicy::default(),
            trusted_cidrs: Vec::new(),
        }
    }
}

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
    /// (`client_headers`, `limits.max_request_head`, ...). Passed through as it is; the
    /// sidecar's parser checks it when the file is read ([`Config::from_yaml`] does it once
    /// with a sample listener). `tls` is refused: the injector mounts no certificate.
    #[serde(default, deserialize_with = "mapping_or_null")]
    pub(crate) http: Mapping,
    /// Bounds of the sidecar's `/metrics`, `/healthz`, `/readyz` endpoint (when served).
    #[serde(default)]
    pub(crate) admin: AdminTemplate,
    /// Where the sidecars export traces; no endpoint: none.
    #[serde(default)]
    pub(crate) otlp: OtlpTemplate,
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
    #[serde(deserialize_with = "duration")]
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

/// `5s`, `250ms`, `1m 30s`, as the sidecar spells durations. A visitor, so that an error
/// carries the key and the line.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 5s or 250ms")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "`{v}` is not a duration ({e}); write e.g. 5s or 250ms"
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
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

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Malformed YAML, an unknown key or a bad value; the message names key and line.
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_norway::Error,
    },
    /// A value that parses but cannot be used.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key at fault (`sidecar.http.limits.max_request_head`).
        key: String,
        /// What is wrong.
        problem: String,
    },
}

mod defaults {
    use std::{
        net::{IpAddr, Ipv4Addr},
        path::PathBuf,
    };

    use crate::settings::{self, Mode};

    /// See [`settings::DEFAULT_MODE`].
    pub(super) fn mode() -> Mode {
        settings::DEFAULT_MODE
    }

    /// distroless' `nonroot` user and group.
    pub(super) fn run_as() -> i64 {
        65532
    }

    /// Every mode but `transparent`, the one that gives the sidecar root and CAP_NET_ADMIN.
    pub(super) fn allowed_modes() -> Vec<Mode> {
        vec![
            Mode::None,
            Mode::ProxyV1,
            Mode::ProxyV2,
            Mode::Ebpf,
            Mode::Http,
        ]
    }

    pub(super) fn agent_socket() -> PathBuf {
        PathBuf::from(trueip_sidecar_config::DEFAULT_AGENT_SOCKET)
    }

    pub(super) fn listen_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    pub(super) fn allow_steering() -> bool {
        true
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

// === impl Config ===

impl Config {
    /// Reads and checks the file at `path`.
    pub(crate) fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks YAML text; `path` names it in errors.
    pub(crate) fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile =
            serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let sidecar = file.sidecar;
        if sidecar.image.trim().is_empty() {
            return Err(invalid("sidecar.image", "is empty".into()));
        }
        let socket_dir = sidecar.agent_socket.parent();
        // `..` is refused too: the webhook compares pods' host paths with this directory.
        if !sidecar.agent_socket.is_absolute()
            || socket_dir.is_none_or(|dir| dir == Path::new("/"))
            || sidecar
                .agent_socket
                .components()
                .any(|c| c == Component::ParentDir)
        {
            return Err(invalid(
                "sidecar.agentSocket",
                format!(
                    "{} must be an absolute path without `..`, in a directory of its own (that \
                     directory is mounted into pods)",
                    sidecar.agent_socket.display()
                ),
            ));
        }
        if let Some(mode @ (Mode::Ebpf | Mode::Transparent)) = sidecar.fallback {
            return Err(invalid(
                "sidecar.fallback",
                format!(
                    "cannot be {mode} (it needs set-up at start); use none, proxy-v1 or proxy-v2"
                ),
            ));
        }
        if sidecar.http.contains_key("tls") {
            return Err(invalid(
                "sidecar.http.tls",
                "cannot be set here: the injector mounts no certificate into pods".into(),
            ));
        }
        if sidecar.admin.header_timeout.is_zero() {
            return Err(invalid(
                "sidecar.admin.headerTimeout",
                "must be longer than 0s".into(),
            ));
        }
        // What every sidecar gets from here (`http`, `admin`, ...) is checked once now, by the
        // sidecar's parser, so that a bad chart value stops the injector at start instead of
        // refusing every pod.
        crate::sidecar::check_template(&sidecar).map_err(|e| refused_template(path, &e))?;
        let mut allowed_modes: Vec<Mode> = Vec::new();
        for mode in file.allowed_modes {
            if !allowed_modes.contains(&mode) {
                allowed_modes.push(mode);
            }
        }
        if allowed_modes.is_empty() {
            return Err(invalid(
                "allowedModes",
                format!("is empty: no pod could be injected (chart value {ALLOWED_MODES_VALUE})"),
            ));
        }
        let defaults = &file.defaults;
        if !allowed_modes.contains(&defaults.mode) {
            return Err(invalid(
                "defaults.mode",
                format!(
                    "{} is not in allowedModes ({}; chart value {ALLOWED_MODES_VALUE}): every pod \
                     without a {} annotation would be refused",
                    defaults.mode,
                    settings::list_modes(&allowed_modes),
                    settings::MODE,
                ),
            ));
        }
        let ports =
            settings::parse_ports(&defaults.ports).map_err(|p| invalid("defaults.ports", p))?;
        let udp_ports = settings::parse_udp_ports(&defaults.udp_ports)
            .map_err(|p| invalid("defaults.udpPorts", p))?;
        if defaults.steer == Steer::False
            && let Some(lone) = ports.iter().find(|p| p.listen == p.upstream)
        {
            return Err(invalid(
                "defaults.ports",
                format!(
                    "port {} is listed alone, which needs steering (defaults.steer is false): \
                     give `listen:upstream`",
                    lone.listen
                ),
            ));
        }
        if sidecar.steer_port == 0 {
            return Err(invalid(
                "sidecar.steerPort",
                "must be a port, 1-65535".into(),
            ));
        }
        let trusted = settings::parse_cidrs(&defaults.trusted_cidrs.join(","))
            .map_err(|p| invalid("defaults.trustedCIDRs", p))?;
        Ok(Self {
            defaults: Defaults {
                ports,
                udp_ports,
                steer: defaults.steer,
                mode: defaults.mode,
                header: defaults.header,
                trusted,
            },
            sidecar,
            allowed_modes,
            allow_steering: file.allow_steering,
        })
    }

    /// The directory of the agent's socket (checked to exist when the file is read).
    pub(crate) fn agent_socket_dir(&self) -> &Path {
        self.sidecar
            .agent_socket
            .parent()
            .unwrap_or(Path::new("/run"))
    }
}

/// The sidecar's refusal of the sample file, under the injector's key. The sidecar names its
/// own keys in a file nobody sees (`listeners[0].http.limits: unknown field ...` at some line,
/// or `http.limits.max_request_head: ...`); the `http` section is `sidecar.http` here.
fn refused_template(path: &Path, error: &trueip_sidecar_config::ConfigError) -> ConfigError {
    use trueip_sidecar_config::ConfigError as Sidecar;
    let (key, problem) = match error {
        Sidecar::Invalid { key, problem, .. } => ((*key).to_owned(), problem.clone()),
        Sidecar::Parse { source, .. } => {
            let mut text = source.to_string();
            if let Some(at) = source.location() {
                let mark = format!(" at line {} column {}", at.line(), at.column());
                if text.ends_with(&mark) {
                    text.truncate(text.len() - mark.len());
                }
            }
            match text.split_once(": ") {
                Some((key, problem)) if key.starts_with("listeners[0].") => {
                    (key["listeners[0].".len()..].to_owned(), problem.to_owned())
                }
                _ => (String::new(), text),
            }
        }
        other => (String::new(), other.to_string()),
    };
    let (key, problem) = match key.strip_prefix("http") {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => {
            (format!("sidecar.http{rest}"), problem)
        }
        _ if key.is_empty() => ("sidecar".to_owned(), problem),
        _ => ("sidecar".to_owned(), format!("{key}: {problem}")),
    };
    ConfigError::Invalid {
        path: path.to_owned(),
        key,
        problem,
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::settings::PortPair;

    /// A complete configuration, as the chart renders it.
    pub(crate) const FULL: &str = r#"
sidecar:
  image: ghcr.io/trueip/trueip-sidecar:0.1.0
  imagePullPolicy: Always
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  runAsUser: 1000
  runAsGroup: 1000
  agentSocket: /run/trueip/agent.sock
  listenAddress: "::"
  upstreamAddress: 127.0.0.1
  metricsPort: 9902
  fallback: proxy-v1
  logFormat: text
  logLevel: debug
  allowLoopbackClients: true
  http: {"allow_connect":false,"client_headers":"append","forwarded":false,"limits":{"header_read_timeout":"5s","max_request_head":65536},"strip_headers":["x-internal-user"],"tlv_headers":{"unique_id":"x-request-id"},"x_forwarded_for":"x-client-chain","x_forwarded_proto":"x-forwarded-proto","x_real_ip":false}
  admin: {"headerTimeout":"3s","maxConnections":8}
  otlp: {"endpoint":"http://otel-collector.observability:4318","protocol":"grpc","sampler":"parentbased_traceidratio","samplerArg":"0.25","resourceAttributes":{"deployment.environment":"prod","team":"shop"}}
defaults:
  ports: "8080:80"
  mode: proxy-v2
  header: optional
  trustedCIDRs: [10.0.0.0/8, 192.0.2.1]
allowedModes: [none, proxy-v1, proxy-v2, ebpf, http]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("config.yaml"))
    }

    #[test]
    fn full() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.sidecar.image_pull_policy, PullPolicy::Always);
        assert_eq!(c.sidecar.run_as_user, 1000);
        assert_eq!(c.sidecar.listen_address, "::".parse::<IpAddr>().unwrap());
        assert_eq!(c.sidecar.fallback, Some(Mode::ProxyV1));
        assert_eq!(c.sidecar.metrics_port, 9902);
        assert_eq!(c.sidecar.log_format, LogFormat::Text);
        assert_eq!(c.agent_socket_dir(), Path::new("/run/trueip"));
        assert_eq!(
            c.sidecar.resources.limits.unwrap()["memory"].0,
            "64Mi".to_owned()
        );
        assert_eq!(
            c.defaults.ports,
            [PortPair {
                listen: 8080,
                upstream: 80
            }]
        );
        assert_eq!(c.defaults.mode, Mode::ProxyV2);
        assert_eq!(c.defaults.trusted.len(), 2);
        assert!(!c.allowed_modes.contains(&Mode::Transparent));
        assert!(c.sidecar.allow_loopback_clients);
        assert_eq!(c.sidecar.http.len(), 9);
        assert_eq!(
            c.sidecar.http["limits"]["max_request_head"].as_u64(),
            Some(65536)
        );
        assert_eq!(
            c.sidecar.admin,
            AdminTemplate {
                header_timeout: Duration::from_secs(3),
                max_connections: NonZeroUsize::new(8).unwrap(),
            }
        );
    }

    #[test]
    fn transparent_is_allowed_only_when_listed() {
        let c = parse("sidecar: {image: x}").unwrap();
        assert_eq!(
            c.allowed_modes,
            [
                Mode::None,
                Mode::ProxyV1,
                Mode::ProxyV2,
                Mode::Ebpf,
                Mode::Http
            ]
        );
        let c = parse("sidecar: {image: x}\nallowedModes: [ebpf, transparent, ebpf]").unwrap();
        assert_eq!(c.allowed_modes, [Mode::Ebpf, Mode::Transparent]);
        let c = parse(
            "sidecar: {image: x}\ndefaults: {mode: transparent}\nallowedModes: [transparent]",
        )
        .unwrap();
        assert_eq!(c.defaults.mode, Mode::Transparent);
    }

    #[test]
    fn minimal() {
        let c = parse("sidecar: {image: trueip-sidecar:dev}").unwrap();
        assert_eq!(c.sidecar.run_as_user, 65532);
        assert_eq!(
            c.sidecar.agent_socket,
            Path::new(trueip_sidecar_config::DEFAULT_AGENT_SOCKET)
        );
        assert_eq!(c.sidecar.log_format, LogFormat::Json);
        assert_eq!(c.sidecar.metrics_port, 0);
        assert_eq!(c.defaults, Defaults::default());
        assert!(!c.sidecar.allow_loopback_clients);
        assert!(c.sidecar.http.is_empty());
        let admin = trueip_sidecar_config::AdminConfig::default();
        assert_eq!(c.sidecar.admin.header_timeout, admin.header_timeout);
        assert_eq!(c.sidecar.admin.max_connections, admin.max_connections);
        // A chart value set to null is an empty section.
        let c = parse("sidecar: {image: x, http: null}").unwrap();
        assert!(c.sidecar.http.is_empty());
    }

    #[test]
    fn a_bad_http_section_stops_the_injector_with_the_key() {
        // The sidecar's own checks, under the chart's key, without the line of a sample file
        // nobody sees.
        for (http, expected) in [
            (
                "{limits: {max_request_head: 10}}",
                "config.yaml: sidecar.http.limits.max_request_head: 10 is outside 8192..=1048576",
            ),
            (
                "{limits: {header_read_timeout: 0s}}",
                "config.yaml: sidecar.http.limits.header_read_timeout: must be longer than 0s",
            ),
            (
                "{limits: {h2_stream_window: 100}}",
                "config.yaml: sidecar.http.limits.h2_stream_window: 100 is outside 65535..=",
            ),
            (
                "{limits: {max_head: 65536}}",
                "config.yaml: sidecar.http.limits: unknown field `max_head`, expected one of \
                 `max_request_head`",
            ),
            (
                "{colour: blue}",
                "config.yaml: sidecar.http: unknown field `colour`, expected one of",
            ),
            (
                "{x_real_ip: 'bad header'}",
                "config.yaml: sidecar.http.x_real_ip: `bad header` is not a valid header name",
            ),
            (
                "{strip_headers: [ok, 'not ok']}",
                // (the sidecar names the list's section, not the list)
                "config.yaml: sidecar.http: `not ok` is not a valid header name",
            ),
            (
                "{client_headers: keep}",
                "config.yaml: sidecar.http.client_headers: unknown variant `keep`",
            ),
            (
                "{limits: {keep_alive_timeout: soon}}",
                "config.yaml: sidecar.http.limits.keep_alive_timeout: `soon` is not a duration",
            ),
            (
                "{tls: {cert: /tls/tls.crt, key: /tls/tls.key}}",
                "config.yaml: sidecar.http.tls: cannot be set here",
            ),
            (
                "5",
                "sidecar.http: invalid type: integer `5`, expected a YAML mapping",
            ),
        ] {
            let text = format!("sidecar: {{image: x, metricsPort: 9902, http: {http}}}");
            let e = trueip_telemetry::error_chain(&parse(&text).unwrap_err());
            assert!(e.contains(expected), "{http}: {e}");
            if http != "5" {
                assert!(!e.contains("line"), "{http}: {e}");
            }
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("sidecar: {image: ' '}", "sidecar.image: is empty"),
            (
                "sidecar: {image: x, agentSocket: agent.sock}",
                "sidecar.agentSocket",
            ),
            (
                "sidecar: {image: x, agentSocket: /agent.sock}",
                "sidecar.agentSocket",
            ),
            ("sidecar: {image: x, fallback: ebpf}", "sidecar.fallback"),
            (
                "sidecar: {image: x, fallback: transparent}",
                "sidecar.fallback",
            ),
            (
                "sidecar: {image: x}\ndefaults: {ports: web}",
                "defaults.ports: `web` is not a port",
            ),
            (
                "sidecar: {image: x}\ndefaults: {trustedCIDRs: [lb]}",
                "defaults.trustedCIDRs: `lb` is not a CIDR",
            ),
            (
                "sidecar: {image: x, imagePullPolicy: Sometimes}",
                "unknown variant",
            ),
            (
                "sidecar: {image: x, colour: blue}",
                "unknown field `colour`",
            ),
            (
                "sidecar: {image: x, agentSocket: /run/trueip/../agent.sock}",
                "sidecar.agentSocket: /run/trueip/../agent.sock must be an absolute path without \
                 `..`",
            ),
            (
                "sidecar: {image: x}\ndefaults: {mode: transparent}",
                "defaults.mode: transparent is not in allowedModes (none, proxy-v1, proxy-v2, \
                 ebpf, http; chart value injector.allowedModes)",
            ),
            (
                "sidecar: {image: x}\nallowedModes: [proxy-v1]",
                "defaults.mode: ebpf is not in allowedModes (proxy-v1;",
            ),
            (
                "sidecar: {image: x}\nallowedModes: []",
                "allowedModes: is empty",
            ),
            (
                "sidecar: {image: x}\nallowedModes: [tproxy]",
                "unknown variant `tproxy`",
            ),
            (
                "sidecar: {image: x, admin: {headerTimeout: 0s}}",
                "sidecar.admin.headerTimeout: must be longer than 0s",
            ),
            (
                "sidecar: {image: x, admin: {headerTimeout: soon}}",
                "sidecar.admin.headerTimeout: `soon` is not a duration",
            ),
            (
                "sidecar: {image: x, admin: {maxConnections: 0}}",
                "sidecar.admin.maxConnections: invalid value: integer `0`",
            ),
            (
                "sidecar: {image: x, admin: {max_connections: 1}}",
                "sidecar.admin: unknown field `max_connections`",
            ),
            (
                "sidecar: {image: x, allowLoopbackClients: yes}",
                "sidecar.allowLoopbackClients: invalid type",
            ),
        ];
        for (text, expected) in cases {
            let e = trueip_telemetry::error_chain(&parse(text).unwrap_err());
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
