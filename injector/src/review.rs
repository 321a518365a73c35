//! One `admission.k8s.io/v1` AdmissionReview in, one out: the request is read with kube-core's
//! types, the pod handed to [`inject::decide`], and the decision written back as the apiserver
//! expects it (a JSONPatch, or `allowed: false` with the message the user sees).

use k8s_openapi::api::core::v1::Pod;
use kube_core::{
    DynamicObject,
    admission::{
        AdmissionRequest, AdmissionResponse, AdmissionReview, Operation, SerializePatchError,
    },
};

use crate::{
    config::Config,
    inject::{self, Decision, Skip},
};

/// What became of one admission, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The pod got the sidecar.
    Injected,
    /// The pod was admitted as it was.
    Unchanged(Skip),
    /// The pod was refused (bad annotations).
    Refused,
    /// Neither a pod being created nor debug containers being added (the webhook's rules should
    /// not send those).
    Ignored,
    /// The pod could not be read; admitted unchanged, with a warning.
    Unreadable,
}

/// A request body that is not an AdmissionReview the webhook can answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError {
    /// Not JSON, or not an AdmissionReview.
    #[error("the body is not an AdmissionReview")]
    Body(#[source] serde_json::Error),
    /// An AdmissionReview without a request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// The patch could not be serialised.
    #[error("writing the JSONPatch")]
    Patch(#[source] SerializePatchError),
    /// The response could not be serialised.
    #[error("writing the AdmissionReview response")]
    Response(#[source] serde_json::Error),
}

/// The answer to one AdmissionReview.
#[derive(Debug)]
pub(crate) struct Reviewed {
    /// The AdmissionReview response, JSON.
    pub(crate) body: Vec<u8>,
    /// What became of the pod.
    pub(crate) outcome: Outcome,
}

// === impl Outcome ===

impl Outcome {
    /// A stable label for logs and metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unchanged(skip) => skip.label(),
            Self::Refused => "refused",
            Self::Ignored => "ignored",
            Self::Unreadable => "unreadable",
        }
    }

    /// Every label, so that counters exist (at zero) before the first admission.
    pub(crate) const ALL: [Self; 8] = [
        Self::Injected,
        Self::Unchanged(Skip::AlreadyInjected),
        Self::Unchanged(Skip::OptedOut),
        Self::Unchanged(Skip::NoPorts),
        Self::Unchanged(Skip::DebugContainers),
        Self::Refused,
        Self::Ignored,
        Self::Unreadable,
    ];
}

/// Answers the AdmissionReview in `body`.
pub(crate) fn review(body: &[u8], config: &Config) -> Result<Reviewed, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(ReviewError::Body)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| ReviewError::NoRequest)?;
    let mut response = AdmissionResponse::from(&request);
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    // `kubectl debug` adds ephemeral containers to a running pod through a subresource whose
    // object is the whole pod.
    let decide: Option<fn(&Pod, &Config) -> Decision> =
        match (request.sub_resource.as_deref(), &request.operation) {
            (None, Operation::Create) if is_pod => Some(inject::decide),
            (Some("ephemeralcontainers"), Operation::Update) if is_pod => {
                Some(inject::decide_debug)
            }
            _ => None,
        };
    let pod = decide
        .and(request.object.as_ref())
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value::<Pod>));
    let outcome = match (decide, pod) {
        (Some(_), Some(Err(e))) => {
            tracing::error!(namespace, error = %e, "could not read the pod; admitted unchanged");
            response.warnings = Some(vec![format!(
                "trueip: sidecar not injected: the webhook could not read the pod ({e})"
            )]);
            Outcome::Unreadable
        }
        (Some(decide), Some(Ok(pod))) => {
            let name = pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone())
                .unwrap_or_default();
            match decide(&pod, config) {
                Decision::Inject(patch) => {
                    tracing::info!(namespace, pod = %name, "injected the sidecar");
                    response = response.with_patch(patch).map_err(ReviewError::Patch)?;
                    Outcome::Injected
                }
                Decision::Unchanged(skip) => {
                    tracing::info!(namespace, pod = %name, reason = skip.label(), "left unchanged");
                    response.warnings = skip.warning().map(|w| vec![w]);
                    Outcome::Unchanged(skip)
                }
                Decision::Refuse(message) => {
                    tracing::info!(namespace, pod = %name, reason = %message, "refused");
                    response = response.deny(message);
                    Outcome::Refused
                }
            }
        }
        _ => {
            tracing::warn!(
                kind = %request.kind.kind, operation = ?request.operation, namespace,
                "neither a pod being created nor debug containers; check the webhook's rules"
            );
            Outcome::Ignored
        }
    };
    let body = serde_json::to_vec(&response.into_review()).map_err(ReviewError::Response)?;
    Ok(Reviewed { body, outcome })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use super::*;
    use crate::config::tests::FULL;

    fn request(object: &Value, operation: &str) -> Vec<u8> {
        request_for(object, operation, None)
    }

    fn request_for(object: &Value, operation: &str, sub_resource: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": operation,
                "subResource": sub_resource,
                "userInfo": {"username": "admin"},
                "object": object,
                "dryRun": false,
            }
        }))
        .unwrap()
    }

    fn answer(body: &[u8]) -> (Value, Outcome) {
        let config = Config::from_yaml(FULL, Path::new("config.yaml")).unwrap();
        let reviewed = review(body, &config).unwrap();
        let value: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(value["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(value["kind"], "AdmissionReview");
        assert_eq!(
            value["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        (value["response"].clone(), reviewed.outcome)
    }

    fn pod(annotations: &Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        })
    }

    #[test]
    fn injects_with_a_json_patch() {
        let (response, outcome) = answer(&request(&pod(&json!({})), "CREATE"));
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = kube_core_patch(&response);
        assert!(patch.contains("trueip-sidecar"), "{patch}");
    }

    /// The patch as kube-core writes it: the bytes as a JSON array (Go's decoder takes that for a
    /// `[]byte` as well as base64).
    fn kube_core_patch(response: &Value) -> String {
        let bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn refuses_with_the_message() {
        let (response, outcome) = answer(&request(
            &pod(&json!({"trueip.io/mode": "magic"})),
            "CREATE",
        ));
        assert_eq!(outcome, Outcome::Refused);
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains("trueip.io/mode"), "{message}");
        assert!(response.get("patch").is_none());
    }

    #[test]
    fn leaves_other_operations_alone() {
        let (response, outcome) = answer(&request(&pod(&json!({})), "UPDATE"));
        assert_eq!(outcome, Outcome::Ignored);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());
    }

    #[test]
    fn opted_out_pods_are_unchanged() {
        let (response, outcome) = answer(&request(
            &pod(&json!({"trueip.io/inject": "disabled"})),
            "CREATE",
        ));
        assert_eq!(outcome, Outcome::Unchanged(Skip::OptedOut));
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());
        assert!(response.get("warnings").is_none());
    }

    #[test]
    fn debug_containers_may_not_mount_the_agent_socket() {
        let mut running = pod(&json!({"trueip.io/ports": "8080"}));
        running["spec"]["volumes"] = json!([{"name": "trueip-agent-socket",
                                             "hostPath": {"path": "/run/trueip"}}]);
        running["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]);
        let debug = request_for(&running, "UPDATE", Some("ephemeralcontainers"));
        let (response, outcome) = answer(&debug);
        assert_eq!(outcome, Outcome::Unchanged(Skip::DebugContainers));
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());

        running["spec"]["ephemeralContainers"][0]["volumeMounts"] =
            json!([{"name": "trueip-agent-socket", "mountPath": "/s"}]);
        let debug = request_for(&running, "UPDATE", Some("ephemeralcontainers"));
        let (response, outcome) = answer(&debug);
        assert_eq!(outcome, Outcome::Refused);
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "trueip: container \"debugger\" mounts volume \"trueip-agent-socket\""
            ),
            "{message}"
        );

        // Other subresources are not the webhook's business.
        let (response, outcome) = answer(&request_for(&running, "UPDATE", Some("status")));
        assert_eq!(outcome, Outcome::Ignored);
        assert_eq!(response["allowed"], true);
    }

    #[test]
    fn bad_bodies_are_errors() {
        let config = Config::from_yaml(FULL, Path::new("config.yaml")).unwrap();
        assert!(matches!(review(b"{", &config), Err(ReviewError::Body(_))));
        assert!(matches!(
            review(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                &config
            ),
            Err(ReviewError::NoRequest)
        ));
    }
}
