//! Descriptors over a Unix socket (`SCM_RIGHTS`): the supervisor's report channel and
//! the takeover's control connection both send sockets this way.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// sendmsg(2) of `bytes` with `fds` attached; returns how many bytes went (a stream
/// socket may take fewer: the descriptors travel with the first of them).
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE computes a size.
    let space = if raw.is_empty() {
        0
    } else {
        unsafe { libc::CMSG_SPACE(data_len as u32) as usize }
    };
    // u64s, so that the buffer is aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is "no name, no control"; the fields set below point into
    // buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if space > 0 {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(data_len) bytes, so the first
        // header and its data fit.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                raw.len(),
            );
        }
    }
    // SAFETY: msg points to valid buffers for the duration of the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
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
    flags: libc::c_int,
) -> io::Result<Received> {
    // SAFETY: CMSG_SPACE computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = flags | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: msg points to valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR/NXTHDR walk it
    // within msg_controllen, and each SCM_RIGHTS payload holds whole descriptors,
    // now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    for fd in &fds {
        // SAFETY: F_GETFD/F_SETFD only read and set flags of a descriptor we own.
        unsafe {
            let f = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, f | libc::FD_CLOEXEC);
        }
    }
    Ok(Received {
        len: n as usize,
        fds,
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
    })
}

/// The credentials (pid, uid, gid) of the process at the other end of a connected
/// Unix socket; for a socket pair, of the process that created it.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// The user id of the process at the other end of a connected Unix socket.
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        peer_cred(sock).map(|c| c.uid)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let (mut uid, mut gid) = (0, 0);
        // SAFETY: getpeereid writes the two ids.
        if unsafe { libc::getpeereid(sock.as_raw_fd(), &mut uid, &mut gid) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(uid)
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
        let sent = send(a.as_fd(), b"offer\n", &[x.as_fd(), y.as_fd()], 0).unwrap();
        assert_eq!(sent, 6);
        let mut buf = [0u8; 64];
        let got = recv(b.as_fd(), &mut buf, MAX_FDS, 0).unwrap();
        assert_eq!(&buf[..got.len], b"offer\n");
        assert_eq!(got.fds.len(), 2);
        assert!(!got.truncated);
        // They are the same sockets: what goes into x's copy comes out of y.
        let x2 = UnixStream::from(got.fds[0].try_clone().unwrap());
        use std::io::{Read, Write};
        (&x2).write_all(b"!").unwrap();
        let mut one = [0u8; 1];
        (&y).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"!");
        // Both ends are ours now, and the peer is this very user.
        // SAFETY: geteuid has no failure mode.
        assert_eq!(peer_uid(b.as_fd()).unwrap(), unsafe { libc::geteuid() });
        // Too small a control buffer: the descriptors are cut, and it says so.
        // (Three: room for one rounds up to room for two.)
        send(a.as_fd(), b"x", &[x.as_fd(), y.as_fd(), a.as_fd()], 0).unwrap();
        let got = recv(b.as_fd(), &mut buf, 1, 0).unwrap();
        assert!(got.truncated && got.fds.len() < 3);
    }
}
