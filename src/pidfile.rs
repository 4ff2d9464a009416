//! The optional PID file: names the generation that serves.
//!
//! Written when the first generation is ready, replaced atomically (write a temporary
//! file beside it, then rename) by each new generation once it is ready, and removed at
//! a final shutdown, by the generation it names only. A stale file left by a dead
//! process is simply overwritten.

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

/// Removes the PID file at a final shutdown, if it names this process.
pub(crate) fn remove_if_ours() {
    let Some(path) = lock(&PATH).clone() else {
        return;
    };
    let ours = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove the PID file");
        }
    }
}
