//! `make images` smoke test: each OCI archive under `target/images/` is unpacked the way a
//! runtime would (index → manifest → config and layers), its root holds nothing but the static
//! binary, its config names the entrypoint, user and OCI labels, its reference is the chart's
//! default image, and the entrypoint runs from the unpacked root (`chroot` as root). Containers
//! themselves cannot run on this machine (crun refuses its hybrid cgroup layout), so this is as
//! close as it gets to `docker run <image> --version`.

use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use trueip_interop_tests::oci::{self, Image};
use trueip_test_kit::prereq::skip;

/// Each image, and the user it must run as.
const IMAGES: [(&str, &str); 3] = [
    ("trueip-sidecar", "65532:65532"),
    ("trueip-injector", "65532:65532"),
    ("trueip-agent", "0:0"),
];

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The chart's default reference for `bin`: `<repository>:<appVersion>`.
fn chart_reference(bin: &str) -> Result<String> {
    let chart = oci::workspace_root().join("charts/trueip");
    let meta: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart.join("Chart.yaml"))?)?;
    let values: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart.join("values.yaml"))?)?;
    let component = bin.trim_start_matches("trueip-");
    let image = &values[component]["image"];
    let repository = image["repository"]
        .as_str()
        .with_context(|| format!("{component}.image.repository"))?;
    let tag = match image["tag"].as_str() {
        Some(tag) if !tag.is_empty() => tag.to_owned(),
        _ => meta["appVersion"]
            .as_str()
            .context("Chart.yaml appVersion")?
            .to_owned(),
    };
    Ok(format!("{repository}:{tag}"))
}

pub(crate) fn every_image_runs_its_entrypoint_from_its_own_root() -> Result<()> {
    let dir = oci::archive_dir();
    for (bin, _) in IMAGES {
        if !dir.join(format!("{bin}.tar")).exists() {
            return Err(skip(format!(
                "{}/{bin}.tar is missing: `make images` builds it (make test does)",
                dir.display()
            )));
        }
    }
    let root_user = nix::unistd::Uid::effective().is_root();
    for (bin, user) in IMAGES {
        let work = tempfile::tempdir()?;
        let image = Image::unpack(&dir.join(format!("{bin}.tar")), work.path())?;
        let reference = image.reference.as_str();
        let rootfs = image.rootfs.as_path();
        let wanted = chart_reference(bin)?;
        ensure!(
            reference == wanted || wanted.ends_with(&format!(":{reference}")),
            "{bin}: the archive is {reference:?}, the chart's default image {wanted}"
        );
        let c = &image.config;
        let entrypoint = format!("/usr/local/bin/{bin}");
        ensure!(
            c["Entrypoint"] == serde_json::json!([entrypoint]),
            "{bin}: entrypoint {}",
            c["Entrypoint"]
        );
        ensure!(c["User"] == user, "{bin}: user {} (want {user})", c["User"]);
        let version = chart_reference(bin)?
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        for (label, value) in [
            ("org.opencontainers.image.title", bin),
            ("org.opencontainers.image.version", version.as_str()),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
        ] {
            ensure!(
                c["Labels"][label] == value,
                "{bin}: label {label} = {} (want {value})",
                c["Labels"][label]
            );
        }
        let files = run(Command::new("find").arg(rootfs).args(["-type", "f"]))?;
        let files: Vec<&str> = files.lines().collect();
        ensure!(
            files == [rootfs.join(&entrypoint[1..]).display().to_string()],
            "{bin}: the image holds more than its binary: {files:?}"
        );
        // From the unpacked root alone: a binary that needs a loader or a library fails here.
        let mut command = if root_user {
            let mut c = Command::new("chroot");
            c.arg(rootfs).arg(&entrypoint);
            c
        } else {
            Command::new(rootfs.join(&entrypoint[1..]))
        };
        let printed = run(command.arg("--version"))?;
        ensure!(
            printed.trim() == format!("{bin} {version}"),
            "{bin} --version printed {printed:?}"
        );
        let mut command = if root_user {
            let mut c = Command::new("chroot");
            c.arg(rootfs).arg(&entrypoint);
            c
        } else {
            Command::new(rootfs.join(&entrypoint[1..]))
        };
        let help = run(command.arg("--help"))?;
        if !help.contains("Usage") {
            bail!("{bin} --help printed no usage: {help}");
        }
    }
    Ok(())
}
