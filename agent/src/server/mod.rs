//! The Unix socket sidecars ask for their pod's map, or for steering to their listener (protocol:
//! `trueip_agent_client::protocol`).
//!
//! The socket is reachable from the node, so every caller is hostile until it is shown to be a
//! pod. One thread serves every connection without blocking on any of them:
//!
//! * **accept**: the caller is named and pinned by the kernel (SO_PEERCRED, a pidfd) and refused
//!   at once when it lives in the node's network namespace, has exceeded its rate or holds too
//!   many connections ([`limits`]);
//! * **wait**: its connection waits, polled with everyone else's, until its one request arrives
//!   or [`REQUEST_DEADLINE`] passes — an idle or slow caller delays nobody;
//! * **serve**: the request is answered, descriptors travel only where the request takes one
//!   (STEER), and every descriptor a caller sent is closed off this thread ([`reaper`]).

mod limits;
mod reaper;
mod socket;

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{Shutdown, SockFlag, accept4, shutdown},
};
use trueip_agent_client::{
    protocol::{self, ErrorCode, ProtocolError, Request, Response},
    wire,
};
use trueip_telemetry::error_chain;

use self::limits::{Exceeded, Limits, LogLimiter};
pub(crate) use self::{reaper::Reaper, socket::bind_socket};
use crate::{
    cgroup::CgroupError,
    config::{PodCgroupMode, WhenGone},
    fast_path::FastPathError,
    identify::{self, Caller, IdentifyError, NodeNamespaces, Peer},
    metrics::{AgentMetrics, Refusal, RequestKind},
    pods::{Registry, ServeError},
    programs::ProgramsError,
    steer::SteerError,
};

/// How long a caller has, from connecting, to send its request. A sidecar sends it at once.
const REQUEST_DEADLINE: Duration = Duration::from_secs(1);

/// Connections accepted in one go before the waiting ones are looked at again.
const ACCEPT_BATCH: usize = 64;
/// Messages read off a refused connection before it is closed: a caller sends one request; the
/// bound keeps one that queued many from holding the serving thread.
const MAX_UNREAD: usize = 16;

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
    /// The node's network namespaces, whose processes are refused.
    pub(crate) node: NodeNamespaces,
    /// Where callers' descriptors are closed.
    pub(crate) reaper: Reaper,
}

/// A connection whose request is awaited.
#[derive(Debug)]
struct Waiting {
    conn: OwnedFd,
    peer: Peer,
    deadline: Instant,
}

/// The serving loop's state.
#[derive(Debug)]
struct Loop {
    waiting: Vec<Waiting>,
    limits: Limits,
    log: LogLimiter,
}

impl Server {
    /// Answers requests on `listener` until the process exits.
    pub(crate) fn run(&self, listener: &OwnedFd) {
        if let Err(e) = fcntl(listener, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            tracing::error!(error = %e, "cannot make the agent socket non-blocking");
            return;
        }
        let mut state = Loop {
            waiting: Vec::new(),
            limits: Limits::default(),
            log: LogLimiter::new(Instant::now()),
        };
        loop {
            let (listener_ready, ready) = match Self::wait(listener, &state.waiting) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!(error = %e, "polling the agent socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let now = Instant::now();
            // From the back, so that swap_remove only moves entries already looked at.
            for i in (0..state.waiting.len()).rev() {
                if ready[i] {
                    let waiting = state.waiting.swap_remove(i);
                    if let Some(again) = self.serve(waiting) {
                        state.waiting.push(again);
                    }
                } else if state.waiting[i].deadline <= now {
                    let late = state.waiting.swap_remove(i);
                    self.metrics.refused(Refusal::Timeout);
                    let Waiting { conn, peer, .. } = late;
                    self.reaper.close(vec![conn]);
                    if let Some(suppressed) = state.log.allow(now) {
                        tracing::warn!(
                            pid = peer.pid,
                            uid = peer.uid,
                            suppressed,
                            "dropped a connection to the agent socket that sent no request within {REQUEST_DEADLINE:?}"
                        );
                    }
                }
            }
            if listener_ready {
                self.accept(listener, &mut state);
            }
        }
    }

    /// Waits until the listener or a waiting connection is readable, or the first deadline;
    /// says which are.
    fn wait(listener: &OwnedFd, waiting: &[Waiting]) -> nix::Result<(bool, Vec<bool>)> {
        let now = Instant::now();
        let timeout = waiting
            .iter()
            .map(|w| w.deadline.saturating_duration_since(now))
            .min()
            .map_or(PollTimeout::NONE, |left| {
                // Rounded up, so that a deadline is never polled for in a busy loop.
                let ms = left.as_millis().saturating_add(1);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            });
        let mut fds = Vec::with_capacity(waiting.len() + 1);
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        fds.extend(
            waiting
                .iter()
                .map(|w| PollFd::new(w.conn.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
        let readable = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        Ok((readable(&fds[0]), fds[1..].iter().map(readable).collect()))
    }

    /// Accepts what is waiting on the listener: each caller is named and pinned, then refused
    /// or left to send its request.
    fn accept(&self, listener: &OwnedFd, state: &mut Loop) {
        for _ in 0..ACCEPT_BATCH {
            let conn = match accept4(
                listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
                Ok(raw) => unsafe { OwnedFd::from_raw_fd(raw) },
                Err(nix::Error::EAGAIN) => return,
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                Err(e) => {
                    // EMFILE/ENFILE leave the listener readable: back off rather than spin.
                    if let Some(suppressed) = state.log.allow(Instant::now()) {
                        tracing::error!(error = %e, suppressed, "accepting on the agent socket failed");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            };
            let now = Instant::now();
            let peer = match identify::peer(conn.as_fd(), &self.node, self.pod_cgroup) {
                Ok(peer) => peer,
                Err(e) => {
                    let (why, code) = match e {
                        IdentifyError::NodeNetns { .. } => (Refusal::NodeNetns, ErrorCode::Denied),
                        IdentifyError::Cgroup(
                            CgroupError::NotAPod { .. } | CgroupError::Root { .. },
                        ) => (Refusal::NotAPod, ErrorCode::Denied),
                        _ if e.is_denial() => (Refusal::Unpinned, ErrorCode::Denied),
                        _ => (Refusal::Unidentified, ErrorCode::Identify),
                    };
                    self.refuse(conn, why, code, &e, &mut state.log);
                    continue;
                }
            };
            let held = state
                .waiting
                .iter()
                .filter(|w| w.peer.pod == peer.pod)
                .count();
            match state
                .limits
                .admit(&peer.pod, held, state.waiting.len(), now)
            {
                Ok(()) => state.waiting.push(Waiting {
                    conn,
                    peer,
                    deadline: now + REQUEST_DEADLINE,
                }),
                Err(exceeded) => {
                    let (why, message) = match exceeded {
                        Exceeded::Rate => (
                            Refusal::RateLimited,
                            "too many requests from this pod: try again later",
                        ),
                        Exceeded::Connections => (
                            Refusal::TooManyConnections,
                            "too many open connections to the agent: try again later",
                        ),
                    };
                    let e = io::Error::other(format!("pid {}: {message}", peer.pid));
                    self.refuse(conn, why, ErrorCode::Busy, &e, &mut state.log);
                }
            }
        }
    }

    /// Counts, logs (within the log limit) and answers a refused connection.
    fn refuse(
        &self,
        conn: OwnedFd,
        why: Refusal,
        code: ErrorCode,
        e: &dyn std::error::Error,
        log: &mut LogLimiter,
    ) {
        self.metrics.refused(why);
        // A span per refusal that is logged (exported over OTLP when configured): a flood gets
        // the log's bound, its `suppressed` count on the next span, and the counter above, so
        // it cannot crowd the other pods' request spans out of the exporter's queue.
        if let Some(suppressed) = log.allow(Instant::now()) {
            let span = tracing::info_span!(
                "agent.refusal",
                trueip.agent.refusal.reason = why.label(),
                trueip.agent.refusal.suppressed = suppressed,
                otel.status_code = "ERROR",
                error.type = %code,
            );
            let _entered = span.enter();
            tracing::warn!(
                error = %error_chain(e),
                reason = why.label(),
                suppressed,
                "refused a connection to the agent socket"
            );
        }
        drop(reply_error(conn.as_fd(), code, e));
        // Closing a socket with unread data makes the caller's next read fail with ECONNRESET,
        // ahead of the answer waiting for it. So nothing more may arrive (the caller's send
        // fails with EPIPE from now on, and it reads the answer), and what did is read.
        if let Err(e) = shutdown(conn.as_raw_fd(), Shutdown::Read) {
            tracing::debug!(error = %e, "shutting a refused connection for reading failed");
        }
        let mut buf = [0u8; protocol::MAX_MESSAGE_LEN];
        for _ in 0..MAX_UNREAD {
            match wire::receive(conn.as_fd(), &mut buf, true) {
                Ok(unread) if unread.len > 0 || !unread.fds.is_empty() => {
                    self.reaper.close(unread.fds);
                }
                _ => break,
            }
        }
        // Messages still queued on it may carry descriptors whose close blocks.
        self.reaper.close(vec![conn]);
    }

    /// Reads and answers the request of a readable connection; gives the connection back when
    /// it turns out to have nothing to read yet.
    fn serve(&self, waiting: Waiting) -> Option<Waiting> {
        let mut buf = [0u8; protocol::MAX_MESSAGE_LEN];
        let received = match wire::receive(waiting.conn.as_fd(), &mut buf, true) {
            Ok(received) => received,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(waiting),
            Err(e) => {
                tracing::debug!(error = %e, pid = waiting.peer.pid, "no request from a caller");
                self.reaper.close(vec![waiting.conn]);
                return None;
            }
        };
        if received.len > 0 || !received.fds.is_empty() {
            let request = if received.truncated {
                Err(ProtocolError::Malformed { len: received.len })
            } else {
                Request::decode(&buf[..received.len])
            };
            // One span per request (exported over OTLP when configured): its events are the
            // log lines of this request, its status an error when the caller was refused.
            let span = tracing::info_span!(
                "agent.request",
                trueip.agent.request = tracing::field::Empty,
                trueip.peer.pid = waiting.peer.pid,
                trueip.peer.uid = waiting.peer.uid,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            let result = span.in_scope(|| {
                self.handle(waiting.conn.as_fd(), &waiting.peer, request, &received.fds)
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, pid = waiting.peer.pid, "could not answer a sidecar");
            }
        }
        self.reaper.close(received.fds);
        // Closed off this thread too: more messages, with descriptors, may be queued on it.
        self.reaper.close(vec![waiting.conn]);
        None
    }

    /// Answers one request; `fds` are the descriptors it came with (left for the caller to
    /// close, whatever was used of them).
    fn handle(
        &self,
        conn: BorrowedFd<'_>,
        peer: &Peer,
        request: Result<Request, ProtocolError>,
        fds: &[OwnedFd],
    ) -> io::Result<()> {
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                let code = match e {
                    ProtocolError::Version { .. } => ErrorCode::Version,
                    _ => ErrorCode::BadRequest,
                };
                tracing::warn!(error = %e, pid = peer.pid, "bad request on the agent socket");
                self.metrics.request(RequestKind::Invalid, Err(code));
                return reply_error(conn, code, &e);
            }
        };
        let (kind, wanted) = match request {
            Request::GetMap | Request::GetUdpMap => (RequestKind::GetMap, 0),
            Request::GetFastPath => (RequestKind::FastPath, 0),
            Request::Steer { .. } => (RequestKind::Steer, 1),
        };
        tracing::Span::current().record("trueip.agent.request", kind.label());
        if fds.len() != wanted {
            if wanted == 0 {
                self.metrics.stray_fds(fds.len());
            }
            let e = ProtocolError::Unexpected(format!(
                "this request takes {wanted} file descriptor(s), got {}",
                fds.len()
            ));
            tracing::warn!(error = %e, pid = peer.pid, uid = peer.uid, "bad request on the agent socket");
            self.metrics.request(kind, Err(ErrorCode::BadRequest));
            return reply_error(conn, ErrorCode::BadRequest, &e);
        }
        match request {
            Request::GetMap => self.get_map(conn, peer),
            Request::GetUdpMap => self.get_udp_map(conn, peer),
            Request::GetFastPath => self.get_fast_path(conn, peer),
            Request::Steer { port } => self.steer(conn, peer, port, fds[0].as_fd()),
        }
    }

    /// Identifies the caller of a `kind` request, or counts and answers why not (`Err` then
    /// holds how sending that went).
    fn identify(
        &self,
        conn: BorrowedFd<'_>,
        peer: &Peer,
        kind: RequestKind,
    ) -> Result<Caller, io::Result<()>> {
        identify::caller(peer, &self.cgroup_root, self.pod_cgroup).map_err(|e| {
            tracing::warn!(
                error = %error_chain(&e), pid = peer.pid, uid = peer.uid,
                "refused a caller that is not a pod the agent serves"
            );
            let code = match e {
                _ if e.is_denial() => ErrorCode::Denied,
                IdentifyError::Netns { .. } | IdentifyError::Sockopt { .. } => ErrorCode::Internal,
                _ => ErrorCode::Identify,
            };
            self.metrics.request(kind, Err(code));
            reply_error(conn, code, &e)
        })
    }

    /// Identifies the caller and steers its pod's connections to `port` to `listener`.
    fn steer(
        &self,
        conn: BorrowedFd<'_>,
        peer: &Peer,
        port: u16,
        listener: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let caller = match self.identify(conn, peer, RequestKind::Steer) {
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
    fn get_udp_map(&self, conn: BorrowedFd<'_>, peer: &Peer) -> io::Result<()> {
        let serves_udp = self
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .serves_udp();
        if serves_udp {
            return self.get_map(conn, peer);
        }
        let e = io::Error::other("this agent does not attach the UDP hooks (start it with --udp)");
        tracing::warn!(error = %e, "refused a UDP map request");
        self.metrics
            .request(RequestKind::GetMap, Err(ErrorCode::BadRequest));
        reply_error(conn, ErrorCode::BadRequest, &e)
    }

    /// Identifies the caller and sends it its pod's fast-path maps (socket map, then peers
    /// map), or why not.
    fn get_fast_path(&self, conn: BorrowedFd<'_>, peer: &Peer) -> io::Result<()> {
        let caller = match self.identify(conn, peer, RequestKind::FastPath) {
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
    fn get_map(&self, conn: BorrowedFd<'_>, peer: &Peer) -> io::Result<()> {
        let caller = match self.identify(conn, peer, RequestKind::GetMap) {
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

/// Sends an error answer carrying `e` and its sources.
fn reply_error(conn: BorrowedFd<'_>, code: ErrorCode, e: &dyn std::error::Error) -> io::Result<()> {
    let message = error_chain(e);
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("error.type", code.to_string());
    send(conn, &Response::Error { code, message }.encode(), &[])
}

/// Sends one answer, with `fds` attached, without waiting on a caller that does not read.
fn send(conn: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    wire::send(conn, bytes, fds, true)
}
