//! The client addresses a PROXY header may name. A load balancer relays connections from hosts
//! on a network: never from `0.0.0.0`/`::`, a multicast group or the broadcast address, and not
//! from its own loopback. A header that says so is forged or broken, and an app that trusts
//! loopback callers (admin endpoints often do) would trust it; such headers are refused, loopback
//! ones unless the listener allows them (`allow_loopback_clients`, for tests and same-host
//! load balancers).

use std::net::IpAddr;

use trueip_sidecar_config::canonical;

/// Why a header's client address cannot be a relayed client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImplausibleClient {
    /// `0.0.0.0` or `::`.
    #[error("the header names the unspecified address as the client")]
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8.
    #[error("the header names a multicast address as the client")]
    Multicast,
    /// 255.255.255.255.
    #[error("the header names the broadcast address as the client")]
    Broadcast,
    /// 127.0.0.0/8 or ::1, on a listener that does not allow them.
    #[error("the header names a loopback address as the client (allow_loopback_clients is off)")]
    Loopback,
}

impl ImplausibleClient {
    /// A stable label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unspecified => "client_unspecified",
            Self::Multicast => "client_multicast",
            Self::Broadcast => "client_broadcast",
            Self::Loopback => "client_loopback",
        }
    }
}

/// Checks the client address a header names (an IPv4-mapped IPv6 address as the IPv4 one).
pub fn check(client: IpAddr, allow_loopback: bool) -> Result<(), ImplausibleClient> {
    let client = canonical(client);
    if client.is_unspecified() {
        return Err(ImplausibleClient::Unspecified);
    }
    if client.is_multicast() {
        return Err(ImplausibleClient::Multicast);
    }
    if let IpAddr::V4(v4) = client
        && v4.is_broadcast()
    {
        return Err(ImplausibleClient::Broadcast);
    }
    if client.is_loopback() && !allow_loopback {
        return Err(ImplausibleClient::Loopback);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_a_load_balancer_can_relay_pass() {
        for (ip, verdict) in [
            ("203.0.113.7", Ok(())),
            ("2001:db8::7", Ok(())),
            ("10.1.2.3", Ok(())),
            ("0.0.0.0", Err(ImplausibleClient::Unspecified)),
            ("::", Err(ImplausibleClient::Unspecified)),
            ("::ffff:0.0.0.0", Err(ImplausibleClient::Unspecified)),
            ("224.0.0.1", Err(ImplausibleClient::Multicast)),
            ("239.255.255.250", Err(ImplausibleClient::Multicast)),
            ("ff02::1", Err(ImplausibleClient::Multicast)),
            ("255.255.255.255", Err(ImplausibleClient::Broadcast)),
            ("::ffff:255.255.255.255", Err(ImplausibleClient::Broadcast)),
            ("127.0.0.1", Err(ImplausibleClient::Loopback)),
            ("127.9.9.9", Err(ImplausibleClient::Loopback)),
            ("::1", Err(ImplausibleClient::Loopback)),
            ("::ffff:127.0.0.1", Err(ImplausibleClient::Loopback)),
        ] {
            assert_eq!(check(ip.parse().unwrap(), false), verdict, "{ip}");
        }
        assert_eq!(check("127.0.0.1".parse().unwrap(), true), Ok(()));
        assert_eq!(check("::1".parse().unwrap(), true), Ok(()));
        assert_eq!(
            check("0.0.0.0".parse().unwrap(), true),
            Err(ImplausibleClient::Unspecified),
            "allowing loopback allows nothing else"
        );
    }
}
