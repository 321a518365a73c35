//! Who is asking: from a connected Unix socket to the caller's pod cgroup and network namespace,
//! using only what the kernel says (SO_PEERCRED, /proc), never what the caller claims.

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::Path,
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, getsockopt, socket, sockopt},
};

use crate::{
    cgroup::{self, CgroupError, PodCgroup},
    config::PodCgroupMode,
};

/// The pod a caller belongs to.
#[derive(Debug)]
pub(crate) struct Caller {
    /// The caller's process id (for logs).
    pub(crate) pid: i32,
    /// The caller's own cgroup, relative to the cgroup2 root (for logs).
    pub(crate) cgroup: String,
    /// The pod cgroup the programs attach to.
    pub(crate) pod: PodCgroup,
    /// The cookie of the caller's network namespace: the key of its pod map.
    pub(crate) netns: u64,
    /// The caller's network namespace (`/proc/<pid>/ns/net`), where steering attaches.
    pub(crate) netns_file: File,
}

/// Why the caller could not be identified.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentifyError {
    /// The socket gave no usable credentials.
    #[error(
        "no peer credentials on the socket (is the caller in another PID namespace? run the agent with hostPID)"
    )]
    NoPid,
    /// A socket option failed.
    #[error("reading {what} of the caller")]
    Sockopt {
        /// Which option.
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The caller's cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The caller's network namespace.
    #[error("reading the network namespace of pid {pid}")]
    Netns {
        /// The caller.
        pid: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The caller exited while being identified: its pid may already name another process.
    #[error("the caller (pid {pid}) exited while it was being identified")]
    Gone {
        /// The caller.
        pid: i32,
    },
}

/// Identifies the process at the other end of `conn`.
pub(crate) fn caller(
    conn: BorrowedFd<'_>,
    cgroup_root: &Path,
    mode: PodCgroupMode,
) -> Result<Caller, IdentifyError> {
    let creds =
        getsockopt(&conn, sockopt::PeerCredentials).map_err(|source| IdentifyError::Sockopt {
            what: "SO_PEERCRED",
            source,
        })?;
    let pid = creds.pid();
    if pid <= 0 {
        return Err(IdentifyError::NoPid);
    }
    // A pidfd pins the identity of the caller: if the process is still alive once everything
    // has been read from /proc/<pid>, the pid was not reused in the meantime. Kernels before 6.5
    // lack SO_PEERPIDFD; the caller is then blocked waiting for the answer, which makes reuse of
    // its pid practically impossible anyway.
    let pidfd = getsockopt(&conn, sockopt::PeerPidfd).ok();

    let cgroup = cgroup::of_pid(pid)?;
    let pod = cgroup::open(cgroup_root, &cgroup::pod_cgroup_of(&cgroup, mode)?)?;
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| IdentifyError::Netns { pid, source })?;
    let netns = ns
        .try_clone()
        .and_then(|dup| netns_cookie(dup.into()))
        .map_err(|source| IdentifyError::Netns { pid, source })?;

    if pidfd.as_ref().is_some_and(has_exited) {
        return Err(IdentifyError::Gone { pid });
    }
    Ok(Caller {
        pid,
        cgroup,
        pod,
        netns,
        netns_file: ns,
    })
}

/// Whether the process behind a pidfd has exited (a pidfd polls readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

/// The cookie of the network namespace `ns` (an open `/proc/<pid>/ns/net`).
///
/// Entering a network namespace changes the calling thread for good, so this happens on a
/// short-lived thread of its own: it enters `ns`, opens a socket there and reads the socket's
/// `SO_NETNS_COOKIE`.
pub(crate) fn netns_cookie(ns: OwnedFd) -> io::Result<u64> {
    std::thread::Builder::new()
        .name("netns-cookie".into())
        .spawn(move || -> io::Result<u64> {
            setns(&ns, CloneFlags::CLONE_NEWNET)?;
            let sock = socket(
                AddressFamily::Unix,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            socket_netns_cookie(sock.as_fd())
        })?
        .join()
        .map_err(|_| io::Error::other("the netns thread panicked"))?
}

/// `SO_NETNS_COOKIE` of a socket: the cookie of the network namespace it lives in, the value
/// the eBPF programs get from `bpf_get_netns_cookie`. (nix has no wrapper for this option.)
pub(crate) fn socket_netns_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is an open socket; the kernel writes at most `len` bytes to `cookie`, a live
    // u64 of exactly that size, and stores the written size in `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<u64>() {
        return Err(io::Error::other(
            "SO_NETNS_COOKIE returned an unexpected size",
        ));
    }
    Ok(cookie)
}
