//! The process owner: one object per process that owns its lifecycle — the sockets it
//! inherited and opened, readiness, restarts, the drain — as the explicit state machine
//! drawn in [`lifecycle`](crate::lifecycle). Every transition happens under one lock, in
//! one place here; the PID file and the service manager observe the transitions, and
//! servers, connections and the control socket follow the published state.
//!
//! # This folder
//! The owner: this file (the [`Process`] and its state, what servers ask of it),
//! `builder` (its settings and what starting it does), `ready` (a new generation's
//! side of the handover), `restarting` (the old generation's side, for a restart or a
//! takeover), `probation` (parking after a commit, and the rollback, from both sides),
//! `stop` (the lame duck, the drain, the hammer), and `signals`. It calls `restart` (to start the next
//! generation or answer a takeover), `observe` (the observers of its transitions, the
//! control socket) and `handover` (what it inherited, the commit's side of a new
//! generation); `serve` calls it, nothing below does (what it needs of the TLS code, a
//! certificate to reload, it names itself: [`Reloadable`]).

mod builder;
#[cfg(unix)]
mod confirm;
#[cfg(unix)]
mod probation;
mod ready;
#[cfg(unix)]
mod restarting;
pub(crate) mod signals;
mod stop;

pub use builder::{ProcessBuilder, Readiness};

use std::future::Future;
#[cfg(unix)]
use std::os::fd::{AsFd, OwnedFd};
#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::addr::ListenAddr;
use crate::error::{Error, RestartError};
#[cfg(unix)]
use crate::handover::commit::{Do, Heard, New, CLAIM_GRACE};
#[cfg(unix)]
use crate::handover::inherit::{Inherited, ReadyChannel};
use crate::handover::listen::Listener;
#[cfg(unix)]
use crate::handover::{Message, Name, ProcessEnv};
use crate::lifecycle::{Observer, Phase, Publisher, Served, State, Transition, Watch};
#[cfg(unix)]
use crate::observe::control::{self, Control};
#[cfg(unix)]
use crate::restart::successor::Successor;
#[cfg(unix)]
use crate::restart::{self, Exe};
use signals::{Actions, Hook, Hooks, Signal, Stage};

/// Default [`ProcessBuilder::ready_timeout`]: 30 s.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub use crate::lifecycle::DEFAULT_STOP_GRACE;
/// How long a first generation whose servers are starting waits for them to be ready
/// before it refuses a restart (a SIGHUP sent the moment "serving" is logged).
#[cfg(unix)]
const FIRST_READY_WAIT: Duration = Duration::from_secs(1);
/// How long, after the hammer, ceaseless's own servers and the application have to
/// finish before a generation whose other servers still hold connections exits.
const HAMMER_GRACE: Duration = Duration::from_secs(1);
/// How long a SIGTERM that lands while this generation waits for its parent's word on
/// the handover waits for that word before the generation drains as not live.
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long a takeover waits for the running process's offer.
#[cfg(all(unix, feature = "control"))]
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// The name the TLS session-ticket key travels under from generation to generation
/// (the process keeps it and passes it on; the TLS servers use it).
#[cfg(all(unix, feature = "tls"))]
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

/// The process owner.
///
/// Create it first, at the top of `main`; everything that concerns the process as a
/// whole lives here: readiness, restarts, the drain, the PID file, the control socket,
/// signals and their hooks. [`Server`](crate::Server)s and the one-liners use it (they
/// start one with the defaults if the application did not); [`serve`](crate::serve())
/// serves the listeners it hands out on ceaseless's connections, and other servers —
/// `axum::serve`, tonic, plain hyper — take their listeners from it and stop on
/// [`Process::draining`].
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
///     // axum::serve's shape on ceaseless's connections (axum::serve itself works too,
///     // with `.with_graceful_shutdown(process.draining())` and axum's own drain).
///     ceaseless::serve(listener, app).await?;
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
/// ceaseless's [`Server`](crate::Server) and [`serve`](crate::serve()) give the
/// lame-duck drain, which answers a request already on the wire of an idle keep-alive
/// connection.
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
    #[cfg_attr(not(unix), allow(dead_code))] // restarts only
    ready_timeout: Duration,
    #[cfg_attr(not(unix), allow(dead_code))]
    stop_grace: Duration,
    lame_duck: Option<Duration>,
    hammer_time: Option<Duration>,
    /// The runtime the owner was started in: its own tasks go there, whichever thread
    /// asks (a shutdown or `ready()` called from a thread of the application's).
    runtime: tokio::runtime::Handle,
    #[cfg_attr(not(unix), allow(dead_code))] // no restart to hand it to
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
    #[cfg(unix)]
    control: OnceLock<Control>,
    #[cfg(unix)]
    exe: Exe,
    generation: u64,
    book: Arc<crate::observe::status::Book>,
    #[cfg_attr(not(unix), allow(dead_code))] // no restart, no older generation
    max_draining: usize,
    /// Held by the restart under way, to its very end: the child stopped and reaped, or
    /// told it is live. [`Process::finish`] waits for it, so that a process that drains
    /// fast never exits with a new generation half-started behind it.
    restart_running: Arc<tokio::sync::Mutex<()>>,
    /// Told each time an inherited descriptor is claimed (the commit waits for every
    /// inherited listener to be claimed before it says it holds them).
    claims: tokio::sync::watch::Sender<()>,
    /// [`ProcessBuilder::probation`].
    #[cfg_attr(not(unix), allow(dead_code))]
    probation: Option<Duration>,
    /// [`ProcessBuilder::rollback_on_errors`].
    #[cfg_attr(not(unix), allow(dead_code))]
    rollback_on_errors: Option<(f64, u64)>,
    /// The responses counted for the error policy.
    outcomes: Arc<crate::lifecycle::Outcomes>,
}

/// A descriptor to hand over, under its name.
#[cfg(unix)]
struct Registered {
    name: Name,
    fd: OwnedFd,
}

/// Everything that changes, behind the one lock.
struct Core {
    state: State,
    /// Inherited sockets not claimed yet, and the readiness channel.
    #[cfg(unix)]
    inherited: Inherited,
    /// Duplicates of what this generation would hand over.
    #[cfg(unix)]
    registry: Vec<Registered>,
    listeners_taken: usize,
    /// ceaseless servers that have not finished draining.
    servers_running: usize,
    observers: Vec<Box<dyn Observer>>,
    /// Cancelled when a shutdown calls off the restart under way.
    #[cfg_attr(not(unix), allow(dead_code))] // no restart to call off
    abort: Option<CancellationToken>,
    /// The new generation is ready and this one is committing to the handover.
    #[cfg_attr(not(unix), allow(dead_code))]
    committing: bool,
    /// A shutdown asked for while waiting for the parent's word on the handover.
    #[cfg_attr(not(unix), allow(dead_code))]
    shutdown_deferred: bool,
    done: Option<Served>,
    /// The probation this generation is on, or parks for.
    #[cfg(unix)]
    probation: Option<probation::Probation>,
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
            #[cfg(unix)]
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
    ///
    /// Unix only: there is no restart to hand a descriptor to on Windows.
    #[cfg(unix)]
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
        #[cfg(unix)]
        {
            let fd = crate::handover::state::sealed(&key).map_err(|e| err(e.to_string()))?;
            core.registry.push(Registered {
                name: Name::Fd(TICKET_KEY_NAME.into()),
                fd,
            });
        }
        #[cfg(not(unix))]
        let _ = &mut core;
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
        let bind_err = |source| Error::Bind {
            addr: addr.into(),
            source,
        };
        #[cfg(unix)]
        let socket = std::net::UdpSocket::from(self.fd(&format!("udp:{sa}"), || {
            std::net::UdpSocket::bind(sa).map(OwnedFd::from)
        })?);
        // Nothing to keep it for: no restart on Windows.
        #[cfg(not(unix))]
        let socket = std::net::UdpSocket::bind(sa).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        tokio::net::UdpSocket::from_std(socket).map_err(bind_err)
    }

    /// The listening Unix socket at `path`, as [`Process::tcp_listener`] does for TCP.
    /// The socket file is removed at a final shutdown (unless the service manager
    /// created it). Unix only.
    #[cfg(unix)]
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
        #[allow(unused_mut)]
        let mut s = self.inner.book.snapshot(self.inner.publisher.current());
        #[cfg(unix)]
        {
            s.probation = self.probation_status();
        }
        s
    }

    /// Rolls the service back to the generation parked behind this one, during this
    /// generation's probation ([`ProcessBuilder::probation`]): the parked generation
    /// accepts again, then this one drains as an old generation does at a restart.
    /// Returns the pid that serves again. For an application's own health judgement
    /// (a dependency it cannot reach since the deploy, a migration that failed).
    ///
    /// ```no_run
    /// # async fn f(process: ceaseless::Process) {
    /// # let schema_ok = false;
    /// if !schema_ok {
    ///     match process.rollback().await {
    ///         Ok(pid) => eprintln!("rolled back: pid {pid} serves again"),
    ///         Err(e) => eprintln!("serving on: {e}"), // no probation, or it is over
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// Fails with [`RollbackError::NoProbation`](crate::RollbackError::NoProbation)
    /// when no generation is parked (always on Windows, which has no restarts).
    pub async fn rollback(&self) -> Result<u32, crate::RollbackError> {
        self.ask_rollback(crate::RollbackTrigger::Application).await
    }

    /// A rollback asked for by `trigger`; see [`Process::rollback`].
    pub(crate) async fn ask_rollback(
        &self,
        trigger: crate::RollbackTrigger,
    ) -> Result<u32, crate::RollbackError> {
        #[cfg(unix)]
        {
            let r = self.ask_probation(trigger).await;
            match &r {
                Ok(pid) => {
                    tracing::info!(pid = std::process::id(), serving = pid, %trigger, "rollback done")
                }
                Err(e) => {
                    tracing::warn!(pid = std::process::id(), %trigger, error = %e, "rollback refused; serving on")
                }
            }
            r
        }
        #[cfg(not(unix))]
        {
            let _ = trigger;
            Err(crate::RollbackError::NoProbation)
        }
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
    ///
    /// On Windows it fails with [`RestartError::Unsupported`] (logged the first time):
    /// there a process serves and shuts down gracefully, but cannot hand its sockets to
    /// a new one.
    pub async fn restart(&self) -> Result<u32, RestartError> {
        #[cfg(unix)]
        return self.restart_then(Box::new(|| {})).await;
        #[cfg(not(unix))]
        Err(restart_unsupported())
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
        // (A parked generation finishes once its probation is over.)
        let _ = rx.wait_for(|s| s.is_draining() && !s.parked).await;
        let _restart_over = self.inner.restart_running.lock().await;
        #[cfg(unix)]
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

    /// Where this process's ceaseless servers count their responses (for the error
    /// policy of a probation).
    pub(crate) fn outcomes(&self) -> Arc<crate::lifecycle::Outcomes> {
        self.inner.outcomes.clone()
    }

    /// Runs one of the owner's own tasks on its runtime.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.inner.runtime.spawn(task);
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
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut listener = None;
        #[cfg(unix)]
        let mut managed = false;
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut took = crate::observe::status::Origin::Bound;
        #[cfg(not(unix))]
        let _ = fd_name; // nothing is inherited or activated on Windows
        #[cfg(unix)]
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
                #[cfg(unix)]
                {
                    managed = false;
                }
                Listener::bind(addr)?
            }
        };
        #[cfg(unix)]
        {
            let fd = listener.dup().map_err(|source| Error::Bind {
                addr: addr.to_string(),
                source,
            })?;
            core.registry.push(Registered {
                name: Name::Listener {
                    addr: addr.clone(),
                    managed,
                },
                fd,
            });
        }
        self.inner
            .book
            .listener(listener.local_addr(addr).to_string(), took);
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
        if self.inner.readiness == Readiness::Auto && core.unclaimed_listeners() == 0 {
            self.declare_ready(core);
        }
    }

    /// A listener taken from [`Process::tcp_listener`] or [`Process::unix_listener`]
    /// is now served by ceaseless's own accept loop (`ceaseless::serve`): counted as a
    /// server, which tells [`Process::server_stopped`] when it is drained.
    pub(crate) fn serve_listener(&self, listener: &Listener) -> Result<(), Error> {
        let mut core = self.lock();
        if core.state.is_draining() {
            return Err(Error::Draining);
        }
        // (Nothing is handed over on Windows.)
        #[cfg(unix)]
        let registered = core
            .registry
            .iter()
            .any(|r| matches!(r.name, Name::Listener { .. }) && listener.is(r.fd.as_fd()));
        #[cfg(not(unix))]
        let registered = {
            let _ = listener;
            true
        };
        if !registered {
            tracing::warn!(
                "this listener was not opened by the process owner (Process::tcp_listener, \
                 Process::unix_listener): it is not handed over at a restart"
            );
        }
        core.servers_running += 1;
        Ok(())
    }

    /// A server stopped on its own signal while this generation serves on: the
    /// listener is no longer handed over, and closes once the server drops it.
    pub(crate) fn release_listener(&self, listener: &Listener) {
        #[cfg(unix)]
        self.lock()
            .registry
            .retain(|r| !(matches!(r.name, Name::Listener { .. }) && listener.is(r.fd.as_fd())));
        #[cfg(not(unix))]
        let _ = listener; // nothing is handed over on Windows
    }

    /// A ceaseless server finished its drain; the last one finishes the generation once
    /// it drains (a server stopped on its own signal leaves the process serving).
    pub(crate) async fn server_stopped(&self) -> Served {
        let last = {
            let mut core = self.lock();
            core.servers_running = core.servers_running.saturating_sub(1);
            core.servers_running == 0 && core.state.is_draining()
        };
        if last {
            self.finish().await
        } else {
            self.served().unwrap_or(Served::Shutdown)
        }
    }
}

impl Core {
    fn emit(&mut self, t: &Transition<'_>) {
        for o in &mut self.observers {
            o.observe(t);
        }
        #[cfg(unix)]
        {
            let registry = self.registry.iter();
            crate::restart::supervise::observe(t, registry.map(|r| (&r.name, r.fd.as_fd())));
        }
    }

    /// The previous generation, if a restart (or a takeover) started this one: never
    /// on Windows.
    fn parent(&self) -> Option<u32> {
        #[cfg(unix)]
        return self.inherited.parent;
        #[cfg(not(unix))]
        None
    }

    /// Inherited listeners no server claimed yet: none on Windows.
    fn unclaimed_listeners(&self) -> usize {
        #[cfg(unix)]
        return self.inherited.unclaimed_listeners();
        #[cfg(not(unix))]
        0
    }

    /// Serving, and live: the previous generation let go (or is gone). The caller
    /// publishes the state.
    #[cfg(unix)]
    fn become_live(&mut self) {
        self.state = State {
            phase: Phase::Serving,
            live: true,
            parked: false,
        };
        tracing::info!(pid = std::process::id(), previous = ?self.inherited.parent, "this generation is live");
        self.emit(&Transition::Live);
    }
}

/// Writes all of `buf` to a descriptor (a few bytes on a pipe or socket: it does not
/// block for long).
#[cfg(unix)]
fn write_all(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::from(fd.try_clone()?);
    f.write_all(buf)
}

/// The owner's answers to signals.
struct SignalActions(Process);

impl Actions for SignalActions {
    #[cfg(unix)]
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

/// A restart where none is possible (Windows): the error, logged the first time only.
#[cfg(not(unix))]
fn restart_unsupported() -> RestartError {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    let e = RestartError::Unsupported {
        platform: crate::sys::PLATFORM,
    };
    LOGGED.call_once(|| tracing::error!(error = %e, "restart refused; serving on"));
    e
}
