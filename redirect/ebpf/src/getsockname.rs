//! cgroup getsockname4/getsockname6: `getsockname()` of an app socket that is the far end of a
//! sidecar's loopback connection returns the original destination named by the PROXY header.
//! Attached only when the agent is told to (`--getsockname`).
//!
//! No entry, or an entry without a destination → the address is left as it is. An IPv6
//! destination cannot be shown to an `AF_INET` socket and is left alone too.
#![no_std]
#![no_main]

mod restore;

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// getsockname on `AF_INET` sockets.
#[cgroup_sock_addr(getsockname4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn getsockname4(ctx: SockAddrContext) -> i32 {
    if let Some(addr) = restore::lookup(&ctx)
        .and_then(|v| v.original_dst())
        .and_then(|dst| dst.user_addr4())
    {
        restore::write4(&ctx, addr);
    }
    // getsockname hooks can only return 1 (the verifier enforces it).
    1
}

/// getsockname on `AF_INET6` sockets, v4-mapped connections included.
#[cgroup_sock_addr(getsockname6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn getsockname6(ctx: SockAddrContext) -> i32 {
    if let Some(dst) = restore::lookup(&ctx).and_then(|v| v.original_dst()) {
        restore::write6(&ctx, dst.user_addr6());
    }
    1
}
