//! The agent's listening socket: created root-owned, in a root-owned directory nobody else may
//! write to, connectable by root and the sidecars' group only.

use std::{
    fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use nix::{
    sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    },
    unistd::{Gid, Uid, chown},
};

/// The socket directory's permissions: anyone may traverse it (the sidecars must reach the
/// socket), only root may create or replace what is in it.
const DIR_MODE: u32 = 0o755;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// Another process already answers on the socket path.
    #[error("another agent is already listening on {0}")]
    InUse(PathBuf),
    /// The socket's directory belongs to someone other than root: whoever owns it could replace
    /// the socket with one of their own.
    #[error(
        "the socket directory {dir} is owned by uid {uid}, not root: refusing to serve a socket \
         that another user could replace (remove the directory, or choose another --socket)"
    )]
    UntrustedDir {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A step of setting up the socket failed.
    #[error("{op} {path}")]
    Setup {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Creates the listening socket at `path` with permissions `mode`, owned by root and `group`,
/// replacing a stale socket file left by a previous agent.
pub(crate) fn bind_socket(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> Result<OwnedFd, SocketError> {
    let setup = |op, at: &Path| {
        let path = at.to_owned();
        move |source: io::Error| SocketError::Setup { op, path, source }
    };
    if let Some(dir) = path.parent() {
        secure_dir(dir)?;
    }
    let addr = UnixAddr::new(path).map_err(|e| setup("naming", path)(e.into()))?;
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let probe = seqpacket().map_err(setup("probing", path))?;
        if connect(probe.as_raw_fd(), &addr).is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        fs::remove_file(path).map_err(setup("removing the stale socket", path))?;
    }
    let listener = seqpacket().map_err(setup("creating", path))?;
    bind(listener.as_raw_fd(), &addr).map_err(|e| setup("binding", path)(e.into()))?;
    // Until listen() nobody can connect, so the order of these two does not open a window.
    chown(path, Some(Uid::from_raw(0)), group.map(Gid::from_raw))
        .map_err(|e| setup("setting the owner of", path)(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(setup("setting permissions of", path))?;
    listen(&listener, Backlog::new(128).unwrap_or(Backlog::MAXCONN))
        .map_err(|e| setup("listening on", path)(e.into()))?;
    Ok(listener)
}

/// Creates `dir` (root-owned, [`DIR_MODE`]) or checks the existing one: owned by root, and
/// made writable by nobody else if it was.
fn secure_dir(dir: &Path) -> Result<(), SocketError> {
    let setup = |op| {
        let path = dir.to_owned();
        move |source: io::Error| SocketError::Setup { op, path, source }
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(setup("creating the directory"))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(setup("setting permissions of the directory"))?;
    }
    let meta = fs::metadata(dir).map_err(setup("reading the directory"))?;
    if meta.uid() != 0 {
        return Err(SocketError::UntrustedDir {
            dir: dir.to_owned(),
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o022 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.mode() & 0o7777),
            "the socket directory was writable by others; making it {DIR_MODE:o}"
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(setup("setting permissions of the directory"))?;
    }
    Ok(())
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}
