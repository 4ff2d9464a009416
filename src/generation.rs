//! The process-wide state of one generation: its phase (serving or draining), the
//! listeners it would hand over, the sockets it inherited, and its readiness.
//!
//! Signals and restarts concern the whole process, so there is one of these, created
//! on first use (as endless's registry is), shared by every server in the process.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::inherit::{Inherited, ProcessEnv};
use crate::notify;
use crate::restart::Exe;
use crate::signals::Hooks;

/// How long a new generation waits for more servers to start before it reports ready,
/// when some inherited socket is still unclaimed (a server may simply not have
/// started yet; or its port was removed in the new version).
const SETTLE: Duration = Duration::from_millis(200);

/// The default deadline for a new generation to report readiness.
pub(crate) const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a generation drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// INT or TERM: the last generation stops; Unix socket files are removed.
    Shutdown,
    /// A new generation took the listeners over.
    Handover,
}

/// What servers of this generation should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    Draining(Drain),
}

impl Phase {
    pub(crate) fn is_draining(self) -> bool {
        matches!(self, Phase::Draining(_))
    }
}

/// A listener as the handover sees it: its name and a duplicate of its descriptor.
struct Handover {
    id: u64,
    name: String,
    fd: OwnedFd,
}

#[derive(Default)]
struct Readiness {
    reported: bool,
    settle: Option<tokio::task::JoinHandle<()>>,
}

/// The process-wide state. See the module docs.
pub(crate) struct Generation {
    phase: watch::Sender<Phase>,
    /// Bumped by SIGUSR2 while draining: every connection closes at once.
    hammer: watch::Sender<u64>,
    listeners: Mutex<Vec<Handover>>,
    inherited: Mutex<Option<Inherited>>,
    readiness: Mutex<Readiness>,
    next_id: AtomicU64,
    restart_in_flight: AtomicBool,
    /// Set the moment the drain begins, before anyone is woken: responses finished from
    /// then on say `Connection: close` (read on every response, hence an atomic).
    draining: AtomicBool,
    /// Set once readiness was reported (to the previous generation, if any): from then
    /// on this generation may itself restart.
    ready: AtomicBool,
    ready_timeout: Mutex<Duration>,
    pub(crate) hooks: Hooks,
    pub(crate) exe: Exe,
}

static GENERATION: OnceLock<Generation> = OnceLock::new();

/// Locks a mutex, shrugging off poisoning: the state behind these locks stays
/// consistent across a panic (each critical section is a few field updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Generation {
    /// The process's generation, created on first use.
    pub(crate) fn get() -> &'static Generation {
        GENERATION.get_or_init(|| Generation {
            phase: watch::Sender::new(Phase::Serving),
            hammer: watch::Sender::new(0),
            listeners: Mutex::new(Vec::new()),
            inherited: Mutex::new(None),
            readiness: Mutex::new(Readiness::default()),
            next_id: AtomicU64::new(1),
            restart_in_flight: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            ready_timeout: Mutex::new(DEFAULT_READY_TIMEOUT),
            hooks: Hooks::default(),
            exe: Exe::capture(),
        })
    }

    /// The sockets inherited at start-up (read from the environment on first use).
    pub(crate) fn inherited(&self) -> MutexGuard<'_, Option<Inherited>> {
        let mut g = lock(&self.inherited);
        if g.is_none() {
            *g = Some(Inherited::from_env(&ProcessEnv));
        }
        g
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn subscribe_hammer(&self) -> watch::Receiver<u64> {
        self.hammer.subscribe()
    }

    /// Registers a serving listener for the handover; returns its id.
    pub(crate) fn register(&self, name: String, fd: OwnedFd) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.listeners).push(Handover { id, name, fd });
        id
    }

    /// Forgets a listener (its server stopped accepting); closes our duplicate.
    pub(crate) fn unregister(&self, id: u64) {
        lock(&self.listeners).retain(|h| h.id != id);
    }

    /// Duplicates of every listener to hand over, with their names.
    pub(crate) fn handover_fds(&self) -> std::io::Result<Vec<(String, OwnedFd)>> {
        lock(&self.listeners)
            .iter()
            .map(|h| Ok((h.name.clone(), h.fd.try_clone()?)))
            .collect()
    }

    /// Starts draining every server. False if the process already drains.
    pub(crate) fn begin_drain(&self, why: Drain) -> bool {
        let started = self.phase.send_if_modified(|p| {
            if *p == Phase::Serving {
                *p = Phase::Draining(why);
                self.draining.store(true, Ordering::Release);
                true
            } else {
                false
            }
        });
        if started {
            // Close our duplicates now, so that (on shutdown) new connections are
            // refused as soon as the servers drop their own listeners.
            lock(&self.listeners).clear();
            if let Some(t) = lock(&self.readiness).settle.take() {
                t.abort();
            }
            if why == Drain::Shutdown {
                notify::stopping();
            }
        }
        started
    }

    /// True from the moment the drain begins (a cheap read for the request path).
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// SIGUSR2: closes every remaining connection at once, if draining.
    pub(crate) fn hammer_now(&self) -> bool {
        if self.phase().is_draining() {
            self.hammer.send_modify(|n| *n += 1);
            true
        } else {
            false
        }
    }

    /// Claims the single restart slot.
    pub(crate) fn try_begin_restart(&self) -> bool {
        !self.restart_in_flight.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_restart(&self) {
        self.restart_in_flight.store(false, Ordering::Release);
    }

    /// True once this generation reported that every server accepts. Until then the
    /// restart that started it is still in progress: its parent waits for the report.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The readiness deadline for the next generation: the largest any server asked for.
    pub(crate) fn ready_timeout(&self) -> Duration {
        *lock(&self.ready_timeout)
    }

    pub(crate) fn set_ready_timeout(&self, d: Duration) {
        let mut t = lock(&self.ready_timeout);
        if *t == DEFAULT_READY_TIMEOUT || d > *t {
            *t = d;
        }
    }

    /// A server of this generation is accepting. When every inherited socket is claimed
    /// the generation is ready at once; otherwise it waits a short settle time after the
    /// last server started, then reports ready and closes what nobody claimed.
    pub(crate) fn server_serving(&'static self) {
        let all_claimed = self
            .inherited()
            .as_ref()
            .is_none_or(|i| i.entries.is_empty());
        let mut r = lock(&self.readiness);
        if r.reported {
            return;
        }
        if let Some(t) = r.settle.take() {
            t.abort();
        }
        if all_claimed {
            drop(r);
            self.report_ready();
        } else {
            r.settle = Some(tokio::spawn(async move {
                tokio::time::sleep(SETTLE).await;
                self.report_ready();
            }));
        }
    }

    fn report_ready(&self) {
        {
            let mut r = lock(&self.readiness);
            if r.reported || self.phase().is_draining() {
                return;
            }
            r.reported = true;
        }
        let (pipe, leftovers, parent) = {
            let mut g = self.inherited();
            let i = g.as_mut().expect("read above");
            (
                i.ready_pipe.take(),
                std::mem::take(&mut i.entries),
                i.parent_pid,
            )
        };
        for e in leftovers {
            tracing::info!(name = ?e.name, addr = %e.actual, "closing an inherited listener no server claimed");
            drop(e.fd);
        }
        notify::ready(parent);
        if let Some(pipe) = pipe {
            use std::io::Write;
            let mut f = std::fs::File::from(pipe);
            let msg = format!("ready {}\n", std::process::id());
            if let Err(e) = f.write_all(msg.as_bytes()) {
                tracing::error!(error = %e, "cannot report readiness to the previous generation");
            }
        }
        // Logged before the flag is set, so in the log this line precedes any restart
        // of this generation.
        tracing::info!(pid = std::process::id(), previous = ?parent, "ready: every server accepts");
        self.ready.store(true, Ordering::Release);
    }
}
