//! trueip-sidecar between real peers — HAProxy, nginx, curl — in network namespaces.
//!
//! Every test builds its own [`Topology`](trueip_interop_tests::Topology) (client, LB, pod), so
//! they run in parallel, and asserts what a user would notice: the address nginx logged, the
//! bytes the app received. Without root or a peer they print `SKIPPED: <reason>` and return.

mod curl;
mod differential;
mod ebpf;
mod exhaustion;
mod haproxy;
mod nginx;
mod receivers;
mod senders;
mod soak;
mod steering;

use std::{net::SocketAddr, time::Duration};

use trueip_interop_tests::Family;

/// Where the sidecar listens in the pod (the port the load balancer targets).
const SIDECAR_PORT: u16 = 8080;

/// Where HAProxy listens for clients.
const LB_PORT: u16 = 80;

/// Upper bound for any single wait in these tests.
const TIMEOUT: Duration = Duration::from_secs(15);

/// `--trusted` for the load balancer's pod-side addresses, both families.
const TRUSTED_LB: [&str; 2] = ["192.0.2.1/32", "2001:db8:b::1/128"];

/// The sidecar's listen address for `family`.
fn sidecar_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.pod(), SIDECAR_PORT)
}

/// HAProxy's frontend for `family`.
fn lb_addr(family: Family) -> SocketAddr {
    SocketAddr::new(family.lb_front(), LB_PORT)
}
