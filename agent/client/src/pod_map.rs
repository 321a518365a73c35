//! This pod's restore map: the entries that tell the pod's hooks which client a loopback
//! connection (or UDP flow) stands for.

use std::{
    os::fd::OwnedFd,
    path::Path,
    sync::{Mutex, PoisonError},
};

use aya::maps::{HashMap, Map, MapData};
use trueip_addrs::{AppAddr, ClientAddr, OriginalDst, SidecarAddr};
use trueip_redirect_common::{ConnKey, RestoreValue, UdpFlowEntries};

use crate::{
    errno::{BPF_ANY, BPF_NOEXIST, E2BIG, EEXIST, ENOENT, ENOSPC, errno},
    error::{ClientError, InsertError},
    exchange::{exchange, unexpected},
    protocol::{Request, Response},
};

/// This pod's restore map, obtained from the node agent.
#[derive(Debug)]
pub struct PodMap {
    map: Mutex<HashMap<MapData, ConnKey, RestoreValue>>,
    max_entries: u32,
}

/// One loopback connection from the sidecar to the app, named as the app's socket will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackConn {
    /// The upstream address the sidecar connects to (e.g. `127.0.0.1:8080` or `[::1]:8080`): the
    /// local address of the app's accepted socket.
    pub app: AppAddr,
    /// The sidecar socket's bound local address: the peer of the app's accepted socket.
    pub sidecar: SidecarAddr,
}

impl LoopbackConn {
    /// The map key: the connection as the app's socket sees it (local = app, peer = sidecar).
    pub(crate) fn key(&self) -> ConnKey {
        ConnKey::from_socket_addrs(self.app.addr(), self.sidecar.addr())
    }
}

/// What the app should see for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The client from the PROXY header: what the app's `accept()`/`getpeername()` return.
    pub client: ClientAddr,
    /// The destination from the PROXY header: what the app's `getsockname()` returns when the
    /// agent attaches the getsockname hooks.
    pub original_dst: Option<OriginalDst>,
}

/// One UDP flow of a sidecar listener, named as the pod's recvmsg/sendmsg hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlow {
    /// The app's port (the upstream the flow's datagrams go to).
    pub app_port: u16,
    /// The sidecar's flow socket, bound on loopback: the source of the datagrams the app receives.
    pub sidecar: SidecarAddr,
    /// The client from the PROXY header: what the app's `recvfrom()` returns, and where it replies.
    pub client: ClientAddr,
}

impl UdpFlow {
    /// The flow's entries in the map.
    fn entries(&self) -> UdpFlowEntries {
        UdpFlowEntries::new(self.app_port, self.sidecar.addr(), self.client.addr())
    }
}

impl PodMap {
    /// Connects to the agent's Unix socket and obtains this pod's restore map.
    ///
    /// Blocking (a few milliseconds; at most 10 s against a wedged agent); call it once at
    /// startup and share the result.
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        Self::request(socket, Request::GetMap)
    }

    /// Like [`connect`](Self::connect), for UDP listeners: the agent also makes sure the pod's
    /// UDP hooks are attached, and refuses if it runs without UDP support.
    pub fn connect_udp(socket: &Path) -> Result<Self, ClientError> {
        Self::request(socket, Request::GetUdpMap)
    }

    fn request(socket: &Path, request: Request) -> Result<Self, ClientError> {
        let (response, mut fds) = exchange(socket, request, None)?;
        match response {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            Response::Map { max_entries } => {
                let count = fds.len();
                let (Some(map_fd), true) = (fds.pop(), count == 1) else {
                    return Err(ClientError::MissingFd {
                        socket: socket.to_owned(),
                        count,
                        expected: 1,
                    });
                };
                Self::from_fd(map_fd, max_entries)
            }
            other @ (Response::Steering { .. } | Response::FastPath { .. }) => {
                Err(unexpected(socket, &other))
            }
        }
    }

    /// Wraps a pod map's fd, checking that it is a hash map of the expected key and value sizes.
    fn from_fd(fd: OwnedFd, max_entries: u32) -> Result<Self, ClientError> {
        let map_err = |source| ClientError::Map {
            op: "opening the fd",
            source: Box::new(source),
        };
        let data = MapData::from_fd(fd).map_err(map_err)?;
        let map = HashMap::try_from(Map::from_map_data(data).map_err(map_err)?).map_err(map_err)?;
        Ok(Self {
            map: Mutex::new(map),
            max_entries,
        })
    }

    /// Records that the loopback connection `conn` carries `restored` (call BEFORE connect()).
    ///
    /// An entry left behind for the same connection (a crashed sidecar, a reused port) is
    /// overwritten, so the app never sees a previous connection's client.
    pub fn insert(&self, conn: &LoopbackConn, restored: &Restored) -> Result<(), InsertError> {
        self.update(conn, restored, BPF_ANY)
    }

    /// Like [`insert`](Self::insert), but never overwrites: fails with [`InsertError::Taken`]
    /// when the map already has an entry for `conn`. For a caller that picks its own loopback
    /// ports and may bind one whose 4-tuple still belongs to a live connection: the kernel only
    /// refuses that at connect(), after the entry is written, and overwriting it would take the
    /// live connection's client away.
    pub fn claim(&self, conn: &LoopbackConn, restored: &Restored) -> Result<(), InsertError> {
        self.update(conn, restored, BPF_NOEXIST)
    }

    fn update(
        &self,
        conn: &LoopbackConn,
        restored: &Restored,
        flags: u64,
    ) -> Result<(), InsertError> {
        let key = conn.key();
        let value = RestoreValue::new(
            restored.client.addr(),
            restored.original_dst.map(OriginalDst::addr),
        );
        match self.lock().insert(key, value, flags) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e).is_some_and(|n| n == E2BIG || n == ENOSPC) => {
                Err(InsertError::Full)
            }
            Err(e) if errno(&e) == Some(EEXIST) => Err(InsertError::Taken),
            Err(source) => Err(InsertError::Other(ClientError::Map {
                op: "inserting an entry",
                source: Box::new(source),
            })),
        }
    }

    /// Removes every entry of the pod's map and returns how many there were. A sidecar calls
    /// this once at startup, before it listens: a predecessor that was killed (its entries'
    /// destructors never ran) may have left entries behind, and one of them would otherwise show
    /// a previous client to a new loopback connection that happens to reuse its 4-tuple.
    pub fn clear(&self) -> Result<usize, ClientError> {
        let mut map = self.lock();
        let keys: Vec<ConnKey> = map.keys().filter_map(Result::ok).collect();
        for key in &keys {
            match map.remove(key) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ENOENT) => {}
                Err(source) => {
                    return Err(ClientError::Map {
                        op: "clearing stale entries",
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(keys.len())
    }

    /// Forgets the connection (call when it closes). Forgetting an unknown connection is not an
    /// error.
    pub fn remove(&self, conn: &LoopbackConn) -> Result<(), ClientError> {
        let key = conn.key();
        match self.lock().remove(&key) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENOENT) => Ok(()),
            Err(source) => Err(ClientError::Map {
                op: "removing an entry",
                source: Box::new(source),
            }),
        }
    }

    /// Records the two entries of a UDP flow (see [`UdpFlowEntries`]): call after binding the
    /// flow socket and BEFORE sending the flow's first datagram to the app. Either both entries
    /// are written or neither.
    pub fn insert_udp_flow(&self, flow: &UdpFlow) -> Result<(), InsertError> {
        let entries = flow.entries();
        let mut map = self.lock();
        let mut insert = |(key, value)| match map.insert(key, value, BPF_ANY) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e).is_some_and(|n| n == E2BIG || n == ENOSPC) => {
                Err(InsertError::Full)
            }
            Err(source) => Err(InsertError::Other(ClientError::Map {
                op: "inserting a UDP flow entry",
                source: Box::new(source),
            })),
        };
        insert(entries.recv)?;
        let sent = insert(entries.send);
        if sent.is_err() {
            let _ = map.remove(&entries.recv.0);
        }
        sent
    }

    /// Forgets a UDP flow (call when it expires, before its socket closes). Forgetting an unknown
    /// flow is not an error.
    pub fn remove_udp_flow(&self, flow: &UdpFlow) -> Result<(), ClientError> {
        let entries = flow.entries();
        let mut map = self.lock();
        for key in [entries.recv.0, entries.send.0] {
            match map.remove(&key) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ENOENT) => {}
                Err(source) => {
                    return Err(ClientError::Map {
                        op: "removing a UDP flow entry",
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    /// The capacity of the map (the agent's `--map-max-entries`), for logs and metrics.
    pub const fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapData, ConnKey, RestoreValue>> {
        // The guarded handle has no state a panicking holder could have left half-updated.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
