//! One request to the node agent over its Unix socket: the socket checked, the request sent
//! with a descriptor attached, the answer and its descriptors received, within a timeout.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::Path,
    time::Duration,
};

use nix::sys::{
    socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt},
    time::TimeVal,
};

use crate::{
    error::ClientError,
    protocol::{self, ProtocolError, Request, Response},
    trust, wire,
};

/// How long [`PodMap::connect`] waits for the agent's answer: the agent answers in milliseconds,
/// and a sidecar must not hang at startup behind a wedged agent.
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that the socket is the agent's (see [`trust`]), sends `request` (with `fd` attached)
/// and returns the answer and the descriptors that came with it.
pub(crate) fn exchange(
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
pub(crate) fn unexpected(socket: &Path, response: &Response) -> ClientError {
    let line = String::from_utf8_lossy(&response.encode())
        .trim_end()
        .to_owned();
    ClientError::Protocol {
        socket: socket.to_owned(),
        source: ProtocolError::Unexpected(line),
    }
}

/// A `SOCK_SEQPACKET` Unix socket (the agent's socket type).
pub(crate) fn socket_fd() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}
