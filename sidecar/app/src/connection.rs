//! One connection from accept to close: detect the header, connect to the app in the
//! listener's restore mode, forward, and account for every outcome in a log line and a metric.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    detect::{self, Detection},
    listen::Shared,
    restore::{self, ConnAddrs},
};

/// Serves one accepted connection; never fails: everything that goes wrong is logged and
/// counted, and the connection is closed.
pub(crate) async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let listener = shared.name.as_str();
    let span = info_span!("conn", %listener, %peer);
    async move {
        let started = Instant::now();
        let metrics = &shared.metrics;
        metrics.accepted();
        let _closed = OnDrop(|| metrics.closed());
        let local = match client.local_addr() {
            Ok(local) => local,
            Err(e) => {
                warn!(reason = "read_error", error = %e, "connection rejected");
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
        let upstream = match shared
            .restorer
            .connect(shared.config.upstream, &detection, conn)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                let reason = e.reason();
                warn!(reason, error = %e, "connection rejected");
                metrics.rejected(reason);
                if matches!(e, restore::ConnectError::Connect { .. }) {
                    metrics.upstream_error();
                }
                return;
            }
        };
        metrics.restore(upstream.outcome);
        let client_addr = restore::Endpoints::of(&detection, conn).client;
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
            shared.config.pipe_size.map(usize::from),
            metrics,
        )
        .await;
        // The entry goes while the sidecar's socket still holds its port: once the socket
        // closes, the port may serve a new connection, whose entry must not be touched.
        drop(upstream.entry);
        drop(app);
        drop(client);
        match result {
            Ok(t) => debug!(
                to_app = t.to_app, to_client = t.to_client,
                duration_ms = started.elapsed().as_millis() as u64, "connection closed"
            ),
            Err(e) => {
                metrics.upstream_error();
                warn!(error = %e, "connection broken");
            }
        }
    }
    .instrument(span)
    .await;
}

/// Runs a closure when dropped, so a counter is kept right on every return path.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
