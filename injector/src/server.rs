//! HTTPS: `POST /mutate` (AdmissionReview), `GET /healthz` (probes), `GET /metrics`
//! (Prometheus). HTTP/1.1 and HTTP/2 over rustls, with the certificate from [`crate::tls`].

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use trueip_telemetry::error_chain;

use crate::{config::Config, metrics::Metrics, review};

/// The path the MutatingWebhookConfiguration calls.
pub(crate) const MUTATE_PATH: &str = "/mutate";
/// An AdmissionReview carries one object, and the apiserver caps objects at 3 MiB.
const MAX_BODY: usize = 4 << 20;
/// A client that has not finished the TLS handshake, or sent its request head, by then is
/// dropped (the apiserver's own webhook timeout is at most 30 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the request handlers share.
#[derive(Debug)]
pub(crate) struct Webhook {
    /// The injector's configuration.
    pub(crate) config: Config,
    /// The counters behind `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
}

/// Serves `listener` until `shutdown` completes, then lets open connections finish for up to
/// `drain`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let webhook = Arc::clone(&webhook);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| handle(req, Arc::clone(&webhook)));
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        open = graceful.count(),
        "no longer accepting; draining open connections"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("connections still open at the drain deadline");
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    webhook: Arc<Webhook>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/metrics") => text(StatusCode::OK, webhook.metrics.render()),
        (&Method::POST, MUTATE_PATH) => mutate(req, &webhook).await,
        (_, "/healthz" | "/metrics" | MUTATE_PATH) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(response)
}

async fn mutate(req: Request<Incoming>, webhook: &Webhook) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            webhook.metrics.bad_request();
            let why = error_chain(&*e);
            tracing::warn!(error = %why, "could not read an admission request");
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {why}\n"),
            );
        }
    };
    match review::review(&body, &webhook.config) {
        Ok(reviewed) => {
            webhook.metrics.admitted(reviewed.outcome);
            let mut response = Response::new(Full::new(Bytes::from(reviewed.body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => {
            webhook.metrics.bad_request();
            let message = error_chain(&e);
            tracing::warn!(error = %message, "bad admission request");
            text(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
