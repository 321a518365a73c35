//! Whether the socket at the agent's path can be the agent's.
//!
//! The agent creates its socket as root in a directory only root can write (the chart mounts
//! that directory from the node). A socket owned by anyone else, or in a directory others can
//! write to, may have been put there by an impostor that would hand the sidecar a map of its
//! own making — or take the sidecar's listening socket for steering. Such a socket is refused
//! before it is connected to. This process's own user counts as trusted too: whatever it could
//! have made, the sidecar could have made itself (that is how tests run the agent without root).

use std::{
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::Path,
};

use crate::error::ClientError;

/// Group- or other-writable permission bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Refuses `socket` unless it is a socket owned by root (or this user) in a directory owned by
/// root (or this user) that nobody else may write to.
pub(crate) fn check(socket: &Path) -> Result<(), ClientError> {
    let untrusted = |why: String| ClientError::Untrusted {
        socket: socket.to_owned(),
        why,
    };
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    // The directory first: it decides who could have put anything at the path. A missing
    // directory or socket is the ordinary "agent not running" case, which connect() reports.
    let dir = socket
        .parent()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_owned()));
    if let Some(dir) = dir
        && let Ok(dir_meta) = std::fs::metadata(&dir)
    {
        if !trusted(dir_meta.uid()) {
            return Err(untrusted(format!(
                "its directory {} is owned by uid {}, not by root",
                dir.display(),
                dir_meta.uid()
            )));
        }
        if dir_meta.mode() & WRITABLE_BY_OTHERS != 0 {
            return Err(untrusted(format!(
                "its directory {} is writable by others (mode {:o}): anyone could have put a \
                 socket there",
                dir.display(),
                dir_meta.mode() & 0o7777
            )));
        }
    }
    let Ok(meta) = std::fs::symlink_metadata(socket) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(untrusted(
            "it is not a socket (a symbolic link or a file is not the agent's)".into(),
        ));
    }
    if !trusted(meta.uid()) {
        return Err(untrusted(format!(
            "it is owned by uid {}, not by root: the agent creates it as root",
            meta.uid()
        )));
    }
    Ok(())
}
