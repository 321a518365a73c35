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
    config::Config,
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
}

// === impl Skip ===

impl Skip {
    /// A stable label for logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::AlreadyInjected => "already_injected",
            Self::OptedOut => "opted_out",
            Self::NoPorts => "no_ports",
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
            Self::AlreadyInjected | Self::OptedOut => None,
        }
    }
}

/// Decides what to do with `pod` under `config`.
pub(crate) fn decide(pod: &Pod, config: &Config) -> Decision {
    let spec = pod.spec.as_ref();
    let injected = spec.is_some_and(|spec| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|c| c.name == sidecar::CONTAINER_NAME)
    });
    if injected {
        return Decision::Unchanged(Skip::AlreadyInjected);
    }
    let empty = BTreeMap::new();
    let meta = &pod.metadata;
    let settings = match PodSettings::resolve(
        meta.annotations.as_ref().unwrap_or(&empty),
        meta.labels.as_ref().unwrap_or(&empty),
        &config.defaults,
    ) {
        Ok(Resolution::Inject(settings)) => settings,
        Ok(Resolution::OptedOut) => return Decision::Unchanged(Skip::OptedOut),
        Ok(Resolution::NoPorts) => return Decision::Unchanged(Skip::NoPorts),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Decision::Refuse(format!("trueip: {}", list.join("; ")));
        }
    };
    if matches!(settings.mode, Mode::Ebpf | Mode::Transparent)
        && spec.and_then(|s| s.host_network) == Some(true)
    {
        return Decision::Refuse(format!(
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
    let taken = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .find(|v| v.name == sidecar::CONFIG_VOLUME || v.name == sidecar::SOCKET_VOLUME);
    if let Some(volume) = taken {
        return Decision::Refuse(format!(
            "trueip: the pod already has a volume named {}, which the trueip sidecar needs; \
             rename it or opt the pod out with {}: disabled",
            volume.name,
            settings::INJECT,
        ));
    }
    match sidecar::build(&settings, config) {
        Ok(injection) => match patch(pod, injection) {
            Ok(patch) => Decision::Inject(patch),
            Err(e) => Decision::Refuse(format!("trueip: {e}")),
        },
        Err(e @ (BuildError::Refused { .. } | BuildError::PortTaken { .. })) => {
            Decision::Refuse(format!("trueip: {e}"))
        }
        Err(e @ BuildError::Write(_)) => Decision::Refuse(format!("trueip: internal error: {e}")),
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
    let config = Value::String(injection.config_yaml);
    if pod.metadata.annotations.is_some() {
        ops.push(add(
            &["metadata", "annotations", sidecar::CONFIG_ANNOTATION],
            config,
        ));
    } else {
        let annotations = serde_json::Map::from_iter([(sidecar::CONFIG_ANNOTATION.into(), config)]);
        ops.push(add(
            &["metadata", "annotations"],
            Value::Object(annotations),
        ));
    }
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
        let Decision::Refuse(message) = decide(&pod(host.clone()), &config()) else {
            panic!()
        };
        assert!(
            message.contains("transparent mode cannot serve a hostNetwork pod"),
            "{message}"
        );
        host["metadata"]["annotations"] = json!({"trueip.io/mode": "proxy-v1"});
        assert!(matches!(decide(&pod(host), &config()), Decision::Inject(_)));

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
}
