//! sk_lookup `steer`: in one pod's network namespace, TCP connections to a steered app port that
//! come from outside the pod are handed to the sidecar's listening socket; everything else —
//! loopback (the sidecar's own connection to the app, in-pod clients), other ports, other
//! protocols — is left to the kernel's normal lookup, so it reaches the app.
//!
//! "From outside the pod" means: not over the loopback device, not from a loopback address, and
//! not from the pod's own address.
//!
//! The agent loads one instance of this program per pod, with maps of its own, and attaches it
//! to that pod's network namespace only: a pod can never steer another pod's traffic.
//!
//! When the port is steered but the sidecar's listener is gone (the kernel removes a closed
//! socket from the socket map), the connection goes to the app (fail-open) or is refused
//! (fail-closed, [`STEER_FAIL_CLOSED`]); each outcome is counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, sk_lookup},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::SkLookupContext,
};
use trueip_redirect_common::{
    LOOPBACK_IFINDEX, MAX_STEER_PORTS, STEER_ANY_FAMILY, STEER_FAIL_CLOSED,
    STEER_STAT_FELL_THROUGH, STEER_STAT_REFUSED, STEER_STAT_STEERED, STEER_STATS, SteerPort,
    steer_socket_key,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// Lets the lookup go on (with a socket assigned: to that socket).
const SK_PASS: u32 = 1;
/// Ends the lookup without a socket: a TCP SYN is answered with a reset.
const SK_DROP: u32 = 0;
/// The third 32-bit word of a v4-mapped IPv6 address, as it sits in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// The last word of `::1`, as it sits in memory.
const V6_LOOPBACK_WORD: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

/// `steer_socket_key(app port, family)` → the sidecar's listening socket. Names are
/// `trueip_redirect_common::STEER_*_MAP`.
#[map]
static TRUEIP_STEER_SOCKETS: SockHash<u32> = SockHash::with_max_entries(2 * MAX_STEER_PORTS, 0);

/// App port (host byte order) → how it is steered. A port without an entry is not steered.
#[map]
static TRUEIP_STEER_PORTS: HashMap<u32, SteerPort> = HashMap::with_max_entries(MAX_STEER_PORTS, 0);

/// Counters, indexed by `STEER_STAT_*`.
#[map]
static TRUEIP_STEER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STEER_STATS, 0);

/// The program the agent attaches to a pod's network namespace.
#[sk_lookup]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
fn steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands sk_lookup programs a valid `bpf_sk_lookup`.
    let fields = unsafe { read_lookup(&ctx) };
    if fields.protocol != IPPROTO_TCP
        || fields.ingress_ifindex == LOOPBACK_IFINDEX
        || is_loopback(&fields)
        || is_from_the_pod_itself(&fields)
    {
        return SK_PASS;
    }
    // SAFETY: the value is copied out at once; the agent only writes this map when a sidecar
    // registers, and a torn read of a one-word value cannot happen.
    let Some(port) = (unsafe { TRUEIP_STEER_PORTS.get(fields.local_port) }).copied() else {
        return SK_PASS;
    };
    // The listener of the connection's own family first, then a dual-stack one. A listener
    // that cannot take the connection (an IPv4 socket, an IPv6 connection) fails the assignment.
    let own_family = steer_socket_key(fields.local_port, fields.family);
    let any_family = steer_socket_key(fields.local_port, STEER_ANY_FAMILY);
    if TRUEIP_STEER_SOCKETS
        .redirect_sk_lookup(&ctx, own_family, 0)
        .is_ok()
        || TRUEIP_STEER_SOCKETS
            .redirect_sk_lookup(&ctx, any_family, 0)
            .is_ok()
    {
        count(STEER_STAT_STEERED);
        return SK_PASS;
    }
    if port.flags & STEER_FAIL_CLOSED != 0 {
        count(STEER_STAT_REFUSED);
        SK_DROP
    } else {
        count(STEER_STAT_FELL_THROUGH);
        SK_PASS
    }
}

/// The fields of `struct bpf_sk_lookup` the decision needs.
struct LookupFields {
    family: u32,
    protocol: u32,
    remote_ip4: u32,
    remote_ip6: [u32; 4],
    local_ip4: u32,
    local_ip6: [u32; 4],
    /// Host byte order.
    local_port: u32,
    ingress_ifindex: u32,
}

/// Reads every field in one straight line of 4-byte volatile loads, whatever the family (the
/// verifier only accepts constant-offset context loads; see `restore::read_sock`).
///
/// # Safety
/// `ctx` must be the program's context.
#[inline(always)]
unsafe fn read_lookup(ctx: &SkLookupContext) -> LookupFields {
    use core::ptr::read_volatile as rv;
    let l = ctx.lookup;
    // SAFETY: the caller guarantees `l` is the context; every read is one 4-byte field.
    unsafe {
        LookupFields {
            family: rv(&raw const (*l).family),
            protocol: rv(&raw const (*l).protocol),
            remote_ip4: rv(&raw const (*l).remote_ip4),
            remote_ip6: [
                rv(&raw const (*l).remote_ip6[0]),
                rv(&raw const (*l).remote_ip6[1]),
                rv(&raw const (*l).remote_ip6[2]),
                rv(&raw const (*l).remote_ip6[3]),
            ],
            local_ip4: rv(&raw const (*l).local_ip4),
            local_ip6: [
                rv(&raw const (*l).local_ip6[0]),
                rv(&raw const (*l).local_ip6[1]),
                rv(&raw const (*l).local_ip6[2]),
                rv(&raw const (*l).local_ip6[3]),
            ],
            local_port: rv(&raw const (*l).local_port),
            ingress_ifindex: rv(&raw const (*l).ingress_ifindex),
        }
    }
}

/// Whether the client is a loopback address (127.0.0.0/8, `::1`, `::ffff:127.0.0.0/104`).
#[inline(always)]
fn is_loopback(f: &LookupFields) -> bool {
    let is_127 = |ip4: u32| ip4.to_ne_bytes()[0] == 127;
    match f.family {
        AF_INET => is_127(f.remote_ip4),
        AF_INET6 => {
            let [a, b, c, d] = f.remote_ip6;
            a == 0
                && b == 0
                && ((c == 0 && d == V6_LOOPBACK_WORD) || (c == V4_MAPPED_WORD && is_127(d)))
        }
        _ => false,
    }
}

/// Whether the client is the pod itself connecting to one of its own addresses (an in-pod client
/// of the pod IP): the source address is then the destination address. Such traffic travels over
/// the loopback device but reports the address's device as its ingress; from outside, a packet
/// with the pod's own address as its source is dropped as a martian before any lookup.
#[inline(always)]
fn is_from_the_pod_itself(f: &LookupFields) -> bool {
    match f.family {
        AF_INET => f.remote_ip4 == f.local_ip4,
        AF_INET6 => f.remote_ip6 == f.local_ip6,
        _ => false,
    }
}

/// Adds one to counter `index` (per CPU: no atomics needed).
#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = TRUEIP_STEER_STATS.get_ptr_mut(index) {
        // SAFETY: the slot is this CPU's value of an existing element; programs do not
        // migrate between CPUs while they run.
        unsafe { *slot += 1 };
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
