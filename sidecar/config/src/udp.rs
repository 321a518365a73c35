//! The UDP keys of a listener (`protocol: udp`): the protocol and header placement and their
//! defaults (what a UDP listener refuses is checked in `validate`).

use serde::{Deserialize, Serialize};

/// What a listener receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TCP connections.
    #[default]
    Tcp,
    /// UDP datagrams with a PROXY v2 header in front (every datagram, or the first of a flow).
    Udp,
}

/// Which datagrams of a UDP listener carry a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatagramHeader {
    /// Every datagram (go-mmproxy, caddy-l4, LoxiLB): the flow is the header's client.
    #[default]
    Every,
    /// Only the first datagram of a flow: the flow is the load balancer's source address and
    /// port, and later datagrams from it are payload only.
    First,
}

/// Defaults of the UDP keys, each with why.
pub(crate) mod defaults {
    use std::{num::NonZeroUsize, time::Duration};

    /// DNS answers in milliseconds, QUIC and games keep flows alive with traffic; a minute
    /// without a datagram either way is a flow that is over (conntrack's UDP stream timeout is
    /// 120 s, its single-datagram one 30 s).
    pub(crate) fn flow_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }

    /// Each flow holds a socket (a file descriptor, and in `ebpf` mode two map entries).
    pub(crate) fn max_flows() -> NonZeroUsize {
        NonZeroUsize::new(4096).expect("non-zero")
    }
}
