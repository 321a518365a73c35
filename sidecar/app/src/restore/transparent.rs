//! `transparent`: the sidecar connects to the app *from the client's address and port*, with
//! an IP_TRANSPARENT (IPV6_TRANSPARENT) socket bound to the address the header names, as
//! go-mmproxy and Envoy's `original_src` filter do. The app's `accept()` and `getpeername()`
//! return the client with no eBPF and no agent; the policy routing installed at start
//! ([`crate::routing`]) brings the app's replies back to the sidecar's socket.

use std::{io, net::SocketAddr, time::Duration};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use super::upstream::{ConnectError, Upstream};
use trueip_telemetry::Chain;

use crate::{endpoints::Endpoints, metrics::RestoreOutcome};
use trueip_sidecar_config::{ListenerConfig, PortInUsePolicy, canonical};

/// A connection to an app on loopback completes at once; one that does not within this is
/// missing its replies (the policy routing was removed by hand, or another tool replaced it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The transparent restore mode of one listener.
#[derive(Debug)]
pub struct Transparent {
    on_port_in_use: PortInUsePolicy,
}

/// Why one attempt to connect from the client's address failed.
#[derive(Debug)]
enum AttemptError {
    /// The client's address and port are taken (bound, or the same 4-tuple is open).
    PortInUse(io::Error),
    /// The socket could not be made transparent or bound to the client's address.
    Bind(io::Error),
    /// The app did not accept the connection.
    Connect(io::Error),
}

impl Transparent {
    pub(super) fn new(config: &ListenerConfig) -> Self {
        Self {
            on_port_in_use: config.on_port_in_use,
        }
    }

    /// Connects to `upstream` from the client's address. A client of the other address family
    /// than the app's (an IPv6 client, an IPv4 upstream) or an address no socket can be bound
    /// to (multicast) is delivered without restoration and counted as failed; a taken client
    /// port follows `on_port_in_use`.
    pub(super) async fn connect(
        &self,
        upstream: SocketAddr,
        endpoints: Endpoints,
    ) -> Result<Upstream, ConnectError> {
        let client = SocketAddr::new(canonical(endpoints.client.ip()), endpoints.client.port());
        if client.is_ipv4() != upstream.is_ipv4() {
            tracing::warn!(
                %client, %upstream,
                "the client's address family differs from the app's; delivering without restoration"
            );
            return plain(upstream, RestoreOutcome::Failed).await;
        }
        let first = attempt(upstream, client).await;
        let (result, restored) = match first {
            Err(AttemptError::PortInUse(e)) => match self.on_port_in_use {
                PortInUsePolicy::Refuse => {
                    tracing::debug!(%client, error = %Chain(&e), "client port in use");
                    return Err(ConnectError::PortInUse { client });
                }
                PortInUsePolicy::AnyPort => {
                    tracing::debug!(%client, error = %Chain(&e), "client port in use; binding another port");
                    let any = SocketAddr::new(client.ip(), 0);
                    (attempt(upstream, any).await, RestoreOutcome::PortChanged)
                }
            },
            other => (other, RestoreOutcome::Restored),
        };
        match result {
            Ok(stream) => Ok(Upstream::plain(stream, Vec::new(), restored)),
            Err(AttemptError::Connect(source)) => Err(ConnectError::Connect { upstream, source }),
            Err(AttemptError::Bind(e) | AttemptError::PortInUse(e)) => {
                tracing::warn!(
                    %client, error = %Chain(&e),
                    "cannot connect from the client's address; delivering without restoration"
                );
                plain(upstream, RestoreOutcome::Failed).await
            }
        }
    }
}

/// A connection from the sidecar's own loopback address.
async fn plain(upstream: SocketAddr, outcome: RestoreOutcome) -> Result<Upstream, ConnectError> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|source| ConnectError::Connect { upstream, source })?;
    Ok(Upstream::plain(stream, Vec::new(), outcome))
}

/// One connection to `upstream` from `from` (port 0: a port the kernel picks on that address).
async fn attempt(upstream: SocketAddr, from: SocketAddr) -> Result<TcpStream, AttemptError> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(AttemptError::Bind)?;
    let sock = SockRef::from(&socket);
    match upstream {
        SocketAddr::V4(_) => sock.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => sock.set_ip_transparent_v6(true),
    }
    .map_err(AttemptError::Bind)?;
    // A connection of the same client that ended a moment ago may hold the address in
    // TIME_WAIT; connect() below still refuses a 4-tuple that is really in use.
    socket.set_reuseaddr(true).map_err(AttemptError::Bind)?;
    socket.bind(from).map_err(|e| match e.raw_os_error() {
        // EACCES: a client port below 1024 without CAP_NET_BIND_SERVICE.
        Some(nix::libc::EADDRINUSE | nix::libc::EACCES) if from.port() != 0 => {
            AttemptError::PortInUse(e)
        }
        _ => AttemptError::Bind(e),
    })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(upstream)).await {
        Ok(Ok(stream)) => Ok(stream),
        // The same client address and port already talk to the app (two load balancers'
        // clients that look alike).
        Ok(Err(e))
            if from.port() != 0
                && matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EADDRNOTAVAIL | nix::libc::EADDRINUSE)
                ) =>
        {
            Err(AttemptError::PortInUse(e))
        }
        Ok(Err(e)) => Err(AttemptError::Connect(e)),
        Err(_) => Err(AttemptError::Connect(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no answer from the app within {CONNECT_TIMEOUT:?}: its replies to the client \
                 address do not reach the sidecar; is the policy routing in place \
                 (`ip rule`, `ip route show table <transparent.table>`)?"
            ),
        ))),
    }
}
