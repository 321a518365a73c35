//! A do-nothing OTLP/HTTP receiver for the "traces on" variant: the sidecar exports every span
//! (100 % sampling) over `http/protobuf`, and the cost measured is the sidecar's own — building,
//! batching and sending spans — not a collector's. Every request is read to its end and answered
//! `200` with an empty `ExportTraceServiceResponse` (zero protobuf bytes), as a collector does.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, header::CONTENT_TYPE, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the sink received, for the report's method section and the smoke test.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Export requests answered.
    pub requests: AtomicU64,
    /// Protobuf bytes received in them.
    pub bytes: AtomicU64,
}

/// Binds `addr` and answers OTLP/HTTP exports on it until the task is dropped.
pub async fn serve(addr: SocketAddr, counters: Arc<SinkCounters>) -> std::io::Result<()> {
    serve_listener(TcpListener::bind(addr).await?, counters).await
}

/// Answers OTLP/HTTP exports on an already bound listener (tests bind port 0 first).
pub async fn serve_listener(
    listener: TcpListener,
    counters: Arc<SinkCounters>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| export(req, Arc::clone(&counters)));
            // A client that goes away mid-request is the sidecar shutting down: nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn export(
    req: Request<hyper::body::Incoming>,
    counters: Arc<SinkCounters>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let len = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    if counters.requests.fetch_add(1, Ordering::Relaxed) == 0 {
        // One line in the app's log proves the traces variant really exported.
        eprintln!("trueip-bench-app: first OTLP export received ({len} bytes)");
    }
    counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
    let response = Response::builder()
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::new()))
        .expect("a static header is valid");
    Ok(response)
}
