//! Counters and histograms per listener, kept in a Prometheus registry (`prometheus-client`), so
//! the `/metrics` endpoint and the tests read the same numbers. Handles for the data path are
//! resolved once per listener; a connection only touches atomics.

mod outcome;
pub mod udp;

use std::{
    collections::BTreeSet,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use trueip_sidecar_http::Counters;

pub use self::outcome::{FastPathOutcome, RestoreOutcome};

type Labels = Vec<(&'static str, String)>;

/// Buckets from 10 µs to about 5 s: a header glued to the first segment is decoded in
/// microseconds; one that dribbles in is cut at `header_timeout`.
#[derive(Debug, Clone, Copy)]
struct HeaderBuckets;

impl MetricConstructor<Histogram> for HeaderBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(1e-5, 4.0, 10))
    }
}

/// The sidecar's metric families, one set shared by every listener (told apart by the
/// `listener` label), registered for the `/metrics` endpoint.
#[derive(Debug)]
pub struct SidecarMetrics {
    accepted: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    rejected: Family<Labels, Counter>,
    restore: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    upstream_errors: Family<Labels, Counter>,
    header_duration: Family<Labels, Histogram, HeaderBuckets>,
    udp: udp::UdpFamilies,
    http_requests: Family<Labels, Counter>,
    http_headers_removed: Family<Labels, Counter>,
    http_limits: Family<Labels, Counter>,
    fast_path: Family<Labels, Counter>,
    admin_refused: Family<Labels, Counter>,
    registry: Registry,
}

impl Default for SidecarMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("trueip");
        let m = Self {
            accepted: Family::default(),
            active: Family::default(),
            rejected: Family::default(),
            restore: Family::default(),
            bytes: Family::default(),
            upstream_errors: Family::default(),
            header_duration: Family::new_with_constructor(HeaderBuckets),
            udp: udp::UdpFamilies::default(),
            http_requests: Family::default(),
            http_headers_removed: Family::default(),
            http_limits: Family::default(),
            fast_path: Family::default(),
            admin_refused: Family::default(),
            registry: Registry::default(),
        };
        m.udp.register(&mut registry);
        registry.register(
            "connections_accepted",
            "Connections accepted from the load balancer",
            m.accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now",
            m.active.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed before reaching the app, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "restore",
            "Served connections by what the app learns of the client",
            m.restore.clone(),
        );
        registry.register_with_unit(
            "transferred",
            "Payload bytes forwarded, by direction",
            Unit::Bytes,
            m.bytes.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failures to connect to, or forward to and from, the app",
            m.upstream_errors.clone(),
        );
        registry.register_with_unit(
            "header_parse_duration",
            "Time from accept to a decided PROXY header",
            Unit::Seconds,
            m.header_duration.clone(),
        );
        registry.register(
            "http_requests",
            "mode http: requests answered, by status class (1xx..5xx)",
            m.http_requests.clone(),
        );
        registry.register(
            "http_headers_removed",
            "mode http: client-supplied forwarding headers removed (anti-spoofing), by header",
            m.http_headers_removed.clone(),
        );
        registry.register(
            "http_limits",
            "mode http: requests refused and connections closed by a limit or policy, by limit",
            m.http_limits.clone(),
        );
        registry.register(
            "fast_path_connections",
            "Connections of fast-path listeners, by what the kernel fast path did",
            m.fast_path.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Connections to /metrics, /healthz and /readyz closed by a limit, by reason",
            m.admin_refused.clone(),
        );
        Self { registry, ..m }
    }
}

impl SidecarMetrics {
    /// The handles of one listener, with every per-listener series created at zero.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let labels = |extra: &[(&'static str, &str)]| -> Labels {
            std::iter::once(("listener", name.to_owned()))
                .chain(extra.iter().map(|&(k, v)| (k, v.to_owned())))
                .collect()
        };
        let counter = |family: &Family<Labels, Counter>, extra: &[(&'static str, &str)]| {
            family.get_or_create(&labels(extra)).clone()
        };
        ListenerMetrics {
            name: name.to_owned(),
            accepted: counter(&self.accepted, &[]),
            active: self.active.get_or_create(&labels(&[])).clone(),
            upstream_errors: counter(&self.upstream_errors, &[]),
            to_app: counter(&self.bytes, &[("direction", "to_app")]),
            to_client: counter(&self.bytes, &[("direction", "to_client")]),
            restore: RestoreOutcome::ALL.map(|o| counter(&self.restore, &[("outcome", o.label())])),
            header_duration: self.header_duration.get_or_create(&labels(&[])).clone(),
            fast_path: FastPathOutcome::ALL
                .map(|o| counter(&self.fast_path, &[("outcome", o.label())])),
            rejected: self.rejected.clone(),
            reasons: Mutex::default(),
            http_requests: self.http_requests.clone(),
            http_headers_removed: self.http_headers_removed.clone(),
            removed_headers: Mutex::default(),
            http_limits: self.http_limits.clone(),
            limits_hit: Mutex::default(),
        }
    }

    /// The handles of one UDP listener.
    pub fn udp_listener(&self, name: &str) -> udp::UdpMetrics {
        self.udp.listener(name)
    }

    /// Counts a connection to the admin endpoint closed because of `reason`
    /// (`max_connections`, `header_timeout`).
    pub(crate) fn admin_refused(&self, reason: &'static str) {
        self.admin_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The OpenMetrics text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The counters of one listener.
#[derive(Debug)]
pub struct ListenerMetrics {
    name: String,
    accepted: Counter,
    active: Gauge,
    upstream_errors: Counter,
    to_app: Counter,
    to_client: Counter,
    restore: [Counter; RestoreOutcome::ALL.len()],
    header_duration: Histogram,
    fast_path: [Counter; 5],
    rejected: Family<Labels, Counter>,
    reasons: Mutex<BTreeSet<&'static str>>,
    http_requests: Family<Labels, Counter>,
    http_headers_removed: Family<Labels, Counter>,
    removed_headers: Mutex<BTreeSet<String>>,
    http_limits: Family<Labels, Counter>,
    limits_hit: Mutex<BTreeSet<&'static str>>,
}

/// The status classes of `http_requests`, indexed by the status code's first digit minus one.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A copy of a listener's counters, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections accepted from the load balancer.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Bytes forwarded from the client to the app (payload; re-emitted headers excluded).
    pub bytes_to_app: u64,
    /// Bytes forwarded from the app to the client.
    pub bytes_to_client: u64,
    /// Failures to connect to, or forward to and from, the app.
    pub upstream_errors: u64,
    /// Connections closed before reaching the app, by reason.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Served connections by restore outcome.
    pub restore: std::collections::BTreeMap<&'static str, u64>,
    /// `http` mode: responses by status class (`2xx`, ...); classes never seen are absent.
    pub http_requests: std::collections::BTreeMap<&'static str, u64>,
    /// `http` mode: client-supplied forwarding headers removed, by header name.
    pub http_headers_removed: std::collections::BTreeMap<String, u64>,
    /// `http` mode: requests refused and connections closed by a limit, by limit.
    pub http_limits: std::collections::BTreeMap<&'static str, u64>,
    /// Connections of a fast-path listener by fast-path outcome.
    pub fast_path: std::collections::BTreeMap<&'static str, u64>,
}

impl Snapshot {
    /// Rejections for one reason.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected.get(reason).copied().unwrap_or(0)
    }

    /// Connections with one restore outcome.
    pub fn restored(&self, outcome: RestoreOutcome) -> u64 {
        self.restore.get(outcome.label()).copied().unwrap_or(0)
    }
}

impl ListenerMetrics {
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
        self.active.inc();
    }

    pub(crate) fn closed(&self) {
        self.active.dec();
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reason);
        self.rejected
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn restore(&self, outcome: RestoreOutcome) {
        self.restore[outcome as usize].inc();
    }

    /// Counts what the kernel fast path did for a connection.
    pub(crate) fn fast_path(&self, outcome: FastPathOutcome) {
        self.fast_path[outcome as usize].inc();
    }

    pub(crate) fn header_decided(&self, after: Duration) {
        self.header_duration.observe(after.as_secs_f64());
    }

    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    pub(crate) fn to_app(&self, n: u64) {
        self.to_app.inc_by(n);
    }

    pub(crate) fn to_client(&self, n: u64) {
        self.to_client.inc_by(n);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> Snapshot {
        let reasons = self
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Snapshot {
            accepted: self.accepted.get(),
            active: u64::try_from(self.active.get()).unwrap_or(0),
            bytes_to_app: self.to_app.get(),
            bytes_to_client: self.to_client.get(),
            upstream_errors: self.upstream_errors.get(),
            rejected: reasons
                .into_iter()
                .map(|reason| {
                    let labels = vec![
                        ("listener", self.name.clone()),
                        ("reason", reason.to_owned()),
                    ];
                    (reason, self.rejected.get_or_create(&labels).get())
                })
                .collect(),
            restore: RestoreOutcome::ALL
                .into_iter()
                .map(|o| (o.label(), self.restore[o as usize].get()))
                .collect(),
            http_requests: STATUS_CLASSES
                .into_iter()
                .filter_map(|class| {
                    let labels = vec![("listener", self.name.clone()), ("class", class.to_owned())];
                    Some((class, self.http_requests.get(&labels)?.get()))
                })
                .collect(),
            http_headers_removed: self
                .removed_headers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|header| {
                    let labels = vec![("listener", self.name.clone()), ("header", header.clone())];
                    (
                        header.clone(),
                        self.http_headers_removed.get_or_create(&labels).get(),
                    )
                })
                .collect(),
            http_limits: self
                .limits_hit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|&limit| {
                    let labels = vec![("listener", self.name.clone()), ("limit", limit.to_owned())];
                    (limit, self.http_limits.get_or_create(&labels).get())
                })
                .collect(),
            fast_path: FastPathOutcome::ALL
                .into_iter()
                .map(|o| (o.label(), self.fast_path[o as usize].get()))
                .collect(),
        }
    }
}

/// The http mode counts on the same series as the relay (`trueip_sidecar_http::Counters`).
impl Counters for ListenerMetrics {
    /// Counts a response sent to the client in `http` mode.
    fn http_response(&self, status: u16) {
        let Some(class) = STATUS_CLASSES.get(usize::from(status / 100).wrapping_sub(1)) else {
            return;
        };
        self.http_requests
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("class", (*class).to_owned()),
            ])
            .inc();
    }

    /// Counts a forwarding header the client sent that the sidecar removed.
    fn http_header_removed(&self, header: &str) {
        self.removed_headers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(header.to_owned());
        self.http_headers_removed
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("header", header.to_owned()),
            ])
            .inc();
    }

    /// Counts a request refused or a connection closed in `http` mode because of `limit`
    /// (`request_head_too_large`, `header_read_timeout`, `connect_refused`, ...).
    fn http_limit(&self, limit: &'static str) {
        self.limits_hit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(limit);
        self.http_limits
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("limit", limit.to_owned()),
            ])
            .inc();
    }

    fn rejected(&self, reason: &'static str) {
        ListenerMetrics::rejected(self, reason);
    }

    fn upstream_error(&self) {
        ListenerMetrics::upstream_error(self);
    }

    fn to_app(&self, n: u64) {
        ListenerMetrics::to_app(self, n);
    }

    fn to_client(&self, n: u64) {
        ListenerMetrics::to_client(self, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_families_are_exported_by_class_and_header() {
        let registry = SidecarMetrics::default();
        let web = registry.listener("web");
        web.http_response(200);
        web.http_response(204);
        web.http_response(502);
        web.http_response(99);
        web.http_header_removed("x-forwarded-for");
        let text = registry.encode();
        for line in [
            "trueip_http_requests_total{listener=\"web\",class=\"2xx\"} 2",
            "trueip_http_requests_total{listener=\"web\",class=\"5xx\"} 1",
            "trueip_http_headers_removed_total{listener=\"web\",header=\"x-forwarded-for\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("class=\"0xx\""), "{text}");
        let s = web.snapshot();
        assert_eq!(s.http_requests.get("2xx"), Some(&2));
        assert_eq!(s.http_requests.get("1xx"), None, "never seen, not created");
        assert_eq!(s.http_headers_removed.get("x-forwarded-for"), Some(&1));
    }
}
