//! Who is asking: from a connected Unix socket to the caller's pod cgroup and network namespace,
//! using only what the kernel says (SO_PEERCRED, /proc), never what the caller claims.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
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

/// A network namespace as the filesystem names it (`/proc/<pid>/ns/net`: device and inode),
/// cheap to read for every connection, before the caller is identified in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    fn of_metadata(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The namespace of `/proc/<pid>/ns/net`.
    fn of_pid(pid: i32) -> io::Result<Self> {
        std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| Self::of_metadata(&m))
    }
}

/// The node's network namespaces: the agent's own (it runs with `hostNetwork`) and PID 1's
/// (with `hostPID`, the node's init). A caller in either is not a pod — an unprivileged process
/// on the node or a `hostNetwork` pod — and steering or restoring there would act on the node.
#[derive(Debug, Clone)]
pub(crate) struct NodeNamespaces(Vec<NetnsId>);

impl NodeNamespaces {
    /// Reads the agent's and PID 1's network namespaces; the agent's own must be readable.
    pub(crate) fn detect() -> io::Result<Self> {
        let own = NetnsId::of_metadata(&std::fs::metadata("/proc/self/ns/net")?);
        let mut ids = vec![own];
        // Without hostPID, /proc/1 is the agent's own container init: its namespace is the
        // agent's too, so nothing is lost when it differs or cannot be read.
        if let Ok(init) = NetnsId::of_pid(1)
            && init != own
        {
            ids.push(init);
        }
        Ok(Self(ids))
    }

    fn contains(&self, id: NetnsId) -> bool {
        self.0.contains(&id)
    }
}

/// The process at the other end of a connection, as the kernel named it when it connected, and
/// pinned: the pidfd refers to that very process, so a pid that is reused afterwards is noticed
/// ([`Peer::is_gone`]) rather than taken for the caller.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its process id in the agent's PID namespace.
    pub(crate) pid: i32,
    /// Its user id (for logs).
    pub(crate) uid: u32,
    /// Its network namespace when the connection was accepted.
    pub(crate) netns: NetnsId,
    /// Its pod cgroup (relative to the cgroup2 root) when the connection was accepted: the key
    /// of per-caller limits. Not the network namespace: an unprivileged user may create as many
    /// of those as it likes (`unshare -Urn`), but not cgroups below `kubepods`.
    pub(crate) pod: String,
    pidfd: OwnedFd,
}

impl Peer {
    /// Whether the process has exited (its pid may name another process by now).
    pub(crate) fn is_gone(&self) -> bool {
        has_exited(&self.pidfd)
    }
}

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

/// Why the caller could not be identified, or is not one the agent serves.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentifyError {
    /// The socket gave no usable credentials.
    #[error(
        "no peer credentials on the socket (is the caller in another PID namespace? run the agent with hostPID)"
    )]
    NoPid,
    /// The kernel gave no pidfd for the caller (SO_PEERPIDFD needs Linux 6.5): without one, a
    /// pid reused between the request and its answer could hand one pod's map to another.
    #[error("the kernel cannot pin the caller's identity (SO_PEERPIDFD, Linux 6.5 or later)")]
    NoPidfd(#[source] nix::Error),
    /// A socket option failed.
    #[error("reading {what} of the caller")]
    Sockopt {
        /// Which option.
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The caller lives in the node's network namespace.
    #[error(
        "pid {pid} (uid {uid}) is in the node's network namespace: the agent serves pods in \
         their own network namespace only (not processes on the node, not hostNetwork pods)"
    )]
    NodeNetns {
        /// The caller.
        pid: i32,
        /// Its user.
        uid: u32,
    },
    /// The caller moved to another network namespace after it connected.
    #[error("pid {pid} changed its network namespace after it connected")]
    NetnsChanged {
        /// The caller.
        pid: i32,
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

impl IdentifyError {
    /// Whether this says "not a caller the agent serves" rather than "could not find out".
    pub(crate) const fn is_denial(&self) -> bool {
        matches!(
            self,
            Self::NoPidfd(_)
                | Self::NodeNetns { .. }
                | Self::NetnsChanged { .. }
                | Self::Gone { .. }
                | Self::Cgroup(CgroupError::NotAPod { .. })
        )
    }
}

/// Names and pins the process at the other end of a just-accepted `conn`, and refuses it when
/// it is in the node's network namespace or (by `mode`) not in a pod cgroup. Cheap:
/// credentials, a pidfd, one `stat` and one small /proc read.
pub(crate) fn peer(
    conn: BorrowedFd<'_>,
    node: &NodeNamespaces,
    mode: PodCgroupMode,
) -> Result<Peer, IdentifyError> {
    let creds =
        getsockopt(&conn, sockopt::PeerCredentials).map_err(|source| IdentifyError::Sockopt {
            what: "SO_PEERCRED",
            source,
        })?;
    let pid = creds.pid();
    if pid <= 0 {
        return Err(IdentifyError::NoPid);
    }
    let pidfd = getsockopt(&conn, sockopt::PeerPidfd).map_err(IdentifyError::NoPidfd)?;
    // A caller that is gone has no namespace or cgroup left to read: say that, not the symptom.
    let gone_or = |e: IdentifyError| {
        if has_exited(&pidfd) {
            IdentifyError::Gone { pid }
        } else {
            e
        }
    };
    let netns =
        NetnsId::of_pid(pid).map_err(|source| gone_or(IdentifyError::Netns { pid, source }))?;
    let cgroup = cgroup::of_pid(pid).map_err(|e| gone_or(e.into()))?;
    let pod = cgroup::pod_cgroup_of(&cgroup, mode);
    if node.contains(netns) {
        return Err(IdentifyError::NodeNetns {
            pid,
            uid: creds.uid(),
        });
    }
    let peer = Peer {
        pid,
        uid: creds.uid(),
        netns,
        pod: pod?,
        pidfd,
    };
    if peer.is_gone() {
        return Err(IdentifyError::Gone { pid });
    }
    if node.contains(netns) {
        return Err(IdentifyError::NodeNetns { pid, uid: peer.uid });
    }
    Ok(peer)
}

/// Identifies the pod of `peer`: its pod cgroup and network namespace, read from /proc and
/// trusted only if the pinned process is still alive afterwards (so the pid was not reused)
/// and still in the namespace it connected from.
pub(crate) fn caller(
    peer: &Peer,
    cgroup_root: &Path,
    mode: PodCgroupMode,
) -> Result<Caller, IdentifyError> {
    let pid = peer.pid;
    if peer.is_gone() {
        return Err(IdentifyError::Gone { pid });
    }
    let cgroup = cgroup::of_pid(pid)?;
    let pod = cgroup::open(cgroup_root, &cgroup::pod_cgroup_of(&cgroup, mode)?)?;
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|source| IdentifyError::Netns { pid, source })?;
    let opened = ns
        .metadata()
        .map_err(|source| IdentifyError::Netns { pid, source })?;
    if NetnsId::of_metadata(&opened) != peer.netns {
        return Err(IdentifyError::NetnsChanged { pid });
    }
    let netns = ns
        .try_clone()
        .and_then(|dup| netns_cookie(dup.into()))
        .map_err(|source| IdentifyError::Netns { pid, source })?;

    if peer.is_gone() {
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
