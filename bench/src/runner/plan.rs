//! What one run measures and how long: the workloads, their sizes, the variants and the CPU
//! pinning, with the full and quick presets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::variant::Variant;

/// What one run measures and how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Measured repetitions per variant (after the warm-up pass).
    pub reps: usize,
    /// Duration of each bulk, request/response and short-connection workload.
    pub secs: f64,
    /// Duration of the warm-up pass per variant.
    pub warmup_secs: f64,
    /// Parallel streams of the "many streams" bulk workloads.
    pub streams: usize,
    /// Keep-alive connections of the request/response workload.
    pub rr_conns: usize,
    /// Request (= response) size, bytes.
    pub msg_size: usize,
    /// Concurrent loops of the short-connection workload.
    pub conn_concurrency: usize,
    /// Idle connection counts for the memory workload.
    pub idle: Vec<usize>,
    /// `taskset -c` CPU lists: load generator, app, hop (`None`: not pinned).
    pub pin: Pins,
    /// Variants to run.
    pub variants: Vec<Variant>,
    /// Whether this is the quick mode.
    pub quick: bool,
    /// `trueip-sidecar` to run (default: found like the interop tests find it).
    pub sidecar: Option<PathBuf>,
    /// The chart-defaults row's `trueip-sidecar` (default: the image's musl build, if built).
    pub image_sidecar: Option<PathBuf>,
    /// Extra arguments for every `trueip-sidecar` (experiments such as `--pipe-size`).
    pub sidecar_args: Vec<String>,
    /// Extra `KEY=VALUE` environment for every `trueip-sidecar` (e.g. `TOKIO_WORKER_THREADS=1`).
    pub sidecar_env: Vec<String>,
    /// Deviations from the plan the machine forced, for the method section.
    pub caveats: Vec<String>,
    /// Workload groups to run: `idle`, `bulk`, `rr`, `conn`, `http`, `udp` (all by default; fewer for
    /// profiling one of them).
    pub workloads: Vec<String>,
    /// Where the load generator runs: across a router, or on the pod's own loopback.
    #[serde(default)]
    pub layout: Layout,
}

/// Where the load generator runs, which decides what a hop's cost is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// In a client namespace, through a router namespace and veth pairs to the pod: as a load
    /// balancer's traffic reaches a node.
    #[default]
    Routed,
    /// In the pod's namespace itself, to the pod's address: every byte stays on loopback, so
    /// no veth or router cost dilutes the hop's own (the second topology).
    Loopback,
}

impl Layout {
    /// The name on the command line and in the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Loopback => "loopback",
        }
    }
}

impl Plan {
    pub(crate) fn runs(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }
}

/// CPU pinning of the three parties (`taskset -c` lists).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pins {
    /// The load generator.
    pub client: Option<String>,
    /// The app.
    pub app: Option<String>,
    /// The middle hop.
    pub hop: Option<String>,
}

impl Plan {
    /// The full plan: 5 repetitions of 3-second workloads, 1 000 and 10 000 idle connections.
    #[must_use]
    pub fn full() -> Self {
        Self {
            reps: 5,
            secs: 3.0,
            warmup_secs: 1.0,
            streams: 8,
            rr_conns: 16,
            msg_size: 64,
            conn_concurrency: 16,
            idle: vec![1_000, 10_000],
            pin: Pins::default(),
            variants: Variant::ALL.to_vec(),
            quick: false,
            sidecar: None,
            image_sidecar: None,
            sidecar_args: Vec::new(),
            sidecar_env: Vec::new(),
            caveats: Vec::new(),
            workloads: ["idle", "bulk", "rr", "conn", "http", "udp"]
                .map(str::to_owned)
                .to_vec(),
            layout: Layout::Routed,
        }
    }

    /// The smoke-test plan: one repetition of short workloads, fewer idle connections.
    #[must_use]
    pub fn quick() -> Self {
        Self {
            reps: 1,
            secs: 0.5,
            warmup_secs: 0.2,
            idle: vec![100, 1_000],
            quick: true,
            ..Self::full()
        }
    }
}
