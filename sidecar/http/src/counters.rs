//! What the http mode needs from the sidecar around it: the connection as it arrived, and
//! somewhere to count what happened to it.

use trueip_addrs::ClientAddr;

use trueip_proxy_header::Header;

/// A downstream connection as the sidecar hands it over, its PROXY header read.
#[derive(Debug)]
pub struct Arrival {
    /// The client the header named, or the connection's peer when there was no header.
    pub client: ClientAddr,
    /// The header, when there was one (its TLVs can become request headers).
    pub header: Option<Box<Header>>,
    /// What the client sent after the header, already read.
    pub rest: Vec<u8>,
}

/// The counters of one listener that the http mode increments; the sidecar's listener metrics
/// implement it, so that http and relay connections report on the same `/metrics` series.
pub trait Counters: Send + Sync + std::fmt::Debug {
    /// A response sent to the client, by status code.
    fn http_response(&self, status: u16);
    /// A forwarding header the client sent that was removed.
    fn http_header_removed(&self, header: &str);
    /// A request refused, or a connection closed, because of `limit`.
    fn http_limit(&self, limit: &'static str);
    /// A connection rejected, by `reason`.
    fn rejected(&self, reason: &'static str);
    /// A request that could not be delivered to the app.
    fn upstream_error(&self);
    /// Bytes relayed to the app by a tunnel (upgrade or CONNECT).
    fn to_app(&self, n: u64);
    /// Bytes relayed to the client by a tunnel.
    fn to_client(&self, n: u64);
}
