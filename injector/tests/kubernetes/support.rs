//! Running helm and kubernetes-validate, and reading what they render.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

/// The Kubernetes version the chart is rendered and validated for.
pub(crate) const KUBE_VERSION: &str = "1.33.0";
/// Release name and namespace of every render: the resources are then named `trueip-*`.
pub(crate) const RELEASE: &str = "trueip";
/// The namespace the chart is installed in.
pub(crate) const NAMESPACE: &str = "trueip";
/// The webhook binary.
pub(crate) const INJECTOR: &str = env!("CARGO_BIN_EXE_trueip-injector");

/// The repository's root.
pub(crate) fn workspace_root() -> PathBuf {
    let injector = Path::new(env!("CARGO_MANIFEST_DIR"));
    injector
        .ancestors()
        .nth(1)
        .map_or_else(|| injector.join(".."), Path::to_path_buf)
}

/// The chart under test.
pub(crate) fn chart_dir() -> PathBuf {
    workspace_root().join("charts/trueip")
}

/// Why a test cannot run here (a tool missing): the harness reports it as ignored.
pub(crate) use trueip_test_kit::Skip;

/// helm and kubernetes-validate, as `scripts/setup.sh` installs them.
#[derive(Debug)]
pub(crate) struct Tools {
    helm: PathBuf,
    validate: PathBuf,
}

impl Tools {
    /// The tools, or the [`Skip`] saying which is missing (setup not run): `Tools::require()?`
    /// as a test's first line, which the harness then reports as ignored, not passed.
    pub(crate) fn require() -> Result<Self, Skip> {
        let tools = workspace_root().join(".tools");
        let helm = tools.join("bin/helm");
        let validate = tools.join("venv/bin/kubernetes-validate");
        for tool in [&helm, &validate] {
            if !tool.exists() {
                return Err(Skip(format!(
                    "{} is missing (run `bash scripts/setup.sh`)",
                    tool.display()
                )));
            }
        }
        Ok(Self { helm, validate })
    }

    /// `helm lint --strict` with values files and `--set` / `--set-string` flags (each given
    /// whole, as for [`Tools::render`]). Lint validates the values against values.schema.json
    /// too.
    pub(crate) fn lint(&self, values: &[&Path], flags: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.helm);
        cmd.arg("lint").arg("--strict").arg(chart_dir());
        for file in values {
            cmd.arg("-f").arg(file);
        }
        cmd.args(flags);
        let out = cmd.output().context("running helm lint")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "helm lint --strict {values:?} {flags:?}:\n{text}"
        );
        ensure!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "helm lint {values:?} {flags:?}:\n{text}"
        );
        Ok(())
    }

    /// `helm template` with values files and `--set` / `--set-string` flags (each given whole,
    /// e.g. `--set=agent.enabled=false`).
    pub(crate) fn render(&self, values: &[&Path], flags: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.helm);
        cmd.args(["template", RELEASE]).arg(chart_dir()).args([
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
        ]);
        for file in values {
            cmd.arg("-f").arg(file);
        }
        cmd.args(flags);
        let out = cmd.output().context("running helm template")?;
        ensure!(
            out.status.success(),
            "helm template {values:?} {flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).context("helm's output is not UTF-8")
    }

    /// `kubernetes-validate --strict` on `yaml` (unknown fields are errors). Objects of
    /// cert-manager's and the Prometheus Operator's CRDs have no schema there; they are the only
    /// warnings accepted (the chart tests check those objects' fields themselves).
    pub(crate) fn validate(&self, yaml: &str, what: &str) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // Named after `what` for kubernetes-validate's messages, within a file name's 255 bytes
        // (`what` holds the render's flags); errors below name `what` whole.
        let name: String = what.replace(['/', ' '], "_").chars().take(120).collect();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        let out = Command::new(&self.validate)
            .args(["--strict", "--quiet", "-k", KUBE_VERSION])
            .arg(&file)
            .output()
            .context("running kubernetes-validate")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "kubernetes-validate rejects {what}:\n{text}"
        );
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let crd = line.starts_with("WARN ")
                && line.contains("Couldn't find schema for kind")
                && (line.contains("api version cert-manager.io/v1")
                    || line.contains("api version monitoring.coreos.com/v1"));
            ensure!(crd, "kubernetes-validate on {what}: {line}");
        }
        Ok(())
    }
}

/// The rendered objects, and one of them by kind and name.
pub(crate) use trueip_test_kit::kube::{documents, find};

/// The example values files shipped with the chart (`values-*.yaml`).
pub(crate) fn example_values() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("values-") && n.ends_with(".yaml"))
    });
    files.sort();
    ensure!(!files.is_empty(), "no values-*.yaml in the chart");
    Ok(files)
}

/// The injector's configuration file from the rendered ConfigMap.
pub(crate) fn injector_config(docs: &[Value]) -> anyhow::Result<String> {
    let map = find(docs, "ConfigMap", Some("trueip-injector"))?;
    map["data"]["config.yaml"]
        .as_str()
        .map(str::to_owned)
        .context("the injector ConfigMap has no config.yaml")
}
