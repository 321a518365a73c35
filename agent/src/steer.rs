//! Steering: an instance of the sk_lookup program per pod, attached to that pod's network
//! namespace through a pinned link, with maps of its own (the sidecar's listening sockets by app
//! port, the steered ports, counters) pinned in the pod's directory under `steer-<netns>/`.
//!
//! A pod's steering lives and dies with the pod's pins: removing the directory detaches the
//! program (its link pin is the last reference). A sidecar's listener leaves the socket map by
//! itself when it is closed; connections then fall through to the app or are refused, by the
//! port's policy.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, SockHash},
    pin::PinError,
    programs::{ProgramError, SkLookup, links::FdLink},
};
use nix::sys::socket::{SockType, SockaddrStorage, getsockname, getsockopt, sockopt};
use trueip_redirect_common::{
    AF_INET, AF_INET6, STEER_ANY_FAMILY, STEER_FAIL_CLOSED, STEER_PORTS_MAP, STEER_PROGRAM,
    STEER_SOCKETS_MAP, STEER_STAT_FELL_THROUGH, STEER_STAT_REFUSED, STEER_STAT_STEERED,
    STEER_STATS_MAP, SteerPort, steer_socket_key,
};

use crate::{config::WhenGone, identify::socket_netns_cookie};

/// The sk_lookup object, built by build.rs from `redirect/ebpf/src/sk_lookup.rs`.
static SK_LOOKUP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sk_lookup"));

/// File name of the link pin in a pod's steering directory.
const LINK_PIN: &str = "link";

/// Why a port could not be steered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SteerError {
    /// The descriptor the sidecar sent is not a listening TCP socket of its own namespace.
    #[error("the descriptor sent is not usable for steering: {0}")]
    Listener(&'static str),
    /// Reading the descriptor's properties failed.
    #[error("inspecting the descriptor sent")]
    Inspect(#[source] io::Error),
    /// A file operation on the bpffs failed.
    #[error("{op} {path}")]
    Fs {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The embedded object lacks a program or map (a build mismatch).
    #[error("the embedded sk_lookup object has no {0}")]
    Missing(&'static str),
    /// Loading the sk_lookup object (creating or re-finding the pod's maps) failed.
    #[error("loading the sk_lookup object")]
    Object(#[source] EbpfError),
    /// Loading or attaching the program failed.
    #[error("{op} the sk_lookup program")]
    Program {
        /// What was attempted.
        op: &'static str,
        /// Why (with the verifier log).
        #[source]
        source: ProgramError,
    },
    /// Pinning the link failed.
    #[error("pinning the sk_lookup link at {path}")]
    Pin {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: PinError,
    },
    /// A map operation failed.
    #[error("{op}")]
    Map {
        /// What was attempted.
        op: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
}

/// One pod's steering counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SteerStats {
    /// Connections handed to the sidecar.
    pub(crate) steered: u64,
    /// Connections that reached the app because the sidecar's listener was gone (fail-open).
    pub(crate) fell_through: u64,
    /// Connections refused because the sidecar's listener was gone (fail-closed).
    pub(crate) refused: u64,
}

impl SteerStats {
    /// Adds `other`'s counters to these.
    pub(crate) fn add(&mut self, other: Self) {
        self.steered = self.steered.saturating_add(other.steered);
        self.fell_through = self.fell_through.saturating_add(other.fell_through);
        self.refused = self.refused.saturating_add(other.refused);
    }
}

/// The steering directory of the pod whose pin directory is `pod_dir`, for namespace `netns`.
pub(crate) fn dir(pod_dir: &Path, netns: u64) -> PathBuf {
    pod_dir.join(format!("steer-{netns}"))
}

/// Checks that `listener` is a listening TCP socket in network namespace `netns` (the caller's):
/// a sidecar can only ever steer its own pod's connections to a socket of its own pod. Returns
/// the family of the connections it can take (`AF_INET`, `AF_INET6` when IPv6-only, or
/// [`STEER_ANY_FAMILY`] when dual-stack), for its [`steer_socket_key`].
pub(crate) fn check_listener(listener: BorrowedFd<'_>, netns: u64) -> Result<u32, SteerError> {
    let inspect = |e: nix::Error| SteerError::Inspect(e.into());
    if getsockopt(&listener, sockopt::SockType).map_err(inspect)? != SockType::Stream {
        return Err(SteerError::Listener("not a stream socket"));
    }
    let local: SockaddrStorage = getsockname(listener.as_raw_fd()).map_err(inspect)?;
    let family = if local.as_sockaddr_in().is_some() {
        AF_INET.into()
    } else if local.as_sockaddr_in6().is_some() {
        if getsockopt(&listener, sockopt::Ipv6V6Only).map_err(inspect)? {
            AF_INET6.into()
        } else {
            STEER_ANY_FAMILY
        }
    } else {
        return Err(SteerError::Listener("not an IPv4 or IPv6 socket"));
    };
    if !getsockopt(&listener, sockopt::AcceptConn).map_err(inspect)? {
        return Err(SteerError::Listener("not listening (call listen() first)"));
    }
    if socket_netns_cookie(listener).map_err(SteerError::Inspect)? != netns {
        return Err(SteerError::Listener(
            "the socket lives in another network namespace than the caller",
        ));
    }
    Ok(family)
}

/// Steers connections to `port` of `family` (from [`check_listener`]) in the pod's namespace
/// (`netns_file`, cookie `netns`) to `listener`: attaches the pod's sk_lookup program if it is not attached yet, then records the
/// socket and the port's policy. Returns whether the program was attached now.
pub(crate) fn steer(
    pod_dir: &Path,
    netns: u64,
    netns_file: &fs::File,
    port: u16,
    family: u32,
    listener: BorrowedFd<'_>,
    when_gone: WhenGone,
) -> Result<bool, SteerError> {
    let dir = dir(pod_dir, netns);
    fs::create_dir_all(&dir).map_err(|source| SteerError::Fs {
        op: "creating",
        path: dir.clone(),
        source,
    })?;
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(STEER_SOCKETS_MAP, dir.join("sockets"))
        .map_pin_path(STEER_PORTS_MAP, dir.join("ports"))
        .map_pin_path(STEER_STATS_MAP, dir.join("stats"))
        .load(SK_LOOKUP_OBJ)
        .map_err(SteerError::Object)?;
    let link_pin = dir.join(LINK_PIN);
    let attached = !link_pin.exists();
    if attached {
        attach(&mut ebpf, netns_file, &link_pin)?;
    }
    let map_err = |op| move |source| SteerError::Map { op, source };
    let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
        ebpf.take_map(name).ok_or(SteerError::Missing(name))
    };
    // The socket first: a port without its socket would count a fall-through.
    let mut sockets: SockHash<MapData, u32> = take(&mut ebpf, STEER_SOCKETS_MAP)?
        .try_into()
        .map_err(map_err("opening the steering socket map"))?;
    sockets
        .insert(steer_socket_key(port.into(), family), listener, 0)
        .map_err(map_err(
            "inserting the sidecar's listener in the steering socket map",
        ))?;
    let mut ports: HashMap<MapData, u32, SteerPort> = take(&mut ebpf, STEER_PORTS_MAP)?
        .try_into()
        .map_err(map_err("opening the steered-ports map"))?;
    let flags = match when_gone {
        WhenGone::Open => 0,
        WhenGone::Closed => STEER_FAIL_CLOSED,
    };
    ports
        .insert(u32::from(port), SteerPort { flags }, 0)
        .map_err(map_err("recording the steered port"))?;
    Ok(attached)
}

/// Loads the program and attaches it to the namespace through a link pinned at `pin`.
fn attach(ebpf: &mut aya::Ebpf, netns_file: &fs::File, pin: &Path) -> Result<(), SteerError> {
    let prog_err = |op| move |source| SteerError::Program { op, source };
    let program: &mut SkLookup = ebpf
        .program_mut(STEER_PROGRAM)
        .ok_or(SteerError::Missing(STEER_PROGRAM))?
        .try_into()
        .map_err(prog_err("finding"))?;
    program.load().map_err(prog_err("loading"))?;
    let id = program
        .attach(netns_file.as_fd())
        .map_err(prog_err("attaching"))?;
    let link: FdLink = program
        .take_link(id)
        .map_err(prog_err("taking the link of"))?
        .into();
    // Dropping the returned PinnedLink closes our fd; the pin keeps the link attached.
    link.pin(pin).map_err(|source| SteerError::Pin {
        path: pin.to_owned(),
        source,
    })?;
    Ok(())
}

/// Whether the pod steering in `dir` (a [`dir`]) has its sk_lookup program attached.
pub(crate) fn attached(dir: &Path) -> bool {
    dir.join(LINK_PIN).exists()
}

/// The counters of the pod steering in `dir` (a [`dir`]), or `None` if it does not steer.
pub(crate) fn stats(dir: &Path) -> Option<SteerStats> {
    let pin = dir.join("stats");
    if !pin.exists() {
        return None;
    }
    let map = MapData::from_pin(&pin)
        .and_then(aya::maps::Map::from_map_data)
        .and_then(PerCpuArray::<MapData, u64>::try_from)
        .ok()?;
    let sum = |index| {
        map.get(&index, 0)
            .map(|values| values.iter().sum::<u64>())
            .unwrap_or(0)
    };
    Some(SteerStats {
        steered: sum(STEER_STAT_STEERED),
        fell_through: sum(STEER_STAT_FELL_THROUGH),
        refused: sum(STEER_STAT_REFUSED),
    })
}
