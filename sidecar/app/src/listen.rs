//! Listening sockets: bind, accept within the connection limit, and drain on shutdown.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{info, warn};

use trueip_sidecar_http::TlsError;
use trueip_telemetry::Chain;

use crate::{
    admin,
    connection::{self, Handler, SetupError, Shared},
    metrics::{ListenerMetrics, SidecarMetrics},
    restore::EbpfError,
    shutdown::stopped,
    steer::{self, SteerError},
};
use trueip_sidecar_config::ListenerConfig;

/// The kernel's accept queue; connections over `max_connections` wait here.
const BACKLOG: i32 = 4096;
/// Pause after an accept error such as EMFILE, so a full fd table does not spin the loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address could not be bound.
    #[error("listener {listener}: cannot listen on {addr}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The admin endpoint (`metrics_listen`) could not be bound.
    #[error("cannot serve /metrics on {addr}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `steer: true` and the agent did not take the listener.
    #[error("listener {listener}")]
    Steer {
        /// The listener's name.
        listener: String,
        /// Why.
        #[source]
        source: SteerError,
    },
    /// The `transparent` mode's policy routing could not be set up.
    #[error(transparent)]
    Routing(crate::routing::RoutingError),
    /// `ebpf` without the agent and without a fallback (TCP and UDP listeners alike).
    #[error("listener {listener}")]
    Ebpf {
        /// The listener's name.
        listener: String,
        /// Why.
        #[source]
        source: EbpfError,
    },
    /// `http` with a TLS certificate that does not load.
    #[error("listener {listener}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// Why (boxed: paths and rustls' error).
        #[source]
        source: Box<TlsError>,
    },
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<Shared>,
    socket: TcpListener,
    limit: Arc<Semaphore>,
}

impl Listener {
    /// Binds the listener's address and prepares its restore mode; its counters go to
    /// `metrics`.
    pub fn bind(
        config: ListenerConfig,
        agent_socket: &Path,
        metrics: &SidecarMetrics,
    ) -> Result<Self, ListenError> {
        let name = config.name();
        let handler = Handler::new(&config, agent_socket).map_err(|e| match e {
            SetupError::Ebpf(source) => ListenError::Ebpf {
                listener: name.clone(),
                source,
            },
            SetupError::Tls(source) => ListenError::Tls {
                listener: name.clone(),
                source,
            },
        })?;
        let socket = bind(config.listen).map_err(|source| ListenError::Bind {
            listener: name.clone(),
            addr: config.listen,
            source,
        })?;
        if config.steer {
            steer::register(&socket, config.upstream, agent_socket).map_err(|source| {
                ListenError::Steer {
                    listener: name.clone(),
                    source,
                }
            })?;
        }
        info!(
            listener = %name, listen = %socket.local_addr().map_err(|source| ListenError::Bind {
                listener: name.clone(), addr: config.listen, source })?,
            upstream = %config.upstream, mode = ?handler.mode(), header = ?config.header,
            steer = config.steer, "listening"
        );
        let limit = Arc::new(Semaphore::new(config.max_connections.get()));
        Ok(Self {
            shared: Arc::new(Shared {
                metrics: Arc::new(metrics.listener(&name)),
                name,
                config,
                handler,
            }),
            socket,
            limit,
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The listener's counters.
    pub fn metrics(&self) -> Arc<ListenerMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// What `/readyz` says of this listener: its mode in use, and the configured one when a
    /// fallback replaced it.
    pub(crate) fn readiness(&self) -> String {
        let config = &self.shared.config;
        admin::describe(
            &self.shared.name,
            "tcp",
            config.mode,
            self.shared.handler.mode(),
            config.steer,
        )
    }

    /// Accepts until `shutdown` turns true, then waits up to `drain` for open connections.
    /// Returns how many were still open when it gave up.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>, drain: Duration) -> usize {
        let max = self.shared.config.max_connections.get();
        let mut saturated = false;
        loop {
            let permit = match Arc::clone(&self.limit).try_acquire_owned() {
                Ok(p) => {
                    saturated = false;
                    p
                }
                Err(_) => {
                    if !saturated {
                        saturated = true;
                        warn!(
                            listener = %self.shared.name, limit = max,
                            "connection limit reached; new connections wait in the accept queue"
                        );
                    }
                    tokio::select! {
                        p = Arc::clone(&self.limit).acquire_owned() => p.expect("never closed"),
                        () = stopped(&mut shutdown) => break,
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                accepted = self.socket.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(listener = %self.shared.name, error = %Chain(&e), "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = stopped(&mut shutdown) => break,
            };
            let shared = Arc::clone(&self.shared);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                connection::serve(stream, peer, shared, shutdown).await;
                drop(permit);
            });
        }
        drop(self.socket);
        let open = max - self.limit.available_permits();
        if open > 0 {
            info!(listener = %self.shared.name, open, "draining");
        }
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        match tokio::time::timeout(drain, self.limit.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => {
                let left = max - self.limit.available_permits();
                warn!(listener = %self.shared.name, left, "drain deadline passed; closing");
                left
            }
        }
    }
}

/// A listening socket: SO_REUSEADDR so a restart does not wait for TIME_WAIT, dual-stack on
/// `[::]` so IPv4 load balancers reach it too, and TCP_NODELAY, which Linux copies to every
/// accepted socket (one system call per listener instead of one per connection).
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY comes from the listener"
        );
    }
}
