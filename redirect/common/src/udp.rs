//! Keys of UDP flows in a pod map.
//!
//! A UDP listener of the sidecar keeps one loopback socket per client flow and sends that flow's
//! datagrams to the app from it. Two entries per flow, in the same pod map as the TCP connections
//! (so the same isolation: only this pod's sidecar holds the map, only this pod's hooks read it):
//!
//! * [`ConnKey::udp_recv`]`(app port, flow socket)` → the client. The cgroup `recvmsg4/6` hooks
//!   look it up with the datagram's source and the app socket's port, and make `recvfrom()` /
//!   `recvmsg()` return the client instead of the sidecar's flow socket.
//! * [`ConnKey::udp_send`]`(app port, client)` → the flow socket (in [`RestoreValue::client`]).
//!   The cgroup `sendmsg4/6` hooks look it up with the destination the app wrote and send the
//!   reply to the flow socket instead, which relays it to the load balancer.
//!
//! The app side of these keys is not an address but a marker ([`UDP_RECV_FAMILY`] or
//! [`UDP_SEND_FAMILY`] in the family field, the app socket's port beside it): TCP keys always
//! carry `AF_INET`/`AF_INET6` there, so the two kinds can never collide. The app socket's port is
//! part of the key because an app may bind `0.0.0.0`, so its address says nothing, while two
//! listeners to two app ports may well see the same client.

use core::net::SocketAddr;

use crate::{
    endpoint::Endpoint,
    restore::{ConnKey, RestoreValue},
};

/// Family marker of a [`ConnKey::udp_recv`] key (not an address family).
pub const UDP_RECV_FAMILY: u16 = 0x5501;
/// Family marker of a [`ConnKey::udp_send`] key (not an address family).
pub const UDP_SEND_FAMILY: u16 = 0x5502;

impl ConnKey {
    /// The key a `recvmsg` hook looks up: a datagram from `source` arriving on an app socket
    /// bound to `app_port` (host byte order).
    #[inline(always)]
    pub const fn udp_recv(app_port: u16, source: Endpoint) -> Self {
        Self {
            app: Endpoint::tagged(app_port, UDP_RECV_FAMILY),
            peer: source,
        }
    }

    /// The key a `sendmsg` hook looks up: the app socket bound to `app_port` (host byte order)
    /// sends to `destination`.
    #[inline(always)]
    pub const fn udp_send(app_port: u16, destination: Endpoint) -> Self {
        Self {
            app: Endpoint::tagged(app_port, UDP_SEND_FAMILY),
            peer: destination,
        }
    }
}

/// The two entries of one UDP flow, as the sidecar writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFlowEntries {
    /// `recvmsg`: flow socket → client.
    pub recv: (ConnKey, RestoreValue),
    /// `sendmsg`: client → flow socket.
    pub send: (ConnKey, RestoreValue),
}

impl UdpFlowEntries {
    /// The entries of the flow whose datagrams the sidecar sends from `flow_socket` to the app's
    /// port `app_port`, on behalf of `client`.
    pub fn new(app_port: u16, flow_socket: SocketAddr, client: SocketAddr) -> Self {
        let flow = Endpoint::from_socket_addr(flow_socket);
        let client = Endpoint::from_socket_addr(client);
        let value = |shown: Endpoint| RestoreValue {
            client: shown,
            original_dst: Endpoint::v6([0; 4], 0),
            flags: 0,
        };
        Self {
            recv: (ConnKey::udp_recv(app_port, flow), value(client)),
            send: (ConnKey::udp_send(app_port, client), value(flow)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hooks_build_the_keys_the_sidecar_inserts() {
        let entries = UdpFlowEntries::new(5353, sa("127.0.0.1:40000"), sa("203.0.113.7:1234"));
        // recvmsg4: user_ip4/user_port hold the datagram's source, network byte order.
        let source = Endpoint::v4(u32::from_ne_bytes([127, 0, 0, 1]), 40000);
        assert_eq!(ConnKey::udp_recv(5353, source), entries.recv.0);
        assert_eq!(
            entries.recv.1.client.to_socket_addr(),
            sa("203.0.113.7:1234")
        );
        // sendmsg6 on a dual-stack socket: the client as ::ffff:203.0.113.7.
        let o = Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped().octets();
        let words = [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]));
        assert_eq!(
            ConnKey::udp_send(5353, Endpoint::v6(words, 1234)),
            entries.send.0
        );
        assert_eq!(
            entries.send.1.client.to_socket_addr(),
            sa("127.0.0.1:40000")
        );
    }

    #[test]
    fn udp_keys_never_equal_tcp_keys_or_each_other() {
        let flow = sa("127.0.0.1:40000");
        let tcp = ConnKey::from_socket_addrs(sa("0.0.0.0:5353"), flow);
        let recv = ConnKey::udp_recv(5353, Endpoint::from_socket_addr(flow));
        let send = ConnKey::udp_send(5353, Endpoint::from_socket_addr(flow));
        assert_ne!(tcp, recv);
        assert_ne!(tcp, send);
        assert_ne!(recv, send);
        assert_ne!(
            recv,
            ConnKey::udp_recv(5354, Endpoint::from_socket_addr(flow))
        );
    }
}
