//! The optional PID file: names the generation that serves.
//!
//! Written when the first generation is ready, replaced atomically (write a temporary
//! file beside it, then rename) by each new generation once it is ready, and removed at
//! a final shutdown, by the generation it names only. A stale file left by a dead
//! process is simply overwritten.
//!
//! The file is written before the readiness report (and so before the parent sends
//! `MAINPID=`): a service manager that reads it after a reload finds the new pid.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::generation::lock;

static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Sets the PID file of the process (the last call wins).
pub(crate) fn set(path: PathBuf) {
    *lock(&PATH) = Some(path);
}

/// Writes our pid into the PID file, if one is set.
pub(crate) fn write_current() {
    let Some(path) = lock(&PATH).clone() else {
        return;
    };
    if let Err(e) = write_atomically(&path, std::process::id()) {
        tracing::error!(error = %e, path = %path.display(), "cannot write the PID file");
    }
}

fn write_atomically(path: &Path, pid: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{pid}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The pid the PID file names, if it is set, exists and holds one.
fn named_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// True while a process with this pid exists.
fn exists(pid: u32) -> bool {
    let Some(pid) = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// After a failed restart: names this process again if the file names another (a new
/// generation that wrote it, then was killed before the handover).
pub(crate) fn reclaim() {
    let Some(path) = lock(&PATH).clone() else {
        return;
    };
    if named_pid(&path) != Some(std::process::id()) {
        write_current();
    }
}

/// Removes the PID file at a final shutdown, if it names this process (or a process
/// that no longer exists: a new generation killed during an aborted restart).
pub(crate) fn remove_if_ours() {
    let Some(path) = lock(&PATH).clone() else {
        return;
    };
    let ours = named_pid(&path).is_some_and(|pid| pid == std::process::id() || !exists(pid));
    if ours {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the PID file");
        }
    }
}
