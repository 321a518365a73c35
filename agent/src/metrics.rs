//! The agent's Prometheus metrics (`prometheus-client`), served as OpenMetrics text at `/metrics`
//! on the health listener.
//!
//! Requests and sweeps are counted as they happen. Everything the kernel holds — the pods, their
//! map entries, the steering counters — is read at scrape time: the pods are copied under the
//! registry's lock, which is released before any map is read, so a scrape never holds up a
//! sidecar's request for more than that copy. The data path (the eBPF programs) is not involved.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry as MetricRegistry,
};
use trueip_agent_client::protocol::ErrorCode;

use crate::pods::{self, Observed, Registry};

/// What Prometheus is told the body is (prometheus-client writes OpenMetrics text).
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric name.
const PREFIX: &str = "trueip_agent";

type Labels = Vec<(&'static str, String)>;

/// A request on the agent socket, as the `request` label shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// `GET-MAP`.
    GetMap,
    /// `STEER`.
    Steer,
    /// `GET-FAST-PATH`.
    FastPath,
    /// A message that is not a request of this protocol version.
    Invalid,
}

impl RequestKind {
    /// The `request` label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::GetMap => "get-map",
            Self::Steer => "steer",
            Self::FastPath => "get-fast-path",
            Self::Invalid => "invalid",
        }
    }
}

/// A connection to the agent socket dropped before its request was served, as the `reason`
/// label shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The caller is in the node's network namespace (a process on the node, a hostNetwork pod).
    NodeNetns,
    /// The caller is not in a pod cgroup (`--pod-cgroup auto`) or resolves to the root cgroup.
    NotAPod,
    /// The caller's identity could not be pinned (no pidfd, or it exited).
    Unpinned,
    /// The caller could not be named at all (no credentials, /proc unreadable).
    Unidentified,
    /// The caller asked more often than its rate allows.
    RateLimited,
    /// The caller, or all callers together, hold as many open connections as allowed.
    TooManyConnections,
    /// No request arrived before the deadline.
    Timeout,
}

impl Refusal {
    /// The `reason` label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::NodeNetns => "node-netns",
            Self::NotAPod => "not-a-pod",
            Self::Unpinned => "unpinned",
            Self::Unidentified => "unidentified",
            Self::RateLimited => "rate-limited",
            Self::TooManyConnections => "too-many-connections",
            Self::Timeout => "timeout",
        }
    }
}

/// The agent's metrics: counters kept as things happen, and the pods to read at scrape time.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    requests: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    stray_fds: Counter,
    sweeps: Counter,
    pods_swept: Counter,
    registry: MetricRegistry,
    /// The pods, once re-found at startup.
    pods: OnceLock<Arc<Mutex<Registry>>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = MetricRegistry::with_prefix(PREFIX);
        let requests = Family::<Labels, Counter>::default();
        // The successes show at zero before the first request.
        for kind in [RequestKind::GetMap, RequestKind::Steer] {
            drop(requests.get_or_create(&request_labels(kind, "ok")));
        }
        let (sweeps, pods_swept) = (Counter::default(), Counter::default());
        registry.register(
            "sidecar_requests",
            "Requests on the agent socket, by request and result (ok or the protocol's error code)",
            requests.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        registry.register(
            "refused_connections",
            "Connections to the agent socket dropped before a request was served, by reason",
            refused.clone(),
        );
        let stray_fds = Counter::default();
        registry.register(
            "stray_descriptors",
            "File descriptors callers attached where the request takes none (closed unread)",
            stray_fds.clone(),
        );
        registry.register(
            "sweeps",
            "Sweeps for pods whose cgroup is gone",
            sweeps.clone(),
        );
        registry.register(
            "pods_swept",
            "Pods removed because their cgroup was gone",
            pods_swept.clone(),
        );
        Self {
            requests,
            refused,
            stray_fds,
            sweeps,
            pods_swept,
            registry,
            pods: OnceLock::new(),
        }
    }
}

impl AgentMetrics {
    /// Reads the pods of `registry` at every scrape from now on.
    pub(crate) fn observe(&self, registry: Arc<Mutex<Registry>>) {
        if self.pods.set(registry).is_err() {
            tracing::warn!("the metrics already observe a pod registry");
        }
    }

    /// Counts a request on the agent socket and its answer.
    pub(crate) fn request(&self, kind: RequestKind, result: Result<(), ErrorCode>) {
        let result = result.map_or_else(|code| code.to_string(), |()| "ok".to_owned());
        self.requests
            .get_or_create(&request_labels(kind, &result))
            .inc();
    }

    /// Counts a connection dropped before its request was served.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&vec![("reason", why.label().to_owned())])
            .inc();
    }

    /// Counts descriptors a caller attached where its request takes none.
    pub(crate) fn stray_fds(&self, n: usize) {
        self.stray_fds.inc_by(n as u64);
    }

    /// Counts a sweep that removed `pods` pods.
    pub(crate) fn swept(&self, pods: usize) {
        self.sweeps.inc();
        self.pods_swept.inc_by(pods as u64);
    }

    /// Reads the kernel's side (blocking: call it off the async runtime) and returns the
    /// OpenMetrics text of every metric.
    pub(crate) fn scrape(&self, ready: bool) -> String {
        let mut observed = Observed {
            ready,
            ..Observed::default()
        };
        if let Some(registry) = self.pods.get() {
            // Copy under the lock, read the maps after releasing it.
            let view = registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .view();
            observed = Observed {
                ready,
                ..pods::observe(&view)
            };
        }
        self.encode(&observed)
    }

    /// The OpenMetrics text of the counters and of `observed`.
    pub(crate) fn encode(&self, observed: &Observed) -> String {
        let mut scraped = MetricRegistry::with_prefix(PREFIX);
        let ready = Gauge::<i64>::default();
        ready.set(observed.ready.into());
        scraped.register(
            "ready",
            "1 once the programs are loaded and the socket listens, else 0 (as /readyz)",
            ready,
        );
        let programs = Family::<Labels, Gauge>::default();
        for &(name, count) in &observed.programs {
            programs
                .get_or_create(&vec![("program", name.to_owned())])
                .set(gauge_value(count));
        }
        scraped.register(
            "programs_loaded",
            "eBPF programs loaded, by program: each cgroup hook once, sk_lookup once per steering pod",
            programs,
        );
        let pods_served = Gauge::<i64>::default();
        pods_served.set(gauge_value(observed.pods_served));
        scraped.register("pods_served", "Pods served a restore map", pods_served);
        let (entries, capacity) = (
            Family::<Labels, Gauge>::default(),
            Family::<Labels, Gauge>::default(),
        );
        for map in &observed.maps {
            let labels = vec![("pod", map.pod.clone())];
            entries.get_or_create(&labels).set(gauge_value(map.entries));
            capacity
                .get_or_create(&labels)
                .set(gauge_value(map.capacity));
        }
        scraped.register(
            "pod_map_entries",
            "Entries in a pod's restore map (restored connections not yet removed by the sidecar)",
            entries,
        );
        scraped.register(
            "pod_map_capacity",
            "Capacity of a pod's restore map (--map-max-entries when it was created)",
            capacity,
        );
        let steered = Family::<Labels, Counter>::default();
        let s = observed.steering;
        for (outcome, n) in [
            ("steered", s.steered),
            ("fell_through", s.fell_through),
            ("refused", s.refused),
        ] {
            steered
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(n);
        }
        scraped.register(
            "steered_connections",
            "Connections to steered ports from outside the pod: handed to the sidecar (steered), or, its listener gone, let through to the app (fell_through) or refused (refused). Counted per socket lookup: a retransmitted SYN, or a segment arriving after its connection's socket closed, counts again",
            steered,
        );

        let mut out = String::new();
        text::encode_registry(&mut out, &scraped)
            .and_then(|()| text::encode_registry(&mut out, &self.registry))
            .and_then(|()| text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }
}

fn request_labels(kind: RequestKind, result: &str) -> Labels {
    vec![
        ("request", kind.label().to_owned()),
        ("result", result.to_owned()),
    ]
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pods::PodMapUse, steer::SteerStats};

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("valid exposition text")
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
        match found.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    #[test]
    fn encodes_counters_and_what_was_observed() {
        let metrics = AgentMetrics::default();
        metrics.request(RequestKind::GetMap, Ok(()));
        metrics.request(RequestKind::GetMap, Ok(()));
        metrics.request(RequestKind::GetMap, Err(ErrorCode::Conflict));
        metrics.request(RequestKind::Invalid, Err(ErrorCode::Version));
        metrics.swept(0);
        metrics.swept(3);
        let observed = Observed {
            ready: true,
            programs: vec![("getpeername4", 1), ("getpeername6", 1), ("sk_lookup", 2)],
            pods_served: 2,
            maps: vec![
                PodMapUse {
                    pod: "/kubepods/pod-a".into(),
                    entries: 2,
                    capacity: 16384,
                },
                PodMapUse {
                    pod: "/kubepods/pod-b".into(),
                    entries: 0,
                    capacity: 8,
                },
            ],
            steering: SteerStats {
                steered: 10,
                fell_through: 2,
                refused: 1,
            },
        };
        let text = metrics.encode(&observed);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(
            text.contains("# TYPE trueip_agent_sidecar_requests counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE trueip_agent_pod_map_entries gauge"),
            "{text}"
        );
        let scrape = parse(&text);
        let v = |name, labels: &[(&str, &str)]| value(&scrape, name, labels);
        assert_eq!(v("trueip_agent_ready", &[]), 1.0);
        assert_eq!(
            v(
                "trueip_agent_programs_loaded",
                &[("program", "getpeername4")]
            ),
            1.0
        );
        assert_eq!(
            v("trueip_agent_programs_loaded", &[("program", "sk_lookup")]),
            2.0
        );
        assert_eq!(v("trueip_agent_pods_served", &[]), 2.0);
        assert_eq!(
            v(
                "trueip_agent_pod_map_entries",
                &[("pod", "/kubepods/pod-a")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "trueip_agent_pod_map_capacity",
                &[("pod", "/kubepods/pod-b")]
            ),
            8.0
        );
        let requests = "trueip_agent_sidecar_requests_total";
        assert_eq!(
            v(requests, &[("request", "get-map"), ("result", "ok")]),
            2.0
        );
        assert_eq!(
            v(requests, &[("request", "get-map"), ("result", "conflict")]),
            1.0
        );
        assert_eq!(
            v(requests, &[("request", "invalid"), ("result", "version")]),
            1.0
        );
        assert_eq!(v(requests, &[("request", "steer"), ("result", "ok")]), 0.0);
        let steered = "trueip_agent_steered_connections_total";
        assert_eq!(v(steered, &[("outcome", "steered")]), 10.0);
        assert_eq!(v(steered, &[("outcome", "fell_through")]), 2.0);
        assert_eq!(v(steered, &[("outcome", "refused")]), 1.0);
        assert_eq!(v("trueip_agent_sweeps_total", &[]), 2.0);
        assert_eq!(v("trueip_agent_pods_swept_total", &[]), 3.0);
    }

    #[test]
    fn scrape_before_the_pods_are_known() {
        let metrics = AgentMetrics::default();
        let scrape = parse(&metrics.scrape(false));
        assert_eq!(value(&scrape, "trueip_agent_ready", &[]), 0.0);
        assert_eq!(value(&scrape, "trueip_agent_pods_served", &[]), 0.0);
        assert!(
            !scrape
                .samples
                .iter()
                .any(|s| s.metric == "trueip_agent_pod_map_entries"),
            "no pods, no map series"
        );
    }
}
