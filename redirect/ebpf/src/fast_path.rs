//! The fast path of a pod: the app → load balancer bytes of the sidecar's connections leave the
//! app's socket straight through the sidecar's LB-facing socket (see
//! `trueip_redirect_common::fast_path` for the protocol between the sidecar and these programs).
//!
//! * `fast_path_sockops`, attached to the pod's cgroup: when an accepted socket of the app
//!   becomes established and its connection is in the peers map (the sidecar wired it before
//!   connecting), the socket goes into the socket map. This happens in the softirq that completes
//!   the handshake, with the new socket locked: `accept()` cannot return it earlier, so every
//!   byte the app writes on it passes through `fast_path_msg`.
//! * `fast_path_msg`, attached to the socket map: runs inside each `sendmsg()` of a socket in the
//!   map. For the app's socket of a wired connection it redirects the bytes to the egress of the
//!   LB-facing socket (flags 0: egress, never `BPF_F_INGRESS`, which is broken on the kernels
//!   measured); for anything else (the LB-facing socket's own writes, an unwired connection) it
//!   lets the bytes take the normal path.
//!
//! The agent loads one instance per pod, with maps of its own: a pod never redirects into
//! another pod's sockets.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB},
    macros::{map, sk_msg, sock_ops},
    maps::{HashMap, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use trueip_redirect_common::{ConnKey, Endpoint, FAST_PATH_MAX_CONNS, FastPathKey, FastPathPeer};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// The bytes take the normal path.
const SK_PASS: u32 = 1;

/// Both sockets of each wired connection. Name: `trueip_redirect_common::FAST_PATH_SOCKETS_MAP`.
#[map]
static TRUEIP_FP_SOCKETS: SockHash<FastPathKey> =
    SockHash::with_max_entries(2 * FAST_PATH_MAX_CONNS, 0);

/// The wired connections. Name: `trueip_redirect_common::FAST_PATH_PEERS_MAP`.
#[map]
static TRUEIP_FP_PEERS: HashMap<ConnKey, FastPathPeer> =
    HashMap::with_max_entries(FAST_PATH_MAX_CONNS, 0);

/// Puts the app's accepted socket of a wired connection in the socket map.
#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn fast_path_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the kernel hands sock_ops programs a valid `bpf_sock_ops`.
    let fields = unsafe { read_ops(&ctx) };
    let Some(conn) = fields.conn_key() else {
        return 1;
    };
    // SAFETY: only the presence of the entry is used.
    if unsafe { TRUEIP_FP_PEERS.get(conn) }.is_none() {
        return 1;
    }
    // SAFETY: `ctx.ops` is the program's context, valid for the whole call.
    let ops = unsafe { &mut *ctx.ops };
    // BPF_ANY: a socket left behind by an earlier connection with the same 4-tuple (whose app
    // socket still existed) is replaced. A failure (a full map) leaves the app's socket out of
    // the map: its bytes then take the normal path through the sidecar, in order.
    let _ = TRUEIP_FP_SOCKETS.update(FastPathKey::app(conn), ops, u64::from(BPF_ANY));
    1
}

/// Redirects the app's writes of a wired connection to the LB-facing socket's egress.
#[sk_msg]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn fast_path_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands sk_msg programs a valid `sk_msg_md`.
    let fields = unsafe { read_msg(&ctx) };
    let Some(conn) = fields.conn_key() else {
        return SK_PASS;
    };
    // The peers entry is written after the LB socket's: with it, the redirect has a target.
    let Some(peer) = TRUEIP_FP_PEERS.get_ptr_mut(conn) else {
        return SK_PASS;
    };
    // SAFETY: `peer` points at the value of a live map element. Only this connection's app
    // socket updates it, and the kernel runs the verdict of a socket's sendmsg() under that
    // socket's lock: the updates never race (the BPF target has no 64-bit atomic add in Rust).
    unsafe { (*peer).redirected += u64::from(ctx.size()) };
    // SK_PASS with the redirect recorded, or SK_DROP if the LB socket left the map (it was
    // reset or closed: the connection is over).
    TRUEIP_FP_SOCKETS.redirect_msg(&ctx, FastPathKey::lb(conn), 0) as u32
}

/// The address fields common to `bpf_sock_ops` and `sk_msg_md`: the socket's view.
struct SockView {
    family: u32,
    remote_ip4: u32,
    local_ip4: u32,
    remote_ip6: [u32; 4],
    local_ip6: [u32; 4],
    /// Network byte order in the upper 16 bits (as both contexts expose it).
    remote_port: u32,
    /// Host byte order.
    local_port: u32,
}

impl SockView {
    /// The connection as seen from this socket: local end = `app`, remote end = `peer`. For the
    /// app's socket of a sidecar connection that is the key the sidecar wrote.
    #[inline(always)]
    fn conn_key(&self) -> Option<ConnKey> {
        let remote_port = u32::from_be(self.remote_port) as u16;
        let local_port = self.local_port as u16;
        match self.family {
            AF_INET => Some(ConnKey {
                app: Endpoint::v4(self.local_ip4, local_port),
                peer: Endpoint::v4(self.remote_ip4, remote_port),
            }),
            AF_INET6 => Some(ConnKey {
                app: Endpoint::v6(self.local_ip6, local_port),
                peer: Endpoint::v6(self.remote_ip6, remote_port),
            }),
            _ => None,
        }
    }
}

/// Reads the address fields in one straight line of 4-byte volatile loads (the verifier only
/// accepts constant-offset context loads; see `restore::read_sock`).
///
/// # Safety
/// `ctx` must be the program's context.
#[inline(always)]
unsafe fn read_ops(ctx: &SockOpsContext) -> SockView {
    use core::ptr::read_volatile as rv;
    let o = ctx.ops;
    // SAFETY: the caller guarantees `o` is the context; every read is one 4-byte field.
    unsafe {
        SockView {
            family: rv(&raw const (*o).family),
            remote_ip4: rv(&raw const (*o).remote_ip4),
            local_ip4: rv(&raw const (*o).local_ip4),
            remote_ip6: [
                rv(&raw const (*o).remote_ip6[0]),
                rv(&raw const (*o).remote_ip6[1]),
                rv(&raw const (*o).remote_ip6[2]),
                rv(&raw const (*o).remote_ip6[3]),
            ],
            local_ip6: [
                rv(&raw const (*o).local_ip6[0]),
                rv(&raw const (*o).local_ip6[1]),
                rv(&raw const (*o).local_ip6[2]),
                rv(&raw const (*o).local_ip6[3]),
            ],
            remote_port: rv(&raw const (*o).remote_port),
            local_port: rv(&raw const (*o).local_port),
        }
    }
}

/// [`read_ops`] for an `sk_msg_md`.
///
/// # Safety
/// `ctx` must be the program's context.
#[inline(always)]
unsafe fn read_msg(ctx: &SkMsgContext) -> SockView {
    use core::ptr::read_volatile as rv;
    let m = ctx.msg;
    // SAFETY: the caller guarantees `m` is the context; every read is one 4-byte field.
    unsafe {
        SockView {
            family: rv(&raw const (*m).family),
            remote_ip4: rv(&raw const (*m).remote_ip4),
            local_ip4: rv(&raw const (*m).local_ip4),
            remote_ip6: [
                rv(&raw const (*m).remote_ip6[0]),
                rv(&raw const (*m).remote_ip6[1]),
                rv(&raw const (*m).remote_ip6[2]),
                rv(&raw const (*m).remote_ip6[3]),
            ],
            local_ip6: [
                rv(&raw const (*m).local_ip6[0]),
                rv(&raw const (*m).local_ip6[1]),
                rv(&raw const (*m).local_ip6[2]),
                rv(&raw const (*m).local_ip6[3]),
            ],
            remote_port: rv(&raw const (*m).remote_port),
            local_port: rv(&raw const (*m).local_port),
        }
    }
}

/// Programs must not unwind; the verifier would reject a program that could reach this anyway.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The kernel only offers GPL helpers to programs with a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
