//! Telling a service manager what happens: systemd's `sd_notify` protocol.
//!
//! Silent unless `NOTIFY_SOCKET` is set (an absolute path, or `@name` for the abstract
//! namespace). Every message comes from the process systemd tracks as the main one, so
//! `NotifyAccess=main` suffices:
//!
//! | when | sent by | message |
//! |---|---|---|
//! | the first generation serves | it | `READY=1`, `STATUS=` |
//! | a restart begins | the serving generation | `RELOADING=1`, `MONOTONIC_USEC=` |
//! | the new generation is ready | the old one, still main | `MAINPID=<new>`, `READY=1`, `STATUS=` |
//! | the restart failed | the old one, carrying on | `READY=1`, `STATUS=` (no `MAINPID=`) |
//! | a final shutdown begins | the live generation | `STOPPING=1`, `STATUS=` |
//! | the drain still runs, every 5 s from 5 s on | the live generation | `EXTEND_TIMEOUT_USEC=10000000`, `STATUS=` |
//!
//! Under the [`Supervisor`](crate::Supervisor) the generations do not see
//! `NOTIFY_SOCKET`: the supervisor, the main process for good, sends `READY=1`,
//! `RELOADING=1`, `STOPPING=1` and, while its generations drain at a shutdown,
//! `EXTEND_TIMEOUT_USEC=` (every 5 s from 5 s on, until the last one exited) itself,
//! and never `MAINPID=`.
//!
//! A new generation says nothing of its own readiness: it is not the main process yet,
//! and its parent names it in `MAINPID=` only once it proved it serves. The PID file is
//! written before any of these messages, so a manager that reads it (`PIDFile=`) never
//! finds an older pid than the one just announced.

#![cfg_attr(not(feature = "systemd"), allow(dead_code))]

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::lifecycle::{Observer, Transition};

/// The variable naming the service manager's socket.
const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends one message to the service manager, if there is one. Failures are logged.
pub(crate) fn send(msg: &str) {
    let Some(path) = std::env::var_os(ENV_NOTIFY_SOCKET) else {
        return;
    };
    if let Err(e) = send_to(&path, msg) {
        tracing::warn!(error = %e, socket = ?path, "cannot notify the service manager");
    }
}

fn send_to(path: &std::ffi::OsStr, msg: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])?
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract socket",
            ));
        }
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(path))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET must be an absolute path or start with @",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// How often a live generation that drains at a shutdown asks the service manager for
/// more time, and how much: the first request comes this long after the drain began
/// (a short drain says nothing more than `STOPPING=1`), then one every period, each for
/// twice the period from then on. The drain itself stays bounded by the hammer time.
pub(crate) const EXTEND_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The request for more time sent every [`EXTEND_EVERY`] while a shutdown drains.
pub(crate) fn extend_timeout() -> String {
    format!(
        "EXTEND_TIMEOUT_USEC={}\nSTATUS=draining",
        2 * EXTEND_EVERY.as_micros()
    )
}

/// The service manager, as an observer of the process owner. Silent when there is none.
pub(crate) struct Notify {
    /// Between `RELOADING=1` and the `READY=1` that ends the reload.
    reloading: bool,
    /// Cancelled when the drain is done: stops the `EXTEND_TIMEOUT_USEC=` requests.
    extending: Option<tokio_util::sync::CancellationToken>,
}

impl Notify {
    /// The notifier, if a service manager is listening (`NOTIFY_SOCKET` is set).
    pub(crate) fn from_env() -> Option<Self> {
        std::env::var_os(ENV_NOTIFY_SOCKET).map(|_| Notify {
            reloading: false,
            extending: None,
        })
    }

    /// During a long drain, `EXTEND_TIMEOUT_USEC=` keeps systemd's stop timeout from
    /// killing a drain that is still inside hammer time.
    fn keep_extending(&mut self) {
        let done = tokio_util::sync::CancellationToken::new();
        self.extending = Some(done.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(EXTEND_EVERY) => send(&extend_timeout()),
                }
            }
        });
    }
}

impl Observer for Notify {
    fn observe(&mut self, t: &Transition<'_>) {
        let pid = std::process::id();
        match t {
            // A new generation says nothing of its own readiness: it is not the main
            // process yet, and its parent names it in MAINPID= once it committed.
            Transition::Ready { first: true } => {
                send(&format!("READY=1\nSTATUS=serving, pid {pid}"));
            }
            Transition::RestartBegun => {
                self.reloading = true;
                send(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}",
                    crate::sys::clock::mono_us()
                ));
            }
            Transition::HandedOver { new_pid } => {
                self.reloading = false;
                send(&format!(
                    "MAINPID={new_pid}\nREADY=1\nSTATUS=serving, pid {new_pid} (restarted from pid {pid})"
                ));
            }
            // A rollback: the parked generation names itself, whether the one on
            // probation could (it handed back) or not (it crashed).
            Transition::RolledBack {
                from_pid, trigger, ..
            } => {
                send(&format!(
                    "MAINPID={pid}\nREADY=1\nSTATUS=serving, pid {pid} (rolled back from pid {from_pid}: {trigger})"
                ));
            }
            Transition::HandedBack { to_pid, trigger } => {
                send(&format!(
                    "STATUS=rolling back to pid {to_pid} ({trigger}); pid {pid} drains"
                ));
            }
            Transition::Probation { ms: Some(ms) } => {
                send(&format!(
                    "STATUS=serving, pid {pid} (on probation for {ms} ms)"
                ));
            }
            Transition::Probation { ms: None } => {
                send(&format!("STATUS=serving, pid {pid}"));
            }
            // Ends the reload the manager was told about, if any (a restart refused
            // before it started said nothing).
            Transition::RestartFailed(why) if std::mem::take(&mut self.reloading) => {
                // STATUS= is one line: flatten whatever the reason says.
                let why = why.to_string().replace('\n', " ");
                send(&format!(
                    "READY=1\nSTATUS=restart failed ({why}); pid {pid} still serving"
                ));
            }
            // Said only by the live generation: the one the manager tracks.
            Transition::ShutdownBegun { live: true } => {
                send("STOPPING=1\nSTATUS=shutting down");
                self.keep_extending();
            }
            Transition::Done { .. } => {
                if let Some(t) = self.extending.take() {
                    t.cancel();
                }
            }
            _ => {}
        }
    }
}
