//! The restore map and its lookup, shared by the getpeername and getsockname programs.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    btf_maps::{HashMap, HashOfMaps},
    helpers::bpf_get_netns_cookie,
    macros::btf_map,
    programs::SockAddrContext,
};
use trueip_redirect_common::{
    ConnKey, Endpoint, MAX_PODS, POD_MAP_FLAGS, POD_MAP_TEMPLATE_ENTRIES, RestoreValue, UserAddr4,
    UserAddr6,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

/// One pod's map: the app side of a sidecar's loopback connection → what the app should see.
type PodMap = HashMap<
    ConnKey,
    RestoreValue,
    { POD_MAP_TEMPLATE_ENTRIES as usize },
    { POD_MAP_FLAGS as usize },
>;

/// netns cookie of a pod → that pod's map. The agent creates the pod maps and inserts them; the
/// name must stay `trueip_redirect_common::RESTORE_MAP`.
#[btf_map]
pub(crate) static TRUEIP_RESTORE: HashOfMaps<u64, PodMap, { MAX_PODS as usize }> =
    HashOfMaps::new();

/// The entry for the socket behind `ctx`, if the socket is the app side of a restored connection.
#[inline(always)]
pub(crate) fn lookup(ctx: &SockAddrContext) -> Option<RestoreValue> {
    // SAFETY: the kernel hands sock_addr programs a valid `bpf_sock_addr`; for getpeername and
    // getsockname its `sk` is the (full) socket being asked about.
    let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the context's socket, checked non-null above.
    let s = unsafe { read_sock(sk) };
    if s.protocol != IPPROTO_TCP {
        return None;
    }
    let key = match s.family {
        AF_INET => ConnKey {
            app: Endpoint::v4(s.src_ip4, s.src_port),
            peer: Endpoint::v4(s.dst_ip4, s.dst_port),
        },
        AF_INET6 => ConnKey {
            app: Endpoint::v6(s.src_ip6, s.src_port),
            peer: Endpoint::v6(s.dst_ip6, s.dst_port),
        },
        _ => return None,
    };
    // SAFETY: the helper only reads the context the kernel passed in.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once, and the kernel keeps the memory of map elements
    // readable for the duration of the program. The one race left is the sidecar removing this
    // connection's entry (it is closing) while the app asks for its peer: the copy may then come
    // from an element being freed, or reused by a concurrent insertion — the same caveat as any
    // BPF hash map lookup, confined to this pod's own map and to a connection being torn down.
    unsafe { TRUEIP_RESTORE.get_value(&cookie, &key) }.copied()
}

/// The fields of `struct bpf_sock` the key is made of, ports in host byte order.
struct SockFields {
    family: u32,
    protocol: u32,
    src_ip4: u32,
    src_ip6: [u32; 4],
    src_port: u16,
    dst_ip4: u32,
    dst_ip6: [u32; 4],
    dst_port: u16,
}

/// Reads every field the key needs, whatever the family, in one straight line.
///
/// The verifier only accepts loads at a constant offset from the socket pointer, 4 bytes at most
/// (2 for `dst_port`). Reading the v4 and v6 fields in separate branches lets the compiler merge
/// the branches' loads into one load from a computed address, which the verifier rejects
/// ("pointer arithmetic on sock prohibited"); volatile loads in a single block cannot be merged,
/// widened or moved. The fields of the other family are readable and simply unused.
///
/// # Safety
/// `sk` must be the non-null `sk` of the program's context.
#[inline(always)]
unsafe fn read_sock(sk: *const bpf_sock) -> SockFields {
    use core::ptr::read_volatile as rv;
    // SAFETY: the caller guarantees `sk` is the context's socket; every read is one field.
    unsafe {
        SockFields {
            family: rv(&raw const (*sk).family),
            protocol: rv(&raw const (*sk).protocol),
            src_ip4: rv(&raw const (*sk).src_ip4),
            src_ip6: [
                rv(&raw const (*sk).src_ip6[0]),
                rv(&raw const (*sk).src_ip6[1]),
                rv(&raw const (*sk).src_ip6[2]),
                rv(&raw const (*sk).src_ip6[3]),
            ],
            // Host byte order, in a u32.
            src_port: rv(&raw const (*sk).src_port) as u16,
            dst_ip4: rv(&raw const (*sk).dst_ip4),
            dst_ip6: [
                rv(&raw const (*sk).dst_ip6[0]),
                rv(&raw const (*sk).dst_ip6[1]),
                rv(&raw const (*sk).dst_ip6[2]),
                rv(&raw const (*sk).dst_ip6[3]),
            ],
            // Network byte order, 16 bits.
            dst_port: u16::from_be(rv(&raw const (*sk).dst_port)),
        }
    }
}

/// Replaces the address an `AF_INET` socket's getpeername/getsockname is about to return.
#[inline(always)]
pub(crate) fn write4(ctx: &SockAddrContext, addr: UserAddr4) {
    // SAFETY: `user_ip4` and `user_port` are writable 4-byte fields of the context for the
    // getpeername4/getsockname4 attach points.
    unsafe {
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_ip4, addr.ip4);
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, addr.port);
    }
}

/// Replaces the address an `AF_INET6` socket's getpeername/getsockname is about to return.
#[inline(always)]
pub(crate) fn write6(ctx: &SockAddrContext, addr: UserAddr6) {
    // SAFETY: `user_ip6[0..4]` and `user_port` are writable 4-byte fields of the context for the
    // getpeername6/getsockname6 attach points; each store is exactly 4 bytes.
    unsafe {
        let words = (&raw mut (*ctx.sock_addr).user_ip6).cast::<u32>();
        core::ptr::write_volatile(words, addr.ip6[0]);
        core::ptr::write_volatile(words.add(1), addr.ip6[1]);
        core::ptr::write_volatile(words.add(2), addr.ip6[2]);
        core::ptr::write_volatile(words.add(3), addr.ip6[3]);
        core::ptr::write_volatile(&raw mut (*ctx.sock_addr).user_port, addr.port);
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
