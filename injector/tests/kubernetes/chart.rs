//! The chart: lint, render with every values file, schema-validate, and check that the pieces
//! fit (Service ↔ webhook ↔ Deployment ↔ Secret ↔ ConfigMap, DaemonSet host paths and probes).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use hyper::{Method, StatusCode};
use rustls::{
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use serde_json::Value;

use crate::{
    support::{
        INJECTOR, NAMESPACE, Tools, chart_dir, documents, example_values, find, injector_config,
        workspace_root,
    },
    webhook::Webhook,
};

/// Every values file with the flags it is rendered with: the default values, the examples, and
/// the switches that change which objects are rendered.
fn variants() -> anyhow::Result<Vec<(Vec<PathBuf>, Vec<&'static str>)>> {
    let mut all = vec![(vec![], vec![])];
    all.extend(example_values()?.into_iter().map(|f| (vec![f], vec![])));
    all.extend([
        (vec![], vec!["--set=injector.tls.source=cert-manager"]),
        (
            vec![],
            vec![
                "--set=injector.tls.source=cert-manager",
                "--set=injector.tls.certManager.issuerRef.name=cluster-ca",
                "--set=injector.tls.certManager.issuerRef.kind=ClusterIssuer",
            ],
        ),
        (
            vec![],
            vec![
                "--set=injector.tls.source=secret",
                "--set=injector.tls.secretName=my-tls",
                "--set=injector.tls.caBundle=Y2E=",
            ],
        ),
        (
            vec![],
            vec![
                "--set=agent.enabled=false",
                "--set=sidecar.mode=proxy-v2",
                "--set=injector.podDisruptionBudget.enabled=false",
                "--set=metrics.scrapeAnnotations=true",
                "--set=injector.bindAddress=::",
            ],
        ),
        (
            vec![],
            vec![
                "--set=metrics.podMonitor.enabled=true",
                "--set=metrics.podMonitor.interval=30s",
                "--set=metrics.podMonitor.labels.release=prometheus",
                "--set=metrics.podMonitor.sidecarNamespaces={shop,web}",
            ],
        ),
        (
            vec![],
            vec![
                "--set=metrics.prometheusRule.enabled=true",
                "--set=metrics.grafanaDashboard.enabled=true",
                "--set=injector.tls.source=cert-manager",
            ],
        ),
        (
            vec![],
            vec![
                "--set=sidecar.mode=http",
                "--set=sidecar.allowLoopbackClients=true",
                "--set=sidecar.http.client_headers=append",
                "--set=sidecar.http.x_real_ip=false",
                "--set=sidecar.http.tlv_headers.unique_id=x-request-id",
                "--set=sidecar.http.strip_headers={x-internal-user}",
                "--set=sidecar.http.allow_connect=true",
                "--set=sidecar.http.limits.max_request_head=1048576",
                "--set=sidecar.http.limits.keep_alive_timeout=2m",
                "--set=sidecar.admin.headerTimeout=2s",
                "--set=sidecar.admin.maxConnections=4",
            ],
        ),
        (
            vec![],
            vec![
                "--set=injector.allowedModes={ebpf,transparent}",
                "--set=sidecar.mode=transparent",
                "--set-string=agent.socketMode=0770",
                "--set=agent.socketGroup=1000",
                "--set=sidecar.runAsGroup=1000",
            ],
        ),
    ]);
    Ok(all)
}

pub(crate) fn lint_strict_with_every_values_file() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // values.yaml alone, each example, and each switch: lint checks them against the schema too.
    for (files, flags) in variants()? {
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        tools.lint(&paths, &flags)?;
    }
    Ok(())
}

/// The restore modes, as the injector's parser spells them.
const MODES: [&str; 6] = [
    "none",
    "proxy-v1",
    "proxy-v2",
    "ebpf",
    "transparent",
    "http",
];

/// The `--set` flags that make `mode` the default mode: `transparent` must be allowed first.
fn mode_flags(mode: &str) -> Vec<String> {
    let mut flags = vec![format!("--set=sidecar.mode={mode}")];
    if mode == "transparent" {
        flags.push(
            "--set=injector.allowedModes={none,proxy-v1,proxy-v2,ebpf,http,transparent}".into(),
        );
    }
    flags
}

/// The values in the chart's values.schema.json.
fn schema() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(chart_dir().join("values.schema.json"))?;
    serde_json::from_str(&text).context("values.schema.json is not JSON")
}

pub(crate) fn every_mode_renders_valid_manifests() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // The modes the schema offers are the injector's, all documented in values.yaml.
    let schema = schema()?;
    let offered: Vec<&str> = schema["definitions"]["mode"]["enum"]
        .as_array()
        .context("the schema's modes")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        offered == MODES,
        "values.schema.json offers the modes {offered:?}"
    );
    let values = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    for mode in MODES {
        ensure!(
            values.contains(&format!("`{mode}`")),
            "values.yaml does not document the mode {mode}"
        );
        // Without the agent too, for every mode but the one that needs it.
        let mut renders = vec![mode_flags(mode)];
        if mode != "ebpf" {
            let mut flags = mode_flags(mode);
            flags.push("--set=agent.enabled=false".into());
            renders.push(flags);
        }
        for flags in renders {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let what = format!("{flags:?}");
            tools.lint(&[], &flags)?;
            let yaml = tools.render(&[], &flags)?;
            tools.validate(&yaml, &what)?;
            let docs = documents(&yaml)?;
            let config = injector_config(&docs)?;
            ensure!(
                config.contains(&format!("mode: \"{mode}\"")),
                "{what}: the injector's default mode is not {mode}:\n{config}"
            );
            if let Err(log) = injector_accepts(&config)? {
                anyhow::bail!("{what}: the injector refuses the configuration:\n{log}");
            }
        }
    }
    Ok(())
}

pub(crate) fn every_values_file_renders_valid_manifests() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    for (files, flags) in variants()? {
        let what = format!("{files:?} {flags:?}");
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let yaml = tools.render(&paths, &flags)?;
        tools.validate(&yaml, &what)?;
        let docs = documents(&yaml)?;

        // The webhook binary accepts the configuration this render gives it.
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, injector_config(&docs)?)?;
        let out = Command::new(INJECTOR)
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .output()?;
        ensure!(
            out.status.success(),
            "{what}: the injector refuses the rendered configuration:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Whatever the values, the webhook is opt-in per namespace and never for kube-system or
        // the chart's own namespace.
        let webhook = &find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0];
        let ns = &webhook["namespaceSelector"];
        ensure!(
            ns["matchLabels"]["trueip.io/inject"] == "enabled",
            "{what}: {ns}"
        );
        let excluded = &ns["matchExpressions"][0];
        ensure!(
            excluded["key"] == "kubernetes.io/metadata.name" && excluded["operator"] == "NotIn",
            "{what}: {ns}"
        );
        let excluded: Vec<&str> = excluded["values"]
            .as_array()
            .context("excluded namespaces")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            excluded.contains(&"kube-system") && excluded.contains(&NAMESPACE),
            "{what}: excluded {excluded:?}"
        );
        ensure!(
            webhook["sideEffects"] == "None" && webhook["admissionReviewVersions"][0] == "v1",
            "{what}: {webhook}"
        );
    }
    Ok(())
}

pub(crate) fn default_render_wires_the_pieces_together() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let docs = documents(&tools.render(&[], &[])?)?;

    // apiserver → Service → Deployment's container port.
    let webhook = &find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    let client = &webhook["clientConfig"]["service"];
    assert_eq!(client["namespace"], NAMESPACE);
    assert_eq!(client["path"], "/mutate");
    let service_name = client["name"].as_str().context("service name")?;
    let service = find(&docs, "Service", Some(service_name))?;
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], client["port"]);
    let deployment = find(&docs, "Deployment", Some("trueip-injector"))?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    for (key, value) in service["spec"]["selector"]
        .as_object()
        .context("selector")?
    {
        assert_eq!(&pod["metadata"]["labels"][key], value, "selector {key}");
    }
    let container = &pod["spec"]["containers"][0];
    let container_port = &container["ports"][0];
    assert_eq!(container_port["name"], port["targetPort"]);
    let args: Vec<&str> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{}", container_port["containerPort"]).as_str()),
        "{args:?}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz");
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS");
    }

    // The Deployment mounts the Secret and the ConfigMap that were rendered, where its
    // arguments look.
    let volumes = pod["spec"]["volumes"].as_array().context("volumes")?;
    let secret_name = volumes
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .context("no Secret volume")?;
    find(&docs, "Secret", Some(secret_name))?;
    let map_name = volumes
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .context("no ConfigMap volume")?;
    find(&docs, "ConfigMap", Some(map_name))?;
    let mounts = container["volumeMounts"].as_array().context("mounts")?;
    for (arg, mount) in [
        ("--config=", "config"),
        ("--tls-cert=", "tls"),
        ("--tls-key=", "tls"),
    ] {
        let path = args.iter().find_map(|a| a.strip_prefix(arg)).context(arg)?;
        let dir = mounts
            .iter()
            .find(|m| m["name"] == mount)
            .and_then(|m| m["mountPath"].as_str())
            .context(mount)?;
        assert!(path.starts_with(dir), "{arg}{path} is not under {dir}");
    }

    // The webhook runs unprivileged and without API access.
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(
            docs.iter().all(|d| d["kind"] != kind),
            "{kind} rendered: nothing in trueip calls the Kubernetes API"
        );
    }

    // The PodDisruptionBudget covers the webhook pods.
    let pdb = find(&docs, "PodDisruptionBudget", None)?;
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for (key, value) in pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("pdb selector")?
    {
        assert_eq!(&pod["metadata"]["labels"][key], value, "pdb selector {key}");
    }

    // The agent: privileged on every node, with exactly the host paths it needs.
    let agent = find(&docs, "DaemonSet", Some("trueip-agent"))?;
    let spec = &agent["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert!(spec.get("hostNetwork").is_none());
    let host_paths: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .context("agent volumes")?
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from(["/sys/fs/bpf", "/sys/fs/cgroup", "/run/trueip"])
    );
    let agent_container = &spec["containers"][0];
    assert_eq!(agent_container["securityContext"]["privileged"], true);
    assert_eq!(
        agent_container["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(
        agent_container["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    let env = |name: &str| {
        agent_container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(env("TRUEIP_HEALTH_LISTEN").as_deref(), Some("0.0.0.0:9901"));
    assert_eq!(agent_container["ports"][0]["containerPort"], 9901);
    assert_eq!(
        env("TRUEIP_AGENT_SOCKET").as_deref(),
        Some("/run/trueip/agent.sock")
    );
    assert_eq!(env("TRUEIP_CGROUP_ROOT").as_deref(), Some("/host/cgroup"));
    assert_eq!(
        env("TRUEIP_BPFFS_DIR").as_deref(),
        Some("/sys/fs/bpf/trueip")
    );
    // Only root and the sidecars' group may connect to the agent.
    assert_eq!(env("TRUEIP_SOCKET_MODE").as_deref(), Some("660"));
    assert_eq!(env("TRUEIP_SOCKET_GROUP").as_deref(), Some("65532"));
    assert_eq!(agent["spec"]["updateStrategy"]["type"], "RollingUpdate");

    // The injected sidecars find the agent's socket where the agent puts it.
    let config = injector_config(&docs)?;
    assert!(
        config.contains("agentSocket: \"/run/trueip/agent.sock\""),
        "{config}"
    );
    // ... with the group the socket belongs to, and no `transparent` unless allowed.
    assert!(config.contains("runAsGroup: 65532"), "{config}");
    assert!(
        config.contains(r#"allowedModes: ["none","proxy-v1","proxy-v2","ebpf","http"]"#),
        "{config}"
    );
    Ok(())
}

/// The agent DaemonSet's value of `name`, in a render with `flags`.
fn agent_env(tools: &Tools, flags: &[&str], name: &str) -> anyhow::Result<Option<String>> {
    let docs = documents(&tools.render(&[], flags)?)?;
    let agent = find(&docs, "DaemonSet", Some("trueip-agent"))?;
    Ok(agent["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_owned))
}

pub(crate) fn the_agent_socket_belongs_to_the_sidecars_group() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // The socket's group follows the sidecars' group unless set (to the same value).
    for flags in [
        vec!["--set=sidecar.runAsGroup=1000"],
        vec![
            "--set=sidecar.runAsGroup=1000",
            "--set=agent.socketGroup=1000",
        ],
    ] {
        let group = agent_env(&tools, &flags, "TRUEIP_SOCKET_GROUP")?;
        assert_eq!(group.as_deref(), Some("1000"), "{flags:?}");
    }
    let mode = agent_env(
        &tools,
        &["--set-string=agent.socketMode=0770"],
        "TRUEIP_SOCKET_MODE",
    )?;
    assert_eq!(mode.as_deref(), Some("0770"));
    let mode = agent_env(
        &tools,
        &["--set=agent.socketMode=666"],
        "TRUEIP_SOCKET_MODE",
    )?;
    assert_eq!(mode.as_deref(), Some("666"));
    Ok(())
}

pub(crate) fn the_agents_otlp_values_are_its_otel_variables() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // Off by default: no OTEL_* variable, but the agent knows its node and pod.
    let docs = documents(&tools.render(&[], &[])?)?;
    let env = &find(&docs, "DaemonSet", Some("trueip-agent"))?["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    let names: Vec<&str> = env
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("OTEL_")), "{names:?}");
    for (name, field) in [
        ("K8S_NODE_NAME", "spec.nodeName"),
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE_NAME", "metadata.namespace"),
        ("K8S_POD_UID", "metadata.uid"),
    ] {
        let var = env
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .with_context(|| format!("no {name} in {env}"))?;
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
    let on = [
        "--set=agent.otlp.endpoint=http://otel-collector.observability:4317",
        "--set=agent.otlp.protocol=grpc",
        "--set=agent.otlp.sampler=parentbased_traceidratio",
        "--set-string=agent.otlp.samplerArg=0.5",
        "--set=agent.otlp.resourceAttributes.deployment\\.environment=prod",
        "--set=agent.otlp.resourceAttributes.team=net",
    ];
    tools.lint(&[], &on)?;
    for (name, want) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,team=net",
        ),
    ] {
        assert_eq!(
            agent_env(&tools, &on, name)?.as_deref(),
            Some(want),
            "{name}"
        );
    }
    Ok(())
}

pub(crate) fn pod_monitors_scrape_the_agents_and_the_injected_sidecars() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let off = documents(&tools.render(&[], &[])?)?;
    ensure!(
        off.iter().all(|d| d["kind"] != "PodMonitor"),
        "PodMonitors rendered although metrics.podMonitor.enabled is false"
    );
    let docs = documents(&tools.render(
        &[],
        &[
            "--set=metrics.podMonitor.enabled=true",
            "--set=metrics.podMonitor.labels.release=prometheus",
        ],
    )?)?;

    // The agents' monitor selects exactly the DaemonSet's pods, on a port they declare.
    let agent = find(&docs, "PodMonitor", Some("trueip-agent"))?;
    let daemonset = find(&docs, "DaemonSet", None)?;
    assert_eq!(
        agent["spec"]["selector"]["matchLabels"],
        daemonset["spec"]["selector"]["matchLabels"]
    );
    let endpoint = &agent["spec"]["podMetricsEndpoints"][0];
    let ports = &daemonset["spec"]["template"]["spec"]["containers"][0]["ports"];
    ensure!(
        ports
            .as_array()
            .context("agent ports")?
            .iter()
            .any(|p| p["name"] == endpoint["port"]),
        "the agent PodMonitor scrapes port {} which the DaemonSet does not declare: {ports}",
        endpoint["port"]
    );
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(agent["metadata"]["labels"]["release"], "prometheus");

    // The sidecars' monitor scrapes the port the injector adds, in every namespace.
    let sidecars = find(&docs, "PodMonitor", Some("trueip-sidecars"))?;
    assert_eq!(
        sidecars["spec"]["podMetricsEndpoints"][0]["port"],
        "trueip-metrics"
    );
    assert_eq!(sidecars["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(sidecars["metadata"]["labels"]["release"], "prometheus");

    // No sidecar metrics port, no sidecar monitor; no agent, no agent monitor.
    let docs = documents(&tools.render(
        &[],
        &[
            "--set=metrics.podMonitor.enabled=true",
            "--set=sidecar.metricsPort=0",
            "--set=agent.enabled=false",
            "--set=sidecar.mode=proxy-v2",
        ],
    )?)?;
    ensure!(
        docs.iter().all(|d| d["kind"] != "PodMonitor"),
        "PodMonitors rendered for components that serve no metrics"
    );
    Ok(())
}

/// The alerts of the PrometheusRule with the agent and the sidecars' metrics port on (the
/// defaults).
const ALERTS: [&str; 7] = [
    "TrueipAgentDown",
    "TrueipAgentNotReady",
    "TrueipRestoreMapNearlyFull",
    "TrueipSteeringFallThrough",
    "TrueipConnectionsRejected",
    "TrueipRestoreFailing",
    "TrueipInjectorCertReloadFailing",
];
/// The alert `injector.tls.source: cert-manager` adds (from cert-manager's own metric).
const CERT_MANAGER_ALERT: &str = "TrueipWebhookCertificateExpiring";

/// Metrics the rules may name that trueip does not serve: Prometheus' own `up`, and
/// cert-manager's (the webhook exports no certificate expiry of its own).
const EXTERNAL_METRICS: [&str; 2] = ["up", "certmanager_certificate_expiration_timestamp_seconds"];

/// The Rust sources of what serves `/metrics` (agent, injector, sidecar), as one text, each
/// file cut at its first `#[cfg(test)]`: unit tests spell metric names too, only what the code
/// registers counts.
fn metric_sources() -> anyhow::Result<String> {
    let mut text = String::new();
    let mut dirs: Vec<PathBuf> = [
        "agent/src",
        "injector/src",
        "sidecar/app/src",
        "sidecar/src",
    ]
    .iter()
    .map(|d| workspace_root().join(d))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let file = std::fs::read_to_string(&path)?;
                text.push_str(file.split("#[cfg(test)]").next().unwrap_or_default());
                text.push('\n');
            }
        }
    }
    ensure!(!text.is_empty(), "no Rust sources found");
    Ok(text)
}

/// The metric names a PromQL expression (or a Grafana `label_values(...)` query) selects: the
/// names that start with `trueip_` or `certmanager_`, and any name followed by a `{` matcher
/// (`up{...}`). Strings (label values), numbers and durations, and Grafana's `$variables` are
/// skipped; functions, keywords and label names are not selectors.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (word_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if word_char(c) {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let variable = start > 0 && chars[start - 1] == '$';
            let selector = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'{');
            if !variable
                && (word.starts_with("trueip_") || word.starts_with("certmanager_") || selector)
            {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `sources` (see [`metric_sources`]; `compact`: the same without whitespace) define
/// the metric `name` as Prometheus exposes it: the name, or the name without `_total`,
/// `_bucket`, `_sum` or `_count`, in a string literal (the injector writes its exposition text
/// by hand); or registered with prometheus-client under a registry prefix (`trueip_agent`,
/// `trueip`), which adds the prefix, the unit of `register_with_unit` and `_total`.
fn defined_in(sources: &str, compact: &str, name: &str) -> bool {
    let base = ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    let literal =
        |s: &str| sources.contains(&format!("\"{s}\"")) || sources.contains(&format!("\"{s}{{"));
    if literal(name) || literal(base) {
        return true;
    }
    ["trueip_agent", "trueip"].iter().any(|prefix| {
        let Some(rest) = base
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('_'))
        else {
            return false;
        };
        sources.contains(&format!("\"{prefix}\""))
            && (literal(rest)
                || ["_bytes", "_seconds"].iter().any(|unit| {
                    rest.strip_suffix(unit).is_some_and(|registered| {
                        compact.contains(&format!("register_with_unit(\"{registered}\""))
                    })
                }))
    })
}

/// The rule's alerts by name, each checked for a severity, a summary and a description, with
/// their expressions.
fn rule_alerts(rule: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let mut alerts = Vec::new();
    for group in rule["spec"]["groups"]
        .as_array()
        .context("no rule groups")?
    {
        for r in group["rules"].as_array().context("a group without rules")? {
            let name = r["alert"].as_str().context("a rule that is no alert")?;
            let has = |v: &Value| v.as_str().is_some_and(|s| !s.trim().is_empty());
            ensure!(has(&r["labels"]["severity"]), "{name}: no severity: {r}");
            for key in ["summary", "description"] {
                ensure!(has(&r["annotations"][key]), "{name}: no {key}: {r}");
            }
            let expr = r["expr"].as_str().context("an alert without expr")?;
            alerts.push((name.to_owned(), expr.to_owned()));
        }
    }
    Ok(alerts)
}

pub(crate) fn dashboard_and_alerts_are_optional_and_name_real_metrics() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let off = documents(&tools.render(&[], &[])?)?;
    ensure!(
        off.iter().all(|d| d["kind"] != "PrometheusRule"),
        "a PrometheusRule rendered although metrics.prometheusRule.enabled is false"
    );
    ensure!(
        off.iter()
            .all(|d| d["kind"] != "ConfigMap" || d["data"].get("trueip.json").is_none()),
        "the dashboard rendered although metrics.grafanaDashboard.enabled is false"
    );

    // Without cert-manager, no expiry alert: nothing trueip serves says when its certificate
    // expires.
    let docs = documents(&tools.render(&[], &["--set=metrics.prometheusRule.enabled=true"])?)?;
    let names: BTreeSet<String> = rule_alerts(find(&docs, "PrometheusRule", None)?)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let expected: BTreeSet<String> = ALERTS.iter().map(|a| (*a).to_owned()).collect();
    ensure!(names == expected, "alerts without cert-manager: {names:?}");

    let flags = [
        "--set=metrics.prometheusRule.enabled=true",
        "--set=metrics.prometheusRule.labels.release=prometheus",
        "--set=metrics.prometheusRule.agentDown.severity=page",
        "--set-json=metrics.prometheusRule.rejections.threshold=0.2",
        "--set=injector.tls.source=cert-manager",
        "--set=metrics.grafanaDashboard.enabled=true",
        "--set=metrics.grafanaDashboard.annotations.grafana_folder=trueip",
    ];
    let yaml = tools.render(&[], &flags)?;
    tools.validate(&yaml, &format!("{flags:?}"))?;
    let docs = documents(&yaml)?;

    // The rule: its labels from values, every alert with a severity, a summary and a
    // description, thresholds and severities from values.
    let rule = find(&docs, "PrometheusRule", None)?;
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts = rule_alerts(rule)?;
    let names: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    let expected: BTreeSet<&str> = ALERTS.iter().copied().chain([CERT_MANAGER_ALERT]).collect();
    ensure!(names == expected, "alerts: {names:?}");
    let severity = |alert: &str| -> anyhow::Result<Value> {
        rule["spec"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .find(|r| r["alert"] == alert)
            .map(|r| r["labels"]["severity"].clone())
            .with_context(|| format!("no {alert}"))
    };
    assert_eq!(severity("TrueipAgentDown")?, "page");
    assert_eq!(severity("TrueipAgentNotReady")?, "critical");
    let rejected = &alerts
        .iter()
        .find(|(name, _)| name == "TrueipConnectionsRejected")
        .context("no TrueipConnectionsRejected")?
        .1;
    ensure!(rejected.trim_end().ends_with("> 0.2"), "{rejected}");
    ensure!(
        rejected.contains("reason!~\"closed_before_header\""),
        "TCP health checks count as rejections: {rejected}"
    );
    let mut exprs: Vec<(String, String)> = alerts
        .iter()
        .map(|(name, expr)| (format!("alert {name}"), expr.clone()))
        .collect();

    // The dashboard: labelled for Grafana's sidecar, the chart's JSON file as it is.
    let map = find(&docs, "ConfigMap", Some("trueip-dashboard"))?;
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "trueip");
    let text = map["data"]["trueip.json"]
        .as_str()
        .context("the dashboard ConfigMap has no trueip.json")?;
    let dashboard: Value = serde_json::from_str(text).context("the dashboard is not JSON")?;
    let file = std::fs::read_to_string(chart_dir().join("dashboards/trueip.json"))?;
    let file: Value = serde_json::from_str(&file).context("dashboards/trueip.json is not JSON")?;
    ensure!(
        dashboard == file,
        "the ConfigMap's dashboard is not dashboards/trueip.json"
    );
    ensure!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    ensure!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );

    // A data source variable (Prometheus), the namespace and pod variables, and every panel
    // querying that data source.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("the dashboard has no variables")?;
    ensure!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable: {variables:?}"
    );
    for name in ["namespace", "pod"] {
        ensure!(
            variables
                .iter()
                .any(|v| v["type"] == "query" && v["name"] == name),
            "no {name} variable"
        );
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .with_context(|| format!("variable {}: no query", v["name"]))?;
        exprs.push((format!("variable {}", v["name"]), query.to_owned()));
    }
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?
        .iter()
        .collect();
    let mut i = 0;
    while i < panels.len() {
        let panel = panels[i];
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        i += 1;
    }
    let mut queried = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = panel["targets"]
            .as_array()
            .with_context(|| format!("panel {title}: no targets"))?;
        ensure!(!targets.is_empty(), "panel {title}: no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {title}: a target without expr"))?;
            exprs.push((format!("panel {title}"), expr.to_owned()));
            queried += 1;
        }
    }
    ensure!(queried >= 10, "only {queried} panel queries");

    // Every metric any expression names is one the code serves (or Prometheus', cert-manager's).
    let sources = metric_sources()?;
    let compact: String = sources.split_whitespace().collect();
    ensure!(
        !defined_in(&sources, &compact, "trueip_no_such_metric_total"),
        "the check accepts any name"
    );
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (what, expr) in &exprs {
        let names = metric_names(expr);
        ensure!(!names.is_empty(), "{what}: no metric in {expr}");
        for name in names {
            if !EXTERNAL_METRICS.contains(&name.as_str()) && !defined_in(&sources, &compact, &name)
            {
                unknown.push(format!("{name} ({what})"));
            }
            used.insert(name);
        }
    }
    ensure!(
        unknown.is_empty(),
        "metrics that no Rust source of the agent, the injector or the sidecar defines: {unknown:?}"
    );
    for name in [
        "trueip_connections_accepted_total",
        "trueip_connections_active",
        "trueip_connections_rejected_total",
        "trueip_restore_total",
        "trueip_agent_pod_map_entries",
        "trueip_agent_pod_map_capacity",
        "trueip_agent_sidecar_requests_total",
        "trueip_agent_refused_connections_total",
        "trueip_agent_steered_connections_total",
        "trueip_injector_admissions_total",
        "trueip_http_limits_total",
    ] {
        ensure!(used.contains(name), "nothing shows {name}");
    }
    Ok(())
}

pub(crate) fn failure_policy_is_a_value() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let docs = documents(&tools.render(&[], &["--set=injector.failurePolicy=Fail"])?)?;
    let webhook = &find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    Ok(())
}

pub(crate) fn generated_certificate_is_trusted_by_the_ca_bundle() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let docs = documents(&tools.render(&[], &[])?)?;
    let webhook = &find(&docs, "MutatingWebhookConfiguration", None)?["webhooks"][0];
    let secret = find(&docs, "Secret", Some("trueip-injector-tls"))?;
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let b64 = |v: &Value| -> anyhow::Result<Vec<u8>> {
        let text = v.as_str().context("not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
    };
    let ca_bundle = b64(&webhook["clientConfig"]["caBundle"])?;
    assert_eq!(ca_bundle, b64(&secret["data"]["ca.crt"])?);

    // Verify the serving certificate as the apiserver does: trusting only the caBundle, for
    // the Service's DNS name.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&ca_bundle) {
        roots.add(ca?)?;
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
    let chain: Vec<CertificateDer<'_>> =
        CertificateDer::pem_slice_iter(&b64(&secret["data"]["tls.crt"])?)
            .collect::<Result<_, _>>()?;
    let service = &webhook["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().context("name")?,
        service["namespace"].as_str().context("namespace")?
    );
    verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from(host.as_str())?,
        &[],
        UnixTime::now(),
    )?;

    let other = verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from("trueip-injector.elsewhere.svc")?,
        &[],
        UnixTime::now(),
    );
    assert!(
        other.is_err(),
        "the certificate is valid for another namespace"
    );

    // The webhook serves helm's pair (an RSA PKCS#1 key), trusted through the caBundle.
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, b64(&secret["data"]["tls.crt"])?)?;
    std::fs::write(&key, b64(&secret["data"]["tls.key"])?)?;
    let webhook = Webhook::start(&injector_config(&docs)?, &cert, &key)?;
    let (status, _) = webhook.request(&ca_bundle, &host, Method::GET, "/healthz", vec![])?;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

pub(crate) fn bad_values_are_refused_at_render() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // What the schema cannot judge (values that must agree with each other, a number where a
    // quoted mode belongs), refused by the templates with the chart's own message.
    for (flag, expected) in [
        ("--set=injector.tls.source=secret", "injector.tls.caBundle"),
        (
            "--set=sidecar.mode=transparent",
            "sidecar.mode \"transparent\" is not in injector.allowedModes",
        ),
        (
            "--set=injector.allowedModes={proxy-v2}",
            "sidecar.mode \"ebpf\" is not in injector.allowedModes [proxy-v2]",
        ),
        (
            "--set=agent.socketMode=640",
            "agent.socketMode must be an octal mode",
        ),
        (
            "--set=agent.socketGroup=1000",
            "agent.socketGroup (1000) must be sidecar.runAsGroup (65532)",
        ),
        (
            "--set=sidecar.http.tls.cert=/tls/tls.crt",
            "sidecar.http.tls cannot be set",
        ),
    ] {
        let e = tools.render(&[], &[flag]).expect_err(flag).to_string();
        assert!(e.contains(expected), "{flag}: {e}");
    }
    Ok(())
}

/// Where a bad value comes from: `--set` flags, or a values file's text (what YAML makes of an
/// unquoted `off` cannot be written with `--set`).
enum Bad {
    Set(&'static str),
    File(&'static str),
}

/// Whether helm's schema error names the value at `path` (`sidecar.http.limits`; `""`: the
/// root): Helm 3.17 writes `- sidecar.header: ...`, later versions `at '/sidecar/header'`.
fn names_path(error: &str, path: &str) -> bool {
    if path.is_empty() {
        return error.contains("(root)") || error.contains("at ''");
    }
    error.contains(&format!("- {path}: "))
        || error.contains(&format!("'/{}'", path.replace('.', "/")))
}

pub(crate) fn the_schema_refuses_bad_values_naming_them() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    let dir = tempfile::tempdir()?;
    // (the value, the path helm's message must name, and what else it must say)
    for (bad, path, says) in [
        (
            Bad::Set("--set=sidecar.mode=bogus"),
            "sidecar.mode",
            "transparent",
        ),
        // YAML reads an unquoted `off` as false; the message says to quote it.
        (
            Bad::File("sidecar:\n  header: off\n"),
            "sidecar.header",
            "quote it: header: 'off'",
        ),
        (
            Bad::Set("--set=sidecar.header=maybe"),
            "sidecar.header",
            "optional",
        ),
        (
            Bad::Set("--set=sidecar.metricsPort=70000"),
            "sidecar.metricsPort",
            "65535",
        ),
        // No TLS client is built in: an https collector is refused, not silently unreached.
        (
            Bad::Set("--set=sidecar.otlp.endpoint=https://collector:4318"),
            "sidecar.otlp.endpoint",
            "http://",
        ),
        (
            Bad::Set("--set=agent.otlp.endpoint=https://collector:4317"),
            "agent.otlp.endpoint",
            "http://",
        ),
        (
            Bad::Set("--set=injector.failurePolicy=Maybe"),
            "injector.failurePolicy",
            "Ignore",
        ),
        // A typo names the key, under the mapping that has no such key.
        (Bad::Set("--set=sidecar.mdoe=ebpf"), "sidecar", "mdoe"),
        (Bad::File("sidcar:\n  mode: ebpf\n"), "", "sidcar"),
        (
            Bad::Set("--set=sidecar.http.limits.max_request_head=10"),
            "sidecar.http.limits.max_request_head",
            "8192",
        ),
        (
            Bad::Set("--set=sidecar.http.limits.h2_stream_window=1024"),
            "sidecar.http.limits.h2_stream_window",
            "65535",
        ),
        (
            Bad::Set("--set=sidecar.http.limits.max_head=65536"),
            "sidecar.http.limits",
            "max_head",
        ),
        (
            Bad::Set("--set=sidecar.http.colour=blue"),
            "sidecar.http",
            "colour",
        ),
        (
            Bad::Set("--set=sidecar.http.client_headers=keep"),
            "sidecar.http.client_headers",
            "append",
        ),
        (
            Bad::Set("--set=sidecar.http.x_forwarded_for=not a header"),
            "sidecar.http.x_forwarded_for",
            "pattern",
        ),
        // A header name or `false`; `true` says which.
        (
            Bad::Set("--set=sidecar.http.x_real_ip=true"),
            "sidecar.http.x_real_ip",
            "false",
        ),
        (
            Bad::Set("--set=sidecar.http.tlv_headers.vpce=x-vpce"),
            "sidecar.http.tlv_headers",
            "vpce",
        ),
        (
            Bad::Set("--set=sidecar.http=strip"),
            "sidecar.http",
            "object",
        ),
        (
            Bad::Set("--set=sidecar.http.limits.keep_alive_timeout=forever"),
            "sidecar.http.limits.keep_alive_timeout",
            "pattern",
        ),
        (
            Bad::Set("--set=sidecar.admin.headerTimeout=soon"),
            "sidecar.admin.headerTimeout",
            "pattern",
        ),
        (
            Bad::Set("--set=sidecar.admin.maxConnections=0"),
            "sidecar.admin.maxConnections",
            "1",
        ),
        (
            Bad::Set("--set=sidecar.allowLoopbackClients=maybe"),
            "sidecar.allowLoopbackClients",
            "boolean",
        ),
        (
            Bad::Set("--set=sidecar.logFormat=yaml"),
            "sidecar.logFormat",
            "text",
        ),
        (
            Bad::Set("--set=sidecar.fallback=ebpf"),
            "sidecar.fallback",
            "proxy-v1",
        ),
        (
            Bad::Set("--set=sidecar.listenAddress=any"),
            "sidecar.listenAddress",
            "ipv4",
        ),
        (
            Bad::Set("--set=agent.socketMode=777x"),
            "agent.socketMode",
            "[2367]",
        ),
        (
            Bad::Set("--set=agent.socketMode=rw"),
            "agent.socketMode",
            "[2367]",
        ),
        (
            Bad::Set("--set=agent.podCgroup=pod"),
            "agent.podCgroup",
            "parent",
        ),
        (
            Bad::Set("--set=agent.logFormat=human"),
            "agent.logFormat",
            "text",
        ),
        (
            Bad::Set("--set=agent.image.pullPolicy=Sometimes"),
            "agent.image.pullPolicy",
            "IfNotPresent",
        ),
        // An unquoted tag that YAML reads as a number.
        (
            Bad::File("agent:\n  image:\n    tag: 1.10\n"),
            "agent.image.tag",
            "string",
        ),
        (
            Bad::Set("--set=commonLabels.team=1"),
            "commonLabels.team",
            "string",
        ),
        (
            Bad::Set("--set=injector.timeoutSeconds=60"),
            "injector.timeoutSeconds",
            "30",
        ),
        (
            Bad::Set("--set=injector.tls.source=vault"),
            "injector.tls.source",
            "cert-manager",
        ),
        (
            Bad::Set("--set=injector.allowedModes={ebpf,tproxy}"),
            "injector.allowedModes.1",
            "transparent",
        ),
        (
            Bad::Set("--set=injector.certReloadInterval=10"),
            "injector.certReloadInterval",
            "string",
        ),
        (
            Bad::Set("--set=metrics.podMonitor.interval=30 seconds"),
            "metrics.podMonitor.interval",
            "pattern",
        ),
        // `--set` passes fractions as strings: `--set-json` gives the number.
        (
            Bad::Set("--set-json=metrics.prometheusRule.mapNearlyFull.threshold=1.5"),
            "metrics.prometheusRule.mapNearlyFull.threshold",
            "1",
        ),
        (
            Bad::Set("--set=metrics.prometheusRule.agentDown.for=5 minutes"),
            "metrics.prometheusRule.agentDown.for",
            "pattern",
        ),
    ] {
        let (what, result) = match bad {
            Bad::Set(flag) => (flag.to_owned(), tools.render(&[], &[flag])),
            Bad::File(text) => {
                let file = dir.path().join("bad.yaml");
                std::fs::write(&file, text)?;
                (format!("-f {text:?}"), tools.render(&[&file], &[]))
            }
        };
        let Err(e) = result else {
            anyhow::bail!("{what}: helm template accepts it");
        };
        let e = e.to_string();
        ensure!(
            e.contains("values don't meet the specifications of the schema"),
            "{what}: not refused by values.schema.json: {e}"
        );
        ensure!(
            names_path(&e, path),
            "{what}: the message does not name {path:?}: {e}"
        );
        ensure!(
            e.contains(says),
            "{what}: the message does not say {says:?}: {e}"
        );
    }

    // helm lint refuses what helm template refuses.
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "sidecar:\n  header: off\n")?;
    let e = tools
        .lint(&[&off], &[])
        .expect_err("lint accepts header: off")
        .to_string();
    ensure!(names_path(&e, "sidecar.header"), "{e}");

    // ... and the spellings the messages ask for are accepted.
    let quoted = dir.path().join("quoted.yaml");
    std::fs::write(
        &quoted,
        "sidecar:\n  header: \"off\"\n  http:\n    x_real_ip: false\n    \
         tlv_headers: {unique_id: x-request-id, ssl_cn: false}\n    \
         limits: {keep_alive_timeout: 1m 30s, header_read_timeout: 2.5s}\n\
         agent:\n  socketMode: \"0660\"\n  image: {tag: \"1.10\"}\n\
         commonLabels: {team: \"1\"}\n",
    )?;
    let docs = documents(&tools.render(&[&quoted], &[])?)?;
    let config = injector_config(&docs)?;
    ensure!(config.contains("header: \"off\""), "{config}");
    injector_accepts(&config)?.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The backquoted names a serde error lists after `expected` (`unknown variant `~`, expected
/// one of `a`, `b``).
fn expected_names(error: &str) -> BTreeSet<String> {
    let list = error.split("expected").nth(1).unwrap_or_default();
    let list = list.split(" at line").next().unwrap_or_default();
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The names the injector's parser accepts for the value set to `~` in `config` (a
/// configuration file), from its refusal of `~`.
fn injector_variants(config: &str) -> anyhow::Result<BTreeSet<String>> {
    let log = injector_accepts(config)?.expect_err("`~` is a variant");
    let names = expected_names(&log);
    ensure!(!names.is_empty(), "no variants in: {log}");
    Ok(names)
}

/// The keys the sidecar's parser accepts in its `http` section (`section` = "") or in a
/// mapping below it (`limits`, `tlv_headers`), from its refusal of an unknown one.
fn sidecar_http_keys(section: &str) -> anyhow::Result<BTreeSet<String>> {
    let inner = if section.is_empty() {
        "{\"~\": 0}".to_owned()
    } else {
        format!("{{{section}: {{\"~\": 0}}}}")
    };
    let e = format!("{:#}", sample(&inner).expect_err("an unknown key"));
    let names = expected_names(&e);
    ensure!(!names.is_empty(), "no keys in: {e}");
    Ok(names)
}

/// A schema node with its `$ref` (`#/definitions/...`) followed.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/definitions/"))
    {
        Some(name) => resolve(schema, &schema["definitions"][name]),
        None => node,
    }
}

/// Keys of the schema that values.yaml does not set: Helm's `global` (for a parent chart), and
/// `sidecar.http.tls`, let through for the templates' clearer refusal.
const SCHEMA_ONLY: [&str; 2] = ["global", "sidecar.http.tls"];

/// Mappings of values.yaml whose keys are the user's (Kubernetes objects, labels): the schema
/// gives their type, not their keys.
const FREE_MAPS: [&str; 7] = [
    "agent.resources",
    "agent.updateStrategy",
    "agent.nodeSelector",
    "injector.resources",
    "injector.nodeSelector",
    "sidecar.resources",
    "metrics.grafanaDashboard.labels",
];

/// Compares the value at `path` of values.yaml with its schema `node`, recording what differs.
fn compare(schema: &Value, node: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    static ABSENT: Value = Value::Null;
    let name = if path.is_empty() { "(root)" } else { path };
    let node = resolve(schema, node);
    if node.is_null() {
        problems.push(format!("{name}: in values.yaml, not in values.schema.json"));
        return;
    }
    if node.get("type").is_none() && node.get("enum").is_none() {
        problems.push(format!("{name}: values.schema.json gives it no type"));
    }
    let Some(map) = value.as_object().filter(|m| !m.is_empty()) else {
        return;
    };
    let Some(properties) = node["properties"].as_object() else {
        if !FREE_MAPS.contains(&path) {
            problems.push(format!("{name}: values.schema.json does not list its keys"));
        }
        return;
    };
    if node["additionalProperties"] != false {
        problems.push(format!(
            "{name}: values.schema.json lets unknown keys (typos) through: additionalProperties"
        ));
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    for (key, value) in map {
        let child = properties.get(key).unwrap_or(&ABSENT);
        compare(schema, child, value, &join(key), problems);
    }
    for key in properties.keys().filter(|k| !map.contains_key(*k)) {
        if !SCHEMA_ONLY.contains(&join(key).as_str()) {
            problems.push(format!(
                "{}: in values.schema.json, not in values.yaml",
                join(key)
            ));
        }
    }
}

pub(crate) fn the_schema_covers_every_value() -> anyhow::Result<()> {
    let schema = schema()?;
    ensure!(schema["$schema"] == "http://json-schema.org/draft-07/schema#");
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml"))?)?;
    let mut problems = Vec::new();
    compare(&schema, &schema, &values, "", &mut problems);
    ensure!(
        problems.is_empty(),
        "values.yaml and values.schema.json differ:\n{}",
        problems.join("\n")
    );

    // The schema's keys below `sidecar.http` are the sidecar's own.
    let node = |path: &str| {
        path.split('.')
            .fold(&schema, |n, key| &resolve(&schema, n)["properties"][key])
    };
    for (path, section) in [
        ("sidecar.http", ""),
        ("sidecar.http.limits", "limits"),
        ("sidecar.http.tlv_headers", "tlv_headers"),
    ] {
        let ours: BTreeSet<String> = resolve(&schema, node(path))["properties"]
            .as_object()
            .context(path)?
            .keys()
            .cloned()
            .collect();
        ensure!(ours == sidecar_http_keys(section)?, "{path}: {ours:?}");
    }
    // ... with the sidecar's bounds.
    use trueip_sidecar_config::HttpLimits;
    let bounds = |path: &str| {
        let n = resolve(&schema, node(path));
        (n["minimum"].as_u64(), n["maximum"].as_u64())
    };
    let head = bounds("sidecar.http.limits.max_request_head");
    ensure!(
        head == (
            Some(HttpLimits::MIN_REQUEST_HEAD as u64),
            Some(HttpLimits::MAX_REQUEST_HEAD as u64)
        ),
        "{head:?}"
    );
    for window in ["h2_stream_window", "h2_connection_window"] {
        let b = bounds(&format!("sidecar.http.limits.{window}"));
        ensure!(
            b == (
                Some(HttpLimits::MIN_H2_WINDOW.into()),
                Some(i32::MAX as u64)
            ),
            "{window}: {b:?}"
        );
    }

    // The enums are the parsers' names.
    let enum_of = |path: &str| -> anyhow::Result<BTreeSet<String>> {
        Ok(resolve(&schema, node(path))["enum"]
            .as_array()
            .with_context(|| format!("{path} has no enum"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    };
    let modes = injector_variants("sidecar: {image: x}\ndefaults: {mode: \"~\"}\n")?;
    ensure!(enum_of("sidecar.mode")? == modes, "sidecar.mode: {modes:?}");
    let allowed = resolve(&schema, node("injector.allowedModes"));
    ensure!(
        resolve(&schema, &allowed["items"])["enum"]
            == resolve(&schema, node("sidecar.mode"))["enum"]
    );
    for (path, config) in [
        (
            "sidecar.header",
            "sidecar: {image: x}\ndefaults: {header: \"~\"}\n",
        ),
        (
            "sidecar.logFormat",
            "sidecar: {image: x, logFormat: \"~\"}\n",
        ),
        (
            "sidecar.image.pullPolicy",
            "sidecar: {image: x, imagePullPolicy: \"~\"}\n",
        ),
    ] {
        let names = injector_variants(config)?;
        ensure!(
            enum_of(path)? == names,
            "{path}: the injector accepts {names:?}"
        );
    }
    let e = format!("{:#}", sample("{client_headers: \"~\"}").expect_err("`~`"));
    ensure!(
        enum_of("sidecar.http.client_headers")? == expected_names(&e),
        "{e}"
    );
    Ok(())
}

/// `--check-config` on the injector configuration a render with `flags` gives: its log, or an
/// error with the log when the injector refuses it.
fn check_config(tools: &Tools, flags: &[&str]) -> anyhow::Result<Result<String, String>> {
    let docs = documents(&tools.render(&[], flags)?)?;
    injector_accepts(&injector_config(&docs)?)
}

/// `--check-config` on an injector configuration file's text: its log, or an error with the log
/// when the injector refuses it.
fn injector_accepts(text: &str) -> anyhow::Result<Result<String, String>> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, text)?;
    let out = Command::new(INJECTOR)
        .args(["--check-config", "--log-format", "text", "--config"])
        .arg(&config)
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok(if out.status.success() {
        Ok(log)
    } else {
        Err(log)
    })
}

pub(crate) fn bad_sidecar_http_values_stop_the_injector_at_start() -> anyhow::Result<()> {
    let tools = Tools::require()?;
    // The injector refuses them when it starts, with the chart's key and the sidecar's reason,
    // instead of refusing every http pod at admission: the values the schema cannot judge, and
    // those it refuses, should they get past it (`--skip-schema-validation`).
    const PAST_THE_SCHEMA: &str = "--skip-schema-validation";
    for (flag, expected) in [
        (
            "--set=sidecar.http.limits.max_request_head=10",
            "sidecar.http.limits.max_request_head: 10 is outside 8192..=1048576",
        ),
        (
            "--set=sidecar.http.limits.max_head=65536",
            "sidecar.http.limits: unknown field `max_head`",
        ),
        (
            "--set=sidecar.http.colour=blue",
            "sidecar.http: unknown field `colour`",
        ),
        (
            "--set=sidecar.http.x_forwarded_for=not a header",
            "sidecar.http.x_forwarded_for: `not a header` is not a valid header name",
        ),
        (
            "--set=sidecar.http.limits.keep_alive_timeout=0s",
            "sidecar.http.limits.keep_alive_timeout: must be longer than 0s",
        ),
        (
            "--set=sidecar.http.client_headers=keep",
            "sidecar.http.client_headers: unknown variant `keep`",
        ),
        (
            "--set=sidecar.admin.headerTimeout=soon",
            "sidecar.admin.headerTimeout: `soon` is not a duration",
        ),
        (
            "--set=sidecar.admin.maxConnections=0",
            "sidecar.admin.maxConnections: invalid value",
        ),
    ] {
        match check_config(&tools, &[flag, PAST_THE_SCHEMA])? {
            Ok(log) => anyhow::bail!("{flag}: the injector accepts it:\n{log}"),
            Err(log) => ensure!(
                log.contains("invalid injector configuration") && log.contains(expected),
                "{flag}: expected {expected:?} in:\n{log}"
            ),
        }
    }
    // `null` gives a key back to the sidecar's default.
    check_config(&tools, &["--set=sidecar.http.limits.max_headers=null"])?
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

pub(crate) fn sidecar_http_values_are_the_sidecars_defaults() -> anyhow::Result<()> {
    use trueip_sidecar_config::{AdminConfig, HttpConfig};

    let tools = Tools::require()?;
    let docs = documents(&tools.render(&[], &[])?)?;
    let config: Value = serde_norway::from_str(&injector_config(&docs)?)?;
    let sidecar = &config["sidecar"];
    let http = sidecar["http"].as_object().context("sidecar.http")?;

    // Every key the sidecar has is written out (but `tls`, which the chart cannot set): the
    // sidecar names them all when it refuses an unknown one.
    let keys_of = |section: &str| -> anyhow::Result<BTreeSet<String>> {
        let mut keys = sidecar_http_keys(section)?;
        keys.remove("tls");
        Ok(keys)
    };
    let written: BTreeSet<String> = http.keys().cloned().collect();
    ensure!(written == keys_of("")?, "sidecar.http: {written:?}");
    let limits = http["limits"].as_object().context("sidecar.http.limits")?;
    let written: BTreeSet<String> = limits.keys().cloned().collect();
    ensure!(
        written == keys_of("limits")?,
        "sidecar.http.limits: {written:?}"
    );

    // ... with the sidecar's defaults.
    let parsed = sample(&serde_json::to_string(http)?)?;
    let ours = &parsed.listeners[0].http;
    let theirs = HttpConfig::default();
    ensure!(ours.limits == theirs.limits, "{:?}", ours.limits);
    ensure!(ours.client_headers == theirs.client_headers);
    ensure!(ours.x_forwarded_for == theirs.x_forwarded_for);
    ensure!(ours.x_real_ip == theirs.x_real_ip);
    ensure!(ours.forwarded == theirs.forwarded);
    ensure!(ours.x_forwarded_proto == theirs.x_forwarded_proto);
    ensure!(ours.tlv_headers.names().count() == 0);
    ensure!(ours.strip_headers == theirs.strip_headers);
    ensure!(ours.allow_connect == theirs.allow_connect);
    ensure!(!parsed.listeners[0].allow_loopback_clients);
    ensure!(sidecar["allowLoopbackClients"] == false);

    let admin = AdminConfig::default();
    let timeout = sidecar["admin"]["headerTimeout"]
        .as_str()
        .context("sidecar.admin.headerTimeout")?;
    ensure!(humantime::parse_duration(timeout)? == admin.header_timeout);
    ensure!(sidecar["admin"]["maxConnections"] == admin.max_connections.get());
    Ok(())
}

/// The sidecar's reading of one `http` listener with `http` (YAML) as its section.
fn sample(http: &str) -> anyhow::Result<trueip_sidecar_config::Config> {
    Ok(trueip_sidecar_config::Config::from_yaml(&format!(
        "listeners:\n  - listen: 0.0.0.0:8080\n    upstream: 127.0.0.1:80\n    mode: http\n    \
         trusted_sources: [0.0.0.0/0]\n    http: {http}\n"
    ))?)
}

/// The keys of values.yaml with a helm-docs `# --` comment, in dotted form.
fn documented_keys(values: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    for line in values.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('#') {
            comment.push(trimmed);
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            comment.clear();
            continue;
        }
        let key = trimmed.split(':').next().context("a key")?.to_owned();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key.as_str()])
            .collect();
        if comment.first().is_some_and(|c| c.starts_with("# --")) {
            keys.push(path.join("."));
        }
        comment.clear();
        stack.push((indent, key));
    }
    Ok(keys)
}

/// Dotted paths of every leaf of a YAML mapping (an empty mapping or a list is a leaf).
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

pub(crate) fn every_value_is_documented() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    let documented = documented_keys(&text)?;
    let covered = |path: &str| {
        documented
            .iter()
            .any(|d| path == d || path.starts_with(&format!("{d}.")))
    };
    let values: Value = serde_norway::from_str(&text)?;
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    let undocumented: Vec<_> = all.iter().filter(|p| !covered(p)).collect();
    assert!(
        undocumented.is_empty(),
        "values without a `# --` comment: {undocumented:?}"
    );

    // README.md (from README.md.gotmpl) has a row per documented value.
    assert!(chart_dir().join("README.md.gotmpl").exists());
    let readme = std::fs::read_to_string(chart_dir().join("README.md"))?;
    let missing: Vec<_> = documented
        .iter()
        .filter(|k| !readme.contains(&format!("| {k} |")))
        .collect();
    assert!(missing.is_empty(), "README.md lacks rows for {missing:?}");
    let rows = readme
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && documented
                    .iter()
                    .any(|k| l.starts_with(&format!("| {k} |")))
        })
        .count();
    assert_eq!(
        rows,
        documented.len(),
        "README.md has stale or duplicate rows"
    );

    // The example values files only set values the chart has.
    for file in example_values()? {
        let overlay: Value = serde_norway::from_str(&std::fs::read_to_string(&file)?)?;
        let mut set = Vec::new();
        leaves(&overlay, "", &mut set);
        let unknown: Vec<_> = set.iter().filter(|p| !covered(p)).collect();
        assert!(
            unknown.is_empty(),
            "{} sets values the chart does not have: {unknown:?}",
            file.display()
        );
    }
    Ok(())
}
