//! The pods the agent serves: one map per pod network namespace, entered in the node-wide table,
//! and the pod cgroup's hooks, all pinned so that they outlive the agent.
//!
//! Pins, under `<bpffs>/pods/<cgroup id>/`:
//!
//! ```text
//! netns-<cookie>     the pod's map (key of the node-wide table: the netns cookie)
//! getpeername4 …     the links attaching each hook to the pod cgroup
//! steer-<cookie>/    steering, once the sidecar asked for it (see `steer`): the link attaching
//!                    the pod's own sk_lookup program to its namespace, and that program's maps
//! fastpath-<cookie>/ the fast path, once the sidecar asked for it (see `fast_path`): the link
//!                    attaching the pod's sockops program to its cgroup, and the socket maps
//! ```
//!
//! Everything the agent knows is in those names, so a restarted agent rebuilds its state from
//! them ([`Registry::recover`]). A pod is its cgroup; its map belongs to exactly one network
//! namespace, and a network namespace to exactly one pod: a second pod cgroup asking with a
//! namespace already served (host-network pods share the node's) is refused, because the first
//! pod's hooks would read the second pod's entries.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError};
use trueip_redirect_common::{ConnKey, POD_MAP_FLAGS, RestoreValue};
use trueip_telemetry::error_chain;

use crate::{
    cgroup,
    config::WhenGone,
    fast_path::{self, FastPathError, FastPathMaps},
    identify::Caller,
    programs::{Hook, Programs, ProgramsError, remove_if_exists},
    steer::{self, SteerError, SteerStats},
};

/// Kernel name of pod maps (15 characters at most), as `bpftool map` shows them.
const POD_MAP_NAME: &str = "trueip_pod";
/// `BPF_MAP_TYPE_HASH`.
const BPF_MAP_TYPE_HASH: u32 = 1;
/// Errno of a table insertion beyond its capacity.
const E2BIG: i32 = 7;

/// Why a pod could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The caller's network namespace is another live pod's.
    #[error(
        "network namespace {netns} is already served to pod cgroup {other} (host-network pods cannot use the eBPF mode)"
    )]
    Conflict {
        /// The namespace cookie.
        netns: u64,
        /// The pod that has it.
        other: PathBuf,
    },
    /// The node-wide table is full.
    #[error(
        "the table of pods is full (--max-pods); pods whose cgroup is gone are swept every --sweep-interval"
    )]
    TooManyPods,
    /// A map operation failed.
    #[error("{op}")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// Pinning, attaching, or a bpffs file operation failed.
    #[error(transparent)]
    Programs(#[from] ProgramsError),
    /// Steering could not be set up.
    #[error(transparent)]
    Steer(#[from] SteerError),
    /// The fast path could not be set up.
    #[error(transparent)]
    FastPath(#[from] FastPathError),
}

/// What the agent knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pod {
    /// The pod cgroup's directory.
    cgroup: PathBuf,
    /// The cookie of the pod's network namespace (the key of its map in the table).
    netns: u64,
}

/// The pods served, and how to serve more.
#[derive(Debug)]
pub(crate) struct Registry {
    programs: Programs,
    /// `<bpffs>/pods`.
    dir: PathBuf,
    cgroup_root: PathBuf,
    /// The hooks every pod gets.
    hooks: Vec<Hook>,
    /// Capacity of new pod maps.
    map_max_entries: u32,
    /// Keyed by cgroup id.
    pods: BTreeMap<u64, Pod>,
    /// The steering counters last reported, by cgroup id.
    steer_reported: BTreeMap<u64, SteerStats>,
    /// The steering counters of the pods (or namespaces) removed since the agent started, so
    /// that their sum in the metrics never goes down.
    steer_retired: SteerStats,
    /// The sk_msg attachments this agent made, by cgroup id (dropping one detaches it).
    fast_path_links: BTreeMap<u64, aya::programs::sk_msg::SkMsgLink>,
}

/// The pods as a scrape reads them: copied under the registry's lock, read by [`observe`] after
/// it is released.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The cgroup hooks every pod gets.
    hooks: Vec<Hook>,
    /// The pods served.
    pods: Vec<PodPins>,
    /// The steering counters of removed pods.
    steer_retired: SteerStats,
}

/// Where a scrape reads one pod.
#[derive(Debug, Clone)]
struct PodPins {
    /// The pod cgroup below the cgroup2 mount, e.g. `/kubepods.slice/…/kubepods-pod….slice`.
    label: String,
    /// The pod map's pin.
    map: PathBuf,
    /// The pod's steering directory (which exists only if it steers).
    steering: PathBuf,
}

/// A pod map handed to a sidecar.
#[derive(Debug)]
pub(crate) struct Served {
    /// The map (its fd is what travels to the sidecar).
    pub(crate) map: MapData,
    /// Its capacity.
    pub(crate) max_entries: u32,
}

impl Registry {
    /// Takes over the pins under `bpffs_dir/pods`: pods whose cgroup still exists carry on (their
    /// hooks brought in line with `hooks`), the others are removed.
    pub(crate) fn recover(
        programs: Programs,
        bpffs_dir: &Path,
        cgroup_root: &Path,
        hooks: Vec<Hook>,
        map_max_entries: u32,
    ) -> Result<Self, ServeError> {
        let dir = bpffs_dir.join("pods");
        fs::create_dir_all(&dir).map_err(|source| fs_err("creating", &dir, source))?;
        let mut registry = Self {
            programs,
            dir,
            cgroup_root: cgroup_root.to_owned(),
            hooks,
            map_max_entries,
            pods: BTreeMap::new(),
            steer_reported: BTreeMap::new(),
            steer_retired: SteerStats::default(),
            fast_path_links: BTreeMap::new(),
        };
        let entries =
            fs::read_dir(&registry.dir).map_err(|s| fs_err("reading", &registry.dir, s))?;
        let mut pinned = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            match entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(id) => {
                    pinned.insert(id, pinned_netns(&path));
                }
                None => {
                    tracing::warn!(path = %path.display(), "ignoring an unexpected entry in the pin directory");
                }
            }
        }
        let mut cgroups =
            cgroup::find_by_ids(&registry.cgroup_root, &pinned.keys().copied().collect());
        for (id, netns) in pinned {
            match (netns, cgroups.remove(&id)) {
                (Some(netns), Some(cgroup)) => {
                    tracing::info!(cgroup = %cgroup.display(), netns, "re-found pod");
                    registry.pods.insert(id, Pod { cgroup, netns });
                    if let Err(e) = registry.reconcile(id) {
                        tracing::error!(error = %error_chain(&e), cgroup_id = id, "could not restore a re-found pod");
                    }
                }
                (netns, None) => {
                    tracing::info!(
                        cgroup_id = id,
                        ?netns,
                        "removing a pod whose cgroup is gone"
                    );
                    registry.remove_pins(id, netns)?;
                }
                (None, Some(cgroup)) => {
                    // Left half-made by a crash: served afresh when its sidecar asks again.
                    tracing::info!(cgroup = %cgroup.display(), "removing a pod without a map");
                    registry.remove_pins(id, None)?;
                }
            }
        }
        registry.remove_orphan_table_entries()?;
        Ok(registry)
    }

    /// Hands `caller` its pod's map, creating the map, its table entry and the pod's hooks first
    /// if needed.
    pub(crate) fn serve(&mut self, caller: &Caller) -> Result<Served, ServeError> {
        let id = caller.pod.id;
        let netns = caller.netns;
        if let Some((&other_id, other)) = self
            .pods
            .iter()
            .find(|(other_id, pod)| pod.netns == netns && **other_id != id)
        {
            if cgroup::is_alive(&other.cgroup, other_id) {
                return Err(ServeError::Conflict {
                    netns,
                    other: other.cgroup.clone(),
                });
            }
            self.remove(other_id)?;
        }
        match self.pods.get(&id) {
            Some(pod) if pod.netns == netns => {}
            Some(pod) => {
                // Same pod cgroup, new network namespace: the pod sandbox was recreated. The
                // old namespace is gone with its sockets; its map goes too.
                tracing::info!(cgroup = %pod.cgroup.display(), old = pod.netns, new = netns, "pod has a new network namespace");
                let old = pod.netns;
                self.remove_map(id, old)?;
                self.create_map(id, netns)?;
            }
            None => {
                tracing::info!(cgroup = %caller.pod.path.display(), netns, "new pod");
                self.create_map(id, netns)?;
            }
        }
        self.pods.insert(
            id,
            Pod {
                cgroup: caller.pod.path.clone(),
                netns,
            },
        );
        self.attach_hooks(id, &caller.pod.dir, &caller.pod.path)?;
        let map = MapData::from_pin(self.map_pin(id, netns)).map_err(|source| ServeError::Map {
            op: "opening the pod map",
            source,
        })?;
        let max_entries = map
            .info()
            .map_err(|source| ServeError::Map {
                op: "reading the pod map's info",
                source,
            })?
            .max_entries();
        Ok(Served { map, max_entries })
    }

    /// Steers the caller's pod's connections to `port` from outside the pod to `listener` (which
    /// must be a listening TCP socket of the caller's own namespace), serving the pod first if it
    /// is new. Returns whether the pod's sk_lookup program was attached now.
    pub(crate) fn steer(
        &mut self,
        caller: &Caller,
        port: u16,
        listener: BorrowedFd<'_>,
        when_gone: WhenGone,
    ) -> Result<bool, ServeError> {
        let family = steer::check_listener(listener, caller.netns)?;
        self.serve(caller)?;
        let pod_dir = self.dir.join(caller.pod.id.to_string());
        Ok(steer::steer(
            &pod_dir,
            caller.netns,
            &caller.netns_file,
            port,
            family,
            listener,
            when_gone,
        )?)
    }

    /// Hands `caller` its pod's fast-path maps, serving the pod and setting up its fast path
    /// (sockops on the pod cgroup, sk_msg on the pod's socket map) first if needed.
    pub(crate) fn fast_path(&mut self, caller: &Caller) -> Result<FastPathMaps, ServeError> {
        self.serve(caller)?;
        let id = caller.pod.id;
        let pod_dir = self.dir.join(id.to_string());
        let (maps, link) = fast_path::set_up(
            &pod_dir,
            caller.netns,
            &caller.pod.dir,
            self.map_max_entries,
        )?;
        if let Some(link) = link {
            tracing::info!(cgroup = %caller.pod.path.display(), netns = caller.netns, "fast path attached");
            self.fast_path_links.insert(id, link);
        }
        Ok(maps)
    }

    /// Logs, per steering pod, the connections that fell through to the app or were refused
    /// because the sidecar's listener was gone since the last report.
    pub(crate) fn report_steering(&mut self) {
        for (id, pod) in &self.pods {
            let dir = steer::dir(&self.dir.join(id.to_string()), pod.netns);
            let Some(now) = steer::stats(&dir) else {
                continue;
            };
            let before = self.steer_reported.insert(*id, now).unwrap_or_default();
            let fell_through = now.fell_through.saturating_sub(before.fell_through);
            let refused = now.refused.saturating_sub(before.refused);
            if fell_through > 0 || refused > 0 {
                tracing::warn!(
                    cgroup = %pod.cgroup.display(),
                    fell_through,
                    refused,
                    total_fell_through = now.fell_through,
                    total_refused = now.refused,
                    steered = now.steered,
                    "steered connections found no sidecar listener (is the sidecar running?)"
                );
            }
        }
        self.steer_reported
            .retain(|id, _| self.pods.contains_key(id));
    }

    /// Removes the pods whose cgroup is gone. Returns how many.
    pub(crate) fn sweep(&mut self) -> usize {
        let gone: Vec<u64> = self
            .pods
            .iter()
            .filter(|(id, pod)| !cgroup::is_alive(&pod.cgroup, **id))
            .map(|(id, _)| *id)
            .collect();
        let mut removed = 0;
        for id in gone {
            match self.remove(id) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::error!(error = %error_chain(&e), cgroup_id = id, "could not remove a gone pod");
                }
            }
        }
        removed
    }

    /// Whether the pods get the UDP hooks (`--udp`), which `GET-MAP udp` requires.
    pub(crate) fn serves_udp(&self) -> bool {
        Hook::UDP.iter().all(|hook| self.hooks.contains(hook))
    }

    /// How many pods are served.
    pub(crate) fn len(&self) -> usize {
        self.pods.len()
    }

    /// A copy of what a scrape needs (no map is read here: see [`observe`]).
    pub(crate) fn view(&self) -> View {
        let pods = self
            .pods
            .iter()
            .map(|(&id, pod)| {
                let below = pod
                    .cgroup
                    .strip_prefix(&self.cgroup_root)
                    .unwrap_or(&pod.cgroup);
                PodPins {
                    label: Path::new("/").join(below).display().to_string(),
                    map: self.map_pin(id, pod.netns),
                    steering: steer::dir(&self.dir.join(id.to_string()), pod.netns),
                }
            })
            .collect();
        View {
            hooks: self.hooks.clone(),
            pods,
            steer_retired: self.steer_retired,
        }
    }

    /// Creates pod `id`'s map for `netns`, pins it, and enters it in the table (in that order, so
    /// that a crash in between leaves a pin that recovery finds).
    fn create_map(&mut self, id: u64, netns: u64) -> Result<(), ServeError> {
        let pod_dir = self.dir.join(id.to_string());
        fs::create_dir_all(&pod_dir).map_err(|source| fs_err("creating", &pod_dir, source))?;
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_HASH,
            size_of::<ConnKey>() as u32,
            size_of::<RestoreValue>() as u32,
            self.map_max_entries,
            POD_MAP_FLAGS,
        );
        let map_err = |op| move |source| ServeError::Map { op, source };
        let map =
            MapData::create(obj, POD_MAP_NAME, None).map_err(map_err("creating the pod map"))?;
        let pin = self.map_pin(id, netns);
        // A pin left by a failed attempt would make pinning fail for good.
        remove_if_exists(&pin)?;
        map.pin(&pin).map_err(|source| ProgramsError::Pin {
            path: pin.clone(),
            source,
        })?;
        let entered = self.programs.table.insert(netns, &map, 0);
        if entered.is_err() {
            remove_if_exists(&pin)?;
        }
        match entered {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(E2BIG) => {
                Err(ServeError::TooManyPods)
            }
            other => other.map_err(map_err("entering the pod map in the table")),
        }
    }

    /// Re-enters a re-found pod's map in the table if it is missing there, and brings its hooks
    /// in line with the configuration.
    fn reconcile(&mut self, id: u64) -> Result<(), ServeError> {
        let Some(pod) = self.pods.get(&id).cloned() else {
            return Ok(());
        };
        let map_err = |op| move |source| ServeError::Map { op, source };
        let map = MapData::from_pin(self.map_pin(id, pod.netns))
            .map_err(map_err("opening a pinned pod map"))?;
        let info = map
            .info()
            .map_err(map_err("reading a pinned pod map's info"))?;
        if (info.key_size(), info.value_size())
            != (
                size_of::<ConnKey>() as u32,
                size_of::<RestoreValue>() as u32,
            )
        {
            return Err(ServeError::Map {
                op: "checking a pinned pod map",
                source: MapError::InvalidValueSize {
                    size: info.value_size() as usize,
                    expected: size_of::<RestoreValue>(),
                },
            });
        }
        if matches!(
            self.programs.table.get(&pod.netns, 0),
            Err(MapError::KeyNotFound)
        ) {
            tracing::info!(netns = pod.netns, "re-entering a pod map in the table");
            self.programs
                .table
                .insert(pod.netns, &map, 0)
                .map_err(map_err("re-entering a pinned pod map"))?;
        }
        for hook in Hook::ALL {
            if !self.hooks.contains(&hook) {
                remove_if_exists(&self.link_pin(id, hook))?;
            }
        }
        let dir =
            fs::File::open(&pod.cgroup).map_err(|source| fs_err("opening", &pod.cgroup, source))?;
        self.attach_hooks(id, &dir, &pod.cgroup)
    }

    /// Attaches the configured hooks that pod `id` does not have yet, and moves the ones a
    /// previous agent attached to this agent's programs.
    fn attach_hooks(&mut self, id: u64, dir: &fs::File, cgroup: &Path) -> Result<(), ServeError> {
        for hook in self.hooks.clone() {
            let pin = self.link_pin(id, hook);
            let existed = pin.exists();
            if self.programs.attach(hook, dir, cgroup, &pin)? {
                let what = if existed {
                    "moved to this agent's program"
                } else {
                    "attached"
                };
                tracing::info!(cgroup = %cgroup.display(), hook = hook.name(), "{what}");
            }
        }
        Ok(())
    }

    /// Forgets pod `id`: its table entry, map and links.
    fn remove(&mut self, id: u64) -> Result<(), ServeError> {
        let pod = self.pods.remove(&id);
        if let Some(pod) = &pod {
            tracing::info!(cgroup = %pod.cgroup.display(), netns = pod.netns, "removing pod");
        }
        self.remove_pins(id, pod.map(|p| p.netns))
    }

    /// Removes pod `id`'s map for `netns` from the table and its pin, and its steering there.
    fn remove_map(&mut self, id: u64, netns: u64) -> Result<(), ServeError> {
        self.remove_table_entry(netns)?;
        remove_if_exists(&self.map_pin(id, netns))?;
        let steering = steer::dir(&self.dir.join(id.to_string()), netns);
        self.retire_steering(&steering);
        self.fast_path_links.remove(&id);
        for dir in [
            steering,
            fast_path::dir(&self.dir.join(id.to_string()), netns),
        ] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(fs_err("removing", &dir, e).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes everything pinned for pod `id` (unpinning the links detaches them).
    fn remove_pins(&mut self, id: u64, netns: Option<u64>) -> Result<(), ServeError> {
        self.fast_path_links.remove(&id);
        if let Some(netns) = netns {
            self.remove_table_entry(netns)?;
        }
        let pod_dir = self.dir.join(id.to_string());
        for entry in fs::read_dir(&pod_dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("steer-") {
                self.retire_steering(&entry.path());
            }
        }
        match fs::remove_dir_all(&pod_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(fs_err("removing", &pod_dir, e).into())
            }
            _ => Ok(()),
        }
    }

    /// Adds the counters of the steering in `dir`, about to be removed, to the retired ones.
    fn retire_steering(&mut self, dir: &Path) {
        if let Some(stats) = steer::stats(dir) {
            self.steer_retired.add(stats);
        }
    }

    fn remove_table_entry(&mut self, netns: u64) -> Result<(), ServeError> {
        match self.programs.table.remove(&netns) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
                Ok(())
            }
            Err(source) => Err(ServeError::Map {
                op: "removing a table entry",
                source,
            }),
        }
    }

    /// Removes table entries no pinned pod accounts for (left by a crash mid-removal).
    fn remove_orphan_table_entries(&mut self) -> Result<(), ServeError> {
        let orphans: Vec<u64> = self
            .programs
            .table
            .keys()
            .filter_map(Result::ok)
            .filter(|netns| !self.pods.values().any(|p| p.netns == *netns))
            .collect();
        for netns in orphans {
            tracing::info!(netns, "removing a table entry without a pod");
            self.remove_table_entry(netns)?;
        }
        Ok(())
    }

    fn map_pin(&self, id: u64, netns: u64) -> PathBuf {
        self.dir.join(id.to_string()).join(format!("netns-{netns}"))
    }

    fn link_pin(&self, id: u64, hook: Hook) -> PathBuf {
        self.dir.join(id.to_string()).join(hook.name())
    }
}

/// One pod's map, read at scrape time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodMapUse {
    /// The `pod` label: the pod cgroup's path below the cgroup2 mount.
    pub(crate) pod: String,
    /// Entries in the pod's restore map (live restored connections).
    pub(crate) entries: u64,
    /// The map's capacity.
    pub(crate) capacity: u64,
}

/// What a scrape reads from the pods and the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Whether the agent reports ready.
    pub(crate) ready: bool,
    /// Programs loaded, by name: each configured cgroup hook once, `sk_lookup` once per
    /// steering pod.
    pub(crate) programs: Vec<(&'static str, u64)>,
    /// How many pods are served.
    pub(crate) pods_served: u64,
    /// The maps of the pods that could be read.
    pub(crate) maps: Vec<PodMapUse>,
    /// The steering counters of every pod, summed (those of removed pods included).
    pub(crate) steering: SteerStats,
}

/// Reads what `view` points at: the pods' maps (counting their keys, at most their capacity, so
/// that a map changing under the walk cannot keep it going) and steering counters. Pods removed
/// since the view was taken are left out.
pub(crate) fn observe(view: &View) -> Observed {
    let mut steering = view.steer_retired;
    let mut steering_pods = 0;
    let mut maps = Vec::with_capacity(view.pods.len());
    for pod in &view.pods {
        if let Some((entries, capacity)) = map_use(&pod.map) {
            maps.push(PodMapUse {
                pod: pod.label.clone(),
                entries,
                capacity,
            });
        }
        if let Some(stats) = steer::stats(&pod.steering) {
            steering.add(stats);
        }
        if steer::attached(&pod.steering) {
            steering_pods += 1;
        }
    }
    let mut programs: Vec<(&'static str, u64)> = view.hooks.iter().map(|h| (h.name(), 1)).collect();
    programs.push(("sk_lookup", steering_pods));
    Observed {
        ready: false,
        programs,
        pods_served: view.pods.len() as u64,
        maps,
        steering,
    }
}

/// The entries in, and the capacity of, the pod map pinned at `pin`.
fn map_use(pin: &Path) -> Option<(u64, u64)> {
    let data = MapData::from_pin(pin).ok()?;
    let capacity = data.info().ok()?.max_entries();
    let map: HashMap<MapData, ConnKey, RestoreValue> =
        Map::from_map_data(data).ok()?.try_into().ok()?;
    let entries = map
        .keys()
        .take(capacity as usize)
        .filter(Result::is_ok)
        .count();
    Some((entries as u64, capacity.into()))
}

/// The netns cookie named by the map pin in a pod's pin directory.
fn pinned_netns(pod_dir: &Path) -> Option<u64> {
    fs::read_dir(pod_dir)
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("netns-")?.parse().ok())
}

fn fs_err(op: &'static str, path: &Path, source: io::Error) -> ProgramsError {
    ProgramsError::Fs {
        op,
        path: path.to_owned(),
        source,
    }
}
