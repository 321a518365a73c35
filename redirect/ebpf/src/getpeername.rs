//! cgroup getpeername4/getpeername6: `accept()` and `getpeername()` of an app socket that is the
//! far end of a sidecar's loopback connection return the client named by the PROXY header.
//!
//! No entry (any other socket) → the address is left as it is. An IPv6 client cannot be shown to
//! an `AF_INET` socket and is left alone too; an IPv4 client of a dual-stack `AF_INET6` socket is
//! shown as `::ffff:a.b.c.d`, as the kernel itself would.
#![no_std]
#![no_main]

mod restore;

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

/// getpeername (and accept) on `AF_INET` sockets.
#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(addr) = restore::lookup(&ctx).and_then(|v| v.client.user_addr4()) {
        restore::write4(&ctx, addr);
    }
    // getpeername hooks can only return 1 (the verifier enforces it).
    1
}

/// getpeername (and accept) on `AF_INET6` sockets, v4-mapped connections included.
#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(value) = restore::lookup(&ctx) {
        restore::write6(&ctx, value.client.user_addr6());
    }
    1
}
