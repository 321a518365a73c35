//! The injector's configuration file: what the injected sidecar looks like, and the settings of
//! pods that leave an annotation out. The Helm chart renders it into a ConfigMap from its values,
//! so each setting has one source (values.yaml) and the chart tests feed the rendered file to
//! this parser.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trueip_sidecar_config::FileError;

use crate::{
    file::check_template,
    settings::{self, Defaults, HeaderPolicy, Mode, Steer},
    template::SidecarTemplate,
};

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

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] FileError),
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
    use crate::settings::{self, Mode};

    /// See [`settings::DEFAULT_MODE`].
    pub(super) fn mode() -> Mode {
        settings::DEFAULT_MODE
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

    pub(super) fn allow_steering() -> bool {
        true
    }
}

// === impl Config ===

impl Config {
    /// Reads and checks the file at `path`.
    pub(crate) fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = FileError::read(path)?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks YAML text; `path` names it in errors.
    pub(crate) fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = FileError::parse(path, text)?;
        let invalid = |(key, problem): (&str, String)| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let sidecar = file.sidecar;
        sidecar.check().map_err(invalid)?;
        // What every sidecar gets from here (`http`, `admin`, ...) is checked once now, by the
        // sidecar's parser, so that a bad chart value stops the injector at start instead of
        // refusing every pod.
        check_template(&sidecar).map_err(|e| refused_template(path, &e))?;
        let allowed_modes = allowed_modes(file.allowed_modes).map_err(invalid)?;
        let defaults = file
            .defaults
            .resolve(&allowed_modes, sidecar.steer_port)
            .map_err(invalid)?;
        Ok(Self {
            defaults,
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

/// `allowedModes` without repeats; empty is refused, since no pod could be injected.
fn allowed_modes(listed: Vec<Mode>) -> Result<Vec<Mode>, (&'static str, String)> {
    let mut allowed: Vec<Mode> = Vec::new();
    for mode in listed {
        if !allowed.contains(&mode) {
            allowed.push(mode);
        }
    }
    if allowed.is_empty() {
        return Err((
            "allowedModes",
            format!("is empty: no pod could be injected (chart value {ALLOWED_MODES_VALUE})"),
        ));
    }
    Ok(allowed)
}

// === impl DefaultsFile ===

impl DefaultsFile {
    /// The settings of pods that leave an annotation out, parsed as the annotations are, and
    /// usable under `allowed_modes`; `steer_port` (the template's) is checked where the file
    /// always checked it, after the ports.
    fn resolve(
        &self,
        allowed_modes: &[Mode],
        steer_port: u16,
    ) -> Result<Defaults, (&'static str, String)> {
        if !allowed_modes.contains(&self.mode) {
            return Err((
                "defaults.mode",
                format!(
                    "{} is not in allowedModes ({}; chart value {ALLOWED_MODES_VALUE}): every pod \
                     without a {} annotation would be refused",
                    self.mode,
                    settings::list_modes(allowed_modes),
                    settings::MODE,
                ),
            ));
        }
        let ports = settings::parse_ports(&self.ports).map_err(|p| ("defaults.ports", p))?;
        let udp_ports =
            settings::parse_udp_ports(&self.udp_ports).map_err(|p| ("defaults.udpPorts", p))?;
        if self.steer == Steer::False
            && let Some(lone) = ports.iter().find(|p| p.listen == p.upstream)
        {
            return Err((
                "defaults.ports",
                format!(
                    "port {} is listed alone, which needs steering (defaults.steer is false): \
                     give `listen:upstream`",
                    lone.listen
                ),
            ));
        }
        if steer_port == 0 {
            return Err(("sidecar.steerPort", "must be a port, 1-65535".into()));
        }
        let trusted = settings::parse_cidrs(&self.trusted_cidrs.join(","))
            .map_err(|p| ("defaults.trustedCIDRs", p))?;
        Ok(Defaults {
            ports,
            udp_ports,
            steer: self.steer,
            mode: self.mode,
            header: self.header,
            trusted,
        })
    }
}

/// The sidecar's refusal of the sample file, under the injector's key. The sidecar names its
/// own keys in a file nobody sees (`listeners[0].http.limits: unknown field ...` at some line,
/// or `http.limits.max_request_head: ...`); the `http` section is `sidecar.http` here.
fn refused_template(path: &Path, error: &trueip_sidecar_config::ConfigError) -> ConfigError {
    use trueip_sidecar_config::ConfigError as Sidecar;
    let (key, problem) = match error {
        Sidecar::Invalid { key, problem, .. } => ((*key).to_owned(), problem.clone()),
        Sidecar::File(FileError::Parse { source, .. }) => {
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

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::IpAddr, num::NonZeroUsize, time::Duration};

    use super::*;
    use crate::{
        settings::PortPair,
        template::{AdminTemplate, LogFormat, PullPolicy},
    };

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
