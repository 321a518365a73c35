//! Loading the embedded eBPF programs, pinning them and the node-wide table of pods, and attaching
//! them to a cgroup through pinned links.

use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashOfMaps, MapData, MapError, MapType},
    pin::PinError,
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramType,
        links::{FdLink, LinkError, PinnedLink},
    },
    sys::{is_map_supported, is_program_supported},
};
use trueip_redirect_common::RESTORE_MAP;

/// The getpeername4/6 object, built by build.rs from `redirect/ebpf/src/getpeername.rs`.
static GETPEERNAME_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/getpeername"));
/// The getsockname4/6 object, from `redirect/ebpf/src/getsockname.rs`.
static GETSOCKNAME_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/getsockname"));

/// The recvmsg4/6 + sendmsg4/6 object (UDP flows), from `redirect/ebpf/src/udp.rs`.
static UDP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp"));

/// One of the cgroup hooks the agent attaches; its name is the program's and its pins'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Hook {
    /// getpeername (and accept) on AF_INET sockets.
    Getpeername4,
    /// getpeername (and accept) on AF_INET6 sockets.
    Getpeername6,
    /// getsockname on AF_INET sockets.
    Getsockname4,
    /// getsockname on AF_INET6 sockets.
    Getsockname6,
    /// recvfrom/recvmsg on AF_INET UDP sockets (`--udp`).
    Recvmsg4,
    /// recvfrom/recvmsg on AF_INET6 UDP sockets (`--udp`).
    Recvmsg6,
    /// sendto/sendmsg on AF_INET UDP sockets (`--udp`).
    Sendmsg4,
    /// sendto/sendmsg on AF_INET6 UDP sockets (`--udp`).
    Sendmsg6,
}

impl Hook {
    /// Every hook.
    pub(crate) const ALL: [Self; 8] = [
        Self::Getpeername4,
        Self::Getpeername6,
        Self::Getsockname4,
        Self::Getsockname6,
        Self::Recvmsg4,
        Self::Recvmsg6,
        Self::Sendmsg4,
        Self::Sendmsg6,
    ];

    /// The hooks of UDP flows.
    pub(crate) const UDP: [Self; 4] = [
        Self::Recvmsg4,
        Self::Recvmsg6,
        Self::Sendmsg4,
        Self::Sendmsg6,
    ];

    /// The program's name in its object, and the file name of its pins.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Getpeername4 => "getpeername4",
            Self::Getpeername6 => "getpeername6",
            Self::Getsockname4 => "getsockname4",
            Self::Getsockname6 => "getsockname6",
            Self::Recvmsg4 => "recvmsg4",
            Self::Recvmsg6 => "recvmsg6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
        }
    }
}

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProgramsError {
    /// The kernel lacks a map or program type trueip needs.
    #[error(
        "this kernel does not support {what} (trueip's eBPF mode needs Linux >= 5.8 with BPF and cgroup v2)"
    )]
    Unsupported {
        /// The missing feature.
        what: &'static str,
    },
    /// Probing the kernel failed (typically: not allowed to use bpf()).
    #[error(
        "probing the kernel's BPF support failed (the agent needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    )]
    Probe(#[source] io::Error),
    /// Loading an object (creating or re-finding its maps) failed.
    #[error("loading the {object} eBPF object")]
    Object {
        /// Which object.
        object: &'static str,
        /// Why.
        #[source]
        source: EbpfError,
    },
    /// Loading (verifying) a program failed.
    #[error("loading the {hook:?} program")]
    Load {
        /// Which program.
        hook: Hook,
        /// Why (with the verifier log).
        #[source]
        source: ProgramError,
    },
    /// The object lacks an expected program or map (a build mismatch).
    #[error("the embedded eBPF object has no {0}")]
    Missing(String),
    /// The pinned table of pods has an unexpected layout (left by an incompatible version).
    #[error("the pinned table of pods has the wrong layout (remove {path} to start afresh)")]
    Layout {
        /// The pin.
        path: PathBuf,
        /// The mismatch.
        #[source]
        source: MapError,
    },
    /// The kernel attached without a bpf_link (Linux < 5.7), which cannot be pinned.
    #[error("attaching {hook:?} gave no bpf_link to pin (Linux >= 5.7 needed)")]
    NoLink {
        /// Which program.
        hook: Hook,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// Pinning failed.
    #[error("pinning at {path}")]
    Pin {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: PinError,
    },
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
    /// Attaching a program to a cgroup failed.
    #[error("attaching {hook:?} to cgroup {cgroup}")]
    Attach {
        /// Which program.
        hook: Hook,
        /// The cgroup directory.
        cgroup: PathBuf,
        /// Why.
        #[source]
        source: ProgramError,
    },
}

/// The loaded programs and the node-wide table of pods.
#[derive(Debug)]
pub(crate) struct Programs {
    /// Keeps the loaded objects (and so the programs) alive.
    objects: Vec<Ebpf>,
    /// netns cookie → pod map; pinned at `<bpffs>/TRUEIP_RESTORE`.
    pub(crate) table: HashOfMaps<MapData, u64, MapData>,
}

impl Programs {
    /// Loads the objects, re-finding the pinned table of pods in `bpffs_dir` (or creating and
    /// pinning it with room for `max_pods`), loads the programs of `hooks` and pins them under
    /// `bpffs_dir/progs` (replacing the pins of a previous run: links keep the old programs alive).
    pub(crate) fn load(
        bpffs_dir: &Path,
        max_pods: u32,
        hooks: &[Hook],
    ) -> Result<Self, ProgramsError> {
        probe()?;
        let progs_dir = bpffs_dir.join("progs");
        fs::create_dir_all(&progs_dir).map_err(|source| ProgramsError::Fs {
            op: "creating",
            path: progs_dir.clone(),
            source,
        })?;
        let table_pin = bpffs_dir.join(RESTORE_MAP);
        let mut objects = Vec::new();
        let objects_and_hooks: [(&'static str, &[u8], &[Hook]); 3] = [
            (
                "getpeername",
                GETPEERNAME_OBJ,
                &[Hook::Getpeername4, Hook::Getpeername6],
            ),
            (
                "getsockname",
                GETSOCKNAME_OBJ,
                &[Hook::Getsockname4, Hook::Getsockname6],
            ),
            ("udp", UDP_OBJ, &Hook::UDP),
        ];
        for (object, data, wanted) in objects_and_hooks {
            if !wanted.iter().any(|h| hooks.contains(h)) {
                // Not configured this time: drop the pins a previous run may have left.
                for &hook in wanted {
                    remove_if_exists(&progs_dir.join(hook.name()))?;
                }
                continue;
            }
            let mut ebpf = EbpfLoader::new()
                .map_pin_path(RESTORE_MAP, table_pin.as_path())
                .map_max_entries(RESTORE_MAP, max_pods)
                .load(data)
                .map_err(|source| ProgramsError::Object { object, source })?;
            for &hook in wanted {
                let program: &mut CgroupSockAddr = ebpf
                    .program_mut(hook.name())
                    .ok_or_else(|| ProgramsError::Missing(format!("program {}", hook.name())))?
                    .try_into()
                    .map_err(|source| ProgramsError::Load { hook, source })?;
                program
                    .load()
                    .map_err(|source| ProgramsError::Load { hook, source })?;
                let pin = progs_dir.join(hook.name());
                remove_if_exists(&pin)?;
                program
                    .pin(&pin)
                    .map_err(|source| ProgramsError::Pin { path: pin, source })?;
            }
            objects.push(ebpf);
        }
        let table = MapData::from_pin(&table_pin)
            .and_then(aya::maps::Map::from_map_data)
            .and_then(HashOfMaps::try_from)
            .map_err(|source| ProgramsError::Layout {
                path: table_pin,
                source,
            })?;
        Ok(Self { objects, table })
    }

    /// Attaches `hook` to `cgroup` and pins the link at `pin`, so that it stays attached when the
    /// agent exits, until the pin is removed.
    ///
    /// If `pin` already holds a link (from a previous agent run) that runs another instance of
    /// the program, the new link replaces it without a gap: it is attached and pinned beside the
    /// old one first, then renamed over it, which releases (detaches) the old link. For that
    /// instant both run, and they rewrite the address alike. Returns whether anything changed.
    pub(crate) fn attach(
        &mut self,
        hook: Hook,
        cgroup: &(impl AsFd + ?Sized),
        cgroup_path: &Path,
        pin: &Path,
    ) -> Result<bool, ProgramsError> {
        let attach_err = |source| ProgramsError::Attach {
            hook,
            cgroup: cgroup_path.to_owned(),
            source,
        };
        let program: &mut CgroupSockAddr = self
            .objects
            .iter_mut()
            .find_map(|o| o.program_mut(hook.name()))
            .ok_or_else(|| ProgramsError::Missing(format!("loaded program {}", hook.name())))?
            .try_into()
            .map_err(attach_err)?;
        if pin.exists() {
            let current = program.info().map_err(attach_err)?.id();
            let pinned = PinnedLink::from_pin(pin)
                .map(FdLink::from)
                .and_then(|link| link.info())
                .map(|info| info.program_id());
            if pinned.is_ok_and(|id| id == current) {
                return Ok(false);
            }
        }
        // A bpf_link attachment takes no flags and always behaves as BPF_F_ALLOW_MULTI: other
        // programs (e.g. a CNI's socket load balancing at the root cgroup) keep running beside ours.
        let id = program
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let link = FdLink::try_from(program.take_link(id).map_err(attach_err)?)
            .map_err(|source| ProgramsError::NoLink { hook, source })?;
        // bpffs refuses names with a dot.
        let mut staging = pin.as_os_str().to_owned();
        staging.push("-new");
        let staging = PathBuf::from(staging);
        remove_if_exists(&staging)?;
        // Dropping the returned PinnedLink closes our fd; the pin keeps the link attached.
        link.pin(&staging).map_err(|source| ProgramsError::Pin {
            path: staging.clone(),
            source,
        })?;
        fs::rename(&staging, pin).map_err(|source| ProgramsError::Fs {
            op: "renaming a link pin to",
            path: pin.to_owned(),
            source,
        })?;
        Ok(true)
    }
}

/// Checks up front that the kernel has what trueip needs, so that the error says so plainly.
fn probe() -> Result<(), ProgramsError> {
    let hash_of_maps =
        is_map_supported(MapType::HashOfMaps).map_err(|e| ProgramsError::Probe(e.io_error))?;
    if !hash_of_maps {
        return Err(ProgramsError::Unsupported {
            what: "BPF_MAP_TYPE_HASH_OF_MAPS",
        });
    }
    let sock_addr = is_program_supported(ProgramType::CgroupSockAddr)
        .map_err(|e| ProgramsError::Probe(io::Error::other(e)))?;
    if !sock_addr {
        return Err(ProgramsError::Unsupported {
            what: "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        });
    }
    Ok(())
}

/// Removes a pin (or any file) if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), ProgramsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ProgramsError::Fs {
            op: "removing",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}
