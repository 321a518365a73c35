//! One request: rewrite its forwarding headers, send it to the app over a pooled HTTP/1.1
//! connection, stream the answer back. An upgrade (WebSocket) becomes a raw tunnel only when the
//! app answers `101` with a protocol the client asked for; `CONNECT` is refused (`405`) unless
//! the listener allows it: past a tunnel no request is rewritten, so only the operator may open
//! one. Requests in flight and connections to the app are capped per listener (`503` beyond).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version,
    body::{Bytes, Frame, Incoming, SizeHint},
    client::conn::http1::SendRequest,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument as _, Span, debug, field::Empty, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::headers::{self, ClientFacts};
use trueip_telemetry::Chain;

use crate::counters::Counters;
use trueip_sidecar_config::HttpConfig;

/// The body of every response the sidecar sends: the app's, streamed, or its own short text.
pub(super) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Idle app connections kept per listener: enough for bursts, few enough that idle connections
/// never pin more than a sliver of `max_app_connections`.
const MAX_IDLE: usize = 64;

/// Headers that describe one hop of a connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// What the requests of one downstream connection share.
#[derive(Debug)]
pub(super) struct ConnCtx {
    pub(super) config: Arc<HttpConfig>,
    pub(super) facts: ClientFacts,
    pub(super) pool: Arc<AppPool>,
    pub(super) metrics: Arc<dyn Counters>,
    /// The connection's span: the parent of request spans without an incoming `traceparent`,
    /// and linked from those with one.
    pub(super) conn_span: Span,
    /// Requests handled so far.
    pub(super) requests: AtomicU64,
    /// The listener's budget of requests in flight, shared by all its connections.
    pub(super) request_slots: Arc<Semaphore>,
    /// Requests in flight per client address, so that one client cannot take the listener's
    /// whole budget.
    pub(super) client_slots: Arc<ClientSlots>,
    /// Requests of this connection whose response is not complete yet.
    pub(super) in_flight: AtomicUsize,
    /// When the connection last had no request in flight (for `keep_alive_timeout`).
    pub(super) idle_since: Mutex<Instant>,
    /// When a request started or a body moved a frame either way (for `stream_idle_timeout`).
    pub(super) progress: Arc<Progress>,
    /// Upgraded connections still open: the downstream connection lasts until they close.
    pub(super) tunnels: Mutex<Vec<JoinHandle<()>>>,
}

impl ConnCtx {
    /// Since when the connection has had no request in flight; `None` while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.in_flight.load(Ordering::Acquire) == 0).then_some(since)
    }

    /// Waits for every tunnel the connection's upgrades opened.
    pub(super) async fn tunnels_closed(&self) {
        loop {
            let open =
                std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(PoisonError::into_inner));
            if open.is_empty() {
                return;
            }
            for tunnel in open {
                // A tunnel that panicked has nothing left to wait for.
                let _ = tunnel.await;
            }
        }
    }
}

/// Serves one request; never fails: an unreachable app is a 502, a listener at its limit of
/// requests in flight a 503.
pub(super) async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<Body>, Infallible> {
    ctx.requests.fetch_add(1, Ordering::Relaxed);
    ctx.progress.touch();
    let span = request_span(&req, &ctx);
    let client = ctx.facts.client();
    let response = match Arc::clone(&ctx.request_slots).try_acquire_owned() {
        Ok(_) if !ctx.client_slots.enter(client) => span.in_scope(|| {
            refuse(
                &ctx,
                "max_requests_in_flight_per_client",
                StatusCode::SERVICE_UNAVAILABLE,
                "trueip: too many requests in flight from this client; try again\n",
            )
        }),
        Ok(slot) => {
            let in_flight = InFlight::start(Arc::clone(&ctx), slot);
            forward(req, &ctx)
                .instrument(span.clone())
                .await
                .map(|body| {
                    InFlightBody {
                        body,
                        progress: Arc::clone(&ctx.progress),
                        _guard: in_flight,
                    }
                    .boxed_unsync()
                })
        }
        Err(_) => span.in_scope(|| {
            refuse(
                &ctx,
                "max_requests_in_flight",
                StatusCode::SERVICE_UNAVAILABLE,
                "trueip: too many requests in flight; try again\n",
            )
        }),
    };
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    ctx.metrics.http_response(status.as_u16());
    Ok(response)
}

/// The sidecar's own answer to a request a limit or policy stops, logged and counted by `limit`.
fn refuse(
    ctx: &ConnCtx,
    limit: &'static str,
    status: StatusCode,
    body: &'static str,
) -> Response<Body> {
    warn!(limit, status = status.as_u16(), "request refused");
    ctx.metrics.http_limit(limit);
    text(status, body)
}

/// Requests in flight per client address, bounded by `max_requests_in_flight_per_client`.
#[derive(Debug)]
pub(super) struct ClientSlots {
    max: usize,
    counts: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl ClientSlots {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::default(),
        }
    }

    /// Counts one more request of `client`, unless it has `max` in flight already.
    fn enter(&self, client: std::net::IpAddr) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(client).or_default();
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// Counts one request of `client` done; forgets clients with none left.
    fn leave(&self, client: std::net::IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(client) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// The answer when the listener's `max_app_connections` are all open (a request needing a new
/// one, or an upgrade that would hold one as its tunnel).
fn app_connections_exhausted(ctx: &ConnCtx) -> Response<Body> {
    refuse(
        ctx,
        "max_app_connections",
        StatusCode::SERVICE_UNAVAILABLE,
        "trueip: too many connections to the app; try again\n",
    )
}

/// One request of a connection, from its head until its response body is sent: holds a slot
/// of the listener's `max_requests_in_flight` and of its client's share, and keeps the
/// connection from counting as idle.
struct InFlight {
    ctx: Arc<ConnCtx>,
    _slot: OwnedSemaphorePermit,
}

impl InFlight {
    fn start(ctx: Arc<ConnCtx>, slot: OwnedSemaphorePermit) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { ctx, _slot: slot }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ctx.client_slots.leave(self.ctx.facts.client());
        let mut since = self
            .ctx
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.ctx.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// The last time a connection made progress, for `stream_idle_timeout`: a request started, or
/// a frame of a request or response body moved.
#[derive(Debug)]
pub(super) struct Progress {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Progress {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub(super) fn quiet_for(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A body that marks its connection's progress with each frame, holding `G` until it is done
/// or dropped: a request body on its way to the app (`G = ()`), or a response body on its way
/// to the client, which ends its request's [`InFlight`].
pub(super) struct Tracked<B = Incoming, G = ()> {
    body: B,
    progress: Arc<Progress>,
    _guard: G,
}

/// A response body on its way to the client.
type InFlightBody = Tracked<Body, InFlight>;

impl<B, G> hyper::body::Body for Tracked<B, G>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = frame {
            self.progress.touch();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request's span: a child of the caller's trace when the request carries a valid
/// `traceparent` (linked to the connection's span), of the connection's span otherwise.
fn request_span(req: &Request<Incoming>, ctx: &ConnCtx) -> Span {
    let span = tracing::info_span!(
        parent: &ctx.conn_span,
        "request",
        otel.name = "trueip.request",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        network.protocol.name = "http",
        network.protocol.version = version_label(req.version()),
        http.response.status_code = Empty,
    );
    let incoming = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
    if incoming.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer (no traces exported): nothing to join then.
        let _ = span.set_parent(incoming);
        span.add_link(ctx.conn_span.context().span().span_context().clone());
    }
    span
}

/// Sends `req` to the app with the client in its headers and returns the app's answer.
async fn forward(mut req: Request<Incoming>, ctx: &ConnCtx) -> Response<Body> {
    let connect = req.method() == Method::CONNECT;
    if let Some(refused) = refusal(&req, ctx, connect) {
        return refused;
    }
    let asked: Vec<String> = if connect {
        Vec::new()
    } else {
        upgrade_tokens(req.headers())
    };
    let upgrade = connect || !asked.is_empty();
    // A tunnel outlives its request: it holds one of the listener's app connections until it
    // closes, and there is none to spare, no switch.
    let tunnel_slot = if upgrade {
        match Arc::clone(&ctx.pool.slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                return app_connections_exhausted(ctx);
            }
        }
    } else {
        None
    };
    let downstream: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));
    rewrite(&mut req, ctx, connect, upgrade);

    let progress = Arc::clone(&ctx.progress);
    let req = req.map(|body| Tracked {
        body,
        progress,
        _guard: (),
    });
    let mut response = match ctx.pool.send(req).await {
        Ok(r) => r,
        Err(SendError::Busy { .. }) => {
            return app_connections_exhausted(ctx);
        }
        Err(e) => {
            warn!(error = %Chain(&e), "request not delivered to the app");
            ctx.metrics.upstream_error();
            return text(StatusCode::BAD_GATEWAY, "trueip: the app is unreachable\n");
        }
    };
    let status = response.status();
    if status == StatusCode::SWITCHING_PROTOCOLS && !switches_to(response.headers(), &asked) {
        // A 101 the client did not ask for would turn the rest of its bytes into a tunnel that
        // no request rewrite sees: the app's answer is not passed on.
        warn!(
            limit = "upgrade_mismatch", asked = ?asked,
            offered = ?response.headers().get(header::UPGRADE),
            "the app switched protocols to one the client did not ask for; answered 502"
        );
        ctx.metrics.http_limit("upgrade_mismatch");
        ctx.metrics.upstream_error();
        return text(
            StatusCode::BAD_GATEWAY,
            "trueip: the app switched to a protocol the request did not ask for\n",
        );
    }
    let switched = status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
    if let Some(downstream) = downstream.filter(|_| switched) {
        let app = hyper::upgrade::on(&mut response);
        let metrics = Arc::clone(&ctx.metrics);
        let task = tokio::spawn(
            async move {
                tunnel(downstream, app, metrics).await;
                drop(tunnel_slot);
            }
            .in_current_span(),
        );
        let mut tunnels = ctx.tunnels.lock().unwrap_or_else(PoisonError::into_inner);
        tunnels.retain(|t| !t.is_finished());
        tunnels.push(task);
    }
    remove_hop_by_hop(
        response.headers_mut(),
        status == StatusCode::SWITCHING_PROTOCOLS,
    );
    response.map(BodyExt::boxed_unsync)
}

/// The answer to a request that is refused before it reaches the app, if it is: a CONNECT where it is
/// not allowed, too many header fields, more than one Host.
fn refusal(req: &Request<Incoming>, ctx: &ConnCtx, connect: bool) -> Option<Response<Body>> {
    if connect && !ctx.config.allow_connect {
        let mut response = refuse(
            ctx,
            "connect_refused",
            StatusCode::METHOD_NOT_ALLOWED,
            "trueip: CONNECT is not allowed on this listener\n",
        );
        // What follows a refused CONNECT on HTTP/1.1 may be tunnel bytes: never a request.
        if req.version() < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Some(response);
    }
    // HTTP/1.1 counts header fields as it parses; HTTP/2 only bounds the list's size.
    if req.headers().len() > ctx.config.limits.max_headers {
        return Some(refuse(
            ctx,
            "request_head_too_large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "trueip: too many request header fields\n",
        ));
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        // RFC 9112 section 3.2: a request with more than one Host is a 400.
        return Some(refuse(
            ctx,
            "bad_host",
            StatusCode::BAD_REQUEST,
            "trueip: more than one Host header\n",
        ));
    }
    None
}

/// The request as the app gets it: hop-by-hop and trailer headers gone, the forwarding
/// headers written, Host set to the authority the client asked for, the trace context
/// injected, HTTP/1.1 with an origin-form target.
fn rewrite(req: &mut Request<Incoming>, ctx: &ConnCtx, connect: bool, upgrade: bool) {
    // The authority the client asked for: the request target's (absolute form, HTTP/2
    // `:authority`), else Host. The app gets it as Host, so Host and `Forwarded: host=` agree.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });

    let headers = req.headers_mut();
    remove_hop_by_hop(headers, upgrade && !connect);
    // Without `Trailer`, hyper's client sends no trailers: a forged header cannot ride in one.
    headers.remove(header::TRAILER);
    for name in headers::rewrite(headers, &ctx.config, &ctx.facts, host.as_deref()) {
        ctx.metrics.http_header_removed(name.as_str());
    }
    if let Some(host) = host.as_deref()
        && let Ok(value) = HeaderValue::from_str(host)
    {
        // HTTP/2 carries the host in `:authority`; HTTP/1.1 needs `Host`.
        headers.insert(header::HOST, value);
    }
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
    *req.version_mut() = Version::HTTP_11;
    if !connect {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
}

/// Copies bytes both ways between the upgraded client and app connections until both close.
async fn tunnel(client: OnUpgrade, app: OnUpgrade, metrics: Arc<dyn Counters>) {
    let (client, app) = match tokio::try_join!(client, app) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %Chain(&e), "upgrade failed");
            return;
        }
    };
    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
    match tokio::io::copy_bidirectional(&mut client, &mut app).await {
        Ok((to_app, to_client)) => {
            metrics.to_app(to_app);
            metrics.to_client(to_client);
            debug!(to_app, to_client, "upgraded connection closed");
        }
        Err(e) => debug!(error = %Chain(&e), "upgraded connection broken"),
    }
}

/// The protocols an HTTP/1.1 `Upgrade` request (WebSocket and the like: `Connection: upgrade`
/// and `Upgrade`) asks for, lower-cased; empty when it is no upgrade request.
/// `h2c` is never one of them: an app switching to cleartext HTTP/2 would read streams whose
/// headers the sidecar never saw.
fn upgrade_tokens(headers: &HeaderMap) -> Vec<String> {
    if !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Vec::new();
    }
    list_tokens(headers, &header::UPGRADE)
        .filter(|t| !t.eq_ignore_ascii_case("h2c"))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Whether a `101` response names only protocols the request asked for (RFC 9110 section 7.8:
/// the server switches to one of those, and says which in `Upgrade`).
fn switches_to(response: &HeaderMap, asked: &[String]) -> bool {
    let mut offered = list_tokens(response, &header::UPGRADE).peekable();
    offered.peek().is_some() && offered.all(|t| asked.iter().any(|a| a.eq_ignore_ascii_case(t)))
}

/// The comma-separated tokens of every `name` field.
fn list_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    list_tokens(headers, &header::CONNECTION)
}

/// Removes the hop-by-hop headers and those `Connection` names; an upgrade keeps `Upgrade`
/// and `Connection: upgrade`, which the next hop needs to switch.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = connection_tokens(headers)
        .map(str::to_ascii_lowercase)
        .collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        if keep_upgrade && (name == "upgrade" || name == "connection") {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A short plain-text answer from the sidecar itself.
fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Why a request did not reach the app.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// connect(2) to the app failed.
    #[error("cannot connect to the app at {upstream}")]
    Connect {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The app's connection failed before or while the request was sent.
    #[error("the app's connection failed")]
    Http(#[source] hyper::Error),
    /// The listener has `max` connections to the app open already.
    #[error("the listener has its {max} connections to the app open already")]
    Busy {
        /// The listener's `max_app_connections`.
        max: usize,
    },
}

/// HTTP/1.1 connections to the app, reused by the requests of all of a listener's clients (as
/// nginx's and Envoy's upstream pools are): each request names its client in its headers.
#[derive(Debug)]
pub(super) struct AppPool {
    pub(super) upstream: SocketAddr,
    idle: Mutex<Vec<SendRequest<Tracked>>>,
    /// The listener's budget of connections to the app, shared by all its pools (and tunnels).
    pub(super) slots: Arc<Semaphore>,
    /// The size of that budget, for the error.
    max: usize,
}

// === impl AppPool ===

impl AppPool {
    pub(super) fn new(upstream: SocketAddr, slots: Arc<Semaphore>, max: usize) -> Self {
        Self {
            upstream,
            idle: Mutex::new(Vec::new()),
            slots,
            max,
        }
    }

    /// Sends `req` on an idle connection, or a new one; a pooled connection the app closed in
    /// the meantime gives the request back and the next one is tried.
    async fn send(
        self: &Arc<Self>,
        mut req: Request<Tracked>,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, pooled) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.recycle(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if pooled => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<SendRequest<Tracked>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts the connection back once its response is read (not after an upgrade: the
    /// connection is then the tunnel's). The pool is held weakly: once the listener is gone,
    /// its app connections close.
    fn recycle(self: &Arc<Self>, mut sender: SendRequest<Tracked>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE {
                    idle.push(sender);
                }
            }
        });
    }

    /// Opens a connection to the app, holding one of the listener's slots while it is open.
    async fn connect(&self) -> Result<SendRequest<Tracked>, SendError> {
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| SendError::Busy { max: self.max })?;
        let stream =
            TcpStream::connect(self.upstream)
                .await
                .map_err(|source| SendError::Connect {
                    upstream: self.upstream,
                    source,
                })?;
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %Chain(&e), "TCP_NODELAY not set on the app connection");
        }
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %Chain(&e), "app connection failed");
            }
            drop(slot);
        });
        Ok(sender)
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes W3C trace context into request headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrades_keep_what_the_app_needs_to_switch() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(upgrade_tokens(&h), ["websocket"]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.contains_key("sec-websocket-key"));
    }

    #[test]
    fn a_101_must_name_a_protocol_the_client_asked_for() {
        let asked = vec!["websocket".to_owned(), "h2c".to_owned()];
        let mut r = HeaderMap::new();
        assert!(!switches_to(&r, &asked), "a 101 without Upgrade");
        r.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(switches_to(&r, &asked));
        r.insert(header::UPGRADE, HeaderValue::from_static("websocket, raw"));
        assert!(!switches_to(&r, &asked));
        assert!(!switches_to(&r, &[]), "no upgrade was asked for");
        let mut q = HeaderMap::new();
        q.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(
            upgrade_tokens(&q).is_empty(),
            "Upgrade without Connection: upgrade is no upgrade request"
        );
    }
}
