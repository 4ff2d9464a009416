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

/// Where a generation's descriptors begin: 3, 4, … as in systemd's protocol.
pub(crate) const FIRST_FD: RawFd = 3;

/// The descriptor operations [`place_fds`] needs: the kernel's in the child, a model
/// of a descriptor table in the tests.
pub(crate) trait FdTable {
    /// A close-on-exec copy of `fd` at the lowest free number at or above `floor`.
    fn dup_above(&mut self, fd: RawFd, floor: RawFd) -> io::Result<RawFd>;
    /// `dup2(fd, target)`: a copy at `target` (replacing what was there), without
    /// close-on-exec.
    fn dup_onto(&mut self, fd: RawFd, target: RawFd) -> io::Result<()>;
}

/// Puts `sources[i]` at descriptor `3 + i`, without close-on-exec, whatever numbers the
/// sources have (some may already sit in the target range). Every source is first copied
/// above the target range, so that no `dup2` overwrites a source still to be moved; the
/// copies are close-on-exec, and exec closes them.
///
/// Runs in the child between fork and exec: no allocation (`scratch`, as long as
/// `sources`, was allocated before the fork), no panics (indices stay within the
/// slices' lengths), only the table's two operations.
pub(crate) fn place_fds(
    table: &mut impl FdTable,
    sources: &[RawFd],
    scratch: &mut [RawFd],
) -> io::Result<()> {
    let floor = FIRST_FD + sources.len() as RawFd;
    for (src, tmp) in sources.iter().zip(scratch.iter_mut()) {
        *tmp = table.dup_above(*src, floor)?;
    }
    for (target, tmp) in (FIRST_FD..).zip(scratch.iter()) {
        table.dup_onto(*tmp, target)?;
    }
    Ok(())
}

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

/// The real descriptor table, for [`place_fds`] in the child between fork and
/// exec: fcntl and dup2 only (async-signal-safe), no allocation.
pub(crate) struct Kernel;

impl FdTable for Kernel {
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
            place_fds(&mut Kernel, &sources, &mut scratch)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A model of a descriptor table: number -> the open file it refers to.
    struct Model(HashMap<RawFd, u32>);

    impl FdTable for Model {
        fn dup_above(&mut self, fd: RawFd, floor: RawFd) -> io::Result<RawFd> {
            let file = *self.0.get(&fd).ok_or(io::ErrorKind::NotFound)?;
            let free = (floor..).find(|n| !self.0.contains_key(n)).unwrap();
            self.0.insert(free, file);
            Ok(free)
        }
        fn dup_onto(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
            let file = *self.0.get(&fd).ok_or(io::ErrorKind::NotFound)?;
            self.0.insert(target, file);
            Ok(())
        }
    }

    proptest! {
        /// Whatever numbers the sources have (in the target range, above it, out of
        /// order), file i ends up at 3 + i.
        #[test]
        fn fds_land_in_place(numbers in proptest::collection::hash_set(0i32..40, 0..12)) {
            let sources: Vec<RawFd> = numbers.into_iter().collect();
            let mut table = Model(sources.iter().enumerate().map(|(i, fd)| (*fd, i as u32)).collect());
            let mut scratch = vec![-1; sources.len()];
            place_fds(&mut table, &sources, &mut scratch).unwrap();
            for i in 0..sources.len() {
                prop_assert_eq!(table.0.get(&(FIRST_FD + i as RawFd)), Some(&(i as u32)));
            }
        }

    }
}
