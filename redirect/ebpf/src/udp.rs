//! cgroup recvmsg4/6 and sendmsg4/6: UDP flows relayed by a sidecar UDP listener.
//!
//! The sidecar sends each client flow's datagrams to the app from its own loopback socket, and
//! records the flow in the pod map (see `trueip_redirect_common::UdpFlowEntries`):
//!
//! * recvmsg: a datagram from a flow socket, received by the app's socket on port P, shows the
//!   client as its source (`recvfrom()`, `recvmsg()`'s `msg_name`).
//! * sendmsg: the app's `sendto(client)` from port P goes to the flow socket instead, which relays
//!   it to the load balancer.
//!
//! No entry (any other datagram) → nothing changes. An IPv6 client cannot be shown to an
//! `AF_INET` socket and is left alone (the app then sees, and replies to, the flow socket, which
//! works unrestored). Only unconnected sockets that ask for or give an address reach these hooks.
#![no_std]
#![no_main]

#[expect(
    dead_code,
    reason = "the TCP lookup of this shared module is unused here"
)]
mod restore;

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use trueip_redirect_common::{ConnKey, Endpoint, RestoreValue};

const IPPROTO_UDP: u32 = 17;

/// The app socket's protocol and bound port (host byte order); `None` without a socket.
#[inline(always)]
fn app_socket(ctx: &SockAddrContext) -> Option<(u32, u16)> {
    // SAFETY: the kernel hands sock_addr programs a valid `bpf_sock_addr`; its `sk` is the
    // socket doing the recvmsg/sendmsg.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the context's socket, checked non-null; each read is one 4-byte field.
    unsafe {
        Some((
            core::ptr::read_volatile(&raw const (*sk).protocol),
            core::ptr::read_volatile(&raw const (*sk).src_port) as u16,
        ))
    }
}

/// The pod map's entry for `key`, if this socket is a UDP socket.
#[inline(always)]
fn lookup(ctx: &SockAddrContext, key: impl FnOnce(u16) -> ConnKey) -> Option<RestoreValue> {
    let (protocol, port) = app_socket(ctx)?;
    if protocol != IPPROTO_UDP {
        return None;
    }
    let key = key(port);
    // SAFETY: the helper only reads the context the kernel passed in.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; see `restore::lookup` for the one race with a removal.
    unsafe { restore::TRUEIP_RESTORE.get_value(&cookie, &key) }.copied()
}

/// The address the context holds for an `AF_INET` socket (network byte order fields).
#[inline(always)]
fn user4(ctx: &SockAddrContext) -> Endpoint {
    // SAFETY: `user_ip4` and `user_port` are readable 4-byte fields for the UDP4 hooks.
    let (ip4, port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_ip4),
            core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port),
        )
    };
    Endpoint::v4(ip4, u16::from_be(port as u16))
}

/// The address the context holds for an `AF_INET6` socket.
#[inline(always)]
fn user6(ctx: &SockAddrContext) -> Endpoint {
    // SAFETY: `user_ip6[0..4]` and `user_port` are readable 4-byte fields for the UDP6 hooks.
    let (ip6, port) = unsafe {
        let words = (&raw const (*ctx.sock_addr).user_ip6).cast::<u32>();
        (
            [
                core::ptr::read_volatile(words),
                core::ptr::read_volatile(words.add(1)),
                core::ptr::read_volatile(words.add(2)),
                core::ptr::read_volatile(words.add(3)),
            ],
            core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port),
        )
    };
    Endpoint::v6(ip6, u16::from_be(port as u16))
}

/// recvfrom/recvmsg on `AF_INET` sockets: a flow socket's datagram shows the client.
#[cgroup_sock_addr(recvmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let source = user4(&ctx);
    if let Some(addr) =
        lookup(&ctx, |port| ConnKey::udp_recv(port, source)).and_then(|v| v.client.user_addr4())
    {
        restore::write4(&ctx, addr);
    }
    // recvmsg hooks can only return 1 (the verifier enforces it).
    1
}

/// recvfrom/recvmsg on `AF_INET6` sockets, v4-mapped flows included.
#[cgroup_sock_addr(recvmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let source = user6(&ctx);
    if let Some(value) = lookup(&ctx, |port| ConnKey::udp_recv(port, source)) {
        restore::write6(&ctx, value.client.user_addr6());
    }
    1
}

/// sendto/sendmsg on `AF_INET` sockets: a reply to a flow's client goes to its flow socket.
#[cgroup_sock_addr(sendmsg4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let destination = user4(&ctx);
    if let Some(addr) = lookup(&ctx, |port| ConnKey::udp_send(port, destination))
        .and_then(|v| v.client.user_addr4())
    {
        restore::write4(&ctx, addr);
    }
    // 1: let the send go ahead (0 would fail it with EPERM).
    1
}

/// sendto/sendmsg on `AF_INET6` sockets, v4-mapped clients included.
#[cgroup_sock_addr(sendmsg6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let destination = user6(&ctx);
    if let Some(value) = lookup(&ctx, |port| ConnKey::udp_send(port, destination)) {
        restore::write6(&ctx, value.client.user_addr6());
    }
    1
}
