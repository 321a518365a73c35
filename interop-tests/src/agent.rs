//! `trueip-agent`, the node agent, started on the host (outside the namespaces, as a DaemonSet
//! with host networking would run) with its socket in the topology's scratch directory and its
//! pins in a bpffs directory of its own, removed after it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::topology::Topology;
use trueip_test_kit::{
    names::{PREFIX, is_stale, unique_suffix},
    prereq::{BPFFS, trueip_binary},
    process::{Launch, Proc},
    run::{self, wait_for},
};

/// How long the agent gets to load its programs and open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent; dropping it stops it, then removes its pins (pinned links would keep the
/// programs attached).
#[derive(Debug)]
pub struct Agent {
    proc: Option<Proc>,
    socket: PathBuf,
    pins: PathBuf,
    command_line: String,
    /// How many times it has been started, to give each run its own log file.
    starts: u32,
    /// Flags beyond the ones every test agent gets.
    flags: Vec<String>,
}

impl Agent {
    /// Starts the agent with a fresh pin directory below the bpffs (`tip-<pid>-<n>`).
    pub fn start(topo: &Topology) -> Result<Self> {
        Self::start_with(topo, &[])
    }

    /// [`start`](Self::start) with more flags, e.g. `--udp`.
    pub fn start_with(topo: &Topology, flags: &[&str]) -> Result<Self> {
        remove_stale_pins();
        Self::start_pinned_with(
            topo,
            Path::new(BPFFS).join(format!("{PREFIX}{}", unique_suffix())),
            flags,
        )
    }

    /// Starts the agent pinning below `pins`, which is removed first if a previous run left it.
    pub fn start_pinned(topo: &Topology, pins: PathBuf) -> Result<Self> {
        Self::start_pinned_with(topo, pins, &[])
    }

    fn start_pinned_with(topo: &Topology, pins: PathBuf, flags: &[&str]) -> Result<Self> {
        if pins.exists() {
            std::fs::remove_dir_all(&pins)
                .with_context(|| format!("removing the leftover {}", pins.display()))?;
        }
        let socket = topo.dir().join("agent.sock");
        let launch = launch(&socket, &pins)?.args(flags);
        let mut agent = Self {
            proc: None,
            command_line: launch.command_line(),
            socket,
            pins,
            starts: 0,
            flags: flags.iter().map(|&f| f.to_owned()).collect(),
        };
        agent.spawn(topo, launch)?;
        Ok(agent)
    }

    /// The socket sidecars ask for their pod's map (`--agent-socket`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's command line, as a user would type it.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Entries in every pod's fast-path maps: (sockets, connections). A finished connection
    /// leaves none behind.
    pub fn fast_path_entries(&self) -> Result<(usize, usize)> {
        use aya::maps::{HashMap, Map, MapData, SockHash};
        use trueip_redirect_common::{ConnKey, FastPathKey, FastPathPeer};
        let mut totals = (0, 0);
        let pods = self.pins.join("pods");
        for pod in
            std::fs::read_dir(&pods).with_context(|| format!("reading {}", pods.display()))?
        {
            for dir in std::fs::read_dir(pod?.path())? {
                let dir = dir?.path();
                if !dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("fastpath-"))
                {
                    continue;
                }
                let open = |name: &str| -> Result<Map> {
                    let pin = dir.join(name);
                    let data = MapData::from_pin(&pin)
                        .with_context(|| format!("opening {}", pin.display()))?;
                    Ok(Map::from_map_data(data)?)
                };
                let sockets: SockHash<MapData, FastPathKey> = open("sockets")?.try_into()?;
                let peers: HashMap<MapData, ConnKey, FastPathPeer> = open("peers")?.try_into()?;
                totals.0 += sockets.keys().filter(Result::is_ok).count();
                totals.1 += peers.keys().filter(Result::is_ok).count();
            }
        }
        Ok(totals)
    }

    /// Entries in every pod's restore map (TCP connections and UDP flows the sidecars recorded
    /// and have not removed).
    pub fn restore_entries(&self) -> Result<usize> {
        use aya::maps::{HashMap, Map, MapData};
        use trueip_redirect_common::{ConnKey, RestoreValue};
        let mut total = 0;
        let pods = self.pins.join("pods");
        for pod in
            std::fs::read_dir(&pods).with_context(|| format!("reading {}", pods.display()))?
        {
            for pin in std::fs::read_dir(pod?.path())? {
                let pin = pin?.path();
                if !pin
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("netns-"))
                {
                    continue;
                }
                let data = MapData::from_pin(&pin)
                    .with_context(|| format!("opening {}", pin.display()))?;
                let map: HashMap<MapData, ConnKey, RestoreValue> =
                    Map::from_map_data(data)?.try_into()?;
                total += map.keys().filter(Result::is_ok).count();
            }
        }
        Ok(total)
    }

    /// The agent's output so far.
    pub fn log_tail(&self) -> String {
        self.proc.as_ref().map(Proc::log_tail).unwrap_or_default()
    }

    /// Kills the agent (SIGKILL, no clean-up of its own) and starts it again on the same pins
    /// and socket, as a DaemonSet rollout or a crash would.
    pub fn restart(&mut self, topo: &Topology) -> Result<()> {
        if let Some(mut old) = self.proc.take() {
            old.kill();
        }
        // A stale socket file would make the wait below succeed at once.
        if self.socket.exists() {
            std::fs::remove_file(&self.socket)
                .with_context(|| format!("removing {}", self.socket.display()))?;
        }
        let launch = launch(&self.socket, &self.pins)?.args(&self.flags);
        self.spawn(topo, launch)
    }

    fn spawn(&mut self, topo: &Topology, launch: Launch<'_>) -> Result<()> {
        self.starts += 1;
        let mut proc = launch
            .name(&format!("trueip-agent-{}", self.starts))
            .spawn(topo.dir())?;
        wait_for("the agent's socket", START_TIMEOUT, || {
            proc.ensure_running()?;
            Ok(self.socket.exists().then_some(()))
        })?;
        self.proc = Some(proc);
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.proc.take());
        if self.pins.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.pins)
        {
            run::note(&format!("could not remove {}: {e}", self.pins.display()));
        }
    }
}

/// `--health-listen` on an ephemeral port, so that agents of parallel tests do not clash;
/// `--pod-cgroup own`: the scratch cgroup the sidecar runs in is the pod's cgroup.
fn launch<'a>(socket: &Path, pins: &Path) -> Result<Launch<'a>> {
    Ok(Launch::new("trueip-agent", trueip_binary("trueip-agent")?)
        .args(["--socket".as_ref(), socket.as_os_str()])
        .args(["--bpffs-dir".as_ref(), pins.as_os_str()])
        .args(["--health-listen", "127.0.0.1:0", "--pod-cgroup", "own"])
        .env("RUST_LOG", "info"))
}

/// Removes pin directories of runs that were killed before they could clean up.
fn remove_stale_pins() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy()) {
            // Best effort: the next run tries again.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
