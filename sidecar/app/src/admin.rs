//! The sidecar's admin endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for the
//! kubelet. Plain HTTP/1.1 on its own address, never on a load-balancer listener.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::SidecarMetrics;

/// What Prometheus is told the body is (prometheus-client writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoint on `listener` until the task is dropped.
pub(crate) async fn serve(listener: std::net::TcpListener, metrics: Arc<SidecarMetrics>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin endpoint cannot start");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(req, Arc::clone(&metrics)));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin endpoint: connection ended");
            }
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    metrics: Arc<SidecarMetrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        // Listeners are bound before this endpoint starts, so alive means ready.
        (&Method::GET, "/healthz" | "/readyz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static status and header are valid");
    Ok(response)
}
