//! # ceaseless
//!
//! Zero-downtime restarts for HTTP and HTTPS servers built on tokio and hyper, in the
//! manner of Go's `endless`: a drop-in replacement for "listen and serve" that, on
//! `SIGHUP`, re-executes the binary at the path it was started from, hands the listening
//! sockets to the new process, lets it serve every new connection, and lets the old one
//! finish what it was doing and exit.
//!
//! Beyond endless: the new generation must prove it is serving before the old one lets
//! go, and a new binary that crashes, hangs or cannot start changes nothing; ports may
//! change across restarts; keep-alive clients see no errors during the drain; HTTP/2,
//! TLS with ALPN, Unix sockets, systemd notification and socket activation, PID files,
//! and [`restart`] (in the process) or a `control` socket (from outside: a deploy
//! script, `ExecReload=`) to learn the outcome of a restart.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ceaseless::Error> {
//!     let app = Router::new().route("/", get(|| async { "hello\n" }));
//!     // Serves until SIGINT/SIGTERM (graceful shutdown) or SIGHUP (the next
//!     // generation takes over); says which once drained.
//!     let served = ceaseless::listen_and_serve("127.0.0.1:4242", app).await?;
//!     eprintln!("{served}"); // "shutdown", or "handed over to pid 4188"
//!     Ok(())
//! }
//! ```
//!
//! ## Coming from `axum::serve`
//! [`serve`] has `axum::serve`'s shape: replace `axum::serve` by `ceaseless::serve`, take
//! the listener from the process owner ([`Process::tcp_listener`]), and the connections
//! are ceaseless's own, with the lame-duck drain that loses no request at a restart.
//! It takes a `Router`, `into_make_service()`,
//! `into_make_service_with_connect_info::<SocketAddr>()` or any tower service (tonic's
//! `Routes` as well), and `.with_graceful_shutdown(signal)`.
//!
//! ## The process owner
//! Everything that concerns the process as a whole — readiness, restarts, the drain,
//! signals and their hooks, the PID file, the control socket — belongs to one
//! [`Process`], created at the top of `main` with [`Process::builder`] (the one-liners
//! start one with the defaults). It also hands out the inherited-or-bound listeners to
//! any server: [`serve`] serves them on ceaseless's connections; `axum::serve`, tonic's
//! server or plain hyper get zero-downtime restarts too, with [`Process::draining`] as
//! their graceful-shutdown signal (and their own drain, which can lose a request). A generation is ready when
//! the application says so ([`Readiness::Manual`], [`Process::ready`]), or by default
//! once every socket it inherited is claimed ([`Readiness::Auto`]).
//!
//! ## Status and metrics
//! [`Process::status`] is a typed snapshot of the process ([`Status`]): generation,
//! phase, listeners and their connections, and the recent restarts, a history carried
//! across restarts; the control socket answers `status` with it as JSON
//! (`control::request_status`, with the `control` feature). With the `metrics`
//! feature, `ceaseless::metrics` records the same through the `metrics` facade, for
//! whatever exporter the application installs.
//!
//! ## Signals
//! One process-wide handler, whatever the number of servers:
//! - `SIGHUP`: restart (see [`restart`]).
//! - `SIGINT`, `SIGTERM`: graceful shutdown: stop accepting, finish requests in flight
//!   (their responses carry `Connection: close`; HTTP/2 gets GOAWAY), close idle
//!   connections after a short grace, return from the serve calls.
//! - `SIGUSR2`: hammer (close every connection now), only while already draining.
//! - `SIGUSR1`: runs its hooks only. `SIGTSTP`: runs its hooks, then stops the process as
//!   the default action would.
//!
//! Pre and post hooks for each: [`ProcessBuilder::hook`]; which signals ceaseless takes:
//! [`ProcessBuilder::signals`].
//!
//! ## How a restart works
//! The listeners go to the new process as inherited descriptors (the same sockets, with
//! one accept queue: no waiting connection is lost, unlike re-binding with
//! `SO_REUSEPORT`), named in its environment and guarded by the parent's pid. The new
//! process reports once it declared ready; the old one, still accepting, answers `go`;
//! the new one answers `holding` once its servers claimed every listener it inherited;
//! only then does the old one commit: it stops accepting and drains, and the new one
//! becomes the live generation, the one that owns the socket files, the control socket
//! and the PID file. So **from the first generation's readiness until a shutdown is
//! asked for, at least one process accepts on every listener**: a new generation that
//! exits, hangs or is killed before its `holding` is a failed restart, and the old one
//! never stopped accepting. Declaring ready before the servers took their sockets is
//! safe for the same reason ([`Process::ready`]). A SIGTERM at any instant of a restart
//! leaves one live generation with all of its files, or none: before the commit it
//! calls the restart off (the new generation is stopped, answering what it accepted)
//! and shuts the old one down, lame duck first; after it, the old one is draining
//! already and the new one serves on. README.md's "How a restart works" has the whole
//! exchange and how it is tested.
//!
//! ## Undo a deploy: probation and rollback
//! With [`ProcessBuilder::probation`], the old generation parks after the handover,
//! keeping every listener, and the service rolls back to it within the period: at once
//! if the new generation crashes, when its error policy trips
//! ([`ProcessBuilder::rollback_on_errors`]), when the application calls
//! [`Process::rollback`], or when an operator asks on the control socket
//! (`control::request_rollback`). A rollback asked for is the handover in reverse and
//! loses no request; a crash loses only what was in flight on the crashed process.
//! README.md's "Undo a deploy" has the triggers, the invariant and the measured figures.
//!
//! ## Takeover by a new process
//! With the `control` feature, a process started independently (by a deploy script, a
//! service manager, another container) can take over from a running one:
//! `ProcessBuilder::takeover` names its control socket, the listeners come over it
//! (`SCM_RIGHTS`), and the old one drains once the newcomer is ready, as at a restart;
//! if the newcomer fails or is never ready, nothing changes. Only the same user (or
//! root) may. README.md's "Takeover by a new process" has the exchange and how it is
//! tested.
//!
//! ## Stable PID
//! [`supervise`] (or [`Supervisor::run`]) at the top of `main` keeps one pid for the
//! life of the service: the first process becomes a small supervisor (subreaper, PID 1
//! of a container if need be) and the program runs in generations under it, which
//! restart as above; see [`Supervisor`]. However restarts happen, at most
//! [`ProcessBuilder::max_draining`] old generations drain at once.
//!
//! ## The source, folder by folder
//! The folders follow the choreography, each calling only the ones below it:
//! - `serve/`: serving: [`Server`], [`listen_and_serve`], [`serve`], connections, HTTP/1 and
//!   HTTP/2, the drain, TLS, the health check;
//! - `process/`: the owner of the lifecycle ([`Process`]): readiness, signals, the
//!   commit of a restart from either side, the probation and the rollback;
//! - `restart/`: starting the next generation (re-exec), the takeover, the supervisor;
//! - `observe/`: what is seen from outside: status, metrics, systemd's notifications,
//!   the PID file, the control socket;
//! - `handover/`: what travels from one generation to the next: the pure protocol and
//!   its commit, inheriting and listening, the older generations, the state;
//! - the vocabulary they share (`error`, `addr`, `duration`, `lifecycle`);
//! - `sys/`: the OS layer, through which every system call goes.
//!
//! ## Platforms
//! Linux, macOS and FreeBSD restart as above (README.md's platform table says through
//! which mechanisms; the supervisor needs Linux or FreeBSD). On Windows a process
//! serves and shuts down gracefully (Ctrl-C, Ctrl-Break, the console closing), and is
//! the first and only generation: [`Process::restart`] fails with
//! [`RestartError::Unsupported`], the supervisor, a control socket and Unix sockets
//! with [`Error::Unsupported`].
#![deny(missing_docs)]
// docs.rs (see Cargo.toml's metadata) marks what a feature brings.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Only the OS layer (`sys`) may opt out of this, each block with its SAFETY argument.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(rust_2018_idioms)]

mod addr;
mod duration;
mod error;
mod handover;
mod lifecycle;
mod observe;
mod process;
mod restart;
mod serve;
mod sys;

pub use addr::ListenAddr;
#[cfg(feature = "control")]
pub use error::{ControlError, TakeoverError};
pub use error::{Error, RestartError, RollbackError};
pub use handover::listen::ConnInfo;
pub use handover::state;
pub use lifecycle::{Drain, RollbackTrigger, Served, DEFAULT_MAX_DRAINING};
#[cfg(all(unix, feature = "control"))]
pub use observe::control;
#[cfg(feature = "metrics")]
pub use observe::metrics;
pub use observe::status;
pub use observe::status::Status;
pub use process::signals::{Signal, Stage};
pub use process::{
    restart, shutdown, Process, ProcessBuilder, Readiness, DEFAULT_READY_TIMEOUT,
    DEFAULT_STOP_GRACE,
};
pub use restart::supervise::{supervise, Supervisor, DEFAULT_SUPERVISOR_READY_TIMEOUT};
pub use serve::health::{health, Health};
#[cfg(feature = "tls")]
pub use serve::listen_and_serve_tls;
pub use serve::serve_fn::{
    serve, ConnService, IncomingStream, Listener, Serve, ServeFuture, WithGracefulShutdown,
};
pub use serve::{
    listen_and_serve, Server, DEFAULT_DRAIN_SPREAD, DEFAULT_HAMMER_TIME, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
};
