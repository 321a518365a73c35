//! Why the agent or the pod's map could not be used.

use std::{io, path::PathBuf};

use aya::maps::MapError;

use crate::protocol::{ErrorCode, ProtocolError};

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
