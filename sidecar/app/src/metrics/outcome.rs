//! What a connection or flow made of the client address, and what the kernel fast path did:
//! the labels the TCP and UDP counters share.

/// What happened to the client address of a served connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestoreOutcome {
    /// The app learns the client from the header (re-emitted header, eBPF entry, or a
    /// connection from the client's own address).
    Restored,
    /// The header carried no client (LOCAL, UNSPEC) or there was none: real addresses used.
    NoClient,
    /// The header came from an untrusted source and was passed through unhonoured.
    Passthrough,
    /// The pod's map was full; the connection was delivered without restoration.
    MapFull,
    /// Restoring failed (the eBPF entry could not be written; `transparent`: no socket could
    /// be bound to the client's address, or its address family differs from the app's): the
    /// connection was delivered without restoration.
    Failed,
    /// `transparent`: the client's port was taken, so the app sees the client's address with
    /// a port the kernel chose.
    PortChanged,
}

impl RestoreOutcome {
    /// Every outcome, for exporting zeros too.
    pub const ALL: [Self; 6] = [
        Self::Restored,
        Self::NoClient,
        Self::Passthrough,
        Self::MapFull,
        Self::Failed,
        Self::PortChanged,
    ];

    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::NoClient => "no_client",
            Self::Passthrough => "passthrough",
            Self::MapFull => "map_full",
            Self::Failed => "failed",
            Self::PortChanged => "port_changed",
        }
    }
}

/// What the kernel fast path did for a connection of an `ebpf` listener with `fast_path: sk-msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FastPathOutcome {
    /// Wired: the app's bytes to the load balancer are redirected by the kernel.
    Wired,
    /// The agent did not set the fast path up at start: the sidecar relays them.
    Unavailable,
    /// The fast-path maps were full: the sidecar relays them.
    Full,
    /// The load balancer had already half-closed (or closed) its connection when it was to be
    /// wired (the kernel only takes established sockets): the sidecar relays them.
    Skipped,
    /// Wiring failed otherwise: the sidecar relays them.
    Failed,
}

impl FastPathOutcome {
    /// Every outcome, for exporting zeros too.
    pub const ALL: [Self; 5] = [
        Self::Wired,
        Self::Unavailable,
        Self::Full,
        Self::Skipped,
        Self::Failed,
    ];

    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Wired => "wired",
            Self::Unavailable => "unavailable",
            Self::Full => "full",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }
}
