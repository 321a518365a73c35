//! The sidecar's configuration file as a pod gets it: its listeners planned from the pod's
//! ports (a steered lone port gets a sidecar port of its own), written in the sidecar's keys,
//! and why no file can be made for a pod.

use std::{collections::BTreeSet, net::SocketAddr, num::NonZeroUsize, path::Path};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use serde_norway::Mapping;
use trueip_sidecar_config::{ConfigError, FileError, HeaderPolicy, Mode};

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
    /// The configuration could not be written as YAML.
    #[error("writing the sidecar configuration")]
    Write(#[from] serde_norway::Error),
}

/// The sidecar's YAML file (`trueip_sidecar_config::Config`), as far as the webhook sets it.
#[derive(Debug, Serialize)]
struct SidecarFile<'a> {
    listeners: Vec<ListenerFile<'a>>,
    agent_socket: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Only with `metrics_listen`: the bounds of that endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<AdminFile>,
}

/// The `admin` section of [`SidecarFile`].
#[derive(Debug, Serialize)]
struct AdminFile {
    header_timeout: String,
    max_connections: NonZeroUsize,
}

/// One listener of [`SidecarFile`].
#[derive(Debug, Serialize)]
struct ListenerFile<'a> {
    name: String,
    listen: SocketAddr,
    upstream: SocketAddr,
    mode: Mode,
    header: HeaderPolicy,
    trusted_sources: Vec<IpNet>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    allow_loopback_clients: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    steer: bool,
    /// `udp` for a UDP listener; TCP (the sidecar's default) is not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<Mode>,
    /// Only in `http` mode: the chart's `sidecar.http`, as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<&'a Mapping>,
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

/// The YAML text of the file `settings` asks for with the chart's `template`, unchecked.
pub(crate) fn yaml(
    settings: &PodSettings,
    planned: &[Planned],
    template: &SidecarTemplate,
) -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&sidecar_file(settings, planned, template))
}

/// The file `settings` asks for with the chart's `template`, unchecked.
fn sidecar_file<'a>(
    settings: &PodSettings,
    planned: &[Planned],
    template: &'a SidecarTemplate,
) -> SidecarFile<'a> {
    let ebpf = settings.mode == Mode::Ebpf;
    let http = settings.mode == Mode::Http && !template.http.is_empty();
    let metrics_port = Some(template.metrics_port).filter(|&p| p != 0);
    SidecarFile {
        listeners: planned
            .iter()
            .map(|l| ListenerFile {
                // A steered listener is named after the app's port, which the user listed.
                name: match (l.udp, l.steer) {
                    (true, _) => format!("udp-{}", l.listen),
                    (false, true) => format!("port-{}", l.upstream),
                    (false, false) => format!("port-{}", l.listen),
                },
                listen: SocketAddr::new(template.listen_address, l.listen),
                upstream: SocketAddr::new(template.upstream_address, l.upstream),
                mode: settings.mode,
                header: settings.header,
                trusted_sources: settings.trusted.clone(),
                allow_loopback_clients: template.allow_loopback_clients,
                steer: l.steer,
                protocol: l.udp.then_some("udp"),
                fallback: template.fallback.filter(|_| ebpf),
                http: (http && !l.udp).then_some(&template.http),
            })
            .collect(),
        agent_socket: &template.agent_socket,
        metrics_listen: metrics_port.map(|port| SocketAddr::new(template.listen_address, port)),
        admin: metrics_port.map(|_| AdminFile {
            header_timeout: humantime::format_duration(template.admin.header_timeout).to_string(),
            max_connections: template.admin.max_connections,
        }),
    }
}

/// Whether the sidecar accepts what the chart gives every sidecar (`http`, `admin`,
/// `allowLoopbackClients`): the file of a sample `http` pod that trusts everyone, through the
/// sidecar's parser. Run once when the injector's configuration is read.
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
    let text = yaml(&sample, &planned, template).map_err(|source| {
        ConfigError::File(FileError::Parse {
            path: "<sample sidecar configuration>".into(),
            source,
        })
    })?;
    trueip_sidecar_config::Config::from_yaml(&text).map(drop)
}
