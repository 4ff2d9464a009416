//! Stable PID: the supervisor.
//!
//! In the re-exec model the pid changes at every restart, and whoever waits for the
//! first process (a shell, `cargo run`, supervisord, a container runtime whose PID 1
//! it is) loses the server at the first SIGHUP. With [`supervise`] (or
//! [`Supervisor::run`]) at the top of `main`, the first process becomes a small
//! supervisor that never returns and never changes; the program itself runs in
//! generations under it, and restarts exactly as without a supervisor.
//!
//! # Design
//! The supervisor reuses the re-exec machinery, which already has readiness and
//! rollback, rather than repeating it:
//! - It makes itself the reaper of its descendants (Linux's child subreaper,
//!   `PR_SET_CHILD_SUBREAPER`; FreeBSD's reaper, `PROC_REAP_ACQUIRE`) and starts generation 1
//!   as its child. A restart is the generation's own: the supervisor forwards SIGHUP to
//!   the current generation, which starts the next one, waits for it to be ready,
//!   commits or rolls back, as always. When an old generation exits, its successor is
//!   re-parented to the supervisor, which reaps every process that ends up its child
//!   (`waitpid(-1)`): old generations, and any orphan, as PID 1 must.
//! - Every generation inherits a report channel to the supervisor (a Unix datagram
//!   socket; its number travels in `CEASELESS_SUPERVISOR`, next to the handover's
//!   descriptors). On it a generation says that it is live, that it committed a
//!   restart to a new pid, that a restart failed, or that it shuts down. So the
//!   supervisor always knows the current generation, and learns of it without
//!   polling.
//! - **How the supervisor learns the sockets** (so that ports may still change across
//!   restarts): each generation, once live, sends its listening sockets up the channel
//!   (`SCM_RIGHTS`, named as in a handover). The supervisor binds nothing and parses no
//!   address: whatever the live generation serves is what it holds, so a release that
//!   adds or drops a port is followed at its first restart, and the supervisor never
//!   needs the application's configuration. It holds those sockets for one purpose: a
//!   generation that dies outside a restart is started again with the very same
//!   sockets (an ordinary handover, with the supervisor as the parent), so the
//!   connections waiting in their accept queues are served, not refused. Until the
//!   first generation is live the supervisor holds only the sockets it was activated
//!   with (below), if any: without them, a generation that dies before it is live is
//!   followed by one that binds afresh.
//! - **Socket activation** (systemd starts the supervisor with `LISTEN_FDS`, and
//!   `LISTEN_PID` names the supervisor, the main process; or a development loop's
//!   `LISTEN_FDS` without `LISTEN_PID`, of which only listening sockets are taken and
//!   anything else is left alone): the supervisor takes the
//!   activated sockets at start, each checked as any inherited one (a listening stream
//!   socket; a bad one is logged as [`Error::InheritedFd`] and closed), and hands them to
//!   generation 1 as an ordinary handover with itself as the parent, as it hands the live
//!   generation's sockets to one it starts after a crash; a generation that dies before
//!   it is live is followed by one that gets them too. `CEASELESS_ACTIVATED` goes along
//!   with the socket unit's names (`LISTEN_FDNAMES`), so the generation takes the
//!   sockets exactly as an activated process would: by `Server::fd_name`, else by
//!   address, with the files of Unix sockets belonging to the service manager (never
//!   unlinked, then or by any later generation). From the first live report on, the
//!   sockets the generation serves are the ones held, as above. The generations never
//!   see `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES`.
//! - A generation that dies outside a restart is started again after a backoff (100 ms,
//!   doubling up to 10 s; reset once a generation stayed live for 10 s), and the log
//!   says why it died. A crash loop sleeps between attempts.
//! - SIGHUP restarts; SIGINT/SIGTERM go to the current generation, which drains (its
//!   hammer time applies); the supervisor closes its copies of the sockets at once (so
//!   the addresses refuse connections as soon as the generation closes its own) and
//!   exits once no generation is left, with the current generation's exit status
//!   (`128 + n` if signal `n` ended it). SIGUSR1, SIGUSR2 and SIGTSTP go to the current
//!   generation, whose hooks run; after SIGTSTP the supervisor stops too (except as PID
//!   1), so a shell gets its prompt back, and forwards SIGCONT when continued.
//! - Generations run in their own process group, so that the terminal's Ctrl-C and
//!   Ctrl-Z reach the supervisor alone, which forwards them once.
//! - The supervisor is the process a service manager tracks: it writes the PID file
//!   (its own pid, once generation 1 is live; removed at the end) and sends systemd's
//!   `READY=1`, `RELOADING=1`, `STOPPING=1`, and at a shutdown `EXTEND_TIMEOUT_USEC=`
//!   every 5 s from 5 s on while generations drain (a generation without a supervisor
//!   sends the same); generations neither write the PID file nor talk to
//!   `NOTIFY_SOCKET` (they do not see it).
//! - It stays small: one thread, no async runtime, a blocking `poll` over its signals,
//!   the report channel and a pidfd of the current generation. On Linux the signals are
//!   read from a signalfd; on FreeBSD, and on Linux in the portable mode
//!   (`CEASELESS_PORTABLE=1`), from a self-pipe their handlers write to. Without a pidfd
//!   (FreeBSD, the portable mode, a kernel before 5.3) the supervisor learns that a
//!   generation exited from SIGCHLD while the generation is its child, and checks every
//!   50 ms while it is not yet (a new generation is its predecessor's child until that
//!   one exits).
//!
//! # Platforms
//! Linux and FreeBSD. macOS has no way for a process to become the reaper of its
//! descendants, and Windows no restarts: there [`Supervisor::run`] logs and returns
//! [`Error::Unsupported`], and starts nothing.
//!
//! # This folder
//! This file (the settings, and whether a supervisor can run), `link` (a generation's
//! end of the report channel) and `run` (the supervisor itself).
//!
//! The bound on draining generations is kept by the generations themselves, in both
//! models (see the `lineage` module); the supervisor passes on the list of draining
//! generations it knows of when it starts a generation itself.

#[cfg(unix)]
mod link;
#[cfg(unix)]
mod run;

#[cfg(unix)]
pub(crate) use link::{link, observe, start};

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// Default [`Supervisor::ready_timeout`]: 30 s.
pub const DEFAULT_SUPERVISOR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The most descriptors one report carries (the kernel's `SCM_MAX_FD`).
#[cfg(unix)]
const MAX_REPORT_FDS: usize = crate::sys::fdpass::MAX_FDS;

/// Makes this process a supervisor with the defaults; see [`Supervisor::run`].
///
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     // First thing, before any runtime or thread starts: in the first process this
///     // supervises and never returns; in a generation it returns at once.
///     ceaseless::supervise()?;
///     tokio::runtime::Runtime::new()?.block_on(async {
///         let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi\n" }));
///         ceaseless::listen_and_serve("127.0.0.1:4242", app).await?;
///         Ok(())
///     })
/// }
/// ```
pub fn supervise() -> Result<(), Error> {
    Supervisor::new().run()
}

/// The stable-PID supervisor: one pid for the life of the service, whatever the restarts.
///
/// [`Supervisor::run`] at the top of `main` makes the first process a small supervisor
/// (one thread, no runtime) that starts the program again as generation 1, makes itself
/// the generations' subreaper, and never returns. Restarts stay the generations' own,
/// with readiness and rollback: SIGHUP to the supervisor is forwarded to the current
/// generation, and the supervisor follows each handover. Each generation, once live,
/// sends its listening sockets up to the supervisor (it binds nothing itself, so ports
/// may change across restarts); a generation that dies outside a restart is started
/// again with those very sockets, after a backoff (100 ms doubling up to 10 s), and the
/// log says why it died. Under socket activation (`LISTEN_PID` names the supervisor, or
/// a development loop's `LISTEN_FDS` comes without it),
/// the activated sockets go to generation 1, which takes them as an activated process
/// would (`Server::fd_name` included).
///
/// SIGINT/SIGTERM are forwarded (the generation drains, its hammer time applies), then
/// the supervisor exits with the current generation's status once every generation is
/// gone; SIGUSR1, SIGUSR2 and SIGTSTP are forwarded too (after SIGTSTP the supervisor
/// stops as well, except as PID 1). As PID 1 of a container it reaps every orphan. The
/// supervisor writes the PID file ([`Supervisor::pid_file`]) and talks to systemd
/// (`READY=1`, `RELOADING=1`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` during a long final
/// drain; never `MAINPID=`); the generations do neither. Generations run in a process
/// group of their own, so a terminal's Ctrl-C and Ctrl-Z reach the supervisor alone.
/// Linux and FreeBSD; on macOS and Windows, [`Supervisor::run`] returns
/// [`Error::Unsupported`].
#[derive(Debug, Clone)]
pub struct Supervisor {
    pid_file: Option<PathBuf>,
    ready_timeout: Duration,
    stop_grace: Duration,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor {
            pid_file: None,
            ready_timeout: DEFAULT_SUPERVISOR_READY_TIMEOUT,
            stop_grace: crate::lifecycle::DEFAULT_STOP_GRACE,
        }
    }
}

impl Supervisor {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A PID file naming the supervisor: written once the first generation is live,
    /// removed when the supervisor exits. (Under a supervisor the generations write
    /// none, whatever [`ProcessBuilder::pid_file`](crate::ProcessBuilder::pid_file)
    /// says.)
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// How long a generation the supervisor starts itself (the first one, or one
    /// started again after a crash) may take to be live before it is stopped and
    /// another tried (default 30 s). Restarts keep the generations' own
    /// [`ProcessBuilder::ready_timeout`](crate::ProcessBuilder::ready_timeout). Must not
    /// be zero.
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// How long such a generation that was not live in time has between SIGTERM and
    /// SIGKILL (default 10 s).
    pub fn stop_grace(mut self, t: Duration) -> Self {
        self.stop_grace = t;
        self
    }

    /// Call first in `main`, before any runtime or thread starts. In a generation
    /// started under a supervisor it returns `Ok(())` at once, and the program runs as
    /// usual: its servers take the sockets handed over. In any other process it becomes
    /// the supervisor: it starts the program again as generation 1 and never returns
    /// (it exits with the status of the last generation); it returns an error only if
    /// it could not start (nothing was started then): [`Error::Unsupported`] on macOS,
    /// which has no subreaper, and Windows, else [`Error::Supervise`]. The supervisor logs through
    /// `tracing`: install the subscriber first.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     ceaseless::Supervisor::new()
    ///         .pid_file("/run/app/app.pid")
    ///         .ready_timeout(Duration::from_secs(60))
    ///         .run()?;
    ///     // Only generations get here.
    ///     tokio::runtime::Runtime::new()?.block_on(async {
    ///         let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi\n" }));
    ///         ceaseless::listen_and_serve("127.0.0.1:4242", app).await?;
    ///         Ok(())
    ///     })
    /// }
    /// ```
    pub fn run(self) -> Result<(), Error> {
        if self.ready_timeout.is_zero() {
            return Err(Error::Setting {
                name: "ready_timeout",
                reason: "zero: no generation could ever start".into(),
            });
        }
        #[cfg(unix)]
        if link().is_some() {
            return Ok(());
        }
        #[cfg(unix)]
        if crate::sys::SUPERVISOR_UNSUPPORTED.is_none() {
            return Err(Error::Supervise(run::run(self)));
        }
        let e = Error::Unsupported {
            what: "the stable-PID supervisor",
            platform: crate::sys::PLATFORM,
        };
        tracing::error!(error = %e, "cannot become the supervisor; nothing was started");
        Err(e)
    }
}

#[cfg(all(unix, feature = "systemd"))]
fn notify(msg: &str) {
    crate::observe::notify::send(msg);
}

#[cfg(all(unix, not(feature = "systemd")))]
fn notify(_msg: &str) {}
