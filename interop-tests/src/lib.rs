//! End-to-end tests of trueip against real peers (HAProxy, nginx, curl) in network namespaces.
//!
//! A [`Topology`] builds three network namespaces — a client, a load balancer and a pod — wired
//! with veth pairs for IPv4 and IPv6, and tears them down when dropped, also on panic. The peer
//! modules start the Debian packages the tests talk to ([`haproxy`], [`nginx`], [`curl`]),
//! [`sidecar`] and [`agent`] start the trueip binaries under test, and [`app`] drives the tests'
//! own unmodified app, `trueip-echo-app`. [`cluster`] (helm, controllers, the apiserver's webhook
//! call) and [`kubelet`] (pods run from the [`oci`] images, in kubelet-shaped cgroups) stand in
//! for a Kubernetes node. Namespaces, cgroups, processes, skips and the harness come from the
//! shared test kit, `trueip-test-kit`, on which all of this is built.
//!
//! Unlike the usual `#![cfg(test)]` interop crate, this is a normal library: `trueip-demo`
//! (`make demo`) builds the same scenario. Everything here needs root and `ip`; the tests check
//! that first (the kit's `prereq::require`) and are reported as skipped (ignored), never as
//! passed.
//!
//! Every process's output goes to `<name>.log` in the topology's scratch directory, which is
//! deleted afterwards unless the test panicked or `TRUEIP_KEEP_LOGS` is set
//! ([`topology::KEEP_LOGS_ENV`]); errors quote the relevant log tails either way.

pub mod agent;
pub mod app;
pub mod cluster;
pub mod curl;
pub mod haproxy;
pub mod kubelet;
pub mod nginx;
pub mod oci;
pub mod record;
pub mod sidecar;
pub mod soak;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod topology;
pub mod udp;

pub use topology::{Family, Topology};
