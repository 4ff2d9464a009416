//! The supervisor itself: the reaper of the service's processes, which starts
//! generation 1, forwards signals to the current generation, learns of each one from
//! its reports, and starts a generation again when the current one dies (see the
//! folder's `mod.rs` for the design).

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
/// How long the supervisor waits for a parked generation to take the service back after
/// the generation on probation died, before it starts one itself.
const PARKED_WAIT: Duration = Duration::from_secs(2);
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
    /// A generation that handed over and parks for a probation, until when: should the
    /// current one die, it takes the service back.
    parked: Option<(ProcId, Instant)>,
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
        parked: None,
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
        // A generation parked behind it takes the service back by itself: a replacement
        // only if it does not say it is live within the wait.
        if let Some((p, until)) = self.parked.take() {
            if Instant::now() < until && lineage::alive(&p) {
                tracing::warn!(pid = self.me, generation_pid = pid, parked = p.pid, why = %why, "supervisor: the generation on probation died; the parked generation takes the service back");
                self.next_start = Some(Instant::now() + PARKED_WAIT);
                return;
            }
        }
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
                    tracing::warn!(
                        pid = self.me,
                        from = id.pid,
                        "supervisor: a live report whose sockets do not match its names; ignored"
                    );
                    return;
                }
                let current_live = self
                    .current
                    .as_ref()
                    .is_some_and(|g| g.live_since.is_some());
                if current != Some(id.pid) {
                    // A generation parked for a probation that took the service back
                    // (the current one crashed, or handed back).
                    let rolled_back = self.older.contains(&id);
                    if current_live && !rolled_back {
                        tracing::warn!(pid = self.me, from = id.pid, current = ?current, "supervisor: a live report from another generation than the current one; ignored");
                        return;
                    }
                    match self.current.take() {
                        // The one on probation: it hands back and drains, or is gone.
                        Some(g) if g.live_since.is_some() => self.older.push(g.id),
                        // The current one never got live (a replacement just started)
                        // and another says it is: a parked generation that took the
                        // service back, or one whose parent died before it could
                        // commit. It serves; the replacement goes.
                        Some(g) => {
                            tracing::warn!(
                                pid = self.me,
                                generation_pid = g.id.pid,
                                live = id.pid,
                                "supervisor: another generation took over; stopping the one started"
                            );
                            g.signal(Signal::TERM);
                        }
                        None => {}
                    }
                    if rolled_back {
                        self.older.retain(|o| *o != id && lineage::alive(o));
                        self.parked = None;
                        tracing::info!(
                            pid = self.me,
                            generation_pid = id.pid,
                            "supervisor: rolled back to a parked generation"
                        );
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
                // A generation parked behind the one committing is released first.
                self.parked = None;
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
                    self.schedule_start(format!("the new generation {new_pid} is gone already"));
                }
            }
            Report::RestartFailed { pid } if current == Some(pid) => {
                if std::mem::take(&mut self.reloading) {
                    notify(&format!(
                        "READY=1\nSTATUS=restart failed; pid {pid} still serving"
                    ));
                }
            }
            Report::Parked { pid, ms } => match self.older.iter().find(|o| o.pid == pid) {
                Some(id) => {
                    let until = Instant::now() + Duration::from_millis(ms);
                    self.parked = Some((*id, until));
                    tracing::info!(
                        pid = self.me,
                        generation_pid = pid,
                        ms,
                        "supervisor: a generation parks for a probation"
                    );
                }
                None => tracing::debug!(
                    pid = self.me,
                    from = pid,
                    "supervisor: a parked report from a generation it does not follow; ignored"
                ),
            },
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
fn recv_report(sock: &UnixDatagram, buf: &mut [u8]) -> io::Result<Option<(String, Vec<OwnedFd>)>> {
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
