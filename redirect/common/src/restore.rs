//! The pod map's key and value: which client (and original destination) an app socket of a
//! sidecar's loopback connection stands for.

use core::net::SocketAddr;

use crate::endpoint::Endpoint;

/// [`RestoreValue::flags`] bit: [`RestoreValue::original_dst`] is set (the PROXY header named a
/// destination); without it the getsockname hooks leave the app's local address alone.
pub const FLAG_ORIGINAL_DST: u32 = 1;

/// Key of a pod map: the app's accepted socket of one sidecar → app loopback connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The app socket's local address: the upstream the sidecar connected to.
    pub app: Endpoint,
    /// The app socket's peer: the sidecar's bound loopback address.
    pub peer: Endpoint,
}

impl ConnKey {
    /// The key of the connection between the app's `app` address and the sidecar's `sidecar` one.
    pub fn from_socket_addrs(app: SocketAddr, sidecar: SocketAddr) -> Self {
        Self {
            app: Endpoint::from_socket_addr(app),
            peer: Endpoint::from_socket_addr(sidecar),
        }
    }
}

/// Value of a pod map: what the app should see for the connection named by the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RestoreValue {
    /// The client named by the PROXY header: what `accept()`/`getpeername()` return.
    pub client: Endpoint,
    /// The destination named by the PROXY header: what `getsockname()` returns when the agent
    /// attaches the getsockname hooks. Meaningful only with [`FLAG_ORIGINAL_DST`].
    pub original_dst: Endpoint,
    /// [`FLAG_ORIGINAL_DST`] or 0 (a `u32`, not a `bool`, so the type has no padding).
    pub flags: u32,
}

impl RestoreValue {
    /// The value restoring `client` and, if known, `original_dst`.
    pub fn new(client: SocketAddr, original_dst: Option<SocketAddr>) -> Self {
        match original_dst {
            Some(dst) => Self {
                client: Endpoint::from_socket_addr(client),
                original_dst: Endpoint::from_socket_addr(dst),
                flags: FLAG_ORIGINAL_DST,
            },
            None => Self {
                client: Endpoint::from_socket_addr(client),
                original_dst: Endpoint::v6([0; 4], 0),
                flags: 0,
            },
        }
    }

    /// The original destination, if the entry carries one.
    #[inline(always)]
    pub const fn original_dst(&self) -> Option<Endpoint> {
        if self.flags & FLAG_ORIGINAL_DST != 0 {
            Some(self.original_dst)
        } else {
            None
        }
    }
}

// SAFETY: as for `Endpoint`: two `Endpoint`s, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnKey {}

// SAFETY: as for `Endpoint`: two `Endpoint`s and a `u32`, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RestoreValue {}

const _: () = assert!(size_of::<ConnKey>() == 2 * size_of::<Endpoint>());
const _: () = assert!(size_of::<RestoreValue>() == 2 * size_of::<Endpoint>() + 4);
