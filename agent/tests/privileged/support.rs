//! What the privileged tests run on beyond the test kit: the agent process with its health
//! port and metrics, and a pod's cgroups laid out as a kubelet lays them out.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use trueip_test_kit::{
    Cgroup, Launch, Need, Proc,
    names::{self, PREFIX},
    prereq::{self, BPFFS},
    run,
};
pub(crate) use trueip_test_kit::{
    Netns, Skip, Veth,
    child::{Placement, RoleChild},
};

/// The agent binary under test.
pub(crate) const AGENT_BIN: &str = env!("CARGO_BIN_EXE_trueip-agent");

/// How long any step may take before the test fails instead of hanging.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// `Ok` when the eBPF tests can run here (root, `ip`, bpffs, cgroup v2), else the [`Skip`]
/// saying what is missing: `need()?;` as a test's first line.
pub(crate) fn need() -> Result<(), Skip> {
    prereq::require(&[Need::Ebpf])
}

/// Polls `f` until it returns `Some` or [`STEP_TIMEOUT`] passes.
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    run::wait_for(what, STEP_TIMEOUT, || Ok(f()))
}

// === Agent ===

/// A `trueip-agent` process with its own bpffs directory, socket and health port.
#[derive(Debug)]
pub(crate) struct Agent {
    proc: Option<Proc>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// How many times it has been started: each start logs to a file of its own.
    starts: u32,
    /// Its pin directory.
    pub(crate) bpffs_dir: PathBuf,
    /// Its Unix socket.
    pub(crate) socket: PathBuf,
    health: SocketAddr,
    tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent with `extra` flags and waits until `/readyz` says ready.
    pub(crate) fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(extra, &[])
    }

    /// [`Agent::start`] with these environment variables too (the `OTEL_*` ones, say).
    pub(crate) fn start_with_env(extra: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("trueip-agent-test")
            .tempdir()?;
        // Sidecars may run as another user: they must reach the socket.
        fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let bpffs_dir = Path::new(BPFFS).join(format!("{PREFIX}{}", names::unique_suffix()));
        let socket = tmp.path().join("agent.sock");
        let health = free_port()?;
        let mut args: Vec<String> = [
            "--bpffs-dir",
            bpffs_dir.to_str().context("bpffs path")?,
            "--socket",
            socket.to_str().context("socket path")?,
            "--health-listen",
            &health.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut agent = Self {
            proc: None,
            args,
            env: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            starts: 0,
            bpffs_dir,
            socket,
            health,
            tmp,
        };
        agent.restart()?;
        Ok(agent)
    }

    /// Starts the agent again with the same flags (after [`Agent::kill`]).
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.proc.is_none(), "the agent is still running");
        self.starts += 1;
        let launch = self.env.iter().fold(
            Launch::new(&format!("trueip-agent-{}", self.starts), AGENT_BIN)
                .args(&self.args)
                .env("RUST_LOG", "info"),
            |launch, (k, v)| launch.env(k, v),
        );
        let mut proc = launch.spawn(self.tmp.path())?;
        let health = self.health;
        run::wait_for("the agent's /readyz", STEP_TIMEOUT, || {
            proc.ensure_running()?;
            Ok(http_get(health, "/readyz")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200")))
        })
        .with_context(|| format!("agent log:\n{}", proc.log()))?;
        self.proc = Some(proc);
        let healthz = http_get(health, "/healthz")?;
        ensure!(healthz.starts_with("HTTP/1.1 200"), "/healthz: {healthz}");
        Ok(())
    }

    /// Stops the agent with SIGTERM, as the kubelet does, and waits for it to exit.
    pub(crate) fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.terminate();
            let status = proc
                .wait_exit(STEP_TIMEOUT)
                .context("the agent still runs after SIGTERM")?;
            ensure!(
                status.success(),
                "the agent exited with {status}:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// SIGKILLs the agent (no cleanup of its own).
    pub(crate) fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Scrapes the agent's `/metrics` (on its health port), checking the status and content
    /// type, and parses the exposition text.
    pub(crate) fn metrics(&self) -> anyhow::Result<Metrics> {
        let response = http_get(self.health, "/metrics")?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of head in {response:?}"))?;
        ensure!(head.starts_with("HTTP/1.1 200"), "/metrics: {head}");
        ensure!(
            head.contains(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
            ),
            "/metrics content type: {head}"
        );
        ensure!(body.ends_with("# EOF\n"), "/metrics: no # EOF:\n{body}");
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .with_context(|| format!("parsing /metrics:\n{body}"))?;
        Ok(Metrics {
            scrape,
            text: body.to_owned(),
        })
    }

    /// How many descriptors the agent process has open.
    pub(crate) fn open_fds(&self) -> anyhow::Result<usize> {
        let pid = self
            .proc
            .as_ref()
            .context("the agent is not running")?
            .pid();
        Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// What the agent logged so far, over all its starts.
    pub(crate) fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| fs::read_to_string(self.tmp.path().join(format!("trueip-agent-{n}.log"))))
            .filter_map(Result::ok)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // Unpinning everything detaches the links and frees the maps.
        drop(fs::remove_dir_all(&self.bpffs_dir));
    }
}

/// A parsed scrape of the agent's `/metrics`.
pub(crate) struct Metrics {
    scrape: prometheus_parse::Scrape,
    /// The exposition text, for error messages.
    pub(crate) text: String,
}

impl Metrics {
    /// The value of the sample `name` with (at least) `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let found =
            self.scrape.samples.iter().find(|s| {
                s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            });
        match found.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => Ok(*v),
            other => bail!("{name} {labels:?}: {other:?} in\n{}", self.text),
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A minimal HTTP GET, returning the whole response.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

// === A pod's cgroups ===

/// A pod-like cgroup `<root>/kubepods-tip-…/pod/` with `app` and `sidecar` children, as
/// Kubernetes lays out a pod: the agent's default `auto` rule serves callers below a top-level
/// `kubepods*` cgroup and attaches to the pod's (`pod`).
#[derive(Debug)]
pub(crate) struct PodCgroup {
    // Removed in this order, children first.
    app: Cgroup,
    sidecar: Cgroup,
    pod: Cgroup,
    top: Cgroup,
}

impl PodCgroup {
    /// Creates the cgroups.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let top = Cgroup::create_kubepods()?;
        let pod = Cgroup::create_in(top.path(), "pod")?;
        Ok(Self {
            app: Cgroup::create_in(pod.path(), "app")?,
            sidecar: Cgroup::create_in(pod.path(), "sidecar")?,
            pod,
            top,
        })
    }

    /// The pod cgroup.
    pub(crate) fn pod(&self) -> &Path {
        self.pod.path()
    }

    /// The app container's cgroup.
    pub(crate) fn app(&self) -> &Path {
        self.app.path()
    }

    /// The sidecar container's cgroup.
    pub(crate) fn sidecar(&self) -> &Path {
        self.sidecar.path()
    }

    /// Removes the cgroups, killing what is left in them: the pod is gone.
    pub(crate) fn remove(&self) -> anyhow::Result<()> {
        for cgroup in [&self.app, &self.sidecar, &self.pod, &self.top] {
            cgroup.remove()?;
        }
        Ok(())
    }
}
