//! The kernel's answers to map syscalls that the client tells apart, and its update flags.

use aya::maps::MapError;

/// `bpf_map_update_elem` on a full hash map.
pub(crate) const E2BIG: i32 = 7;
/// `bpf_map_update_elem` on a full map of some other kinds; treated alike.
pub(crate) const ENOSPC: i32 = 28;
/// `bpf_map_delete_elem` of a missing key.
pub(crate) const ENOENT: i32 = 2;
/// `bpf_map_update_elem` with `BPF_NOEXIST` of a key already present.
pub(crate) const EEXIST: i32 = 17;
/// `bpf_map_update_elem` flag: create or replace.
pub(crate) const BPF_ANY: u64 = 0;
/// `bpf_map_update_elem` flag: create only.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// The errno of a failed map syscall.
pub(crate) fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        MapError::KeyNotFound => Some(ENOENT),
        _ => None,
    }
}
