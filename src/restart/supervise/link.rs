//! A generation's side of the supervisor: its end of the report channel, and the
//! reports it sends at each transition of its process owner.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::MAX_REPORT_FDS;
use crate::error::Error;
use crate::handover::ProcessEnv;
use crate::handover::{self, Name, Report};
use crate::lifecycle::Transition;

/// This generation's end of the report channel to its supervisor.
pub(crate) struct Link {
    supervisor: u32,
    fd: OwnedFd,
}

static LINK: OnceLock<Option<Link>> = OnceLock::new();
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The supervisor's channel, if this process is a generation under one.
pub(crate) fn link() -> Option<&'static Link> {
    LINK.get_or_init(|| Link::from_env(&ProcessEnv)).as_ref()
}

/// The process owner starts: remembers the generation number for the reports, and says
/// whether a supervisor runs this process.
pub(crate) fn start(generation: u64) -> bool {
    GENERATION.store(generation, Ordering::Relaxed);
    link().is_some()
}

// Runs at load time, before `main`, on the ELF systems (`.init_array`); no supervisor
// runs elsewhere.
extern "C" fn cloexec_at_start() {
    // The channel must not leak into whatever the application starts before the
    // process owner takes it: close-on-exec before `main` runs.
    if let Ok(Some((_, fd))) = handover::read_supervisor(&ProcessEnv) {
        if crate::sys::reaper::is_channel(fd, None).is_ok() {
            let _ = crate::sys::fd::set_cloexec_number(fd);
        }
    }
}

crate::sys::before_main!(CLOEXEC_AT_START, cloexec_at_start);

impl Link {
    fn from_env(env: &dyn handover::Env) -> Option<Link> {
        let (supervisor, fd) = match handover::read_supervisor(env) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "ignoring the supervisor's channel");
                return None;
            }
        };
        match crate::sys::reaper::take_channel(fd, supervisor) {
            Ok(fd) => Some(Link { supervisor, fd }),
            Err(reason) => {
                // Stale: a subprocess of a generation, say. Not ours to close.
                tracing::debug!(
                    error = %Error::InheritedFd { fd, name: handover::ENV_SUPERVISOR.into(), reason },
                    "not under a supervisor"
                );
                None
            }
        }
    }

    /// The supervisor's pid.
    pub(crate) fn supervisor(&self) -> u32 {
        self.supervisor
    }

    /// The channel's descriptor, to hand to the next generation.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends one report, with descriptors; never blocks. Failures are logged.
    fn send(&self, report: &Report, fds: &[BorrowedFd<'_>]) {
        if let Err(e) = send_report(self.fd.as_fd(), report.encode().as_bytes(), fds) {
            tracing::warn!(error = %e, supervisor = self.supervisor, "cannot report to the supervisor");
        }
    }
}

/// Tells the supervisor (if any) of a transition of the process owner. `registry`: the
/// descriptors this generation would hand over, under their names.
pub(crate) fn observe<'a>(
    t: &Transition<'_>,
    registry: impl Iterator<Item = (&'a Name, BorrowedFd<'a>)>,
) {
    let Some(link) = link() else { return };
    let pid = std::process::id();
    let mut fds = Vec::new();
    let report = match t {
        Transition::Ready { first: true } | Transition::Live | Transition::RolledBack { .. } => {
            let mut names = Vec::new();
            for (name, fd) in registry.take(MAX_REPORT_FDS) {
                names.push(name.clone());
                fds.push(fd);
            }
            let Some(id) = crate::handover::lineage::proc_id(pid) else {
                return;
            };
            Report::Live {
                id,
                generation: GENERATION.load(Ordering::Relaxed),
                names,
            }
        }
        Transition::Committed { new_pid } => Report::Committed {
            pid,
            new_pid: *new_pid,
        },
        // Handing the service back to the parked generation commits to it, as a
        // restart does to a new one.
        Transition::HandedBack { to_pid, .. } => Report::Committed {
            pid,
            new_pid: *to_pid,
        },
        Transition::Parked { ms } => Report::Parked { pid, ms: *ms },
        Transition::RestartFailed(_) => Report::RestartFailed { pid },
        Transition::ShutdownBegun { live: true } => Report::Stopping { pid },
        _ => return,
    };
    link.send(&report, &fds);
}

/// sendmsg(2) of one datagram with `fds` attached, without blocking.
fn send_report(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    crate::sys::fdpass::send(sock, bytes, fds, crate::sys::fdpass::Wait::DontWait).map(drop)
}
