//! This test binary run again in another role — an app, a sidecar, an attacker — placed in a
//! cgroup and a network namespace and as another user, as a container runtime starts a
//! container's process, and spoken to by lines. Unlike [`Launch`](crate::Launch), which runs
//! other programs through `ip netns exec`, the child joins its cgroup and namespace itself
//! between fork and exec (no shell in between), so it can drop to another uid after both.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// How long a child may stay silent when a line is expected, before the test fails instead of
/// hanging.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and as whom a child runs.
#[derive(Debug, Default)]
pub struct Placement<'a> {
    /// The cgroup it joins before anything else (so its sockets belong to it).
    pub cgroup: Option<&'a Path>,
    /// The network namespace it enters.
    pub netns: Option<&'a Netns>,
    /// Drop to this uid/gid after joining (an unprivileged sidecar).
    pub uid: Option<u32>,
}

/// A child process of this test binary in one of its roles (an app, a sidecar, an attacker),
/// spoken to by lines on its stdin and stdout; killed when dropped.
#[derive(Debug)]
pub struct RoleChild {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    role: &'static str,
}

impl RoleChild {
    /// Runs this test binary as `role` with `args`, placed as asked. The cgroup is joined and
    /// the namespace entered between fork and exec, so the program starts inside both, as a
    /// container runtime would start it.
    pub fn spawn(role: &'static str, args: &[&str], place: &Placement<'_>) -> Result<Self> {
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
    pub fn line(&mut self) -> Result<String> {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                bail!("the {} child said nothing for {LINE_TIMEOUT:?}", self.role)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                bail!("the {} child exited ({status})", self.role)
            }
        }
    }

    /// Sends a command line and returns the answer line.
    pub fn cmd(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.line()
    }
}

impl Drop for RoleChild {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}
