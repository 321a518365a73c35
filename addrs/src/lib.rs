//! Which side of a relayed connection an address names. A connection through trueip has five:
//! the client on the internet and the address it connected to (both known only from the load
//! balancer's PROXY header), the load balancer's end of the connection to the sidecar, the
//! sidecar's own sockets, and the app's. They are all `SocketAddr`s, and swapping two of them
//! is the bug that shows an app the wrong client; so each has a type of its own, and turning
//! one into another is a named, documented step ([`LbPeer::as_client`],
//! [`SidecarAddr::as_original_dst`]).
//!
//! The types are plain copies of a `SocketAddr`: [`new`](ClientAddr::new) wraps one (where the
//! kernel or a header says which side it is), [`addr`](ClientAddr::addr) unwraps it (for a
//! socket call or an encoder), and `Display` prints it as `SocketAddr` does.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// Defines one side's newtype with its constructor, accessors and `Display`.
macro_rules! side {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(SocketAddr);

        impl $name {
            /// Names `addr` as this side.
            #[must_use]
            pub const fn new(addr: SocketAddr) -> Self {
                Self(addr)
            }

            /// The address, for a socket call or an encoder.
            #[must_use]
            pub const fn addr(self) -> SocketAddr {
                self.0
            }

            /// Its IP address.
            #[must_use]
            pub const fn ip(self) -> IpAddr {
                self.0.ip()
            }

            /// Its port.
            #[must_use]
            pub const fn port(self) -> u16 {
                self.0.port()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

side! {
    /// The client the load balancer relays: what the app's `accept()`/`getpeername()` (or
    /// `recvfrom()`) must return, and what the restore modes hand on.
    ClientAddr
}

side! {
    /// The address the client connected (or sent) to, the load balancer's frontend: what the
    /// app's `getsockname()` may return, and a re-emitted header's destination.
    OriginalDst
}

side! {
    /// The load balancer's end of its connection to the sidecar (after its SNAT): whom the
    /// trust rules judge, never what the app is shown unless no header names a client.
    LbPeer
}

side! {
    /// A sidecar socket's own address: the listener's end of the load balancer's connection,
    /// or the loopback source of the sidecar's connection (or flow) to the app — the peer the
    /// app's socket really has.
    SidecarAddr
}

side! {
    /// Where the app listens, on loopback: the upstream the sidecar connects (or sends) to,
    /// and the local address of the app's accepted socket.
    AppAddr
}

impl LbPeer {
    /// The client when no header names one (no header, `LOCAL`, `UNSPEC`): the load balancer
    /// is then the only client there is.
    #[must_use]
    pub const fn as_client(self) -> ClientAddr {
        ClientAddr(self.0)
    }
}

impl SidecarAddr {
    /// The original destination when no header names one: the sidecar's listening end is the
    /// address the connection was made to.
    #[must_use]
    pub const fn as_original_dst(self) -> OriginalDst {
        OriginalDst(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_side_prints_and_unwraps_as_its_address() {
        let addr: SocketAddr = "[2001:db8::7]:51234".parse().unwrap();
        let client = ClientAddr::new(addr);
        assert_eq!(client.to_string(), "[2001:db8::7]:51234");
        assert_eq!(
            (client.addr(), client.ip(), client.port()),
            (addr, addr.ip(), 51234)
        );
    }

    #[test]
    fn only_the_named_steps_turn_one_side_into_another() {
        let lb: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let listen: SocketAddr = "192.0.2.10:8080".parse().unwrap();
        assert_eq!(LbPeer::new(lb).as_client(), ClientAddr::new(lb));
        assert_eq!(
            SidecarAddr::new(listen).as_original_dst(),
            OriginalDst::new(listen)
        );
    }
}
