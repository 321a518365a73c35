//! The addresses of one connection: the ones the sockets have, and the ones the app is told
//! (from a trusted PROXY header, or the real ones when it names none). Every restore mode and
//! the http mode start from these.

use std::net::SocketAddr;

use trueip_addrs::{ClientAddr, LbPeer, OriginalDst, SidecarAddr};
use trueip_sidecar_config::canonical;

use crate::detect::Detection;

/// The addresses of the connection the load balancer opened to the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAddrs {
    /// The load balancer's end.
    pub peer: LbPeer,
    /// The sidecar's end.
    pub local: SidecarAddr,
}

/// Who the app should be told it is talking to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client: from the header, or the real peer when the header names none.
    pub client: ClientAddr,
    /// The address the client connected to.
    pub destination: OriginalDst,
    /// Whether the addresses came from a PROXY header.
    pub from_header: bool,
}

impl Endpoints {
    /// The endpoints of a connection: the header's addresses when it is a trusted `PROXY`
    /// header with an internet address pair, the real ones otherwise (LOCAL, UNSPEC, no header).
    pub fn of(detection: &Detection, conn: ConnAddrs) -> Self {
        if let Detection::Header { header, .. } = detection
            && let (Some(client), Some(destination)) =
                (header.stream_client(), header.original_destination())
        {
            return Self {
                client: ClientAddr::new(client),
                destination: OriginalDst::new(destination),
                from_header: true,
            };
        }
        let unmap = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
        Self {
            client: LbPeer::new(unmap(conn.peer.addr())).as_client(),
            destination: SidecarAddr::new(unmap(conn.local.addr())).as_original_dst(),
            from_header: false,
        }
    }
}
