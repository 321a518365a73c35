//! Kubernetes objects as the tests handle them, without a cluster: the objects of a rendered
//! chart (a multi-document YAML stream), one of them found by kind and name, and the
//! `admission.k8s.io/v1` AdmissionReview that kube-apiserver sends a mutating webhook.

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The objects of a multi-document YAML stream (empty documents dropped).
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("invalid YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The one object of `kind` (and `name`, if given) among `docs`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> Result<&'a Value> {
    let mut found = docs
        .iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n));
    let Some(first) = found.next() else {
        bail!("no {kind} {name:?} rendered");
    };
    ensure!(found.next().is_none(), "several {kind} {name:?} rendered");
    Ok(first)
}

/// What the apiserver asks a pod webhook about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A pod being created.
    Create,
    /// Debug containers being added to a running pod (`kubectl debug`: an UPDATE of the
    /// `ephemeralcontainers` subresource, the pod as it is being both object and old object).
    AddEphemeralContainers,
}

/// The AdmissionReview kube-apiserver POSTs to a webhook for `pod`, on behalf of `user_info`
/// (`{"username": …, "groups": […]}`).
pub fn admission_review(uid: &str, pod: &Value, operation: Operation, user_info: &Value) -> Value {
    let (verb, sub_resource, options, old) = match operation {
        Operation::Create => ("CREATE", Value::Null, "CreateOptions", Value::Null),
        Operation::AddEphemeralContainers => (
            "UPDATE",
            json!("ephemeralcontainers"),
            "UpdateOptions",
            pod.clone(),
        ),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": sub_resource,
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "requestSubResource": sub_resource,
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": verb,
            "userInfo": user_info,
            "object": pod,
            "oldObject": old,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_find_pick_the_one_named_object() {
        let docs = documents("---\nkind: Service\nmetadata: {name: a}\n---\n---\nkind: Service\nmetadata: {name: b}\n")
            .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            find(&docs, "Service", Some("b")).unwrap()["metadata"]["name"],
            "b"
        );
        assert!(
            find(&docs, "Service", None).is_err(),
            "two Services are not one"
        );
        assert!(find(&docs, "Pod", None).is_err());
    }

    #[test]
    fn a_debug_review_updates_the_subresource_with_the_pod_as_old_object() {
        let pod = json!({"metadata": {"name": "p", "namespace": "shop"}});
        let review = admission_review("u", &pod, Operation::AddEphemeralContainers, &json!({}));
        let request = &review["request"];
        assert_eq!(request["operation"], "UPDATE");
        assert_eq!(request["subResource"], "ephemeralcontainers");
        assert_eq!(request["oldObject"], pod);
        assert_eq!(request["namespace"], "shop");
    }
}
