//! Descriptors: close-on-exec, what kind a descriptor is, and taking ownership of the
//! ones a previous generation (or systemd) handed to this process.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use rustix::fs::FileType;
use rustix::io::FdFlags;

use crate::handover::{self, ProcessEnv};

/// Sets close-on-exec on a descriptor of ours.
pub(crate) fn set_cloexec_owned(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    if !flags.contains(FdFlags::CLOEXEC) {
        rustix::io::fcntl_setfd(fd, flags | FdFlags::CLOEXEC)?;
    }
    Ok(())
}

/// Whether close-on-exec is set on a descriptor (false if it cannot be read).
#[cfg(test)]
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    rustix::io::fcntl_getfd(fd).is_ok_and(|f| f.contains(FdFlags::CLOEXEC))
}

/// What a descriptor is, as far as a handover cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A pipe or FIFO.
    Pipe,
    /// A socket.
    Socket,
    /// Anything else (a file, a memory file, a device).
    Other,
}

/// The kind of `fd` (`Other` if `fstat` fails).
pub(crate) fn kind(fd: BorrowedFd<'_>) -> Kind {
    match rustix::fs::fstat(fd).map(|st| FileType::from_raw_mode(st.st_mode as _)) {
        Ok(FileType::Fifo) => Kind::Pipe,
        Ok(FileType::Socket) => Kind::Socket,
        _ => Kind::Other,
    }
}

/// Whether a socket is listening (`SO_ACCEPTCONN`); `None` where the platform cannot
/// tell (Apple declares the option but does not implement it): then only `accept`
/// shows it.
pub(crate) fn listening(fd: BorrowedFd<'_>) -> io::Result<Option<bool>> {
    #[cfg(not(target_vendor = "apple"))]
    {
        Ok(Some(rustix::net::sockopt::socket_acceptconn(fd)?))
    }
    #[cfg(target_vendor = "apple")]
    {
        let _ = fd;
        Ok(None)
    }
}

/// Sets close-on-exec on an open descriptor number this process was handed (not yet
/// owned by any Rust value), so that nothing started before it is taken leaks it.
fn set_cloexec_number(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: the borrow lives for these two fcntl calls only, which read and set the
    // flags of whatever is open at that number (EBADF if nothing is); no ownership is
    // taken or given up.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    set_cloexec_owned(borrowed)
}

/// The announced descriptors that were open when the process started: recorded before
/// `main` runs (see `RECORD_OPEN_AT_START`), when no code of the process can have opened
/// one at those numbers yet.
static OPEN_AT_START: OnceLock<Vec<RawFd>> = OnceLock::new();

/// The numbers [`take_inherited`] gave out already.
static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

extern "C" fn record_open_at_start() {
    let _ = OPEN_AT_START.set(announced_and_open());
}

// Before `main`. Where that cannot be, the record is made on first use, which is right
// as long as nothing opened a descriptor at an announced number before the process
// owner starts.
super::before_main!(RECORD_OPEN_AT_START, record_open_at_start);

fn open_at_start() -> &'static [RawFd] {
    OPEN_AT_START.get_or_init(announced_and_open)
}

/// The descriptors the environment announces to this process (past the pid guards)
/// that are open, each made close-on-exec at once. Logs nothing: it runs before the
/// application installed a logger; the inheritance reports the problems later.
fn announced_and_open() -> Vec<RawFd> {
    handover::announced(
        &ProcessEnv,
        std::os::unix::process::parent_id(),
        std::process::id(),
    )
    .into_iter()
    .filter(|&fd| set_cloexec_number(fd).is_ok())
    .collect()
}

/// Takes ownership of a descriptor handed to this process: one that was open when the
/// process started and was announced to it, made close-on-exec; each number once.
pub(crate) fn take_inherited(fd: RawFd) -> Result<OwnedFd, String> {
    if !open_at_start().contains(&fd) {
        return Err("never handed over: it was not open when the process started".into());
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if taken.contains(&fd) {
        return Err("taken already".into());
    }
    set_cloexec_number(fd).map_err(|e| format!("not open: {e}"))?;
    taken.push(fd);
    // SAFETY: the number was open when the process started and was announced to this
    // process by its parent (past the pid guard), so it was handed to this process to
    // own: no code of the process opened it, and no Rust value owns it; `TAKEN` makes
    // sure it is taken once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_never_handed_over_is_refused() {
        // A descriptor number far above anything this test process has open.
        assert!(take_inherited(100_000).is_err());
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert!(take_inherited(raw).is_err(), "opened by the process itself");
    }

    #[test]
    fn kinds_and_close_on_exec() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        assert_eq!(kind(r.as_fd()), Kind::Pipe);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(kind(a.as_fd()), Kind::Socket);
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(kind(f.as_fd()), Kind::Other);
        assert!(!is_cloexec(w.as_fd()));
        set_cloexec_owned(w.as_fd()).unwrap();
        assert!(is_cloexec(w.as_fd()));
    }
}
