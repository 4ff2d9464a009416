//! The older generations, and the bound on those still draining. Every restart leaves
//! the old generation draining, and long-lived connections (a WebSocket, a stream, a
//! slow client) can keep it around until its hammer time. Quick restarts would pile
//! them up; the bound ([`ProcessBuilder::max_draining`](crate::ProcessBuilder::max_draining))
//! caps how many may drain at once.
//!
//! Each generation is told, in the handover (`CEASELESS_DRAINING`, see
//! [`handover`](crate::handover)), which older generations still drained when it was
//! started, each as a pid and its start time (so that a pid reused by another process
//! is never signalled). When a generation starts the next one it counts those still
//! alive plus itself (it drains once the restart commits); if that exceeds the bound,
//! the oldest beyond it are hammered (`SIGUSR2`, the hammer during a drain) once the
//! restart commits, and the log says so. A restart that fails hammers nothing. The
//! next generation is told of the others. This holds whoever restarts: in the
//! re-exec model and under the supervisor alike, since under the supervisor the
//! generations still restart themselves.

use std::sync::OnceLock;

use crate::handover::ProcessEnv;
use crate::handover::{self, ProcId};
use crate::sys::process::Signal;
use std::os::fd::AsFd;

static TOLD: OnceLock<Vec<ProcId>> = OnceLock::new();

/// A takeover: the older generations the running process named in its offer, before
/// [`init`] (the environment names none: this process was not started by a restart).
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) fn tell(draining: Vec<ProcId>) {
    let _ = TOLD.set(draining);
}

/// The older generations this one was told of at start, oldest first.
fn told() -> &'static [ProcId] {
    TOLD.get_or_init(|| {
        handover::read_draining(&ProcessEnv).unwrap_or_else(|e| {
            tracing::error!(error = %e, "ignoring the list of draining generations");
            Vec::new()
        })
    })
}

/// Reads the list of older generations now, so that a malformed one is logged at start.
pub(crate) fn init() {
    let _ = told();
}

/// This process, or `pid`, as a [`ProcId`]; `None` if it is gone (or a zombie).
pub(crate) fn proc_id(pid: u32) -> Option<ProcId> {
    Some(ProcId {
        pid,
        start: crate::sys::process::start_time(pid)?,
    })
}

/// Whether that very process still runs.
pub(crate) fn alive(id: &ProcId) -> bool {
    proc_id(id.pid).is_some_and(|now| now.start == id.start)
}

/// What a restart does about the draining generations.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// `CEASELESS_DRAINING` for the next generation.
    pub(crate) env: String,
    /// The same, as a list (a takeover's offer carries it).
    pub(crate) kept: Vec<ProcId>,
    /// Hammered once the restart commits, oldest first.
    pub(crate) hammer: Vec<ProcId>,
}

/// Splits `draining` (oldest first, the restarting generation last) into what stays
/// and what is hammered so that at most `max` drain.
pub(crate) fn split(mut draining: Vec<ProcId>, max: usize) -> (Vec<ProcId>, Vec<ProcId>) {
    let excess = draining.len().saturating_sub(max.max(1));
    let kept = draining.split_off(excess);
    (kept, draining)
}

/// The plan for a restart of this generation, with at most `max` generations draining.
pub(crate) fn plan(max: usize) -> Plan {
    let mut draining: Vec<ProcId> = told().iter().filter(|g| alive(g)).copied().collect();
    if let Some(me) = proc_id(std::process::id()) {
        draining.push(me);
    }
    let (kept, hammer) = split(draining, max);
    Plan {
        env: handover::draining_value(&kept),
        kept,
        hammer,
    }
}

/// Hammers the generations of a committed restart's plan. `max` is the bound, for
/// the log.
pub(crate) fn hammer(ids: &[ProcId], max: usize) {
    for id in ids.iter().filter(|id| alive(id)) {
        // Logged first: the hammered generation may be gone a moment after the signal.
        tracing::warn!(
            pid = std::process::id(),
            hammered = id.pid,
            max_draining = max,
            "too many generations draining: hammering the oldest (SIGUSR2)"
        );
        if let Err(e) = signal(id, Signal::USR2) {
            tracing::error!(error = %e, hammered = id.pid, "cannot hammer an old generation");
        }
    }
}

/// Sends `sig` to that very process: false if it is gone. Through a pidfd where there
/// is one, so that the process checked is the one signalled.
pub(crate) fn signal(id: &ProcId, sig: Signal) -> std::io::Result<bool> {
    let pidfd = crate::sys::process::pidfd(id.pid);
    if !alive(id) {
        return Ok(false);
    }
    match pidfd {
        Some(fd) => crate::sys::process::pidfd_signal(fd.as_fd(), sig),
        None => crate::sys::process::kill(id.pid, sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// At most `max` stay (never fewer than one: the restarting generation), the
        /// hammered are the oldest, and nothing is lost or reordered.
        #[test]
        fn the_oldest_beyond_the_bound_are_hammered(n in 0usize..12, max in 0usize..8) {
            let gens: Vec<ProcId> = (0..n as u32).map(|i| ProcId { pid: i + 1, start: i as u64 }).collect();
            let (kept, hammered) = split(gens.clone(), max);
            prop_assert!(kept.len() <= max.max(1));
            prop_assert_eq!(kept.len(), n.min(max.max(1)));
            let mut all = hammered.clone();
            all.extend(&kept);
            prop_assert_eq!(all, gens);
        }
    }

    #[test]
    fn this_process_is_alive_and_its_start_time_is_stable() {
        let me = proc_id(std::process::id()).expect("our own stat");
        assert!(alive(&me));
        assert!(!alive(&ProcId {
            pid: me.pid,
            start: me.start + 1
        }));
    }
}
