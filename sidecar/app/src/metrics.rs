//! In-process counters per listener: cheap atomics on the data path, read by the Prometheus
//! exporter and by tests.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// What happened to the client address of a served connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreOutcome {
    /// The app learns the client from the header (re-emitted header or eBPF entry).
    Restored,
    /// The header carried no client (LOCAL, UNSPEC) or there was none: real addresses used.
    NoClient,
    /// The header came from an untrusted source and was passed through unhonoured.
    Passthrough,
    /// The pod's map was full; the connection was delivered without restoration.
    MapFull,
    /// Writing the eBPF entry failed; the connection was delivered without restoration.
    Failed,
}

impl RestoreOutcome {
    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::NoClient => "no_client",
            Self::Passthrough => "passthrough",
            Self::MapFull => "map_full",
            Self::Failed => "failed",
        }
    }
}

/// The counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    accepted: AtomicU64,
    closed: AtomicU64,
    bytes_to_app: AtomicU64,
    bytes_to_client: AtomicU64,
    upstream_errors: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    restore: Mutex<BTreeMap<&'static str, u64>>,
}

/// A consistent-enough copy of a listener's counters.
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
    pub rejected: BTreeMap<&'static str, u64>,
    /// Served connections by restore outcome.
    pub restore: BTreeMap<&'static str, u64>,
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

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_default() += 1;
}

fn copy(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

impl ListenerMetrics {
    pub(crate) fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.closed.fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    pub(crate) fn restore(&self, outcome: RestoreOutcome) {
        bump(&self.restore, outcome.label());
    }

    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn to_app(&self, n: u64) {
        self.bytes_to_app.fetch_add(n, Relaxed);
    }

    pub(crate) fn to_client(&self, n: u64) {
        self.bytes_to_client.fetch_add(n, Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> Snapshot {
        let accepted = self.accepted.load(Relaxed);
        Snapshot {
            accepted,
            active: accepted.saturating_sub(self.closed.load(Relaxed)),
            bytes_to_app: self.bytes_to_app.load(Relaxed),
            bytes_to_client: self.bytes_to_client.load(Relaxed),
            upstream_errors: self.upstream_errors.load(Relaxed),
            rejected: copy(&self.rejected),
            restore: copy(&self.restore),
        }
    }
}
