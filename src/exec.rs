//! What runs in a new process between its fork (or clone) and its exec: the few
//! async-signal-safe steps every way of starting a generation shares (the restart's
//! [`crate::spawn`] and fork, the supervisor's fork): SIGHUP ignored, the descriptors
//! put in place.

use std::io;
use std::os::fd::RawFd;

use crate::handover;

/// In the child, between fork (or clone) and exec: SIGHUP is ignored until the new generation
/// installs its own handler. Without this, a SIGHUP sent while it starts up (meant for
/// the newest generation, say by a deploy script that restarts twice) would kill it by
/// the default action and waste the restart. (The disposition survives exec; the
/// handler installed later replaces it.)
///
/// Async-signal-safe: sigaction only, on a structure on the stack.
pub(crate) fn ignore_sighup() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; sigaction
    // only reads it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_IGN;
        if libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The real descriptor table, for [`handover::place_fds`] in the child between fork and
/// exec: fcntl and dup2 only (async-signal-safe), no allocation.
pub(crate) struct Kernel;

impl handover::FdTable for Kernel {
    fn dup_above(&mut self, fd: RawFd, floor: RawFd) -> io::Result<RawFd> {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; no memory is touched.
        let t = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if t < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(t)
    }

    fn dup_onto(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
        // SAFETY: dup2 onto a descriptor number; the copy does not carry close-on-exec.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
