//! What the privileged tests run on: the environment check, the agent process, test cgroups and
//! network namespaces, and child processes (app, sidecar) placed in them.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
pub(crate) use trueip_interop_tests::{Netns, prereq::Skip};
use trueip_interop_tests::{names, run};

/// The agent binary under test.
pub(crate) const AGENT_BIN: &str = env!("CARGO_BIN_EXE_trueip-agent");

/// How long any step may take before the test fails instead of hanging.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// What a privileged test needs, found once.
#[derive(Debug)]
pub(crate) struct Env {
    /// The cgroup v2 mount.
    pub(crate) cgroup_root: PathBuf,
}

impl Env {
    /// Checks for root, bpffs and cgroup v2; the error is the reason to skip.
    pub(crate) fn detect() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (the eBPF tests load programs and create cgroups)".into());
        }
        if !statfs("/sys/fs/bpf").is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC) {
            return Err(
                "bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)".into(),
            );
        }
        let cgroup_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .find(|p| statfs(*p).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC))
            .ok_or("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")?;
        Ok(Self {
            cgroup_root: cgroup_root.into(),
        })
    }
}

/// A unique name for this process's test objects: `prefix` and the kit's unique suffix.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}{}", names::unique_suffix())
}

/// Polls `f` until it returns `Some` or [`STEP_TIMEOUT`] passes.
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    run::wait_for(what, STEP_TIMEOUT, || Ok(f()))
}

// === Agent ===

/// A `trueip-agent` process with its own bpffs directory, socket and health port.
#[derive(Debug)]
pub(crate) struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Its pin directory.
    pub(crate) bpffs_dir: PathBuf,
    /// Its Unix socket.
    pub(crate) socket: PathBuf,
    health: SocketAddr,
    log: PathBuf,
    _tmp: tempfile::TempDir,
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
        let bpffs_dir = PathBuf::from("/sys/fs/bpf").join(unique("trueip-test-"));
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
            child: None,
            args,
            env: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            bpffs_dir,
            socket,
            health,
            log: tmp.path().join("agent.log"),
            _tmp: tmp,
        };
        agent.restart()?;
        Ok(agent)
    }

    /// Starts the agent again with the same flags (after [`Agent::kill`]).
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "the agent is still running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(AGENT_BIN)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting trueip-agent")?;
        self.child = Some(child);
        let health = self.health;
        let ready = wait_for("the agent's /readyz", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Some(Err(status));
            }
            http_get(health, "/readyz")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
                .map(Ok)
        });
        match ready {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => bail!("the agent exited with {status}:\n{}", self.log()),
            Err(e) => bail!("{e}:\n{}", self.log()),
        }
        let healthz = http_get(health, "/healthz")?;
        ensure!(healthz.starts_with("HTTP/1.1 200"), "/healthz: {healthz}");
        Ok(())
    }

    /// Stops the agent with SIGTERM, as the kubelet does, and waits for it to exit.
    pub(crate) fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            let status = wait_for("the agent to exit after SIGTERM", || {
                child.try_wait().ok().flatten()
            })?;
            ensure!(
                status.success(),
                "the agent exited with {status}:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// SIGKILLs the agent (no cleanup of its own).
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
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
            .child
            .as_ref()
            .context("the agent is not running")?
            .id();
        Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// What the agent logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.kill());
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

// === Cgroups and network namespaces ===

/// A pod-like cgroup `<root>/kubepods-trueip-test-…/pod/` with `app` and `sidecar` children, as
/// Kubernetes lays out a pod: the agent's default `auto` rule serves callers below a top-level
/// `kubepods*` cgroup and attaches to the pod's (`pod`).
#[derive(Debug)]
pub(crate) struct PodCgroup {
    top: PathBuf,
    /// The pod cgroup.
    pub(crate) pod: PathBuf,
}

impl PodCgroup {
    /// Creates the cgroups.
    pub(crate) fn create(env: &Env) -> anyhow::Result<Self> {
        let top = env.cgroup_root.join(unique("kubepods-trueip-test-"));
        let pod = top.join("pod");
        for dir in [pod.join("app"), pod.join("sidecar")] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        Ok(Self { top, pod })
    }

    /// The app container's cgroup.
    pub(crate) fn app(&self) -> PathBuf {
        self.pod.join("app")
    }

    /// The sidecar container's cgroup.
    pub(crate) fn sidecar(&self) -> PathBuf {
        self.pod.join("sidecar")
    }

    /// Removes the cgroups (their processes must be gone).
    pub(crate) fn remove(&self) -> anyhow::Result<()> {
        for dir in [
            self.app(),
            self.sidecar(),
            self.pod.clone(),
            self.top.clone(),
        ] {
            wait_for(
                &format!("removing cgroup {}", dir.display()),
                || match fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => None,
                    _ => Some(()),
                },
            )?;
        }
        Ok(())
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        drop(self.remove());
    }
}

/// A veth pair between the host and a pod namespace, with one IPv4 address on each end, so that
/// the host reaches the pod from outside (not over the pod's loopback).
#[derive(Debug)]
pub(crate) struct Veth {
    host: String,
    /// The host end's address.
    pub(crate) host_ip: IpAddr,
    /// The pod end's address.
    pub(crate) pod_ip: IpAddr,
}

impl Veth {
    /// Creates the pair `tv<n>` (host) ↔ `eth0` (pod), addressed from 100.127.<n>.0/30.
    pub(crate) fn create(netns: &Netns) -> anyhow::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = (std::process::id() as usize * 7 + N.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let host = format!("tv{}-{n}", std::process::id() % 10_000);
        let (host_ip, pod_ip) = (format!("100.127.{n}.1"), format!("100.127.{n}.2"));
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let status = Command::new("ip").args(args).status()?;
            ensure!(status.success(), "ip {}: {status}", args.join(" "));
            Ok(())
        };
        let pair = Self {
            host: host.clone(),
            host_ip: host_ip.parse()?,
            pod_ip: pod_ip.parse()?,
        };
        run(&[
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host])?;
        run(&["link", "set", &host, "up"])?;
        run(&[
            "-n",
            netns.name(),
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            "eth0",
        ])?;
        run(&["-n", netns.name(), "link", "set", "eth0", "up"])?;
        Ok(pair)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        drop(
            Command::new("ip")
                .args(["link", "del", &self.host])
                .status(),
        );
    }
}

// === Child processes ===

/// Where and as whom a child runs.
#[derive(Debug, Default)]
pub(crate) struct Placement<'a> {
    /// The cgroup it joins before anything else (so its sockets belong to it).
    pub(crate) cgroup: Option<&'a Path>,
    /// The network namespace it enters.
    pub(crate) netns: Option<&'a Netns>,
    /// Drop to this uid/gid after joining (an unprivileged sidecar).
    pub(crate) uid: Option<u32>,
}

/// A child process of this test binary in one of its roles, spoken to by lines.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    role: &'static str,
}

impl Proc {
    /// Runs this test binary as `role` with `args`, placed as asked. The cgroup is joined and
    /// the namespace entered between fork and exec, so the program starts inside both, as a
    /// container runtime would start it.
    pub(crate) fn spawn(
        role: &'static str,
        args: &[&str],
        place: &Placement<'_>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let procs = place
            .cgroup
            .map(|cg| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(cg.join("cgroup.procs"))
            })
            .transpose()
            .context("opening cgroup.procs")?;
        let netns = place.netns.map(|n| fs::File::open(n.path())).transpose()?;
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        let uid = place.uid;
        let mut cmd = Command::new(exe);
        cmd.arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on descriptors opened above (kept open by the parent
        // until `spawn` returns), without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = procs_fd {
                    // "0" = the writing process.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the {role} child"))?;
        drop((procs, netns));
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            role,
        })
    }

    /// The next line the child prints.
    pub(crate) fn line(&mut self) -> anyhow::Result<String> {
        match self.lines.recv_timeout(STEP_TIMEOUT) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!("the {} child said nothing for {STEP_TIMEOUT:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                bail!("the {} child exited ({status})", self.role)
            }
        }
    }

    /// Sends a command line and returns the answer line.
    pub(crate) fn cmd(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.line()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}
