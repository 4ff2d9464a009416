//! Processes: who we are, signals to other processes, whether one still runs, and
//! waiting for one that is not our child to exit.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::process::Pid;
pub(crate) use rustix::process::Signal;

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no pid {pid}")))
}

/// Sends `sig` to `pid`: `Ok(false)` if no such process exists (any more).
pub(crate) fn kill(to: u32, sig: Signal) -> io::Result<bool> {
    match rustix::process::kill_process(pid(to)?, sig) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Stops this process (SIGSTOP), as a shell's job control expects after SIGTSTP,
/// before this thread goes on: the signal is raised on this thread (a process-wide one
/// may be taken by another thread while this one runs on).
pub(crate) fn stop_this_thread() {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
}

/// The start time of process `pid` (an identity that a reused pid does not share),
/// `None` if it is gone or a zombie. On Linux from `/proc/<pid>/stat`; elsewhere a
/// process is known by its pid alone (0 for every start time) and a zombie counts as
/// running.
pub(crate) fn start_time(of: u32) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let stat = std::fs::read_to_string(format!("/proc/{of}/stat")).ok()?;
        if stat_is_dead(&stat) {
            return None;
        }
        stat_start_time(&stat)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let target = pid(of).ok()?;
        match rustix::process::test_kill_process(target) {
            Ok(()) | Err(rustix::io::Errno::PERM) => Some(0),
            Err(_) => None,
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android", test))]
/// The start time of a process, from the text of its `/proc/<pid>/stat`: field 22,
/// counted after the command name (which may hold spaces and parentheses).
fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    // After ')': state is field 3, so the start time (22) is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(any(target_os = "linux", target_os = "android", test))]
/// Whether a process is a zombie (or dead), from the text of its `/proc/<pid>/stat`.
fn stat_is_dead(stat: &str) -> bool {
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | Some("x") | None)
}

/// A pidfd for `pid`: a handle that names that very process, readable once it exited.
/// `None` in the portable mode, off Linux, on a kernel without pidfds (before 5.3), or
/// if the process is gone.
pub(crate) fn pidfd(of: u32) -> Option<OwnedFd> {
    if super::portable() {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        rustix::process::pidfd_open(pid(of).ok()?, rustix::process::PidfdFlags::empty()).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = of;
        None
    }
}

/// Sends `sig` through a pidfd (see [`pidfd`]): `Ok(false)` if its process has exited,
/// as [`kill`] says of a pid that is gone.
pub(crate) fn pidfd_signal(fd: BorrowedFd<'_>, sig: Signal) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        match rustix::process::pidfd_send_signal(fd, sig) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, sig);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Completes once `pidfd` (see [`pidfd`]) is readable: its process exited. `Err` if
/// the runtime cannot watch it.
pub(crate) async fn pidfd_exited(pidfd: OwnedFd) -> io::Result<()> {
    // `AsyncFd::with_interest` (deprecated in newer tokio for the `register` this
    // crate's minimum tokio lacks) is sound here: the AsyncFd owns the OwnedFd, which
    // stays open, and the same descriptor, for the AsyncFd's whole life.
    #[allow(deprecated)]
    let afd = tokio::io::unix::AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)?;
    let _ = afd.readable().await?;
    Ok(())
}

/// Completes when process `pid`, this process's parent, has exited: through a pidfd
/// where there is one, else once this process was re-parented (its parent pid changed),
/// checked every 10 ms.
pub(crate) async fn parent_exited(parent: u32) {
    if let Some(fd) = pidfd(parent) {
        if pidfd_exited(fd).await.is_ok() {
            return;
        }
    }
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stat_start_times_are_read_past_any_command_name(
            comm in "[ -~]{0,16}",
            start in any::<u64>(),
        ) {
            let stat = format!(
                "42 ({comm}) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 100"
            );
            prop_assert_eq!(stat_start_time(&stat), Some(start));
            prop_assert!(!stat_is_dead(&stat));
        }

        #[test]
        fn any_stat_text_is_survived(s in "\\PC*") {
            let _ = stat_start_time(&s);
            let _ = stat_is_dead(&s);
        }
    }

    #[test]
    fn a_zombie_is_dead() {
        assert!(stat_is_dead("42 (a b) Z 1"));
        assert!(stat_is_dead("garbage"));
    }

    #[test]
    fn signals_reach_a_process_and_a_gone_one_is_told() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(start_time(child.id()).is_some());
        assert!(kill(child.id(), Signal::TERM).unwrap());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::TERM.as_raw()));
        // Reaped: no such process any more.
        assert!(!kill(child.id(), Signal::TERM).unwrap());
        assert_eq!(start_time(child.id()), None);
        assert!(
            kill(0, Signal::TERM).is_err(),
            "pid 0 is refused, never our group"
        );
    }
}
