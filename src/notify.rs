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
//! | a final shutdown begins | the serving generation | `STOPPING=1`, `STATUS=` |
//!
//! A new generation says nothing of its own readiness: it is not the main process yet,
//! and its parent names it in `MAINPID=` only once it proved it serves. The PID file is
//! written before any of these messages, so a manager that reads it (`PIDFile=`) never
//! finds an older pid than the one just announced.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tokio::sync::watch;

/// The variable naming the service manager's socket.
const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Set between `RELOADING=1` and the `READY=1` that ends the reload.
static RELOADING: AtomicBool = AtomicBool::new(false);

/// This generation reported that it serves.
fn ready_flag() -> &'static watch::Sender<bool> {
    static READY: OnceLock<watch::Sender<bool>> = OnceLock::new();
    READY.get_or_init(|| watch::Sender::new(false))
}

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
    // First the PID file, then the manager (ours or, through the readiness pipe, the
    // parent's MAINPID=): whoever hears of us can read the file and find us.
    crate::pidfile::write_current();
    if parent.is_none() {
        send(&format!(
            "READY=1\nSTATUS=serving, pid {}",
            std::process::id()
        ));
    }
    ready_flag().send_replace(true);
}

/// Waits until this generation reported that it serves.
pub(crate) async fn wait_ready() {
    let mut rx = ready_flag().subscribe();
    let _ = rx.wait_for(|r| *r).await;
}

/// A restart begins: the next generation is about to be started.
pub(crate) fn reloading() {
    RELOADING.store(true, Ordering::Release);
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// The new generation is ready and is now the main process.
pub(crate) fn handed_over(new_pid: u32) {
    RELOADING.store(false, Ordering::Release);
    send(&format!(
        "MAINPID={new_pid}\nREADY=1\nSTATUS=serving, pid {new_pid} (restarted from pid {})",
        std::process::id()
    ));
}

/// The restart failed; this process remains the main one. Ends the reload the manager
/// was told about, if any (a restart refused before it started said nothing).
pub(crate) fn restart_failed(why: &crate::error::RestartError) {
    if !RELOADING.swap(false, Ordering::AcqRel) {
        return;
    }
    // A new generation killed after it wrote the PID file must not stay named there.
    if !crate::generation::Generation::get().phase().is_draining() {
        crate::pidfile::reclaim();
    }
    // STATUS= is one line: flatten whatever the reason says.
    let why = why.to_string().replace('\n', " ");
    send(&format!(
        "READY=1\nSTATUS=restart failed ({why}); pid {} still serving",
        std::process::id()
    ));
}

/// A final shutdown begins. Said only by a generation that reported ready: before that
/// it is not the process the manager tracks.
pub(crate) fn stopping() {
    if *ready_flag().borrow() {
        send("STOPPING=1\nSTATUS=shutting down");
    }
}
