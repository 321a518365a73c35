//! What a test needs from the machine, where the trueip binaries are, and how a test that
//! cannot run says so: it returns a [`Skip`] error ([`require`], [`skip`]), which the
//! [`harness`](crate::harness) reports as ignored with the reason, never as passed.

use std::{
    env, fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::geteuid,
};

use crate::cgroup::Cgroup;

/// Overrides where the trueip binaries are looked up (`make` sets it).
pub const BIN_DIR_ENV: &str = "TRUEIP_BIN_DIR";

/// Where the agent pins its objects; must be a mounted bpffs.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Directories searched for system programs besides `PATH` (root's `PATH` may lack them).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Something a test needs besides root and `ip`, which every test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `haproxy` (Debian package haproxy).
    Haproxy,
    /// `nginx` (Debian package nginx).
    Nginx,
    /// `curl`.
    Curl,
    /// The `trueip-sidecar` binary, built.
    Sidecar,
    /// The `trueip-agent` binary, built, and what [`Need::Ebpf`] needs.
    Agent,
    /// A mounted bpffs (where an agent pins) and a mounted cgroup v2 (where its programs
    /// attach): what a test needs that runs an agent binary it names itself.
    Ebpf,
}

impl Need {
    /// Why this need is not met here, if it is not.
    fn unmet(self) -> Option<String> {
        let package = |program: &str| {
            find_program(program)
                .is_none()
                .then(|| format!("`{program}` not found (run scripts/setup.sh)"))
        };
        match self {
            Self::Haproxy => package("haproxy"),
            Self::Nginx => package("nginx"),
            Self::Curl => package("curl"),
            Self::Sidecar => trueip_binary("trueip-sidecar")
                .err()
                .map(|e| format!("{e:#}")),
            Self::Agent => trueip_binary("trueip-agent")
                .err()
                .map(|e| format!("{e:#}"))
                .or_else(|| Self::Ebpf.unmet()),
            Self::Ebpf => (!statfs(BPFFS).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC))
                .then(|| format!("no bpffs mounted at {BPFFS} (mount -t bpf bpf {BPFFS})"))
                .or_else(|| Cgroup::mount_point().err().map(|e| format!("{e:#}"))),
        }
    }
}

/// Why a test needing `needs` cannot run on this machine, or `None` when it can.
pub fn missing(needs: &[Need]) -> Option<String> {
    if !geteuid().is_root() {
        return Some("needs root (network namespaces, cgroups, eBPF)".into());
    }
    if find_program("ip").is_none() {
        return Some("`ip` (iproute2) not found".into());
    }
    needs.iter().find_map(|need| need.unmet())
}

/// Why a test cannot run on this machine (no root, a missing tool or kernel feature, a tool too
/// old). Returned as the test's error, it is not a failure: the harness finds it with
/// `anyhow::Error::downcast_ref` (also under added context) and reports the test as ignored,
/// with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// `Ok` when a test needing `needs` can run here, else the [`Skip`] saying why:
/// `require(&[Need::Haproxy])?;` as a test's first line.
pub fn require(needs: &[Need]) -> Result<(), Skip> {
    missing(needs).map_or(Ok(()), |reason| Err(Skip(reason)))
}

/// A [`Skip`] for a prerequisite checked in the test itself (a tool's version, a module):
/// `return Err(skip(why));`.
pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    Skip(reason.into()).into()
}

/// A program on `PATH` or in the sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A trueip binary: from `$TRUEIP_BIN_DIR` when set; else next to the running executable (the
/// cargo profile that built this test or demo), then `<workspace>/target/release`, then
/// `<workspace>/target/debug`.
pub fn trueip_binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        let bin = Path::new(&dir).join(name);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!("{} not found (from ${BIN_DIR_ENV})", bin.display());
    }
    let candidates = candidate_dirs();
    if let Some(bin) = candidates
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    {
        return Ok(bin);
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    bail!(
        "{name} is not built (looked in {}); build it with `cargo build -p {name}`",
        looked.join(", ")
    )
}

/// A binary of the crate whose test or demo runs (`trueip-echo-app` of the interop tests): cargo
/// builds it into the same profile directory as the running executable, whatever
/// `$TRUEIP_BIN_DIR` says.
pub fn own_binary(name: &str) -> Result<PathBuf> {
    let bin = profile_dir()
        .context("locating the running executable")?
        .join(name);
    if !bin.is_file() {
        bail!(
            "{} is not built; build the bins of the test's crate (`cargo build --bins -p <crate>`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The cargo profile directory of the running executable.
fn profile_dir() -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    let dir = exe.parent()?;
    // Test binaries live in <profile>/deps, the others in <profile>.
    Some(
        if dir.ends_with("deps") {
            dir.parent()?
        } else {
            dir
        }
        .to_path_buf(),
    )
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = profile_dir().into_iter().collect();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = manifest.parent().unwrap_or(manifest).join("target");
    for profile in ["release", "debug"] {
        let dir = target.join(profile);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}
