//! Reads the start of a connection until it knows whether a PROXY header is there, and decodes
//! it: bounded in time (`header_timeout`, `detect_timeout`) and in memory (`max_header_len`).
//!
//! Bytes read past the header are payload and are handed back in [`Detection`] so that the
//! forwarder writes them first; nothing after the header is looked at.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    time::{Instant, timeout_at},
};
use trueip_proxy_header::{
    self as header, Command, DecodeError, Detect, Header, Limits, Transport,
};

use crate::client::{self, ImplausibleClient};
use trueip_sidecar_config::{HeaderPolicy, ListenerConfig, UntrustedPolicy};

/// How much is read from the socket at a time while looking for the header.
const READ_CHUNK: usize = 2048;

/// What was found at the start of a connection that may be served.
#[derive(Debug)]
pub enum Detection {
    /// A valid header from a trusted source.
    Header {
        /// The decoded header.
        header: Box<Header>,
        /// Its length on the wire.
        len: usize,
        /// Payload bytes that arrived with it, to be forwarded first.
        rest: Vec<u8>,
    },
    /// No header, on a listener where that is fine.
    NoHeader {
        /// Why the connection counts as headerless.
        cause: NoHeader,
        /// Bytes read while finding out, to be forwarded first.
        rest: Vec<u8>,
    },
    /// A header from an untrusted source, delivered untouched and not honoured.
    Passthrough {
        /// Bytes read so far, the header among them.
        rest: Vec<u8>,
    },
}

impl Detection {
    /// The header, if one is honoured, and the bytes read that the app (or the http mode's
    /// parser) gets first.
    #[must_use]
    pub fn into_parts(self) -> (Option<Box<Header>>, Vec<u8>) {
        match self {
            Self::Header { header, rest, .. } => (Some(header), rest),
            Self::NoHeader { rest, .. } | Self::Passthrough { rest } => (None, rest),
        }
    }
}

/// Why a connection is served without a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHeader {
    /// The listener does not look for headers.
    Off,
    /// The first bytes are not a PROXY signature.
    NotProxy,
    /// Nothing arrived within `detect_timeout`: a protocol where the server speaks first.
    Silent(Duration),
}

/// Why a connection was closed before anything reached the app.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// A `required` listener got bytes that are not a PROXY header.
    #[error("no PROXY header on a listener that requires one")]
    MissingHeader,
    /// A header came from a source outside `trusted_sources`.
    #[error("PROXY header from untrusted source")]
    Untrusted,
    /// The header is malformed.
    #[error("invalid PROXY header")]
    Invalid(#[from] DecodeError),
    /// The header names a client no load balancer relays (unspecified, multicast, broadcast,
    /// loopback unless allowed).
    #[error("PROXY header refused")]
    Client(#[from] ImplausibleClient),
    /// The header describes this TCP connection as UDP: its addresses are not a TCP client's.
    #[error("PROXY header refused: it describes a UDP flow, and this is a TCP connection")]
    TransportMismatch,
    /// The header did not complete within `header_timeout` (slowloris).
    #[error("header not complete after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The peer closed in the middle of the header.
    #[error("connection closed after {0} bytes of an incomplete header")]
    Truncated(usize),
    /// More than `max_header_len` bytes arrived without a complete header.
    #[error("no complete header within {0} bytes")]
    Oversized(usize),
    /// The peer closed before sending anything.
    #[error("connection closed before any byte")]
    Empty,
    /// Reading failed.
    #[error("read failed")]
    Io(#[source] std::io::Error),
}

impl Rejection {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::Untrusted => "untrusted_source",
            Self::Invalid(e) => e.reason(),
            Self::Client(e) => e.reason(),
            Self::TransportMismatch => "transport_mismatch",
            Self::Timeout(_) => "header_timeout",
            Self::Truncated(_) => "truncated",
            Self::Oversized(_) => "header_too_long",
            Self::Empty => "closed_before_header",
            Self::Io(_) => "read_error",
        }
    }
}

/// Reads and judges the start of `stream`, which `peer` opened on the listener `config`.
pub async fn detect(
    stream: &mut TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
) -> Result<Detection, Rejection> {
    if config.header == HeaderPolicy::Off {
        return Ok(Detection::NoHeader {
            cause: NoHeader::Off,
            rest: Vec::new(),
        });
    }
    let limits = Limits {
        max_v2_len: config.max_header_len,
    };
    let cap = config.max_header_len.max(header::V1_MAX_LEN);
    let started = Instant::now();
    let deadline = started + config.header_timeout;
    let optional = config.header == HeaderPolicy::Optional;
    let mut buf = Vec::with_capacity(READ_CHUNK.min(cap));

    loop {
        match header::detect(&buf) {
            Detect::NeedMore => {}
            Detect::NotProxy if optional => {
                return Ok(Detection::NoHeader {
                    cause: NoHeader::NotProxy,
                    rest: buf,
                });
            }
            Detect::NotProxy => return Err(Rejection::MissingHeader),
            Detect::V1 | Detect::V2 => {
                if !config.is_trusted(peer.ip()) {
                    return match config.untrusted {
                        UntrustedPolicy::Reject => Err(Rejection::Untrusted),
                        UntrustedPolicy::Passthrough => Ok(Detection::Passthrough { rest: buf }),
                    };
                }
                if let Some((header, len)) = header::decode(&buf, &limits)? {
                    judge(&header, config)?;
                    let rest = buf.split_off(len);
                    return Ok(Detection::Header {
                        header: Box::new(header),
                        len,
                        rest,
                    });
                }
            }
        }

        let silent_wait = optional && buf.is_empty();
        let wait_until = if silent_wait {
            deadline.min(started + config.detect_timeout)
        } else {
            deadline
        };
        let room = cap.saturating_sub(buf.len()).min(READ_CHUNK);
        if room == 0 {
            // The decoder decides within `cap` bytes; reaching it means the header is too long.
            return Err(Rejection::Oversized(buf.len()));
        }
        let read = timeout_at(
            wait_until,
            (&mut *stream).take(room as u64).read_buf(&mut buf),
        )
        .await;
        match read {
            Err(_elapsed) if silent_wait => {
                return Ok(Detection::NoHeader {
                    cause: NoHeader::Silent(config.detect_timeout),
                    rest: buf,
                });
            }
            Err(_elapsed) => return Err(Rejection::Timeout(config.header_timeout)),
            Ok(Ok(0)) if buf.is_empty() => return Err(Rejection::Empty),
            Ok(Ok(0)) => return Err(Rejection::Truncated(buf.len())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Rejection::Io(e)),
        }
    }
}

/// Refuses a decoded header whose client this TCP listener must not take: one described as UDP,
/// or an address no load balancer relays.
fn judge(header: &Header, config: &ListenerConfig) -> Result<(), Rejection> {
    if header.command == Command::Proxy && header.transport == Transport::Datagram {
        return Err(Rejection::TransportMismatch);
    }
    if let Some(client) = header.client() {
        client::check(client.ip(), config.allow_loopback_clients)?;
    }
    Ok(())
}

/// The header's command, for logs: `LOCAL` connections are health checks.
pub fn command(header: &Header) -> &'static str {
    match header.command {
        Command::Local => "local",
        Command::Proxy => "proxy",
    }
}
