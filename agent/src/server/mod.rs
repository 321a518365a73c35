//! The Unix socket sidecars ask for their pod's map, or for steering to their listener (protocol:
//! `trueip_agent_client::protocol`).
//!
//! Requests are rare (one per sidecar start) and quick, so one thread answers them in turn; a
//! caller that sends nothing is dropped after [`REQUEST_TIMEOUT`].

use std::{
    fs,
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::{FileTypeExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use nix::{
    cmsg_space,
    sys::{
        socket::{
            AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
            SockType, UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, setsockopt,
            socket, sockopt,
        },
        time::TimeVal,
    },
};
use trueip_agent_client::protocol::{self, ErrorCode, ProtocolError, Request, Response};

use crate::{
    config::{PodCgroupMode, WhenGone},
    fast_path::FastPathError,
    identify::{self, Caller, IdentifyError},
    metrics::{AgentMetrics, RequestKind},
    pods::{Registry, ServeError, error_chain},
    programs::ProgramsError,
    steer::SteerError,
};

/// How long a connected caller has to send its request, and the agent to send the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    /// Another process already answers on the socket path.
    #[error("another agent is already listening on {0}")]
    InUse(PathBuf),
    /// A step of setting up the socket failed.
    #[error("{op} {path}")]
    Setup {
        /// What was attempted.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Creates the listening socket at `path` with permissions `mode`, replacing a stale socket file
/// left by a previous agent.
pub(crate) fn bind_socket(path: &Path, mode: u32) -> Result<OwnedFd, ServerError> {
    let setup = |op| {
        move |source: io::Error| ServerError::Setup {
            op,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(setup("creating the directory of"))?;
    }
    let addr = UnixAddr::new(path).map_err(|e| setup("naming")(e.into()))?;
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let probe = seqpacket().map_err(setup("probing"))?;
        if connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        fs::remove_file(path).map_err(setup("removing the stale socket"))?;
    }
    let listener = seqpacket().map_err(setup("creating"))?;
    bind(listener.as_raw_fd(), &addr).map_err(|e| setup("binding")(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(setup("setting permissions of"))?;
    listen(&listener, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| setup("listening on")(e.into()))?;
    Ok(listener)
}

/// What answering a request needs.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    /// The pods.
    pub(crate) registry: Arc<Mutex<Registry>>,
    /// The cgroup2 mount.
    pub(crate) cgroup_root: PathBuf,
    /// How a caller's pod cgroup is found.
    pub(crate) pod_cgroup: PodCgroupMode,
    /// What steered connections get while a sidecar's listener is gone.
    pub(crate) steer_when_gone: WhenGone,
    /// Where requests and their results are counted.
    pub(crate) metrics: Arc<AgentMetrics>,
}

impl Server {
    /// Answers requests on `listener` until the process exits.
    pub(crate) fn run(&self, listener: &OwnedFd) {
        loop {
            match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
                    let conn = unsafe { OwnedFd::from_raw_fd(raw) };
                    self.handle(&conn);
                }
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => {}
                Err(e) => {
                    tracing::error!(error = %e, "accepting on the agent socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Answers one connection.
    fn handle(&self, conn: &OwnedFd) {
        let timeout = TimeVal::new(REQUEST_TIMEOUT.as_secs().cast_signed(), 0);
        let timeouts = setsockopt(conn, sockopt::ReceiveTimeout, &timeout)
            .and_then(|()| setsockopt(conn, sockopt::SendTimeout, &timeout));
        if let Err(e) = timeouts {
            tracing::warn!(error = %e, "could not set timeouts on a sidecar connection");
            return;
        }
        let mut buf = [0u8; protocol::MAX_MESSAGE_LEN];
        let (len, mut fds) = match receive(conn.as_fd(), &mut buf) {
            Ok((0, _)) => return,
            Ok(received) => received,
            Err(e) => {
                tracing::warn!(error = %e, "no request from a sidecar connection");
                return;
            }
        };
        let request = if len > buf.len() {
            Err(ProtocolError::Malformed { len })
        } else {
            Request::decode(&buf[..len])
        };
        let result = match request {
            Ok(Request::GetMap) => self.get_map(conn.as_fd()),
            Ok(Request::GetUdpMap) => self.get_udp_map(conn.as_fd()),
            Ok(Request::GetFastPath) => self.get_fast_path(conn.as_fd()),
            Ok(Request::Steer { port }) => match (fds.pop(), fds.is_empty()) {
                (Some(listener), true) => self.steer(conn.as_fd(), port, listener.as_fd()),
                _ => {
                    let e = ProtocolError::Unexpected(format!(
                        "STEER needs exactly one listening socket attached, got {}",
                        fds.len() + 1
                    ));
                    tracing::warn!(error = %e, "bad request on the agent socket");
                    self.metrics
                        .request(RequestKind::Steer, Err(ErrorCode::BadRequest));
                    reply_error(conn.as_fd(), ErrorCode::BadRequest, &e)
                }
            },
            Err(e) => {
                let code = match e {
                    ProtocolError::Version { .. } => ErrorCode::Version,
                    _ => ErrorCode::BadRequest,
                };
                tracing::warn!(error = %e, "bad request on the agent socket");
                self.metrics.request(RequestKind::Invalid, Err(code));
                reply_error(conn.as_fd(), code, &e)
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not answer a sidecar");
        }
    }

    /// Identifies the caller of a `kind` request, or counts and answers why not (`Err` then
    /// holds how sending that went).
    fn identify(&self, conn: BorrowedFd<'_>, kind: RequestKind) -> Result<Caller, io::Result<()>> {
        identify::caller(conn, &self.cgroup_root, self.pod_cgroup).map_err(|e| {
            tracing::warn!(error = %error_chain(&e), "could not identify a caller");
            let code = match e {
                IdentifyError::Netns { .. } | IdentifyError::Sockopt { .. } => ErrorCode::Internal,
                _ => ErrorCode::Identify,
            };
            self.metrics.request(kind, Err(code));
            reply_error(conn, code, &e)
        })
    }

    /// Identifies the caller and steers its pod's connections to `port` to `listener`.
    fn steer(&self, conn: BorrowedFd<'_>, port: u16, listener: BorrowedFd<'_>) -> io::Result<()> {
        let caller = match self.identify(conn, RequestKind::Steer) {
            Ok(caller) => caller,
            Err(answered) => return answered,
        };
        let steered = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .steer(&caller, port, listener, self.steer_when_gone);
        match steered {
            Ok(attached) => {
                tracing::info!(
                    pid = caller.pid,
                    pod = %caller.pod.path.display(),
                    netns = caller.netns,
                    port,
                    when_gone = ?self.steer_when_gone,
                    attached,
                    "steering the pod's connections to a sidecar listener"
                );
                self.metrics.request(RequestKind::Steer, Ok(()));
                send(conn, &Response::Steering { port }.encode(), &[])
            }
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    pid = caller.pid,
                    netns = caller.netns,
                    port,
                    "refused to steer"
                );
                self.metrics
                    .request(RequestKind::Steer, Err(error_code(&e)));
                reply_error(conn, error_code(&e), &e)
            }
        }
    }

    /// `GET-MAP udp`: as [`get_map`](Self::get_map) when this agent attaches the UDP hooks; a
    /// refusal otherwise, so that the sidecar does not write entries no hook reads.
    fn get_udp_map(&self, conn: BorrowedFd<'_>) -> io::Result<()> {
        let serves_udp = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serves_udp();
        if serves_udp {
            return self.get_map(conn);
        }
        let e = io::Error::other("this agent does not attach the UDP hooks (start it with --udp)");
        tracing::warn!(error = %e, "refused a UDP map request");
        self.metrics
            .request(RequestKind::GetMap, Err(ErrorCode::BadRequest));
        reply_error(conn, ErrorCode::BadRequest, &e)
    }

    /// Identifies the caller and sends it its pod's fast-path maps (socket map, then peers
    /// map), or why not.
    fn get_fast_path(&self, conn: BorrowedFd<'_>) -> io::Result<()> {
        let caller = match self.identify(conn, RequestKind::FastPath) {
            Ok(caller) => caller,
            Err(answered) => return answered,
        };
        let served = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fast_path(&caller);
        match served {
            Ok(maps) => {
                tracing::info!(
                    pid = caller.pid,
                    pod = %caller.pod.path.display(),
                    netns = caller.netns,
                    max_entries = maps.max_entries,
                    "handed the pod's fast-path maps to a sidecar"
                );
                self.metrics.request(RequestKind::FastPath, Ok(()));
                let bytes = Response::FastPath {
                    max_entries: maps.max_entries,
                }
                .encode();
                send(
                    conn,
                    &bytes,
                    &[maps.sockets.fd().as_fd(), maps.peers.fd().as_fd()],
                )
            }
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    pid = caller.pid,
                    netns = caller.netns,
                    "refused the fast path"
                );
                self.metrics
                    .request(RequestKind::FastPath, Err(error_code(&e)));
                reply_error(conn, error_code(&e), &e)
            }
        }
    }

    /// Identifies the caller and sends it its pod's map, or why not.
    fn get_map(&self, conn: BorrowedFd<'_>) -> io::Result<()> {
        let caller = match self.identify(conn, RequestKind::GetMap) {
            Ok(caller) => caller,
            Err(answered) => return answered,
        };
        let served = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serve(&caller);
        match served {
            Ok(served) => {
                tracing::info!(
                    pid = caller.pid,
                    cgroup = %caller.cgroup,
                    pod = %caller.pod.path.display(),
                    netns = caller.netns,
                    max_entries = served.max_entries,
                    "handed a pod map to a sidecar"
                );
                self.metrics.request(RequestKind::GetMap, Ok(()));
                let bytes = Response::Map {
                    max_entries: served.max_entries,
                }
                .encode();
                send(conn, &bytes, &[served.map.fd().as_fd()])
            }
            Err(e) => {
                tracing::warn!(
                    error = %error_chain(&e),
                    pid = caller.pid,
                    cgroup = %caller.cgroup,
                    netns = caller.netns,
                    "refused a sidecar"
                );
                self.metrics
                    .request(RequestKind::GetMap, Err(error_code(&e)));
                reply_error(conn, error_code(&e), &e)
            }
        }
    }
}

/// The protocol's reason code for a failure to serve.
fn error_code(e: &ServeError) -> ErrorCode {
    match e {
        ServeError::Conflict { .. } => ErrorCode::Conflict,
        ServeError::Steer(SteerError::Listener(_)) => ErrorCode::BadRequest,
        ServeError::TooManyPods
        | ServeError::Map { .. }
        | ServeError::Programs(ProgramsError::Attach { .. } | ProgramsError::NoLink { .. })
        | ServeError::Steer(
            SteerError::Program { .. } | SteerError::Map { .. } | SteerError::Object(_),
        ) => ErrorCode::Kernel,
        ServeError::FastPath(
            FastPathError::Program { .. } | FastPathError::Object(_) | FastPathError::Map(_),
        ) => ErrorCode::Kernel,
        ServeError::Programs(_) | ServeError::Steer(_) | ServeError::FastPath(_) => {
            ErrorCode::Internal
        }
    }
}

/// Receives one message into `buf`, and the descriptors attached to it (SCM_RIGHTS). The length
/// is the message's full length (MSG_TRUNC), which may exceed `buf`.
fn receive(conn: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_TRUNC | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for raw in raw {
                // SAFETY: the kernel just installed `raw` in this process for this message
                // (SCM_RIGHTS); nothing else owns it, so wrapping it closes it exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Sends an error answer carrying `e` and its sources.
fn reply_error(conn: BorrowedFd<'_>, code: ErrorCode, e: &dyn std::error::Error) -> io::Result<()> {
    let message = error_chain(e);
    send(conn, &Response::Error { code, message }.encode(), &[])
}

/// Sends one message, with `fds` attached (SCM_RIGHTS), in order.
fn send(conn: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}
