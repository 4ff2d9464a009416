//! What runs in a new process between its fork (or clone) and its exec: the few
//! async-signal-safe steps every way of starting a generation shares (the restart's
//! [`spawn`](super::spawn) and fork, the supervisor's fork): SIGHUP ignored, the
//! descriptors put in place; and for the supervisor's generations, no signal blocked
//! and a process group of their own.
//!
//! Hand-written on `libc`: these steps run where only async-signal-safe calls are
//! allowed, on descriptor numbers the child holds but no Rust value owns (rustix's
//! `dup2` wants an `OwnedFd` target), so `sigaction`, `sigprocmask`, `setpgid`, `fcntl`
//! and `dup2` are called as they are.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;

use crate::handover;

/// In the child, between fork (or clone) and exec: SIGHUP is ignored until the new
/// generation installs its own handler. Without this, a SIGHUP sent while it starts up
/// (meant for the newest generation, say by a deploy script that restarts twice) would
/// kill it by the default action and waste the restart. (The disposition survives exec;
/// the handler installed later replaces it.)
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

/// How a forked generation starts, besides its descriptors.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Setup {
    /// Unblock every signal (a parent that blocks the ones it reads otherwise passes
    /// its mask on).
    pub(crate) unblock_signals: bool,
    /// A process group of its own (`setpgid(0, 0)`).
    pub(crate) own_group: bool,
}

/// Makes `cmd`, once spawned (forked), start a generation: in the child, SIGHUP
/// ignored, `setup` applied, and `sources` put at descriptors 3, 4, … in that order.
pub(crate) fn prepare(cmd: &mut std::process::Command, sources: Vec<RawFd>, setup: Setup) {
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    // SAFETY: the closure runs in the child between fork and exec. It only calls
    // sigemptyset, sigprocmask, sigaction, setpgid, fcntl and dup2 (async-signal-safe),
    // on a set on the stack and descriptors open in the child, writing into vectors
    // allocated before the fork; it neither allocates nor locks.
    unsafe {
        cmd.pre_exec(move || {
            if setup.unblock_signals {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            ignore_sighup()?;
            if setup.own_group && libc::setpgid(0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            handover::place_fds(&mut Kernel, &sources, &mut scratch)
        });
    }
}
