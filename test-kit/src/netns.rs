//! Network namespaces the tests create, and veth pairs between them and the host: named
//! `tip-<pid>-<n>-<role>` so that tests running in parallel (threads or processes) never clash,
//! and removed with what runs inside when dropped, also on panic. Namespaces left behind by a
//! killed run are recognised by their dead pid and removed by the next one.

use std::{
    fs::{self, File},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    names::{PREFIX, is_stale, unique_suffix},
    prereq::{find_program, skip},
    run,
};

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Any single `ip` invocation finishes well within this.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A network namespace this crate created; dropping it kills what runs inside and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with loopback up. `name` must start with [`PREFIX`] and a
    /// [`unique_suffix`] (`tip-<pid>-<n>-…`): only such names are found as a dead run's
    /// leftovers ([`remove_stale`]) and never clash with another run's.
    pub fn create(name: String) -> Result<Self> {
        if !name.starts_with(PREFIX) {
            bail!("network namespace {name:?}: the kit's names start with {PREFIX:?}");
        }
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace of its own (`tip-<pid>-<n>-<role>`), with loopback up; a
    /// [`Skip`](crate::prereq::Skip) when `ip` (iproute2) is missing.
    pub fn standalone(role: &str) -> Result<Self> {
        if find_program("ip").is_none() {
            return Err(skip("the `ip` command (iproute2) is not installed"));
        }
        remove_stale();
        Self::create(format!("{PREFIX}{}-{role}", unique_suffix()))
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount (`/run/netns/<name>`), for `nsenter --net=` and `setns()`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace. Sockets `f` creates belong to the
    /// namespace for their whole life, so they can be handed back and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let handle =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining network namespace {}", self.name))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Whether a TCP socket listens on `addr`'s port in this namespace (any local address of
    /// `addr`'s family), read from the kernel's socket table without connecting to it.
    pub fn is_listening(&self, addr: SocketAddr) -> Result<bool> {
        let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
        let text = self.run(|| fs::read_to_string(format!("/proc/thread-self/net/{table}")))??;
        let port = format!(":{:04X}", addr.port());
        // Columns: sl local_address rem_address st ...; st 0A is LISTEN.
        Ok(text.lines().skip(1).any(|line| {
            let mut cols = line.split_whitespace().skip(1);
            let local = cols.next().unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            local.ends_with(&port) && state == "0A"
        }))
    }

    /// Runs `ip -n <this namespace> args...`.
    pub fn ip<S: AsRef<str>>(&self, args: &[S]) -> Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend(args.iter().map(AsRef::as_ref));
        ip(&all)
    }

    /// Sets a sysctl of this namespace (a path below `/proc/sys/net/`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/net/{key}");
        self.run(|| fs::write(&path, value))?
            .with_context(|| format!("setting {path} = {value} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// A veth pair between the host and a namespace, with one IPv4 address on each end, so that the
/// host reaches the namespace from outside (not over its loopback), as a node reaches a pod.
#[derive(Debug)]
pub struct Veth {
    host: String,
    /// The host end's address.
    pub host_ip: IpAddr,
    /// The namespace end's address.
    pub pod_ip: IpAddr,
}

impl Veth {
    /// Creates the pair `tv<pid>-<n>` (host) ↔ `eth0` (in `netns`), addressed from
    /// 100.127.<n>.0/30 (shared address space, never routed beyond the machine).
    pub fn create(netns: &Netns) -> Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = (std::process::id() as usize * 7 + N.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let host = format!("tv{}-{n}", std::process::id() % 10_000);
        let (host_ip, pod_ip) = (format!("100.127.{n}.1"), format!("100.127.{n}.2"));
        ip(&[
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
        // From here on a failure removes the pair.
        let pair = Self {
            host: host.clone(),
            host_ip: host_ip.parse()?,
            pod_ip: pod_ip.parse()?,
        };
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        netns.ip(&["addr", "add", &format!("{pod_ip}/30"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(pair)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.host]) {
            run::note(&format!("could not delete veth {}: {e:#}", self.host));
        }
    }
}

/// Runs `ip args...`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run::output(&mut cmd, IP_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes namespaces left behind by runs that were killed before they could clean up.
pub fn remove_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(&name) {
            remove_netns(&name);
        }
    }
}

/// Kills every process in the namespace, then deletes it. Errors are reported, not raised:
/// this runs in `Drop`.
fn remove_netns(name: &str) {
    let mut pids = Command::new("ip");
    pids.args(["netns", "pids", name]);
    if let Ok(out) = run::output(&mut pids, IP_TIMEOUT) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                // Already gone is fine.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        run::note(&format!("could not delete network namespace {name}: {e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_dead_processes_are_stale() {
        assert!(!is_stale(&format!("{PREFIX}{}-client", unique_suffix())));
        assert!(is_stale(&format!("{PREFIX}{}-0-pod", u32::MAX)));
        assert!(!is_stale("cni-1234"));
        assert!(!is_stale("tip-notapid-lb"));
    }
}
