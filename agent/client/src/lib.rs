//! The sidecar's side of the agent protocol: obtains this pod's restore map and writes entries.
//!
//! The node agent hands each sidecar, over a Unix socket, the file descriptor of a map that only
//! its own pod's cgroup hooks read ([`protocol`] describes the exchange). The sidecar then records,
//! for every loopback connection it opens to the app, which client the connection stands for; the
//! hooks make the app's `accept()`/`getpeername()` return that client. Holding the descriptor is
//! all the sidecar needs: no CAP_BPF, and no way to reach another pod's entries.
//!
//! The ordering that keeps it race-free is the caller's: bind the loopback socket, [`PodMap::insert`],
//! then connect; [`PodMap::remove`] once the connection is closed.
//!
//! [`FastPath`] obtains this pod's fast-path maps: the sidecar wires each connection's
//! LB-facing socket into them, and the kernel then sends the app's bytes out of it directly.
//!
//! [`steer`] hands the agent a listening socket, so that the pod's connections to the app's port
//! from outside the pod reach the sidecar while the app keeps listening on that port itself.

mod fast_path;
pub mod protocol;
mod trust;
pub mod wire;

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use nix::sys::{
    socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt},
    time::TimeVal,
};
use trueip_redirect_common::{ConnKey, RestoreValue, UdpFlowEntries};

pub use crate::fast_path::{FastPath, WireError};
use crate::protocol::{ErrorCode, ProtocolError, Request, Response};

/// How long [`PodMap::connect`] waits for the agent's answer: the agent answers in milliseconds,
/// and a sidecar must not hang at startup behind a wedged agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `bpf_map_update_elem` on a full hash map.
const E2BIG: i32 = 7;
/// `bpf_map_update_elem` on a full map of some other kinds; treated alike.
const ENOSPC: i32 = 28;
/// `bpf_map_delete_elem` of a missing key.
const ENOENT: i32 = 2;
/// `bpf_map_update_elem` with `BPF_NOEXIST` of a key already present.
const EEXIST: i32 = 17;
/// `bpf_map_update_elem` flag: create or replace.
const BPF_ANY: u64 = 0;
/// `bpf_map_update_elem` flag: create only.
const BPF_NOEXIST: u64 = 1;

/// This pod's restore map, obtained from the node agent.
#[derive(Debug)]
pub struct PodMap {
    map: Mutex<HashMap<MapData, ConnKey, RestoreValue>>,
    max_entries: u32,
}

/// One loopback connection from the sidecar to the app, named as the app's socket will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackConn {
    /// The upstream address the sidecar connects to (e.g. `127.0.0.1:8080` or `[::1]:8080`): the
    /// local address of the app's accepted socket.
    pub app: SocketAddr,
    /// The sidecar socket's bound local address: the peer of the app's accepted socket.
    pub sidecar: SocketAddr,
}

/// What the app should see for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The client from the PROXY header: what the app's `accept()`/`getpeername()` return.
    pub client: SocketAddr,
    /// The destination from the PROXY header: what the app's `getsockname()` returns when the
    /// agent attaches the getsockname hooks.
    pub original_dst: Option<SocketAddr>,
}

/// One UDP flow of a sidecar listener, named as the pod's recvmsg/sendmsg hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlow {
    /// The app's port (the upstream the flow's datagrams go to).
    pub app_port: u16,
    /// The sidecar's flow socket, bound on loopback: the source of the datagrams the app receives.
    pub sidecar: SocketAddr,
    /// The client from the PROXY header: what the app's `recvfrom()` returns, and where it replies.
    pub client: SocketAddr,
}

/// Why an entry could not be recorded; `Full` is separate because the sidecar's policy for it
/// (deliver unrestored, or refuse) is configurable.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// The pod map has no room left (its size is the agent's `--map-max-entries`).
    #[error("the pod's restore map is full")]
    Full,
    /// [`PodMap::claim`] found an entry for the same loopback connection already there.
    #[error("the pod's restore map already has an entry for this loopback connection")]
    Taken,
    /// Anything else.
    #[error(transparent)]
    Other(ClientError),
}

/// Failures talking to the agent or using the map.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent's socket could not be reached: the agent is not running here, or its socket is
    /// not mounted into the pod.
    #[error("cannot connect to the trueip agent at {} (is trueip-agent running on this node and its socket mounted?)", socket.display())]
    Connect {
        /// The agent's socket path.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending the request or receiving the answer failed (including a timeout).
    #[error("talking to the trueip agent at {}", socket.display())]
    Io {
        /// The agent's socket path.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent's answer does not follow the protocol.
    #[error("the trueip agent at {} answered something unexpected", socket.display())]
    Protocol {
        /// The agent's socket path.
        socket: PathBuf,
        /// What was wrong with it.
        #[source]
        source: ProtocolError,
    },
    /// The agent answered `OK` but did not pass the expected number of file descriptors.
    #[error("the trueip agent at {} sent {count} file descriptors instead of {expected}", socket.display())]
    MissingFd {
        /// The agent's socket path.
        socket: PathBuf,
        /// How many arrived.
        count: usize,
        /// How many the answer needs.
        expected: usize,
    },
    /// The socket at the agent's path could have been made by someone other than root (or this
    /// process's own user): talking to it could hand the sidecar an impostor's map.
    #[error("refusing the agent socket at {}: {why}", socket.display())]
    Untrusted {
        /// The agent's socket path.
        socket: PathBuf,
        /// What makes it untrustworthy.
        why: String,
    },
    /// The agent refused to hand out a map.
    #[error("the trueip agent refused ({code}): {message}")]
    Refused {
        /// The agent's reason code.
        code: ErrorCode,
        /// The agent's explanation.
        message: String,
    },
    /// A map operation failed (the kernel refused it, or the fd is not the expected map).
    #[error("{op} on the pod's restore map")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// Why it failed (boxed: aya's error is large, and callers embed this one in theirs).
        #[source]
        source: Box<MapError>,
    },
}

// === impl PodMap ===

impl PodMap {
    /// Connects to the agent's Unix socket and obtains this pod's restore map.
    ///
    /// Blocking (a few milliseconds; at most 10 s against a wedged agent); call it once at
    /// startup and share the result.
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        Self::request(socket, Request::GetMap)
    }

    /// Like [`connect`](Self::connect), for UDP listeners: the agent also makes sure the pod's
    /// UDP hooks are attached, and refuses if it runs without UDP support.
    pub fn connect_udp(socket: &Path) -> Result<Self, ClientError> {
        Self::request(socket, Request::GetUdpMap)
    }

    fn request(socket: &Path, request: Request) -> Result<Self, ClientError> {
        let (response, mut fds) = exchange(socket, request, None)?;
        match response {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            Response::Map { max_entries } => {
                let count = fds.len();
                let (Some(map_fd), true) = (fds.pop(), count == 1) else {
                    return Err(ClientError::MissingFd {
                        socket: socket.to_owned(),
                        count,
                        expected: 1,
                    });
                };
                Self::from_fd(map_fd, max_entries)
            }
            other @ (Response::Steering { .. } | Response::FastPath { .. }) => {
                Err(unexpected(socket, &other))
            }
        }
    }

    /// Wraps a pod map's fd, checking that it is a hash map of the expected key and value sizes.
    fn from_fd(fd: OwnedFd, max_entries: u32) -> Result<Self, ClientError> {
        let map_err = |source| ClientError::Map {
            op: "opening the fd",
            source: Box::new(source),
        };
        let data = MapData::from_fd(fd).map_err(map_err)?;
        let map = HashMap::try_from(Map::from_map_data(data).map_err(map_err)?).map_err(map_err)?;
        Ok(Self {
            map: Mutex::new(map),
            max_entries,
        })
    }

    /// Records that the loopback connection `conn` carries `restored` (call BEFORE connect()).
    ///
    /// An entry left behind for the same connection (a crashed sidecar, a reused port) is
    /// overwritten, so the app never sees a previous connection's client.
    pub fn insert(&self, conn: &LoopbackConn, restored: &Restored) -> Result<(), InsertError> {
        self.update(conn, restored, BPF_ANY)
    }

    /// Like [`insert`](Self::insert), but never overwrites: fails with [`InsertError::Taken`]
    /// when the map already has an entry for `conn`. For a caller that picks its own loopback
    /// ports and may bind one whose 4-tuple still belongs to a live connection: the kernel only
    /// refuses that at connect(), after the entry is written, and overwriting it would take the
    /// live connection's client away.
    pub fn claim(&self, conn: &LoopbackConn, restored: &Restored) -> Result<(), InsertError> {
        self.update(conn, restored, BPF_NOEXIST)
    }

    fn update(
        &self,
        conn: &LoopbackConn,
        restored: &Restored,
        flags: u64,
    ) -> Result<(), InsertError> {
        let key = ConnKey::from_socket_addrs(conn.app, conn.sidecar);
        let value = RestoreValue::new(restored.client, restored.original_dst);
        match self.lock().insert(key, value, flags) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e).is_some_and(|n| n == E2BIG || n == ENOSPC) => {
                Err(InsertError::Full)
            }
            Err(e) if errno(&e) == Some(EEXIST) => Err(InsertError::Taken),
            Err(source) => Err(InsertError::Other(ClientError::Map {
                op: "inserting an entry",
                source: Box::new(source),
            })),
        }
    }

    /// Removes every entry of the pod's map and returns how many there were. A sidecar calls
    /// this once at startup, before it listens: a predecessor that was killed (its entries'
    /// destructors never ran) may have left entries behind, and one of them would otherwise show
    /// a previous client to a new loopback connection that happens to reuse its 4-tuple.
    pub fn clear(&self) -> Result<usize, ClientError> {
        let mut map = self.lock();
        let keys: Vec<ConnKey> = map.keys().filter_map(Result::ok).collect();
        for key in &keys {
            match map.remove(key) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ENOENT) => {}
                Err(source) => {
                    return Err(ClientError::Map {
                        op: "clearing stale entries",
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(keys.len())
    }

    /// Forgets the connection (call when it closes). Forgetting an unknown connection is not an
    /// error.
    pub fn remove(&self, conn: &LoopbackConn) -> Result<(), ClientError> {
        let key = ConnKey::from_socket_addrs(conn.app, conn.sidecar);
        match self.lock().remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
            Err(source) => Err(ClientError::Map {
                op: "removing an entry",
                source: Box::new(source),
            }),
        }
    }

    /// Records the two entries of a UDP flow (see [`UdpFlowEntries`]): call after binding the
    /// flow socket and BEFORE sending the flow's first datagram to the app. Either both entries
    /// are written or neither.
    pub fn insert_udp_flow(&self, flow: &UdpFlow) -> Result<(), InsertError> {
        let entries = UdpFlowEntries::new(flow.app_port, flow.sidecar, flow.client);
        let mut map = self.lock();
        let mut insert = |(key, value)| match map.insert(key, value, BPF_ANY) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e).is_some_and(|n| n == E2BIG || n == ENOSPC) => {
                Err(InsertError::Full)
            }
            Err(source) => Err(InsertError::Other(ClientError::Map {
                op: "inserting a UDP flow entry",
                source: Box::new(source),
            })),
        };
        insert(entries.recv)?;
        let sent = insert(entries.send);
        if sent.is_err() {
            let _ = map.remove(&entries.recv.0);
        }
        sent
    }

    /// Forgets a UDP flow (call when it expires, before its socket closes). Forgetting an unknown
    /// flow is not an error.
    pub fn remove_udp_flow(&self, flow: &UdpFlow) -> Result<(), ClientError> {
        let entries = UdpFlowEntries::new(flow.app_port, flow.sidecar, flow.client);
        let mut map = self.lock();
        for key in [entries.recv.0, entries.send.0] {
            match map.remove(&key) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ENOENT) => {}
                Err(source) => {
                    return Err(ClientError::Map {
                        op: "removing a UDP flow entry",
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    /// The capacity of the map (the agent's `--map-max-entries`), for logs and metrics.
    pub const fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, ConnKey, RestoreValue>> {
        // The guarded handle has no state a panicking holder could have left half-updated.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Asks the agent to steer this pod's TCP connections to the app's `port` that come from outside
/// the pod to `listener` (a listening TCP socket of this process, in the pod's network namespace)
/// instead of to the app. Loopback connections still reach the app.
///
/// The kernel drops the steering entry when the listener is closed; connections then reach the
/// app again (or are refused, if the agent is configured fail-closed). Blocking (a few
/// milliseconds; at most 10 s against a wedged agent); call it once per listener at startup.
pub fn steer(socket: &Path, port: u16, listener: BorrowedFd<'_>) -> Result<(), ClientError> {
    let (response, _fds) = exchange(socket, Request::Steer { port }, Some(listener))?;
    match response {
        Response::Error { code, message } => Err(ClientError::Refused { code, message }),
        Response::Steering { port: steered } if steered == port => Ok(()),
        other => Err(unexpected(socket, &other)),
    }
}

/// Checks that the socket is the agent's (see [`trust`]), sends `request` (with `fd` attached)
/// and returns the answer and the descriptors that came with it.
fn exchange(
    socket: &Path,
    request: Request,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(Response, Vec<OwnedFd>), ClientError> {
    let io_err = |source: io::Error| ClientError::Io {
        socket: socket.to_owned(),
        source,
    };
    let connect_err = |source: nix::Error| ClientError::Connect {
        socket: socket.to_owned(),
        source: source.into(),
    };
    trust::check(socket)?;
    let conn = socket_fd().map_err(connect_err)?;
    let addr = UnixAddr::new(socket).map_err(connect_err)?;
    connect(conn.as_raw_fd(), &addr).map_err(connect_err)?;
    let timeout = TimeVal::new(AGENT_TIMEOUT.as_secs().cast_signed(), 0);
    setsockopt(&conn, sockopt::ReceiveTimeout, &timeout).map_err(|e| io_err(e.into()))?;
    setsockopt(&conn, sockopt::SendTimeout, &timeout).map_err(|e| io_err(e.into()))?;

    let attached: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    // An agent that refuses this caller on sight (not a pod, too many requests) answers and
    // closes before the request is sent: the send then fails, and the answer is there to read.
    let sent = wire::send(conn.as_fd(), &request.encode(), &attached, false);

    let mut buf = [0u8; protocol::MAX_MESSAGE_LEN];
    let received = match wire::receive(conn.as_fd(), &mut buf, false) {
        Ok(received) => received,
        Err(e) => return Err(io_err(sent.err().unwrap_or(e))),
    };
    let len = received.len;
    if len == 0 {
        return Err(io_err(sent.err().unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without answering",
            )
        })));
    }
    let protocol_err = |source| ClientError::Protocol {
        socket: socket.to_owned(),
        source,
    };
    if received.truncated {
        return Err(protocol_err(ProtocolError::Malformed { len }));
    }
    let response = Response::decode(&buf[..len]).map_err(protocol_err)?;
    Ok((response, received.fds))
}

/// An answer that does not fit the request.
fn unexpected(socket: &Path, response: &Response) -> ClientError {
    let line = String::from_utf8_lossy(&response.encode())
        .trim_end()
        .to_owned();
    ClientError::Protocol {
        socket: socket.to_owned(),
        source: ProtocolError::Unexpected(line),
    }
}

/// A `SOCK_SEQPACKET` Unix socket (the agent's socket type).
fn socket_fd() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// The errno of a failed map syscall.
fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        MapError::KeyNotFound => Some(ENOENT),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        os::fd::{AsFd, FromRawFd as _},
        thread::JoinHandle,
    };

    use nix::sys::socket::{Backlog, MsgFlags, accept, bind, listen, recv};

    use super::*;

    /// An agent stand-in at `<dir>/agent.sock` that answers one request with `reply` (and `fd`).
    fn fake_agent(dir: &Path, reply: &'static [u8], fd: Option<OwnedFd>) -> JoinHandle<Vec<u8>> {
        let path = dir.join("agent.sock");
        let listener = socket_fd().unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&listener, Backlog::new(1).unwrap()).unwrap();
        std::thread::spawn(move || {
            // SAFETY: accept just returned this descriptor; nothing else owns it.
            let conn = unsafe { OwnedFd::from_raw_fd(accept(listener.as_raw_fd()).unwrap()) };
            let mut request = [0u8; 64];
            let len = recv(conn.as_raw_fd(), &mut request, MsgFlags::empty()).unwrap();
            let attached: Vec<BorrowedFd<'_>> = fd.iter().map(AsFd::as_fd).collect();
            wire::send(conn.as_fd(), reply, &attached, false).unwrap();
            request[..len].to_vec()
        })
    }

    fn connect_to(dir: &Path) -> Result<PodMap, ClientError> {
        PodMap::connect(&dir.join("agent.sock"))
    }

    #[test]
    fn a_socket_someone_else_could_have_made_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        // Writable by others: anyone could have put the socket there.
        let dir = tempfile::tempdir().unwrap();
        let _agent = fake_agent(dir.path(), b"TRUEIP/1 OK max_entries=10\n", None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = connect_to(dir.path()).unwrap_err();
        assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");
        assert!(err.to_string().contains("writable by others"), "{err}");
        // Not a socket.
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join("agent.sock")).unwrap();
        let err = connect_to(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        // Owned by another user (needs root to hand it over).
        if nix::unistd::geteuid().is_root() {
            let dir = tempfile::tempdir().unwrap();
            let _agent = fake_agent(dir.path(), b"TRUEIP/1 OK max_entries=10\n", None);
            let nobody = Some(nix::unistd::Uid::from_raw(65534));
            nix::unistd::chown(&dir.path().join("agent.sock"), nobody, None).unwrap();
            let err = connect_to(dir.path()).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
            nix::unistd::chown(dir.path(), nobody, None).unwrap();
            let err = connect_to(dir.path()).unwrap_err();
            assert!(err.to_string().contains("directory"), "{err}");
        } else {
            eprintln!("SKIPPED (part): not root, cannot give a socket to another user");
        }
    }

    #[test]
    fn missing_agent_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_to(dir.path()).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("is trueip-agent running"), "{err}");
    }

    #[test]
    fn refusals_carry_the_agents_reason() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(
            dir.path(),
            b"TRUEIP/1 ERR conflict netns 3 is served to /a\n",
            None,
        );
        let err = connect_to(dir.path()).unwrap_err();
        assert_eq!(agent.join().unwrap(), Request::GetMap.encode());
        let ClientError::Refused { code, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(code, ErrorCode::Conflict);
        assert_eq!(message, "netns 3 is served to /a");
    }

    #[test]
    fn an_ok_without_a_map_fd_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(dir.path(), b"TRUEIP/1 OK max_entries=10\n", None);
        let err = connect_to(dir.path()).unwrap_err();
        agent.join().unwrap();
        assert!(
            matches!(err, ClientError::MissingFd { count: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn an_fd_that_is_not_a_map_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_map: OwnedFd = File::open("/dev/null").unwrap().into();
        let agent = fake_agent(dir.path(), b"TRUEIP/1 OK max_entries=10\n", Some(not_a_map));
        let err = connect_to(dir.path()).unwrap_err();
        agent.join().unwrap();
        assert!(matches!(err, ClientError::Map { .. }), "{err:?}");
    }

    #[test]
    fn garbage_and_other_versions_are_protocol_errors() {
        for reply in [
            &b"HTTP/1.1 400 Bad Request\r\n"[..],
            b"TRUEIP/9 OK max_entries=1\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let agent = fake_agent(dir.path(), reply, None);
            let err = connect_to(dir.path()).unwrap_err();
            agent.join().unwrap();
            assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        }
    }

    #[test]
    fn steer_sends_the_request_with_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(dir.path(), b"TRUEIP/1 OK steer port=8080\n", None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        steer(&dir.path().join("agent.sock"), 8080, listener.as_fd()).unwrap();
        assert_eq!(
            agent.join().unwrap(),
            Request::Steer { port: 8080 }.encode()
        );
    }

    #[test]
    fn steer_answers_for_another_request_are_protocol_errors() {
        for reply in [
            &b"TRUEIP/1 OK steer port=9090\n"[..],
            b"TRUEIP/1 OK max_entries=10\n",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let agent = fake_agent(dir.path(), reply, None);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let err = steer(&dir.path().join("agent.sock"), 8080, listener.as_fd()).unwrap_err();
            agent.join().unwrap();
            assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        }
    }

    #[test]
    fn a_fast_path_answer_needs_both_map_fds() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(dir.path(), b"TRUEIP/1 OK fast-path max_entries=10\n", None);
        let err = FastPath::connect(&dir.path().join("agent.sock")).unwrap_err();
        assert_eq!(agent.join().unwrap(), Request::GetFastPath.encode());
        assert!(
            matches!(
                err,
                ClientError::MissingFd {
                    count: 0,
                    expected: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        // An older agent does not know the request.
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent(
            dir.path(),
            b"TRUEIP/1 ERR bad-request GET-FAST-PATH\n",
            None,
        );
        let err = FastPath::connect(&dir.path().join("agent.sock")).unwrap_err();
        agent.join().unwrap();
        assert!(
            matches!(
                err,
                ClientError::Refused {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn errors_stay_small_enough_to_embed() {
        // Callers wrap these in their own errors; clippy's result_large_err starts at 128 bytes.
        assert!(
            size_of::<ClientError>() <= 64,
            "{}",
            size_of::<ClientError>()
        );
        assert!(size_of::<InsertError>() <= 64);
    }

    #[test]
    fn full_is_told_apart_from_other_failures() {
        let full = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(E2BIG),
        });
        assert_eq!(errno(&full), Some(E2BIG));
        assert_eq!(errno(&MapError::KeyNotFound), Some(ENOENT));
    }
}
