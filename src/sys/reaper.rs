//! The stable-PID supervisor's system calls: becoming the reaper of its descendants,
//! reaping them, the signals it takes, the single `poll` its loop blocks in, and its
//! report channel as a generation finds it.
//!
//! - **The reaper**: Linux's child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`), also in
//!   the portable mode; FreeBSD's reaper (`procctl(PROC_REAP_ACQUIRE)`). macOS has
//!   neither: there [`SUPERVISOR_UNSUPPORTED`](super::SUPERVISOR_UNSUPPORTED) names the platform and no supervisor runs.
//! - **Reaping**: `wait(WNOHANG)` for any child, `waitid(WNOWAIT)` to ask whether a
//!   process is a child of ours without reaping it (rustix).
//! - **Signals** ([`Signals`]): on Linux a signalfd (nix), the signals blocked and read
//!   from it; in the portable mode and off Linux signal-hook's self-pipe, a handler per
//!   signal that wakes the loop through a socket pair.
//! - **`poll`**, the readiness pipe (`pipe2` with close-on-exec; a pipe made
//!   close-on-exec right after on macOS, which has no `pipe2`), the socket options of
//!   the report channel: rustix.
//!
//! Hand-written: the report channel is a descriptor *number* a generation was handed
//! (in `CEASELESS_SUPERVISOR`, not among the handover's descriptors), so checking it
//! borrows that number and taking it makes it an `OwnedFd`, which is unsafe by nature
//! ([`unix_datagram_at`], [`super::fd::set_cloexec_number`], [`take_channel`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SocketType;
use rustix::process::{Pid, WaitId, WaitIdOptions, WaitOptions};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use super::process::Signal;

/// Makes this process the reaper of its descendants: an orphan among them (a
/// generation whose parent exited) becomes its child, which it reaps.
pub(crate) fn become_reaper() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        Ok(rustix::process::set_child_subreaper(Some(
            rustix::process::getpid(),
        ))?)
    }
    #[cfg(target_os = "freebsd")]
    {
        Ok(rustix::process::set_reaper_status(true)?)
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no way to become the reaper of descendants on this platform",
        ))
    }
}

/// How a child ended, from its wait status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// Signal number `n` ended it.
    Killed(i32),
    /// Any other wait status, raw.
    Other(i32),
}

/// What [`reap_any`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reaped {
    /// This child exited, and is reaped now.
    Child(u32, Ended),
    /// No child exited (children remain, or the call failed).
    Nothing,
    /// This process has no child at all.
    NoChildren,
}

/// Reaps one child that exited, whichever it is, without blocking (`waitpid(-1,
/// WNOHANG)`).
pub(crate) fn reap_any() -> Reaped {
    match rustix::process::wait(WaitOptions::NOHANG) {
        Ok(Some((pid, status))) => {
            let ended = match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Killed(sig),
                (None, None) => Ended::Other(status.as_raw()),
            };
            Reaped::Child(pid.as_raw_nonzero().get().unsigned_abs(), ended)
        }
        Ok(None) => Reaped::Nothing,
        Err(Errno::CHILD) => Reaped::NoChildren,
        Err(_) => Reaped::Nothing,
    }
}

/// What a process is to this one (see [`child_state`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ChildState {
    /// A child of ours that runs (or is stopped): SIGCHLD tells when it exits.
    Running,
    /// A child of ours that exited and is not reaped yet.
    Exited,
    /// Not a child of ours (or gone).
    NotOurs,
}

/// Whether `pid` is a child of this process, and whether it exited, without reaping it
/// (`waitid(P_PID, WEXITED | WNOHANG | WNOWAIT)`).
pub(crate) fn child_state(pid: u32) -> ChildState {
    let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return ChildState::NotOurs;
    };
    let how = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match rustix::process::waitid(WaitId::Pid(target), how) {
        Ok(None) => ChildState::Running,
        Ok(Some(_)) => ChildState::Exited,
        Err(_) => ChildState::NotOurs,
    }
}

/// Blocks until one of `fds` (those that are `Some`) is readable, has hung up or
/// failed, or `timeout` passed (`None`: no timeout); says which, in the order given. A
/// signal handler that ran meanwhile makes it fail with `Interrupted`.
pub(crate) fn wait_readable<const N: usize>(
    fds: [Option<BorrowedFd<'_>>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .flatten()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let timeout = timeout
        .map(|t| Timespec::try_from(t).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput)))
        .transpose()?;
    rustix::event::poll(&mut polled, timeout.as_ref())?;
    let mut ready = [false; N];
    let mut results = polled.iter().map(|p| !p.revents().is_empty());
    for (slot, fd) in ready.iter_mut().zip(&fds) {
        if fd.is_some() {
            *slot = results.next().unwrap_or(false);
        }
    }
    Ok(ready)
}

/// A pipe (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    {
        Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
    }
    #[cfg(target_vendor = "apple")]
    {
        // No pipe2: set right after (the supervisor runs one thread, none forks between).
        let (r, w) = rustix::pipe::pipe()?;
        super::fd::set_cloexec_owned(r.as_fd())?;
        super::fd::set_cloexec_owned(w.as_fd())?;
        Ok((r, w))
    }
}

/// The signals the supervisor takes, delivered to it through a descriptor its loop
/// polls (see [`Signals::fd`]) instead of by their default actions.
pub(crate) struct Signals(Source);

enum Source {
    /// Linux outside the portable mode: the signals are blocked and read from a
    /// signalfd. A process started from here must unblock them.
    #[cfg(target_os = "linux")]
    Fd(nix::sys::signalfd::SignalFd),
    /// signal-hook's self-pipe: a handler per signal marks it pending and writes to a
    /// socket pair whose other end is polled.
    Pipe(SignalDelivery<UnixStream, SignalOnly>),
}

impl Signals {
    /// Takes `signals` from now on: a signalfd on Linux, signal-hook's self-pipe in the
    /// portable mode and elsewhere. Call before any thread starts.
    pub(crate) fn take(signals: &[Signal]) -> io::Result<Signals> {
        #[cfg(target_os = "linux")]
        if !super::portable() {
            use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
            use nix::sys::signalfd::{SfdFlags, SignalFd};
            let mut set = SigSet::empty();
            for s in signals {
                set.add(nix::sys::signal::Signal::try_from(s.as_raw())?);
            }
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
            let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
            return Ok(Signals(Source::Fd(fd)));
        }
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        let numbers: Vec<i32> = signals.iter().map(|s| s.as_raw()).collect();
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, numbers)?;
        Ok(Signals(Source::Pipe(delivery)))
    }

    /// The descriptor to poll: readable when a signal is pending.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match &self.0 {
            #[cfg(target_os = "linux")]
            Source::Fd(fd) => fd.as_fd(),
            Source::Pipe(delivery) => delivery.get_read().as_fd(),
        }
    }

    /// The signals received since the last call, without blocking (a signal that came
    /// twice meanwhile may be told once, as the kernel merges a pending one).
    pub(crate) fn pending(&mut self) -> Vec<Signal> {
        let mut got = Vec::new();
        match &mut self.0 {
            #[cfg(target_os = "linux")]
            Source::Fd(fd) => {
                while let Ok(Some(info)) = fd.read_signal() {
                    let sig = i32::try_from(info.ssi_signo)
                        .ok()
                        .and_then(Signal::from_named_raw);
                    got.extend(sig);
                }
            }
            Source::Pipe(delivery) => {
                got.extend(delivery.pending().filter_map(Signal::from_named_raw));
            }
        }
        got
    }
}

// ---------------------------------------------------------------------------------------
// A generation's side: the report channel it was handed
// ---------------------------------------------------------------------------------------

/// Whether descriptor number `fd` is a Unix datagram socket; if so, the pid of the
/// process that created it (a socket pair's) where the platform tells (Linux). `Err`
/// says what it is instead.
pub(crate) fn unix_datagram_at(fd: RawFd) -> Result<Option<u32>, String> {
    super::fd::with_number(fd, |sock| {
        let kind = rustix::net::sockopt::socket_type(sock)
            .map_err(|e| format!("not a socket: {}", io::Error::from(e)))?;
        if kind != SocketType::DGRAM {
            return Err("not a datagram socket".to_string());
        }
        // (Apple has no SO_DOMAIN; no supervisor runs there, see SUPERVISOR_UNSUPPORTED.)
        #[cfg(not(target_vendor = "apple"))]
        {
            let domain = rustix::net::sockopt::socket_domain(sock)
                .map_err(|e| format!("not a socket: {}", io::Error::from(e)))?;
            if domain != rustix::net::AddressFamily::UNIX {
                return Err("not a Unix socket".to_string());
            }
        }
        super::fdpass::peer_pid(sock).map_err(|e| format!("no peer: {e}"))
    })
    .unwrap_or_else(|| Err("not a descriptor number".to_string()))
}

/// Whether descriptor number `fd` is a supervisor's report channel: a Unix datagram
/// socket, created by `supervisor` where the platform tells who created it (a socket
/// pair carries its creator's credentials on Linux; FreeBSD does not say). Never where
/// no supervisor runs ([`SUPERVISOR_UNSUPPORTED`](super::SUPERVISOR_UNSUPPORTED)).
pub(crate) fn is_channel(fd: RawFd, supervisor: Option<u32>) -> Result<(), String> {
    if let Some(platform) = super::SUPERVISOR_UNSUPPORTED {
        return Err(format!("no supervisor runs on {platform}"));
    }
    let creator = unix_datagram_at(fd)?;
    match (supervisor, creator) {
        (Some(sup), Some(pid)) if pid != sup => {
            Err(format!("created by pid {pid}, not by the supervisor {sup}"))
        }
        _ => Ok(()),
    }
}

/// Whether the channel was taken already.
static CHANNEL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the report channel that the environment announced to this
/// process at descriptor number `fd`, from `supervisor`: once it is checked to be one
/// ([`is_channel`]); once per process.
pub(crate) fn take_channel(fd: RawFd, supervisor: u32) -> Result<OwnedFd, String> {
    is_channel(fd, Some(supervisor))?;
    if CHANNEL_TAKEN.swap(true, Ordering::SeqCst) {
        return Err("taken already".into());
    }
    // SAFETY: the number was announced to this process as its supervisor's channel and
    // is the socket pair end the supervisor created (checked above): it was handed to
    // this process to own, no code of the process opened it and no Rust value owns it;
    // `CHANNEL_TAKEN` makes sure it is taken once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_unix_datagram_socket_is_told_from_other_descriptors() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert_eq!(
            unix_datagram_at(a.as_raw_fd()),
            Ok(Some(std::process::id()))
        );
        let (s, _t) = UnixStream::pair().unwrap();
        assert!(unix_datagram_at(s.as_raw_fd()).is_err());
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(unix_datagram_at(f.as_raw_fd()).is_err());
        assert!(unix_datagram_at(-1).is_err());
    }

    #[test]
    fn a_child_is_told_running_then_exited_then_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert_eq!(child_state(pid), ChildState::Running);
        assert_eq!(child_state(1), ChildState::NotOurs);
        super::super::process::kill(pid, Signal::KILL).unwrap();
        // Exited, and still there to reap: asking does not reap it.
        while child_state(pid) == ChildState::Running {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(child_state(pid), ChildState::Exited);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::KILL.as_raw()));
        assert_eq!(child_state(pid), ChildState::NotOurs);
    }

    #[test]
    fn polling_says_which_descriptor_is_readable() {
        let (r, w) = pipe().unwrap();
        let (r2, _w2) = pipe().unwrap();
        let none = wait_readable(
            [Some(r.as_fd()), None, Some(r2.as_fd())],
            Some(Duration::ZERO),
        );
        assert_eq!(none.unwrap(), [false; 3]);
        rustix::io::write(&w, b"x").unwrap();
        let ready = wait_readable([None, Some(r.as_fd()), Some(r2.as_fd())], None).unwrap();
        assert_eq!(ready, [false, true, false]);
    }
}
