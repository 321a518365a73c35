//! What happens to one pod: left alone, injected (as an RFC 6902 JSON Patch), or refused with a
//! message for the user.
//!
//! The patch only ever appends: it works on pods with and without init containers, volumes and
//! annotations, and never reorders or rewrites what the pod already has.

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::{
    config::{ALLOWED_MODES_VALUE, Config},
    exposure::{self, Containers},
    settings::{self, Mode, PodSettings, Resolution},
    sidecar::{self, BuildError},
};

/// The webhook's answer for one pod.
#[derive(Debug, Clone)]
pub(crate) enum Decision {
    /// Admit the pod as it is.
    Unchanged(Skip),
    /// Admit the pod with this patch applied.
    Inject(Patch),
    /// Refuse the pod; the message is shown to whoever created it.
    Refuse(String),
}

/// Why a pod is admitted unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// It already has the sidecar (a second admission, or a copied spec).
    AlreadyInjected,
    /// `trueip.io/inject: disabled`.
    OptedOut,
    /// Neither a `trueip.io/ports` annotation nor default ports.
    NoPorts,
    /// Debug containers joining a running pod (`kubectl debug`), none of which mounts the
    /// agent's socket: nothing is injected into a running pod.
    DebugContainers,
}

// === impl Skip ===

impl Skip {
    /// A stable label for logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already_injected",
            Self::OptedOut => "opted_out",
            Self::NoPorts => "no_ports",
            Self::DebugContainers => "debug_containers",
        }
    }

    /// What the user is told (an admission warning), if anything: a pod in an opted-in
    /// namespace that does not get the sidecar deserves a word.
    pub(crate) fn warning(self) -> Option<String> {
        match self {
            Self::NoPorts => Some(format!(
                "trueip: sidecar not injected: the pod has no {} annotation (e.g. \"8080:80\") \
                 and the chart sets no default ports",
                settings::PORTS
            )),
            Self::AlreadyInjected | Self::OptedOut | Self::DebugContainers => None,
        }
    }
}

/// Decides what to do with `pod`, being created, under `config`.
pub(crate) fn decide(pod: &Pod, config: &Config) -> Decision {
    // First, and for every pod the webhook sees, injected or not: a pod that would give one of
    // its own containers the agent's socket is the attack, whatever its annotations say.
    if let Err(exposed) = exposure::check(pod, config, Containers::All) {
        return Decision::Refuse(format!("trueip: {exposed}"));
    }
    let spec = pod.spec.as_ref();
    let injected = spec.is_some_and(|spec| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|c| c.name == sidecar::CONTAINER_NAME)
    });
    let empty = BTreeMap::new();
    let meta = &pod.metadata;
    let settings = match PodSettings::resolve(
        meta.annotations.as_ref().unwrap_or(&empty),
        meta.labels.as_ref().unwrap_or(&empty),
        &config.defaults,
    ) {
        Ok(Resolution::Inject(settings)) => settings,
        Ok(Resolution::OptedOut) if !injected => return Decision::Unchanged(Skip::OptedOut),
        Ok(Resolution::NoPorts) if !injected => return Decision::Unchanged(Skip::NoPorts),
        Ok(Resolution::OptedOut | Resolution::NoPorts) => return Decision::Refuse(not_ours()),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Decision::Refuse(format!("trueip: {}", list.join("; ")));
        }
    };
    if let Some(why) = policy_refusal(&settings, config, spec) {
        return Decision::Refuse(why);
    }
    let taken = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .find(|v| v.name == sidecar::CONFIG_VOLUME || v.name == sidecar::SOCKET_VOLUME);
    if let Some(volume) = taken.filter(|_| !injected) {
        return Decision::Refuse(format!(
            "trueip: the pod already has a volume named {}, which the trueip sidecar needs; \
             rename it or opt the pod out with {}: disabled",
            volume.name,
            settings::INJECT,
        ));
    }
    // The sidecar's own port for a steered one must not be a port the app declares.
    let declared: Vec<u16> = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter(|c| c.name != sidecar::CONTAINER_NAME)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    match sidecar::build(&settings, config, &declared) {
        // The webhook is called once per pod (`reinvocationPolicy: Never`): a sidecar already
        // there is a copy of an injected pod, or a tenant's own. Only exactly what this
        // webhook writes is let through; anything else could run a configuration nobody
        // checked next to the agent's socket.
        Ok(injection) if injected => {
            if is_this_injection(pod, &injection) {
                Decision::Unchanged(Skip::AlreadyInjected)
            } else {
                Decision::Refuse(not_ours())
            }
        }
        Ok(injection) => match patch(pod, injection) {
            Ok(patch) => Decision::Inject(patch),
            Err(e) => Decision::Refuse(format!("trueip: {e}")),
        },
        Err(
            e @ (BuildError::Refused { .. }
            | BuildError::PortTaken { .. }
            | BuildError::NoSteerPort
            | BuildError::ListenIsAppPort { .. }),
        ) => Decision::Refuse(format!("trueip: {e}")),
        Err(e @ BuildError::Write(_)) => Decision::Refuse(format!("trueip: internal error: {e}")),
    }
}

/// Why a pod whose `trueip-sidecar` is not exactly what this webhook writes is refused.
fn not_ours() -> String {
    format!(
        "trueip: the pod already has a {} container, and it is not the one this webhook would \
         inject for its annotations (its image, command, arguments, environment, mounts, \
         volumes or its {} annotation differ): remove the container, its volumes and the \
         annotation, and the webhook injects the sidecar",
        sidecar::CONTAINER_NAME,
        sidecar::CONFIG_ANNOTATION,
    )
}

/// Whether `pod` carries exactly `injection`: the sidecar container, its volumes and its
/// configuration annotation, as this webhook writes them.
fn is_this_injection(pod: &Pod, injection: &sidecar::Injection) -> bool {
    fn as_json<T: serde::Serialize>(v: &T) -> Option<Value> {
        serde_json::to_value(v).ok()
    }
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let theirs = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter(|c| c.name == sidecar::CONTAINER_NAME)
        .collect::<Vec<_>>();
    let [container] = theirs.as_slice() else {
        return false;
    };
    let in_init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == sidecar::CONTAINER_NAME);
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(sidecar::CONFIG_ANNOTATION));
    in_init
        && as_json(*container) == as_json(&injection.container)
        && annotation == Some(&injection.config_yaml)
        && injection.volumes.iter().all(|wanted| {
            volumes
                .iter()
                .any(|v| v.name == wanted.name && as_json(v) == as_json(wanted))
        })
}

/// What the cluster's operator forbids that `settings` ask for: a mode outside
/// `injector.allowedModes`, a mode or steering that cannot serve a hostNetwork pod, steering
/// when `injector.allowSteering` is off. The message says what to change and whom to ask.
fn policy_refusal(
    settings: &PodSettings,
    config: &Config,
    spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
) -> Option<String> {
    if !config.allowed_modes.contains(&settings.mode) {
        return Some(format!(
            "trueip: annotation {}: the {} mode is not allowed in this cluster{}: the chart value \
             {ALLOWED_MODES_VALUE} allows {}; use one of those, or ask the cluster operator to \
             add {} to {ALLOWED_MODES_VALUE}",
            settings::MODE,
            settings.mode,
            if settings.mode == Mode::Transparent {
                " (it runs the sidecar as root with CAP_NET_ADMIN)"
            } else {
                ""
            },
            settings::list_modes(&config.allowed_modes),
            settings.mode,
        ));
    }
    if matches!(settings.mode, Mode::Ebpf | Mode::Transparent)
        && spec.and_then(|s| s.host_network) == Some(true)
    {
        return Some(format!(
            "trueip: annotation {}: the {} mode cannot serve a hostNetwork pod (it shares the \
             node's network namespace{}); use proxy-v1, proxy-v2 or none, or opt the pod out \
             with {}: disabled",
            settings::MODE,
            settings.mode,
            if settings.mode == Mode::Transparent {
                ", whose routing it would change"
            } else {
                ""
            },
            settings::INJECT,
        ));
    }
    if let Some(steered) = settings.ports.iter().find(|p| p.steered(settings.steer))
        && !config.allow_steering
    {
        return Some(format!(
            "trueip: annotation {}: port {} would be steered by the node agent (a port listed \
             alone, or {}), and steering is not allowed in this cluster (chart value {}, off \
             when the agent is not deployed); give `listen:upstream` pairs and {}: \"false\"",
            settings::PORTS,
            steered.upstream,
            settings::STEER,
            crate::config::ALLOW_STEERING_VALUE,
            settings::STEER,
        ));
    }
    if spec.and_then(|s| s.host_network) == Some(true)
        && settings.ports.iter().any(|p| p.steered(settings.steer))
    {
        return Some(format!(
            "trueip: annotation {}: a port listed alone is steered by the node agent inside the \
             pod's network namespace, which a hostNetwork pod does not have (it shares the \
             node's); give `listen:upstream` pairs (and {}: \"false\")",
            settings::PORTS,
            settings::STEER,
        ));
    }
    None
}

/// Decides on debug containers being added to a running pod (`pods/ephemeralcontainers`): they
/// may not mount the agent's socket, which an `ebpf` pod has as a volume.
pub(crate) fn decide_debug(pod: &Pod, config: &Config) -> Decision {
    match exposure::check(pod, config, Containers::Ephemeral) {
        Ok(()) => Decision::Unchanged(Skip::DebugContainers),
        Err(exposed) => Decision::Refuse(format!("trueip: {exposed}")),
    }
}

/// The operations that add `injection` to `pod`: append where a list exists, create it where it
/// does not.
fn patch(pod: &Pod, injection: sidecar::Injection) -> Result<Patch, serde_json::Error> {
    let add = |tokens: &[&str], value: Value| {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        })
    };
    let mut ops = Vec::new();
    // Into a map that exists, key by key; a missing map is created whole.
    let mut put = |map: &str, exists: bool, entries: Vec<(&str, Value)>| {
        if exists {
            ops.extend(
                entries
                    .into_iter()
                    .map(|(key, value)| add(&["metadata", map, key], value)),
            );
        } else {
            let object = entries
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect();
            ops.push(add(&["metadata", map], Value::Object(object)));
        }
    };
    put(
        "annotations",
        pod.metadata.annotations.is_some(),
        vec![
            (
                sidecar::CONFIG_ANNOTATION,
                Value::String(injection.config_yaml),
            ),
            (
                sidecar::VERSION_ANNOTATION,
                Value::String(env!("CARGO_PKG_VERSION").into()),
            ),
        ],
    );
    put(
        "labels",
        pod.metadata.labels.is_some(),
        vec![(
            sidecar::INJECTED_LABEL,
            serde_json::to_value(injection.mode)?,
        )],
    );
    let spec = pod.spec.as_ref();
    let container = serde_json::to_value(&injection.container)?;
    if spec.and_then(|s| s.init_containers.as_ref()).is_some() {
        ops.push(add(&["spec", "initContainers", "-"], container));
    } else {
        ops.push(add(
            &["spec", "initContainers"],
            Value::Array(vec![container]),
        ));
    }
    let volumes = injection
        .volumes
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()?;
    if spec.and_then(|s| s.volumes.as_ref()).is_some() {
        ops.extend(
            volumes
                .into_iter()
                .map(|v| add(&["spec", "volumes", "-"], v)),
        );
    } else {
        ops.push(add(&["spec", "volumes"], Value::Array(volumes)));
    }
    Ok(Patch(ops))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::tests::FULL;

    fn config() -> Config {
        Config::from_yaml(FULL, Path::new("config.yaml")).unwrap()
    }

    /// The chart's configuration with `injector.allowedModes` extended to `transparent`.
    fn allowing_transparent() -> Config {
        let text = FULL.replace("ebpf, http]", "ebpf, transparent, http]");
        Config::from_yaml(&text, Path::new("config.yaml")).unwrap()
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    /// Applies the decision's patch to the pod, as the apiserver does.
    fn apply(value: &Value, decision: &Decision) -> Value {
        let Decision::Inject(patch) = decision else {
            panic!("not injected: {decision:?}")
        };
        let mut doc = value.clone();
        json_patch::patch(&mut doc, patch).unwrap();
        doc
    }

    fn bare() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        })
    }

    fn busy() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": {"team": "shop", "trueip.io/ports": "9090",
                                                         "trueip.io/mode": "ebpf"},
                         "labels": {"app": "web"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "busybox"}],
                "containers": [{"name": "app", "image": "nginx"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        })
    }

    #[test]
    fn patches_a_bare_pod() {
        let value = bare();
        let decision = decide(&pod(value.clone()), &config());
        let out = apply(&value, &decision);
        assert_eq!(
            out["spec"]["initContainers"][0]["name"],
            sidecar::CONTAINER_NAME
        );
        // The chart's default mode here is proxy-v2: no agent socket.
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 1);
        let yaml = out["metadata"]["annotations"][sidecar::CONFIG_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(yaml.contains("listen: '[::]:8080'"), "{yaml}");
        assert_eq!(
            out["metadata"]["labels"][sidecar::INJECTED_LABEL],
            "proxy-v2"
        );
        assert_eq!(
            out["metadata"]["annotations"][sidecar::VERSION_ANNOTATION],
            env!("CARGO_PKG_VERSION")
        );
        // Idempotent: the patched pod is left alone.
        assert!(matches!(
            decide(&pod(out), &config()),
            Decision::Unchanged(Skip::AlreadyInjected)
        ));
    }

    #[test]
    fn appends_to_what_the_pod_has() {
        let value = busy();
        let out = apply(&value, &decide(&pod(value.clone()), &config()));
        let inits: Vec<_> = out["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["migrate", sidecar::CONTAINER_NAME]);
        let volumes: Vec<_> = out["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            volumes,
            ["data", sidecar::CONFIG_VOLUME, sidecar::SOCKET_VOLUME]
        );
        assert_eq!(out["metadata"]["annotations"]["team"], "shop");
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        assert_eq!(out["metadata"]["labels"][sidecar::INJECTED_LABEL], "ebpf");
        let yaml = out["metadata"]["annotations"][sidecar::CONFIG_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(yaml.contains("upstream: 127.0.0.1:9090"), "{yaml}");
    }

    #[test]
    fn skips() {
        let mut opted = bare();
        opted["metadata"]["annotations"] = json!({"trueip.io/inject": "disabled"});
        assert!(matches!(
            decide(&pod(opted), &config()),
            Decision::Unchanged(Skip::OptedOut)
        ));
        let no_defaults = Config::from_yaml("sidecar: {image: x}", Path::new("c")).unwrap();
        assert!(matches!(
            decide(&pod(bare()), &no_defaults),
            Decision::Unchanged(Skip::NoPorts)
        ));
        assert!(Skip::NoPorts.warning().unwrap().contains("trueip.io/ports"));
        assert_eq!(Skip::OptedOut.warning(), None);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let mut bad = bare();
        bad["metadata"]["annotations"] =
            json!({"trueip.io/ports": "http", "trueip.io/header": "maybe"});
        let Decision::Refuse(message) = decide(&pod(bad), &config()) else {
            panic!()
        };
        assert!(
            message.starts_with("trueip: annotation trueip.io/ports: \"http\""),
            "{message}"
        );
        assert!(
            message.contains("; annotation trueip.io/header: \"maybe\""),
            "{message}"
        );

        let mut host = bare();
        host["spec"]["hostNetwork"] = json!(true);
        host["metadata"]["annotations"] = json!({"trueip.io/mode": "ebpf"});
        let Decision::Refuse(message) = decide(&pod(host.clone()), &config()) else {
            panic!()
        };
        assert!(message.contains("hostNetwork"), "{message}");
        host["metadata"]["annotations"] = json!({"trueip.io/mode": "transparent"});
        let Decision::Refuse(message) = decide(&pod(host.clone()), &allowing_transparent()) else {
            panic!()
        };
        assert!(
            message.contains("transparent mode cannot serve a hostNetwork pod"),
            "{message}"
        );
        host["metadata"]["annotations"] = json!({"trueip.io/mode": "proxy-v1"});
        assert!(matches!(
            decide(&pod(host.clone()), &config()),
            Decision::Inject(_)
        ));
        // A lone port is steered, inside a network namespace a hostNetwork pod does not have.
        host["metadata"]["annotations"] =
            json!({"trueip.io/mode": "proxy-v1", "trueip.io/ports": "8080"});
        let Decision::Refuse(message) = decide(&pod(host), &config()) else {
            panic!()
        };
        assert!(
            message.contains("steered") && message.contains("hostNetwork"),
            "{message}"
        );

        // Steering off (injector.allowSteering, or no agent): a lone port is refused.
        let mut lone = bare();
        lone["metadata"]["annotations"] = json!({"trueip.io/ports": "8080"});
        let text = FULL.replace("allowedModes:", "allowSteering: false\nallowedModes:");
        let no_steering = Config::from_yaml(&text, Path::new("config.yaml")).unwrap();
        let Decision::Refuse(message) = decide(&pod(lone.clone()), &no_steering) else {
            panic!()
        };
        assert!(message.contains("injector.allowSteering"), "{message}");
        lone["metadata"]["annotations"] = json!({"trueip.io/ports": "8080:80"});
        assert!(matches!(
            decide(&pod(lone), &no_steering),
            Decision::Inject(_)
        ));

        let mut clash = bare();
        clash["spec"]["volumes"] = json!([{"name": sidecar::CONFIG_VOLUME, "emptyDir": {}}]);
        let Decision::Refuse(message) = decide(&pod(clash), &config()) else {
            panic!()
        };
        assert!(message.contains(sidecar::CONFIG_VOLUME), "{message}");

        let mut untrusted = bare();
        untrusted["metadata"]["annotations"] = json!({"trueip.io/trusted-cidrs": ""});
        let Decision::Refuse(message) = decide(&pod(untrusted), &config()) else {
            panic!()
        };
        assert!(message.contains("trueip.io/trusted-cidrs"), "{message}");
    }

    // === what a tenant tries in an opted-in namespace, and what it gets ===

    fn refusal(value: &Value, config: &Config) -> String {
        match decide(&pod(value.clone()), config) {
            Decision::Refuse(message) => message,
            other => panic!("admitted: {other:?}"),
        }
    }

    /// A pod with `annotations` whose app container mounts the node's `path`.
    fn grabbing(path: &str, annotations: &Value) -> Value {
        json!({
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {
                "containers": [{"name": "app", "image": "nginx",
                                "volumeMounts": [{"name": "node", "mountPath": "/node"}]}],
                "volumes": [{"name": "node", "hostPath": {"path": path}}],
            },
        })
    }

    #[test]
    fn the_app_never_gets_the_agent_socket_injected_or_not() {
        let ebpf = json!({"trueip.io/ports": "8080:80", "trueip.io/mode": "ebpf"});
        for annotations in [
            ebpf.clone(),
            json!({"trueip.io/ports": "8080:80", "trueip.io/mode": "none"}),
            json!({"trueip.io/inject": "disabled"}),
            json!({"trueip.io/ports": "not a port"}),
            json!({}),
        ] {
            for path in ["/run/trueip", "/run", "/", "/run/trueip/"] {
                let message = refusal(&grabbing(path, &annotations), &config());
                assert!(
                    message.starts_with(&format!(
                        "trueip: container \"app\" mounts volume \"node\" (hostPath {path}"
                    )),
                    "{annotations} {path}: {message}"
                );
            }
        }
        // By trueip's own volume name, left for the webhook to fill in.
        let mut by_name = grabbing("/srv", &ebpf);
        by_name["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": sidecar::SOCKET_VOLUME, "mountPath": "/run/trueip"}]);
        let message = refusal(&by_name, &config());
        assert!(
            message.contains("container \"app\" mounts volume \"trueip-agent-socket\""),
            "{message}"
        );
    }

    #[test]
    fn the_legitimate_ebpf_pod_is_injected_and_admitted_again() {
        let value = json!({
            "metadata": {"name": "web",
                         "annotations": {"trueip.io/ports": "8080:80", "trueip.io/mode": "ebpf"}},
            "spec": {
                "containers": [{"name": "app", "image": "nginx",
                                "volumeMounts": [{"name": "logs", "mountPath": "/var/log/nginx"}]}],
                "volumes": [{"name": "logs", "hostPath": {"path": "/var/log/pods-nginx"}}],
            },
        });
        let Decision::Inject(patch) = decide(&pod(value.clone()), &config()) else {
            panic!("not injected")
        };
        let mut injected = value.clone();
        json_patch::patch(&mut injected, &patch).unwrap();
        assert_eq!(
            injected["spec"]["volumes"][2]["hostPath"]["path"],
            "/run/trueip"
        );
        assert!(matches!(
            decide(&pod(injected.clone()), &config()),
            Decision::Unchanged(Skip::AlreadyInjected)
        ));

        // A copy of the injected pod that also hands the app the socket is refused...
        let mut copied = injected.clone();
        copied["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": sidecar::SOCKET_VOLUME, "mountPath": "/sock"}]);
        let message = refusal(&copied, &config());
        assert!(
            message.contains("container \"app\" mounts volume"),
            "{message}"
        );
        // ... and so is a "sidecar" that is something else.
        let mut spoofed = injected;
        spoofed["spec"]["initContainers"][0]["image"] = json!("attacker/shell:1");
        let message = refusal(&spoofed, &config());
        assert!(
            message.contains(
                "is not the sidecar this webhook injects: its image is \"attacker/shell:1\""
            ),
            "{message}"
        );
    }

    #[test]
    fn a_sidecar_the_webhook_did_not_write_is_refused() {
        let value = json!({
            "metadata": {"name": "web",
                         "annotations": {"trueip.io/ports": "8080:80", "trueip.io/mode": "ebpf"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        });
        let decision = decide(&pod(value.clone()), &config());
        let injected = apply(&value, &decision);
        // The right image and mounts, but its own flags: no pinned digest, its own listener
        // trusting everyone.
        let mut own_flags = injected.clone();
        own_flags["spec"]["initContainers"][0]["args"] = json!([
            "--listen",
            "[::]:14008",
            "--upstream",
            "127.0.0.1:80",
            "--steer",
            "--mode",
            "proxy-v2",
            "--trusted",
            "0.0.0.0/0"
        ]);
        // The pinned digest of an edited configuration.
        let mut edited = injected.clone();
        edited["metadata"]["annotations"][sidecar::CONFIG_ANNOTATION] = json!("listeners: []\n");
        // An environment of its own.
        let mut env = injected.clone();
        env["spec"]["initContainers"][0]["env"][0] =
            json!({"name": "TRUEIP_CONFIG", "value": "/x"});
        // Opted out, yet carrying a sidecar.
        let mut opted_out = injected.clone();
        opted_out["metadata"]["annotations"]["trueip.io/inject"] = json!("disabled");
        for (what, forged) in [
            ("own flags", own_flags),
            ("edited configuration", edited),
            ("own environment", env),
            ("opted out", opted_out),
        ] {
            let message = refusal(&forged, &config());
            assert!(
                message.contains("is not the one this webhook would inject"),
                "{what}: {message}"
            );
        }
        // The exact copy is admitted unchanged.
        assert!(matches!(
            decide(&pod(injected), &config()),
            Decision::Unchanged(Skip::AlreadyInjected)
        ));
    }

    #[test]
    fn transparent_takes_the_operator_not_an_annotation() {
        let value = json!({
            "metadata": {"name": "web",
                         "annotations": {"trueip.io/ports": "8080:80",
                                         "trueip.io/mode": "transparent"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        });
        let message = refusal(&value, &config());
        assert_eq!(
            message,
            "trueip: annotation trueip.io/mode: the transparent mode is not allowed in this \
             cluster (it runs the sidecar as root with CAP_NET_ADMIN): the chart value \
             injector.allowedModes allows none, proxy-v1, proxy-v2, ebpf, http; use one of \
             those, or ask the cluster operator to add transparent to injector.allowedModes"
        );

        let allowing = allowing_transparent();
        let Decision::Inject(patch) = decide(&pod(value.clone()), &allowing) else {
            panic!("not injected")
        };
        let mut injected = value;
        json_patch::patch(&mut injected, &patch).unwrap();
        let sc = &injected["spec"]["initContainers"][0]["securityContext"];
        assert_eq!(sc["runAsUser"], 0);
        assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN"]));

        // Any mode the operator left out, not only transparent.
        let only_proxy = FULL.replace(
            "allowedModes: [none, proxy-v1, proxy-v2, ebpf, http]",
            "allowedModes: [proxy-v2]",
        );
        let only_proxy = Config::from_yaml(&only_proxy, Path::new("config.yaml")).unwrap();
        let ebpf = json!({
            "metadata": {"name": "web",
                         "annotations": {"trueip.io/ports": "8080:80", "trueip.io/mode": "ebpf"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        });
        let message = refusal(&ebpf, &only_proxy);
        assert!(
            message.starts_with(
                "trueip: annotation trueip.io/mode: the ebpf mode is not allowed in this cluster: \
                 the chart value injector.allowedModes allows proxy-v2;"
            ),
            "{message}"
        );
    }
}
