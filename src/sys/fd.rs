//! Descriptors: close-on-exec, what kind a descriptor is, and taking ownership of the
//! ones a previous generation (or systemd, or a development loop's socket server)
//! handed to this process.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use rustix::fs::FileType;
use rustix::io::FdFlags;

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

/// Whether `fd` is a listening stream socket a server can serve (TCP over IPv4 or IPv6,
/// or a Unix socket bound to a path); why not, if it is not. Reads only: nothing about
/// the descriptor changes. Apple's systems do not implement `SO_ACCEPTCONN`: there a
/// stream socket of those families passes whether it listens or not.
pub(crate) fn listening_stream(fd: BorrowedFd<'_>) -> Result<(), String> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketType};
    if kind(fd) != Kind::Socket {
        return Err("not a socket".into());
    }
    let ty = sockopt::socket_type(fd).map_err(|e| format!("SO_TYPE: {e}"))?;
    if ty != SocketType::STREAM {
        return Err("not a stream socket".into());
    }
    #[cfg(not(target_vendor = "apple"))]
    if !sockopt::socket_acceptconn(fd).map_err(|e| format!("SO_ACCEPTCONN: {e}"))? {
        return Err("not a listening socket".into());
    }
    let local = rustix::net::getsockname(fd).map_err(|e| format!("getsockname: {e}"))?;
    match local.address_family() {
        AddressFamily::INET | AddressFamily::INET6 => Ok(()),
        AddressFamily::UNIX => match SocketAddrUnix::try_from(local) {
            Ok(unix) if unix.path().is_some() => Ok(()),
            _ => Err("an abstract or unnamed Unix socket".into()),
        },
        _ => Err("not a TCP or Unix socket".into()),
    }
}

/// Borrows a descriptor number this process was handed (not owned by any Rust value)
/// for the duration of `f`, which must not close it or keep it.
pub(crate) fn with_number<T>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> T) -> Option<T> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the borrow lives for the call of `f` only, whose calls (fcntl, fstat,
    // getsockopt, getsockname) read or set the flags of whatever is open at that number
    // (EBADF if nothing is); no ownership is taken or given up.
    Some(f(unsafe { BorrowedFd::borrow_raw(fd) }))
}

/// Sets close-on-exec on an open descriptor number this process was handed (not yet
/// owned by any Rust value), so that nothing started before it is taken leaks it.
pub(crate) fn set_cloexec_number(fd: RawFd) -> io::Result<()> {
    with_number(fd, set_cloexec_owned)
        .unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::InvalidInput)))
}

/// What the record made before `main` found among the announced descriptors.
#[derive(Debug, Default)]
struct AtStart {
    /// Open, made close-on-exec: the process may take them.
    open: Vec<RawFd>,
    /// Announced without a pid (a development loop's) but not listening sockets: not
    /// ours, left exactly as they were (not even made close-on-exec), with why.
    refused: Vec<(RawFd, String)>,
}

/// The announced descriptors as they were when the process started: recorded before
/// `main` runs (the inheritance's load-time hook calls [`record_open_at_start`]), when no
/// code of the process can have opened one at those numbers yet.
static OPEN_AT_START: OnceLock<AtStart> = OnceLock::new();

/// The numbers [`take_inherited`] gave out already.
static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Records which of the descriptors the environment announces (`announced`: their
/// numbers, and whether no pid guarded them) are open, making each close-on-exec at
/// once; of a set no pid guards, only listening sockets (the others are left as they
/// are). Once: later calls change nothing. Logs nothing: it runs before the
/// application installed a logger; the inheritance reports the problems later.
pub(crate) fn record_open_at_start(announced: impl FnOnce() -> (Vec<RawFd>, bool)) {
    OPEN_AT_START.get_or_init(|| {
        let (fds, unaddressed) = announced();
        let mut found = AtStart::default();
        for fd in fds {
            if unaddressed {
                match with_number(fd, listening_stream) {
                    Some(Ok(())) => {}
                    Some(Err(reason)) => {
                        found.refused.push((fd, reason));
                        continue;
                    }
                    None => continue,
                }
            }
            if set_cloexec_number(fd).is_ok() {
                found.open.push(fd);
            }
        }
        found
    });
}

/// Takes ownership of a descriptor handed to this process: one that was open when the
/// process started and was announced to it, made close-on-exec; each number once.
pub(crate) fn take_inherited(fd: RawFd) -> Result<OwnedFd, String> {
    let Some(at_start) = OPEN_AT_START.get() else {
        return Err("never handed over: nothing was recorded at start".into());
    };
    if let Some((_, reason)) = at_start.refused.iter().find(|(n, _)| *n == fd) {
        return Err(format!(
            "{reason}; announced without LISTEN_PID, so not ours: left as it is"
        ));
    }
    if !at_start.open.contains(&fd) {
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
    fn only_listening_stream_sockets_pass() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listening_stream(tcp.as_fd()), Ok(()));
        let dir = std::env::temp_dir().join(format!("ceaseless-fd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.join("s")).unwrap();
        assert_eq!(listening_stream(unix.as_fd()), Ok(()));

        let connected = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (pair, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        #[cfg(not(target_vendor = "apple"))]
        assert_eq!(
            listening_stream(connected.as_fd()),
            Err("not a listening socket".to_string())
        );
        #[cfg(target_vendor = "apple")]
        let _ = connected;
        assert_eq!(
            listening_stream(udp.as_fd()),
            Err("not a stream socket".to_string())
        );
        assert!(listening_stream(pair.as_fd()).is_err());
        for fd in [r.as_fd(), file.as_fd()] {
            assert_eq!(listening_stream(fd), Err("not a socket".to_string()));
        }
        let _ = std::fs::remove_dir_all(&dir);
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
