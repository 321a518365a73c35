//! One `SOCK_SEQPACKET` message and the descriptors that travel with it (`SCM_RIGHTS`), for both
//! ends of the agent socket.
//!
//! Receiving is written against libc rather than nix's `recvmsg`: when the control data is
//! truncated (`MSG_CTRUNC`: a sender attached more descriptors than the buffer holds), nix's
//! `cmsgs()` returns an error and the descriptors the kernel did install in this process are
//! never wrapped, so they leak. Here every descriptor the kernel installed is owned, whatever
//! else the message got wrong, and the control buffer holds the kernel's per-message maximum
//! (`SCM_MAX_FD`) so that truncation does not happen in the first place.

use std::{
    io::{self, IoSlice},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`, include/net/scm.h).
const SCM_MAX_FD: usize = 253;

/// Control buffer, in `u64`s so that it is aligned for `cmsghdr`: room for [`SCM_MAX_FD`]
/// descriptors and a `SCM_CREDENTIALS` block, with their headers.
const CMSG_WORDS: usize = 160;

// Header (16) + the descriptors, then a credentials block (header 16 + 12, padded to 32).
const _: () = assert!(CMSG_WORDS * 8 >= 16 + SCM_MAX_FD * size_of::<RawFd>() + 4 + 32);

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// The message's full length (it may exceed the buffer, see [`Received::truncated`]).
    pub len: usize,
    /// The message or its control data did not fit (`MSG_TRUNC` / `MSG_CTRUNC`).
    pub truncated: bool,
    /// Every descriptor the kernel installed for this message, owned: dropping them closes them.
    pub fds: Vec<OwnedFd>,
}

/// Receives one message into `buf` (`MSG_CMSG_CLOEXEC`, plus `dontwait`'s `MSG_DONTWAIT`).
pub fn receive(conn: BorrowedFd<'_>, buf: &mut [u8], dontwait: bool) -> io::Result<Received> {
    let mut control = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; the fields that matter are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // socklen_t with musl, size_t with glibc: the 1280-byte buffer fits either.
    #[allow(
        clippy::useless_conversion,
        reason = "a conversion with musl, none with glibc"
    )]
    let controllen = size_of_val(&control)
        .try_into()
        .expect("the control buffer's length fits msg_controllen");
    msg.msg_controllen = controllen;
    let mut flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: `msg` points at `iov` (which points at `buf`) and at `control`, all live for the
    // call and of the lengths given.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &raw mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let fds = installed_fds(&msg);
    Ok(Received {
        len: n.unsigned_abs(),
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
        fds,
    })
}

/// The descriptors of every `SCM_RIGHTS` block in a message `recvmsg` just filled.
fn installed_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg: msg_control/msg_controllen describe the control data
    // the kernel wrote, which the CMSG_* macros walk without leaving it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a header inside the buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let empty = unsafe { libc::CMSG_LEN(0) } as usize;
            // cmsg_len is socklen_t with musl, size_t with glibc.
            #[allow(
                clippy::useless_conversion,
                reason = "a conversion with musl, none with glibc"
            )]
            let data_len = usize::try_from(header.cmsg_len)
                .unwrap_or(0)
                .saturating_sub(empty);
            // SAFETY: the block's data starts at CMSG_DATA and holds `data_len` bytes of ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            for i in 0..data_len / size_of::<RawFd>() {
                // SAFETY: within the block's data; the ints may be unaligned, hence the read.
                let raw = unsafe {
                    data.add(i * size_of::<RawFd>())
                        .cast::<RawFd>()
                        .read_unaligned()
                };
                // SAFETY: the kernel just installed `raw` in this process for this message;
                // nothing else owns it, so wrapping it closes it exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `cmsg` is a header of `msg`'s control data.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    fds
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`, in order), without blocking when
/// `dontwait` (a peer that does not read must not hold the sender up).
pub fn send(
    conn: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    dontwait: bool,
) -> io::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if dontwait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, flags, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn descriptors_arrive_in_order() {
        let (a, b) = pair();
        let files: Vec<std::fs::File> = (0..3)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let borrowed: Vec<_> = files.iter().map(AsFd::as_fd).collect();
        send(a.as_fd(), b"hello", &borrowed, false).unwrap();
        let mut buf = [0u8; 16];
        let got = receive(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((got.len, got.truncated, got.fds.len()), (5, false, 3));
        assert_eq!(&buf[..5], b"hello");
    }

    #[test]
    fn the_kernels_maximum_arrives_whole() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        let many = vec![file.as_fd(); SCM_MAX_FD];
        send(a.as_fd(), b"x", &many, false).unwrap();
        let mut buf = [0u8; 1];
        let got = receive(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!(got.fds.len(), SCM_MAX_FD);
        assert!(
            !got.truncated,
            "the control buffer holds the kernel's maximum"
        );
    }

    #[test]
    fn an_oversized_message_says_truncated() {
        let (a, b) = pair();
        send(a.as_fd(), &[b'x'; 64], &[], false).unwrap();
        let mut buf = [0u8; 8];
        let got = receive(b.as_fd(), &mut buf, false).unwrap();
        assert!(got.truncated);
        assert_eq!(got.len, 64);
    }

    #[test]
    fn dontwait_does_not_block_on_silence() {
        let (_a, b) = pair();
        let mut buf = [0u8; 8];
        let e = receive(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
