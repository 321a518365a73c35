//! What the interop tests need from the machine, where the trueip binaries are, and how a test
//! that cannot run says so (`SKIPPED: <reason>` on stderr, never a silent pass).

use std::{
    env,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::geteuid,
};

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
    /// The `trueip-agent` binary, built, and a mounted bpffs.
    Agent,
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
                .or_else(|| {
                    (!statfs(BPFFS).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC))
                        .then(|| format!("no bpffs mounted at {BPFFS}"))
                }),
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

/// Whether the calling test can run; if not, prints `SKIPPED: <reason>` and the test's name
/// to stderr, past the test harness's output capture, so the skip is always visible.
pub fn runnable(needs: &[Need]) -> bool {
    let Some(reason) = missing(needs) else {
        return true;
    };
    let thread = std::thread::current();
    note(&format!(
        "SKIPPED: {reason} ({})",
        thread.name().unwrap_or("test")
    ));
    false
}

/// Writes a line straight to stderr. The test harness captures `eprintln!`, not this, so
/// skips and kept-log notes are seen even for passing tests.
pub fn note(line: &str) {
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
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

/// A binary of this crate (`trueip-echo-app`): cargo builds it into the same profile directory
/// as the test or demo that runs, whatever `$TRUEIP_BIN_DIR` says.
pub fn own_binary(name: &str) -> Result<PathBuf> {
    let bin = profile_dir()
        .context("locating the running executable")?
        .join(name);
    if !bin.is_file() {
        bail!(
            "{} is not built; build it with `cargo build -p trueip-interop-tests`",
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
