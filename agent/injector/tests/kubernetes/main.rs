//! The Helm chart and the webhook, tested the way a cluster would use them, without a cluster
//! (shared/K8S-TOOLING.md): a real `helm` renders the chart, `kubernetes-validate` checks every
//! rendered object against the Kubernetes 1.33 schemas, and the webhook binary is called the way
//! kube-apiserver's mutating-webhook dispatcher calls it, with the rendered configuration. The
//! Dockerfiles are checked against the chart (docker cannot build here).
//!
//! The tools come from `scripts/setup.sh` (into `.tools/`). Without them, each test prints
//! `SKIPPED: <why>` to stderr and returns.

mod chart;
mod images;
mod support;
mod webhook;
