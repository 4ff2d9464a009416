//! The process owner: one object per process that owns its lifecycle — the sockets it
//! inherited and opened, readiness, restarts, the drain — as the explicit state machine
//! drawn in [`lifecycle`](crate::lifecycle). Every transition happens under one lock, in
//! one place here; the PID file and the service manager observe the transitions, and
//! servers, connections and the control socket follow the published state.
//!
//! # This folder
//! The owner, and its signals (`signals`). It calls `restart` (to start the next
//! generation or answer a takeover), `observe` (the observers of its transitions, the
//! control socket) and `handover` (what it inherited, the commit's side of a new
//! generation); `serve` calls it, nothing below does (what it needs of the TLS code, a
//! certificate to reload, it names itself: [`Reloadable`]).

pub(crate) mod signals;

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::addr::ListenAddr;
use crate::error::{Error, RestartError};
use crate::handover::commit::{Do, Heard, New, CLAIM_GRACE};
use crate::handover::inherit::{Inherited, ReadyChannel};
use crate::handover::listen::Listener;
use crate::handover::Message;
use crate::handover::Name;
use crate::handover::ProcessEnv;
use crate::lifecycle::{Observer, Phase, Publisher, Served, State, Transition, Watch};
use crate::observe::control::{self, Control};
use crate::restart::successor::Successor;
use crate::restart::{self, Exe};
use signals::{Actions, Hook, Hooks, Signal, Stage};

/// Default [`ProcessBuilder::ready_timeout`]: 30 s.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub use crate::lifecycle::DEFAULT_STOP_GRACE;
/// How long a first generation whose servers are starting waits for them to be ready
/// before it refuses a restart (a SIGHUP sent the moment "serving" is logged).
const FIRST_READY_WAIT: Duration = Duration::from_secs(1);
/// How long a SIGTERM that lands while this generation waits for its parent's word on
/// the handover waits for that word before the generation drains as not live.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long a takeover waits for the running process's offer.
#[cfg(feature = "control")]
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// The name the TLS session-ticket key travels under from generation to generation
/// (the process keeps it and passes it on; the TLS servers use it).
#[cfg(feature = "tls")]
pub(crate) const TICKET_KEY_NAME: &str = "ceaseless.tls-tickets";
/// The TLS session-ticket key's length.
#[cfg(feature = "tls")]
pub(crate) const TICKET_KEY_LEN: usize = 32;

/// A TLS server's certificate and key, which [`Process::reload_tls`] reads again: the
/// new pair, checked, comes back as what installs it, so that every pair is read
/// before any is swapped.
#[cfg(feature = "tls")]
pub(crate) trait Reloadable: Send + Sync {
    /// Reads and checks the files again; the new pair is installed by what this
    /// returns.
    fn load(&self) -> Result<Box<dyn FnOnce() + '_>, Error>;
}

/// When a generation is ready: the moment the previous generation lets go, and the
/// first generation's `READY=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    max_draining: usize,
    state: Option<crate::handover::state::Producer>,
    takeover: Option<PathBuf>,
}

impl std::fmt::Debug for ProcessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBuilder")
            .field("readiness", &self.readiness)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("pid_file", &self.pid_file)
            .field("control_socket", &self.control_socket)
            .field("takeover", &self.takeover)
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
            state: None,
            max_draining: crate::handover::lineage::DEFAULT_MAX_DRAINING,
            takeover: None,
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

    /// What this generation hands the next at a restart: `produce` is called at each
    /// restart, before the new generation is started (on the blocking pool, within the
    /// ready timeout), and the bytes it returns (at most
    /// [`MAX_STATE`](crate::handover::state::MAX_STATE)) are what the new generation's
    /// [`Process::inherited_state`] returns. If it fails the restart fails, and nothing
    /// was started. Requests served by the old generation after it was called are not
    /// in it: take what can be recomputed, or what changes slowly (a warmed cache, a
    /// counter, keys). See the `state` module docs.
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
    /// generation and removed at a final shutdown.
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
    /// under the [`Supervisor`](crate::Supervisor). See the `takeover` module docs for
    /// the protocol.
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

    fn build(self) -> Result<Process, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        if self.ready_timeout.is_zero() {
            return Err(Error::Setting {
                name: "ready_timeout",
                reason: "zero: every restart would fail".into(),
            });
        }
        if self.max_draining == 0 {
            return Err(Error::Setting {
                name: "max_draining",
                reason: "zero: the generation that hands over must drain".into(),
            });
        }
        #[allow(unused_mut)]
        let mut inherited = Inherited::from_env(&ProcessEnv);
        #[allow(unused_mut)]
        let mut control_socket = self.control_socket;
        #[cfg(feature = "control")]
        if let Some(path) = self.takeover {
            if inherited.parent.is_some() {
                tracing::debug!(path = %path.display(), "started by a restart: inheriting, not taking over");
            } else {
                inherited = take_over(&path, inherited)?;
            }
            control_socket.get_or_insert(path);
        }
        // The previous generation's state, if it sent any: read now, or the start fails
        // (and so the restart that started this generation).
        let inherited_state = match inherited.claim_fd(crate::handover::state::NAME) {
            Some(fd) => Some(crate::handover::state::read(fd)?),
            None => None,
        };
        let first = inherited.parent.is_none();
        let generation = inherited.generation;
        let publisher = Publisher::new(State {
            phase: Phase::Starting,
            live: first,
        });
        let book = crate::observe::status::Book::new(&ProcessEnv, inherited.parent, generation);
        crate::handover::lineage::init();
        // Under a supervisor, the PID file names the supervisor, which writes it.
        let supervised = crate::restart::supervise::start(generation);
        let mut observers: Vec<Box<dyn Observer>> =
            vec![Box::new(crate::observe::status::Recorder(book.clone()))];
        if let Some(p) = self.pid_file.filter(|_| !supervised) {
            observers.push(Box::new(crate::observe::pidfile::PidFile::new(p)));
        }
        #[cfg(feature = "systemd")]
        if let Some(n) = crate::observe::notify::Notify::from_env() {
            observers.push(Box::new(n));
        }
        let hooks = Arc::new(Hooks::default());
        for (sig, stage, hook) in self.hooks {
            hooks.add(sig, stage, hook);
        }
        let mut registry = Vec::new();
        #[cfg(feature = "tls")]
        let ticket_key = OnceLock::new();
        #[cfg(feature = "tls")]
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
                    inherited,
                    registry,
                    listeners_taken: 0,
                    servers_running: 0,
                    observers,
                    abort: None,
                    committing: false,
                    shutdown_deferred: false,
                    done: None,
                }),
                publisher,
                readiness: self.readiness,
                ready_timeout: self.ready_timeout,
                stop_grace: self.stop_grace,
                lame_duck: self.lame_duck,
                state: self.state,
                inherited_state,
                #[cfg(feature = "tls")]
                ticket_key,
                #[cfg(feature = "tls")]
                tls_certs: Mutex::default(),
                control: OnceLock::new(),
                exe: Exe::capture(),
                generation,
                book,
                max_draining: self.max_draining,
                restart_running: Arc::default(),
                claims: tokio::sync::watch::Sender::new(()),
            }),
        };
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
            let handlers = control::Handlers {
                restart,
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

/// The process owner.
///
/// Create it first, at the top of `main`; everything that concerns the process as a
/// whole lives here: readiness, restarts, the drain, the PID file, the control socket,
/// signals and their hooks. [`Server`](crate::Server)s and the one-liners use it (they
/// start one with the defaults if the application did not); other servers — `axum::serve`,
/// tonic, plain hyper — take their listeners from it and stop on [`Process::draining`].
///
/// ```no_run
/// use std::time::Duration;
/// use ceaseless::{Process, Readiness, Served};
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let process = Process::builder()
///         .readiness(Readiness::Manual)
///         .ready_timeout(Duration::from_secs(60))
///         .pid_file("/run/app/app.pid")
///         .start()?;
///     // Inherited from the previous generation, or bound.
///     let listener = process.tcp_listener("127.0.0.1:3000")?;
///     // ... open database pools, fill caches ...
///     process.ready(); // only now does the previous generation let go
///     let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi\n" }));
///     axum::serve(listener, app)
///         .with_graceful_shutdown(process.draining())
///         .await?;
///     match process.finish().await {
///         Served::Shutdown => { /* deregister from service discovery */ }
///         Served::HandedOver { pid } => println!("pid {pid} serves now"),
///     }
///     Ok(())
/// }
/// ```
///
/// Servers other than ceaseless's own get their own graceful shutdown when
/// [`Process::draining`] completes (axum's closes idle keep-alive connections at once);
/// ceaseless's [`Server`](crate::Server) gives the lame-duck drain, which answers a
/// request already on the wire of an idle keep-alive connection.
#[derive(Clone)]
pub struct Process {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.publisher.current();
        f.debug_struct("Process")
            .field("phase", &s.phase)
            .field("live", &s.live)
            .finish_non_exhaustive()
    }
}

struct Inner {
    core: Mutex<Core>,
    publisher: Publisher,
    readiness: Readiness,
    ready_timeout: Duration,
    stop_grace: Duration,
    lame_duck: Option<Duration>,
    state: Option<crate::handover::state::Producer>,
    inherited_state: Option<Vec<u8>>,
    /// The TLS session-ticket key every generation shares (see `tickets`); without a
    /// provider of ceaseless's, only kept and passed on.
    #[cfg(feature = "tls")]
    #[cfg_attr(
        not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")),
        allow(dead_code)
    )]
    ticket_key: OnceLock<[u8; TICKET_KEY_LEN]>,
    /// The certificates of this process's TLS servers that [`Process::reload_tls`]
    /// swaps.
    #[cfg(feature = "tls")]
    tls_certs: Mutex<Vec<std::sync::Weak<dyn Reloadable>>>,
    control: OnceLock<Control>,
    exe: Exe,
    generation: u64,
    book: Arc<crate::observe::status::Book>,
    max_draining: usize,
    /// Held by the restart under way, to its very end: the child stopped and reaped, or
    /// told it is live. [`Process::finish`] waits for it, so that a process that drains
    /// fast never exits with a new generation half-started behind it.
    restart_running: Arc<tokio::sync::Mutex<()>>,
    /// Told each time an inherited descriptor is claimed (the commit waits for every
    /// inherited listener to be claimed before it says it holds them).
    claims: tokio::sync::watch::Sender<()>,
}

/// A descriptor to hand over, under its name.
struct Registered {
    name: Name,
    fd: OwnedFd,
}

/// Everything that changes, behind the one lock.
struct Core {
    state: State,
    /// Inherited sockets not claimed yet, and the readiness channel.
    inherited: Inherited,
    /// Duplicates of what this generation would hand over.
    registry: Vec<Registered>,
    listeners_taken: usize,
    /// ceaseless servers that have not finished draining.
    servers_running: usize,
    observers: Vec<Box<dyn Observer>>,
    /// Cancelled when a shutdown calls off the restart under way.
    abort: Option<CancellationToken>,
    /// The new generation is ready and this one is committing to the handover.
    committing: bool,
    /// A shutdown asked for while waiting for the parent's word on the handover.
    shutdown_deferred: bool,
    done: Option<Served>,
}

static PROCESS: OnceLock<Process> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// Locks a mutex, shrugging off poisoning: the state behind these locks stays
/// consistent across a panic (each critical section completes its field updates or
/// none, and observers catch nothing that could unwind half-way).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    /// A builder for the process owner.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// The process owner, if one was started.
    pub fn current() -> Option<Process> {
        PROCESS.get().cloned()
    }

    /// The process owner, started with the defaults if none was.
    pub(crate) fn current_or_start() -> Result<Process, Error> {
        if let Some(p) = PROCESS.get() {
            return Ok(p.clone());
        }
        let _one_at_a_time = lock(&STARTING);
        if let Some(p) = PROCESS.get() {
            return Ok(p.clone());
        }
        let p = ProcessBuilder::default().build()?;
        let _ = PROCESS.set(p.clone());
        Ok(p)
    }

    pub(crate) fn watch(&self) -> Watch {
        self.inner.publisher.watch()
    }

    /// Declares this generation ready: it is warmed up, and has started (or spawned)
    /// every server it will run. The previous generation (if any) then lets go — once
    /// this one's servers claimed every listener it inherited, whenever that is: it keeps
    /// accepting until then, so calling `ready()` before the servers took their sockets
    /// is safe. An inherited listener no server claimed within a second of the previous
    /// generation's answer is closed (a port this version no longer serves). The first
    /// generation tells the service manager `READY=1`. Under [`Readiness::Auto`] it
    /// happens by itself. Later calls do nothing.
    ///
    /// The recommended pattern: warm up, spawn the servers, then declare ready.
    ///
    /// ```no_run
    /// use ceaseless::{Process, Readiness, Server};
    ///
    /// # async fn warm_up() {}
    /// # async fn run() -> Result<(), ceaseless::Error> {
    /// let process = Process::builder().readiness(Readiness::Manual).start()?;
    /// warm_up().await; // pools, caches: the previous generation serves meanwhile
    /// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello\n")))
    /// });
    /// let api = tokio::spawn(Server::new("127.0.0.1:8080", app.clone()).listen_and_serve());
    /// let admin = tokio::spawn(Server::new("127.0.0.1:8081", app).listen_and_serve());
    /// // The spawned servers may not have taken their sockets yet: that is fine, the
    /// // previous generation lets go only once they did.
    /// process.ready();
    /// let (_api, _admin) = (api.await, admin.await);
    /// # Ok(())
    /// # }
    /// ```
    pub fn ready(&self) {
        let mut core = self.lock();
        self.declare_ready(&mut core);
    }

    /// The listening TCP socket for `addr` (as [`ListenAddr::parse`] reads it): the one
    /// the previous generation handed over for that address, or (socket activation) a
    /// socket-activated one bound to it, else a freshly bound one. It is handed over to
    /// the next generation at a restart.
    pub fn tcp_listener(&self, addr: &str) -> Result<tokio::net::TcpListener, Error> {
        let a = ListenAddr::parse(addr)?;
        if !matches!(a, ListenAddr::Tcp(_)) {
            return Err(Error::Address {
                addr: addr.into(),
                reason: "not a TCP address".into(),
            });
        }
        match self.open(&a, None, false)? {
            Listener::Tcp(l) => Ok(l),
            Listener::Unix(_) => unreachable!("a TCP address gives a TCP listener"),
        }
    }

    /// A descriptor of the application's own, handed over under `name` across restarts:
    /// the one the previous generation registered under that name, else the one
    /// `create` makes. Either way it is registered for the next generation, which gets
    /// it back by the same call (in every process model). Any socket or file works: a
    /// bound UDP socket (see [`Process::udp_socket`]), a listener of another protocol,
    /// a lock file. Under [`Readiness::Auto`] a generation is ready once every inherited
    /// descriptor is claimed, these included; what nobody claimed is closed a second
    /// after the previous generation's answer to readiness (see [`Process::ready`]).
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    ///
    /// # fn run(process: &ceaseless::Process) -> Result<(), ceaseless::Error> {
    /// // A lock file the generations pass on, opened only by the first.
    /// let lock: OwnedFd = process.fd("app.lock", || {
    ///     std::fs::File::create("/run/app/app.lock").map(OwnedFd::from)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn fd(
        &self,
        name: &str,
        create: impl FnOnce() -> std::io::Result<OwnedFd>,
    ) -> Result<OwnedFd, Error> {
        if name.is_empty() || name.starts_with("ceaseless.") {
            return Err(Error::Setting {
                name: "fd",
                reason: format!(
                    "{name:?}: a descriptor needs a name, not one of ceaseless's own (ceaseless.*)"
                ),
            });
        }
        let mut core = self.lock();
        if core.state.is_draining() {
            return Err(Error::Draining);
        }
        if core
            .registry
            .iter()
            .any(|r| matches!(&r.name, Name::Fd(n) if n == name))
        {
            return Err(Error::Setting {
                name: "fd",
                reason: format!("{name:?} is already registered"),
            });
        }
        let fd = match core.inherited.claim_fd(name) {
            Some(fd) => {
                tracing::info!(%name, "took over an inherited descriptor");
                fd
            }
            None => create().map_err(|source| Error::Descriptor {
                name: name.into(),
                source,
            })?,
        };
        let dup = fd.try_clone().map_err(|source| Error::Descriptor {
            name: name.into(),
            source,
        })?;
        core.registry.push(Registered {
            name: Name::Fd(name.into()),
            fd: dup,
        });
        self.auto_ready(&mut core);
        Ok(fd)
    }

    /// The TLS session-ticket key of this service: the one the previous generation
    /// handed over, else a new one, registered for the next (see `tickets`).
    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc-rs"))]
    pub(crate) fn tls_ticket_key(
        &self,
        new_key: impl FnOnce() -> Option<[u8; TICKET_KEY_LEN]>,
    ) -> Result<[u8; TICKET_KEY_LEN], Error> {
        let mut core = self.lock();
        if let Some(k) = self.inner.ticket_key.get() {
            return Ok(*k);
        }
        let err = |reason: String| Error::State {
            reason: format!("cannot make the TLS ticket key: {reason}"),
        };
        let key = new_key().ok_or_else(|| err("no randomness".into()))?;
        let fd = crate::handover::state::sealed(&key).map_err(|e| err(e.to_string()))?;
        core.registry.push(Registered {
            name: Name::Fd(TICKET_KEY_NAME.into()),
            fd,
        });
        let _ = self.inner.ticket_key.set(key);
        Ok(key)
    }

    /// A TLS server's certificate, for [`Process::reload_tls`].
    #[cfg(feature = "tls")]
    pub(crate) fn tls_reloadable(&self, r: Arc<dyn Reloadable>) {
        let mut certs = lock(&self.inner.tls_certs);
        certs.retain(|w| w.strong_count() > 0);
        certs.push(Arc::downgrade(&r));
    }

    /// Reads the certificate and key files of every TLS server of this process again
    /// (those given by [`Server::tls`](crate::Server::tls)) and serves the new pairs to
    /// new handshakes, without a restart; connections already made keep theirs. Every
    /// pair is read and checked (the key must match the certificate) before any is
    /// swapped: on an error nothing changes. Returns how many servers were reloaded.
    /// Also on the control socket (`reload-tls`).
    ///
    /// ```no_run
    /// # fn run(process: &ceaseless::Process) {
    /// match process.reload_tls() {
    ///     Ok(n) => eprintln!("{n} certificates reloaded"),
    ///     Err(e) => eprintln!("kept the old certificates: {e}"),
    /// }
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> Result<usize, Error> {
        let certs: Vec<_> = lock(&self.inner.tls_certs)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let loaded = certs
            .iter()
            .map(|c| c.load())
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|e| tracing::error!(error = %e, "TLS reload refused; nothing changed"))?;
        for install in loaded {
            install();
        }
        Ok(certs.len())
    }

    /// Sets ceaseless's gauges and counters (see the `metrics` module) from a snapshot
    /// of this process's [`status`](Process::status): call it just before rendering the
    /// recorder's output. Cheap: one snapshot, a few metric updates.
    ///
    /// ```no_run
    /// # fn f(process: &ceaseless::Process) {
    /// process.publish_metrics(); // then render the exporter's output
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        crate::observe::metrics::publish_status(&self.status());
    }

    /// The state the previous generation handed over at the restart that started this
    /// one ([`ProcessBuilder::state`]); `None` in a first generation, or when the
    /// previous one sends none.
    pub fn inherited_state(&self) -> Option<&[u8]> {
        self.inner.inherited_state.as_deref()
    }

    /// A UDP socket bound to `addr` (`"127.0.0.1:5353"`, `"[::]:514"`), kept across
    /// restarts: [`Process::fd`] under the name `udp:<addr>`. Both generations hold it
    /// while they overlap, and the kernel gives each datagram to whichever reads first,
    /// so the old generation should stop reading once it drains
    /// ([`Process::draining`]): the datagrams then queue for the new one.
    ///
    /// ```no_run
    /// # async fn run(process: ceaseless::Process) -> Result<(), ceaseless::Error> {
    /// let udp = process.udp_socket("127.0.0.1:5353")?;
    /// let mut buf = [0u8; 1500];
    /// let draining = process.draining();
    /// tokio::pin!(draining);
    /// loop {
    ///     tokio::select! {
    ///         biased;
    ///         got = udp.recv_from(&mut buf) => if let Ok((n, from)) = got {
    ///             let _ = udp.send_to(&buf[..n], from).await;
    ///         },
    ///         _ = &mut draining => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn udp_socket(&self, addr: &str) -> Result<tokio::net::UdpSocket, Error> {
        let sa: std::net::SocketAddr = addr.parse().map_err(|_| Error::Address {
            addr: addr.into(),
            reason: "not an IP address and port".into(),
        })?;
        let fd = self.fd(&format!("udp:{sa}"), || {
            std::net::UdpSocket::bind(sa).map(OwnedFd::from)
        })?;
        let bind_err = |source| Error::Bind {
            addr: addr.into(),
            source,
        };
        let socket = std::net::UdpSocket::from(fd);
        socket.set_nonblocking(true).map_err(bind_err)?;
        tokio::net::UdpSocket::from_std(socket).map_err(bind_err)
    }

    /// The listening Unix socket at `path`, as [`Process::tcp_listener`] does for TCP.
    /// The socket file is removed at a final shutdown (unless the service manager
    /// created it).
    pub fn unix_listener(&self, path: impl AsRef<Path>) -> Result<tokio::net::UnixListener, Error> {
        let a = ListenAddr::Unix(path.as_ref().to_path_buf());
        match self.open(&a, None, false)? {
            Listener::Unix(l) => Ok(l),
            Listener::Tcp(_) => unreachable!("a Unix address gives a Unix listener"),
        }
    }

    /// Completes when this generation starts draining (a restart handed its sockets
    /// over, or a shutdown began): the signal for a server's own graceful shutdown.
    /// [`Process::served`] then says which.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.watch().state;
        async move {
            let _ = rx.wait_for(|s| s.is_draining()).await;
        }
    }

    /// A [`Drain`](crate::Drain): the drain's start, and why, for handlers and tasks.
    pub fn drain(&self) -> crate::lifecycle::Drain {
        self.inner.publisher.drain()
    }

    /// This generation's number: 1 for the first process, one more at each successful
    /// restart (carried to the next generation in the handover).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// A snapshot of this process: its generation and phase, its listeners and their
    /// connections, and the recent restarts (carried across restarts). The control
    /// socket's `status` answers the same, as JSON.
    ///
    /// ```no_run
    /// # fn f(process: &ceaseless::Process) {
    /// let s = process.status();
    /// eprintln!("generation {}, {} restarts ok", s.generation, s.restarts_total.ok);
    /// # }
    /// ```
    pub fn status(&self) -> crate::observe::status::Status {
        self.inner.book.snapshot(self.inner.publisher.current())
    }

    /// A ceaseless server counts the connections of its listener at `address`.
    pub(crate) fn count_connections(
        &self,
        address: &ListenAddr,
        tracker: Arc<dyn crate::observe::status::Counts>,
    ) {
        self.inner
            .book
            .count_connections(&address.to_string(), tracker);
    }

    /// Whether a health check should say this process serves: see [`health`](crate::health()).
    pub(crate) fn healthy(&self) -> bool {
        let s = self.inner.publisher.current();
        match s.phase {
            // A new generation not ready yet shares its sockets with the previous one,
            // which serves: a restart must not look like a failure.
            Phase::Starting => !s.live,
            Phase::Confirming | Phase::Serving | Phase::Restarting => true,
            Phase::Draining(Served::HandedOver { .. }) => true,
            Phase::LameDuck | Phase::Draining(Served::Shutdown) => false,
        }
    }

    /// How this generation's serving ends, once it drains: `None` until then.
    pub fn served(&self) -> Option<Served> {
        self.inner.publisher.current().draining()
    }

    /// Restarts the process: starts the next generation, hands it every listener, and
    /// once it declared ready, starts draining this one. Returns the new generation's
    /// pid. This is what SIGHUP does; call it to restart from code and learn the
    /// outcome. On error nothing changed: this generation still serves, and a later
    /// restart may succeed.
    ///
    /// The restart runs to its end even if the caller stops waiting.
    pub async fn restart(&self) -> Result<u32, RestartError> {
        self.restart_then(Box::new(|| {})).await
    }

    /// Starts a graceful shutdown, as SIGTERM does (without running the signal hooks).
    /// Returns false if this generation was already draining.
    ///
    /// During a restart, before the new generation is ready, the restart is called off
    /// (the new generation is stopped) and this one shuts down; once the handover is
    /// committed, this one is draining already and the new one serves on.
    pub fn shutdown(&self) -> bool {
        let mut core = self.lock();
        self.begin_shutdown(&mut core)
    }

    /// Waits until this generation drains and every ceaseless server of it is drained,
    /// the control socket answered what it was asked, then finishes (at a final
    /// shutdown the live generation removes its PID file). Returns how serving ended.
    /// Call it before `main` returns when serving with other servers than ceaseless's
    /// own; ceaseless's servers call it when the last of them is drained.
    pub async fn finish(&self) -> Served {
        let mut rx = self.watch().state;
        let _ = rx.wait_for(|s| s.is_draining()).await;
        let _restart_over = self.inner.restart_running.lock().await;
        if let Some(c) = self.inner.control.get() {
            c.finish().await;
        }
        let mut core = self.lock();
        let served = core.state.draining().unwrap_or(Served::Shutdown);
        if core.done.is_none() {
            core.done = Some(served);
            let live = core.state.live;
            core.emit(&Transition::Done { served, live });
        }
        served
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.inner.core)
    }

    /// Opens the listener for `addr`: inherited, else bound. `server`: a ceaseless
    /// server that tells [`Process::server_stopped`] when it is drained.
    pub(crate) fn open(
        &self,
        addr: &ListenAddr,
        fd_name: Option<&str>,
        server: bool,
    ) -> Result<Listener, Error> {
        let mut core = self.lock();
        if core.state.is_draining() {
            return Err(Error::Draining);
        }
        let mut listener = None;
        let mut managed = false;
        let mut took = crate::observe::status::Origin::Bound;
        if let Some(entry) = core.inherited.claim(addr, fd_name) {
            managed = entry.managed();
            let (actual, origin) = (entry.actual.clone(), entry.origin());
            match Listener::adopt(entry.fd, addr) {
                Ok(l) => {
                    tracing::info!(addr = %actual, origin = %origin, "took over an inherited listener");
                    took = match entry.announced {
                        crate::handover::inherit::Announced::Parent(_) => {
                            crate::observe::status::Origin::Inherited
                        }
                        crate::handover::inherit::Announced::Systemd(_) => {
                            crate::observe::status::Origin::Activated
                        }
                    };
                    listener = Some(l);
                }
                Err(e) => {
                    tracing::error!(error = %e, %addr, "cannot use the inherited listener; binding afresh")
                }
            }
        }
        let listener = match listener {
            Some(l) => l,
            None => {
                managed = false;
                Listener::bind(addr)?
            }
        };
        let fd = listener.dup().map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
        self.inner
            .book
            .listener(listener.local_addr(addr).to_string(), took);
        core.registry.push(Registered {
            name: Name::Listener {
                addr: addr.clone(),
                managed,
            },
            fd,
        });
        core.listeners_taken += 1;
        self.inner.claims.send_replace(());
        if server {
            // It checks readiness itself, once it said it serves.
            core.servers_running += 1;
        } else {
            self.auto_ready(&mut core);
        }
        Ok(listener)
    }

    /// A ceaseless server announced that it serves.
    pub(crate) fn server_listening(&self) {
        let mut core = self.lock();
        self.auto_ready(&mut core);
    }

    fn auto_ready(&self, core: &mut Core) {
        if self.inner.readiness == Readiness::Auto && core.inherited.unclaimed_listeners() == 0 {
            self.declare_ready(core);
        }
    }

    /// A ceaseless server finished its drain; the last one finishes the generation.
    pub(crate) async fn server_stopped(&self) -> Served {
        let last = {
            let mut core = self.lock();
            core.servers_running = core.servers_running.saturating_sub(1);
            core.servers_running == 0
        };
        if last {
            self.finish().await
        } else {
            self.served().unwrap_or(Served::Shutdown)
        }
    }

    fn declare_ready(&self, core: &mut Core) {
        if core.state.phase != Phase::Starting {
            return;
        }
        // Nothing inherited is closed here: a server that asks for an inherited address
        // after readiness still gets it (see the `commit` module's early readiness).
        let parent = core.inherited.parent;
        // Logged before the state changes, so in the log this line precedes any restart
        // of this generation.
        tracing::info!(pid = std::process::id(), previous = ?parent, "declared ready");
        match core.inherited.ready.take() {
            None => {
                core.state = State {
                    phase: Phase::Serving,
                    live: true,
                };
                core.emit(&Transition::Ready {
                    first: parent.is_none(),
                });
                self.close_unclaimed_later(core);
            }
            Some(channel) => {
                core.state.phase = Phase::Confirming;
                core.emit(&Transition::Ready { first: false });
                let p = self.clone();
                tokio::spawn(async move { p.confirm(channel).await });
            }
        }
        self.inner.publisher.publish(core.state);
    }

    fn unclaimed(&self) -> usize {
        self.lock().inherited.unclaimed_listeners()
    }

    /// Waits until the servers claimed every inherited listener, or until the claim
    /// grace ends, and closes what is still unclaimed then (a port this version no
    /// longer serves).
    async fn settle_claims(&self) {
        let deadline = crate::duration::deadline(CLAIM_GRACE);
        let mut claims = self.inner.claims.subscribe();
        while self.unclaimed() > 0 {
            tokio::select! {
                changed = claims.changed() => if changed.is_err() { break },
                _ = crate::duration::sleep_until(deadline) => break,
            }
        }
        self.lock().inherited.close_unclaimed();
    }

    /// [`Process::settle_claims`] in a task of its own, for a live generation that owes
    /// nobody an answer.
    fn close_unclaimed_later(&self, core: &Core) {
        if core.inherited.unclaimed_listeners() == 0 {
            return;
        }
        let p = self.clone();
        tokio::spawn(async move { p.settle_claims().await });
    }

    /// A generation started by a restart or a takeover, once ready: the commit's
    /// exchange with the previous generation (the `commit` module), to its end.
    async fn confirm(&self, channel: ReadyChannel) {
        let report = Message::Ready(std::process::id()).encode();
        let fd = match channel {
            ReadyChannel::Pipe(fd) => {
                // No answer comes on a pipe: report once holding, and be live.
                self.settle_claims().await;
                if let Err(e) = write_all(&fd, report.as_bytes()) {
                    tracing::error!(error = %e, "cannot report readiness to the previous generation");
                }
                return self.went_live();
            }
            ReadyChannel::Socket(fd) => fd,
        };
        let std = std::os::unix::net::UnixStream::from(fd);
        match std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(std))
        {
            Ok(stream) => self.exchange(stream, &report).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the channel to the previous generation; taking over");
                self.went_live();
            }
        }
    }

    /// The new generation's side of the exchange on a socket, driven by the `commit`
    /// module's machine: report, then answer `go` with `holding` once every inherited
    /// listener is claimed (or the claim grace ended), then be live or drain.
    async fn exchange(&self, stream: tokio::net::UnixStream, report: &str) {
        use tokio::io::AsyncWriteExt;
        let (reader, mut writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(reader);
        let mut claims = self.inner.claims.subscribe();
        let mut new = New::Starting {
            claimed: self.unclaimed() == 0,
        }
        .step(Heard::Ready)
        .0;
        let mut heard = match writer.write_all(report.as_bytes()).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report readiness; the previous generation is gone, taking over");
                Some(Heard::Closed)
            }
        };
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let h = match heard.take() {
                Some(h) => h,
                None => self.hear(&mut reader, &mut claims, new, grace).await,
            };
            let (next, act) = new.step(h);
            new = next;
            match act {
                Do::Wait | Do::Report => {
                    if new == New::Claiming && grace.is_none() {
                        // Claims may have landed between the last look and `go`.
                        if self.unclaimed() == 0 {
                            heard = Some(Heard::AllClaimed);
                        } else {
                            grace = Some(tokio::time::Instant::now() + CLAIM_GRACE);
                        }
                    }
                }
                Do::Acknowledge { close_unclaimed } => {
                    grace = None;
                    if close_unclaimed {
                        self.lock().inherited.close_unclaimed();
                    }
                    match writer.write_all(Message::Holding.encode().as_bytes()).await {
                        Ok(()) => {
                            tracing::debug!("holding every listener; told the previous generation")
                        }
                        Err(_) => heard = Some(Heard::Closed),
                    }
                }
                Do::BecomeLive => return self.went_live(),
                Do::Drain => {
                    let mut core = self.lock();
                    if core.state.phase == Phase::Confirming {
                        tracing::info!(
                            pid = std::process::id(),
                            "the previous generation called the restart off"
                        );
                        self.abandon(&mut core);
                    }
                    return;
                }
            }
        }
    }

    /// What the new generation hears next: a word from the previous generation, its
    /// channel closing, the last claim (while claims are awaited), the grace's end.
    async fn hear(
        &self,
        reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        claims: &mut tokio::sync::watch::Receiver<()>,
        new: New,
        grace: Option<tokio::time::Instant>,
    ) -> Heard {
        use tokio::io::AsyncBufReadExt;
        let mut claiming = matches!(new, New::Reported { claimed: false } | New::Claiming);
        let mut line = String::new();
        loop {
            line.clear();
            tokio::select! {
                read = reader.read_line(&mut line) => return match read {
                    Ok(n) if n > 0 => match Message::decode(&line) {
                        Some(m) => Heard::Word(m),
                        None => {
                            tracing::warn!(line = %line.trim_end(), "unexpected message from the previous generation");
                            continue;
                        }
                    },
                    _ => Heard::Closed,
                },
                changed = claims.changed(), if claiming => {
                    // (The sender lives as long as this process owner: never closed.)
                    claiming = changed.is_ok();
                    if claiming && self.unclaimed() == 0 {
                        return Heard::AllClaimed;
                    }
                }
                _ = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => return Heard::GraceOver,
            }
        }
    }

    /// The previous generation committed (or is gone): this one is live. A shutdown
    /// asked for meanwhile begins now, with its lame duck.
    fn went_live(&self) {
        let mut core = self.lock();
        if core.state.phase != Phase::Confirming {
            return; // a deferred shutdown gave up waiting
        }
        core.become_live();
        self.inner.publisher.publish(core.state);
        self.close_unclaimed_later(&core);
        if std::mem::take(&mut core.shutdown_deferred) {
            self.begin_shutdown(&mut core);
        }
    }

    /// A generation that will never be live stops: at once if it has no connection to
    /// finish (it never accepted, or what it accepted is done), whatever the
    /// application awaits (a warm-up, say); else it drains what it accepted.
    fn abandon(&self, core: &mut Core) {
        if !core.state.live
            && core.inherited.parent.is_some()
            && self.inner.book.open_connections() == Some(0)
        {
            tracing::info!(
                pid = std::process::id(),
                "never went live and has no connection to finish; exiting now"
            );
            std::process::exit(0);
        }
        self.enter_drain(core, Served::Shutdown);
    }

    fn begin_shutdown(&self, core: &mut Core) -> bool {
        match core.state.phase {
            Phase::Draining(_) => false,
            Phase::Confirming => {
                if !core.shutdown_deferred {
                    core.shutdown_deferred = true;
                    let p = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CONFIRM_WAIT).await;
                        let mut core = p.lock();
                        if core.state.phase == Phase::Confirming {
                            tracing::warn!(
                                "no word from the previous generation; draining as not live"
                            );
                            p.abandon(&mut core);
                        }
                    });
                }
                true
            }
            // A generation a restart or a takeover started, not ready yet: the previous
            // one serves, and this one will never be live.
            Phase::Starting if !core.state.live => {
                self.abandon(core);
                true
            }
            Phase::Restarting if core.committing => false,
            Phase::Restarting => {
                // The restart is called off (its successor is stopped by the restart's
                // task); this generation never stopped accepting, and shuts down as it
                // would have without the restart: lame duck first.
                if let Some(a) = core.abort.take() {
                    a.cancel();
                }
                self.lame_duck_or_drain(core);
                true
            }
            Phase::Serving => {
                self.lame_duck_or_drain(core);
                true
            }
            // A second request during the lame-duck period: drain now.
            Phase::LameDuck | Phase::Starting => {
                self.enter_drain(core, Served::Shutdown);
                true
            }
        }
    }

    /// A shutdown of the live generation: the lame-duck period if there is one, then
    /// the drain.
    fn lame_duck_or_drain(&self, core: &mut Core) {
        let Some(period) = self.inner.lame_duck else {
            self.enter_drain(core, Served::Shutdown);
            return;
        };
        core.state.phase = Phase::LameDuck;
        self.inner.publisher.publish(core.state);
        // Logged once the health check says 503, so that the line means it does.
        tracing::info!(
            pid = std::process::id(),
            ms = crate::duration::millis(period),
            "lame duck: the health check says 503 while everything is still served"
        );
        let p = self.clone();
        tokio::spawn(async move {
            crate::duration::sleep_until(crate::duration::deadline(period)).await;
            let mut core = p.lock();
            if core.state.phase == Phase::LameDuck {
                p.enter_drain(&mut core, Served::Shutdown);
            }
        });
    }

    fn enter_drain(&self, core: &mut Core, why: Served) {
        core.state.phase = Phase::Draining(why);
        let mut remove = Vec::new();
        match why {
            Served::HandedOver { pid: new_pid } => {
                core.state.live = false;
                core.emit(&Transition::HandedOver { new_pid });
            }
            Served::Shutdown => {
                let live = core.state.live;
                if live {
                    for r in &core.registry {
                        match &r.name {
                            Name::Listener {
                                addr: ListenAddr::Unix(p),
                                managed: false,
                            } => remove.push(p.clone()),
                            Name::Control(p) => remove.push(p.clone()),
                            _ => {}
                        }
                    }
                }
                core.emit(&Transition::ShutdownBegun { live });
            }
        }
        // Our duplicates go now, so that (on shutdown) new connections are refused as
        // soon as the servers drop their own listeners.
        core.registry.clear();
        core.inherited.close_unclaimed();
        self.inner.publisher.publish(core.state);
        for p in remove {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::debug!(error = %e, path = %p.display(), "cannot remove a socket file");
            }
        }
    }

    fn hammer(&self) -> bool {
        let core = self.lock();
        if core.state.is_draining() {
            self.inner.publisher.hammer();
            true
        } else {
            false
        }
    }

    /// [`Process::restart`], running `settled` once the outcome is known and logged,
    /// before this generation starts draining (SIGHUP's post hooks go here).
    async fn restart_then(&self, settled: Box<dyn FnOnce() + Send>) -> Result<u32, RestartError> {
        let claimed = match self.claim_restart().await {
            Ok(c) => c,
            Err(e) => {
                log_outcome(Err(&e));
                settled();
                return Err(e);
            }
        };
        let p = self.clone();
        // Runs to its end in a task of its own, even if the caller stops waiting (a
        // timeout around this call, a client gone from an admin endpoint): cut short,
        // it would leave the restart slot taken for good and a new generation unwatched.
        tokio::spawn(async move { p.run_restart(claimed, settled).await })
            .await
            .unwrap_or_else(|e| {
                Err(RestartError::Io(std::io::Error::other(format!(
                    "restart task failed: {e}"
                ))))
            })
    }

    /// Takes the single restart slot, or says why a restart cannot start now. A slot
    /// still held by a failed restart whose generation is being stopped is waited for:
    /// the restart asked for meanwhile starts as soon as it is free.
    async fn claim_restart(&self) -> Result<Claimed, RestartError> {
        let deadline = tokio::time::Instant::now() + FIRST_READY_WAIT;
        let confirmed_by = tokio::time::Instant::now() + CLAIM_GRACE + CONFIRM_WAIT;
        loop {
            {
                let mut core = self.lock();
                match core.state.phase {
                    Phase::Serving if self.inner.restart_running.try_lock().is_ok() => {
                        return self.begin_restart(&mut core)
                    }
                    Phase::Serving => {}
                    Phase::Draining(_) | Phase::LameDuck => return Err(RestartError::ShuttingDown),
                    Phase::Restarting => return Err(RestartError::InProgress),
                    // Declared ready, in the exchange with the previous generation: a
                    // restart asked for now (a deploy that restarts twice in a row, the
                    // second SIGHUP to the newest pid) runs once this generation is live
                    // (its claims settle within the grace, then `live` follows at once);
                    // if the handover fails instead, this generation leaves anyway.
                    Phase::Confirming => {
                        if tokio::time::Instant::now() >= confirmed_by {
                            return Err(RestartError::InProgress);
                        }
                    }
                    // A new generation not ready yet: the restart that started it is
                    // still in progress, and some of its servers may not have taken
                    // their sockets over yet, so a handover now would lose them.
                    Phase::Starting if core.inherited.parent.is_some() => {
                        return Err(RestartError::InProgress)
                    }
                    // A first generation: its servers may be a moment from ready.
                    Phase::Starting => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(if core.listeners_taken == 0 {
                                RestartError::NoServer
                            } else {
                                RestartError::NotYetReady
                            });
                        }
                    }
                }
            }
            if self.inner.restart_running.try_lock().is_ok() {
                // A first generation starting: look again in a moment.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // A failed generation is still being stopped: wait for the slot (its stop
            // is bounded by the stop grace), then look again.
            let wait = self.inner.stop_grace + Duration::from_secs(5);
            if tokio::time::timeout(wait, self.inner.restart_running.lock())
                .await
                .is_err()
            {
                return Err(RestartError::InProgress);
            }
        }
    }

    fn begin_restart(&self, core: &mut Core) -> Result<Claimed, RestartError> {
        if !core
            .registry
            .iter()
            .any(|r| matches!(r.name, Name::Listener { .. }))
        {
            return Err(RestartError::NoServer);
        }
        let mut names = Vec::with_capacity(core.registry.len());
        let mut fds = Vec::with_capacity(core.registry.len());
        for r in &core.registry {
            names.push(r.name.clone());
            fds.push(r.fd.try_clone()?);
        }
        // Free unless the last restart's task is still finishing.
        let running = self
            .inner
            .restart_running
            .clone()
            .try_lock_owned()
            .map_err(|_| RestartError::InProgress)?;
        let abort = CancellationToken::new();
        core.abort = Some(abort.clone());
        core.state.phase = Phase::Restarting;
        core.emit(&Transition::RestartBegun);
        self.inner.publisher.publish(core.state);
        Ok(Claimed {
            names,
            fds,
            abort,
            _running: running,
        })
    }

    async fn run_restart(
        &self,
        claimed: Claimed,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        let Claimed {
            mut names,
            mut fds,
            abort,
            _running,
        } = claimed;
        let inner = &self.inner;
        // The application's state for the new generation, made before it starts.
        let state = match &inner.state {
            Some(p) => Some(crate::handover::state::produce(p, inner.ready_timeout).await),
            None => None,
        };
        let started: Result<Successor, RestartError> = async {
            if let Some(s) = state {
                fds.push(s?);
                names.push(Name::Fd(crate::handover::state::NAME.into()));
            }
            let carried = inner.book.child_env();
            let supervisor = crate::restart::supervise::link().map(|l| (l.supervisor(), l.fd()));
            let next = restart::spawn(
                &inner.exe,
                &names,
                fds,
                inner.generation,
                inner.max_draining,
                carried,
                supervisor,
            )
            .await?;
            tracing::info!(pid = std::process::id(), new_pid = next.successor.pid, path = %inner.exe.path.display(), spawn_us = next.spawn_us, forked = next.forked, "started the next generation; waiting for it to be ready");
            Ok(next.successor)
        }
        .await;
        self.settle(started, abort, _running, settled).await
    }

    /// Answers `takeover` on the control socket: hands the listeners to the process at
    /// the other end, waits for it to be ready, commits or calls it off (see the
    /// `takeover` module).
    async fn serve_takeover(&self, stream: tokio::net::UnixStream) {
        use tokio::io::AsyncWriteExt;
        let pid = std::process::id();
        let newcomer = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        tracing::info!(
            pid,
            new_pid = newcomer,
            "takeover requested on the control socket"
        );
        let refused = if crate::restart::supervise::link().is_some() {
            Err(RestartError::TakeoverRefused(
                "this process runs under the supervisor",
            ))
        } else if newcomer == 0 {
            Err(RestartError::TakeoverRefused(
                "the new process's pid is unknown",
            ))
        } else {
            self.claim_restart().await
        };
        let claimed = match refused {
            Ok(c)
                if c.fds.len() + usize::from(self.inner.state.is_some())
                    > crate::sys::fdpass::MAX_FDS =>
            {
                let e = RestartError::TakeoverRefused("more sockets than one message carries");
                let reply = format!("error {}\n", e.to_string().replace(['\n', '\r'], " "));
                let _ = self
                    .restart_failed(None, e, c._running, Box::new(|| {}))
                    .await;
                let mut stream = stream;
                let _ = stream.write_all(reply.as_bytes()).await;
                return;
            }
            Ok(c) => c,
            Err(e) => {
                log_outcome(Err(&e));
                let mut stream = stream;
                let reply = format!("error {}\n", e.to_string().replace(['\n', '\r'], " "));
                let _ = stream.write_all(reply.as_bytes()).await;
                return;
            }
        };
        let p = self.clone();
        // Runs to its end in a task of its own, as a restart does.
        let _ = tokio::spawn(async move { p.run_takeover(claimed, stream, newcomer).await }).await;
    }

    async fn run_takeover(
        &self,
        claimed: Claimed,
        stream: tokio::net::UnixStream,
        newcomer: u32,
    ) -> Result<u32, RestartError> {
        let Claimed {
            mut names,
            mut fds,
            abort,
            _running,
        } = claimed;
        let started = async {
            // The application's state, as a restart hands it over.
            if let Some(p) = &self.inner.state {
                fds.push(crate::handover::state::produce(p, self.inner.ready_timeout).await?);
                names.push(Name::Fd(crate::handover::state::NAME.into()));
            }
            let plan = crate::handover::lineage::plan(self.inner.max_draining);
            let offer = crate::handover::Offer {
                generation: self.inner.generation,
                pid: std::process::id(),
                draining: plan.kept,
                names,
            };
            crate::restart::takeover::offer(&stream, &offer, &fds)
                .await
                .map_err(RestartError::Io)?;
            drop(fds);
            tracing::info!(
                pid = std::process::id(),
                new_pid = newcomer,
                "handed the listeners to the new process; waiting for it to be ready"
            );
            Ok(crate::restart::takeover::newcomer(
                newcomer,
                stream,
                plan.hammer,
                self.inner.max_draining,
            ))
        }
        .await;
        self.settle(started, abort, _running, Box::new(|| {})).await
    }

    /// A successor started (or failed to): runs the commit's exchange with it (the
    /// `commit` module), then commits the handover or stops it, and records the
    /// outcome. The tail of a restart and of a takeover alike.
    async fn settle(
        &self,
        started: Result<Successor, RestartError>,
        abort: CancellationToken,
        running: tokio::sync::OwnedMutexGuard<()>,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        let mut next = match started {
            Ok(n) => n,
            Err(e) => return self.restart_failed(None, e, running, settled).await,
        };
        // The restart is on until a shutdown calls it off (the phase leaves Restarting).
        let on = |core: &Core| core.state.phase == Phase::Restarting && !abort.is_cancelled();
        let still_on = || on(&self.lock());
        let held = next
            .until_holding(self.inner.ready_timeout, &abort, still_on)
            .await;
        // The commit point: under the lock, so that a shutdown lands before it (and
        // calls the restart off) or after it (and finds this generation draining).
        let decided = held.and_then(|()| {
            let mut core = self.lock();
            next.decide(on(&core))?;
            core.committing = true;
            Ok(())
        });
        if let Err(e) = decided {
            return self.restart_failed(Some(next), e, running, settled).await;
        }
        let new_pid = next.pid;
        // The PID file first, then the log and the hooks, then the drain (and
        // MAINPID=): whoever learns of the new pid can read it in the file.
        self.lock().emit(&Transition::Committed { new_pid });
        log_outcome(Ok(new_pid));
        settled();
        {
            let mut core = self.lock();
            core.committing = false;
            core.abort = None;
            self.enter_drain(&mut core, Served::HandedOver { pid: new_pid });
        }
        next.commit().await;
        drop(running);
        Ok(new_pid)
    }

    /// A restart failed: this generation, which never stopped accepting, serves on. The
    /// failure is recorded first (a restart asked for from now on waits for the slot),
    /// then the successor is stopped and reaped, then the outcome logged.
    async fn restart_failed(
        &self,
        next: Option<Successor>,
        e: RestartError,
        running: tokio::sync::OwnedMutexGuard<()>,
        settled: Box<dyn FnOnce() + Send>,
    ) -> Result<u32, RestartError> {
        {
            let mut core = self.lock();
            core.abort = None;
            if core.state.phase == Phase::Restarting {
                core.state.phase = Phase::Serving;
                core.emit(&Transition::RestartFailed(&e));
                self.inner.publisher.publish(core.state);
            }
        }
        if let Some(next) = next {
            next.stop(self.inner.stop_grace).await;
        }
        drop(running);
        // Logged once recorded: a reader of the line finds it in the status.
        log_outcome(Err(&e));
        settled();
        Err(e)
    }
}

#[cfg(feature = "control")]
/// Takes the listeners over from the process serving the control socket at `path`:
/// they replace whatever this process found in its environment (socket activation).
fn take_over(path: &Path, found: Inherited) -> Result<Inherited, Error> {
    let fail = |source| {
        let e = Error::Takeover {
            path: path.to_path_buf(),
            source,
        };
        tracing::error!(error = %e, "takeover failed; nothing was bound");
        e
    };
    if crate::restart::supervise::link().is_some() {
        return Err(fail(crate::error::TakeoverError::Supervised));
    }
    let taken = crate::restart::takeover::request(path, TAKEOVER_WAIT).map_err(fail)?;
    let mut found = found;
    found.close_unclaimed();
    crate::handover::lineage::tell(taken.draining);
    tracing::info!(
        pid = std::process::id(),
        from = taken.pid,
        generation = taken.generation,
        sockets = taken.entries.len(),
        "took the listeners over; ready soon"
    );
    Ok(Inherited::from_takeover(
        taken.pid,
        taken.generation,
        taken.entries,
        taken.channel,
    ))
}

/// What a restart took from the registry.
struct Claimed {
    names: Vec<Name>,
    fds: Vec<OwnedFd>,
    abort: CancellationToken,
    /// Released when the restart's task ends.
    _running: tokio::sync::OwnedMutexGuard<()>,
}

impl Core {
    fn emit(&mut self, t: &Transition<'_>) {
        for o in &mut self.observers {
            o.observe(t);
        }
        let registry = self.registry.iter();
        crate::restart::supervise::observe(t, registry.map(|r| (&r.name, r.fd.as_fd())));
    }

    /// Serving, and live: the previous generation let go (or is gone). The caller
    /// publishes the state.
    fn become_live(&mut self) {
        self.state = State {
            phase: Phase::Serving,
            live: true,
        };
        self.emit(&Transition::Live);
    }
}

fn log_outcome(outcome: Result<u32, &RestartError>) {
    let pid = std::process::id();
    match outcome {
        Ok(new_pid) => tracing::info!(pid, new_pid, "restart succeeded; draining"),
        Err(e) => tracing::error!(pid, error = %e, "restart failed; this generation carries on"),
    }
}

/// Writes all of `buf` to a descriptor (a few bytes on a pipe or socket: it does not
/// block for long).
fn write_all(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::from(fd.try_clone()?);
    f.write_all(buf)
}

/// The owner's answers to signals.
struct SignalActions(Process);

impl Actions for SignalActions {
    fn restart(&self, settled: Box<dyn FnOnce() + Send>) {
        let p = self.0.clone();
        tokio::spawn(async move {
            let _ = p.restart_then(settled).await;
        });
    }

    fn shutdown(&self) -> bool {
        self.0.shutdown()
    }

    fn hammer(&self) -> bool {
        self.0.hammer()
    }
}

/// Restarts the process through its owner; see [`Process::restart`]. Fails with
/// [`RestartError::NoServer`] if no process owner was started (no server runs).
///
/// ```no_run
/// # async fn admin() {
/// match ceaseless::restart().await {
///     Ok(pid) => println!("now served by pid {pid}"),
///     Err(e) => eprintln!("restart failed, still serving: {e}"),
/// }
/// # }
/// ```
pub async fn restart() -> Result<u32, RestartError> {
    match Process::current() {
        Some(p) => p.restart().await,
        None => Err(RestartError::NoServer),
    }
}

/// Starts a graceful shutdown of every server in the process, as SIGTERM does (without
/// running the signal hooks); see [`Process::shutdown`]. Returns false if the process
/// was already draining (or no process owner was started).
pub fn shutdown() -> bool {
    Process::current().is_some_and(|p| p.shutdown())
}
