//! Restore modes: how the app learns the client address once the header is read. Each mode
//! opens the connection to the app and says what must be written to it first.

pub(crate) mod ebpf;
mod http;
mod ports;
mod proxy;
mod transparent;

use std::{net::SocketAddr, path::Path};

use tokio::net::TcpStream;
use trueip_proxy_header::{Command, Header};

use self::{ebpf::Ebpf, http::Http, proxy::Reemit, transparent::Transparent};
pub use self::{
    ebpf::{EbpfError, FastWire},
    http::TlsError,
};
use trueip_telemetry::Chain;

use crate::{
    config::{ListenerConfig, Mode, canonical},
    detect::Detection,
    metrics::RestoreOutcome,
};

/// The addresses of the connection the load balancer opened to the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAddrs {
    /// The load balancer's end.
    pub peer: SocketAddr,
    /// The sidecar's end.
    pub local: SocketAddr,
}

/// Who the app should be told it is talking to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client: from the header, or the real peer when the header names none.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
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
                client,
                destination,
                from_header: true,
            };
        }
        let unmap = |a: SocketAddr| SocketAddr::new(canonical(a.ip()), a.port());
        Self {
            client: unmap(conn.peer),
            destination: unmap(conn.local),
            from_header: false,
        }
    }
}

/// A connection to the app, ready for forwarding.
#[derive(Debug)]
pub struct Upstream {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes the app must receive before the payload (a re-emitted header).
    pub preamble: Vec<u8>,
    /// What the app will learn about the client.
    pub outcome: RestoreOutcome,
    /// Removes the connection's eBPF entry when dropped; drop it before `stream`.
    pub entry: Option<ebpf::Entry>,
    /// The connection's kernel fast path, when wired: the app's bytes to the load balancer
    /// then bypass the sidecar. Finish it before dropping `stream`.
    pub fast: Option<FastWire>,
    /// What the fast path did, for listeners that have it configured.
    pub fast_outcome: Option<crate::metrics::FastPathOutcome>,
}

/// Why the app could not be reached for a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// connect(2) to the app failed.
    #[error("cannot connect to the app at {upstream}")]
    Connect {
        /// The app's address.
        upstream: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `ebpf`: every loopback port tried was taken by a listener or a live connection.
    #[error(
        "no free loopback port to connect to the app at {upstream} after {attempts} tries \
         (the pod's ephemeral port range is full of live connections)"
    )]
    NoLoopbackPort {
        /// The app's address.
        upstream: SocketAddr,
        /// How many ports were tried.
        attempts: u32,
    },
    /// The pod's map is full and the listener refuses unrestorable connections.
    #[error("the pod's restore map is full (on_map_full: refuse)")]
    MapFull,
    /// `transparent`: the client's address and port are taken and the listener refuses to
    /// connect from another port.
    #[error(
        "the client's address {client} is already connected to the app (on_port_in_use: refuse)"
    )]
    PortInUse {
        /// The client's address and port.
        client: SocketAddr,
    },
}

impl ConnectError {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "upstream_connect",
            Self::NoLoopbackPort { .. } => "loopback_ports",
            Self::MapFull => "map_full",
            Self::PortInUse { .. } => "port_in_use",
        }
    }
}

/// Why a listener's restore mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `ebpf` without the agent and without a fallback.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// `http` with a TLS certificate that does not load (boxed: paths and rustls' error).
    #[error(transparent)]
    Tls(Box<TlsError>),
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
    /// Serve HTTP and tell the app the client in request headers (boxed: TLS state).
    Http(Box<Http>),
}

impl Restorer {
    /// Prepares the mode of `config`; `ebpf` asks the agent at `agent_socket` for the pod's map
    /// and, if that fails, uses the configured fallback or gives up.
    pub fn new(config: &ListenerConfig, agent_socket: &Path) -> Result<Self, SetupError> {
        Ok(match config.mode {
            Mode::None => Self::None,
            Mode::ProxyV1 | Mode::ProxyV2 => Self::Reemit(Box::new(Reemit::new(config))),
            Mode::Transparent => Self::Transparent(Transparent::new(config)),
            Mode::Ebpf => match Ebpf::open(
                agent_socket,
                config.on_map_full,
                config.fast_path,
                &config.name(),
            ) {
                Ok(ebpf) => Self::Ebpf(ebpf),
                Err(e) => match config.fallback {
                    Some(mode) => {
                        tracing::error!(
                            listener = %config.name(), error = %Chain(&e), fallback = ?mode,
                            "eBPF restore unavailable; using the fallback mode"
                        );
                        let fallback = ListenerConfig {
                            mode,
                            ..config.clone()
                        };
                        Self::new(&fallback, agent_socket)?
                    }
                    None => return Err(e.into()),
                },
            },
            Mode::Http => Self::Http(Box::new(
                Http::new(config).map_err(|e| SetupError::Tls(Box::new(e)))?,
            )),
        })
    }

    /// The mode actually in use (after any fallback), for logs.
    pub fn mode(&self) -> Mode {
        match self {
            Self::None => Mode::None,
            Self::Reemit(r) => r.mode(),
            Self::Ebpf(_) => Mode::Ebpf,
            Self::Transparent(_) => Mode::Transparent,
            Self::Http(_) => Mode::Http,
        }
    }

    /// Connects to the app at `upstream` for one connection from the load balancer's socket
    /// `lb`.
    pub async fn connect(
        &self,
        upstream: SocketAddr,
        detection: &Detection,
        conn: ConnAddrs,
        lb: &TcpStream,
    ) -> Result<Upstream, ConnectError> {
        let endpoints = Endpoints::of(detection, conn);
        let plain_outcome = match detection {
            Detection::Passthrough { .. } => RestoreOutcome::Passthrough,
            _ if endpoints.from_header => RestoreOutcome::Restored,
            _ => RestoreOutcome::NoClient,
        };
        let connect = |stream: std::io::Result<TcpStream>| {
            stream.map_err(|source| ConnectError::Connect { upstream, source })
        };
        match self {
            // `http` connects per request (see `Http::serve`); a plain connection otherwise.
            Self::None | Self::Http(_) => Ok(Upstream {
                stream: connect(TcpStream::connect(upstream).await)?,
                preamble: Vec::new(),
                outcome: plain_outcome,
                entry: None,
                fast: None,
                fast_outcome: None,
            }),
            Self::Reemit(reemit) => Ok(Upstream {
                stream: connect(TcpStream::connect(upstream).await)?,
                preamble: reemit.header(detection, endpoints),
                outcome: plain_outcome,
                entry: None,
                fast: None,
                fast_outcome: None,
            }),
            Self::Ebpf(ebpf) if endpoints.from_header => {
                ebpf.connect(upstream, Some(endpoints), plain_outcome, lb)
                    .await
            }
            Self::Ebpf(ebpf) if ebpf.fast_path_configured() => {
                ebpf.connect(upstream, None, plain_outcome, lb).await
            }
            Self::Transparent(t) if endpoints.from_header => t.connect(upstream, endpoints).await,
            Self::Ebpf(_) | Self::Transparent(_) => Ok(Upstream {
                stream: connect(TcpStream::connect(upstream).await)?,
                preamble: Vec::new(),
                outcome: plain_outcome,
                entry: None,
                fast: None,
                fast_outcome: None,
            }),
        }
    }
}

/// The header's command, for logs: `LOCAL` connections are health checks.
pub fn command(header: &Header) -> &'static str {
    match header.command {
        Command::Local => "local",
        Command::Proxy => "proxy",
    }
}
