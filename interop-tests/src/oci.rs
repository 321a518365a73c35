//! The OCI archives `make images` writes (`target/images/<name>.tar`), unpacked the way a
//! container runtime does it: `index.json` → manifest → config and layers, the layers extracted
//! in order into one root. What the images test checks and what the kubelet stand-in
//! ([`crate::kubelet`]) runs containers from.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use trueip_test_kit::run;

/// Unpacking one small image takes well under this.
const TAR_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `make images` writes the archives.
pub fn archive_dir() -> PathBuf {
    workspace_root().join("target/images")
}

/// The repository's root (this crate sits right below it).
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_owned()
}

/// An unpacked image: its root file system and what its config says about running it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference the archive names (`org.opencontainers.image.ref.name`).
    pub reference: String,
    /// The config's `config` object (`Entrypoint`, `Cmd`, `User`, `Env`, `Labels`, …).
    pub config: Value,
    /// The layers, extracted in order.
    pub rootfs: PathBuf,
}

impl Image {
    /// Unpacks `archive` into `dir` (`dir/oci` holds the layout, `dir/rootfs` the root).
    pub fn unpack(archive: &Path, dir: &Path) -> Result<Self> {
        let layout = dir.join("oci");
        let rootfs = dir.join("rootfs");
        for d in [&layout, &rootfs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        untar(archive, &layout)?;
        let index = json(&layout.join("index.json"))?;
        let entry = &index["manifests"][0];
        let reference = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let manifest = json(&blob(&layout, entry["digest"].as_str().context("digest")?)?)?;
        let config = json(&blob(
            &layout,
            manifest["config"]["digest"]
                .as_str()
                .context("config digest")?,
        )?)?;
        for layer in manifest["layers"].as_array().context("layers")? {
            let digest = layer["digest"].as_str().context("layer digest")?;
            untar(&blob(&layout, digest)?, &rootfs)?;
        }
        Ok(Self {
            reference,
            config: config["config"].clone(),
            rootfs,
        })
    }

    /// The config's `Entrypoint`, or nothing.
    pub fn entrypoint(&self) -> Vec<String> {
        strings(&self.config["Entrypoint"])
    }

    /// The config's `Cmd`, or nothing.
    pub fn cmd(&self) -> Vec<String> {
        strings(&self.config["Cmd"])
    }

    /// The config's `User` (`uid:gid`, `uid`, or empty for root).
    pub fn user(&self) -> &str {
        self.config["User"].as_str().unwrap_or_default()
    }
}

/// A blob of the OCI layout at `root`, by digest (`sha256:<hex>`).
fn blob(root: &Path, digest: &str) -> Result<PathBuf> {
    let (algorithm, hex) = digest
        .split_once(':')
        .with_context(|| format!("digest {digest}"))?;
    ensure!(
        !hex.contains('/') && !algorithm.contains('/'),
        "digest {digest}"
    );
    Ok(root.join("blobs").join(algorithm).join(hex))
}

fn json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn untar(archive: &Path, into: &Path) -> Result<()> {
    let out = run::output(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into),
        TAR_TIMEOUT,
    )?;
    ensure!(
        out.status.success(),
        "tar -xf {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}
