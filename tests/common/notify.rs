//! The service manager's side of `sd_notify`, as the tests play it: a datagram socket
//! that receives each message with its sender's pid (`SO_PASSCRED`).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

/// Asks the kernel to attach each sender's credentials to what `sock` receives.
pub fn pass_credentials(sock: &UnixDatagram) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the given size from a live local.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
}

/// The next message on `sock` (set up by [`pass_credentials`]) and its sender's pid
/// (0 if the kernel gave none).
pub fn recv_with_pid(sock: &UnixDatagram) -> io::Result<(u32, String)> {
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 32];
    // SAFETY: an all-zero msghdr is a valid empty header; we then point it at live
    // local buffers of the sizes given.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes within the buffers described by msg.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = 0;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled in; the
    // credentials are read unaligned from within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                pid = cred.pid as u32;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((
        pid,
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
    ))
}
