//! The UDP keys of a listener (`protocol: udp`): the protocol and header placement, their
//! defaults, and the combinations a UDP listener refuses.

use serde::Deserialize;

use crate::{HeaderPolicy, ListenerConfig, Mode};

/// What a listener receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TCP connections.
    #[default]
    Tcp,
    /// UDP datagrams with a PROXY v2 header in front (every datagram, or the first of a flow).
    Udp,
}

/// Which datagrams of a UDP listener carry a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
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

/// Checks the keys of a UDP listener (and that TCP-only keys are not asked of one): the key at
/// fault and what is wrong.
pub(crate) fn validate(config: &ListenerConfig) -> Result<(), (&'static str, String)> {
    if config.protocol != Protocol::Udp {
        return Ok(());
    }
    if config.mode == Mode::ProxyV1 || config.fallback == Some(Mode::ProxyV1) {
        return Err((
            "mode",
            "proxy-v1 cannot describe UDP (v1 only has TCP4/TCP6); use proxy-v2, ebpf or none"
                .into(),
        ));
    }
    if matches!(config.mode, Mode::Transparent | Mode::Http) {
        return Err((
            "mode",
            format!(
                "{} applies to TCP listeners only; for UDP use proxy-v2, ebpf or none",
                config.mode.label()
            ),
        ));
    }
    if config.steer {
        return Err((
            "steer",
            "applies to TCP listeners only (for UDP, point the load balancer at the sidecar's port)"
                .into(),
        ));
    }
    if config.flow_idle_timeout.is_zero() {
        return Err(("flow_idle_timeout", "must be longer than 0s".into()));
    }
    if config.datagram_header == DatagramHeader::First && config.header != HeaderPolicy::Required {
        return Err((
            "datagram_header",
            "`first` needs `header: required` (a flow starts with its header)".into(),
        ));
    }
    Ok(())
}
