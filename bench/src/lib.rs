//! trueip's benchmark harness (`make bench`): trueip's sidecar side by side with HAProxy,
//! nginx stream, socat and a direct connection, in network namespaces, in one run.
//!
//! * [`wire`], [`app`]: the app behind every variant (`trueip-bench-app`) and its protocol;
//! * [`loadgen`]: the load generator (`trueip-loadgen`) that speaks PROXY v2 like a load balancer;
//! * [`procfs`]: CPU time and memory of a middle hop, from `/proc`;
//! * [`stats`]: medians and spread;
//! * [`otlp_sink`]: the collector stand-in the "traces on" variant exports to;
//! * [`runner`]: the namespaces, the variants, the interleaved repetitions, `RESULTS.md` and the plot.

pub mod app;
mod fds;
pub mod loadgen;
pub mod otlp_sink;
pub mod procfs;
pub mod runner;
pub mod stats;
pub mod udp;
pub mod wire;

pub use fds::{fd_limit, raise_fd_limit, raise_fd_limit_hard, runtime};
