//! What trueip's privileged and end-to-end tests stand on: network namespaces and veth pairs
//! ([`netns`]), scratch cgroups v2 ([`cgroup`]), processes placed in both ([`process`] for
//! peers and trueip binaries, [`child`] for the test binary itself in another role), bounded
//! commands and waits ([`run`]), names that never clash and are recognised as a dead run's
//! leftovers ([`names`]), what a test needs and how it says it cannot run ([`prereq`]), and the
//! `harness = false` main that reports such a test as skipped, never as passed ([`harness`]),
//! and Kubernetes objects as a chart renders them and the apiserver sends them ([`kube`]).
//!
//! Used by the interop tests and the demo (`trueip-interop-tests`), the benchmarks, the
//! agent's privileged tests and the injector's chart tests, so that each of them builds on one
//! kit. Namespaces, cgroups and placed processes need root and `ip` (iproute2); tests check
//! that first with [`prereq::require`]. `harness`, `kube`, `names` and `run` need neither.

pub mod cgroup;
pub mod child;
pub mod harness;
pub mod kube;
pub mod names;
pub mod netns;
pub mod prereq;
pub mod process;
pub mod run;

pub use cgroup::Cgroup;
pub use netns::{Netns, Veth};
pub use prereq::{Need, Skip};
pub use process::{Launch, Proc};
