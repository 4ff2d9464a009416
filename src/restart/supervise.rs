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
//! descendants: there [`Supervisor::run`] logs and returns [`Error::Unsupported`], and
//! starts nothing.
//!
//! The bound on draining generations is kept by the generations themselves, in both
//! models (see the `lineage` module); the supervisor passes on the list of draining
//! generations it knows of when it starts a generation itself.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::Error;
use crate::handover::ProcessEnv;
use crate::handover::{self, Name, Report};
use crate::lifecycle::Transition;

/// Default [`Supervisor::ready_timeout`]: 30 s.
pub const DEFAULT_SUPERVISOR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The most descriptors one report carries (the kernel's `SCM_MAX_FD`).
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
/// Linux and FreeBSD; on macOS, [`Supervisor::run`] returns [`Error::Unsupported`].
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
    /// which has no subreaper, else [`Error::Supervise`]. The supervisor logs through
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
        if link().is_some() {
            return Ok(());
        }
        if let Some(platform) = crate::sys::SUPERVISOR_UNSUPPORTED {
            let e = Error::Unsupported {
                what: "the stable-PID supervisor",
                platform,
            };
            tracing::error!(error = %e, "cannot become the supervisor; nothing was started");
            return Err(e);
        }
        Err(Error::Supervise(sys::run(self)))
    }
}

// ---------------------------------------------------------------------------------------
// A generation's side: the report channel
// ---------------------------------------------------------------------------------------

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
        Transition::Ready { first: true } | Transition::Live => {
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

#[cfg(feature = "systemd")]
fn notify(msg: &str) {
    crate::observe::notify::send(msg);
}

#[cfg(not(feature = "systemd"))]
fn notify(_msg: &str) {}

// ---------------------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------------------

mod sys {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{notify, Supervisor, MAX_REPORT_FDS};
    use crate::handover::lineage::{self, proc_id};
    use crate::handover::{self, Name, ProcId, Report, FIRST_FD};
    use crate::observe::notify::EXTEND_EVERY;
    use crate::restart::Exe;
    use crate::sys::process::{pidfd, pidfd_signal, Signal};
    use crate::sys::reaper::{self, ChildState, Ended, Reaped, Signals};

    const BACKOFF_FIRST: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_secs(10);
    /// A generation live this long ends a crash loop: the next crash restarts quickly.
    const STABLE: Duration = Duration::from_secs(10);
    /// How often the current generation is checked when neither a pidfd nor SIGCHLD
    /// tells the supervisor of its exit (the portable mode, off Linux, or a kernel
    /// without pidfds, while the generation is not the supervisor's child yet).
    const CHECK_EVERY: Duration = Duration::from_millis(50);
    /// The signals the supervisor takes (see [`Signals`]).
    const TAKEN: [Signal; 9] = [
        Signal::HUP,
        Signal::INT,
        Signal::TERM,
        Signal::USR1,
        Signal::USR2,
        Signal::TSTP,
        Signal::CONT,
        Signal::CHILD,
        Signal::QUIT,
    ];

    /// A generation, as the supervisor follows it.
    struct Gen {
        id: ProcId,
        /// Readable once it exits, whoever its parent is.
        pidfd: Option<OwnedFd>,
        /// When it said it is live; `None` before.
        live_since: Option<Instant>,
        /// A generation the supervisor started: stopped if not live by then.
        deadline: Option<Instant>,
        /// It was sent SIGTERM for missing its deadline.
        terminated: bool,
        /// The read end of its readiness pipe, kept open until it is live.
        ready: Option<OwnedFd>,
    }

    impl Gen {
        fn follow(pid: u32, start: Option<u64>) -> Option<Gen> {
            let pidfd = pidfd(pid);
            let id = proc_id(pid)?;
            if start.is_some_and(|s| s != id.start) {
                return None; // gone, and its pid taken by another process
            }
            Some(Gen {
                id,
                pidfd,
                live_since: None,
                deadline: None,
                terminated: false,
                ready: None,
            })
        }

        fn signal(&self, sig: Signal) {
            // A generation already gone is no failure (`Ok(false)`).
            let r = match &self.pidfd {
                Some(fd) => pidfd_signal(fd.as_fd(), sig),
                None => lineage::signal(&self.id, sig),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, generation_pid = self.id.pid, signal = sig.as_raw(), "cannot signal the generation");
            }
        }
    }

    struct Sup {
        cfg: Supervisor,
        me: u32,
        exe: Exe,
        signals: Signals,
        reports: UnixDatagram,
        /// The generations' end of the report channel.
        theirs: UnixDatagram,
        current: Option<Gen>,
        /// Generations that handed over (possibly still draining), oldest first.
        older: Vec<ProcId>,
        /// The live generation's sockets; before any was live, the sockets systemd
        /// activated the supervisor with.
        listeners: Vec<(Name, OwnedFd)>,
        /// The socket unit's names of `listeners` while they are the activated sockets
        /// (empty once a generation was live): relayed with them.
        activated: Vec<Option<String>>,
        /// The live generation's number.
        generation: u64,
        next_start: Option<Instant>,
        failures: u32,
        stopping: bool,
        reloading: bool,
        /// While stopping: when to ask the service manager for more time next.
        extend_at: Option<Instant>,
        ever_live: bool,
        /// How the current generation ended, when the supervisor reaped it.
        final_status: Option<Ended>,
        no_children: bool,
    }

    /// Becomes the supervisor; returns only if it could not start.
    pub(super) fn run(cfg: Supervisor) -> io::Error {
        match setup(cfg) {
            Ok(mut s) => loop {
                s.step();
            },
            Err(e) => e,
        }
    }

    fn setup(cfg: Supervisor) -> io::Result<Sup> {
        let me = std::process::id();
        reaper::become_reaper()?;
        let signals = Signals::take(&TAKEN)?;
        let (reports, theirs) = UnixDatagram::pair()?;
        reports.set_nonblocking(true)?;
        let (listeners, activated) = activated_sockets(me);
        let mut s = Sup {
            cfg,
            me,
            exe: Exe::capture(),
            signals,
            reports,
            theirs,
            current: None,
            older: Vec::new(),
            listeners,
            activated,
            generation: 1,
            next_start: None,
            failures: 0,
            stopping: false,
            reloading: false,
            extend_at: None,
            ever_live: false,
            final_status: None,
            no_children: false,
        };
        s.start_generation()?;
        Ok(s)
    }

    /// The sockets systemd activated the supervisor with (`LISTEN_PID` names it), each
    /// checked as a process checks what it inherits (a bad one is logged and closed),
    /// with the socket unit's names: what its generations are to serve.
    #[cfg(feature = "systemd")]
    fn activated_sockets(me: u32) -> (Vec<(Name, OwnedFd)>, Vec<Option<String>>) {
        use crate::handover::inherit::{Announced, Inherited};
        use crate::handover::ProcessEnv;
        let mut listeners = Vec::new();
        let mut names = Vec::new();
        for e in Inherited::activated(&ProcessEnv).entries {
            let managed = e.managed();
            let name = match e.announced {
                Announced::Systemd(n) => n,
                Announced::Parent(_) => None,
            };
            tracing::info!(pid = me, addr = %e.actual, name = name.as_deref().unwrap_or("-"), "supervisor: socket activation: the generations serve this socket");
            listeners.push((
                Name::Listener {
                    addr: e.actual,
                    managed,
                },
                e.fd,
            ));
            names.push(name);
        }
        (listeners, names)
    }

    #[cfg(not(feature = "systemd"))]
    fn activated_sockets(_me: u32) -> (Vec<(Name, OwnedFd)>, Vec<Option<String>>) {
        (Vec::new(), Vec::new())
    }

    impl Sup {
        fn step(&mut self) {
            let now = Instant::now();
            let deadline = [
                self.next_start,
                self.current.as_ref().and_then(|g| g.deadline),
                self.extend_at,
                self.unwatched().then(|| now + CHECK_EVERY),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| {
                d.saturating_duration_since(now)
                    .min(Duration::from_secs(60))
                    + Duration::from_millis(1)
            });
            let followed = self.current.as_ref().map(|g| g.id.pid);
            let pidfd = self
                .current
                .as_ref()
                .and_then(|g| g.pidfd.as_ref())
                .map(|fd| fd.as_fd());
            let ready = match reaper::wait_readable(
                [Some(self.signals.fd()), Some(self.reports.as_fd()), pidfd],
                timeout,
            ) {
                Ok(ready) => ready,
                Err(e) => {
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::error!(error = %e, "supervisor: poll failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return;
                }
            };
            if ready[1] {
                self.read_reports();
            }
            if ready[0] {
                self.read_signals();
            }
            self.reap();
            if ready[2] {
                if let Some(pid) = followed {
                    self.gone(pid, None);
                }
            }
            // Without a pidfd: whether it still runs (see `unwatched`).
            if let Some(g) = self.current.as_ref().filter(|g| g.pidfd.is_none()) {
                if !lineage::alive(&g.id) {
                    let pid = g.id.pid;
                    self.gone(pid, None);
                }
            }
            let now = Instant::now();
            if self.next_start.is_some_and(|t| t <= now) {
                self.next_start = None;
                if let Err(e) = self.start_generation() {
                    tracing::error!(pid = self.me, error = %e, path = %self.exe.path.display(), "cannot start a generation");
                    self.schedule_start("it could not be started".into());
                }
            }
            self.check_deadline(now);
            if self.extend_at.is_some_and(|t| t <= now) {
                // The generations drain (within their hammer time): the service manager's
                // stop timeout must not kill them first, nor us.
                self.extend_at = Some(now + EXTEND_EVERY);
                notify(&crate::observe::notify::extend_timeout());
            }
            if self.stopping && self.no_children {
                self.exit();
            }
        }

        fn read_signals(&mut self) {
            for sig in self.signals.pending() {
                self.on_signal(sig);
            }
        }

        /// Whether the current generation's exit would go unnoticed without a check
        /// every [`CHECK_EVERY`]: no pidfd watches it, and it is not a running child of
        /// ours (whose exit SIGCHLD tells). A generation that committed a restart is the
        /// next one's parent until it exits; then the next one is re-parented to us.
        fn unwatched(&self) -> bool {
            self.current.as_ref().is_some_and(|g| {
                g.pidfd.is_none() && reaper::child_state(g.id.pid) != ChildState::Running
            })
        }

        fn on_signal(&mut self, sig: Signal) {
            let name = signal_name(sig.as_raw());
            if sig == Signal::CHILD {
                return; // reaped in every step
            }
            tracing::info!(pid = self.me, signal = name, "supervisor: received signal");
            match sig {
                Signal::HUP => {
                    if self.stopping {
                        tracing::info!(pid = self.me, "supervisor: shutting down; SIGHUP ignored");
                        return;
                    }
                    match &self.current {
                        Some(g) if g.live_since.is_some() => {
                            tracing::info!(
                                pid = self.me,
                                generation_pid = g.id.pid,
                                "supervisor: restart: SIGHUP to the current generation"
                            );
                            if !self.reloading {
                                self.reloading = true;
                                notify(&format!(
                                    "RELOADING=1\nMONOTONIC_USEC={}",
                                    crate::sys::clock::mono_us()
                                ));
                            }
                            g.signal(Signal::HUP);
                        }
                        _ => tracing::warn!(
                            pid = self.me,
                            "supervisor: no live generation to restart; SIGHUP ignored"
                        ),
                    }
                }
                Signal::INT | Signal::TERM | Signal::QUIT => {
                    let fwd = if sig == Signal::QUIT {
                        Signal::TERM
                    } else {
                        sig
                    };
                    self.begin_stop("a signal");
                    if let Some(g) = &self.current {
                        tracing::info!(
                            pid = self.me,
                            generation_pid = g.id.pid,
                            "supervisor: shutting down: {} to the current generation",
                            signal_name(fwd.as_raw())
                        );
                        g.signal(fwd);
                    }
                }
                Signal::USR1 | Signal::USR2 => {
                    if let Some(g) = &self.current {
                        g.signal(sig);
                    }
                }
                Signal::TSTP => {
                    if let Some(g) = &self.current {
                        g.signal(sig);
                    }
                    if self.me != 1 {
                        // Stop as the default action would, so a shell gets its prompt
                        // back; SIGCONT continues us (and is forwarded below).
                        crate::sys::process::stop_this_thread();
                    }
                }
                Signal::CONT => {
                    if let Some(g) = &self.current {
                        g.signal(Signal::CONT);
                    }
                }
                _ => {}
            }
        }

        fn begin_stop(&mut self, why: &str) {
            if self.stopping {
                return;
            }
            self.stopping = true;
            self.next_start = None;
            // Our copies must not keep the addresses accepting once the generation
            // closed its own.
            self.listeners.clear();
            self.activated.clear();
            self.extend_at = Some(Instant::now() + EXTEND_EVERY);
            tracing::info!(
                pid = self.me,
                why,
                "supervisor: shutting down once every generation exited"
            );
            notify("STOPPING=1\nSTATUS=shutting down");
        }

        /// Reaps every child that exited: generations and orphans.
        fn reap(&mut self) {
            loop {
                match reaper::reap_any() {
                    Reaped::Child(pid, ended) => {
                        if self.current.as_ref().is_some_and(|g| g.id.pid == pid) {
                            self.gone(pid, Some(ended));
                        } else {
                            tracing::debug!(pid = self.me, reaped = pid, status = %describe(Some(ended)), "supervisor: reaped");
                        }
                    }
                    Reaped::Nothing => {
                        self.no_children = false;
                        return;
                    }
                    Reaped::NoChildren => {
                        self.no_children = true;
                        return;
                    }
                }
            }
        }

        /// The current generation (`pid`) exited; `status` if we reaped it.
        fn gone(&mut self, pid: u32, status: Option<Ended>) {
            // A report sent just before it exited (a commit, say) settles what this is.
            self.read_reports();
            if self.current.as_ref().is_none_or(|g| g.id.pid != pid) {
                return;
            }
            if status.is_none() && reaper::child_state(pid) != ChildState::NotOurs {
                return; // reaped in a moment, with its status
            }
            let Some(g) = self.current.take() else { return };
            if self.stopping {
                self.final_status = status;
                tracing::info!(pid = self.me, generation_pid = pid, status = %describe(status), "supervisor: the generation exited");
                return;
            }
            if g.live_since.is_some_and(|t| t.elapsed() >= STABLE) {
                self.failures = 0;
            }
            let why = match status {
                Some(s) => describe(Some(s)),
                None => "exited (its status went to its parent)".into(),
            };
            tracing::error!(pid = self.me, generation_pid = pid, why = %why, "supervisor: the generation died outside a restart");
            self.schedule_start(why);
        }

        fn schedule_start(&mut self, why: String) {
            let delay = BACKOFF_FIRST
                .saturating_mul(1u32 << self.failures.min(10))
                .min(BACKOFF_MAX);
            self.failures = self.failures.saturating_add(1);
            tracing::warn!(pid = self.me, why = %why, delay_ms = delay.as_millis() as u64, sockets = self.listeners.len(), "supervisor: starting a generation again after a backoff");
            self.next_start = Some(Instant::now() + delay);
        }

        fn check_deadline(&mut self, now: Instant) {
            let grace = self.cfg.stop_grace;
            let timeout = self.cfg.ready_timeout;
            let Some(g) = self.current.as_mut() else {
                return;
            };
            if g.live_since.is_some() || g.deadline.is_none_or(|d| d > now) {
                return;
            }
            if !g.terminated {
                tracing::error!(
                    pid = self.me,
                    generation_pid = g.id.pid,
                    timeout_ms = timeout.as_millis() as u64,
                    "supervisor: the generation was not live in time; stopping it"
                );
                g.signal(Signal::TERM);
                g.terminated = true;
                g.deadline = Some(now + grace);
            } else {
                tracing::error!(
                    pid = self.me,
                    generation_pid = g.id.pid,
                    "supervisor: the generation did not stop in time; killing it"
                );
                g.signal(Signal::KILL);
                g.deadline = None;
            }
        }

        /// Starts a generation: with the live generation's sockets, if one was ever
        /// live, else with the activated ones, if any, else afresh.
        fn start_generation(&mut self) -> io::Result<()> {
            let mut cmd = Command::new(&self.exe.path);
            cmd.args(&self.exe.args)
                .current_dir(&self.exe.cwd)
                .stdin(Stdio::null());
            for v in handover::CHILD_ENV_REMOVED {
                cmd.env_remove(v);
            }
            cmd.env_remove("NOTIFY_SOCKET");
            let mut sources: Vec<RawFd> = Vec::new();
            let mut ready = None;
            let older: Vec<ProcId> = self
                .older
                .iter()
                .filter(|g| lineage::alive(g))
                .copied()
                .collect();
            self.older = older;
            cmd.env(
                handover::ENV_DRAINING,
                handover::draining_value(&self.older),
            );
            let channel_fd;
            if self.listeners.is_empty() {
                for v in [
                    handover::ENV_FDS,
                    handover::ENV_PARENT_PID,
                    handover::ENV_READY_FD,
                    handover::ENV_GENERATION,
                ] {
                    cmd.env_remove(v);
                }
                channel_fd = FIRST_FD;
            } else {
                let names: Vec<Name> = self.listeners.iter().map(|(n, _)| n.clone()).collect();
                // Relayed activation starts a first generation; sockets of a live one
                // go to the next after it.
                let previous = if self.activated.is_empty() {
                    self.generation
                } else {
                    cmd.env(
                        handover::ENV_ACTIVATED,
                        handover::activated_value(&self.activated),
                    );
                    0
                };
                let (vars, ready_fd) = handover::child_env(&names, self.me, previous);
                for (k, v) in vars {
                    cmd.env(k, v);
                }
                sources.extend(self.listeners.iter().map(|(_, fd)| fd.as_raw_fd()));
                let (r, w) = reaper::pipe()?;
                sources.push(w.as_raw_fd());
                ready = Some((r, w));
                channel_fd = ready_fd + 1;
            }
            sources.push(self.theirs.as_raw_fd());
            cmd.env(
                handover::ENV_SUPERVISOR,
                handover::supervisor_value(self.me, channel_fd),
            );
            // The supervisor may block the signals it takes (its signalfd); the
            // generation starts with none blocked, in its own process group (the
            // terminal's signals reach the supervisor alone, which forwards them once).
            let setup = crate::sys::child::Setup {
                unblock_signals: true,
                own_group: true,
            };
            crate::sys::child::prepare(&mut cmd, sources, setup);
            let child = cmd.spawn();
            let ready = ready.map(|(r, w)| {
                drop(w);
                r
            });
            let child = child?;
            let pid = child.id();
            drop(child); // reaped by waitpid(-1)
            let mut g = Gen::follow(pid, None).unwrap_or(Gen {
                id: ProcId { pid, start: 0 },
                pidfd: None,
                live_since: None,
                deadline: None,
                terminated: false,
                ready: None,
            });
            g.deadline = Some(Instant::now() + self.cfg.ready_timeout);
            g.ready = ready;
            tracing::info!(pid = self.me, generation_pid = pid, sockets = self.listeners.len(), activated = self.activated.len(), path = %self.exe.path.display(), "supervisor: started a generation");
            self.current = Some(g);
            Ok(())
        }

        fn read_reports(&mut self) {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match recv_report(&self.reports, &mut buf) {
                    Ok(Some((text, fds))) => match Report::decode(&text) {
                        Ok(r) => self.on_report(r, fds),
                        Err(e) => {
                            tracing::warn!(pid = self.me, error = %e, "supervisor: ignoring a malformed report")
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(pid = self.me, error = %e, "supervisor: cannot read a report");
                        return;
                    }
                }
            }
        }

        fn on_report(&mut self, r: Report, fds: Vec<OwnedFd>) {
            let current = self.current.as_ref().map(|g| g.id.pid);
            match r {
                Report::Live {
                    id,
                    generation,
                    names,
                } => {
                    if names.len() != fds.len() {
                        tracing::warn!(pid = self.me, from = id.pid, "supervisor: a live report whose sockets do not match its names; ignored");
                        return;
                    }
                    let current_live = self
                        .current
                        .as_ref()
                        .is_some_and(|g| g.live_since.is_some());
                    if current != Some(id.pid) {
                        if current_live {
                            tracing::warn!(pid = self.me, from = id.pid, current = ?current, "supervisor: a live report from another generation than the current one; ignored");
                            return;
                        }
                        // The current one never got live (a replacement just started)
                        // and another says it is: a generation whose parent died before
                        // it could commit took over. It serves; the replacement goes.
                        if let Some(g) = self.current.take() {
                            tracing::warn!(pid = self.me, generation_pid = g.id.pid, live = id.pid, "supervisor: another generation took over; stopping the one started");
                            g.signal(Signal::TERM);
                        }
                        self.next_start = None;
                        self.current = Gen::follow(id.pid, Some(id.start));
                    }
                    let Some(g) = self.current.as_mut() else {
                        return;
                    };
                    g.live_since = Some(Instant::now());
                    g.deadline = None;
                    g.ready = None;
                    self.generation = generation;
                    self.listeners = names.into_iter().zip(fds).collect();
                    self.activated.clear();
                    if self.stopping {
                        g.signal(Signal::TERM);
                        self.listeners.clear();
                        return;
                    }
                    if !self.ever_live {
                        self.ever_live = true;
                        if let Some(p) = &self.cfg.pid_file {
                            if let Err(e) = write_pid_file(p, self.me) {
                                tracing::error!(error = %e, path = %p.display(), "supervisor: cannot write the PID file");
                            }
                        }
                        notify(&format!(
                            "READY=1\nSTATUS=serving, generation {generation} (pid {})",
                            id.pid
                        ));
                    } else if std::mem::take(&mut self.reloading) {
                        notify(&format!(
                            "READY=1\nSTATUS=serving, generation {generation} (pid {})",
                            id.pid
                        ));
                    }
                    // Logged once the PID file and the service manager know.
                    tracing::info!(
                        pid = self.me,
                        generation_pid = id.pid,
                        generation,
                        sockets = self.listeners.len(),
                        "supervisor: the generation is live"
                    );
                }
                Report::Committed { pid, new_pid } if current == Some(pid) => {
                    if let Some(old) = self.current.take() {
                        self.older.push(old.id);
                    }
                    self.older.retain(lineage::alive);
                    tracing::info!(
                        pid = self.me,
                        from = pid,
                        to = new_pid,
                        "supervisor: the current generation handed over"
                    );
                    self.current = Gen::follow(new_pid, None);
                    if self.current.is_none() {
                        self.schedule_start(format!(
                            "the new generation {new_pid} is gone already"
                        ));
                    }
                }
                Report::RestartFailed { pid } if current == Some(pid) => {
                    if std::mem::take(&mut self.reloading) {
                        notify(&format!(
                            "READY=1\nSTATUS=restart failed; pid {pid} still serving"
                        ));
                    }
                }
                Report::Stopping { pid } if current == Some(pid) => {
                    self.begin_stop("the current generation shuts down");
                }
                other => {
                    tracing::debug!(pid = self.me, report = ?other, "supervisor: a report from a generation that is not current; ignored")
                }
            }
        }

        fn exit(&mut self) -> ! {
            if let Some(p) = &self.cfg.pid_file {
                let named = std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if named == Some(self.me) {
                    let _ = std::fs::remove_file(p);
                }
            }
            let code = match self.final_status {
                Some(Ended::Exited(code)) => code,
                Some(Ended::Killed(sig)) => 128 + sig,
                _ => 0,
            };
            tracing::info!(
                pid = self.me,
                code,
                "supervisor: every generation exited; exiting"
            );
            std::process::exit(code)
        }
    }

    /// One report and its descriptors; `None` when none is waiting.
    fn recv_report(
        sock: &UnixDatagram,
        buf: &mut [u8],
    ) -> io::Result<Option<(String, Vec<OwnedFd>)>> {
        let got = match crate::sys::fdpass::recv(
            sock.as_fd(),
            buf,
            MAX_REPORT_FDS,
            crate::sys::fdpass::Wait::DontWait,
        ) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        if got.truncated {
            return Err(io::Error::other("a truncated report"));
        }
        Ok(Some((
            String::from_utf8_lossy(&buf[..got.len]).into_owned(),
            got.fds,
        )))
    }

    fn write_pid_file(path: &std::path::Path, pid: u32) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, path)
    }

    fn describe(status: Option<Ended>) -> String {
        match status {
            Some(Ended::Exited(code)) => format!("exited with status {code}"),
            Some(Ended::Killed(sig)) => format!("killed by {}", signal_name(sig)),
            Some(Ended::Other(s)) => format!("wait status {s}"),
            None => "unknown".into(),
        }
    }

    fn signal_name(sig: i32) -> String {
        const NAMES: [(Signal, &str); 11] = [
            (Signal::HUP, "SIGHUP"),
            (Signal::INT, "SIGINT"),
            (Signal::TERM, "SIGTERM"),
            (Signal::QUIT, "SIGQUIT"),
            (Signal::KILL, "SIGKILL"),
            (Signal::USR1, "SIGUSR1"),
            (Signal::USR2, "SIGUSR2"),
            (Signal::TSTP, "SIGTSTP"),
            (Signal::CONT, "SIGCONT"),
            (Signal::SEGV, "SIGSEGV"),
            (Signal::ABORT, "SIGABRT"),
        ];
        NAMES
            .iter()
            .find(|(s, _)| s.as_raw() == sig)
            .map_or_else(|| format!("signal {sig}"), |(_, name)| (*name).to_string())
    }
}
