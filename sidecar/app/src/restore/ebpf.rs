//! `ebpf`: the sidecar writes "this loopback connection carries that client" into the pod's map
//! before it connects, and the agent's cgroup programs make the app's `accept()` and
//! `getpeername()` return the client. The sidecar only holds the map's file descriptor, handed
//! over by the agent: it needs no CAP_BPF and can reach no other pod's entries.

use std::{io, net::SocketAddr, os::fd::AsFd as _, path::Path, sync::Arc};

use tokio::net::{TcpSocket, TcpStream};
use trueip_addrs::{AppAddr, SidecarAddr};
use trueip_agent_client::{
    ClientError, FastPath, InsertError, LoopbackConn, PodMap, Restored, WireError,
};

use super::{
    ports::PortCycle,
    upstream::{ConnectError, Entry, FastWire, Upstream},
};
use trueip_telemetry::Chain;

use crate::{
    endpoints::Endpoints,
    metrics::{FastPathOutcome, RestoreOutcome},
};
use trueip_sidecar_config::{FastPathMode, MapFullPolicy};

/// How many loopback ports one connection tries before it is refused: each try costs a socket
/// and a bind, and only a range nearly full of live connections needs more than a few.
const PORT_ATTEMPTS: u32 = 64;

/// The pod's map could not be obtained from the agent.
#[derive(Debug, thiserror::Error)]
#[error("cannot obtain this pod's restore map from the agent at {socket}")]
pub struct EbpfError {
    /// The agent's socket.
    pub socket: String,
    /// Why.
    #[source]
    pub source: ClientError,
}

/// The eBPF restore mode of one listener.
#[derive(Debug)]
pub struct Ebpf {
    map: Arc<PodMap>,
    on_full: MapFullPolicy,
    /// The kernel fast path: `Some(Some(..))` when configured and set up by the agent,
    /// `Some(None)` when configured but unavailable, `None` when off.
    fast: Option<Option<Arc<FastPath>>>,
}

/// Removes what a killed predecessor left in the pod's map (see [`PodMap::clear`]). Runs while
/// the sidecar starts, before any listener accepts, so no entry of this sidecar is lost.
pub(crate) fn clear_stale(map: &PodMap) {
    match map.clear() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            entries = n,
            "removed entries a previous sidecar of this pod left in its map (it was killed)"
        ),
        Err(e) => tracing::error!(
            error = %Chain(&e),
            "could not remove a previous sidecar's entries: an app may see a stale client"
        ),
    }
}

impl Ebpf {
    pub(super) fn open(
        socket: &Path,
        on_full: MapFullPolicy,
        fast_path: FastPathMode,
        listener: &str,
    ) -> Result<Self, EbpfError> {
        let map = PodMap::connect(socket).map_err(|source| EbpfError {
            socket: socket.display().to_string(),
            source,
        })?;
        tracing::info!(socket = %socket.display(), "obtained this pod's restore map from the agent");
        clear_stale(&map);
        let fast = match fast_path {
            FastPathMode::Off => None,
            FastPathMode::SkMsg => match FastPath::connect(socket) {
                Ok(fast) => {
                    tracing::info!(
                        %listener, max_entries = fast.max_entries(),
                        "kernel fast path on: the app's bytes go to the load balancer from its own socket (sk_msg)"
                    );
                    Some(Some(Arc::new(fast)))
                }
                Err(e) => {
                    tracing::error!(
                        %listener, error = %Chain(&e),
                        "kernel fast path unavailable; the sidecar relays the app's bytes to the load balancer"
                    );
                    Some(None)
                }
            },
        };
        Ok(Self {
            map: Arc::new(map),
            on_full,
            fast,
        })
    }

    /// Whether connections without a client to restore still go through [`Ebpf::connect`]
    /// (to be wired into the fast path).
    pub(super) fn fast_path_configured(&self) -> bool {
        self.fast.is_some()
    }

    /// Binds the loopback socket first so that its port is known, records the entry (when
    /// `endpoints` names a client) and wires the fast path to `lb` (when configured), and only
    /// then connects: the app can never accept the connection before both are in place.
    ///
    /// The port comes from [`PortCycle`] (see there why not from the kernel). A port bound by a
    /// listener, one whose 4-tuple is still live (connect() says EADDRNOTAVAIL) and one whose
    /// entry is still in the map are all skipped for the next one.
    pub(super) async fn connect(
        &self,
        upstream: SocketAddr,
        endpoints: Option<Endpoints>,
        plain_outcome: RestoreOutcome,
        lb: &TcpStream,
    ) -> Result<Upstream, ConnectError> {
        let io_err = |source| ConnectError::Connect { upstream, source };
        let ports = PortCycle::shared();
        let attempts = ports.len().min(PORT_ATTEMPTS);
        for _ in 0..attempts {
            let socket = match upstream {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(io_err)?;
            socket.set_reuseaddr(true).map_err(io_err)?;
            // The upstream is on loopback (checked by the config): bind to the same address, so
            // the connection stays inside the pod with the 4-tuple the entry's key names.
            let sidecar = SocketAddr::new(upstream.ip(), ports.next());
            match socket.bind(sidecar) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(io_err(e)),
            }
            let conn = LoopbackConn {
                app: AppAddr::new(upstream),
                sidecar: SidecarAddr::new(sidecar),
            };
            let (entry, outcome) = match endpoints {
                Some(endpoints) => match self.restore(conn, endpoints)? {
                    Some(restored) => restored,
                    None => continue,
                },
                None => (None, plain_outcome),
            };
            let (fast, fast_outcome) = self.wire(conn, lb);
            // On failure `entry` and `fast` drop here and remove what was inserted.
            match socket.connect(upstream).await {
                Ok(stream) => {
                    return Ok(Upstream {
                        stream,
                        preamble: Vec::new(),
                        outcome,
                        entry,
                        fast,
                        fast_outcome,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(ConnectError::NoLoopbackPort { upstream, attempts })
    }

    /// Wires `conn` to the LB-facing socket, if the fast path is configured.
    fn wire(
        &self,
        conn: LoopbackConn,
        lb: &TcpStream,
    ) -> (Option<FastWire>, Option<FastPathOutcome>) {
        let fast = match &self.fast {
            None => return (None, None),
            Some(None) => return (None, Some(FastPathOutcome::Unavailable)),
            Some(Some(fast)) => fast,
        };
        match fast.wire(&conn, lb.as_fd()) {
            Ok(()) => (
                Some(FastWire {
                    fast: Arc::clone(fast),
                    conn,
                    done: false,
                }),
                Some(FastPathOutcome::Wired),
            ),
            Err(WireError::Full) => {
                tracing::warn!(
                    ?conn,
                    "the fast-path maps are full; the sidecar relays this connection"
                );
                (None, Some(FastPathOutcome::Full))
            }
            Err(WireError::NotEstablished) => {
                tracing::debug!(
                    ?conn,
                    "the load balancer already closed its side; the sidecar relays this connection"
                );
                (None, Some(FastPathOutcome::Skipped))
            }
            Err(WireError::Other(e)) => {
                tracing::warn!(?conn, error = %Chain(&e), "could not wire the fast path; the sidecar relays this connection");
                (None, Some(FastPathOutcome::Failed))
            }
        }
    }

    /// Records the entry restoring `endpoints` for `conn`; `None` when the map still has an
    /// entry for the same 4-tuple (a live connection's: try another port).
    fn restore(
        &self,
        conn: LoopbackConn,
        endpoints: Endpoints,
    ) -> Result<Option<(Option<Entry>, RestoreOutcome)>, ConnectError> {
        let restored = Restored {
            client: endpoints.client,
            original_dst: Some(endpoints.destination),
        };
        Ok(Some(match self.map.claim(&conn, &restored) {
            Ok(()) => (
                Some(Entry {
                    map: Arc::clone(&self.map),
                    conn,
                }),
                RestoreOutcome::Restored,
            ),
            Err(InsertError::Taken) => return Ok(None),
            Err(InsertError::Full) if self.on_full == MapFullPolicy::Refuse => {
                return Err(ConnectError::MapFull);
            }
            Err(InsertError::Full) => {
                tracing::warn!(
                    ?conn,
                    "the pod's restore map is full; delivering without restoration"
                );
                (None, RestoreOutcome::MapFull)
            }
            Err(e) => {
                tracing::warn!(?conn, error = %Chain(&e), "could not write the eBPF entry; delivering without restoration");
                (None, RestoreOutcome::Failed)
            }
        }))
    }
}
