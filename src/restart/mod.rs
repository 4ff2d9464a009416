//! Starting the next generation: re-executing the binary with the listening sockets,
//! waiting for its readiness, then committing the handover or stopping it.
//!
//! The wire format is the [`handover`](crate::handover) module's. The readiness channel
//! is a socket pair that carries the commit's exchange (the `commit` module); the
//! child is driven through it as every successor is (the `successor` module). A child
//! that fails (exits, cannot be executed, is not ready and holding in time, or the
//! restart is called off) is stopped as a shutdown would stop it — `abort`, SIGTERM, a
//! grace to answer what it accepted, then SIGKILL — and reaped.
//!
//! # This folder
//! Every way a new process comes to serve in this one's place: `exec` (re-exec),
//! `successor` (the old side of the commit, for a child and a newcomer alike),
//! `takeover` (an independently started process asks over the control socket), and
//! `supervise` (the stable-PID supervisor, which reuses the re-exec). It calls
//! `observe` (the control socket's connection, systemd's notifications) and `handover`;
//! the process owner calls it.
//!
//! On Windows, where restarts are not supported, only `supervise`'s settings exist, to
//! say so.

#[cfg(unix)]
mod exec;
#[cfg(unix)]
pub(crate) mod successor;
pub(crate) mod supervise;
#[cfg(unix)]
pub(crate) mod takeover;

#[cfg(unix)]
pub(crate) use exec::*;
