//! Telling a service manager what happens: systemd's `sd_notify` protocol.
//!
//! Silent unless `NOTIFY_SOCKET` is set. Messages, from the generation systemd tracks:
//! `READY=1` once the first generation serves; on a restart `RELOADING=1` with
//! `MONOTONIC_USEC`, then `MAINPID=<new>` and `READY=1` once the new generation is ready
//! (or `READY=1` alone when the restart failed and this process carries on);
//! `STOPPING=1` when a final shutdown begins. With `Type=notify-reload` or
//! `Type=notify` and `NotifyAccess=main`, systemd follows the new main process.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable naming the service manager's socket.
const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends one message to the service manager, if there is one. Failures are logged.
fn send(msg: &str) {
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

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// This generation serves. `parent` is the previous generation's pid, if any: then the
/// previous generation tells the manager about us (it is the main process it tracks).
pub(crate) fn ready(parent: Option<u32>) {
    crate::pidfile::write_current();
    if parent.is_none() {
        send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }
}

/// A restart begins.
pub(crate) fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// The new generation is ready and is now the main process.
pub(crate) fn handed_over(new_pid: u32) {
    send(&format!("MAINPID={new_pid}\nREADY=1"));
}

/// The restart failed; this process remains the main one.
pub(crate) fn restart_failed() {
    send(&format!(
        "READY=1\nSTATUS=restart failed; pid {} still serving",
        std::process::id()
    ));
}

/// A final shutdown begins.
pub(crate) fn stopping() {
    send("STOPPING=1");
}
