//! The process limits and runtime the bench binaries share: descriptors for thousands of
//! connections, and a tokio runtime sized as asked.

/// Raises this process's open-file limit to its hard limit (idle workloads hold thousands of
/// sockets). Best effort: on failure the default limit stays and large workloads fail visibly.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Raises the open-file limit, soft and hard, to `fs.nr_open` (root only): the runner's
/// children — hops, app, load generator — inherit it, and 10 000 idle connections through a
/// hop need tens of thousands of descriptors. Falls back to [`raise_fd_limit`].
pub fn raise_fd_limit_hard() {
    use nix::sys::resource::{Resource, setrlimit};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let limit = nr_open.min(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, limit, limit).is_err() {
        raise_fd_limit();
    }
}

/// A multi-thread tokio runtime with `threads` workers (default: one per CPU), as the bench's
/// binaries run.
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    builder.build()
}

/// The open-file limit (soft) of this process now.
#[must_use]
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}
