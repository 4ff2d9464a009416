//! The optional PID file: names the live generation.
//!
//! An observer of the process owner's transitions:
//! - the first generation writes its pid once it declared ready;
//! - at a handover the old generation, still live, writes the new pid, before it tells
//!   the service manager `MAINPID=` (a manager that reads the file after a reload finds
//!   the new pid); a new generation confirmed through a pipe (no parent of ours) writes
//!   its own;
//! - at the end of a shutdown the live generation removes it, if it names this process.
//!
//! The file is replaced atomically (a temporary file beside it, then rename). A stale
//! file left by a dead process is simply overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lifecycle::{Observer, Served, Transition};

/// The PID file, as an observer.
pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        PidFile { path }
    }

    fn write(&self, pid: u32) {
        if let Err(e) = write_atomically(&self.path, pid) {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the PID file");
        }
    }
}

impl Observer for PidFile {
    fn observe(&mut self, t: &Transition<'_>) {
        match t {
            Transition::Ready { first: true } | Transition::Live => self.write(std::process::id()),
            Transition::Committed { new_pid } => self.write(*new_pid),
            // A rollback: the parked generation is the main one again.
            Transition::RolledBack { .. } => self.write(std::process::id()),
            Transition::HandedBack { to_pid, .. } => self.write(*to_pid),
            Transition::Done {
                served: Served::Shutdown,
                live: true,
            } if named_pid(&self.path) == Some(std::process::id()) => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot remove the PID file");
                }
            }
            _ => {}
        }
    }
}

fn write_atomically(path: &Path, pid: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{pid}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The pid the PID file names, if it exists and holds one.
fn named_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}
