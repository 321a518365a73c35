//! Names of what the tests create (namespaces, cgroups, bpffs directories): unique among all
//! processes alive at once, and recognisable as a dead run's leftovers.

use std::{
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace and cgroup this crate creates.
pub const PREFIX: &str = "tip-";

/// `<pid>-<n>`: unique among the namespaces and cgroups of all processes alive at once.
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a name made by [`unique_suffix`] belongs to a process that no longer runs.
pub fn is_stale(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
}
