//! What one hostile client, or a few hundred, may cost the sidecar: the bounds of `http` mode
//! (request heads, timeouts, HTTP/2 streams and windows, connections and requests to the app)
//! and of the admin endpoint. Each default is chosen for a sidecar whose container is limited to
//! 64 MiB (the chart's default) and says why; the README compares them with Envoy's and nginx's.

use std::{num::NonZeroUsize, time::Duration};

use serde::{Deserialize, Serialize};

/// `http.limits`: the resources one listener's HTTP side may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// The largest request head (request line and headers; HTTP/2: the decoded header list),
    /// in bytes; beyond it the client gets `431` and the connection is closed.
    pub max_request_head: usize,
    /// The most header fields in one request; beyond it `431`.
    pub max_headers: usize,
    /// How long a client has for the TLS handshake, for the first bytes of a connection and for
    /// each whole request head (slowloris). HTTP/1.1: the timer starts when the connection
    /// goes idle after a response, so an idle keep-alive connection is closed after it too.
    #[serde(with = "crate::duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed gracefully (HTTP/2 gets
    /// a GOAWAY; pings do not keep it open). HTTP/1.1 is closed sooner when
    /// `header_read_timeout` is shorter.
    #[serde(with = "crate::duration")]
    pub keep_alive_timeout: Duration,
    /// A connection whose requests in flight make no progress for this long (no request
    /// started, no body frame either way: a client that stopped reading or sending) is closed,
    /// so that its slots of `max_requests_in_flight` come back.
    #[serde(with = "crate::duration")]
    pub stream_idle_timeout: Duration,
    /// HTTP/2: streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: bytes a client may send on one stream before the sidecar reads them (and the
    /// most the sidecar buffers for one stream towards a client that does not read).
    pub h2_stream_window: u32,
    /// HTTP/2: bytes a client may send on a whole connection before the sidecar reads them.
    pub h2_connection_window: u32,
    /// HTTP/2 rapid reset (CVE-2023-44487): streams a client opened and reset before they were
    /// served that may be pending at once; beyond it the connection is closed.
    pub h2_max_pending_resets: usize,
    /// HTTP/2: streams the sidecar may reset because the client broke the protocol, per
    /// connection, before it closes the connection ("MadeYouReset").
    pub h2_max_local_resets: usize,
    /// Connections to the app open at once, over all of the listener's clients; a request that
    /// needs one more gets `503`.
    pub max_app_connections: NonZeroUsize,
    /// Requests being served at once, over all of the listener's clients; one more gets `503`.
    pub max_requests_in_flight: NonZeroUsize,
    /// Requests being served at once for one client address (the PROXY header's client), so
    /// that a few connections of one client cannot take `max_requests_in_flight`; one more
    /// gets `503`.
    pub max_requests_in_flight_per_client: NonZeroUsize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            // 32 KiB: cookies and JWTs fit (nginx allows 4 × 8 KiB lines, Envoy 60 KiB), and
            // 200 connections that never finish their head cost 6 MiB, not 80.
            max_request_head: 32 * 1024,
            // hyper's, Envoy's and Go's net/http default.
            max_headers: 100,
            // nginx waits 60 s, Envoy not at all by default; 10 s is what a client on a bad
            // mobile link needs for a head of a few KiB, and frees a slowloris slot 6× sooner.
            header_read_timeout: Duration::from_secs(10),
            // Load balancers keep idle connections for 60 s (AWS ALB/NLB, Google); nginx 75 s.
            keep_alive_timeout: Duration::from_secs(60),
            // Envoy's `stream_idle_timeout`: long polls and slow uploads that move a frame every
            // few minutes are fine.
            stream_idle_timeout: Duration::from_secs(300),
            // Envoy's edge recommendation (nginx: 128, hyper: 200).
            h2_max_concurrent_streams: 100,
            // Envoy's edge recommendation: 64 KiB per stream, 1 MiB per connection (hyper:
            // 1 MiB and 1 MiB), with the connection's halved: what a client may make the
            // sidecar hold of a body the app has not read yet.
            h2_stream_window: 64 * 1024,
            h2_connection_window: 512 * 1024,
            // hyper's (and h2's) defaults.
            h2_max_pending_resets: 20,
            h2_max_local_resets: 1024,
            // Envoy's default circuit breakers: 1024 connections, 1024 requests.
            max_app_connections: NonZeroUsize::new(1024).expect("non-zero"),
            max_requests_in_flight: NonZeroUsize::new(1024).expect("non-zero"),
            // A quarter of the listener's: one client (or one NAT address) never takes more,
            // and two HTTP/2 connections at their stream limit still fit.
            max_requests_in_flight_per_client: NonZeroUsize::new(256).expect("non-zero"),
        }
    }
}

impl HttpLimits {
    /// The smallest head cap: hyper's read buffer, which the cap is, cannot be smaller.
    pub const MIN_REQUEST_HEAD: usize = 8 * 1024;
    /// The largest head cap: past 1 MiB a few hundred clients exhaust the container again.
    pub const MAX_REQUEST_HEAD: usize = 1024 * 1024;
    /// The smallest HTTP/2 window accepted: 65 535, the protocol's initial window (RFC 9113
    /// section 6.9.2); the largest is 2^31 - 1.
    pub const MIN_H2_WINDOW: u32 = 65_535;

    /// What is wrong with the values, as (key, problem).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if !(Self::MIN_REQUEST_HEAD..=Self::MAX_REQUEST_HEAD).contains(&self.max_request_head) {
            return Some((
                "http.limits.max_request_head",
                format!(
                    "{} is outside {}..={}",
                    self.max_request_head,
                    Self::MIN_REQUEST_HEAD,
                    Self::MAX_REQUEST_HEAD
                ),
            ));
        }
        if self.max_headers == 0 {
            return Some(("http.limits.max_headers", "must be at least 1".into()));
        }
        for (key, timeout) in [
            ("http.limits.header_read_timeout", self.header_read_timeout),
            ("http.limits.keep_alive_timeout", self.keep_alive_timeout),
            ("http.limits.stream_idle_timeout", self.stream_idle_timeout),
        ] {
            if timeout.is_zero() {
                return Some((key, "must be longer than 0s".into()));
            }
        }
        if self.h2_max_concurrent_streams == 0 {
            return Some((
                "http.limits.h2_max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        for (key, window) in [
            ("http.limits.h2_stream_window", self.h2_stream_window),
            (
                "http.limits.h2_connection_window",
                self.h2_connection_window,
            ),
        ] {
            if !(Self::MIN_H2_WINDOW..=i32::MAX as u32).contains(&window) {
                return Some((
                    key,
                    format!("{window} is outside {}..={}", Self::MIN_H2_WINDOW, i32::MAX),
                ));
            }
        }
        None
    }
}

/// `admin`: the `/metrics`, `/healthz`, `/readyz` endpoint is reachable by anything that can
/// reach the pod, so it is bounded like a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// How long a scraper or probe has to send its request head; idle connections are closed
    /// after it too.
    #[serde(with = "crate::duration")]
    pub header_timeout: Duration,
    /// Connections served at once; further ones are closed at accept (counted).
    pub max_connections: NonZeroUsize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            // Prometheus and the kubelet send their request at once.
            header_timeout: Duration::from_secs(5),
            // A scraper, three probes and room for retries; nothing else belongs here.
            max_connections: NonZeroUsize::new(16).expect("non-zero"),
        }
    }
}
