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
//! and [`restart`] (in the process) or a [`control`] socket (from outside: a deploy
//! script, `ExecReload=`) to learn the outcome of a restart.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ceaseless::Error> {
//!     let app = Router::new().route("/", get(|| async { "hello\n" }));
//!     // Serves until SIGINT/SIGTERM (graceful shutdown) or SIGHUP (the next
//!     // generation takes over); returns Ok(()) once drained.
//!     ceaseless::listen_and_serve("127.0.0.1:4242", app).await
//! }
//! ```
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
//! Pre and post hooks for each: [`Server::hook`].
//!
//! ## How a restart works
//! The listeners go to the new process as inherited descriptors (the same sockets, with
//! one accept queue: no waiting connection is lost, unlike re-binding with
//! `SO_REUSEPORT`), named in its environment and guarded by the parent's pid. The new
//! process reports on a pipe once all its servers accept; only then does the old one
//! stop accepting and drain. See the `restart` and `conn` module docs in the source for
//! the protocol and the drain.
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

mod conn;
pub mod control;
mod error;
mod generation;
mod inherit;
mod listener;
mod notify;
mod pidfile;
mod restart;
mod server;
mod signals;
mod tls;

pub use error::{ControlError, Error, RestartError};
pub use listener::ListenAddr;
pub use restart::restart;
pub use server::{
    listen_and_serve, listen_and_serve_tls, Server, DEFAULT_HAMMER_TIME, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
};
pub use signals::{Signal, Stage};

/// Starts a graceful shutdown of every server in the process, as SIGTERM does (without
/// running the signal hooks). Returns false if the process was already draining.
pub fn shutdown() -> bool {
    generation::Generation::get().begin_drain(generation::Drain::Shutdown)
}
