//! The Helm chart and the webhook, tested the way a cluster would use them, without a cluster
//! (shared/K8S-TOOLING.md): a real `helm` renders the chart, `kubernetes-validate` checks every
//! rendered object against the Kubernetes 1.33 schemas, and the webhook binary is called the way
//! kube-apiserver's mutating-webhook dispatcher calls it, with the rendered configuration. The
//! Dockerfiles are checked against the chart (docker cannot build here).
//!
//! The tools come from `scripts/setup.sh` (into `.tools/`). A test that needs a missing tool
//! returns a [`Skip`](trueip_test_kit::Skip) (`Tools::require`): this `harness = false` binary
//! (the test kit's [`harness`]) reports it as ignored, never as passed:
//! `test <name> ... ignored (SKIPPED: <why>)`. The tests run in parallel, like libtest's.

mod chart;
mod images;
mod support;
mod webhook;

use std::process::ExitCode;

use trueip_test_kit::harness::{self, Test, Threads};

/// Every test of this binary; a test function left out is dead code, which clippy refuses.
const TESTS: [(&str, Test); 22] = trueip_test_kit::tests![
    chart::bad_sidecar_http_values_stop_the_injector_at_start,
    chart::bad_values_are_refused_at_render,
    chart::dashboard_and_alerts_are_optional_and_name_real_metrics,
    chart::default_render_wires_the_pieces_together,
    chart::every_mode_renders_valid_manifests,
    chart::every_value_is_documented,
    chart::every_values_file_renders_valid_manifests,
    chart::failure_policy_is_a_value,
    chart::generated_certificate_is_trusted_by_the_ca_bundle,
    chart::lint_strict_with_every_values_file,
    chart::pod_monitors_scrape_the_agents_and_the_injected_sidecars,
    chart::sidecar_http_values_are_the_sidecars_defaults,
    chart::the_agent_socket_belongs_to_the_sidecars_group,
    chart::the_agents_otlp_values_are_its_otel_variables,
    chart::the_schema_covers_every_value,
    chart::the_schema_refuses_bad_values_naming_them,
    images::dockerfiles_build_what_the_chart_runs,
    webhook::apiserver_calls_the_webhook_and_applies_its_patch,
    webhook::http_pods_get_the_charts_http_section,
    webhook::tenants_get_no_privilege_by_annotation_or_volume,
    webhook::transparent_is_injected_once_the_operator_allows_it,
    webhook::tls_trusts_only_the_ca_bundle_and_follows_certificate_renewal,
];

fn main() -> ExitCode {
    harness::run(&TESTS, Threads::Parallel)
}
