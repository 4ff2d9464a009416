//! The errors ceaseless reports.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while starting or running a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address given to a server could not be understood or resolved.
    #[error("invalid listen address {addr:?}: {reason}")]
    Address {
        /// The address as the caller wrote it.
        addr: String,
        /// Why it was refused.
        reason: String,
    },
    /// Binding or listening on an address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The state the previous generation handed over cannot be read (see
    /// [`Process::inherited_state`](crate::Process::inherited_state)).
    #[error("{reason}")]
    State {
        /// What went wrong.
        reason: String,
    },
    /// A descriptor of the application's ([`Process::fd`](crate::Process::fd)) could
    /// not be made or registered.
    #[error("cannot open the descriptor {name:?}: {source}")]
    Descriptor {
        /// Its name.
        name: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    #[cfg(feature = "tls")]
    /// A certificate or key file could not be read.
    #[error("cannot read TLS file {}: {source}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    #[cfg(feature = "tls")]
    /// A certificate or key file was read but holds nothing usable.
    #[error("invalid TLS file {}: {reason}", path.display())]
    TlsPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[cfg(feature = "tls")]
    /// rustls refused the certificate and key together.
    #[error("TLS configuration rejected (cert {}, key {}): {source}", cert.display(), key.display())]
    TlsConfig {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason (boxed: it is large, and every `Result` of ceaseless's
        /// would carry its size).
        #[source]
        source: Box<rustls::Error>,
    },
    /// The process-wide signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] io::Error),
    /// A handover variable from the environment was malformed. Logged, never fatal:
    /// the server binds afresh instead.
    #[error("malformed environment variable {name}={value:?}: {reason}")]
    Environment {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The control socket (`ProcessBuilder::control_socket`, with the `control`
    /// feature) could not be opened.
    #[error("cannot open the control socket {}: {source}", path.display())]
    Control {
        /// Its path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A setting was refused (a zero timeout, say); nothing was started.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// [`ProcessBuilder::start`](crate::ProcessBuilder::start) was called when the
    /// process owner was already started (by an earlier call, or by a server started
    /// before it with the defaults).
    #[error("the process owner is already started; configure it before any server starts")]
    AlreadyStarted,
    /// The process owner needs a tokio runtime, and none is running on this thread.
    #[error("no tokio runtime: start the process owner inside one (e.g. #[tokio::main])")]
    NoRuntime,
    /// A listener was asked for while this generation drains.
    #[error("this generation is draining; it opens no more listeners")]
    Draining,
    /// [`Supervisor::run`](crate::Supervisor::run) could not become the supervisor
    /// (nothing was started).
    #[error("cannot become the supervisor: {0}")]
    Supervise(#[source] io::Error),
    /// This platform lacks what the feature needs (the supervisor on macOS, which has
    /// no way to become the reaper of its descendants). Nothing was started.
    #[error("{what} is not supported on {platform}")]
    Unsupported {
        /// The feature.
        what: &'static str,
        /// The platform.
        platform: &'static str,
    },
    #[cfg(feature = "control")]
    /// [`ProcessBuilder::takeover`](crate::ProcessBuilder::takeover) could not take the
    /// listeners over from the process serving that control socket. Nothing was bound:
    /// the running process still serves, unchanged.
    #[error("cannot take over from {}: {source}", path.display())]
    Takeover {
        /// The running process's control socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: TakeoverError,
    },
    /// An inherited file descriptor is not the listening socket it was announced as.
    /// Logged, never fatal: the server binds afresh instead.
    #[error("inherited fd {fd} ({name}) is unusable: {reason}")]
    InheritedFd {
        /// The descriptor number.
        fd: i32,
        /// The name it was handed over under.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// So that `ceaseless::serve(listener, app).await?` works in a function returning
/// `std::io::Result`, as with `axum::serve`: the kind is the underlying system error's
/// where there is one.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Bind { source, .. }
            | Error::Descriptor { source, .. }
            | Error::Control { source, .. }
            | Error::Signal(source)
            | Error::Supervise(source) => source.kind(),
            #[cfg(feature = "tls")]
            Error::TlsFile { source, .. } => source.kind(),
            Error::Address { .. } | Error::Setting { .. } => io::ErrorKind::InvalidInput,
            Error::Unsupported { .. } => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Why a restart did not happen. The old generation keeps serving in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// Another restart is already under way.
    #[error("a restart is already in progress")]
    InProgress,
    /// The application's state could not be handed over (see
    /// [`ProcessBuilder::state`](crate::ProcessBuilder::state)); nothing was started.
    #[error("cannot hand the state over: {0}")]
    State(String),
    /// The process is draining (shutting down or already handed over).
    #[error("the process is shutting down")]
    ShuttingDown,
    /// No server of this process is serving, so there is nothing to hand over.
    #[error("no server is running in this process")]
    NoServer,
    /// This generation has not declared ready yet (it is warming up, or its servers are
    /// still starting).
    #[error("this generation has not declared ready yet")]
    NotYetReady,
    /// Restarts are not supported on this platform (Windows): the process serves, and
    /// shuts down gracefully, but cannot hand its sockets to a new one.
    #[error("restarts are not supported on {platform}")]
    Unsupported {
        /// The platform.
        platform: &'static str,
    },
    /// The new binary could not be started (missing, not executable, ...).
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The path that was executed.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The new generation exited before it said that it holds every listener (before or
    /// after it declared ready: the old generation never stopped accepting).
    #[error("the new generation (pid {pid}) exited before it took over: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new generation was not ready, holding every listener, in time; it was
    /// stopped (killed if it did not stop).
    #[error("the new generation (pid {pid}) did not take over within {timeout:?}; stopped it")]
    NotReady {
        /// Its pid.
        pid: u32,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// A shutdown began while the new generation was starting; it was killed.
    #[error("shutdown began while the new generation (pid {pid}) was starting; killed it")]
    Aborted {
        /// Its pid.
        pid: u32,
    },
    /// The new process closed its channel (it exited, crashed, or gave up) before it
    /// said that it holds every listener.
    #[error("the new process (pid {pid}) left before it took over")]
    Left {
        /// Its pid.
        pid: u32,
    },
    /// A takeover: the new process was not ready, holding every listener, in time; it
    /// was told to stop (`abort`, then SIGTERM). It is not this process's child: it is
    /// neither waited for nor killed.
    #[error("the new process (pid {pid}) did not take over within {timeout:?}; told it to stop")]
    TakeoverNotReady {
        /// Its pid.
        pid: u32,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// A takeover was asked of a process that cannot hand over that way (under the
    /// stable-PID supervisor, or with more sockets than one message carries).
    #[error("a takeover is not possible here: {0}")]
    TakeoverRefused(&'static str),
    /// Preparing the handover failed (pipes, descriptors).
    #[error("restart failed: {0}")]
    Io(#[from] io::Error),
}

impl RestartError {
    /// The pid of the new generation the restart started, when it got that far.
    pub fn pid(&self) -> Option<u32> {
        match self {
            RestartError::Exited { pid, .. }
            | RestartError::NotReady { pid, .. }
            | RestartError::Aborted { pid }
            | RestartError::Left { pid }
            | RestartError::TakeoverNotReady { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// Why a rollback ([`Process::rollback`](crate::Process::rollback), `rollback` on the
/// control socket) did not happen. Nothing changed: this generation serves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackError {
    /// No generation is parked behind this one: no probation is on
    /// ([`ProcessBuilder::probation`](crate::ProcessBuilder::probation)), or it is over.
    #[error(
        "nothing to roll back to: no previous generation is parked (the probation is over, or off)"
    )]
    NoProbation,
    /// The probation ended (or the parked generation left) while the rollback was
    /// asked for.
    #[error("the probation ended before the parked generation took the service back")]
    Ended,
    /// A rollback is already under way.
    #[error("a rollback is already in progress")]
    InProgress,
    /// This generation is not serving as the live one (it restarts, or shuts down).
    #[error("this generation is not the one serving (it restarts or shuts down)")]
    NotServing,
    /// The parked generation did not answer within the ready timeout (it is stopped or
    /// hung): the probation was given up, and this generation serves on.
    #[error("the parked generation did not answer within {timeout:?}; the probation is over, serving on")]
    Unanswered {
        /// How long it was waited for
        /// ([`ProcessBuilder::ready_timeout`](crate::ProcessBuilder::ready_timeout)).
        timeout: std::time::Duration,
    },
}

#[cfg(feature = "control")]
/// Why [`control::request_restart`](crate::observe::control::request_restart) did not return the
/// new generation's pid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nobody answers on the control socket (no such file, permission denied, nothing
    /// listening).
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The server answered: the restart did not happen, for this reason (the new
    /// generation's exit status, its readiness timeout, the error starting it, a restart
    /// already in progress, ...). The old generation still serves.
    #[error("restart failed: {0}")]
    Failed(String),
    /// No answer within the deadline. The restart may still complete.
    #[error("no answer within {0:?}; the restart may still be under way")]
    Timeout(Duration),
    /// The server closed the connection without answering (it died, or is not a
    /// ceaseless control socket).
    #[error("the control socket closed the connection without an answer")]
    Closed,
    /// The answer was not one of the protocol's.
    #[error("unexpected answer on the control socket: {0:?}")]
    Protocol(String),
    /// The server refused the request (`error <reason>`): for `status`, a server that
    /// predates it answers that the command is unknown.
    #[error("the control socket refused the request: {0}")]
    Refused(String),
    /// Sending the request or reading the answer failed.
    #[error("control socket: {0}")]
    Io(#[source] io::Error),
}

#[cfg(feature = "control")]
/// Why a new process could not take over from a running one
/// ([`ProcessBuilder::takeover`](crate::ProcessBuilder::takeover)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeoverError {
    /// Nothing answers at that path (no such file, not a socket, nothing listening,
    /// permission denied).
    #[error("cannot connect to the control socket: {0}")]
    Connect(#[source] io::Error),
    /// The process answering runs as another user (and is not root).
    #[error("the process answering runs as uid {uid}, neither this user nor root")]
    NotAllowed {
        /// Its user id.
        uid: u32,
    },
    /// The running process refused (`error <reason>`): it is restarting, draining,
    /// under a supervisor, not ready yet, or predates takeovers ("unknown command").
    #[error("the running process refused: {0}")]
    Refused(String),
    /// The answer was not the protocol's: not a ceaseless control socket.
    #[error("unexpected answer (not a ceaseless control socket?): {0:?}")]
    Protocol(String),
    /// The connection closed without an answer.
    #[error("the control socket closed the connection without an answer")]
    Closed,
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The offer named another number of sockets than came with it.
    #[error("the offer names {named} sockets but {attached} came with it")]
    Descriptors {
        /// How many the offer named.
        named: usize,
        /// How many were attached.
        attached: usize,
    },
    /// This process runs under the stable-PID supervisor, which starts its
    /// generations itself: a takeover is not supported there.
    #[error("under the supervisor a takeover is not supported")]
    Supervised,
    /// Reading or writing the connection failed.
    #[error("control socket: {0}")]
    Io(#[source] io::Error),
}
