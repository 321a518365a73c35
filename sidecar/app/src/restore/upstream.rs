//! A connection to the app and what it holds for its lifetime: the eBPF entry and the fast
//! path's wiring go when it is done, before its socket closes.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use trueip_agent_client::{FastPath, LoopbackConn, PodMap};
use trueip_telemetry::Chain;

use crate::metrics::{FastPathOutcome, RestoreOutcome};

/// A connection to the app, ready for forwarding.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes the app must receive before the payload (a re-emitted header).
    pub preamble: Vec<u8>,
    /// What the app will learn about the client.
    pub outcome: RestoreOutcome,
    /// Removes the connection's eBPF entry when dropped; drop it before `stream`.
    pub entry: Option<Entry>,
    /// The connection's kernel fast path, when wired: the app's bytes to the load balancer
    /// then bypass the sidecar. Finish it before dropping `stream`.
    pub fast: Option<FastWire>,
    /// What the fast path did, for listeners that have it configured.
    pub fast_outcome: Option<FastPathOutcome>,
}

/// Why the app could not be reached for a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// connect(2) to the app failed.
    #[error("cannot connect to the app at {upstream}")]
    Connect {
        /// The app's address.
        upstream: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ebpf`: every loopback port tried was taken by a listener or a live connection.
    #[error(
        "no free loopback port to connect to the app at {upstream} after {attempts} tries \
         (the pod's ephemeral port range is full of live connections)"
    )]
    NoLoopbackPort {
        /// The app's address.
        upstream: SocketAddr,
        /// How many ports were tried.
        attempts: u32,
    },
    /// The pod's map is full and the listener refuses unrestorable connections.
    #[error("the pod's restore map is full (on_map_full: refuse)")]
    MapFull,
    /// `transparent`: the client's address and port are taken and the listener refuses to
    /// connect from another port.
    #[error(
        "the client's address {client} is already connected to the app (on_port_in_use: refuse)"
    )]
    PortInUse {
        /// The client's address and port.
        client: SocketAddr,
    },
}

impl ConnectError {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "upstream_connect",
            Self::NoLoopbackPort { .. } => "loopback_ports",
            Self::MapFull => "map_full",
            Self::PortInUse { .. } => "port_in_use",
        }
    }
}

impl Upstream {
    /// A connection that holds nothing but its socket: the app learns `outcome` from the
    /// connection itself or from `preamble`.
    pub(super) fn plain(stream: TcpStream, preamble: Vec<u8>, outcome: RestoreOutcome) -> Self {
        Self {
            stream,
            preamble,
            outcome,
            entry: None,
            fast: None,
            fast_outcome: None,
        }
    }
}

/// A connection wired into the kernel fast path; dropping it (or [`FastWire::finish`])
/// unwires it. Finish or drop it before the loopback socket closes, like [`Entry`].
#[derive(Debug)]
pub struct FastWire {
    pub(super) fast: Arc<FastPath>,
    pub(super) conn: LoopbackConn,
    pub(super) done: bool,
}

impl FastWire {
    /// Unwires the connection and returns the bytes the kernel sent to the load balancer.
    pub fn finish(mut self) -> u64 {
        self.done = true;
        self.unwire()
    }

    fn unwire(&self) -> u64 {
        self.fast.unwire(&self.conn).unwrap_or_else(|e| {
            tracing::warn!(error = %Chain(&e), conn = ?self.conn, "could not unwire the fast path");
            0
        })
    }
}

impl Drop for FastWire {
    fn drop(&mut self) {
        if !self.done {
            self.unwire();
        }
    }
}

/// A live entry in the pod's map; dropping it removes the entry.
#[derive(Debug)]
pub struct Entry {
    pub(super) map: Arc<PodMap>,
    pub(super) conn: LoopbackConn,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Err(e) = self.map.remove(&self.conn) {
            tracing::warn!(error = %Chain(&e), conn = ?self.conn, "could not remove the eBPF entry");
        }
    }
}
