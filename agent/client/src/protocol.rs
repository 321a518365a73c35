//! The wire protocol between a sidecar and the node agent, shared by both sides.
//!
//! The agent listens on a Unix `SOCK_SEQPACKET` socket, so every message is one datagram and no
//! framing is needed. A message is one ASCII line starting with the protocol version:
//!
//! ```text
//! sidecar → agent   TRUEIP/1 GET-MAP
//! agent → sidecar   TRUEIP/1 OK max_entries=16384        + the pod map's fd (SCM_RIGHTS)
//!                   TRUEIP/1 ERR <code> <message>        (no fd)
//!
//! sidecar → agent   TRUEIP/1 GET-MAP udp                 (the same, and the pod's UDP hooks too)
//! agent → sidecar   as for GET-MAP; ERR bad-request from an agent without UDP support
//!
//! sidecar → agent   TRUEIP/1 STEER port=8080             + the sidecar's listening socket (SCM_RIGHTS)
//! agent → sidecar   TRUEIP/1 OK steer port=8080
//!                   TRUEIP/1 ERR <code> <message>
//!
//! sidecar → agent   TRUEIP/1 GET-FAST-PATH
//! agent → sidecar   TRUEIP/1 OK fast-path max_entries=16384   + the pod's fast-path socket map
//!                                                               and peers map (SCM_RIGHTS, in order)
//!                   TRUEIP/1 ERR <code> <message>
//! ```
//!
//! `GET-FAST-PATH` sets up the pod's kernel fast path (app → load balancer bytes leave the app's
//! socket through the sidecar's LB-facing socket, see `trueip_redirect_common::fast_path`) and
//! hands over its two maps; an agent older than this request answers `ERR bad-request`.
//!
//! `STEER` asks the agent to hand the pod's new TCP connections to `port` (the app's port) that
//! come from outside the pod to the attached listening socket instead of the app (sk_lookup in
//! the pod's network namespace); loopback connections still reach the app.
//!
//! The agent learns who is asking from the socket itself (`SO_PEERCRED` → the caller's cgroup and
//! network namespace), never from the request, so the request carries nothing else. An agent that
//! does not speak the client's version answers `ERR version`. Requests are only ever added to a
//! version (an agent older than a request answers `ERR bad-request`); a changed meaning of an
//! existing message gets a new version number.

use std::{fmt, str::FromStr};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// Upper bound on the size of any message, so both sides can use fixed receive buffers.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// What a sidecar asks the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// "Give me my pod's restore map."
    GetMap,
    /// "Give me my pod's restore map, and make sure the pod's UDP hooks (cgroup recvmsg4/6 and
    /// sendmsg4/6) are attached": for the sidecar's UDP listeners in `ebpf` mode. An agent
    /// started without UDP support refuses, so the sidecar never writes entries nobody reads.
    GetUdpMap,
    /// "Steer my pod's connections to this app port from outside the pod to the listening socket
    /// attached to this message."
    Steer {
        /// The app's port (the destination port of the connections to steer).
        port: u16,
    },
    /// "Set up my pod's fast path and give me its maps."
    GetFastPath,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Here is the map (its fd travels in the same message); it holds at most `max_entries`.
    Map {
        /// Capacity of the pod map.
        max_entries: u32,
    },
    /// Connections to `port` from outside the pod now go to the sidecar's listening socket.
    Steering {
        /// The steered app port.
        port: u16,
    },
    /// Here are the fast-path maps (their two fds travel in the same message: the socket map,
    /// then the peers map); the peers map holds at most `max_entries` connections.
    FastPath {
        /// Capacity of the peers map.
        max_entries: u32,
    },
    /// No map, and why.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail, one line.
        message: String,
    },
}

/// Why the agent refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The agent does not speak the client's protocol version.
    Version,
    /// The request could not be parsed.
    BadRequest,
    /// The agent could not tell which pod the caller belongs to.
    Identify,
    /// The caller's network namespace is already served to another pod (e.g. `hostNetwork`
    /// pods share the node's): handing out that map would break isolation.
    Conflict,
    /// The kernel refused an operation (map creation, attachment, a full pod table).
    Kernel,
    /// Anything else inside the agent.
    Internal,
    /// The caller is not a pod the agent serves: it lives in the node's network namespace (an
    /// unprivileged process on the node, a `hostNetwork` pod), or outside a Kubernetes pod
    /// cgroup, or its identity could not be pinned.
    Denied,
    /// The caller asks too often, or holds too many connections open: try again later.
    Busy,
}

/// A message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not UTF-8, empty, or longer than [`MAX_MESSAGE_LEN`].
    #[error("malformed message ({len} bytes)")]
    Malformed {
        /// Length of the message.
        len: usize,
    },
    /// The first word is not `TRUEIP/<number>`.
    #[error("not a trueip message: {0:?}")]
    NotTrueip(String),
    /// A version other than [`VERSION`].
    #[error("protocol version {found}, this side speaks {VERSION}")]
    Version {
        /// The version in the message.
        found: u32,
    },
    /// A known version but an unknown or malformed command.
    #[error("unexpected message: {0:?}")]
    Unexpected(String),
}

// === impl Request ===

impl Request {
    /// The bytes of the message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::GetMap => format!("TRUEIP/{VERSION} GET-MAP\n").into_bytes(),
            Self::GetUdpMap => format!("TRUEIP/{VERSION} GET-MAP udp\n").into_bytes(),
            Self::Steer { port } => format!("TRUEIP/{VERSION} STEER port={port}\n").into_bytes(),
            Self::GetFastPath => format!("TRUEIP/{VERSION} GET-FAST-PATH\n").into_bytes(),
        }
    }

    /// Parses a message received from a sidecar.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let rest = versioned_line(bytes)?;
        if rest == "GET-MAP" {
            return Ok(Self::GetMap);
        }
        if rest == "GET-MAP udp" {
            return Ok(Self::GetUdpMap);
        }
        if rest == "GET-FAST-PATH" {
            return Ok(Self::GetFastPath);
        }
        match rest.strip_prefix("STEER port=").map(str::parse) {
            Some(Ok(port)) if port != 0 => Ok(Self::Steer { port }),
            _ => Err(ProtocolError::Unexpected(rest.to_owned())),
        }
    }
}

// === impl Response ===

impl Response {
    /// The bytes of the message (the fd of [`Response::Map`] travels beside them).
    pub fn encode(&self) -> Vec<u8> {
        let mut line = match self {
            Self::Map { max_entries } => format!("TRUEIP/{VERSION} OK max_entries={max_entries}"),
            Self::Steering { port } => format!("TRUEIP/{VERSION} OK steer port={port}"),
            Self::FastPath { max_entries } => {
                format!("TRUEIP/{VERSION} OK fast-path max_entries={max_entries}")
            }
            Self::Error { code, message } => {
                // One line, bounded: the message is for logs, not for parsing.
                let message: String = message
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(MAX_MESSAGE_LEN - 64)
                    .collect();
                format!("TRUEIP/{VERSION} ERR {code} {message}")
            }
        };
        line.push('\n');
        line.into_bytes()
    }

    /// Parses a message received from the agent.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let rest = versioned_line(bytes)?;
        let unexpected = || ProtocolError::Unexpected(rest.to_owned());
        if let Some(port) = rest.strip_prefix("OK steer port=") {
            let port = port.parse().map_err(|_| unexpected())?;
            Ok(Self::Steering { port })
        } else if let Some(args) = rest.strip_prefix("OK fast-path max_entries=") {
            let max_entries = args.parse().map_err(|_| unexpected())?;
            Ok(Self::FastPath { max_entries })
        } else if let Some(args) = rest.strip_prefix("OK ") {
            let max_entries = args
                .strip_prefix("max_entries=")
                .and_then(|n| n.parse().ok())
                .ok_or_else(unexpected)?;
            Ok(Self::Map { max_entries })
        } else if let Some(args) = rest.strip_prefix("ERR ") {
            let (code, message) = args.split_once(' ').unwrap_or((args, ""));
            Ok(Self::Error {
                code: code.parse().map_err(|()| unexpected())?,
                message: message.to_owned(),
            })
        } else {
            Err(unexpected())
        }
    }
}

/// Checks the size, encoding and version of a message and returns what follows the version.
fn versioned_line(bytes: &[u8]) -> Result<&str, ProtocolError> {
    let malformed = || ProtocolError::Malformed { len: bytes.len() };
    if bytes.is_empty() || bytes.len() > MAX_MESSAGE_LEN {
        return Err(malformed());
    }
    let line = std::str::from_utf8(bytes).map_err(|_| malformed())?;
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
    let found: u32 = version
        .strip_prefix("TRUEIP/")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ProtocolError::NotTrueip(line.chars().take(64).collect()))?;
    if found != VERSION {
        return Err(ProtocolError::Version { found });
    }
    Ok(rest)
}

// === impl ErrorCode ===

impl ErrorCode {
    const ALL: [(Self, &'static str); 8] = [
        (Self::Version, "version"),
        (Self::BadRequest, "bad-request"),
        (Self::Identify, "identify"),
        (Self::Conflict, "conflict"),
        (Self::Kernel, "kernel"),
        (Self::Internal, "internal"),
        (Self::Denied, "denied"),
        (Self::Busy, "busy"),
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(code, _)| code == self)
            .map_or("internal", |(_, name)| name);
        f.write_str(name)
    }
}

impl FromStr for ErrorCode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(code, _)| *code)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        assert_eq!(Request::GetMap.encode(), b"TRUEIP/1 GET-MAP\n");
        assert_eq!(
            Request::decode(&Request::GetMap.encode()),
            Ok(Request::GetMap)
        );
        // The trailing newline is optional (socat users).
        assert_eq!(Request::decode(b"TRUEIP/1 GET-MAP"), Ok(Request::GetMap));
        assert_eq!(Request::GetUdpMap.encode(), b"TRUEIP/1 GET-MAP udp\n");
        assert_eq!(
            Request::decode(&Request::GetUdpMap.encode()),
            Ok(Request::GetUdpMap)
        );
        assert_eq!(Request::GetFastPath.encode(), b"TRUEIP/1 GET-FAST-PATH\n");
        assert_eq!(
            Request::decode(&Request::GetFastPath.encode()),
            Ok(Request::GetFastPath)
        );
        let steer = Request::Steer { port: 8080 };
        assert_eq!(steer.encode(), b"TRUEIP/1 STEER port=8080\n");
        assert_eq!(Request::decode(&steer.encode()), Ok(steer));
        for bad in [
            &b"TRUEIP/1 STEER port=0"[..],
            b"TRUEIP/1 STEER port=65536",
            b"TRUEIP/1 STEER",
            b"TRUEIP/1 STEER port=80 extra",
        ] {
            assert!(
                matches!(Request::decode(bad), Err(ProtocolError::Unexpected(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::Map { max_entries: 16384 };
        assert_eq!(ok.encode(), b"TRUEIP/1 OK max_entries=16384\n");
        assert_eq!(Response::decode(&ok.encode()), Ok(ok));
        let fast = Response::FastPath { max_entries: 16384 };
        assert_eq!(fast.encode(), b"TRUEIP/1 OK fast-path max_entries=16384\n");
        assert_eq!(Response::decode(&fast.encode()), Ok(fast));
        let steering = Response::Steering { port: 8080 };
        assert_eq!(steering.encode(), b"TRUEIP/1 OK steer port=8080\n");
        assert_eq!(Response::decode(&steering.encode()), Ok(steering));
        for (code, _) in ErrorCode::ALL {
            let err = Response::Error {
                code,
                message: "netns 4096 is served to cgroup /a/b".into(),
            };
            assert_eq!(Response::decode(&err.encode()), Ok(err));
        }
    }

    #[test]
    fn error_messages_stay_one_bounded_line() {
        let err = Response::Error {
            code: ErrorCode::Internal,
            message: format!("a\nb\r{}", "x".repeat(5000)),
        };
        let bytes = err.encode();
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(matches!(
            Response::decode(&bytes),
            Ok(Response::Error {
                code: ErrorCode::Internal,
                ..
            })
        ));
    }

    #[test]
    fn versions_and_garbage_are_rejected() {
        assert_eq!(
            Request::decode(b"TRUEIP/2 GET-MAP\n"),
            Err(ProtocolError::Version { found: 2 })
        );
        assert!(matches!(
            Request::decode(b"GET / HTTP/1.1\r\n"),
            Err(ProtocolError::NotTrueip(_))
        ));
        assert!(matches!(
            Request::decode(b""),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            Request::decode(&[0xff, 0xfe]),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            Request::decode(b"TRUEIP/1 DELETE-EVERYTHING"),
            Err(ProtocolError::Unexpected(_))
        ));
        assert!(matches!(
            Response::decode(b"TRUEIP/1 OK max_entries=lots"),
            Err(ProtocolError::Unexpected(_))
        ));
        assert!(matches!(
            Response::decode(b"TRUEIP/1 ERR nonsense x"),
            Err(ProtocolError::Unexpected(_))
        ));
    }
}
