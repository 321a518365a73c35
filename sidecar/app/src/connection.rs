//! One connection from accept to close: detect the header, connect to the app in the
//! listener's restore mode, forward, and account for every outcome in a log line and a metric.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::{net::TcpStream, sync::watch};
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};

use trueip_telemetry::Chain;

use crate::{
    config::canonical,
    detect::{self, Detection},
    listen::Shared,
    metrics::RestoreOutcome,
    restore::{self, ConnAddrs},
};

/// Serves one accepted connection; never fails: everything that goes wrong is logged and
/// counted, and the connection is closed. `shutdown` turns true when the sidecar stops: a relayed
/// stream runs on until either side closes it (or the drain deadline), while an HTTP connection
/// is closed as soon as its requests in flight are answered.
pub(crate) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = shared.name.as_str();
    // One span per connection with OpenTelemetry semantic-convention attributes; the ones only
    // known later are recorded as the connection progresses.
    let span = info_span!(
        "conn",
        otel.name = "trueip.connection",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        %listener,
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
        trueip.restore.mode = shared.restorer.mode().label(),
        trueip.restore.outcome = Empty,
        tls.client.server_name = Empty,
        tls.protocol.version = Empty,
        trueip.http.requests = Empty,
        trueip.bytes.to_app = Empty,
        trueip.bytes.to_client = Empty,
    );
    async move {
        let started = Instant::now();
        let metrics = &shared.metrics;
        metrics.accepted();
        let _closed = OnDrop(|| metrics.closed());
        let local = match client.local_addr() {
            Ok(local) => local,
            Err(e) => {
                warn!(reason = "read_error", error = %Chain(&e), "connection rejected");
                metrics.rejected("read_error");
                return;
            }
        };
        let detection = match detect::detect(&mut client, peer, &shared.config).await {
            Ok(d) => {
                metrics.header_decided(started.elapsed());
                d
            }
            Err(rejection) => {
                let reason = rejection.reason();
                failed(reason);
                if matches!(rejection, detect::Rejection::Empty) {
                    // Connect-and-close is how TCP health checks probe a port: not worth a warning.
                    debug!(reason, "connection closed before any byte");
                } else {
                    warn!(reason, error = %rejection, "connection rejected");
                }
                metrics.rejected(reason);
                return;
            }
        };
        let conn = ConnAddrs { peer, local };
        if let restore::Restorer::Http(http) = &shared.restorer {
            let endpoints = restore::Endpoints::of(&detection, conn);
            let outcome = if endpoints.from_header {
                RestoreOutcome::Restored
            } else {
                RestoreOutcome::NoClient
            };
            metrics.restore(outcome);
            record_connection(&detection, endpoints, outcome);
            // Boxed: an HTTP connection's state is 8 KiB, which would otherwise be the size of
            // every connection's task, idle relayed streams included.
            Box::pin(http.serve(client, detection, endpoints, Arc::clone(metrics), shutdown))
                .await;
            return;
        }
        let upstream = match shared
            .restorer
            .connect(shared.config.upstream, &detection, conn, &client)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                let reason = e.reason();
                failed(reason);
                warn!(reason, error = %Chain(&e), "connection rejected");
                metrics.rejected(reason);
                if matches!(e, restore::ConnectError::Connect { .. }) {
                    metrics.upstream_error();
                }
                return;
            }
        };
        metrics.restore(upstream.outcome);
        if let Some(fast) = upstream.fast_outcome {
            metrics.fast_path(fast);
        }
        let endpoints = restore::Endpoints::of(&detection, conn);
        record_connection(&detection, endpoints, upstream.outcome);
        let client_addr = endpoints.client;
        match &detection {
            Detection::Header { header, len, .. } => debug!(
                client = %client_addr, version = ?header.version, command = restore::command(header),
                header_len = len, tlvs = header.tlvs.len(), outcome = upstream.outcome.label(),
                "header accepted"
            ),
            Detection::NoHeader { cause, .. } => debug!(?cause, "serving without a header"),
            Detection::Passthrough { .. } => {
                warn!("PROXY header from an untrusted source passed through unhonoured");
            }
        }
        let rest = match &detection {
            Detection::Header { rest, .. }
            | Detection::NoHeader { rest, .. }
            | Detection::Passthrough { rest } => rest.as_slice(),
        };
        let mut app = upstream.stream;
        let result = crate::forward::forward(
            &client,
            &mut app,
            &upstream.preamble,
            rest,
            shared
                .config
                .pipe_size
                .map_or(crate::forward::DEFAULT_PIPE_SIZE, usize::from),
            upstream.fast.is_some(),
            metrics,
        )
        .await;
        // The entries go while the sidecar's socket still holds its port: once the socket
        // closes, the port may serve a new connection, whose entries must not be touched. The
        // bytes the kernel redirected count like the ones the sidecar moved.
        let fast_path = upstream.fast.is_some();
        let redirected = upstream.fast.map_or(0, restore::FastWire::finish);
        metrics.to_client(redirected);
        let result = result
            .map(|mut t| {
                t.to_client += redirected;
                t
            })
            .map_err(|mut e| {
                e.to_client += redirected;
                e
            });
        drop(upstream.entry);
        drop(app);
        drop(client);
        match result {
            Ok(t) => {
                Span::current().record("trueip.bytes.to_app", t.to_app);
                Span::current().record("trueip.bytes.to_client", t.to_client);
                if fast_path {
                    debug!(
                        to_app = t.to_app, to_client = t.to_client, fast_path_bytes = redirected,
                        duration_ms = started.elapsed().as_millis() as u64, "connection closed"
                    );
                } else {
                    debug!(
                        to_app = t.to_app, to_client = t.to_client,
                        duration_ms = started.elapsed().as_millis() as u64, "connection closed"
                    );
                }
            }
            Err(e) => {
                failed("forward_error");
                Span::current().record("trueip.bytes.to_app", e.to_app);
                Span::current().record("trueip.bytes.to_client", e.to_client);
                metrics.upstream_error();
                if fast_path {
                    warn!(error = %Chain(&e), fast_path_bytes = redirected, "connection broken");
                } else {
                    warn!(error = %Chain(&e), "connection broken");
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Marks the connection's span as failed, with the reason as its status message.
fn failed(reason: &'static str) {
    let span = Span::current();
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
}

/// Records on the connection's span who the client is and what the header said.
fn record_connection(
    detection: &Detection,
    endpoints: restore::Endpoints,
    outcome: RestoreOutcome,
) {
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
    span.record("trueip.proxy.command", restore::command(header));
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
