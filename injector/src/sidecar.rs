//! The injected sidecar: its configuration file, its container and its volumes.
//!
//! The sidecar reads a YAML file (one listener per port). The webhook writes that file into the
//! pod's `trueip.io/sidecar-config` annotation and a downward-API volume turns the annotation into
//! the file, so the configuration is visible on the pod (`kubectl get pod -o yaml`), needs no
//! ConfigMap per pod and no shell in the image. Before a pod is admitted, the file is parsed by
//! the sidecar's own parser: a configuration the sidecar would refuse is refused at admission,
//! with the annotation to fix.

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
        EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, ObjectFieldSelector, Probe,
        SeccompProfile, SecurityContext, TCPSocketAction, Volume, VolumeMount,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use trueip_sidecar_config::{ConfigError, Mode};

pub(crate) use crate::file::BuildError;
use crate::{
    config::Config,
    file::{self, Planned, plan},
    settings::{self, PodSettings},
    template::SidecarTemplate,
};

/// The injected container's name; an init container of that name marks a pod as injected.
pub(crate) const CONTAINER_NAME: &str = "trueip-sidecar";
/// The pod annotation holding the sidecar's configuration file.
pub(crate) const CONFIG_ANNOTATION: &str = "trueip.io/sidecar-config";
/// The label on every injected pod, valued with its mode: what the sidecars' PodMonitor selects,
/// and what `kubectl get pods -l trueip.io/injected` lists.
pub(crate) const INJECTED_LABEL: &str = "trueip.io/injected";
/// The annotation naming the trueip version that injected the pod, for upgrades.
pub(crate) const VERSION_ANNOTATION: &str = "trueip.io/version";
/// The downward-API volume that turns the annotation into a file.
pub(crate) const CONFIG_VOLUME: &str = "trueip-sidecar-config";
/// The node agent's socket directory (hostPath), for the `ebpf` mode.
pub(crate) const SOCKET_VOLUME: &str = "trueip-agent-socket";
/// Where the configuration file appears in the sidecar.
const CONFIG_DIR: &str = "/etc/trueip";
/// The configuration file's name in [`CONFIG_DIR`].
const CONFIG_FILE: &str = "sidecar.yaml";

/// What the webhook adds to a pod.
#[derive(Debug, Clone)]
pub(crate) struct Injection {
    /// The sidecar's configuration file, for [`CONFIG_ANNOTATION`].
    pub(crate) config_yaml: String,
    /// The native sidecar: an init container with `restartPolicy: Always`.
    pub(crate) container: Container,
    /// The volumes it mounts.
    pub(crate) volumes: Vec<Volume>,
    /// The restore mode, for [`INJECTED_LABEL`].
    pub(crate) mode: Mode,
}

/// Builds what `settings` asks for with the chart's `config`, checked by the sidecar's parser.
/// `declared` are the ports the pod's containers declare: a steered port's sidecar listener
/// takes none of them.
pub(crate) fn build(
    settings: &PodSettings,
    config: &Config,
    declared: &[u16],
) -> Result<Injection, BuildError> {
    let template = &config.sidecar;
    let ebpf = settings.mode == Mode::Ebpf;
    let transparent = settings.mode == Mode::Transparent;
    let metrics_port = Some(template.metrics_port).filter(|&p| p != 0);
    // The metrics listener binds the wildcard address: neither a TCP listener of the sidecar
    // nor the app (on loopback) can have its port.
    if let Some(port) = metrics_port.filter(|&m| {
        settings
            .ports
            .iter()
            .any(|p| p.listen == m || p.upstream == m)
    }) {
        return Err(BuildError::PortTaken { port });
    }
    let planned = plan(settings, template, declared)?;
    let steered = planned.iter().any(|l| l.steer);
    let config_yaml = file::yaml(settings, &planned, template)?;
    trueip_sidecar_config::Config::from_yaml(&config_yaml).map_err(|error| {
        BuildError::Refused {
            annotation: annotation_of(&error),
            error,
        }
    })?;

    let (mounts, volumes) = volumes(config, ebpf || steered);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.image_pull_policy.as_str().into()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            // The file is the pod's annotation, which can change after admission; the
            // container's arguments cannot: the sidecar refuses a file with another digest.
            "--config-sha256".into(),
            trueip_sidecar_config::Config::digest(&config_yaml),
            "--log-format".into(),
            template.log_format.as_str().into(),
        ]),
        env: Some(env(template)),
        ports: Some(container_ports(&planned, metrics_port)),
        // A native sidecar: started before the app containers, stopped after them.
        restart_policy: Some("Always".into()),
        // The app containers start once the first TCP listener accepts (a bare connect is a
        // health check for the sidecar, logged at debug), or, with UDP listeners only, once
        // `/readyz` says every listener is set up.
        startup_probe: startup_probe(&planned, metrics_port),
        // `/readyz` is 503 from SIGTERM on: the pod leaves its Service's endpoints while the
        // sidecar drains. Without the metrics port there is nothing to ask.
        readiness_probe: metrics_port.map(|port| Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(port)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(1),
            ..Probe::default()
        }),
        resources: Some(template.resources.clone()),
        security_context: Some(security_context(template, transparent)),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Ok(Injection {
        config_yaml,
        container,
        volumes,
        mode: settings.mode,
    })
}

/// The sidecar's volumes and where it mounts them: its configuration file (the annotation, by
/// the downward API), and, when it talks to the agent (`ebpf` or steered), the agent's socket
/// directory — read-only is enough: connecting to a Unix socket does not write to the
/// filesystem. Other pods need no host path at all.
fn volumes(config: &Config, agent: bool) -> (Vec<VolumeMount>, Vec<Volume>) {
    let mut mounts = vec![VolumeMount {
        name: CONFIG_VOLUME.into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: CONFIG_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{CONFIG_ANNOTATION}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            ..DownwardAPIVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if agent {
        let dir = config.agent_socket_dir().display().to_string();
        mounts.push(VolumeMount {
            name: SOCKET_VOLUME.into(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: SOCKET_VOLUME.into(),
            host_path: Some(HostPathVolumeSource {
                path: dir,
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        });
    }
    (mounts, volumes)
}

/// The pod's identity from the downward API (the traces' `k8s.*` resource), the log level,
/// and the chart's OTLP settings as `OTEL_*` variables.
fn env(template: &SidecarTemplate) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    vec![
        field("K8S_POD_NAME", "metadata.name"),
        field("K8S_NAMESPACE_NAME", "metadata.namespace"),
        field("K8S_POD_UID", "metadata.uid"),
        field("K8S_NODE_NAME", "spec.nodeName"),
        value("RUST_LOG", template.log_level.clone()),
    ]
    .into_iter()
    .chain(
        template
            .otlp
            .env()
            .into_iter()
            .map(|(name, v)| value(name, v)),
    )
    .collect()
}

/// One named port per listener (`trueip-<port>`, `trueipu-<port>` for UDP: at most 13
/// characters), then the metrics port.
fn container_ports(planned: &[Planned], metrics_port: Option<u16>) -> Vec<ContainerPort> {
    planned
        .iter()
        .map(|l| match l.udp {
            false => (format!("trueip-{}", l.listen), l.listen, "TCP"),
            true => (format!("trueipu-{}", l.listen), l.listen, "UDP"),
        })
        .chain(metrics_port.map(|port| ("trueip-metrics".to_owned(), port, "TCP")))
        .map(|(name, port, protocol)| ContainerPort {
            name: Some(name),
            container_port: i32::from(port),
            protocol: Some(protocol.into()),
            ..ContainerPort::default()
        })
        .collect()
}

/// Unprivileged, every capability dropped, a read-only root; `transparent` runs as user 0 with
/// CAP_NET_ADMIN only: it binds sockets to the clients' addresses and installs the pod's policy
/// routing, and Kubernetes makes added capabilities effective for user 0 only.
fn security_context(template: &SidecarTemplate, transparent: bool) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(!transparent),
        run_as_user: Some(if transparent { 0 } else { template.run_as_user }),
        run_as_group: Some(template.run_as_group),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: transparent.then(|| vec!["NET_ADMIN".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// What the kubelet waits for before it starts the app containers.
fn startup_probe(planned: &[Planned], metrics_port: Option<u16>) -> Option<Probe> {
    let probe = |tcp_socket, http_get| Probe {
        tcp_socket,
        http_get,
        period_seconds: Some(1),
        failure_threshold: Some(30),
        ..Probe::default()
    };
    match planned.iter().find(|l| !l.udp) {
        Some(tcp) => Some(probe(
            Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(tcp.listen)),
                ..TCPSocketAction::default()
            }),
            None,
        )),
        None => metrics_port.map(|port| {
            probe(
                None,
                Some(HTTPGetAction {
                    path: Some("/readyz".into()),
                    port: IntOrString::Int(i32::from(port)),
                    ..HTTPGetAction::default()
                }),
            )
        }),
    }
}

/// The annotation that sets the sidecar key an error names.
fn annotation_of(error: &ConfigError) -> &'static str {
    match error {
        ConfigError::Invalid { key, listener, .. } => match *key {
            "mode" | "fallback" => settings::MODE,
            "header" => settings::HEADER,
            "trusted_sources" => settings::TRUSTED_CIDRS,
            "steer" => settings::STEER,
            _ if listener.starts_with("udp-") => settings::UDP_PORTS,
            _ => settings::PORTS,
        },
        _ => settings::PORTS,
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use hyper::header::HeaderName;
    use trueip_sidecar_config::{ClientHeaders, HttpLimits};

    use super::*;
    use crate::{
        config::tests::FULL,
        settings::{HeaderPolicy, Steer, parse_ports},
    };

    fn config() -> Config {
        Config::from_yaml(FULL, Path::new("config.yaml")).unwrap()
    }

    fn settings(ports: &str, mode: Mode, header: HeaderPolicy) -> PodSettings {
        PodSettings {
            ports: parse_ports(ports).unwrap(),
            udp_ports: Vec::new(),
            steer: Steer::Auto,
            mode,
            header,
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn the_file_is_what_the_sidecar_reads() {
        let got = build(
            &settings("8080:80,9090", Mode::Ebpf, HeaderPolicy::Optional),
            &config(),
            &[],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.listeners.len(), 2);
        let l = &parsed.listeners[0];
        assert_eq!(l.name(), "port-8080");
        assert_eq!(l.listen, "[::]:8080".parse().unwrap());
        assert_eq!(l.upstream, "127.0.0.1:80".parse().unwrap());
        assert_eq!(l.mode, Mode::Ebpf);
        assert_eq!(l.fallback, Some(Mode::ProxyV1));
        assert_eq!(
            parsed.listeners[1].upstream,
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(parsed.agent_socket, Path::new("/run/trueip/agent.sock"));
        assert_eq!(parsed.metrics_listen, Some("[::]:9902".parse().unwrap()));
        // The chart's admin bounds and allowLoopbackClients, for every listener.
        assert_eq!(parsed.admin.header_timeout, Duration::from_secs(3));
        assert_eq!(parsed.admin.max_connections.get(), 8);
        assert!(parsed.listeners.iter().all(|l| l.allow_loopback_clients));
        // Not an http pod: no http section.
        assert!(!got.config_yaml.contains("http:"), "{}", got.config_yaml);
        assert_eq!(l.http.limits, HttpLimits::default());
        let ports: Vec<_> = got
            .container
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("trueip-8080".to_owned(), 8080),
                // 9090 alone: the app keeps it, steered to the sidecar's 14008.
                ("trueip-14008".to_owned(), 14008),
                ("trueip-metrics".to_owned(), 9902)
            ]
        );
    }

    #[test]
    fn every_mode_and_header_is_understood_by_the_sidecar() {
        use trueip_sidecar_config::{HeaderPolicy as H, Mode as M};
        for (mode, theirs) in [
            (Mode::None, M::None),
            (Mode::ProxyV1, M::ProxyV1),
            (Mode::ProxyV2, M::ProxyV2),
            (Mode::Ebpf, M::Ebpf),
            (Mode::Transparent, M::Transparent),
            (Mode::Http, M::Http),
        ] {
            for (header, their_header) in [
                (HeaderPolicy::Required, H::Required),
                (HeaderPolicy::Optional, H::Optional),
            ] {
                let got = build(&settings("8080:80", mode, header), &config(), &[]).unwrap();
                let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
                assert_eq!(parsed.listeners[0].mode, theirs);
                assert_eq!(parsed.listeners[0].header, their_header);
            }
        }
        let got = build(
            &settings("80", Mode::None, HeaderPolicy::Off),
            &config(),
            &[],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.listeners[0].header, H::Off);
    }

    #[test]
    fn http_pods_get_the_charts_http_section() {
        let got = build(
            &settings("8080:80,9090", Mode::Http, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.listeners.len(), 2);
        for l in &parsed.listeners {
            assert_eq!(l.mode, Mode::Http);
            let http = &l.http;
            // Set by the chart (config::tests::FULL) ...
            assert_eq!(http.limits.max_request_head, 65536);
            assert_eq!(http.limits.header_read_timeout, Duration::from_secs(5));
            assert_eq!(http.client_headers, ClientHeaders::Append);
            assert_eq!(
                http.x_forwarded_for.0.as_ref().map(HeaderName::as_str),
                Some("x-client-chain")
            );
            assert_eq!(http.x_real_ip.0, None);
            assert_eq!(http.forwarded.0, None);
            assert_eq!(http.strip_headers, ["x-internal-user"]);
            assert_eq!(
                http.tlv_headers
                    .names()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>(),
                ["x-request-id"]
            );
            assert!(!http.allow_connect);
            assert!(http.tls.is_none());
            // ... and the sidecar's defaults for what it leaves out.
            assert_eq!(http.limits.max_headers, HttpLimits::default().max_headers);
            assert_eq!(
                http.limits.keep_alive_timeout,
                HttpLimits::default().keep_alive_timeout
            );
            assert!(l.allow_loopback_clients);
        }

        // Without the chart's section, the sidecar's defaults.
        let bare = Config::from_yaml("sidecar: {image: x}", Path::new("c")).unwrap();
        let got = build(
            &settings("80", Mode::Http, HeaderPolicy::Required),
            &bare,
            &[],
        )
        .unwrap();
        assert!(!got.config_yaml.contains("http:"), "{}", got.config_yaml);
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.listeners[0].http.limits, HttpLimits::default());
    }

    #[test]
    fn only_http_pods_get_the_http_section() {
        for mode in [
            Mode::None,
            Mode::ProxyV1,
            Mode::ProxyV2,
            Mode::Ebpf,
            Mode::Transparent,
        ] {
            let got = build(
                &settings("8080:80", mode, HeaderPolicy::Required),
                &config(),
                &[],
            )
            .unwrap();
            for key in ["http:", "limits", "client_headers", "x-client-chain"] {
                assert!(
                    !got.config_yaml.contains(key),
                    "{mode}: {}",
                    got.config_yaml
                );
            }
            let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
            assert_eq!(
                parsed.listeners[0].http.limits,
                HttpLimits::default(),
                "{mode}"
            );
        }
    }

    #[test]
    fn admin_and_loopback_clients_only_when_asked_for() {
        // No metrics port: no admin endpoint, no admin section; loopback clients refused by
        // the sidecar's default, not written.
        let text = FULL
            .replace("metricsPort: 9902", "metricsPort: 0")
            .replace("allowLoopbackClients: true", "allowLoopbackClients: false");
        let config = Config::from_yaml(&text, Path::new("config.yaml")).unwrap();
        let got = build(
            &settings("80", Mode::Http, HeaderPolicy::Required),
            &config,
            &[],
        )
        .unwrap();
        for key in ["admin", "metrics_listen", "allow_loopback_clients"] {
            assert!(!got.config_yaml.contains(key), "{}", got.config_yaml);
        }
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert!(!parsed.listeners[0].allow_loopback_clients);
        assert_eq!(parsed.metrics_listen, None);
        assert!(
            got.container.readiness_probe.is_none(),
            "no /readyz to probe"
        );

        // The sidecar's defaults when the chart says nothing.
        let bare =
            Config::from_yaml("sidecar: {image: x, metricsPort: 9902}", Path::new("c")).unwrap();
        let got = build(
            &settings("80", Mode::Ebpf, HeaderPolicy::Required),
            &bare,
            &[],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.admin, trueip_sidecar_config::AdminConfig::default());
        assert!(
            got.config_yaml.contains("header_timeout: 5s"),
            "{}",
            got.config_yaml
        );
    }

    #[test]
    fn the_socket_is_mounted_for_ebpf_only() {
        let ebpf = build(
            &settings("80", Mode::Ebpf, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let names: Vec<_> = ebpf.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [CONFIG_VOLUME, SOCKET_VOLUME]);
        let host = ebpf.volumes[1].host_path.as_ref().unwrap();
        assert_eq!(host.path, "/run/trueip");
        let mounts = ebpf.container.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[1].mount_path, "/run/trueip");
        assert_eq!(mounts[1].read_only, Some(true));

        let v1 = build(
            &settings("8080:80", Mode::ProxyV1, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        assert_eq!(v1.volumes.len(), 1);
        assert!(!v1.config_yaml.contains("fallback"), "{}", v1.config_yaml);
    }

    #[test]
    fn a_lone_port_stays_the_apps_and_is_steered_to_the_sidecar() {
        // `9090` alone: the app keeps 9090; the sidecar takes the first free port from
        // sidecar.steerPort (14008) on, skipping the pod's other ports.
        let got = build(
            &settings("14008:80,9090", Mode::ProxyV2, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        let (pair, lone) = (&parsed.listeners[0], &parsed.listeners[1]);
        assert_eq!(pair.listen, "[::]:14008".parse().unwrap());
        assert!(!pair.steer);
        assert_eq!(lone.name(), "port-9090");
        assert_eq!(lone.listen, "[::]:14009".parse().unwrap());
        assert_eq!(lone.upstream, "127.0.0.1:9090".parse().unwrap());
        assert!(lone.steer);
        // Steering needs the agent, in any mode: the socket is mounted.
        let names: Vec<_> = got.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [CONFIG_VOLUME, SOCKET_VOLUME]);
        // The kubelet probes the sidecar's own port, not the app's.
        let ports: Vec<_> = got
            .container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [14008, 14009, 9902]);
        let probe = got.container.startup_probe.as_ref().unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::Int(14008)
        );

        // Nor a port a container of the pod declares.
        let got = build(
            &settings("9090", Mode::Ebpf, HeaderPolicy::Required),
            &config(),
            &[9090, 14008, 14009],
        )
        .unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        assert_eq!(parsed.listeners[0].listen.port(), 14010);

        // `true` steers pairs too: `upstream` is the app's port, `listen` the sidecar's.
        let mut all = settings("15100:8080", Mode::Ebpf, HeaderPolicy::Required);
        all.steer = Steer::True;
        let parsed = trueip_sidecar_config::Config::from_yaml(
            &build(&all, &config(), &[]).unwrap().config_yaml,
        )
        .unwrap();
        let l = &parsed.listeners[0];
        assert!(l.steer);
        assert_eq!(
            (l.listen.port(), l.upstream.port(), l.name()),
            (15100, 8080, "port-8080".into())
        );

        // ... but no listener may take the port a steered app keeps.
        let mut clash = settings("8080:80,9090:8080", Mode::Ebpf, HeaderPolicy::Required);
        clash.steer = Steer::True;
        let e = build(&clash, &config(), &[]).unwrap_err();
        assert!(
            matches!(e, BuildError::ListenIsAppPort { port: 8080 }),
            "{e}"
        );

        // `false`: nothing is steered, and a pair needs no agent outside `ebpf`.
        let mut none = settings("8080:80", Mode::ProxyV1, HeaderPolicy::Required);
        none.steer = Steer::False;
        let got = build(&none, &config(), &[]).unwrap();
        assert!(!got.config_yaml.contains("steer"), "{}", got.config_yaml);
        assert_eq!(got.volumes.len(), 1);

        // Steering would hand the transparent sidecar's own connections back to it.
        let e = build(
            &settings("8080", Mode::Transparent, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                BuildError::Refused {
                    annotation: settings::STEER,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("trueip.io/steer"), "{e}");
    }

    #[test]
    fn the_container_pins_the_digest_of_its_configuration() {
        let got = build(
            &settings("8080:80", Mode::Ebpf, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let args = got.container.args.unwrap();
        let at = args.iter().position(|a| a == "--config-sha256").unwrap();
        assert_eq!(
            args[at + 1],
            trueip_sidecar_config::Config::digest(&got.config_yaml)
        );
        assert_eq!(args[at + 1].len(), 64);
        assert_eq!(
            trueip_sidecar_config::Config::digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn udp_ports_are_udp_listeners() {
        let mut pod = settings("", Mode::ProxyV2, HeaderPolicy::Required);
        pod.udp_ports = settings::parse_udp_ports("5353:53").unwrap();
        let got = build(&pod, &config(), &[]).unwrap();
        let parsed = trueip_sidecar_config::Config::from_yaml(&got.config_yaml).unwrap();
        let l = &parsed.listeners[0];
        assert_eq!(l.name(), "udp-5353");
        assert_eq!(l.protocol, trueip_sidecar_config::Protocol::Udp);
        assert_eq!(
            (l.listen.port(), l.upstream.port(), l.steer),
            (5353, 53, false)
        );
        let ports: Vec<_> = got
            .container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.container_port, p.protocol.as_deref().unwrap()))
            .collect();
        assert_eq!(ports, [(5353, "UDP"), (9902, "TCP")]);
        // No TCP listener to connect to: the kubelet waits for /readyz instead.
        let probe = got.container.startup_probe.as_ref().unwrap();
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some("/readyz"), &IntOrString::Int(9902))
        );
        // proxy-v1 cannot describe UDP: refused, naming the mode.
        pod.mode = Mode::ProxyV1;
        let e = build(&pod, &config(), &[]).unwrap_err();
        assert!(e.to_string().contains("trueip.io/mode"), "{e}");
    }

    #[test]
    fn the_container_is_an_unprivileged_native_sidecar() {
        let got = build(
            &settings("8080:80", Mode::Ebpf, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let c = got.container;
        assert_eq!(c.name, CONTAINER_NAME);
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/trueip/trueip-sidecar:0.1.0")
        );
        let sc = c.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        let ports = c.ports.unwrap();
        assert_eq!(ports[0].container_port, 8080);
        assert_eq!(ports[0].name.as_deref(), Some("trueip-8080"));
        let ready = c.readiness_probe.unwrap().http_get.unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(
            ready.port,
            IntOrString::Int(i32::from(config().sidecar.metrics_port))
        );
        let env: Vec<_> = c
            .env
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .filter(|name| !name.starts_with("OTEL_"))
            .collect();
        assert_eq!(
            env,
            [
                "K8S_POD_NAME",
                "K8S_NAMESPACE_NAME",
                "K8S_POD_UID",
                "K8S_NODE_NAME",
                "RUST_LOG"
            ]
        );
    }

    #[test]
    fn the_charts_otlp_settings_are_the_sidecars_otel_variables() {
        let config = Config::from_yaml(FULL, Path::new("config.yaml")).unwrap();
        let got = build(
            &settings("80", Mode::Ebpf, HeaderPolicy::Required),
            &config,
            &[],
        )
        .unwrap();
        let env: Vec<(String, String)> = got
            .container
            .env
            .unwrap()
            .into_iter()
            .filter(|e| e.name.starts_with("OTEL_"))
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        let want = [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://otel-collector.observability:4318",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,team=shop",
            ),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(env, want);
        // No endpoint: no variable at all, so the sidecar exports nothing.
        let bare = Config::from_yaml("sidecar: {image: x}", Path::new("c")).unwrap();
        let got = build(
            &settings("80", Mode::Ebpf, HeaderPolicy::Required),
            &bare,
            &[],
        )
        .unwrap();
        assert!(
            !got.container
                .env
                .unwrap()
                .iter()
                .any(|e| e.name.starts_with("OTEL_"))
        );
    }

    #[test]
    fn transparent_gets_net_admin_as_root_and_nothing_else() {
        let got = build(
            &settings("8080:80", Mode::Transparent, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap();
        let sc = got.container.security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.add.unwrap(), ["NET_ADMIN"]);
        assert_eq!(caps.drop.unwrap(), ["ALL"]);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(got.volumes.len(), 1, "no agent socket");
        assert!(
            got.config_yaml.contains("mode: transparent"),
            "{}",
            got.config_yaml
        );

        for mode in [Mode::None, Mode::ProxyV1, Mode::ProxyV2, Mode::Ebpf] {
            let got = build(
                &settings("80", mode, HeaderPolicy::Required),
                &config(),
                &[],
            )
            .unwrap();
            let sc = got.container.security_context.unwrap();
            assert_eq!(sc.capabilities.unwrap().add, None, "{mode}");
            assert_eq!(sc.run_as_non_root, Some(true), "{mode}");
        }
    }

    #[test]
    fn refusals_name_the_annotation() {
        let mut no_trust = settings("80", Mode::Ebpf, HeaderPolicy::Required);
        no_trust.trusted.clear();
        let e = build(&no_trust, &config(), &[]).unwrap_err();
        assert!(matches!(
            e,
            BuildError::Refused {
                annotation: settings::TRUSTED_CIDRS,
                ..
            }
        ));
        let text = e.to_string();
        assert!(text.contains("trusted_sources"), "{text}");
        assert!(text.contains("trueip.io/trusted-cidrs"), "{text}");

        let e = build(
            &settings("9902", Mode::Ebpf, HeaderPolicy::Required),
            &config(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, BuildError::PortTaken { port: 9902 }));
        assert!(
            e.to_string()
                .starts_with("annotation trueip.io/ports: port 9902"),
            "{e}"
        );

        let e = build(
            &settings("80", Mode::Ebpf, HeaderPolicy::Off),
            &config(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(
            e,
            BuildError::Refused {
                annotation: settings::MODE,
                ..
            }
        ));
    }
}
