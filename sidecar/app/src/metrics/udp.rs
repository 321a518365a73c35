//! The counters of UDP listeners, in the sidecar's one Prometheus registry: datagrams and bytes
//! by direction, drops by reason, flows opened (by what the app learns), open, and closed (by
//! cause).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::outcome::RestoreOutcome;

type Labels = Vec<(&'static str, String)>;

/// Why a flow was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowClosed {
    /// No datagram either way for `flow_idle_timeout`.
    Expired,
    /// The table was full (`max_flows`) and a new flow needed its place.
    Evicted,
    /// The sidecar is shutting down.
    Shutdown,
}

impl FlowClosed {
    const ALL: [Self; 3] = [Self::Expired, Self::Evicted, Self::Shutdown];

    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The UDP metric families, registered once for every UDP listener.
#[derive(Debug, Default)]
pub(crate) struct UdpFamilies {
    datagrams: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    flows_opened: Family<Labels, Counter>,
    flows_active: Family<Labels, Gauge>,
    flows_closed: Family<Labels, Counter>,
}

impl UdpFamilies {
    /// Registers the families in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "udp_datagrams",
            "UDP datagrams relayed, by direction (to_app, to_client)",
            self.datagrams.clone(),
        );
        registry.register_with_unit(
            "udp_payload",
            "UDP payload bytes relayed (headers excluded), by direction",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register(
            "udp_datagrams_dropped",
            "UDP datagrams dropped before reaching the app (or the client), by reason",
            self.dropped.clone(),
        );
        registry.register(
            "udp_flows_opened",
            "UDP client flows opened, by what the app learns of the client",
            self.flows_opened.clone(),
        );
        registry.register(
            "udp_flows_active",
            "UDP client flows open now",
            self.flows_active.clone(),
        );
        registry.register(
            "udp_flows_closed",
            "UDP client flows closed, by cause (expired, evicted, shutdown)",
            self.flows_closed.clone(),
        );
    }

    /// The handles of one listener, with its fixed series created at zero.
    pub(crate) fn listener(&self, name: &str) -> UdpMetrics {
        let labels = |extra: &[(&'static str, &str)]| -> Labels {
            std::iter::once(("listener", name.to_owned()))
                .chain(extra.iter().map(|&(k, v)| (k, v.to_owned())))
                .collect()
        };
        let by = |family: &Family<Labels, Counter>, key, value| {
            family.get_or_create(&labels(&[(key, value)])).clone()
        };
        UdpMetrics {
            name: name.to_owned(),
            to_app: by(&self.datagrams, "direction", "to_app"),
            to_client: by(&self.datagrams, "direction", "to_client"),
            bytes_to_app: by(&self.bytes, "direction", "to_app"),
            bytes_to_client: by(&self.bytes, "direction", "to_client"),
            opened: RestoreOutcome::ALL.map(|o| by(&self.flows_opened, "outcome", o.label())),
            active: self.flows_active.get_or_create(&labels(&[])).clone(),
            closed: FlowClosed::ALL.map(|c| by(&self.flows_closed, "cause", c.label())),
            dropped: self.dropped.clone(),
            reasons: Mutex::default(),
        }
    }
}

/// The counters of one UDP listener.
#[derive(Debug)]
pub struct UdpMetrics {
    name: String,
    to_app: Counter,
    to_client: Counter,
    bytes_to_app: Counter,
    bytes_to_client: Counter,
    opened: [Counter; RestoreOutcome::ALL.len()],
    active: Gauge,
    closed: [Counter; 3],
    dropped: Family<Labels, Counter>,
    reasons: Mutex<BTreeSet<&'static str>>,
}

/// A copy of a UDP listener's counters, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpSnapshot {
    /// Datagrams relayed to the app.
    pub to_app: u64,
    /// Datagrams relayed back to the load balancer.
    pub to_client: u64,
    /// Payload bytes relayed to the app.
    pub bytes_to_app: u64,
    /// Payload bytes relayed back.
    pub bytes_to_client: u64,
    /// Flows opened, by restore outcome label.
    pub opened: BTreeMap<&'static str, u64>,
    /// Flows open now.
    pub active: u64,
    /// Flows closed, by cause label.
    pub closed: BTreeMap<&'static str, u64>,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl UdpSnapshot {
    /// Drops for one reason.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.get(reason).copied().unwrap_or(0)
    }

    /// Flows closed for one cause.
    pub fn closed(&self, cause: FlowClosed) -> u64 {
        self.closed.get(cause.label()).copied().unwrap_or(0)
    }

    /// Flows opened, whatever the outcome.
    pub fn opened_total(&self) -> u64 {
        self.opened.values().sum()
    }
}

impl UdpMetrics {
    pub(crate) fn to_app(&self, payload: usize) {
        self.to_app.inc();
        self.bytes_to_app.inc_by(payload as u64);
    }

    pub(crate) fn to_client(&self, payload: usize) {
        self.to_client.inc();
        self.bytes_to_client.inc_by(payload as u64);
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        self.reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reason);
        self.dropped
            .get_or_create(&vec![
                ("listener", self.name.clone()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn opened(&self, outcome: RestoreOutcome) {
        self.opened[outcome as usize].inc();
    }

    pub(crate) fn closed(&self, cause: FlowClosed, n: usize) {
        self.closed[cause as usize].inc_by(n as u64);
    }

    pub(crate) fn set_active(&self, n: usize) {
        self.active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> UdpSnapshot {
        let reasons = self
            .reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        UdpSnapshot {
            to_app: self.to_app.get(),
            to_client: self.to_client.get(),
            bytes_to_app: self.bytes_to_app.get(),
            bytes_to_client: self.bytes_to_client.get(),
            opened: RestoreOutcome::ALL
                .into_iter()
                .map(|o| (o.label(), self.opened[o as usize].get()))
                .collect(),
            active: u64::try_from(self.active.get()).unwrap_or(0),
            closed: FlowClosed::ALL
                .into_iter()
                .map(|c| (c.label(), self.closed[c as usize].get()))
                .collect(),
            dropped: reasons
                .into_iter()
                .map(|reason| {
                    let labels = vec![
                        ("listener", self.name.clone()),
                        ("reason", reason.to_owned()),
                    ];
                    (reason, self.dropped.get_or_create(&labels).get())
                })
                .collect(),
        }
    }
}
