//! The process owner's builder: its settings, and what building it does (take what
//! was handed over, start the observers, install the signal handlers).

use super::*;

/// When a generation is ready: the moment the previous generation lets go, and the
/// first generation's `READY=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// Ready once every socket inherited from the previous generation has been claimed
    /// by a server (or a listener taken), and at least one was: for a first generation,
    /// as soon as its first server listens. Right for a process whose servers all start
    /// at once. A new version that no longer serves one of the old addresses must
    /// declare readiness instead ([`Readiness::Manual`]): under `Auto` it would wait for
    /// that address until the ready timeout.
    #[default]
    Auto,
    /// Ready when the application says so, with [`Process::ready`]: after it warmed up
    /// and started every server. Until then the previous generation alone answers for
    /// the process (within the ready timeout).
    Manual,
}

/// Configures the process owner; see [`Process`].
pub struct ProcessBuilder {
    readiness: Readiness,
    ready_timeout: Duration,
    stop_grace: Duration,
    pid_file: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    hooks: Vec<(Signal, Stage, Hook)>,
    signals: Vec<Signal>,
    lame_duck: Option<Duration>,
    hammer_time: Option<Duration>,
    max_draining: usize,
    state: Option<crate::handover::state::Producer>,
    takeover: Option<PathBuf>,
    probation: Option<Duration>,
    rollback_on_errors: Option<(f64, u64)>,
}

impl std::fmt::Debug for ProcessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBuilder")
            .field("readiness", &self.readiness)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("hammer_time", &self.hammer_time)
            .field("pid_file", &self.pid_file)
            .field("control_socket", &self.control_socket)
            .field("takeover", &self.takeover)
            .field("probation", &self.probation)
            .field("rollback_on_errors", &self.rollback_on_errors)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder {
            readiness: Readiness::Auto,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            pid_file: None,
            control_socket: None,
            hooks: Vec::new(),
            signals: Signal::ALL.to_vec(),
            lame_duck: None,
            hammer_time: Some(crate::lifecycle::DEFAULT_HAMMER_TIME),
            state: None,
            max_draining: crate::lifecycle::DEFAULT_MAX_DRAINING,
            takeover: None,
            probation: None,
            rollback_on_errors: None,
        }
    }
}

impl ProcessBuilder {
    /// When this generation is ready (default [`Readiness::Auto`]).
    pub fn readiness(mut self, r: Readiness) -> Self {
        self.readiness = r;
        self
    }

    /// How long a new generation may take to declare ready on a restart before the
    /// restart fails and it is stopped (default 30 s). Must not be zero.
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// How long a new generation that failed (not ready in time, or the restart was
    /// called off) has to answer what it accepted after SIGTERM, before SIGKILL
    /// (default 10 s).
    pub fn stop_grace(mut self, t: Duration) -> Self {
        self.stop_grace = t;
        self
    }

    /// A lame-duck period at a shutdown (off by default): on SIGINT/SIGTERM (or
    /// [`Process::shutdown`]) the process keeps accepting and serving everything for
    /// this long while the [`health`](crate::health()) check answers `503`, so that a load
    /// balancer or Kubernetes takes it out of rotation before its listeners close; then
    /// the usual drain. A second shutdown request during the period drains at once. A
    /// restart is never a lame duck: the address stays served.
    pub fn lame_duck(mut self, period: Duration) -> Self {
        self.lame_duck = Some(period).filter(|d| !d.is_zero());
        self
    }

    /// How long a draining generation waits for the connections of servers other than
    /// ceaseless's (`axum::serve`, tonic's, plain hyper: whatever the application runs
    /// on a listener of the process owner) before it exits, cutting them (default
    /// [`DEFAULT_HAMMER_TIME`](crate::DEFAULT_HAMMER_TIME), 60 s; `None`: no limit). A
    /// hammer (`SIGUSR2`, or the bound of [`ProcessBuilder::max_draining`]) ends the wait
    /// at once. ceaseless's own servers cut their connections themselves, each at its
    /// [`Server::hammer_time`](crate::Server::hammer_time): the process never exits
    /// while one of them still drains, nor once the application called
    /// [`Process::finish`]. A second after the hammer, a generation still not finished
    /// logs `[STOP - Hammer Time]` and exits (status 0). A zero is refused at start.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), ceaseless::Error> {
    /// // Server-sent events under axum::serve: a restart's old generation goes after 5 min.
    /// let process = ceaseless::Process::builder()
    ///     .hammer_time(Some(std::time::Duration::from_secs(300)))
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    pub fn hammer_time(mut self, t: Option<Duration>) -> Self {
        self.hammer_time = t;
        self
    }

    /// What this generation hands the next at a restart: `produce` is called at each
    /// restart, before the new generation is started (on the blocking pool, within the
    /// ready timeout), and the bytes it returns (at most
    /// [`MAX_STATE`](crate::handover::state::MAX_STATE)) are what the new generation's
    /// [`Process::inherited_state`] returns. If it fails the restart fails, and nothing
    /// was started. Requests served by the old generation after it was called are not
    /// in it: take what can be recomputed, or what changes slowly (a warmed cache, a
    /// counter, keys). See the [`state`](crate::state) module.
    ///
    /// ```no_run
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// static SEEN: AtomicU64 = AtomicU64::new(0);
    ///
    /// # async fn run() -> Result<(), ceaseless::Error> {
    /// let process = ceaseless::Process::builder()
    ///     .state(|| Ok(SEEN.load(Ordering::Relaxed).to_le_bytes().to_vec()))
    ///     .start()?;
    /// if let Some(b) = process.inherited_state() {
    ///     let seen = u64::from_le_bytes(b.try_into().map_err(|_| ceaseless::Error::State {
    ///         reason: "not a count".into(),
    ///     })?);
    ///     SEEN.store(seen, Ordering::Relaxed);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn state(
        mut self,
        produce: impl Fn() -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.state = Some(Arc::new(produce));
        self
    }

    /// How many generations may drain at once (default
    /// [`DEFAULT_MAX_DRAINING`](crate::DEFAULT_MAX_DRAINING), 4): when a restart would
    /// leave more draining (long-lived connections keep old generations around until
    /// their hammer time), the oldest are hammered once it commits, and the log says
    /// so. Must not be zero.
    pub fn max_draining(mut self, n: usize) -> Self {
        self.max_draining = n;
        self
    }

    /// Keeps a PID file naming the live generation: written once the first one is
    /// ready, replaced atomically at each handover (before the service manager hears
    /// of the new pid), removed at a final shutdown. Ignored under the
    /// [`Supervisor`](crate::Supervisor), whose own PID file names it instead.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    #[cfg(feature = "control")]
    /// Opens a control socket at `path` (a Unix socket, mode 0600) on which a restart
    /// can be requested and its outcome learnt, with [`control::request_restart`] or
    /// the line protocol described in [`control`]. It is handed over to each new
    /// generation and removed at a final shutdown. On Windows
    /// [`start`](ProcessBuilder::start) fails with [`Error::Unsupported`].
    ///
    /// [`control`]: crate::observe::control
    /// [`control::request_restart`]: crate::observe::control::request_restart
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    #[cfg(feature = "control")]
    /// Starts by taking over from the process serving the control socket at `path`
    /// (started independently, by anyone of the same user or root): it hands over its
    /// listeners (and that control socket) through the socket, and drains once this
    /// process declared ready, as at a restart; until then it serves on, and if this
    /// one fails or never becomes ready, nothing changes there. The control socket
    /// defaults to `path` (see [`ProcessBuilder::control_socket`]).
    ///
    /// [`start`](ProcessBuilder::start) fails with [`Error::Takeover`] if the running
    /// process refuses or none answers: nothing is bound afresh. A process started by a
    /// restart of this one inherits from it instead (the option is ignored there). Not
    /// under the [`Supervisor`](crate::Supervisor); on Windows `start` fails with
    /// [`Error::Unsupported`]. README.md's "Takeover by a new process" has the
    /// exchange.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), ceaseless::Error> {
    /// // The new version, started by a deploy script next to the running one.
    /// let process = ceaseless::Process::builder()
    ///     .takeover("/run/app/control.sock")
    ///     .start()?; // the listeners of the running process are ours now
    /// let listener = process.tcp_listener("127.0.0.1:3000")?; // the same socket
    /// # Ok(()) }
    /// ```
    pub fn takeover(mut self, path: impl Into<PathBuf>) -> Self {
        self.takeover = Some(path.into());
        self
    }

    /// A probation after each restart (off by default): once the new generation is
    /// live, the old one drains as usual, then *parks* for `period` instead of exiting:
    /// it keeps every listening socket (and named descriptor, state, ticket key) but
    /// accepts nothing, and watches the new generation. Within the period the service
    /// rolls back to it, losing nothing it could have served:
    /// - at once, if the new generation exits without a shutdown (a crash, an abort, a
    ///   kill): the connections it accepted and had not answered are the only ones
    ///   lost; those waiting in the listeners' queues are the parked one's;
    /// - when the error policy trips ([`ProcessBuilder::rollback_on_errors`]), the
    ///   application calls [`Process::rollback`] in the new generation, or an operator
    ///   asks on the control socket (`rollback`, `control::request_rollback`): the
    ///   parked generation accepts again first, then the new one drains as an old one
    ///   does at a restart (0 failed requests).
    ///
    /// The parked generation becomes the live one again: the PID file, `MAINPID=` and
    /// `READY=1`, the control socket, its status and generation number. Once the period
    /// ends it exits as without probation. At most one generation is parked: a restart
    /// of the new generation during its probation, or its shutdown, ends the probation
    /// first (the parked one exits), and its own old generation parks in turn. In every
    /// process model: re-exec, the supervisor (the parked generation stays its child,
    /// the pid stays the supervisor's) and a takeover.
    ///
    /// Parking needs every listener to be served by ceaseless's servers ([`Server`] or
    /// [`serve`](crate::serve())), which resume on the same sockets; a generation with a
    /// listener served otherwise (`axum::serve`) drains and exits without parking, and
    /// says so in its log. What the application runs beside its servers on
    /// [`Process::draining`] does not resume. A zero period is refused at start.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # fn f() -> Result<(), ceaseless::Error> {
    /// let process = ceaseless::Process::builder()
    ///     .probation(Duration::from_secs(60))
    ///     .rollback_on_errors(0.2, 100) // over 20% of 5xx in at least 100 responses
    ///     .start()?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`Server`]: crate::Server
    pub fn probation(mut self, period: Duration) -> Self {
        self.probation = Some(period);
        self
    }

    /// The error policy of a probation ([`ProcessBuilder::probation`]): a new generation
    /// whose ceaseless servers answered at least `min_requests` responses since it went
    /// live, more than `ratio` of them server errors (`5xx`), is rolled back while the
    /// probation lasts. `ratio` must be in `0.0..1.0` and `min_requests` at least 1;
    /// anything else is refused at start. Off by default.
    pub fn rollback_on_errors(mut self, ratio: f64, min_requests: u64) -> Self {
        self.rollback_on_errors = Some((ratio, min_requests));
        self
    }

    /// Runs `f` before ([`Stage::Pre`]) or after ([`Stage::Post`]) ceaseless handles
    /// `signal`. Hooks run in registration order.
    pub fn hook(
        mut self,
        signal: Signal,
        stage: Stage,
        f: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        self.hooks.push((signal, stage, Arc::new(f)));
        self
    }

    /// The signals ceaseless takes (default: all of [`Signal::ALL`]). The others keep
    /// their default action, or whatever handler the application installs.
    pub fn signals(mut self, taken: impl IntoIterator<Item = Signal>) -> Self {
        self.signals = taken.into_iter().collect();
        self
    }

    /// Starts the process owner. Call it once, at the top of `main`, inside the tokio
    /// runtime and before any server starts (a server started first starts one with the
    /// defaults, and this then fails with [`Error::AlreadyStarted`]).
    pub fn start(self) -> Result<Process, Error> {
        let _one_at_a_time = lock(&STARTING);
        if PROCESS.get().is_some() {
            return Err(Error::AlreadyStarted);
        }
        let p = self.build()?;
        let _ = PROCESS.set(p.clone());
        Ok(p)
    }

    pub(super) fn build(self) -> Result<Process, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        if self.ready_timeout.is_zero() {
            return Err(Error::Setting {
                name: "ready_timeout",
                reason: "zero: every restart would fail".into(),
            });
        }
        if self.hammer_time.is_some_and(|t| t.is_zero()) {
            return Err(Error::Setting {
                name: "hammer_time",
                reason: "zero would cut every connection at once; None means no limit".into(),
            });
        }
        if self.probation.is_some_and(|p| p.is_zero()) {
            return Err(Error::Setting {
                name: "probation",
                reason: "zero: no time to roll back in; leave it unset for none".into(),
            });
        }
        if let Some((ratio, min)) = self.rollback_on_errors {
            if !(0.0..1.0).contains(&ratio) || min == 0 {
                return Err(Error::Setting {
                    name: "rollback_on_errors",
                    reason: format!(
                        "ratio {ratio} and min_requests {min}: the ratio is a fraction in 0.0..1.0 \
                         and at least one response is needed"
                    ),
                });
            }
            if self.probation.is_none() {
                tracing::warn!("rollback_on_errors without a probation: it never trips");
            }
        }
        if self.max_draining == 0 {
            return Err(Error::Setting {
                name: "max_draining",
                reason: "zero: the generation that hands over must drain".into(),
            });
        }
        // No control socket on Windows (a Unix socket), and so no takeover either.
        #[cfg(not(unix))]
        if self.control_socket.is_some() || self.takeover.is_some() {
            return Err(Error::Unsupported {
                what: "a control socket",
                platform: crate::sys::PLATFORM,
            });
        }
        // Nothing to park behind on Windows: a process is the first and only generation.
        #[cfg(not(unix))]
        if self.probation.is_some() {
            tracing::warn!(
                platform = crate::sys::PLATFORM,
                "a probation needs restarts, which this platform does not support: none"
            );
        }
        #[cfg(unix)]
        #[allow(unused_mut)]
        let mut inherited = Inherited::from_env(&ProcessEnv);
        #[cfg(unix)]
        #[allow(unused_mut)]
        let mut control_socket = self.control_socket;
        #[cfg(all(unix, feature = "control"))]
        if let Some(path) = self.takeover {
            if inherited.parent.is_some() {
                tracing::debug!(path = %path.display(), "started by a restart: inheriting, not taking over");
            } else {
                inherited = super::restarting::take_over(&path, inherited)?;
            }
            control_socket.get_or_insert(path);
        }
        // The previous generation's state, if it sent any: read now, or the start fails
        // (and so the restart that started this generation).
        #[cfg(unix)]
        let inherited_state = match inherited.claim_fd(crate::handover::state::NAME) {
            Some(fd) => Some(crate::handover::state::read(fd)?),
            None => None,
        };
        #[cfg(unix)]
        let (parent, generation) = (inherited.parent, inherited.generation);
        // Windows: always the first and only generation.
        #[cfg(not(unix))]
        let (inherited_state, parent, generation) = (None, None, 1);
        let publisher = Publisher::new(State {
            phase: Phase::Starting,
            live: parent.is_none(),
            parked: false,
        });
        let book = crate::observe::status::Book::new(parent, generation);
        #[cfg(unix)]
        book.inherit_history(&ProcessEnv);
        #[cfg(unix)]
        crate::handover::lineage::init();
        // Under a supervisor, the PID file names the supervisor, which writes it.
        #[cfg(unix)]
        let supervised = crate::restart::supervise::start(generation);
        #[cfg(not(unix))]
        let supervised = false;
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut observers: Vec<Box<dyn Observer>> = Vec::new();
        #[cfg(unix)]
        observers.push(Box::new(crate::observe::status::Recorder(book.clone())));
        if let Some(p) = self.pid_file.filter(|_| !supervised) {
            observers.push(Box::new(crate::observe::pidfile::PidFile::new(p)));
        }
        #[cfg(all(unix, feature = "systemd"))]
        if let Some(n) = crate::observe::notify::Notify::from_env() {
            observers.push(Box::new(n));
        }
        let hooks = Arc::new(Hooks::default());
        for (sig, stage, hook) in self.hooks {
            hooks.add(sig, stage, hook);
        }
        #[cfg(unix)]
        let mut registry = Vec::new();
        #[cfg(feature = "tls")]
        let ticket_key = OnceLock::new();
        #[cfg(all(unix, feature = "tls"))]
        if let Some(fd) = inherited.claim_fd(TICKET_KEY_NAME) {
            // The TLS session-ticket key of the generations before: kept, and passed on.
            let key = fd
                .try_clone()
                .map_err(|e| e.to_string())
                .and_then(|copy| crate::handover::state::read(copy).map_err(|e| e.to_string()))
                .and_then(|b| {
                    <[u8; TICKET_KEY_LEN]>::try_from(b.as_slice())
                        .map_err(|_| format!("{} bytes, not a key", b.len()))
                });
            match key {
                Ok(k) => {
                    let _ = ticket_key.set(k);
                    registry.push(Registered {
                        name: Name::Fd(TICKET_KEY_NAME.into()),
                        fd,
                    });
                }
                Err(reason) => tracing::error!(
                    error = %Error::State { reason: format!("the TLS ticket key handed over: {reason}") },
                    "drawing a new TLS ticket key: sessions of the previous generation will not resume"
                ),
            }
        }
        #[cfg(unix)]
        let control_socket = match control_socket {
            Some(p) => {
                let path = std::path::absolute(&p).map_err(|source| Error::Control {
                    path: p.clone(),
                    source,
                })?;
                let fd = inherited.claim_control(&path).map(|e| e.fd);
                let listener = control::open(&path, fd)?;
                let dup = std::os::fd::AsFd::as_fd(&listener)
                    .try_clone_to_owned()
                    .map_err(|source| Error::Control {
                        path: path.clone(),
                        source,
                    })?;
                registry.push(Registered {
                    name: Name::Control(path.clone()),
                    fd: dup,
                });
                Some((path, listener))
            }
            None => None,
        };
        let process = Process {
            inner: Arc::new(Inner {
                core: Mutex::new(Core {
                    state: publisher.current(),
                    #[cfg(unix)]
                    inherited,
                    #[cfg(unix)]
                    registry,
                    listeners_taken: 0,
                    servers_running: 0,
                    observers,
                    abort: None,
                    committing: false,
                    shutdown_deferred: false,
                    done: None,
                    #[cfg(unix)]
                    probation: None,
                }),
                publisher,
                readiness: self.readiness,
                ready_timeout: self.ready_timeout,
                stop_grace: self.stop_grace,
                lame_duck: self.lame_duck,
                hammer_time: self.hammer_time,
                runtime,
                state: self.state,
                inherited_state,
                #[cfg(feature = "tls")]
                ticket_key,
                #[cfg(feature = "tls")]
                tls_certs: Mutex::default(),
                #[cfg(unix)]
                control: OnceLock::new(),
                #[cfg(unix)]
                exe: Exe::capture(),
                generation,
                book,
                max_draining: self.max_draining,
                restart_running: Arc::default(),
                #[cfg_attr(not(unix), allow(unused))]
                probation: self.probation,
                #[cfg_attr(not(unix), allow(unused))]
                rollback_on_errors: self.rollback_on_errors,
                outcomes: Arc::default(),
                claims: tokio::sync::watch::Sender::new(()),
            }),
        };
        #[cfg(unix)]
        if let Some((path, listener)) = control_socket {
            let p = process.clone();
            let restart: control::RestartFn = Arc::new(move || {
                let p = p.clone();
                Box::pin(async move { p.restart().await })
            });
            let p = process.clone();
            let status: control::StatusFn = Arc::new(move || p.status());
            #[cfg(feature = "tls")]
            let reload_tls: control::ReloadFn = {
                let p = process.clone();
                Arc::new(move || p.reload_tls().map_err(|e| e.to_string()))
            };
            #[cfg(not(feature = "tls"))]
            let reload_tls: control::ReloadFn =
                Arc::new(|| Err("built without the `tls` feature".into()));
            let p = process.clone();
            let takeover: control::TakeoverFn = Arc::new(move |stream| {
                let p = p.clone();
                Box::pin(async move { p.serve_takeover(stream).await })
            });
            let p = process.clone();
            let rollback: control::RollbackFn = Arc::new(move || {
                let p = p.clone();
                Box::pin(async move {
                    p.ask_rollback(crate::lifecycle::RollbackTrigger::Operator)
                        .await
                })
            });
            let handlers = control::Handlers {
                restart,
                rollback,
                status,
                reload_tls,
                takeover,
            };
            let c = Control::serve(listener, process.watch().state, handlers)
                .map_err(|source| Error::Control { path, source })?;
            let _ = process.inner.control.set(c);
        }
        signals::start(
            &self.signals,
            hooks,
            Arc::new(SignalActions(process.clone())),
        )?;
        Ok(process)
    }
}
