//! The fast path's maps: the app → load balancer direction of a steered connection leaves the app
//! through the sidecar's LB-facing socket without visiting the sidecar.
//!
//! Each pod has its own instance of the `fast_path` object (a `sockops` program on the pod's
//! cgroup, an `sk_msg` program on the pod's socket map, and the two maps below), like steering.
//!
//! * The sidecar binds its loopback socket, puts its LB-facing socket in the socket map under
//!   ([`ConnKey`] of the loopback connection, [`FAST_PATH_ROLE_LB`]) and then the connection in
//!   the peers map, and only then connects.
//! * When the app's socket of that connection is established (before `accept()` can return it),
//!   the sockops program finds the connection in the peers map and puts the app's socket in the
//!   socket map under ([`ConnKey`], [`FAST_PATH_ROLE_APP`]).
//! * From then on the sk_msg program, run inside each `sendmsg()` of the app's socket, redirects
//!   the bytes to the LB-facing socket's egress. It redirects only when the connection is in the
//!   peers map (whose entry is written after the LB socket's), so it never redirects to an empty
//!   slot, which would drop the bytes.

use crate::restore::ConnKey;

/// Name of a pod's fast-path socket map (SOCKHASH: [`FastPathKey`] → socket) in the fast_path
/// object; the agent pins it in the pod's directory.
pub const FAST_PATH_SOCKETS_MAP: &str = "TRUEIP_FP_SOCKETS";

/// Name of a pod's fast-path connections map (HASH: [`ConnKey`] → [`FastPathPeer`]).
pub const FAST_PATH_PEERS_MAP: &str = "TRUEIP_FP_PEERS";

/// Name of the sockops program in the fast_path object.
pub const FAST_PATH_SOCKOPS_PROGRAM: &str = "fast_path_sockops";

/// Name of the sk_msg program in the fast_path object.
pub const FAST_PATH_MSG_PROGRAM: &str = "fast_path_msg";

/// `max_entries` of the peers map compiled into the object (the socket map has twice as many:
/// two sockets per connection). The agent sets both from its `--map-max-entries`.
pub const FAST_PATH_MAX_CONNS: u32 = 16384;

/// [`FastPathKey::role`] of the app's accepted socket (inserted by the sockops program).
pub const FAST_PATH_ROLE_APP: u32 = 0;

/// [`FastPathKey::role`] of the sidecar's LB-facing socket (inserted by the sidecar).
pub const FAST_PATH_ROLE_LB: u32 = 1;

/// Key of the fast-path socket map: one loopback connection (as the app's socket sees it) and
/// which of its two sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastPathKey {
    /// The loopback connection between the sidecar and the app, from the app's side.
    pub conn: ConnKey,
    /// [`FAST_PATH_ROLE_APP`] or [`FAST_PATH_ROLE_LB`].
    pub role: u32,
}

impl FastPathKey {
    /// The app's socket of `conn`.
    pub const fn app(conn: ConnKey) -> Self {
        Self {
            conn,
            role: FAST_PATH_ROLE_APP,
        }
    }

    /// The sidecar's LB-facing socket of `conn`.
    pub const fn lb(conn: ConnKey) -> Self {
        Self {
            conn,
            role: FAST_PATH_ROLE_LB,
        }
    }
}

/// Value of the peers map: a connection whose app → LB bytes the kernel redirects.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FastPathPeer {
    /// Bytes the sk_msg program has redirected to the LB-facing socket (added under the app
    /// socket's lock), so that the sidecar can count them like the bytes it moves itself.
    pub redirected: u64,
}

// SAFETY: `#[repr(C)]`, `Copy`, a `ConnKey` and a `u32`: no padding (asserted below), every bit
// pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FastPathKey {}
// SAFETY: `#[repr(C)]`, `Copy`, one `u64`: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FastPathPeer {}

const _: () = assert!(size_of::<FastPathKey>() == size_of::<ConnKey>() + 4);
const _: () = assert!(size_of::<FastPathPeer>() == 8);
