//! The one form in which both sides of the maps keep an address: [`Endpoint`], and the forms
//! the kernel's hooks read and write.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// `AF_INET`, as stored in [`Endpoint::family`].
pub const AF_INET: u16 = 2;

/// `AF_INET6`, as stored in [`Endpoint::family`].
pub const AF_INET6: u16 = 10;

/// The third 32-bit word of a v4-mapped IPv6 address (`::ffff:0:0/96`), as it sits in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// One side of a connection in the single form both sides of the map use.
///
/// `addr` holds the 16 address bytes in network byte order as four native-endian words (the way
/// `struct bpf_sock` and `struct bpf_sock_addr` expose them), IPv4 as `::ffff:a.b.c.d`; `port` is
/// in host byte order; `family` is [`AF_INET`] exactly when `addr` is v4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: [u32; 4],
    port: u16,
    family: u16,
}

/// An address in the form the kernel's `struct bpf_sock_addr` takes for `AF_INET` sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserAddr4 {
    /// `user_ip4`: the address, network byte order.
    pub ip4: u32,
    /// `user_port`: the port, network byte order in the low 16 bits.
    pub port: u32,
}

/// An address in the form the kernel's `struct bpf_sock_addr` takes for `AF_INET6` sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserAddr6 {
    /// `user_ip6`: the address, network byte order.
    pub ip6: [u32; 4],
    /// `user_port`: the port, network byte order in the low 16 bits.
    pub port: u32,
}

impl Endpoint {
    /// An endpoint that is no address: only `port`, under a `family` value no socket has, so
    /// that keys made of it (the UDP flows' `UDP_RECV_FAMILY`, `UDP_SEND_FAMILY`) cannot collide
    /// with a connection's.
    #[inline(always)]
    pub(crate) const fn tagged(port: u16, family: u16) -> Self {
        Self {
            addr: [0; 4],
            port,
            family,
        }
    }

    /// An IPv4 endpoint from an address word in network byte order (`bpf_sock::src_ip4`) and a
    /// port in host byte order.
    #[inline(always)]
    pub const fn v4(ip4: u32, port: u16) -> Self {
        Self {
            addr: [0, 0, V4_MAPPED_WORD, ip4],
            port,
            family: AF_INET,
        }
    }

    /// An endpoint from IPv6 address words in network byte order (`bpf_sock::src_ip6`) and a port
    /// in host byte order. A v4-mapped address (an IPv4 peer of a dual-stack socket) becomes the
    /// IPv4 endpoint it stands for.
    #[inline(always)]
    pub const fn v6(ip6: [u32; 4], port: u16) -> Self {
        let family = if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD {
            AF_INET
        } else {
            AF_INET6
        };
        Self {
            addr: ip6,
            port,
            family,
        }
    }

    /// The endpoint of a socket address, IPv4 and v4-mapped IPv6 alike.
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Self::v4(u32::from_ne_bytes(a.ip().octets()), a.port()),
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Self::v6([word(0), word(4), word(8), word(12)], a.port())
            }
        }
    }

    /// The socket address this endpoint stands for (IPv4 for v4-mapped ones).
    pub fn to_socket_addr(self) -> SocketAddr {
        if self.family == AF_INET {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(self.addr[3].to_ne_bytes())),
                self.port,
            )
        } else {
            let mut octets = [0; 16];
            for (chunk, word) in octets.chunks_exact_mut(4).zip(self.addr) {
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), self.port, 0, 0))
        }
    }

    /// [`AF_INET`] or [`AF_INET6`].
    pub const fn family(&self) -> u16 {
        self.family
    }

    /// What an `AF_INET` socket's hook writes, or `None` for an IPv6 endpoint, which an IPv4
    /// socket cannot show.
    #[inline(always)]
    pub const fn user_addr4(&self) -> Option<UserAddr4> {
        if self.family == AF_INET {
            Some(UserAddr4 {
                ip4: self.addr[3],
                port: self.user_port(),
            })
        } else {
            None
        }
    }

    /// What an `AF_INET6` socket's hook writes: IPv4 endpoints as `::ffff:a.b.c.d`, as the kernel
    /// itself reports IPv4 peers of dual-stack sockets.
    #[inline(always)]
    pub const fn user_addr6(&self) -> UserAddr6 {
        UserAddr6 {
            ip6: self.addr,
            port: self.user_port(),
        }
    }

    #[inline(always)]
    const fn user_port(&self) -> u32 {
        self.port.to_be() as u32
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, fixed-width integer fields whose sizes add up to the size of the
// type (asserted below), so there is no padding and every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Endpoint {}

const _: () = assert!(size_of::<Endpoint>() == 16 + 2 + 2);
