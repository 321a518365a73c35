//! The injector's configuration file: what the injected sidecar looks like, and the settings of
//! pods that leave an annotation out. The Helm chart renders it into a ConfigMap from its values,
//! so each setting has one source (values.yaml) and the chart tests feed the rendered file to
//! this parser.

use std::{
    net::IpAddr,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::Deserialize;

use crate::settings::{self, Defaults, HeaderPolicy, Mode};

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
}

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
}

/// The `defaults` section, in the annotations' syntax.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DefaultsFile {
    /// Like `trueip.io/ports`; empty: pods without the annotation are not injected.
    #[serde(default)]
    ports: String,
    /// Like `trueip.io/mode`.
    #[serde(default)]
    mode: Mode,
    /// Like `trueip.io/header`.
    #[serde(default)]
    header: HeaderPolicy,
    /// Like `trueip.io/trusted-cidrs`, one CIDR or address per item.
    #[serde(default, rename = "trustedCIDRs")]
    trusted_cidrs: Vec<String>,
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
    /// Human-readable lines.
    Human,
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
    #[error("{path}: {source}")]
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
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

mod defaults {
    use std::{
        net::{IpAddr, Ipv4Addr},
        path::PathBuf,
    };

    use crate::settings::Mode;

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
        PathBuf::from(trueip_sidecar_app::config::DEFAULT_AGENT_SOCKET)
    }

    pub(super) fn listen_address() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
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
        let invalid = |key, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
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
        let trusted = settings::parse_cidrs(&defaults.trusted_cidrs.join(","))
            .map_err(|p| invalid("defaults.trustedCIDRs", p))?;
        Ok(Self {
            defaults: Defaults {
                ports,
                mode: defaults.mode,
                header: defaults.header,
                trusted,
            },
            sidecar,
            allowed_modes,
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
            Self::Human => "human",
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
  logFormat: human
  logLevel: debug
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
        assert_eq!(c.sidecar.log_format, LogFormat::Human);
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
            Path::new(trueip_sidecar_app::config::DEFAULT_AGENT_SOCKET)
        );
        assert_eq!(c.sidecar.log_format, LogFormat::Json);
        assert_eq!(c.sidecar.metrics_port, 0);
        assert_eq!(c.defaults, Defaults::default());
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
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
