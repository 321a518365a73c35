//! Restore modes: how the app learns the client address once the header is read. Each mode
//! opens the connection to the app and says what must be written to it first.

pub(crate) mod ebpf;
mod ports;
mod proxy;
mod transparent;
mod upstream;

use std::{net::SocketAddr, path::Path};

use tokio::net::TcpStream;

use self::{ebpf::Ebpf, proxy::Reemit, transparent::Transparent};
pub use self::{
    ebpf::EbpfError,
    upstream::{ConnectError, Entry, FastWire, Upstream},
};
use trueip_telemetry::Chain;

use crate::{detect::Detection, endpoints::Endpoints, metrics::RestoreOutcome};
use trueip_sidecar_config::{ListenerConfig, Mode};

/// `ebpf` could not be set up: the listener's configuration with its `fallback` mode (logged as
/// an error, since the app no longer learns the client by eBPF), or the error when there is no
/// fallback. TCP and UDP listeners fall back alike.
pub(crate) fn fallback(
    config: &ListenerConfig,
    error: EbpfError,
) -> Result<ListenerConfig, EbpfError> {
    let Some(mode) = config.fallback else {
        return Err(error);
    };
    tracing::error!(
        listener = %config.name(), protocol = ?config.protocol, error = %Chain(&error),
        fallback = ?mode, "eBPF restore unavailable; using the fallback mode"
    );
    Ok(ListenerConfig {
        mode,
        ..config.clone()
    })
}

/// A listener's restore mode, ready to serve connections.
#[derive(Debug)]
pub enum Restorer {
    /// Forward the payload only.
    None,
    /// Re-emit a clean header (boxed: its TLV allow-list is larger than the other modes).
    Reemit(Box<Reemit>),
    /// Write an eBPF entry before connecting.
    Ebpf(Ebpf),
    /// Connect from the client's address.
    Transparent(Transparent),
}

impl Restorer {
    /// Prepares the mode of `config`; `ebpf` asks the agent at `agent_socket` for the pod's map
    /// and fails without it: the caller applies `restore::fallback`, whose mode may not be a relay.
    pub fn new(config: &ListenerConfig, agent_socket: &Path) -> Result<Self, EbpfError> {
        Ok(match config.mode {
            Mode::ProxyV1 | Mode::ProxyV2 => Self::Reemit(Box::new(Reemit::new(config))),
            Mode::Transparent => Self::Transparent(Transparent::new(config)),
            Mode::Ebpf => Self::Ebpf(Ebpf::open(
                agent_socket,
                config.on_map_full,
                config.fast_path,
                &config.name(),
            )?),
            // `http` is served by `crate::http`, never relayed: its connections reach no
            // restorer.
            Mode::None | Mode::Http => Self::None,
        })
    }

    /// The mode actually in use (after any fallback), for logs.
    pub fn mode(&self) -> Mode {
        match self {
            Self::None => Mode::None,
            Self::Reemit(r) => r.mode(),
            Self::Ebpf(_) => Mode::Ebpf,
            Self::Transparent(_) => Mode::Transparent,
        }
    }

    /// Connects to the app at `upstream` for one connection from the load balancer's socket
    /// `lb`, telling the app `endpoints` (see [`Endpoints::of`]).
    pub async fn connect(
        &self,
        upstream: SocketAddr,
        detection: &Detection,
        endpoints: Endpoints,
        lb: &TcpStream,
    ) -> Result<Upstream, ConnectError> {
        let plain_outcome = match detection {
            Detection::Passthrough { .. } => RestoreOutcome::Passthrough,
            _ if endpoints.from_header => RestoreOutcome::Restored,
            _ => RestoreOutcome::NoClient,
        };
        let preamble = match self {
            Self::Ebpf(ebpf) if endpoints.from_header => {
                return ebpf
                    .connect(upstream, Some(endpoints), plain_outcome, lb)
                    .await;
            }
            Self::Ebpf(ebpf) if ebpf.fast_path_configured() => {
                return ebpf.connect(upstream, None, plain_outcome, lb).await;
            }
            Self::Transparent(t) if endpoints.from_header => {
                return t.connect(upstream, endpoints).await;
            }
            Self::Reemit(reemit) => reemit.header(detection, endpoints),
            // No client to restore, or a mode that needs none: a plain connection.
            Self::None | Self::Ebpf(_) | Self::Transparent(_) => Vec::new(),
        };
        let stream = TcpStream::connect(upstream)
            .await
            .map_err(|source| ConnectError::Connect { upstream, source })?;
        Ok(Upstream::plain(stream, preamble, plain_outcome))
    }
}
