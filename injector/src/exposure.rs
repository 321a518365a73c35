//! The node agent runs as root on every node, and its socket directory is trueip's only host path:
//! only the sidecar this webhook injects may mount it. A pod whose own containers mount it (by
//! trueip's volume name, or as a hostPath of the directory, of a directory above it such as
//! `/run` or `/`, or of a path inside it) is refused, whether it is injected or not; so is a pod
//! that merely declares such a hostPath, since any container added to it later (a debug
//! container) could mount it.
//!
//! Paths are compared the way the kubelet uses them: `//` and `.` components are ignored,
//! `/var/run` is `/run` (a symlink on systemd nodes), and a path the webhook cannot resolve
//! (relative, or with a `..` component) is refused. Other symlinks on the node, and
//! PersistentVolumes backed by host paths, are invisible to a webhook: Pod Security Admission
//! (its `baseline` level forbids hostPath volumes) is what keeps those out.

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeMount};

use crate::{
    config::Config,
    sidecar::{CONTAINER_NAME, SOCKET_VOLUME},
};

/// Which containers of a pod are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Containers {
    /// A pod being created: every container, and every volume it declares.
    All,
    /// Debug containers joining a running pod (`pods/ephemeralcontainers`): the rest of the pod
    /// was checked when it was created and cannot change.
    Ephemeral,
}

/// How a volume reaches the agent's socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// A hostPath of the directory itself.
    Dir(String),
    /// A hostPath of a directory above it (`/run`, `/`).
    Parent(String),
    /// A hostPath inside it (the socket itself).
    Inside(String),
    /// A hostPath the webhook cannot resolve, so cannot tell apart from the directory.
    Unresolved(String),
    /// Not a hostPath of it, but the name trueip gives the socket's volume (which the webhook
    /// adds to `ebpf` pods, so a mount of that name would get the socket).
    Name,
}

/// One container or volume that would give a pod the agent's socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Problem {
    /// One of the pod's own containers mounts it.
    #[error("container {container:?} mounts volume {volume:?} ({reach})")]
    Mounted {
        /// The container.
        container: String,
        /// The volume it mounts.
        volume: String,
        /// How that volume reaches the socket.
        reach: Reach,
    },
    /// A container named like the injected sidecar mounts it, but is not what the webhook
    /// injects (a spoofed sidecar, or a copied pod spec from another chart version).
    #[error(
        "container {name:?} mounts volume {volume:?} ({reach}) but is not the sidecar this \
         webhook injects: {why}; remove that container and its volumes and let the webhook \
         inject the sidecar",
        name = CONTAINER_NAME
    )]
    NotTheSidecar {
        /// The volume it mounts.
        volume: String,
        /// How that volume reaches the socket.
        reach: Reach,
        /// What differs from the injected sidecar.
        why: String,
    },
    /// The pod declares such a hostPath without mounting it.
    #[error(
        "the pod declares volume {volume:?} ({reach}), which is refused even unmounted: any \
         container added to the pod later could mount it"
    )]
    Declared {
        /// The volume.
        volume: String,
        /// How it reaches the socket.
        reach: Reach,
    },
}

/// Why a pod may not be admitted: everything in it that reaches the agent's socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}; only the trueip sidecar this webhook injects may mount the node agent's socket \
     directory {dir} (or a host path above or inside it): remove the mount or the volume from \
     the pod",
    join(problems)
)]
pub(crate) struct Exposed {
    /// The agent's socket directory on the nodes.
    dir: String,
    /// Each offending mount or volume.
    problems: Vec<Problem>,
}

/// Kinds of containers, as far as who may mount the socket is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `initContainers`, where the webhook puts its sidecar.
    Init,
    /// `containers`.
    App,
    /// `ephemeralContainers`.
    Debug,
}

/// One container's mounts, whatever its kind.
#[derive(Debug)]
struct Mounter<'a> {
    name: &'a str,
    kind: Kind,
    image: Option<&'a str>,
    mounts: &'a [VolumeMount],
}

/// The agent's socket directory and its aliases, as path components.
#[derive(Debug)]
struct Protected {
    /// The directory as configured (what the injected sidecar's hostPath is).
    dir: Vec<String>,
    /// It and its other spelling (`/run/...` and `/var/run/...`).
    aliases: Vec<Vec<String>>,
}

// === impl Reach ===

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(path) => write!(f, "hostPath {path}, the agent's socket directory"),
            Self::Parent(path) => write!(
                f,
                "hostPath {path}, which contains the agent's socket directory"
            ),
            Self::Inside(path) => {
                write!(f, "hostPath {path}, inside the agent's socket directory")
            }
            Self::Unresolved(path) => write!(
                f,
                "hostPath {path:?}, which the webhook cannot check: a relative path or a `..` \
                 component"
            ),
            Self::Name => write!(
                f,
                "named {SOCKET_VOLUME}, the volume trueip gives its sidecar for the agent's socket"
            ),
        }
    }
}

// === impl Mounter ===

impl<'a> Mounter<'a> {
    fn of(container: &'a Container, kind: Kind) -> Self {
        Self {
            name: &container.name,
            kind,
            image: container.image.as_deref(),
            mounts: container.volume_mounts.as_deref().unwrap_or_default(),
        }
    }
}

// === impl Protected ===

impl Protected {
    fn new(config: &Config) -> Self {
        // The configuration is checked to be absolute without `..`; should it ever not be, the
        // empty path (the root) makes every hostPath a match: refused, not let through.
        let dir = components(&config.agent_socket_dir().to_string_lossy()).unwrap_or_default();
        let mut aliases = vec![dir.clone()];
        match dir.as_slice() {
            [run, rest @ ..] if run == "run" => {
                aliases.push(
                    ["var", "run"]
                        .map(String::from)
                        .into_iter()
                        .chain(rest.iter().cloned())
                        .collect(),
                );
            }
            [var, run, rest @ ..] if var == "var" && run == "run" => {
                aliases.push(
                    std::iter::once("run".to_owned())
                        .chain(rest.iter().cloned())
                        .collect(),
                );
            }
            _ => {}
        }
        Self { dir, aliases }
    }

    /// How a hostPath of `path` reaches the directory, if it does.
    fn reach(&self, path: &str) -> Option<Reach> {
        let Some(parts) = components(path) else {
            return Some(Reach::Unresolved(path.to_owned()));
        };
        if self.aliases.contains(&parts) {
            Some(Reach::Dir(path.to_owned()))
        } else if self.aliases.iter().any(|a| a.starts_with(&parts)) {
            Some(Reach::Parent(path.to_owned()))
        } else if self.aliases.iter().any(|a| parts.starts_with(a)) {
            Some(Reach::Inside(path.to_owned()))
        } else {
            None
        }
    }

    /// Whether `volume` is exactly what the webhook injects for the socket.
    fn is_injected(&self, volume: &Volume) -> bool {
        volume.name == SOCKET_VOLUME
            && volume
                .host_path
                .as_ref()
                .and_then(|h| components(&h.path))
                .is_some_and(|parts| parts == self.dir)
    }
}

/// The components of an absolute path, without empty and `.` ones; `None` for a relative path
/// or one with a `..` component (the webhook does not know the node's directories, so cannot
/// resolve it).
fn components(path: &str) -> Option<Vec<String>> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            _ => parts.push(part.to_owned()),
        }
    }
    Some(parts)
}

fn join(problems: &[Problem]) -> String {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    list.join("; ")
}

/// Refuses `pod` if anything but the injected sidecar reaches the agent's socket directory.
pub(crate) fn check(pod: &Pod, config: &Config, which: Containers) -> Result<(), Exposed> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let protected = Protected::new(config);
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let mut mounters: Vec<Mounter<'_>> = Vec::new();
    if which == Containers::All {
        let inits = spec.init_containers.as_deref().unwrap_or_default();
        mounters.extend(inits.iter().map(|c| Mounter::of(c, Kind::Init)));
        mounters.extend(spec.containers.iter().map(|c| Mounter::of(c, Kind::App)));
    }
    mounters.extend(spec.ephemeral_containers.iter().flatten().map(|c| Mounter {
        name: &c.name,
        kind: Kind::Debug,
        image: c.image.as_deref(),
        mounts: c.volume_mounts.as_deref().unwrap_or_default(),
    }));

    let reach_of = |volume: &Volume| {
        volume
            .host_path
            .as_ref()
            .and_then(|h| protected.reach(&h.path))
    };
    let mut problems = Vec::new();
    for mounter in &mounters {
        for mount in mounter.mounts {
            // A mount of a volume the pod does not declare is resolved after this webhook: a
            // mount named like trueip's socket volume would get the one the webhook adds.
            let volume = volumes.iter().find(|v| v.name == mount.name);
            let reach = volume
                .and_then(reach_of)
                .or_else(|| (mount.name == SOCKET_VOLUME).then_some(Reach::Name));
            let Some(reach) = reach else { continue };
            if mounter.name != CONTAINER_NAME {
                problems.push(Problem::Mounted {
                    container: mounter.name.to_owned(),
                    volume: mount.name.clone(),
                    reach,
                });
                continue;
            }
            let why = if mounter.kind != Kind::Init {
                Some("it is not an init container, where the webhook puts its sidecar".to_owned())
            } else if mounter.image != Some(config.sidecar.image.as_str()) {
                Some(format!(
                    "its image is {:?}, not the chart's sidecar image {:?}",
                    mounter.image.unwrap_or_default(),
                    config.sidecar.image
                ))
            } else if !volume.is_some_and(|v| protected.is_injected(v)) {
                Some(format!(
                    "the webhook's sidecar mounts only volume {SOCKET_VOLUME}, the hostPath {}",
                    config.agent_socket_dir().display()
                ))
            } else if mount.read_only != Some(true) {
                Some("the webhook's sidecar mounts it read-only".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                problems.push(Problem::NotTheSidecar {
                    volume: mount.name.clone(),
                    reach,
                    why,
                });
            }
        }
    }
    if which == Containers::All {
        for volume in volumes {
            let mounted = mounters
                .iter()
                .any(|m| m.mounts.iter().any(|mount| mount.name == volume.name));
            if let Some(reach) = reach_of(volume).filter(|_| !mounted) {
                problems.push(Problem::Declared {
                    volume: volume.name.clone(),
                    reach,
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Exposed {
            dir: config.agent_socket_dir().display().to_string(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use super::*;
    use crate::config::tests::FULL;

    fn config() -> Config {
        Config::from_yaml(FULL, Path::new("config.yaml")).unwrap()
    }

    fn pod(value: &Value) -> Pod {
        serde_json::from_value(value.clone()).unwrap()
    }

    /// A tenant pod whose app container mounts `volume`, declared as given.
    fn tenant(volume: &Value) -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "containers": [{"name": "app", "image": "nginx",
                                "volumeMounts": [{"name": volume["name"], "mountPath": "/x"}]}],
                "volumes": [volume],
            },
        })
    }

    fn host_path(path: &str) -> Value {
        json!({"name": "host", "hostPath": {"path": path}})
    }

    /// The message the user sees, or `None` when admitted.
    fn refusal(value: &Value, which: Containers) -> Option<String> {
        check(&pod(value), &config(), which)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn app_containers_never_get_the_socket_directory() {
        for (path, reach) in [
            (
                "/run/trueip",
                "hostPath /run/trueip, the agent's socket directory",
            ),
            (
                "/run/trueip/",
                "hostPath /run/trueip/, the agent's socket directory",
            ),
            (
                "//run//trueip/.",
                "hostPath //run//trueip/., the agent's socket directory",
            ),
            (
                "/var/run/trueip",
                "hostPath /var/run/trueip, the agent's socket directory",
            ),
            (
                "/run",
                "hostPath /run, which contains the agent's socket directory",
            ),
            (
                "/run/",
                "hostPath /run/, which contains the agent's socket directory",
            ),
            (
                "/var/run",
                "hostPath /var/run, which contains the agent's socket directory",
            ),
            (
                "/",
                "hostPath /, which contains the agent's socket directory",
            ),
            (
                "/run/trueip/agent.sock",
                "hostPath /run/trueip/agent.sock, inside the agent's socket directory",
            ),
            (
                "/srv/../run/trueip",
                "hostPath \"/srv/../run/trueip\", which the webhook cannot check",
            ),
            (
                "run/trueip",
                "hostPath \"run/trueip\", which the webhook cannot check",
            ),
        ] {
            let message = refusal(&tenant(&host_path(path)), Containers::All)
                .unwrap_or_else(|| panic!("{path} admitted"));
            assert!(
                message.starts_with(&format!(
                    "container \"app\" mounts volume \"host\" ({reach}"
                )),
                "{path}: {message}"
            );
            assert!(
                message.contains(
                    "only the trueip sidecar this webhook injects may mount the node agent's \
                     socket directory /run/trueip"
                ),
                "{path}: {message}"
            );
        }
    }

    #[test]
    fn other_host_paths_are_not_trueip_business() {
        for path in [
            "/run/trueipx",
            "/srv/run/trueip",
            "/var/log",
            "/data",
            "/runner",
        ] {
            assert_eq!(
                refusal(&tenant(&host_path(path)), Containers::All),
                None,
                "{path}"
            );
        }
        let empty = json!({"name": "data", "emptyDir": {}});
        assert_eq!(refusal(&tenant(&empty), Containers::All), None);
    }

    #[test]
    fn trueips_volume_name_is_refused_whatever_it_is() {
        let named = json!({"name": SOCKET_VOLUME, "emptyDir": {}});
        let message = refusal(&tenant(&named), Containers::All).unwrap();
        assert!(
            message.starts_with(
                "container \"app\" mounts volume \"trueip-agent-socket\" (named \
                 trueip-agent-socket, the volume trueip gives its sidecar"
            ),
            "{message}"
        );
        // Mounting the name without declaring it: the webhook's own volume would fill it in.
        let mut dangling = tenant(&named);
        dangling["spec"]["volumes"] = json!([]);
        let message = refusal(&dangling, Containers::All).unwrap();
        assert!(
            message.contains("mounts volume \"trueip-agent-socket\""),
            "{message}"
        );
    }

    #[test]
    fn every_kind_of_container_is_checked_and_each_is_named() {
        let mut value = tenant(&host_path("/run"));
        value["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox",
            "volumeMounts": [{"name": "host", "mountPath": "/h", "readOnly": true}]}]);
        value["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox",
            "volumeMounts": [{"name": "host", "mountPath": "/h"}]}]);
        let message = refusal(&value, Containers::All).unwrap();
        for name in ["setup", "app", "debugger"] {
            assert!(
                message.contains(&format!("container \"{name}\" mounts volume \"host\"")),
                "{name}: {message}"
            );
        }
    }

    #[test]
    fn a_declared_host_path_is_refused_even_unmounted() {
        let mut value = tenant(&host_path("/run"));
        value["spec"]["containers"][0]["volumeMounts"] = json!([]);
        let message = refusal(&value, Containers::All).unwrap();
        assert!(
            message.starts_with(
                "the pod declares volume \"host\" (hostPath /run, which contains the agent's \
                 socket directory), which is refused even unmounted"
            ),
            "{message}"
        );
    }

    /// A pod as the webhook leaves it in `ebpf` mode.
    fn injected() -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "initContainers": [{
                    "name": CONTAINER_NAME, "image": "ghcr.io/trueip/trueip-sidecar:0.1.0",
                    "restartPolicy": "Always",
                    "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": "/run/trueip",
                                      "readOnly": true}],
                }],
                "containers": [{"name": "app", "image": "nginx"}],
                "volumes": [{"name": SOCKET_VOLUME,
                             "hostPath": {"path": "/run/trueip", "type": "DirectoryOrCreate"}}],
            },
        })
    }

    #[test]
    fn the_injected_sidecar_keeps_its_socket() {
        assert_eq!(refusal(&injected(), Containers::All), None);
        assert_eq!(refusal(&injected(), Containers::Ephemeral), None);

        // ... but nobody else in the pod gets it.
        let mut shared = injected();
        shared["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": SOCKET_VOLUME, "mountPath": "/run/trueip", "readOnly": true}]);
        let message = refusal(&shared, Containers::All).unwrap();
        assert!(
            message.starts_with(
                "container \"app\" mounts volume \"trueip-agent-socket\" (hostPath /run/trueip, \
                 the agent's socket directory)"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_container_named_like_the_sidecar_is_not_the_sidecar() {
        let cases = [
            (
                "/spec/initContainers/0/image",
                json!("evil:latest"),
                "its image is \"evil:latest\", not the chart's sidecar image \
              \"ghcr.io/trueip/trueip-sidecar:0.1.0\"",
            ),
            (
                "/spec/initContainers/0/volumeMounts/0/readOnly",
                json!(false),
                "the webhook's sidecar mounts it read-only",
            ),
            (
                "/spec/volumes/0/hostPath/path",
                json!("/run"),
                "the webhook's sidecar mounts only volume trueip-agent-socket, the hostPath \
              /run/trueip",
            ),
        ];
        for (pointer, value, why) in cases {
            let mut spoofed = injected();
            *spoofed.pointer_mut(pointer).unwrap() = value;
            let message = refusal(&spoofed, Containers::All).unwrap();
            assert!(
                message.starts_with(
                    "container \"trueip-sidecar\" mounts volume \
                                     \"trueip-agent-socket\" (hostPath /run"
                ),
                "{pointer}: {message}"
            );
            assert!(
                message.contains(&format!("is not the sidecar this webhook injects: {why}")),
                "{pointer}: {message}"
            );
        }
        // In the app containers, the name gives nothing either.
        let mut moved = injected();
        let sidecar = moved["spec"]["initContainers"][0].take();
        moved["spec"]["initContainers"] = json!([]);
        moved["spec"]["containers"] = json!([sidecar]);
        let message = refusal(&moved, Containers::All).unwrap();
        assert!(message.contains("it is not an init container"), "{message}");
    }

    #[test]
    fn debug_containers_are_checked_on_their_own() {
        let mut debugged = injected();
        debugged["spec"]["ephemeralContainers"] = json!([{"name": "debugger-x7", "image": "busybox",
            "volumeMounts": [{"name": SOCKET_VOLUME, "mountPath": "/s"}]}]);
        let message = refusal(&debugged, Containers::Ephemeral).unwrap();
        assert!(
            message.starts_with("container \"debugger-x7\" mounts volume \"trueip-agent-socket\""),
            "{message}"
        );
        // A running pod's own volumes were checked when it was created: only the debug
        // containers are judged.
        let mut old = tenant(&host_path("/run"));
        old["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]);
        assert_eq!(refusal(&old, Containers::Ephemeral), None);
    }

    #[test]
    fn the_configured_directory_is_what_is_protected() {
        let text = FULL.replace("/run/trueip/agent.sock", "/var/run/trueip-agent/agent.sock");
        let config = Config::from_yaml(&text, Path::new("config.yaml")).unwrap();
        let refused =
            |path: &str| check(&pod(&tenant(&host_path(path))), &config, Containers::All).is_err();
        assert!(refused("/run/trueip-agent"));
        assert!(refused("/var/run/trueip-agent/"));
        assert!(refused("/var"));
        assert!(!refused("/run/trueip"));
    }
}
