//! Closing callers' descriptors off the serving thread.
//!
//! A descriptor a caller sent can block its last close(): a TCP socket with `SO_LINGER` and
//! unsent data waits up to the linger time, a file on a FUSE or NFS mount waits for its flush.
//! The serving thread therefore never closes one itself: it hands them to this thread, which a
//! wedged close holds up instead of every pod's requests. Callers' rate limits bound what can
//! queue up behind a wedged close.

use std::{
    os::fd::OwnedFd,
    sync::mpsc::{Sender, channel},
};

/// The handle of the closing thread.
#[derive(Debug, Clone)]
pub(crate) struct Reaper {
    tx: Sender<Vec<OwnedFd>>,
}

impl Reaper {
    /// Starts the closing thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (tx, rx) = channel::<Vec<OwnedFd>>();
        std::thread::Builder::new()
            .name("agent-fd-reaper".into())
            .spawn(move || {
                for fds in rx {
                    drop(fds);
                }
            })?;
        Ok(Self { tx })
    }

    /// Closes `fds` on the closing thread (here, if that thread is gone).
    pub(crate) fn close(&self, fds: Vec<OwnedFd>) {
        if fds.is_empty() {
            return;
        }
        if let Err(unsent) = self.tx.send(fds) {
            drop(unsent.0);
        }
    }
}
