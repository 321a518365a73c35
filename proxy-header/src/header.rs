//! The decoded header, shared by both versions; each version's module adds its encoder.

use std::net::SocketAddr;

use crate::tlv::Tlvs;

/// Which version of the protocol a header arrived in. Both decode to the same [`Header`];
/// the version is kept so logs and metrics can tell what the load balancer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text format, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary format opening with [`V2_SIGNATURE`](crate::V2_SIGNATURE).
    V2,
}

/// What the sender asks the receiver to do with the addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The connection was opened by the proxy itself (a health check): use the connection's
    /// real endpoints, ignore any address in the header. v2 only. Always accepted, as the
    /// spec requires: a block that does not parse (addresses or TLVs) is discarded, not refused.
    Local,
    /// The connection is relayed for a client: the header carries the client's addresses.
    /// Every v1 header is `Proxy`.
    Proxy,
}

/// The transport of the proxied connection (v2 byte 13, low nibble). v1 has only TCP:
/// `TCP4`/`TCP6` decode as `Stream`, `UNKNOWN` as `Unspec`.
///
/// Only a `Stream` header describes a TCP client: [`Header::stream_client`] and the
/// `TCP4`/`TCP6` lines of [`Header::to_v1`] require it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Unknown or unsupported (`UNSPEC`). The spec says the receiver must then ignore the
    /// addresses, so a decoded v2 header with this transport never carries IP addresses
    /// (byte 13 `0x10`/`0x20` decodes as [`Addresses::Unspec`]).
    Unspec,
    /// `SOCK_STREAM`: TCP.
    Stream,
    /// `SOCK_DGRAM`: UDP. [`Header::client`] returns its source (for
    /// [`decode_datagram`](crate::decode_datagram)); [`Header::stream_client`] and
    /// [`Header::to_v1`] do not treat it as a TCP client.
    Datagram,
}

/// The endpoints carried by a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// No usable address: v2 `AF_UNSPEC`, v1 `UNKNOWN`, every v2 `LOCAL` header (whose address
    /// block is skipped, as the spec requires), and every v2 `PROXY` header with family
    /// `INET`/`INET6` but transport `UNSPEC` (byte 13 `0x10`/`0x20`: the spec says to ignore
    /// its addresses; the block is skipped and the TLVs after it are read).
    Unspec,
    /// An IPv4 or IPv6 source and destination, both of the same family on decode.
    Inet {
        /// The client, as seen by the load balancer.
        source: SocketAddr,
        /// The address the client connected to (the load balancer's frontend).
        destination: SocketAddr,
    },
    /// `AF_UNIX` socket paths, 108 bytes each exactly as sent (NUL padding included).
    Unix {
        /// The sender-side socket path.
        source: Vec<u8>,
        /// The receiver-side socket path.
        destination: Vec<u8>,
    },
}

/// A decoded PROXY header, v1 or v2: what the sidecar needs to restore the client address
/// and, in the `proxy-v1`/`proxy-v2` restore modes, to re-emit a clean header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The version it arrived in.
    pub version: Version,
    /// `Local` (health check) or `Proxy` (relayed client).
    pub command: Command,
    /// TCP, UDP or unspecified.
    pub transport: Transport,
    /// The endpoints; on decode always [`Addresses::Unspec`] for `Local` and for a v2
    /// `INET`/`INET6` header whose transport is `Unspec`.
    pub addresses: Addresses,
    /// The v2 TLVs in wire order, CRC32c included; always empty for v1, and for a `Local`
    /// header whose TLVs do not parse (accepted, its block discarded, as the spec requires).
    pub tlvs: Tlvs,
}

impl Header {
    /// The client address the header names: the source, when the header is a `Proxy` command
    /// with IP addresses, **whatever its transport**, TCP or UDP. `None` means "use the
    /// connection's own peer address" (LOCAL, v1 UNKNOWN, family UNSPEC or UNIX, and v2
    /// INET/INET6 with an UNSPEC transport, which decodes without addresses).
    ///
    /// This is the datagram receiver's accessor ([`decode_datagram`](crate::decode_datagram)
    /// accepts `Datagram` headers and wants their client). A receiver on a TCP listener must
    /// use [`stream_client`](Self::stream_client) instead, which never takes a client described
    /// as UDP for a TCP one.
    #[must_use]
    pub fn client(&self) -> Option<SocketAddr> {
        self.inet().map(|(source, _)| source)
    }

    /// The client address for a receiver on a TCP listener: [`client`](Self::client), but only
    /// when the header describes a TCP connection ([`Transport::Stream`]). A `Datagram` (UDP)
    /// header, or one built by hand with IP addresses and an `Unspec` transport, gives `None`:
    /// use the connection's own peer address, as for LOCAL. [`to_v1`](Self::to_v1) writes
    /// `TCP4`/`TCP6` exactly when this is `Some`.
    ///
    /// ```
    /// use trueip_proxy_header::{decode, Limits, V2_SIGNATURE};
    ///
    /// // 203.0.113.7:5353 -> 198.51.100.1:53 over UDP.
    /// let mut wire = V2_SIGNATURE.to_vec();
    /// wire.extend([0x21, 0x12, 0x00, 0x0c]); // PROXY, UDP over IPv4, 12 bytes
    /// wire.extend([203, 0, 113, 7, 198, 51, 100, 1, 0x14, 0xe9, 0x00, 0x35]);
    /// let (header, _) = decode(&wire, &Limits::default())?.expect("complete");
    /// assert_eq!(header.client(), Some("203.0.113.7:5353".parse()?));
    /// assert_eq!(header.stream_client(), None); // not a TCP client
    /// assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stream_client(&self) -> Option<SocketAddr> {
        self.stream_inet().map(|(source, _)| source)
    }

    /// The address the client originally connected to, under the same conditions as
    /// [`client`](Self::client) (so, like it, whatever the transport: check
    /// [`stream_client`](Self::stream_client) first on a TCP listener); shown to the app by the
    /// optional getsockname rewrite.
    #[must_use]
    pub fn original_destination(&self) -> Option<SocketAddr> {
        self.inet().map(|(_, destination)| destination)
    }

    /// The source and destination when this header names a relayed IP client over TCP.
    pub(crate) fn stream_inet(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.inet().filter(|_| self.transport == Transport::Stream)
    }

    /// The source and destination when this header names a relayed IP client.
    fn inet(&self) -> Option<(SocketAddr, SocketAddr)> {
        match (self.command, &self.addresses) {
            (
                Command::Proxy,
                Addresses::Inet {
                    source,
                    destination,
                },
            ) => Some((*source, *destination)),
            _ => None,
        }
    }
}

/// Brings an IPv4/IPv6 mix (possible only in a hand-built header) to one family, IPv6, by
/// IPv4-mapping the IPv4 side, so both encoders always write a consistent family.
pub(crate) fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (source, destination) {
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => (mapped(v4), destination),
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => (source, mapped(v4)),
        _ => (source, destination),
    }
}

/// `a.b.c.d:p` as `[::ffff:a.b.c.d]:p`.
fn mapped(v4: std::net::SocketAddrV4) -> SocketAddr {
    SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(command: Command, source: &str, destination: &str) -> Header {
        Header {
            version: Version::V2,
            command,
            transport: Transport::Stream,
            addresses: Addresses::Inet {
                source: source.parse().unwrap(),
                destination: destination.parse().unwrap(),
            },
            tlvs: Tlvs::default(),
        }
    }

    #[test]
    fn client_only_for_proxy_inet() {
        let proxy = inet(Command::Proxy, "192.0.2.1:1000", "192.0.2.2:80");
        assert_eq!(proxy.client(), Some("192.0.2.1:1000".parse().unwrap()));
        assert_eq!(
            proxy.original_destination(),
            Some("192.0.2.2:80".parse().unwrap())
        );
        assert_eq!(
            proxy.stream_client(),
            Some("192.0.2.1:1000".parse().unwrap())
        );
        let local = inet(Command::Local, "192.0.2.1:1000", "192.0.2.2:80");
        assert_eq!(local.client(), None);
        assert_eq!(local.stream_client(), None);
        assert_eq!(local.original_destination(), None);
        let unix = Header {
            addresses: Addresses::Unix {
                source: vec![0; 108],
                destination: vec![0; 108],
            },
            ..proxy
        };
        assert_eq!(unix.client(), None);
        assert_eq!(unix.stream_client(), None);
    }

    /// v1 can only say TCP, and a TCP listener must not take a UDP client: only `Stream`
    /// headers give a `stream_client` and a `TCP4`/`TCP6` line; `client` ignores the transport.
    #[test]
    fn stream_client_and_v1_tcp_only_for_stream_transport() {
        for (source, destination, tcp) in [
            (
                "192.0.2.1:1000",
                "192.0.2.2:80",
                &b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\n"[..],
            ),
            (
                "[2001:db8::1]:1000",
                "[2001:db8::2]:80",
                &b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n"[..],
            ),
        ] {
            let client: SocketAddr = source.parse().unwrap();
            for transport in [Transport::Stream, Transport::Datagram, Transport::Unspec] {
                let header = Header {
                    transport,
                    ..inet(Command::Proxy, source, destination)
                };
                assert_eq!(header.client(), Some(client), "{transport:?}");
                assert_eq!(
                    header.original_destination(),
                    Some(destination.parse().unwrap())
                );
                if transport == Transport::Stream {
                    assert_eq!(header.stream_client(), Some(client));
                    assert_eq!(header.to_v1(), tcp);
                } else {
                    assert_eq!(header.stream_client(), None, "{transport:?}");
                    assert_eq!(header.to_v1(), b"PROXY UNKNOWN\r\n", "{transport:?}");
                }
            }
        }
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let header = inet(Command::Proxy, "192.0.2.1:1000", "[2001:db8::1]:80");
        assert_eq!(
            header.to_v1(),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 1000 80\r\n"
        );
        let (source, destination) = same_family(
            "[2001:db8::1]:80".parse().unwrap(),
            "192.0.2.1:1000".parse().unwrap(),
        );
        assert_eq!(source, "[2001:db8::1]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(
            destination,
            "[::ffff:192.0.2.1]:1000".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn to_v1_unknown_without_client() {
        let local = inet(Command::Local, "192.0.2.1:1000", "192.0.2.2:80");
        assert_eq!(local.to_v1(), b"PROXY UNKNOWN\r\n");
    }
}
