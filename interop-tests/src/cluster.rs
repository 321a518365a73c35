//! What the operator and the control plane do around trueip, for the end-to-end test with the
//! kubelet stand-in ([`crate::kubelet`]): the chart rendered by the real `helm` (as `helm
//! install` would apply it), Pods made from a workload's template (as the Deployment and
//! DaemonSet controllers make them), and the apiserver's call of the mutating webhook — an
//! `admission.k8s.io/v1` AdmissionReview POSTed over HTTPS to the Service the rendered
//! configuration names, trusting only its `caBundle` — with the JSONPatch applied.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use trueip_test_kit::kube::{Operation, admission_review, documents};

use crate::oci::workspace_root;
use trueip_test_kit::{netns::Netns, prereq::skip, run};

/// The Kubernetes version the chart is rendered for.
pub const KUBE_VERSION: &str = "1.33.0";

/// The release name and namespace of the install: its objects are named `trueip-*`.
pub const RELEASE: &str = "trueip";

/// A `helm template` of the chart takes well under this.
const HELM_TIMEOUT: Duration = Duration::from_secs(60);

/// The apiserver gives up on a webhook after `timeoutSeconds`; curl gets a little more.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The `helm` that `scripts/setup.sh` installs into `.tools/`.
#[derive(Debug)]
pub struct Helm(PathBuf);

impl Helm {
    /// The tool, or the reason to skip (setup not run).
    pub fn find() -> Result<Self> {
        let helm = workspace_root().join(".tools/bin/helm");
        if !helm.is_file() {
            return Err(skip(format!(
                "{} is missing (run `bash scripts/setup.sh`)",
                helm.display()
            )));
        }
        Ok(Self(helm))
    }

    /// The objects `helm install` would create from `charts/trueip` with `flags` (each whole,
    /// e.g. `--set=sidecar.mode=ebpf`).
    pub fn template(&self, flags: &[String]) -> Result<Vec<Value>> {
        let out = run::output(
            Command::new(&self.0)
                .args(["template", RELEASE])
                .arg(workspace_root().join("charts/trueip"))
                .args(["--namespace", RELEASE, "--kube-version", KUBE_VERSION])
                .args(flags),
            HELM_TIMEOUT,
        )?;
        ensure!(
            out.status.success(),
            "helm template {flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        documents(&String::from_utf8(out.stdout).context("helm's output is not UTF-8")?)
    }
}

/// The Pod a controller creates from `workload`'s (a Deployment's or DaemonSet's) template,
/// with the name and uid the apiserver gives it.
pub fn pod_from_template(workload: &Value, name: &str, uid: &str) -> Value {
    let template = &workload["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["name"] = json!(name);
    metadata["namespace"] = workload["metadata"]["namespace"].clone();
    metadata["uid"] = json!(uid);
    metadata["ownerReferences"] = json!([{
        "apiVersion": workload["apiVersion"],
        "kind": workload["kind"],
        "name": workload["metadata"]["name"],
        "controller": true,
    }]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template["spec"],
    })
}

/// The mutating webhook as the apiserver calls it: the rendered configuration's first webhook,
/// reached from `network` at `endpoint` (where its Service's `targetPort` is served).
#[derive(Debug)]
pub struct Webhook<'a> {
    /// The configuration's webhook entry.
    pub configured: Value,
    network: &'a Netns,
    endpoint: SocketAddr,
    ca_file: PathBuf,
}

/// What the webhook answered for one pod.
#[derive(Debug)]
pub struct Admitted {
    /// The pod as the apiserver stores it (the patch applied).
    pub pod: Value,
    /// Whether it came back with a patch.
    pub patched: bool,
    /// The response's warnings.
    pub warnings: Vec<String>,
}

impl<'a> Webhook<'a> {
    /// The webhook of the rendered `MutatingWebhookConfiguration` in `docs`, its `caBundle`
    /// written into `dir`.
    pub fn from_render(
        docs: &[Value],
        network: &'a Netns,
        endpoint: SocketAddr,
        dir: &Path,
    ) -> Result<Self> {
        let configuration = docs
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .context("no MutatingWebhookConfiguration rendered")?;
        let configured = configuration["webhooks"][0].clone();
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(
                configured["clientConfig"]["caBundle"]
                    .as_str()
                    .context("no caBundle")?,
            )
            .context("caBundle is not base64")?;
        let ca_file = dir.join("webhook-ca-bundle.pem");
        std::fs::write(&ca_file, bundle)?;
        Ok(Self {
            configured,
            network,
            endpoint,
            ca_file,
        })
    }

    /// Whether the configuration sends pod creations of a namespace labelled `labels` here
    /// (its `namespaceSelector`'s `matchLabels` and `matchExpressions`, and its rules).
    pub fn selects(&self, namespace_labels: &Value) -> Result<bool> {
        let rules = self.configured["rules"].as_array().into_iter().flatten();
        let covers = |list: &Value, want: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|v| v == want || v == "*")
        };
        let creates_pods = rules.clone().any(|r| {
            covers(&r["operations"], "CREATE")
                && covers(&r["apiGroups"], "")
                && covers(&r["resources"], "pods")
        });
        let selector = &self.configured["namespaceSelector"];
        let labels_match = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| namespace_labels[k] == *v);
        let mut expressions_match = true;
        for e in selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let label = &namespace_labels[e["key"].as_str().unwrap_or_default()];
            let values = e["values"].as_array().cloned().unwrap_or_default();
            expressions_match &= match e["operator"].as_str().unwrap_or_default() {
                "In" => values.contains(label),
                "NotIn" => label.is_null() || !values.contains(label),
                "Exists" => !label.is_null(),
                "DoesNotExist" => label.is_null(),
                other => bail!("unknown selector operator {other}"),
            };
        }
        Ok(creates_pods && labels_match && expressions_match)
    }

    /// The apiserver's side of creating `pod`: the AdmissionReview over HTTPS to
    /// `https://<service>.<namespace>.svc:<port><path>?timeout=<n>s`, the Service's name resolved
    /// to the endpoint, trusting only the `caBundle`; the answer must allow the pod.
    pub fn admit(&self, pod: &Value) -> Result<Admitted> {
        let service = &self.configured["clientConfig"]["service"];
        let host = format!(
            "{}.{}.svc",
            service["name"].as_str().context("service name")?,
            service["namespace"].as_str().context("service namespace")?
        );
        let port = service["port"].as_u64().unwrap_or(443);
        let url = format!(
            "https://{host}:{port}{}?timeout={}s",
            service["path"].as_str().unwrap_or("/"),
            self.configured["timeoutSeconds"].as_u64().unwrap_or(10)
        );
        let uid = format!(
            "review-{}",
            pod["metadata"]["uid"].as_str().unwrap_or_default()
        );
        let review = admission_review(
            &uid,
            pod,
            Operation::Create,
            &json!({"username": "system:serviceaccount:kube-system:replicaset-controller"}),
        );
        let out = run::output(
            self.network
                .command("curl")
                .args(["-sS", "--fail-with-body", "--cacert"])
                .arg(&self.ca_file)
                .arg("--connect-to")
                .arg(format!(
                    "{host}:{port}:{}:{}",
                    bracketed(self.endpoint),
                    self.endpoint.port()
                ))
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(serde_json::to_string(&review)?)
                .arg(&url),
            ADMISSION_TIMEOUT,
        )?;
        ensure!(
            out.status.success(),
            "POST {url}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let answer: Value =
            serde_json::from_slice(&out.stdout).context("the webhook's answer is not JSON")?;
        let response = &answer["response"];
        ensure!(response["uid"] == uid.as_str(), "uid in {answer}");
        ensure!(
            response["allowed"] == true,
            "the webhook refused {}: {}",
            pod["metadata"]["name"],
            response["status"]["message"]
        );
        let mut admitted = pod.clone();
        let patched = !response["patch"].is_null();
        if patched {
            ensure!(response["patchType"] == "JSONPatch", "{answer}");
            // Go's decoder takes a `[]byte` as base64 or as an array of numbers (kube-core
            // writes the latter).
            let bytes: Vec<u8> = match &response["patch"] {
                Value::String(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .context("the patch is not base64")?,
                array => serde_json::from_value(array.clone())
                    .context("the patch is neither base64 nor an array of bytes")?,
            };
            let patch: json_patch::Patch =
                serde_json::from_slice(&bytes).context("the patch is not a JSONPatch")?;
            json_patch::patch(&mut admitted, &patch).context("the JSONPatch does not apply")?;
        }
        Ok(Admitted {
            pod: admitted,
            patched,
            warnings: response["warnings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// The address part of `addr` as a URL or `--connect-to` writes it.
fn bracketed(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}
