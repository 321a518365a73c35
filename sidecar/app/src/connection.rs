//! One connection from accept to close, in four steps: detect the header, restore (connect to
//! the app in the listener's restore mode), relay, and record every outcome in a log line, a
//! metric and the connection's span. An `http` listener hands the connection to
//! [`crate::http`] after the first step instead.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Instant};

use tokio::{net::TcpStream, sync::watch};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};

use trueip_addrs::{LbPeer, SidecarAddr};
use trueip_sidecar_config::{ListenerConfig, Mode, canonical};
use trueip_sidecar_http::{Arrival, Http, TlsError};
use trueip_telemetry::Chain;

use crate::{
    detect::{self, Detection},
    endpoints::{ConnAddrs, Endpoints},
    forward::{self, Transfer},
    metrics::{ListenerMetrics, RestoreOutcome},
    restore::{self, EbpfError, Restorer, Upstream},
};

/// What serves a listener's connections once the header is read: a relay to the app in a
/// restore mode, or the http mode's proxy, which reads requests.
#[derive(Debug)]
pub(crate) enum Handler {
    /// The stream is relayed; the restorer opens the app connection.
    Relay(Restorer),
    /// Requests are proxied one by one (boxed: TLS state).
    Http(Box<Http>),
}

/// Why a listener's handler could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// `ebpf` without the agent and without a fallback.
    #[error(transparent)]
    Ebpf(EbpfError),
    /// `http` with a TLS certificate that does not load (boxed: paths and rustls' error).
    #[error(transparent)]
    Tls(Box<TlsError>),
}

impl Handler {
    /// Prepares the mode of `config`; when `ebpf` cannot get the pod's map from the agent at
    /// `agent_socket`, the configured fallback mode (which may be `http`) serves instead.
    pub(crate) fn new(config: &ListenerConfig, agent_socket: &Path) -> Result<Self, SetupError> {
        if config.mode == Mode::Http {
            let http = Http::new(config).map_err(|e| SetupError::Tls(Box::new(e)))?;
            return Ok(Self::Http(Box::new(http)));
        }
        match Restorer::new(config, agent_socket) {
            Ok(restorer) => Ok(Self::Relay(restorer)),
            Err(e) => {
                let fallback = restore::fallback(config, e).map_err(SetupError::Ebpf)?;
                Self::new(&fallback, agent_socket)
            }
        }
    }

    /// The mode actually in use (after any fallback), for logs.
    pub(crate) fn mode(&self) -> Mode {
        match self {
            Self::Relay(restorer) => restorer.mode(),
            Self::Http(_) => Mode::Http,
        }
    }
}

/// What every connection of a listener shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) config: ListenerConfig,
    pub(crate) handler: Handler,
    pub(crate) metrics: Arc<ListenerMetrics>,
}

/// Serves one accepted connection; never fails: everything that goes wrong is logged and
/// counted, and the connection is closed. `shutdown` turns true when the sidecar stops: a relayed
/// stream runs on until either side closes it (or the drain deadline), while an HTTP connection
/// is closed as soon as its requests in flight are answered.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let span = span(&shared, peer);
    handle(client, peer, shared, shutdown)
        .instrument(span)
        .await;
}

/// One span per connection with OpenTelemetry semantic-convention attributes; the ones only
/// known later are recorded as the connection progresses.
fn span(shared: &Shared, peer: SocketAddr) -> Span {
    info_span!(
        "conn",
        otel.name = "trueip.connection",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        listener = %shared.name,
        %peer,
        network.peer.address = %canonical(peer.ip()),
        network.peer.port = peer.port(),
        network.transport = "tcp",
        client.address = Empty,
        client.port = Empty,
        server.address = Empty,
        server.port = Empty,
        trueip.proxy.version = Empty,
        trueip.proxy.command = Empty,
        trueip.tlv.authority = Empty,
        trueip.tlv.unique_id = Empty,
        trueip.tlv.aws_vpce_id = Empty,
        trueip.tlv.azure_private_link_id = Empty,
        trueip.tlv.gcp_psc_connection_id = Empty,
        trueip.tlv.ssl_version = Empty,
        trueip.tlv.ssl_cn = Empty,
        trueip.restore.mode = shared.handler.mode().label(),
        trueip.restore.outcome = Empty,
        tls.client.server_name = Empty,
        tls.protocol.version = Empty,
        trueip.http.requests = Empty,
        trueip.bytes.to_app = Empty,
        trueip.bytes.to_client = Empty,
    )
}

/// The connection's steps, inside its span.
async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let metrics = &shared.metrics;
    metrics.accepted();
    let _closed = OnDrop(|| metrics.closed());
    let local = match client.local_addr() {
        Ok(local) => local,
        Err(e) => {
            reject("read_error", &Chain(&e), metrics);
            return;
        }
    };
    let Some(detection) = detect_header(&mut client, peer, &shared, started).await else {
        return;
    };
    let conn = ConnAddrs {
        peer: LbPeer::new(peer),
        local: SidecarAddr::new(local),
    };
    let endpoints = Endpoints::of(&detection, conn);
    match &shared.handler {
        Handler::Http(http) => {
            let outcome = if endpoints.from_header {
                RestoreOutcome::Restored
            } else {
                RestoreOutcome::NoClient
            };
            metrics.restore(outcome);
            record_connection(&detection, endpoints, outcome);
            // Boxed: an HTTP connection's state is 8 KiB, which would otherwise be the size of
            // every connection's task, idle relayed streams included.
            let (header, rest) = detection.into_parts();
            let arrival = Arrival {
                client: endpoints.client,
                header,
                rest,
            };
            Box::pin(http.serve(
                client,
                arrival,
                Arc::<ListenerMetrics>::clone(metrics),
                shutdown,
            ))
            .await;
        }
        Handler::Relay(restorer) => {
            let Some(upstream) =
                restore_client(restorer, &shared, &detection, endpoints, &client).await
            else {
                return;
            };
            record_connection(&detection, endpoints, upstream.outcome);
            log_header(&detection, endpoints, upstream.outcome);
            relay(client, upstream, &detection, &shared, started).await;
        }
    }
}

/// Step one: reads and judges the PROXY header; `None` when the connection was rejected (and
/// counted).
async fn detect_header(
    client: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    started: Instant,
) -> Option<Detection> {
    match detect::detect(client, peer, &shared.config).await {
        Ok(detection) => {
            shared.metrics.header_decided(started.elapsed());
            Some(detection)
        }
        Err(rejection) => {
            let reason = rejection.reason();
            if matches!(rejection, detect::Rejection::Empty) {
                failed(reason);
                // Connect-and-close is how TCP health checks probe a port: not worth a warning.
                debug!(reason, "connection closed before any byte");
                shared.metrics.rejected(reason);
            } else {
                reject(reason, &Chain(&rejection), &shared.metrics);
            }
            None
        }
    }
}

/// Step two: connects to the app in the listener's restore mode; `None` when the app could
/// not be reached or the mode refused the connection (logged and counted).
async fn restore_client(
    restorer: &Restorer,
    shared: &Shared,
    detection: &Detection,
    endpoints: Endpoints,
    client: &TcpStream,
) -> Option<Upstream> {
    match restorer
        .connect(shared.config.upstream, detection, endpoints, client)
        .await
    {
        Ok(upstream) => {
            shared.metrics.restore(upstream.outcome);
            if let Some(fast) = upstream.fast_outcome {
                shared.metrics.fast_path(fast);
            }
            Some(upstream)
        }
        Err(e) => {
            reject(e.reason(), &Chain(&e), &shared.metrics);
            if matches!(e, restore::ConnectError::Connect { .. }) {
                shared.metrics.upstream_error();
            }
            None
        }
    }
}

/// Logs, at debug level, what the header said (a warning for an untrusted one passed through).
fn log_header(detection: &Detection, endpoints: Endpoints, outcome: RestoreOutcome) {
    match detection {
        Detection::Header { header, len, .. } => debug!(
            client = %endpoints.client, version = ?header.version,
            command = detect::command(header), header_len = len, tlvs = header.tlvs.len(),
            outcome = outcome.label(), "header accepted"
        ),
        Detection::NoHeader { cause, .. } => debug!(?cause, "serving without a header"),
        Detection::Passthrough { .. } => {
            warn!("PROXY header from an untrusted source passed through unhonoured");
        }
    }
}

/// Steps three and four: relays the bytes both ways until either side closes, then records
/// what moved (the kernel fast path's bytes included).
async fn relay(
    client: TcpStream,
    upstream: Upstream,
    detection: &Detection,
    shared: &Shared,
    started: Instant,
) {
    let metrics = &shared.metrics;
    let rest = match detection {
        Detection::Header { rest, .. }
        | Detection::NoHeader { rest, .. }
        | Detection::Passthrough { rest } => rest.as_slice(),
    };
    let Upstream {
        stream: mut app,
        preamble,
        entry,
        fast,
        ..
    } = upstream;
    let pipe_size = shared
        .config
        .pipe_size
        .map_or(forward::DEFAULT_PIPE_SIZE, usize::from);
    let result = forward::forward(
        &client,
        &mut app,
        &preamble,
        rest,
        pipe_size,
        fast.is_some(),
        metrics,
    )
    .await;
    // The entries go while the sidecar's socket still holds its port: once the socket
    // closes, the port may serve a new connection, whose entries must not be touched. The
    // bytes the kernel redirected count like the ones the sidecar moved.
    let fast_path = fast.is_some();
    let redirected = fast.map_or(0, restore::FastWire::finish);
    metrics.to_client(redirected);
    // No await before these drops: the direction that finished last left its FIN to them.
    drop(entry);
    drop(app);
    drop(client);
    let (transfer, error) = match result {
        Ok(t) => (
            Transfer {
                to_client: t.to_client + redirected,
                ..t
            },
            None,
        ),
        Err(mut e) => {
            e.to_client += redirected;
            let t = Transfer {
                to_app: e.to_app,
                to_client: e.to_client,
            };
            (t, Some(e))
        }
    };
    let span = Span::current();
    span.record("trueip.bytes.to_app", transfer.to_app);
    span.record("trueip.bytes.to_client", transfer.to_client);
    let fast_path_bytes = fast_path.then_some(redirected);
    match error {
        None => debug!(
            to_app = transfer.to_app,
            to_client = transfer.to_client,
            fast_path_bytes,
            duration_ms = started.elapsed().as_millis() as u64,
            "connection closed"
        ),
        Some(e) => {
            failed("forward_error");
            metrics.upstream_error();
            warn!(error = %Chain(&e), fast_path_bytes, "connection broken");
        }
    }
}

/// A connection closed for `reason`: the span's status, a warning and the rejection counter.
fn reject(reason: &'static str, error: &dyn std::fmt::Display, metrics: &ListenerMetrics) {
    failed(reason);
    warn!(reason, error = %error, "connection rejected");
    metrics.rejected(reason);
}

/// Marks the connection's span as failed, with the reason as its status message.
fn failed(reason: &'static str) {
    let span = Span::current();
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
}

/// Records on the connection's span who the client is and what the header said.
fn record_connection(detection: &Detection, endpoints: Endpoints, outcome: RestoreOutcome) {
    let span = Span::current();
    // Canonical, as in the HTTP headers: an IPv4-mapped `::ffff:a.b.c.d` is `a.b.c.d`.
    span.record(
        "client.address",
        canonical(endpoints.client.ip()).to_string(),
    );
    span.record("client.port", endpoints.client.port());
    span.record(
        "server.address",
        canonical(endpoints.destination.ip()).to_string(),
    );
    span.record("server.port", endpoints.destination.port());
    span.record("trueip.restore.outcome", outcome.label());
    let Detection::Header { header, .. } = detection else {
        return;
    };
    span.record(
        "trueip.proxy.version",
        match header.version {
            trueip_proxy_header::Version::V1 => 1,
            trueip_proxy_header::Version::V2 => 2,
        },
    );
    span.record("trueip.proxy.command", detect::command(header));
    let tlvs = &header.tlvs;
    if let Some(v) = tlvs.authority() {
        span.record("trueip.tlv.authority", v);
    }
    if let Some(v) = tlvs.unique_id() {
        span.record("trueip.tlv.unique_id", String::from_utf8_lossy(v).as_ref());
    }
    if let Some(v) = tlvs.aws_vpce_id() {
        span.record("trueip.tlv.aws_vpce_id", v);
    }
    if let Some(v) = tlvs.azure_private_link_id() {
        span.record("trueip.tlv.azure_private_link_id", v);
    }
    if let Some(v) = tlvs.gcp_psc_connection_id() {
        span.record("trueip.tlv.gcp_psc_connection_id", v);
    }
    if let Some(ssl) = tlvs.ssl() {
        if let Some(v) = &ssl.version {
            span.record("trueip.tlv.ssl_version", v.as_str());
        }
        if let Some(v) = &ssl.cn {
            span.record("trueip.tlv.ssl_cn", v.as_str());
        }
    }
}

/// Runs a closure when dropped, so a counter is kept right on every return path.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
