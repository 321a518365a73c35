//! cgroup v2: finding the mount, a caller's cgroup, and the pod cgroup the programs attach to.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, fstatfs, statfs};

use crate::config::PodCgroupMode;

/// Where cgroup v2 is usually mounted: unified hierarchy (Kubernetes nodes, modern distros) first,
/// then the hybrid layout of older systemd setups.
const CANDIDATES: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// Why a cgroup could not be found or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// No cgroup2 filesystem where we looked.
    #[error("no cgroup v2 filesystem at {tried} (set --cgroup-root to its mount point)")]
    NoCgroup2 {
        /// The paths that were checked.
        tried: String,
    },
    /// The caller's `/proc/<pid>/cgroup` could not be read.
    #[error("reading {path}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The caller has no cgroup v2 membership line (`0::/path`).
    #[error("{path} has no cgroup v2 entry")]
    NoV2Entry {
        /// The file.
        path: PathBuf,
    },
    /// The caller's cgroup lies outside the agent's cgroup namespace.
    #[error(
        "the caller's cgroup {cgroup:?} is outside the agent's cgroup namespace \
         (run the agent in the host cgroup namespace)"
    )]
    OutsideNamespace {
        /// The path as the kernel showed it.
        cgroup: String,
    },
    /// The pod cgroup would be the root cgroup: attaching there would act on the whole node.
    #[error(
        "the caller's cgroup {cgroup:?} resolves to the root cgroup in --pod-cgroup {mode:?} \
         mode; refusing to attach node-wide"
    )]
    Root {
        /// The caller's cgroup.
        cgroup: String,
        /// The mode that was applied.
        mode: PodCgroupMode,
    },
    /// `auto` mode and the caller is not in a Kubernetes pod's cgroup (below `kubepods*` at the
    /// top of the hierarchy, where only the kubelet can create cgroups).
    #[error(
        "the caller's cgroup {cgroup:?} is not a Kubernetes pod's (kubepods…/<pod>/<container>): \
         --pod-cgroup auto serves pods only"
    )]
    NotAPod {
        /// The caller's cgroup.
        cgroup: String,
    },
    /// The pod cgroup's directory could not be opened (it went away, or the root is wrong).
    #[error("opening cgroup {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A pod's cgroup, opened: the directory fd is what programs attach to.
#[derive(Debug)]
pub(crate) struct PodCgroup {
    /// Absolute path of the cgroup directory.
    pub(crate) path: PathBuf,
    /// The cgroup id (the directory's inode number on cgroup2), stable while the cgroup lives and
    /// never reused for another cgroup during the same boot.
    pub(crate) id: u64,
    /// The open directory.
    pub(crate) dir: File,
}

/// Finds the cgroup v2 mount: `configured` if given (it must be cgroup2), else the first of the
/// usual places that is.
pub(crate) fn detect_root(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let candidates: Vec<PathBuf> = match configured {
        Some(path) => vec![path.to_owned()],
        None => CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    candidates
        .iter()
        .find(|path| {
            statfs(path.as_path()).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
        })
        .cloned()
        .ok_or_else(|| CgroupError::NoCgroup2 {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The cgroup v2 path of process `pid` as listed in `/proc/<pid>/cgroup` (e.g. `/kubepods/…`).
pub(crate) fn of_pid(pid: i32) -> Result<String, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Proc {
        path: path.clone(),
        source,
    })?;
    parse_v2_line(&text).ok_or(CgroupError::NoV2Entry { path })
}

/// The cgroup v2 line of a `/proc/<pid>/cgroup` file: `0::<path>`.
fn parse_v2_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The pod cgroup (a path relative to the cgroup2 root, starting with `/`) for a caller in
/// `cgroup`, by `mode`.
pub(crate) fn pod_cgroup_of(cgroup: &str, mode: PodCgroupMode) -> Result<String, CgroupError> {
    if cgroup.split('/').any(|c| c == "..") || !cgroup.starts_with('/') {
        return Err(CgroupError::OutsideNamespace {
            cgroup: cgroup.to_owned(),
        });
    }
    let trimmed = cgroup.trim_end_matches('/');
    let parent = match mode {
        PodCgroupMode::Own => false,
        PodCgroupMode::Parent => true,
        // The top component: a `kubepods` found deeper can be a cgroup an unprivileged user
        // made in a subtree systemd delegated to it (user@<uid>.service).
        PodCgroupMode::Auto => {
            let top = trimmed.split('/').nth(1).unwrap_or("");
            // A container's cgroup sits at least two levels below kubepods, and its parent is
            // the pod's: `pod<uid>` (cgroupfs driver) or `kubepods-…-pod<uid>.slice` (systemd).
            let parent = trimmed.rsplit('/').nth(1).unwrap_or("");
            let pod_like = parent.starts_with("pod")
                || (parent.starts_with("kubepods-") && parent.contains("-pod"));
            if !top.starts_with("kubepods") || trimmed.split('/').count() < 4 || !pod_like {
                return Err(CgroupError::NotAPod {
                    cgroup: cgroup.to_owned(),
                });
            }
            true
        }
    };
    let pod = if parent {
        trimmed.rsplit_once('/').map_or("", |(p, _)| p)
    } else {
        trimmed
    };
    if pod.is_empty() {
        return Err(CgroupError::Root {
            cgroup: cgroup.to_owned(),
            mode,
        });
    }
    Ok(pod.to_owned())
}

/// Opens the cgroup at `relative` (as returned by [`pod_cgroup_of`]) under `root`.
pub(crate) fn open(root: &Path, relative: &str) -> Result<PodCgroup, CgroupError> {
    let path = root.join(relative.trim_start_matches('/'));
    let open_err = |source| CgroupError::Open {
        path: path.clone(),
        source,
    };
    let dir = File::open(&path).map_err(open_err)?;
    let is_cgroup2 = fstatfs(&dir).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC);
    if !is_cgroup2 {
        return Err(open_err(io::Error::other("not on a cgroup v2 filesystem")));
    }
    let id = dir.metadata().map_err(open_err)?.ino();
    Ok(PodCgroup { path, id, dir })
}

/// Whether the cgroup `id` still exists at `path` (a cgroup recreated under the same name is a
/// different cgroup, with a different id).
pub(crate) fn is_alive(path: &Path, id: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.ino() == id)
}

/// Finds the directories of the cgroups `ids` below `root` (one walk of the tree), for pods
/// recovered from pins after a restart. Ids without a directory are gone.
pub(crate) fn find_by_ids(root: &Path, ids: &BTreeSet<u64>) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if found.len() == ids.len() {
            break;
        }
        if let Ok(meta) = std::fs::metadata(&dir)
            && ids.contains(&meta.ino())
        {
            found.insert(meta.ino(), dir.clone());
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        stack.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_ids_are_found_by_walking_the_tree() {
        // Any directory tree will do: the id is the inode number.
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        let id = std::fs::metadata(&deep).unwrap().ino();
        let found = find_by_ids(dir.path(), &BTreeSet::from([id, u64::MAX]));
        assert_eq!(found, BTreeMap::from([(id, deep.clone())]));
        assert!(is_alive(&deep, id));
        assert!(!is_alive(&deep, id + 1));
    }

    #[test]
    fn v2_line_is_found_on_hybrid_hosts() {
        let hybrid = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/user.slice/session-1.scope\n";
        assert_eq!(
            parse_v2_line(hybrid).as_deref(),
            Some("/user.slice/session-1.scope")
        );
        assert_eq!(parse_v2_line("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_v2_line("3:cpu:/x\n"), None);
    }

    #[test]
    fn kubernetes_paths_attach_at_the_pod() {
        let cgroupfs = "/kubepods/burstable/pod1234/0123abcd";
        let systemd = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-ab.scope";
        assert_eq!(
            pod_cgroup_of(cgroupfs, PodCgroupMode::Auto).unwrap(),
            "/kubepods/burstable/pod1234"
        );
        assert_eq!(
            pod_cgroup_of(systemd, PodCgroupMode::Auto).unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice"
        );
        assert_eq!(
            pod_cgroup_of(cgroupfs, PodCgroupMode::Own).unwrap(),
            cgroupfs
        );
    }

    #[test]
    fn auto_serves_kubernetes_pods_only() {
        for not_a_pod in [
            "/trueip/pod-a",
            "/user.slice/user-1000.slice/user@1000.service/kubepods/pod1/c",
            "/system.slice/kubelet.service",
            "/kubepods",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods/besteffort/pod1",
            "/",
        ] {
            assert!(
                matches!(
                    pod_cgroup_of(not_a_pod, PodCgroupMode::Auto),
                    Err(CgroupError::NotAPod { .. })
                ),
                "{not_a_pod}"
            );
        }
    }

    #[test]
    fn other_paths_attach_at_the_caller_unless_told() {
        assert_eq!(
            pod_cgroup_of("/trueip/pod-a/", PodCgroupMode::Own).unwrap(),
            "/trueip/pod-a"
        );
        assert_eq!(
            pod_cgroup_of("/trueip/pod-a/sidecar", PodCgroupMode::Parent).unwrap(),
            "/trueip/pod-a"
        );
    }

    #[test]
    fn root_and_foreign_namespaces_are_refused() {
        assert!(matches!(
            pod_cgroup_of("/", PodCgroupMode::Own),
            Err(CgroupError::Root { .. })
        ));
        assert!(matches!(
            pod_cgroup_of("/a", PodCgroupMode::Parent),
            Err(CgroupError::Root { .. })
        ));
        assert!(matches!(
            pod_cgroup_of("/../../kubepods/pod1/c", PodCgroupMode::Auto),
            Err(CgroupError::OutsideNamespace { .. })
        ));
    }
}
