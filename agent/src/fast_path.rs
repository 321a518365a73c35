//! The fast path: an instance of the `fast_path` object per pod (see
//! `redirect/ebpf/src/fast_path.rs`), its sockops program attached to the pod's cgroup
//! through a pinned link, its sk_msg program attached to the pod's socket map, and both maps
//! pinned in the pod's directory under `fastpath-<netns>/`. The sidecar gets the two maps' fds.
//!
//! Like steering, a pod's fast path lives and dies with the pod's pins: removing the directory
//! detaches the sockops program (its link pin is the last reference) and frees the maps once
//! the sidecar has closed its fds (the sk_msg program goes with the socket map).

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    EbpfError, EbpfLoader,
    maps::{Map, MapData, SockHash},
    pin::PinError,
    programs::{CgroupAttachMode, ProgramError, SkMsg, SockOps, links::FdLink, sk_msg::SkMsgLink},
};
use trueip_redirect_common::{
    FAST_PATH_MSG_PROGRAM, FAST_PATH_PEERS_MAP, FAST_PATH_SOCKETS_MAP, FAST_PATH_SOCKOPS_PROGRAM,
    FastPathKey,
};

/// The fast_path object, built by build.rs from `redirect/ebpf/src/fast_path.rs`.
static FAST_PATH_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fast_path"));

/// File name of the sockops link pin in a pod's fast-path directory.
const LINK_PIN: &str = "sockops-link";

/// Why a pod's fast path could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FastPathError {
    /// A file operation on the bpffs failed.
    #[error("{op} {path}")]
    Fs {
        /// What was attempted.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The embedded object lacks a program or map (a build mismatch).
    #[error("the embedded fast_path object has no {0}")]
    Missing(&'static str),
    /// Loading the object (creating or re-finding the pod's maps) failed.
    #[error("loading the fast_path object")]
    Object(#[source] EbpfError),
    /// Loading or attaching a program failed.
    #[error("{op} the {program} program")]
    Program {
        /// What was attempted.
        op: &'static str,
        /// Which program.
        program: &'static str,
        /// Why (with the verifier log).
        #[source]
        source: ProgramError,
    },
    /// Pinning the sockops link failed.
    #[error("pinning the sockops link at {path}")]
    Pin {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: PinError,
    },
    /// The socket map could not be opened.
    #[error("opening the fast-path socket map")]
    Map(#[source] aya::maps::MapError),
}

/// A pod's fast-path maps, as handed to its sidecar.
#[derive(Debug)]
pub(crate) struct FastPathMaps {
    /// SOCKHASH: [`FastPathKey`] → socket.
    pub(crate) sockets: MapData,
    /// HASH: connection → `FastPathPeer`.
    pub(crate) peers: MapData,
    /// Capacity of the peers map (connections).
    pub(crate) max_entries: u32,
}

/// The fast-path directory of the pod whose pin directory is `pod_dir`, for namespace `netns`.
pub(crate) fn dir(pod_dir: &Path, netns: u64) -> PathBuf {
    pod_dir.join(format!("fastpath-{netns}"))
}

/// Sets up the pod's fast path if it is not set up yet (maps pinned in `dir(pod_dir, netns)`,
/// sk_msg attached to the socket map, sockops attached to `cgroup`, in that order, so that no
/// socket is ever in the map without the sk_msg program) and returns its maps, and the sk_msg
/// attachment if it was made now (dropping it detaches the program: the caller keeps it for as
/// long as it serves the pod; an agent that exits leaves it attached, held by the map).
pub(crate) fn set_up(
    pod_dir: &Path,
    netns: u64,
    cgroup: &fs::File,
    max_conns: u32,
) -> Result<(FastPathMaps, Option<SkMsgLink>), FastPathError> {
    let dir = dir(pod_dir, netns);
    fs::create_dir_all(&dir).map_err(|source| FastPathError::Fs {
        op: "creating",
        path: dir.clone(),
        source,
    })?;
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(FAST_PATH_SOCKETS_MAP, dir.join("sockets"))
        .map_pin_path(FAST_PATH_PEERS_MAP, dir.join("peers"))
        .map_max_entries(FAST_PATH_SOCKETS_MAP, max_conns.saturating_mul(2))
        .map_max_entries(FAST_PATH_PEERS_MAP, max_conns)
        .load(FAST_PATH_OBJ)
        .map_err(FastPathError::Object)?;
    let sockets = ebpf
        .take_map(FAST_PATH_SOCKETS_MAP)
        .ok_or(FastPathError::Missing(FAST_PATH_SOCKETS_MAP))?;
    let peers = ebpf
        .take_map(FAST_PATH_PEERS_MAP)
        .ok_or(FastPathError::Missing(FAST_PATH_PEERS_MAP))?;
    let link_pin = dir.join(LINK_PIN);
    let msg_link = if link_pin.exists() {
        None
    } else {
        let socket_map: SockHash<&MapData, FastPathKey> =
            (&sockets).try_into().map_err(FastPathError::Map)?;
        Some(attach(&mut ebpf, &socket_map, cgroup, &link_pin)?)
    };
    let (Map::SockHash(sockets), Map::HashMap(peers)) = (sockets, peers) else {
        return Err(FastPathError::Missing("maps of the expected types"));
    };
    let max_entries = peers.info().map_err(FastPathError::Map)?.max_entries();
    Ok((
        FastPathMaps {
            sockets,
            peers,
            max_entries,
        },
        msg_link,
    ))
}

/// Loads both programs, attaches sk_msg to the socket map and sockops to the cgroup through a
/// link pinned at `pin`. Returns the sk_msg attachment.
fn attach(
    ebpf: &mut aya::Ebpf,
    sockets: &SockHash<&MapData, FastPathKey>,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<SkMsgLink, FastPathError> {
    let prog_err = |op, program| {
        move |source| FastPathError::Program {
            op,
            program,
            source,
        }
    };
    let msg: &mut SkMsg = ebpf
        .program_mut(FAST_PATH_MSG_PROGRAM)
        .ok_or(FastPathError::Missing(FAST_PATH_MSG_PROGRAM))?
        .try_into()
        .map_err(prog_err("finding", FAST_PATH_MSG_PROGRAM))?;
    msg.load()
        .map_err(prog_err("loading", FAST_PATH_MSG_PROGRAM))?;
    // Taken out of the program, so that dropping the object does not detach it.
    let id = msg
        .attach(sockets.fd())
        .map_err(prog_err("attaching", FAST_PATH_MSG_PROGRAM))?;
    let msg_link = msg
        .take_link(id)
        .map_err(prog_err("keeping", FAST_PATH_MSG_PROGRAM))?;
    let ops: &mut SockOps = ebpf
        .program_mut(FAST_PATH_SOCKOPS_PROGRAM)
        .ok_or(FastPathError::Missing(FAST_PATH_SOCKOPS_PROGRAM))?
        .try_into()
        .map_err(prog_err("finding", FAST_PATH_SOCKOPS_PROGRAM))?;
    ops.load()
        .map_err(prog_err("loading", FAST_PATH_SOCKOPS_PROGRAM))?;
    let id = ops
        .attach(cgroup.as_fd(), CgroupAttachMode::Single)
        .map_err(prog_err("attaching", FAST_PATH_SOCKOPS_PROGRAM))?;
    let link = FdLink::try_from(
        ops.take_link(id)
            .map_err(prog_err("taking the link of", FAST_PATH_SOCKOPS_PROGRAM))?,
    )
    .map_err(|e| FastPathError::Program {
        op: "linking",
        program: FAST_PATH_SOCKOPS_PROGRAM,
        source: ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::other(e.to_string()),
        }),
    })?;
    // Dropping the returned PinnedLink closes our fd; the pin keeps the link attached.
    link.pin(pin).map_err(|source| FastPathError::Pin {
        path: pin.to_owned(),
        source,
    })?;
    Ok(msg_link)
}
