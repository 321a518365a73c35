//! The sidecar's admin endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for the
//! kubelet. Plain HTTP/1.1 on its own address, never on a load-balancer listener. Anything that
//! reaches the pod reaches it, so it is bounded (`admin`): a request head must arrive within
//! `header_timeout`, heads are small, each connection serves one request (no keep-alive that
//! could hold a slot for ever), and beyond `max_connections` new connections are closed at
//! accept.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{config::AdminConfig, metrics::SidecarMetrics};

/// What Prometheus is told the body is (prometheus-client writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// hyper's smallest read buffer: a scrape or probe request is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves the admin endpoint on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<SidecarMetrics>,
    config: AdminConfig,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin endpoint cannot start");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(config.max_connections.get()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // One request per connection: a keep-alive client would hold its slot for ever.
        .keep_alive(false)
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, max = config.max_connections, "admin endpoint: connection refused (max_connections)");
            metrics.admin_refused("max_connections");
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let builder = builder.clone();
        tokio::spawn(async move {
            let served = Arc::clone(&metrics);
            let service = service_fn(move |req| respond(req, Arc::clone(&served)));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                if e.is_timeout() {
                    metrics.admin_refused("header_timeout");
                }
                tracing::debug!(%peer, error = %e, "admin endpoint: connection ended");
            }
            drop(slot);
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
