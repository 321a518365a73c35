//! Network namespaces — CLIENT, LB and POD (and optionally POD2) — wired like load-balanced
//! Kubernetes pods:
//!
//! ```text
//!  CLIENT                      LB (forwarding on)                      POD
//!  eth0 203.0.113.7/24  ─── to-client 203.0.113.1/24
//!       2001:db8:c::7/64           2001:db8:c::1/64
//!                              to-pod 192.0.2.1/24        ─── eth0 192.0.2.10/24
//!                                     2001:db8:b::1/64             2001:db8:b::10/64
//!                                                                  POD2
//!                              to-pod2 198.51.100.1/24    ─── eth0 198.51.100.10/24
//!                                      2001:db8:d::1/64            2001:db8:d::10/64
//! ```
//!
//! Clients and pods route everything through the LB. The namespaces are the kit's
//! ([`Netns`]): `tip-<pid>-<n>-<role>`, removed when dropped.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result};
use tempfile::TempDir;
use trueip_test_kit::netns::Netns;
use trueip_test_kit::{
    names::{PREFIX, unique_suffix},
    netns::remove_stale,
    run,
};

/// Set (to anything) to keep every topology's scratch directory, logs included.
pub const KEEP_LOGS_ENV: &str = "TRUEIP_KEEP_LOGS";

/// An address family; the topology has a full path for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Self; 2] = [Self::V4, Self::V6];

    /// The client's address.
    pub fn client(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7)),
        }
    }

    /// The load balancer's address on the client side: what clients connect to.
    pub fn lb_front(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1)),
        }
    }

    /// The load balancer's address on the pod side: the source pods see (SNAT).
    pub fn lb_back(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1)),
        }
    }

    /// The pod's address.
    pub fn pod(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x10)),
        }
    }

    /// The load balancer's address on the second pod's side ([`Topology::with_two_pods`]).
    pub fn lb_back2(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 1)),
        }
    }

    /// The second pod's address ([`Topology::with_two_pods`]).
    pub fn pod2(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0x10)),
        }
    }

    /// The loopback address, where apps listen behind the sidecar.
    pub fn loopback(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Self::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }

    /// `ip`'s flag for this family.
    fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// The prefix length of both subnets.
    fn prefix_len(self) -> u8 {
        match self {
            Self::V4 => 24,
            Self::V6 => 64,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The namespaces, wired and routed, plus a scratch directory for configs and logs.
///
/// Dropping it kills every process left in the namespaces and deletes them. When the drop
/// happens during a panic, or with `$TRUEIP_KEEP_LOGS` set, the scratch directory is kept and
/// its path printed, so the peers' logs can be read.
#[derive(Debug)]
pub struct Topology {
    /// The client.
    pub client: Netns,
    /// The load balancer.
    pub lb: Netns,
    /// The pod (sidecar and app).
    pub pod: Netns,
    pod2: Option<Netns>,
    dir: Option<TempDir>,
}

impl Topology {
    /// Builds client, LB and one pod; see the module documentation for the addresses.
    pub fn new() -> Result<Self> {
        Self::build(false)
    }

    /// Builds client, LB and two pods, each on its own subnet behind the LB.
    pub fn with_two_pods() -> Result<Self> {
        Self::build(true)
    }

    fn build(two_pods: bool) -> Result<Self> {
        remove_stale();
        let base = format!("{PREFIX}{}", unique_suffix());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{base}-"))
            .tempdir()
            .context("creating the scratch directory")?;
        let topo = Self {
            client: Netns::create(format!("{base}-client"))?,
            lb: Netns::create(format!("{base}-lb"))?,
            pod: Netns::create(format!("{base}-pod"))?,
            pod2: two_pods
                .then(|| Netns::create(format!("{base}-pod2")))
                .transpose()?,
            dir: Some(dir),
        };
        topo.wire()
            .with_context(|| format!("wiring the namespaces {base}-*"))?;
        Ok(topo)
    }

    /// The second pod, if built [`with_two_pods`](Self::with_two_pods).
    pub fn pod2(&self) -> Result<&Netns> {
        self.pod2
            .as_ref()
            .context("this topology has one pod; build it with Topology::with_two_pods")
    }

    /// The scratch directory: generated configs, logs of the processes started for this topology.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the scratch directory lives until drop")
            .path()
    }

    fn wire(&self) -> Result<()> {
        link(&self.client, "eth0", &self.lb, "to-client")?;
        for family in Family::BOTH {
            self.client.ip(&addr_add(family, family.client(), "eth0"))?;
            self.lb
                .ip(&addr_add(family, family.lb_front(), "to-client"))?;
            default_route(&self.client, family, family.lb_front())?;
        }
        self.wire_pod(&self.pod, "to-pod", Family::pod, Family::lb_back)?;
        if let Some(pod2) = &self.pod2 {
            self.wire_pod(pod2, "to-pod2", Family::pod2, Family::lb_back2)?;
        }
        self.lb.sysctl("ipv4/ip_forward", "1")?;
        self.lb.sysctl("ipv6/conf/all/forwarding", "1")
    }

    /// A link from the LB to `pod`, with addresses and the pod's default routes.
    fn wire_pod(
        &self,
        pod: &Netns,
        lb_dev: &str,
        pod_addr: fn(Family) -> IpAddr,
        lb_addr: fn(Family) -> IpAddr,
    ) -> Result<()> {
        link(&self.lb, lb_dev, pod, "eth0")?;
        for family in Family::BOTH {
            self.lb.ip(&addr_add(family, lb_addr(family), lb_dev))?;
            pod.ip(&addr_add(family, pod_addr(family), "eth0"))?;
            default_route(pod, family, lb_addr(family))?;
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os(KEEP_LOGS_ENV).is_some())
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            run::note(&format!("logs kept in {}", kept.display()));
        }
    }
}

/// `ip addr add ADDR/LEN dev DEV [nodad]`: IPv6 addresses skip duplicate address detection, so
/// they are usable at once (`ip` rejects `nodad` for IPv4).
fn addr_add(family: Family, ip: IpAddr, dev: &str) -> Vec<String> {
    let mut args: Vec<String> = ["addr", "add"].map(String::from).to_vec();
    args.extend([
        format!("{ip}/{}", family.prefix_len()),
        "dev".into(),
        dev.into(),
    ]);
    if family == Family::V6 {
        args.push("nodad".into());
    }
    args
}

/// `ip -4|-6 route add default via GW` in `ns`.
fn default_route(ns: &Netns, family: Family, gw: IpAddr) -> Result<()> {
    ns.ip(&[
        family.ip_flag(),
        "route",
        "add",
        "default",
        "via",
        &gw.to_string(),
    ])
}

/// A veth pair with one end in each namespace, both up.
fn link(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])
}
