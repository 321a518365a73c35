//! `mode: http`: the sidecar serves HTTP/1.1 and HTTP/2 to the load balancer (cleartext with
//! h1/h2 detection, or TLS with ALPN) and proxies each request to the app over HTTP/1.1 on
//! loopback, with the client the PROXY header named in `X-Forwarded-For`, `X-Real-IP` and
//! `Forwarded`. The client is a property of the downstream connection: every request on it —
//! keep-alive, pipelined or multiplexed — carries the same client.
//!
//! What a connection may cost is bounded by the listener's `http.limits` ([`HttpLimits`]):
//! request heads (`431` beyond), the time to send one, idle time, HTTP/2 streams, windows and
//! resets, and, over all connections, requests in flight and connections to the app (`503`).
//!
//! The sidecar hands over each connection once its PROXY header is read ([`Http::serve`]), and
//! counts what happens through [`Counters`], which its listener metrics implement.

mod counters;
mod headers;
mod io;
mod proxy;
mod tls;

use std::sync::{Arc, Mutex};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tracing::{Span, debug, warn};

pub use self::counters::{Arrival, Counters};
pub use self::tls::TlsError;
use self::{
    headers::ClientFacts,
    io::{FirstBytes, Prefixed},
    proxy::{AppPool, ClientSlots, ConnCtx, Progress},
};
use trueip_telemetry::Chain;

use trueip_sidecar_config::{HttpConfig, HttpLimits, ListenerConfig};

/// A listener's `http` mode, ready to serve connections.
pub struct Http {
    config: Arc<HttpConfig>,
    tls: Option<TlsAcceptor>,
    /// `max_requests_in_flight`, shared by the listener's connections.
    request_slots: Arc<Semaphore>,
    /// The app connections of the listener (within `max_app_connections`), shared by all its
    /// clients: each request carries its client in its headers, not in its connection.
    pool: Arc<AppPool>,
    /// `max_requests_in_flight_per_client`, shared by the listener's connections.
    client_slots: Arc<ClientSlots>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("upstream", &self.pool.upstream)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Http {
    /// Prepares the mode; with `http.tls`, loads the certificate (and starts watching its files).
    pub fn new(config: &ListenerConfig) -> Result<Self, TlsError> {
        let tls = config
            .http
            .tls
            .as_ref()
            .map(|t| tls::acceptor(t, &config.name()))
            .transpose()?;
        let limits = &config.http.limits;
        Ok(Self {
            config: Arc::new(config.http.clone()),
            tls,
            request_slots: Arc::new(Semaphore::new(limits.max_requests_in_flight.get())),
            pool: Arc::new(AppPool::new(
                config.upstream,
                Arc::new(Semaphore::new(limits.max_app_connections.get())),
                limits.max_app_connections.get(),
            )),
            client_slots: Arc::new(ClientSlots::new(
                limits.max_requests_in_flight_per_client.get(),
            )),
        })
    }

    /// Serves one downstream connection whose PROXY header has been read: TLS (if configured),
    /// then HTTP until the client or the app closes, or until `shutdown` turns true and the
    /// requests in flight are answered. `client` is who the header named (or the peer without
    /// one), `header` the header if there was one, and `rest` the bytes read after it. Everything
    /// that goes wrong is logged and counted on the connection's span and `metrics`.
    pub async fn serve(
        &self,
        stream: TcpStream,
        arrival: Arrival,
        metrics: Arc<dyn Counters>,
        shutdown: watch::Receiver<bool>,
    ) {
        let Arrival {
            client,
            header,
            rest,
        } = arrival;
        let io = Prefixed::new(rest, stream);
        let Some(acceptor) = &self.tls else {
            let facts = ClientFacts::new(client.ip(), header.as_deref(), false, &self.config);
            return self.serve_http(io, facts, metrics, shutdown).await;
        };
        let handshake = self.config.limits.header_read_timeout;
        let stream = match tokio::time::timeout(handshake, acceptor.accept(io)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return reject(&*metrics, "tls_handshake", &e),
            Err(_) => return reject(&*metrics, "tls_handshake_timeout", &"no handshake in time"),
        };
        let (_, session) = stream.get_ref();
        let span = Span::current();
        if let Some(sni) = session.server_name() {
            span.record("tls.client.server_name", sni);
        }
        if let Some(version) = session.protocol_version() {
            span.record("tls.protocol.version", tls::version_label(version));
        }
        let facts = ClientFacts::new(client.ip(), header.as_deref(), true, &self.config);
        // Boxed: the TLS stream makes this state 6 KiB, which cleartext connections need not carry.
        Box::pin(self.serve_http(Prefixed::new(Vec::new(), stream), facts, metrics, shutdown))
            .await;
    }

    /// Checks that the stream starts like HTTP, then serves it with hyper. On shutdown hyper
    /// closes the connection gracefully: an idle HTTP/1.1 keep-alive connection at once, one
    /// with a request in flight after its response (with `Connection: close` when the headers
    /// are still to be sent), and HTTP/2 with a GOAWAY that lets open streams finish.
    async fn serve_http<S>(
        &self,
        mut io: Prefixed<S>,
        facts: ClientFacts,
        metrics: Arc<dyn Counters>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.config.limits;
        if !starts_like_http(&mut io, limits, &*metrics).await {
            return;
        }
        let ctx = Arc::new(ConnCtx {
            config: Arc::clone(&self.config),
            facts,
            pool: Arc::clone(&self.pool),
            metrics: Arc::clone(&metrics),
            conn_span: Span::current(),
            requests: std::sync::atomic::AtomicU64::new(0),
            request_slots: Arc::clone(&self.request_slots),
            client_slots: Arc::clone(&self.client_slots),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            progress: Arc::new(Progress::new()),
            tunnels: Mutex::default(),
        });
        let service = {
            let ctx = Arc::clone(&ctx);
            hyper::service::service_fn(move |req| proxy::handle(req, Arc::clone(&ctx)))
        };
        let builder = builder(limits);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = stopped(&mut shutdown) => {
                debug!("shutting down: closing the HTTP connection once its requests are answered");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            limit = idle(&ctx, limits) => {
                if limit == "stream_idle_timeout" {
                    warn!(limit, "closing the HTTP connection: its requests made no progress");
                } else {
                    debug!(limit, "closing the idle HTTP connection");
                }
                metrics.http_limit(limit);
                conn.as_mut().graceful_shutdown();
                // HTTP/2 waits for the client to acknowledge a PING between its two GOAWAYs;
                // a client that never does gets no more than a head's time.
                tokio::time::timeout(limits.header_read_timeout, conn)
                    .await
                    .unwrap_or_else(|_| {
                        debug!("the client did not complete the graceful close; closing");
                        Ok(())
                    })
            }
        };
        ctx.tunnels_closed().await;
        let requests = ctx.requests.load(std::sync::atomic::Ordering::Relaxed);
        Span::current().record("trueip.http.requests", requests);
        if let Err(e) = result {
            connection_failed(&*e, requests, &*metrics);
        }
    }
}

/// Whether the stream starts like HTTP. Otherwise the connection is answered (a 400 to bytes
/// that are not HTTP), logged and counted, and the caller closes it.
async fn starts_like_http<S>(
    io: &mut Prefixed<S>,
    limits: &HttpLimits,
    metrics: &dyn Counters,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match io.sniff(limits.header_read_timeout).await {
        Ok(FirstBytes::Http) => true,
        Ok(FirstBytes::Closed) => {
            debug!("connection closed before a request");
            false
        }
        Ok(FirstBytes::Timeout) => {
            metrics.http_limit("header_read_timeout");
            reject(metrics, "request_timeout", &"no request in time");
            false
        }
        Ok(first @ (FirstBytes::NotHttp | FirstBytes::Tls)) => {
            let why = if first == FirstBytes::Tls {
                "a TLS handshake on a cleartext HTTP listener"
            } else {
                "not an HTTP request"
            };
            let body = format!("trueip: {why}\n");
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            // The connection is closed either way; a client that is gone misses the answer.
            let _ = io.write_all(response.as_bytes()).await;
            let _ = io.shutdown().await;
            metrics.http_response(400);
            reject(metrics, "not_http", &why);
            false
        }
        Err(e) => {
            reject(metrics, "read_error", &e);
            false
        }
    }
}

/// Logs and counts how a connection that hyper ended with an error failed: a head too large
/// (hyper answered 431), no head in time, a malformed request (hyper answered 400), or the
/// client going away.
fn connection_failed(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    requests: u64,
    metrics: &dyn Counters,
) {
    let hyper_error = e.downcast_ref::<hyper::Error>();
    if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
        // hyper answered 431 (request head or header count beyond the limits).
        metrics.http_response(431);
        metrics.http_limit("request_head_too_large");
        return reject(metrics, "request_head_too_large", &e);
    }
    if hyper_error.is_some_and(hyper::Error::is_timeout) {
        metrics.http_limit("header_read_timeout");
        if requests == 0 {
            return reject(metrics, "request_timeout", &e);
        }
        debug!(
            requests,
            "no further request head in time; connection closed"
        );
        return;
    }
    let parse = hyper_error.is_some_and(hyper::Error::is_parse);
    if parse && requests == 0 {
        // hyper answered 400 (or 431/414) itself.
        metrics.http_response(400);
        reject(metrics, "not_http", &e);
    } else if parse {
        metrics.http_response(400);
        warn!(error = %Chain(e), requests, "malformed HTTP request; connection closed");
    } else {
        debug!(error = %Chain(e), requests, "HTTP connection ended");
    }
}

/// Completes once shutdown is requested (or the sender is gone); the guard `wait_for` returns
/// is dropped here, so the connection's future stays `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// hyper's server settings for `limits`.
fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper answers 431 once a head does not fit its read buffer.
        .max_buf_size(limits.max_request_head)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .max_send_buf_size(limits.h2_stream_window as usize)
        .max_header_list_size(u32::try_from(limits.max_request_head).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_local_error_reset_streams(limits.h2_max_local_resets);
    builder
}

/// Completes, naming the limit, once the connection has had no request in flight for
/// `keep_alive_timeout`, or requests in flight but no progress (no request started, no body
/// frame moved either way) for `stream_idle_timeout`: a client that stops reading, or stops
/// sending a body, holds its slots no longer than that.
async fn idle(ctx: &ConnCtx, limits: &HttpLimits) -> &'static str {
    loop {
        match ctx.idle_since() {
            Some(since) if since.elapsed() >= limits.keep_alive_timeout => {
                return "keep_alive_timeout";
            }
            // A request may start meanwhile: look again in time to see it stall.
            Some(since) => {
                let deadline = since + limits.keep_alive_timeout;
                let stall_check = Instant::now() + limits.stream_idle_timeout;
                tokio::time::sleep_until(deadline.min(stall_check)).await;
            }
            None => {
                let quiet = ctx.progress.quiet_for();
                if quiet >= limits.stream_idle_timeout {
                    return "stream_idle_timeout";
                }
                // Look again when the stall would be complete, or a request could have ended.
                let wait = (limits.stream_idle_timeout - quiet).min(limits.keep_alive_timeout);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Logs, counts and marks the span of a connection closed before a request reached the app.
fn reject(metrics: &dyn Counters, reason: &'static str, error: &dyn std::fmt::Display) {
    let span = Span::current();
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
    warn!(reason, error = %error, "connection rejected");
    metrics.rejected(reason);
}
