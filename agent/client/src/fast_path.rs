//! The sidecar's side of the kernel fast path: the pod's socket map and peers map, obtained from
//! the agent, and the per-connection wiring (see `trueip_redirect_common::fast_path`).
//!
//! The ordering that keeps it lossless and in order is the caller's, as for the restore map:
//! bind the loopback socket, [`FastPath::wire`] (LB socket first, then the peers entry, so that
//! the sk_msg program never redirects to an empty slot), then connect: the app's socket enters
//! the map before `accept()` can return it, so every byte the app writes is redirected.
//! [`FastPath::unwire`] once the connection is over.

use std::{
    os::fd::{BorrowedFd, OwnedFd},
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use aya::maps::{HashMap, Map, MapData, MapError, SockHash};
use trueip_redirect_common::{ConnKey, FastPathKey, FastPathPeer};

use crate::{
    errno::{E2BIG, ENOENT, ENOSPC, errno},
    error::ClientError,
    exchange::{exchange, unexpected},
    pod_map::LoopbackConn,
    protocol::{Request, Response},
};

/// `bpf_map_update_elem` of a socket that is not established (or listening) into a socket map.
const EOPNOTSUPP: i32 = 95;

/// This pod's fast-path maps, obtained from the node agent.
pub struct FastPath {
    sockets: Mutex<SockHash<MapData, FastPathKey>>,
    peers: Mutex<HashMap<MapData, ConnKey, FastPathPeer>>,
    max_entries: u32,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be wired; its bytes then take the userspace path.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A fast-path map has no room left (the agent's `--map-max-entries`).
    #[error("the pod's fast-path maps are full")]
    Full,
    /// The LB-facing socket is no longer established (its peer half-closed or closed it): the
    /// kernel only takes established sockets into a socket map.
    #[error("the LB-facing socket is no longer established")]
    NotEstablished,
    /// Anything else (e.g. the LB-facing socket is already closed).
    #[error(transparent)]
    Other(ClientError),
}

impl FastPath {
    /// Asks the agent at `socket` to set up this pod's fast path and hand over its maps.
    ///
    /// Blocking (a few milliseconds; at most the client's timeout against a wedged agent); call
    /// it once at startup and share the result.
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        let (response, fds) = exchange(socket, Request::GetFastPath, None)?;
        match response {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            Response::FastPath { max_entries } => {
                let count = fds.len();
                let Ok::<[OwnedFd; 2], _>([sockets, peers]) = fds.try_into() else {
                    return Err(ClientError::MissingFd {
                        socket: socket.to_owned(),
                        count,
                        expected: 2,
                    });
                };
                Self::from_fds(sockets, peers, max_entries)
            }
            other => Err(unexpected(socket, &other)),
        }
    }

    /// Wraps the two maps' fds, checking their types and key and value sizes.
    fn from_fds(sockets: OwnedFd, peers: OwnedFd, max_entries: u32) -> Result<Self, ClientError> {
        let map_err = |source| ClientError::Map {
            op: "opening the fast-path maps' fds",
            source: Box::new(source),
        };
        let open = |fd| Map::from_map_data(MapData::from_fd(fd).map_err(map_err)?).map_err(map_err);
        let sockets = SockHash::try_from(open(sockets)?).map_err(map_err)?;
        let peers = HashMap::try_from(open(peers)?).map_err(map_err)?;
        Ok(Self {
            sockets: Mutex::new(sockets),
            peers: Mutex::new(peers),
            max_entries,
        })
    }

    /// Wires the loopback connection `conn` to the LB-facing socket `lb` (call after binding the
    /// loopback socket and BEFORE connect()): from then on the app's writes on that connection
    /// leave through `lb`. On failure nothing stays wired.
    pub fn wire(&self, conn: &LoopbackConn, lb: BorrowedFd<'_>) -> Result<(), WireError> {
        let key = conn.key();
        let failed = |op, e: MapError| match errno(&e) {
            Some(E2BIG | ENOSPC) => WireError::Full,
            Some(EOPNOTSUPP) => WireError::NotEstablished,
            _ => WireError::Other(ClientError::Map {
                op,
                source: Box::new(e),
            }),
        };
        // The redirect target first: a peers entry without it would make the sk_msg program
        // redirect to an empty slot, which drops the bytes.
        lock(&self.sockets)
            .insert(FastPathKey::lb(key), lb, 0)
            .map_err(|e| failed("putting the LB socket in the fast-path socket map", e))?;
        if let Err(e) = lock(&self.peers).insert(key, FastPathPeer::default(), 0) {
            let _ = self.remove_socket(FastPathKey::lb(key));
            return Err(failed(
                "recording the connection in the fast-path peers map",
                e,
            ));
        }
        Ok(())
    }

    /// Unwires `conn` (call when the connection is over, while the sidecar's loopback socket
    /// still holds its port): the peers entry first, so that the sk_msg program stops
    /// redirecting, then both sockets. Returns the bytes the kernel redirected. Unwiring a
    /// connection that is not wired is not an error.
    pub fn unwire(&self, conn: &LoopbackConn) -> Result<u64, ClientError> {
        let key = conn.key();
        let map_err = |op| {
            move |source| ClientError::Map {
                op,
                source: Box::new(source),
            }
        };
        let redirected = {
            let mut peers = lock(&self.peers);
            let redirected = match peers.get(&key, 0) {
                Ok(peer) => peer.redirected,
                Err(e) if errno(&e) == Some(ENOENT) => 0,
                Err(e) => return Err(map_err("reading the fast-path peers entry")(e)),
            };
            match peers.remove(&key) {
                Err(e) if errno(&e) != Some(ENOENT) => {
                    return Err(map_err("removing the fast-path peers entry")(e));
                }
                _ => {}
            }
            redirected
        };
        // The app's socket is only ever redirected from, never to: it has no bytes queued by
        // the fast path that leaving the map could lose.
        for socket in [FastPathKey::lb(key), FastPathKey::app(key)] {
            self.remove_socket(socket)
                .map_err(map_err("removing a socket from the fast-path socket map"))?;
        }
        Ok(redirected)
    }

    /// The capacity of the peers map (connections), for logs.
    pub const fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn remove_socket(&self, key: FastPathKey) -> Result<(), MapError> {
        match lock(&self.sockets).remove(&key) {
            Err(e) if errno(&e) != Some(ENOENT) => Err(e),
            _ => Ok(()),
        }
    }
}

/// The guarded handles have no state a panicking holder could have left half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
