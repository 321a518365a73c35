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

mod errno;
mod error;
mod exchange;
mod fast_path;
mod pod_map;
pub mod protocol;
mod trust;
pub mod wire;

use std::{os::fd::BorrowedFd, path::Path};

pub use crate::{
    error::{ClientError, InsertError},
    fast_path::{FastPath, WireError},
    pod_map::{LoopbackConn, PodMap, Restored, UdpFlow},
};
use crate::{
    exchange::{exchange, unexpected},
    protocol::{Request, Response},
};

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

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        io,
        os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
        thread::JoinHandle,
    };

    use aya::maps::MapError;
    use nix::sys::socket::{Backlog, MsgFlags, UnixAddr, accept, bind, listen, recv};

    use super::*;
    use crate::{
        errno::{E2BIG, ENOENT, errno},
        exchange::socket_fd,
        protocol::ErrorCode,
    };

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
