//! A file of bytes that the receiving process can read and never change: the state a
//! generation hands over, and the TLS ticket key.
//!
//! On Linux a memory file (`memfd_create`) sealed against every change (`F_SEAL_WRITE`,
//! `F_SEAL_GROW`, `F_SEAL_SHRINK`, then `F_SEAL_SEAL`). In the portable mode (macOS,
//! FreeBSD, and Linux with `CEASELESS_PORTABLE`) a temporary file, created private
//! (`0600`, exclusively), written, opened again read-only, and unlinked at once: what
//! travels is the read-only descriptor of a file no path names any more, so the receiver
//! cannot write to it and nobody can open it again.
//!
//! Readers use [`read_all`], which reads at offsets (`pread`): the descriptor's file
//! offset is shared with the process that made it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

/// A sealed file holding `bytes` (module docs).
pub(crate) fn file(bytes: &[u8]) -> io::Result<OwnedFd> {
    if super::portable() {
        return temporary(bytes);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        memfd(bytes)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        temporary(bytes)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "ceaseless-sealed",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(OwnedFd::from(file))
}

fn temporary(bytes: &[u8]) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let mut attempt = 0;
    let (path, mut writer) = loop {
        let path = dir.join(format!(
            ".ceaseless-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            super::clock::mono_ns()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => break (path, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let made = writer.write_all(bytes).and_then(|()| File::open(&path));
    let unlinked = std::fs::remove_file(&path);
    let reader = made?;
    unlinked?;
    Ok(OwnedFd::from(reader))
}

/// Reads the whole of a sealed file, at most `max` bytes (`None`: it holds more).
pub(crate) fn read_all(fd: OwnedFd, max: usize) -> io::Result<Option<Vec<u8>>> {
    let file = File::from(fd);
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = file.read_at(&mut chunk, bytes.len() as u64)?;
        if n == 0 {
            return Ok(Some(bytes));
        }
        if bytes.len() + n > max {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fd: OwnedFd) {
        let copy = fd.try_clone().unwrap();
        let other = fd.try_clone().unwrap();
        assert_eq!(read_all(fd, 100).unwrap().unwrap(), b"count 42");
        assert_eq!(read_all(other, 3).unwrap(), None, "more than allowed");
        let mut f = File::from(copy);
        assert!(f.write_all(b"x").is_err(), "the file cannot be changed");
        assert!(f.set_len(0).is_err(), "nor truncated");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_memory_file_is_read_back_and_cannot_be_changed() {
        check(memfd(b"count 42").unwrap());
    }

    #[test]
    fn a_temporary_file_is_read_back_cannot_be_changed_and_has_no_name() {
        let before: Vec<_> = leftovers();
        check(temporary(b"count 42").unwrap());
        assert_eq!(leftovers(), before, "the file is unlinked at once");
    }

    fn leftovers() -> Vec<std::path::PathBuf> {
        let me = format!(".ceaseless-{}-", std::process::id());
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&me))
            })
            .collect()
    }
}
