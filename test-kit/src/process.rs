//! Processes the tests start — peers, the sidecar, the agent — and one-off commands, all with
//! bounded waits. A started process is killed with its whole process group when its [`Proc`]
//! is dropped.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::Write,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use crate::{
    cgroup::Cgroup,
    netns::Netns,
    run::{POLL, wait_for, wait_with_deadline},
};

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How many lines of a process's output an error quotes.
const LOG_TAIL: usize = 25;

/// Holds the child until the parent has put it into its cgroup, then execs the command. The
/// cgroup is joined from outside because `ip netns exec` remounts `/sys`, and it must be joined
/// before the program creates a socket (a socket keeps the cgroup it was created in).
const CGROUP_WAIT: &str = r#"read -r _ && exec "$@" </dev/null"#;

/// A process to start: program, arguments, environment, and optionally the network namespace
/// and the cgroup v2 it runs in.
#[derive(Debug)]
pub struct Launch<'a> {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    netns: Option<&'a Netns>,
    cgroup: Option<&'a Cgroup>,
}

impl<'a> Launch<'a> {
    /// A process called `name` in logs and errors (and `<name>.log` on disk) that runs `program`.
    pub fn new(name: &str, program: impl AsRef<OsStr>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            cgroup: None,
        }
    }

    /// Renames it (the name of its log file, too).
    #[must_use]
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Appends arguments.
    #[must_use]
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the process.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the process inside `netns` (default: the caller's namespace).
    #[must_use]
    pub fn netns(mut self, netns: &'a Netns) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Puts the process into `cgroup` before it runs a single instruction of the program.
    #[must_use]
    pub fn cgroup(mut self, cgroup: &'a Cgroup) -> Self {
        self.cgroup = Some(cgroup);
        self
    }

    /// The command as a user would type it: the program's file name and the arguments, without
    /// the namespace and cgroup plumbing.
    pub fn command_line(&self) -> String {
        let program = Path::new(&self.program)
            .file_name()
            .unwrap_or(&self.program);
        std::iter::once(program)
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts the process, its stdout and stderr going to `<log_dir>/<name>.log`.
    pub fn spawn(self, log_dir: &Path) -> Result<Proc> {
        let log = log_dir.join(format!("{}.log", self.name));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = self.netns {
            argv.extend(["ip", "netns", "exec", ns.name()].map(OsString::from));
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        let mut cmd = match self.cgroup {
            Some(_) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", CGROUP_WAIT, "trueip-cgroup-wait"])
                    .args(&argv);
                sh.stdin(Stdio::piped());
                sh
            }
            None => {
                let mut direct = Command::new(&argv[0]);
                direct.args(&argv[1..]).stdin(Stdio::null());
                direct
            }
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().context("duplicating the log file")?)
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}: {}", self.name, self.command_line()))?;
        let mut proc = Proc {
            name: self.name,
            child,
            log,
            killed: false,
        };
        if let Some(cgroup) = self.cgroup {
            cgroup.add(proc.pid())?;
            let mut release = proc.child.stdin.take().context("the wrapper's stdin")?;
            release
                .write_all(b"go\n")
                .with_context(|| format!("releasing {} into its cgroup", proc.name))?;
        }
        Ok(proc)
    }
}

/// A running process, killed with its process group on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Killed with its group and reaped: its pid (the group's id) may belong to another
    /// process by now, so it gets no signal any more.
    killed: bool,
}

impl Proc {
    /// Waits until this process listens on `addr` in `netns`; fails early if it exits.
    pub fn wait_listening(
        &mut self,
        netns: &Netns,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        let what = format!("{} to listen on {addr}", self.name());
        wait_for(&what, timeout, || {
            self.ensure_running()?;
            Ok(netns.is_listening(addr)?.then_some(()))
        })
    }

    /// The name it was launched with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of its output, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Fails if it has exited: the first line of the error quotes its last line of output,
    /// the following ones the tail of its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait().context("polling a child")? {
            None => Ok(()),
            Some(status) => {
                let tail = self.log_tail();
                bail!(
                    "{} exited ({status}): {}\n--- {} ---\n{tail}",
                    self.name,
                    tail.lines().last().unwrap_or("(no output)"),
                    self.log.display()
                )
            }
        }
    }

    /// Waits until a line of its output contains every one of `needles`, and returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let what = format!("{} to log a line with {needles:?}", self.name);
        wait_for(&what, timeout, || {
            Ok(self
                .log()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_owned))
        })
        .with_context(|| format!("its output so far:\n{}", self.log_tail()))
    }

    /// Stops it: SIGTERM to the process group, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                sleep(POLL);
            }
        }
        // Also whatever it forked (nginx workers) that outlived it.
        self.kill();
    }

    /// Sends SIGTERM to it and its process group, and returns at once.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Waits until it exits; `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_with_deadline(&mut self.child, timeout)
    }

    /// Kills it and its process group at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        // Reaping cannot fail for a child that was spawned and not yet waited for.
        let _ = self.child.wait();
        self.killed = true;
    }

    fn signal(&self, signal: Signal) {
        if self.killed {
            return;
        }
        if let Ok(pgid) = i32::try_from(self.child.id()).map(Pid::from_raw) {
            // ESRCH means it is gone already, which is the goal.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
