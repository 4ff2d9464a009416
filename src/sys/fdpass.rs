//! Descriptors over a Unix socket (`SCM_RIGHTS`): the supervisor's report channel and
//! the takeover's control connection both send sockets this way. rustix builds and
//! walks the control messages; received descriptors are close-on-exec
//! (`MSG_CMSG_CLOEXEC` where the kernel has it, else set right after).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Whether a call may block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Blocks until the socket can take (or has) a message.
    #[cfg_attr(not(feature = "control"), allow(dead_code))]
    Block,
    /// Fails with `WouldBlock` instead (`MSG_DONTWAIT`).
    DontWait,
}

/// sendmsg(2) of `bytes` with `fds` attached; returns how many bytes went (a stream
/// socket may take fewer: the descriptors travel with the first of them).
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    wait: Wait,
) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let mut flags = SendFlags::empty();
    if wait == Wait::DontWait {
        flags |= SendFlags::DONTWAIT;
    }
    // A peer gone must be an error, not SIGPIPE (Apple has no MSG_NOSIGNAL; Rust
    // programs ignore SIGPIPE there anyway).
    #[cfg(not(target_vendor = "apple"))]
    {
        flags |= SendFlags::NOSIGNAL;
    }
    Ok(rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        flags,
    )?)
}

/// What one recvmsg(2) got.
pub(crate) struct Received {
    /// Bytes read into the buffer.
    pub(crate) len: usize,
    /// The descriptors attached, now ours (close-on-exec).
    pub(crate) fds: Vec<OwnedFd>,
    /// The data or the descriptors did not all fit.
    pub(crate) truncated: bool,
}

/// recvmsg(2) into `buf`, taking up to `max_fds` descriptors attached.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    wait: Wait,
) -> io::Result<Received> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::empty();
    if wait == Wait::DontWait {
        flags |= RecvFlags::DONTWAIT;
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        flags |= RecvFlags::CMSG_CLOEXEC;
    }
    let got = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for fd in &fds {
        super::fd::set_cloexec_owned(std::os::fd::AsFd::as_fd(fd))?;
    }
    // The control buffer is padded for alignment, so it may hold a few more than
    // `max_fds`: those are closed, and the message counts as cut all the same.
    let over = fds.len() > max_fds;
    fds.truncate(max_fds);
    Ok(Received {
        len: got.bytes,
        fds,
        truncated: over
            || got
                .flags
                .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC),
    })
}

/// The user id of the process at the other end of a connected Unix socket.
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Ok(rustix::net::sockopt::socket_peercred(sock)?.uid.as_raw())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Ok(nix::unistd::getpeereid(sock)?.0.as_raw())
    }
}

/// The pid of the process at the other end of a connected Unix socket (for a socket
/// pair, of the process that created it); `None` where the platform does not tell
/// (FreeBSD).
pub(crate) fn peer_pid(sock: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let pid = rustix::net::sockopt::socket_peercred(sock)?.pid;
        Ok(Some(pid.as_raw_nonzero().get().unsigned_abs()))
    }
    #[cfg(target_vendor = "apple")]
    {
        let pid = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::LocalPeerPid)?;
        Ok(u32::try_from(pid).ok())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    {
        let _ = sock;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        let sent = send(a.as_fd(), b"offer\n", &[x.as_fd(), y.as_fd()], Wait::Block).unwrap();
        assert_eq!(sent, 6);
        let mut buf = [0u8; 64];
        let got = recv(b.as_fd(), &mut buf, MAX_FDS, Wait::Block).unwrap();
        assert_eq!(&buf[..got.len], b"offer\n");
        assert_eq!(got.fds.len(), 2);
        assert!(!got.truncated);
        for fd in &got.fds {
            assert!(
                super::super::fd::is_cloexec(fd.as_fd()),
                "received without close-on-exec"
            );
        }
        // They are the same sockets: what goes into x's copy comes out of y.
        let x2 = UnixStream::from(got.fds[0].try_clone().unwrap());
        use std::io::{Read, Write};
        (&x2).write_all(b"!").unwrap();
        let mut one = [0u8; 1];
        (&y).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"!");
        // Both ends are ours now, and the peer is this very user and process.
        assert_eq!(peer_uid(b.as_fd()).unwrap(), super::super::process::euid());
        assert_eq!(peer_pid(b.as_fd()).unwrap(), Some(std::process::id()));
        // Nothing waiting: a non-blocking receive says so.
        let none = recv(b.as_fd(), &mut buf, 1, Wait::DontWait)
            .err()
            .map(|e| e.kind());
        assert_eq!(none, Some(io::ErrorKind::WouldBlock));
        // More descriptors than asked for: they are cut, and it says so.
        send(
            a.as_fd(),
            b"x",
            &[x.as_fd(), y.as_fd(), a.as_fd()],
            Wait::Block,
        )
        .unwrap();
        let got = recv(b.as_fd(), &mut buf, 1, Wait::Block).unwrap();
        assert!(got.truncated && got.fds.len() <= 1);
        // And far more than the buffer holds: the kernel cuts them.
        let many: Vec<BorrowedFd<'_>> = std::iter::repeat_n(x.as_fd(), 40).collect();
        send(a.as_fd(), b"y", &many, Wait::Block).unwrap();
        let got = recv(b.as_fd(), &mut buf, 2, Wait::Block).unwrap();
        assert!(got.truncated && got.fds.len() <= 2);
    }
}
