//! `ebpf`: the sidecar writes "this loopback connection carries that client" into the pod's map
//! before it connects, and the agent's cgroup programs make the app's `accept()` and
//! `getpeername()` return the client. The sidecar only holds the map's file descriptor, handed
//! over by the agent: it needs no CAP_BPF and can reach no other pod's entries.

use std::{net::SocketAddr, path::Path, sync::Arc};

use tokio::net::TcpSocket;
use trueip_agent_client::{ClientError, InsertError, LoopbackConn, PodMap, Restored};

use super::{ConnectError, Endpoints, Upstream};
use crate::{config::MapFullPolicy, metrics::RestoreOutcome};

/// The pod's map could not be obtained from the agent.
#[derive(Debug, thiserror::Error)]
#[error("cannot obtain this pod's restore map from the agent at {socket}: {source}")]
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
}

/// A live entry in the pod's map; dropping it removes the entry.
#[derive(Debug)]
pub struct Entry {
    map: Arc<PodMap>,
    conn: LoopbackConn,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Err(e) = self.map.remove(&self.conn) {
            tracing::warn!(error = %e, conn = ?self.conn, "could not remove the eBPF entry");
        }
    }
}

impl Ebpf {
    pub(super) fn open(socket: &Path, on_full: MapFullPolicy) -> Result<Self, EbpfError> {
        let map = PodMap::connect(socket).map_err(|source| EbpfError {
            socket: socket.display().to_string(),
            source,
        })?;
        tracing::info!(socket = %socket.display(), "obtained this pod's restore map from the agent");
        Ok(Self {
            map: Arc::new(map),
            on_full,
        })
    }

    /// Binds the loopback socket first so that its port is known, records the entry, and only
    /// then connects: the app can never accept the connection before its entry exists.
    pub(super) async fn connect(
        &self,
        upstream: SocketAddr,
        endpoints: Endpoints,
    ) -> Result<Upstream, ConnectError> {
        let io_err = |source| ConnectError::Connect { upstream, source };
        let socket = match upstream {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(io_err)?;
        // The upstream is on loopback (checked by the config): bind to the same address, so
        // the connection stays inside the pod with the 4-tuple the entry's key names.
        socket
            .bind(SocketAddr::new(upstream.ip(), 0))
            .map_err(io_err)?;
        let conn = LoopbackConn {
            app: upstream,
            sidecar: socket.local_addr().map_err(io_err)?,
        };
        let restored = Restored {
            client: endpoints.client,
            original_dst: Some(endpoints.destination),
        };
        let (entry, outcome) = match self.map.insert(&conn, &restored) {
            Ok(()) => (
                Some(Entry {
                    map: Arc::clone(&self.map),
                    conn,
                }),
                RestoreOutcome::Restored,
            ),
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
                tracing::warn!(?conn, error = %e, "could not write the eBPF entry; delivering without restoration");
                (None, RestoreOutcome::Failed)
            }
        };
        // On failure `entry` drops here and removes what was inserted.
        let stream = socket.connect(upstream).await.map_err(io_err)?;
        Ok(Upstream {
            stream,
            preamble: Vec::new(),
            outcome,
            entry,
        })
    }
}
