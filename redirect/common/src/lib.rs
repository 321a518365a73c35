//! Map keys and values shared between trueip's eBPF programs and user space.
//!
//! The restore map answers one question for the cgroup `getpeername`/`getsockname` hooks: "this
//! socket of the app is the far end of a sidecar's loopback connection — which client (and which
//! original destination) does it stand for?". The key is the app-side view of that connection
//! ([`ConnKey`]), the value what the app should see instead ([`RestoreValue`]).
//!
//! Both sides must agree on byte orders, and IPv4 must look the same whether the app's socket is
//! `AF_INET` or a dual-stack `AF_INET6` one (where the kernel stores `::ffff:a.b.c.d`). Every
//! address is therefore kept in one form, [`Endpoint`]: sixteen bytes in network byte order, IPv4
//! as its v4-mapped IPv6 form, the port in host byte order, and a family derived from the address.
//! The constructors are the only way to build one, so the two sides cannot disagree.
#![no_std]

#[cfg(test)]
extern crate std;

mod endpoint;
mod fast_path;
mod restore;
mod udp;

pub use crate::{endpoint::*, fast_path::*, restore::*};
pub use udp::{UDP_RECV_FAMILY, UDP_SEND_FAMILY, UdpFlowEntries};

/// Name of the outer map (hash of maps: netns cookie → the pod's [`ConnKey`] → [`RestoreValue`]
/// map) in the eBPF object; the agent pins it under this name.
pub const RESTORE_MAP: &str = "TRUEIP_RESTORE";

/// Capacity of the outer map compiled into the eBPF object: how many pods (network namespaces)
/// one node can serve. The agent may override it when it creates the map.
pub const MAX_PODS: u32 = 1024;

/// `max_entries` of the inner-map template compiled into the eBPF object. The kernel does not
/// compare `max_entries` of hash maps placed in a hash of maps, so each pod's map may have its own
/// size ([`POD_MAP_DEFAULT_ENTRIES`] unless configured).
pub const POD_MAP_TEMPLATE_ENTRIES: u32 = 1024;

/// Default capacity of one pod's map: one entry per live restored connection.
pub const POD_MAP_DEFAULT_ENTRIES: u32 = 16384;

/// Map flags of every pod map (`BPF_F_NO_PREALLOC`). They must be identical on the inner-map
/// template and on each map the agent creates, or the kernel refuses the insertion into the outer
/// map; not preallocating keeps idle pods cheap.
pub const POD_MAP_FLAGS: u32 = 1;

/// Name of a pod's steering socket map (SOCKHASH: [`steer_socket_key`] → the sidecar's listening
/// socket) in the sk_lookup object. Each pod has its own instance of the sk_lookup program and of its maps,
/// attached to that pod's network namespace only; the agent pins them in the pod's directory.
pub const STEER_SOCKETS_MAP: &str = "TRUEIP_STEER_SOCKETS";

/// Name of a pod's steered-ports map (HASH: app port, host byte order, as a `u32` → a
/// [`SteerPort`]) in the sk_lookup object.
pub const STEER_PORTS_MAP: &str = "TRUEIP_STEER_PORTS";

/// Name of a pod's steering counters (PERCPU_ARRAY of `u64`, indexed by the `STEER_STAT_*`
/// constants) in the sk_lookup object.
pub const STEER_STATS_MAP: &str = "TRUEIP_STEER_STATS";

/// Name of the sk_lookup program in its object.
pub const STEER_PROGRAM: &str = "steer";

/// How many app ports one pod can steer (capacity of its ports map; the sockets map holds two
/// listeners per port: one per family, or a dual-stack one).
pub const MAX_STEER_PORTS: u32 = 64;

/// Counter: connections handed to the sidecar's listener.
pub const STEER_STAT_STEERED: u32 = 0;
/// Counter: connections that went to the app because the sidecar's listener was gone (or could
/// not take the connection: e.g. an IPv6 client and an IPv4-only listener), with fail-open.
pub const STEER_STAT_FELL_THROUGH: u32 = 1;
/// Counter: connections refused because the sidecar's listener was gone, with fail-closed.
pub const STEER_STAT_REFUSED: u32 = 2;
/// Number of steering counters.
pub const STEER_STATS: u32 = 3;

/// [`SteerPort::flags`] bit: refuse connections to the port while the sidecar's listener is
/// gone, instead of letting them reach the app without the sidecar (fail-closed).
pub const STEER_FAIL_CLOSED: u32 = 1;

/// The `ingress_ifindex` of a network namespace's loopback device: `lo` is always the first
/// device of a namespace. Connections arriving on it (the sidecar's own connection to the app,
/// in-pod clients) are never steered.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// [`steer_socket_key`] family of a listener that takes both IPv4 and IPv6 connections (a
/// dual-stack `AF_INET6` socket).
pub const STEER_ANY_FAMILY: u32 = 0;

/// Key of a listener in the steering socket map: the app port (host byte order) in the low 16
/// bits, the family of the connections it takes ([`AF_INET`], [`AF_INET6`] for an IPv6-only
/// socket, [`STEER_ANY_FAMILY`] for a dual-stack one) above. A connection goes to the listener of
/// its own family if there is one, else to the dual-stack one: so an app with separate IPv4 and
/// IPv6 sockets (nginx's `listen 80; listen [::]:80;`) can have a sidecar listener per family,
/// each connecting to the app over that family's loopback.
#[inline(always)]
pub const fn steer_socket_key(port: u32, family: u32) -> u32 {
    (family << 16) | (port & 0xffff)
}

/// Value of the steered-ports map: how connections to one app port are steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SteerPort {
    /// [`STEER_FAIL_CLOSED`] or 0.
    pub flags: u32,
}

// SAFETY: `#[repr(C)]`, `Copy`, one `u32`: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SteerPort {}

const _: () = assert!(size_of::<SteerPort>() == 4);

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;

    /// What `struct bpf_sock` shows for an IPv4 address: the 4 bytes as they are on the wire.
    fn kernel_ip4(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    /// What `struct bpf_sock` shows for an IPv6 address.
    fn kernel_ip6(ip: Ipv6Addr) -> [u32; 4] {
        let o = ip.octets();
        [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_socket_key_matches_the_inserted_key() {
        // App accepted 127.0.0.1:8080 <- 127.0.0.1:40000 on an AF_INET socket.
        let kernel = ConnKey {
            app: Endpoint::v4(kernel_ip4([127, 0, 0, 1]), 8080),
            peer: Endpoint::v4(kernel_ip4([127, 0, 0, 1]), 40000),
        };
        let inserted = ConnKey::from_socket_addrs(sa("127.0.0.1:8080"), sa("127.0.0.1:40000"));
        assert_eq!(kernel, inserted);
    }

    #[test]
    fn v4_connection_on_a_dual_stack_socket_matches_the_v4_key() {
        // Same connection, but the app listens on [::]: the kernel shows v4-mapped addresses.
        let mapped = |s: &str| kernel_ip6(s.parse::<Ipv4Addr>().unwrap().to_ipv6_mapped());
        let kernel = ConnKey {
            app: Endpoint::v6(mapped("127.0.0.1"), 8080),
            peer: Endpoint::v6(mapped("127.0.0.1"), 40000),
        };
        let inserted = ConnKey::from_socket_addrs(sa("127.0.0.1:8080"), sa("127.0.0.1:40000"));
        assert_eq!(kernel, inserted);
        assert_eq!(kernel.peer.family(), AF_INET);
        // A client that wrote the v4-mapped form itself gets the same key.
        let via_mapped = ConnKey::from_socket_addrs(
            sa("[::ffff:127.0.0.1]:8080"),
            sa("[::ffff:127.0.0.1]:40000"),
        );
        assert_eq!(kernel, via_mapped);
    }

    #[test]
    fn v6_socket_key_matches_the_inserted_key() {
        let kernel = ConnKey {
            app: Endpoint::v6(kernel_ip6(Ipv6Addr::LOCALHOST), 8080),
            peer: Endpoint::v6(kernel_ip6(Ipv6Addr::LOCALHOST), 40000),
        };
        let inserted = ConnKey::from_socket_addrs(sa("[::1]:8080"), sa("[::1]:40000"));
        assert_eq!(kernel, inserted);
        assert_eq!(kernel.app.family(), AF_INET6);
    }

    #[test]
    fn direction_and_ports_matter() {
        let a = ConnKey::from_socket_addrs(sa("127.0.0.1:8080"), sa("127.0.0.1:40000"));
        let reversed = ConnKey::from_socket_addrs(sa("127.0.0.1:40000"), sa("127.0.0.1:8080"));
        let other_port = ConnKey::from_socket_addrs(sa("127.0.0.1:8080"), sa("127.0.0.1:40001"));
        assert_ne!(a, reversed);
        assert_ne!(a, other_port);
    }

    #[test]
    fn v4_client_is_written_as_the_kernel_expects() {
        let v = RestoreValue::new(sa("203.0.113.7:51234"), None);
        let four = v.client.user_addr4().unwrap();
        // user_ip4 / user_port hold network byte order, as sin_addr / sin_port do.
        assert_eq!(four.ip4.to_ne_bytes(), [203, 0, 113, 7]);
        assert_eq!((four.port as u16).to_ne_bytes(), 51234u16.to_be_bytes());
        assert_eq!(four.port >> 16, 0);
        // On a dual-stack socket the same client reads as ::ffff:203.0.113.7.
        let six = v.client.user_addr6();
        let expected: Ipv6Addr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(six.ip6, kernel_ip6(expected));
        assert_eq!(six.port, four.port);
        assert_eq!(v.original_dst(), None);
    }

    #[test]
    fn v6_client_cannot_be_shown_to_a_v4_socket() {
        let v = RestoreValue::new(sa("[2001:db8::7]:443"), Some(sa("[2001:db8::1]:8443")));
        assert_eq!(v.client.user_addr4(), None);
        assert_eq!(
            v.client.user_addr6().ip6,
            kernel_ip6("2001:db8::7".parse().unwrap())
        );
        assert_eq!(
            v.original_dst().unwrap().to_socket_addr(),
            sa("[2001:db8::1]:8443")
        );
    }

    #[test]
    fn steer_socket_keys_keep_port_and_family_apart() {
        assert_eq!(steer_socket_key(8080, STEER_ANY_FAMILY), 8080);
        let v4 = steer_socket_key(8080, AF_INET.into());
        let v6 = steer_socket_key(8080, AF_INET6.into());
        assert_eq!(v4 & 0xffff, 8080);
        assert_eq!(v4 >> 16, u32::from(AF_INET));
        assert_ne!(v4, v6);
        assert_ne!(v4, steer_socket_key(8081, AF_INET.into()));
        // Only the low 16 bits of the port count (the kernel's local_port is a u32).
        assert_eq!(steer_socket_key(0x1_0050, 0), 0x50);
    }

    #[test]
    fn endpoints_round_trip() {
        for s in [
            "203.0.113.7:1",
            "[2001:db8::7]:65535",
            "0.0.0.0:0",
            "[::]:80",
        ] {
            assert_eq!(Endpoint::from_socket_addr(sa(s)).to_socket_addr(), sa(s));
        }
        let mapped = Endpoint::from_socket_addr(sa("[::ffff:10.0.0.1]:80"));
        assert_eq!(
            mapped.to_socket_addr(),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 80)
        );
    }
}
