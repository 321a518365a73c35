//! The sidecar's admin endpoint: `/metrics` for Prometheus, `/healthz` and `/readyz` for the
//! kubelet. Plain HTTP/1.1 on its own address, never on a load-balancer listener.
//!
//! `/healthz` is the process being alive. `/readyz` is `200` once every listener is bound with
//! its mode set up — an `ebpf` listener holds its pod's map and a steered one its registration,
//! or the sidecar would have exited at start — and `503` from SIGTERM on, while connections
//! drain, so that the pod leaves its Service's endpoints before it stops accepting. Its body
//! lists each listener's mode in use, a fallback named as such. Anything that
//! reaches the pod reaches it, so it is bounded (`admin`): a request head must arrive within
//! `header_timeout`, heads are small, each connection serves one request (no keep-alive that
//! could hold a slot for ever), and beyond `max_connections` new connections are closed at
//! accept.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use trueip_telemetry::Chain;

use crate::metrics::SidecarMetrics;
use trueip_sidecar_config::{AdminConfig, Mode};

/// What Prometheus is told the body is (prometheus-client writes OpenMetrics text).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` answers.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// One line per listener: its name, protocol and mode in use.
    listeners: Vec<String>,
    draining: AtomicBool,
}

impl Readiness {
    /// Ready, with `listeners` bound and set up.
    pub(crate) fn new(listeners: Vec<String>) -> Self {
        Self {
            listeners,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers `503`.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn answer(&self) -> (StatusCode, String) {
        if self.draining.load(Ordering::Acquire) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining: no new connections\n".into(),
            );
        }
        let mut body = String::from("ready\n");
        for line in &self.listeners {
            body.push_str(line);
            body.push('\n');
        }
        (StatusCode::OK, body)
    }
}

/// hyper's smallest read buffer: a scrape or probe request is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves the admin endpoint on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<SidecarMetrics>,
    readiness: Arc<Readiness>,
    config: AdminConfig,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "admin endpoint cannot start");
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
                tracing::warn!(error = %Chain(&e), "admin endpoint: accept failed");
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
        let readiness = Arc::clone(&readiness);
        let builder = builder.clone();
        tokio::spawn(async move {
            let served = Arc::clone(&metrics);
            let service =
                service_fn(move |req| respond(req, Arc::clone(&served), Arc::clone(&readiness)));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                if e.is_timeout() {
                    metrics.admin_refused("header_timeout");
                }
                tracing::debug!(%peer, error = %Chain(&e), "admin endpoint: connection ended");
            }
            drop(slot);
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    metrics: Arc<SidecarMetrics>,
    readiness: Arc<Readiness>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => {
            let (status, body) = readiness.answer();
            (status, "text/plain", body)
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static status and header are valid");
    Ok(response)
}

/// One `/readyz` line: `<name>: <protocol> <mode>[ (fallback for <configured>)][, steered]`.
pub(crate) fn describe(
    name: &str,
    protocol: &str,
    configured: Mode,
    in_use: Mode,
    steer: bool,
) -> String {
    let mut line = format!("{name}: {protocol} {}", in_use.label());
    if in_use != configured {
        line.push_str(&format!(" (fallback for {})", configured.label()));
    }
    if steer {
        line.push_str(", steered");
    }
    line
}
