//! Scratch cgroups v2 standing in for a pod's cgroups: the eBPF restore mode attaches its
//! programs there, so the sidecar and the app must run inside them.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use crate::{
    names::{PREFIX, is_stale, unique_suffix},
    run::{self, wait_for},
};

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts (Kubernetes nodes),
/// `/sys/fs/cgroup/unified` on hybrid ones (this CI machine).
const MOUNT_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// What [`Cgroup::create_kubepods`] puts before the kit's name.
const KUBEPODS: &str = "kubepods-";

/// How long the processes left in a cgroup get to die before it is removed.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup v2 this crate created; dropping it kills its processes and removes it.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup v2 mount point, detected by file system type.
    pub fn mount_point() -> Result<PathBuf> {
        MOUNT_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| statfs(*p).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC))
            .map(Path::to_path_buf)
            .with_context(|| format!("no cgroup v2 mounted at {}", MOUNT_CANDIDATES.join(" or ")))
    }

    /// Creates a fresh cgroup below the cgroup v2 root.
    pub fn create() -> Result<Self> {
        Self::create_top("")
    }

    /// Creates a fresh top-level `kubepods-tip-<pid>-<n>` cgroup: where a kubelet puts its pods,
    /// and the only place below which the agent's default `--pod-cgroup auto` serves callers.
    pub fn create_kubepods() -> Result<Self> {
        Self::create_top(KUBEPODS)
    }

    /// A fresh `<prefix>tip-<pid>-<n>` below the root, after removing dead runs' leftovers.
    fn create_top(prefix: &str) -> Result<Self> {
        let root = Self::mount_point()?;
        remove_stale(&root);
        Self::create_in(&root, &format!("{prefix}{PREFIX}{}", unique_suffix()))
    }

    /// Creates the cgroup `name` below `parent`, a cgroup this crate created (a kubelet nests
    /// QoS classes, pods and containers so). Fails if it exists: nothing of anybody else's is
    /// taken over or removed.
    pub fn create_in(parent: &Path, name: &str) -> Result<Self> {
        let path = parent.join(name);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// Its directory in the cgroup file system.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", procs.display()))
    }

    /// Kills what runs in it, waits until it is empty and removes it, before it is dropped (a
    /// test that checks what the agent does once a pod is gone); its descendants must be gone.
    pub fn remove(&self) -> Result<()> {
        if self.path.exists() {
            remove(&self.path)?;
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            run::note(&format!("{e:#}"));
        }
    }
}

/// Kills what runs in the cgroup, waits until it is empty, removes it.
fn remove(path: &Path) -> Result<()> {
    let procs = path.join("cgroup.procs");
    wait_for(
        &format!("{} to empty", path.display()),
        EMPTY_TIMEOUT,
        || {
            let pids = fs::read_to_string(&procs)
                .with_context(|| format!("reading {}", procs.display()))?;
            if pids.trim().is_empty() {
                return Ok(Some(()));
            }
            // `cgroup.kill` (Linux 5.14) SIGKILLs every member, including ones forked meanwhile.
            fs::write(path.join("cgroup.kill"), "1")
                .with_context(|| format!("killing the processes of {}", path.display()))?;
            Ok(None)
        },
    )?;
    fs::remove_dir(path).with_context(|| format!("removing cgroup {}", path.display()))
}

/// Removes `path` and every cgroup below it, deepest first.
fn remove_tree(path: &Path) -> Result<()> {
    for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    remove(path)
}

/// Removes cgroups left behind by runs that were killed before they could clean up.
fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(name.strip_prefix(KUBEPODS).unwrap_or(&name)) {
            // Best effort: a stale cgroup that cannot go yet is retried by the next run. Ours,
            // by its name, with what this crate nested below it.
            let _ = remove_tree(&entry.path());
        }
    }
}
