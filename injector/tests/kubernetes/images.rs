//! The Dockerfiles (no daemon here to build them): each builds the binary the chart runs from
//! the image it names, with the workspace's toolchain, into a minimal runtime image, as the user
//! the chart expects. The release build of those binaries is `make build`.

use anyhow::Context as _;
use serde_json::Value;

use crate::support::{chart_dir, workspace_root};

/// Dockerfile, binary (and package of the same name), the chart value naming its image, and
/// whether it runs as the unprivileged user 65532.
const IMAGES: [(&str, &str, &str, bool); 3] = [
    ("agent/Dockerfile", "trueip-agent", "agent", false),
    ("sidecar/Dockerfile", "trueip-sidecar", "sidecar", true),
    ("injector/Dockerfile", "trueip-injector", "injector", true),
];

pub(crate) fn dockerfiles_build_what_the_chart_runs() -> anyhow::Result<()> {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .context("no workspace rust-version")?
        .trim_matches('"');
    let values: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml"))?)?;
    for (path, binary, component, nonroot) in IMAGES {
        let text = std::fs::read_to_string(root.join(path))?;
        let has = |needle: &str| {
            assert!(text.contains(needle), "{path} lacks `{needle}`");
        };
        has(&format!("FROM rust:{rust_version}-bookworm AS builder"));
        has(&format!(
            "cargo build --release --locked -p {binary} --bin {binary}"
        ));
        has(&format!(
            "cp target/release/{binary} /usr/local/bin/{binary}"
        ));
        has(&format!(
            "COPY --from=builder /usr/local/bin/{binary} /usr/local/bin/{binary}"
        ));
        has(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]"));
        let runtime = text
            .lines()
            .rfind(|l| l.starts_with("FROM "))
            .context("no FROM")?;
        assert!(
            runtime.starts_with("FROM gcr.io/distroless/cc-debian12")
                || runtime.starts_with("FROM debian:bookworm-slim"),
            "{path}: runtime image {runtime}"
        );
        let repository = values[component]["image"]["repository"]
            .as_str()
            .context("image repository")?;
        assert!(
            repository.ends_with(&format!("/{binary}")),
            "{component}.image.repository {repository} is not the {binary} image"
        );
        if nonroot {
            has("USER 65532:65532");
        }
    }
    // The chart runs the sidecar and the webhook as the images' user.
    assert_eq!(values["sidecar"]["runAsUser"], 65532);
    let deployment =
        std::fs::read_to_string(chart_dir().join("templates/injector-deployment.yaml"))?;
    assert!(deployment.contains("runAsUser: 65532"));
    Ok(())
}
