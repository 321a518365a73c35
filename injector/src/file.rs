//! The sidecar's configuration file as a pod gets it: its listeners planned from the pod's
//! ports (a steered lone port gets a sidecar port of its own), built as the sidecar's own
//! `Config` and written by its writer, and why no file can be made for a pod.

use std::{collections::BTreeSet, net::SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde_norway::Value;
use trueip_sidecar_config::{
    AdminConfig, Config, ConfigError, FileError, HeaderPolicy, HttpConfig, ListenerConfig, Mode,
    Protocol,
};

use crate::{
    settings::{self, PodSettings, PortPair, Steer},
    template::SidecarTemplate,
};

/// Why no sidecar can be built for a pod.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The settings make a configuration the sidecar would refuse at start.
    #[error(
        "the trueip sidecar would refuse this configuration ({}); fix the annotation \
         {annotation} (or the chart's default for it)",
        trueip_telemetry::error_chain(error)
    )]
    Refused {
        /// The annotation that sets the key at fault.
        annotation: &'static str,
        /// The sidecar's own error, in the message (what the pod's creator reads), not a
        /// source: a message or a source, not both.
        error: ConfigError,
    },
    /// A listen port is the sidecar's own metrics port.
    #[error(
        "annotation {}: port {port} is the trueip sidecar's metrics port (chart value \
         sidecar.metricsPort); choose another",
        settings::PORTS
    )]
    PortTaken {
        /// The port.
        port: u16,
    },
    /// A sidecar listener would take the port a steered app keeps.
    #[error(
        "annotation {}: port {port} is the port a steered app keeps (the `upstream` of a steered \
         port), so the sidecar cannot listen on it too; choose another `listen` port",
        settings::PORTS
    )]
    ListenIsAppPort {
        /// The port.
        port: u16,
    },
    /// Every port from `sidecar.steerPort` on (and from 1024) is taken.
    #[error(
        "annotation {}: no free port is left for the sidecar of a steered port (chart value \
         sidecar.steerPort)",
        settings::PORTS
    )]
    NoSteerPort,
    /// The configuration could not be written as YAML (or the chart's `sidecar.http` read as
    /// its `http` section).
    #[error("writing the sidecar configuration")]
    Write(#[from] serde_norway::Error),
}

/// One listener as the pod gets it: the ports resolved, steering decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    /// The sidecar's port (for a steered lone port, one [`plan`] chose).
    pub(crate) listen: u16,
    /// The app's port.
    pub(crate) upstream: u16,
    /// The app keeps `upstream`; the agent hands outside connections to the sidecar.
    pub(crate) steer: bool,
    /// A UDP listener.
    pub(crate) udp: bool,
}

/// The pod's listeners: TCP then UDP. A steered port listed alone is the app's; the sidecar
/// then listens on the first port from `sidecar.steerPort` on that no listener, app port, port
/// the pod's containers declare (`declared`) or the metrics port uses.
pub(crate) fn plan(
    settings: &PodSettings,
    template: &SidecarTemplate,
    declared: &[u16],
) -> Result<Vec<Planned>, BuildError> {
    let mut taken: BTreeSet<u16> = settings
        .ports
        .iter()
        .flat_map(|p| [p.listen, p.upstream])
        .chain(declared.iter().copied())
        .chain(Some(template.metrics_port).filter(|&p| p != 0))
        .collect();
    let mut candidates = (template.steer_port..=u16::MAX).chain(1024..template.steer_port);
    let mut planned = Vec::with_capacity(settings.ports.len() + settings.udp_ports.len());
    for pair in &settings.ports {
        let steer = pair.steered(settings.steer);
        let listen = if steer && pair.listen == pair.upstream {
            let port = candidates
                .find(|p| !taken.contains(p))
                .ok_or(BuildError::NoSteerPort)?;
            taken.insert(port);
            port
        } else {
            pair.listen
        };
        planned.push(Planned {
            listen,
            upstream: pair.upstream,
            steer,
            udp: false,
        });
    }
    // A steered app keeps its port: no sidecar listener may take it.
    if let Some(clash) = planned
        .iter()
        .find(|l| planned.iter().any(|s| s.steer && s.upstream == l.listen))
    {
        return Err(BuildError::ListenIsAppPort { port: clash.listen });
    }
    planned.extend(settings.udp_ports.iter().map(|pair| Planned {
        listen: pair.listen,
        upstream: pair.upstream,
        steer: false,
        udp: true,
    }));
    Ok(planned)
}

/// The YAML text of the file `settings` asks for with the chart's `template`, unchecked: the
/// sidecar's own configuration, written by its own writer (keys at their defaults left out).
pub(crate) fn yaml(
    settings: &PodSettings,
    planned: &[Planned],
    template: &SidecarTemplate,
) -> Result<String, serde_norway::Error> {
    // Fails only if the chart's `sidecar.http` is not the sidecar's `http` section, which the
    // injector checks once at start (`check_template`).
    let http: HttpConfig = if settings.mode == Mode::Http {
        serde_norway::from_value(Value::Mapping(template.http.clone()))?
    } else {
        HttpConfig::default()
    };
    sidecar_config(settings, planned, template, &http).to_yaml()
}

/// The configuration `settings` asks for with the chart's `template`, unchecked; `http` is
/// the section of listeners in `http` mode.
fn sidecar_config(
    settings: &PodSettings,
    planned: &[Planned],
    template: &SidecarTemplate,
    http: &HttpConfig,
) -> Config {
    let ebpf = settings.mode == Mode::Ebpf;
    let listeners = planned
        .iter()
        .map(|l| {
            let mut listener = ListenerConfig::new(
                SocketAddr::new(template.listen_address, l.listen),
                SocketAddr::new(template.upstream_address, l.upstream),
            );
            // A steered listener is named after the app's port, which the user listed.
            listener.name = Some(match (l.udp, l.steer) {
                (true, _) => format!("udp-{}", l.listen),
                (false, true) => format!("port-{}", l.upstream),
                (false, false) => format!("port-{}", l.listen),
            });
            listener.mode = settings.mode;
            listener.header = settings.header;
            listener.trusted_sources.clone_from(&settings.trusted);
            listener.allow_loopback_clients = template.allow_loopback_clients;
            listener.steer = l.steer;
            if l.udp {
                listener.protocol = Protocol::Udp;
            } else {
                listener.http.clone_from(http);
            }
            listener.fallback = template.fallback.filter(|_| ebpf);
            listener
        })
        .collect();
    let mut config = Config::with_listeners(listeners);
    config.agent_socket.clone_from(&template.agent_socket);
    if template.metrics_port != 0 {
        config.metrics_listen = Some(SocketAddr::new(
            template.listen_address,
            template.metrics_port,
        ));
        config.admin = AdminConfig {
            header_timeout: template.admin.header_timeout,
            max_connections: template.admin.max_connections,
        };
    }
    config
}

/// Whether the sidecar accepts what the chart gives every sidecar (`http`, `admin`,
/// `allowLoopbackClients`): the file of a sample `http` pod that trusts everyone, with the
/// chart's `sidecar.http` as it is, through the sidecar's parser, whose errors then name the
/// key at fault. Run once when the injector's configuration is read.
pub(crate) fn check_template(template: &SidecarTemplate) -> Result<(), ConfigError> {
    // Any port but the metrics port (which a pod cannot take either).
    let port = if template.metrics_port == 8080 {
        8081
    } else {
        8080
    };
    let sample = PodSettings {
        ports: vec![PortPair {
            listen: port,
            upstream: port,
        }],
        udp_ports: Vec::new(),
        steer: Steer::False,
        mode: Mode::Http,
        header: HeaderPolicy::Required,
        trusted: vec![IpNet::V4(Ipv4Net::default())], // 0.0.0.0/0
    };
    let planned = [Planned {
        listen: port,
        upstream: port,
        steer: false,
        udp: false,
    }];
    let parse_error = |source| {
        ConfigError::File(FileError::Parse {
            path: "<sample sidecar configuration>".into(),
            source,
        })
    };
    let config = sidecar_config(&sample, &planned, template, &HttpConfig::default());
    // The file as pods get it (the writer's keys) reads back, ...
    Config::from_yaml(&config.to_yaml().map_err(parse_error)?)?;
    // ... and so does the chart's `http` section, as it is, in a whole file.
    let mut file = serde_norway::to_value(&config).map_err(parse_error)?;
    if let Some(listener) = file.get_mut("listeners").and_then(|l| l.get_mut(0))
        && let Some(listener) = listener.as_mapping_mut()
    {
        listener.insert("http".into(), Value::Mapping(template.http.clone()));
    }
    Config::from_yaml(&serde_norway::to_string(&file).map_err(parse_error)?).map(drop)
}
