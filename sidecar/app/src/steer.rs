//! Steering: after binding, a `steer: true` listener hands its listening socket to the node
//! agent, which attaches an sk_lookup program to the pod's network namespace: the pod's TCP
//! connections to the app's port (`upstream`'s port) that come from outside the pod are accepted
//! by this listener instead of the app, while the app keeps listening on that port itself and the
//! sidecar's own loopback connections still reach it.
//!
//! Nothing has to be undone: the kernel drops the socket from the agent's map when the listener
//! closes, and the pod's connections then reach the app again (or are refused, by the agent's
//! configuration).

use std::{net::SocketAddr, os::fd::AsFd as _, path::Path};

use tokio::net::TcpListener;
use trueip_agent_client::ClientError;

/// Steering could not be set up (the configuration already checked that the app is on
/// loopback).
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// The agent did not take the listener.
    #[error("steer: cannot hand the listener to the agent at {socket}")]
    Agent {
        /// The agent's socket.
        socket: String,
        /// Why.
        #[source]
        source: ClientError,
    },
}

/// Asks the agent to steer the pod's connections to `upstream`'s port from outside the pod to
/// `listener`. Blocking: a few milliseconds, at most the agent client's timeout.
pub(crate) fn register(
    listener: &TcpListener,
    upstream: SocketAddr,
    agent_socket: &Path,
) -> Result<(), SteerError> {
    trueip_agent_client::steer(agent_socket, upstream.port(), listener.as_fd()).map_err(|source| {
        SteerError::Agent {
            socket: agent_socket.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_agent_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let err = register(&listener, upstream, Path::new("/nonexistent/agent.sock")).unwrap_err();
        assert!(
            matches!(
                err,
                SteerError::Agent {
                    source: ClientError::Connect { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
