//! Re-executing the binary: what to run (the path it was started as, resolved once),
//! and starting the next generation with the descriptors it inherits, by a clone on
//! Linux or a fork elsewhere.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use crate::error::RestartError;
use crate::handover::{self, Name, FIRST_FD};
use crate::restart::successor::{Proc, Successor, Who};

/// The directory the process started in, recorded before `main` runs so that a `chdir`
/// by the application cannot change what the relative `argv[0]` means.
static START_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

#[cfg_attr(target_vendor = "apple", allow(dead_code))] // recorded on first use there
extern "C" fn record_start_dir() {
    let _ = START_DIR.set(logical_cwd());
}

crate::sys::before_main!(RECORD_START_DIR, record_start_dir);

/// The working directory as the shell names it: `$PWD` when it is the same directory
/// as `.` (a deploy that flips a `current -> releases/N` symlink wants the path through
/// the symlink, which `getcwd` resolves away), else the physical one.
fn logical_cwd() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let physical = std::env::current_dir().ok()?;
    let pwd = std::env::var_os("PWD").map(PathBuf::from);
    if let Some(pwd) = pwd.filter(|p| p.is_absolute()) {
        if let (Ok(a), Ok(b)) = (std::fs::metadata(&pwd), std::fs::metadata(".")) {
            if a.dev() == b.dev() && a.ino() == b.ino() {
                return Some(pwd);
            }
        }
    }
    Some(physical)
}

/// The program to re-execute: the path as invoked, resolved at start-up, and its
/// arguments.
///
/// Never `/proc/self/exe`: after a deploy replaced the binary that names the old,
/// deleted inode, and re-running it would restart the old code.
#[derive(Debug, Clone)]
pub(crate) struct Exe {
    pub(crate) path: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
}

impl Exe {
    pub(crate) fn capture() -> Self {
        let cwd = START_DIR
            .get_or_init(logical_cwd)
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args = argv.collect();
        let path = resolve_argv0(Path::new(&argv0), &cwd, std::env::var_os("PATH"));
        Exe { path, args, cwd }
    }
}

/// `argv[0]` as the shell meant it: relative to the start directory if it holds a
/// slash, else looked up in `PATH`. Symlinks are kept, so a deploy that flips a
/// symlink is picked up too.
fn resolve_argv0(argv0: &Path, cwd: &Path, path_var: Option<OsString>) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if argv0.as_os_str().as_bytes().contains(&b'/') {
        return cwd.join(argv0);
    }
    if let Some(dirs) = path_var {
        for dir in std::env::split_paths(&dirs) {
            let candidate = cwd.join(dir).join(argv0);
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    cwd.join(argv0)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A started next generation, not committed to yet.
pub(crate) struct Spawned {
    pub(crate) successor: Successor,
    /// How long starting it took its (blocking) thread, in µs (a fork grows with this
    /// process).
    pub(crate) spawn_us: u64,
    /// Started with a fork (no `CLONE_PIDFD` on this kernel, or `CEASELESS_FORK`).
    pub(crate) forked: bool,
}

/// Starts the next generation with `fds` (named by `names`) at 3, 4, …
/// `generation` is this generation's number; at most `max_draining` generations may
/// drain once it commits (see the `lineage` module). Under a supervisor, the report
/// channel to it (`supervisor`: its pid and this process's end) follows the readiness
/// channel. `carried`: more variables for the child (the restart history).
pub(crate) async fn spawn(
    exe: &Exe,
    names: &[Name],
    fds: Vec<OwnedFd>,
    generation: u64,
    max_draining: usize,
    carried: Vec<(&'static str, String)>,
    supervisor: Option<(u32, RawFd)>,
) -> Result<Spawned, RestartError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (vars, ready_fd) = handover::child_env(names, std::process::id(), generation);
    let mut sources: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    sources.push(theirs.as_raw_fd());
    debug_assert_eq!(ready_fd, FIRST_FD + sources.len() as RawFd - 1);
    let supervisor = supervisor.map(|(pid, fd)| {
        sources.push(fd);
        handover::supervisor_value(pid, ready_fd + 1)
    });
    let plan = crate::handover::lineage::plan(max_draining);
    let mut set: Vec<(OsString, OsString)> = vars
        .into_iter()
        .chain(carried)
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    set.push((handover::ENV_DRAINING.into(), plan.env.clone().into()));
    let mut removed: Vec<OsString> = handover::CHILD_ENV_REMOVED.iter().map(Into::into).collect();
    match supervisor {
        Some(v) => set.push((handover::ENV_SUPERVISOR.into(), v.into())),
        None => removed.push(handover::ENV_SUPERVISOR.into()),
    }
    // On a blocking thread: the runtime's worker goes on serving while the child is
    // started (which suspends the starting thread until the child executed). The
    // descriptors go along, open until then whatever happens to this future.
    let job_exe = exe.clone();
    let job = tokio::task::spawn_blocking(move || {
        let began = std::time::Instant::now();
        let spawned = start(&job_exe, &set, &removed, &sources);
        let spawn_us = began.elapsed().as_micros() as u64;
        drop((fds, theirs)); // only the child holds them now
        (spawned, spawn_us)
    });
    let (spawned, spawn_us) = match job.await {
        Ok(done) => done,
        Err(e) => (Err(io::Error::other(e)), 0),
    };
    let child = spawned.map_err(|source| RestartError::Spawn {
        path: exe.path.clone(),
        source,
    })?;
    let pid = child.pid();
    ours.set_nonblocking(true)?;
    let channel = tokio::net::UnixStream::from_std(ours)?;
    Ok(Spawned {
        spawn_us,
        forked: matches!(child, Proc::Forked(_)),
        successor: Successor::new(pid, Who::Child(child), channel, plan.hammer, max_draining),
    })
}

/// Set (to anything but `0`), the next generation is started with a fork even where
/// the kernel could do without (the `spawn` module): for a sandbox that refuses
/// `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, and to compare the two.
#[cfg(target_os = "linux")]
pub(crate) const FORK_ENV: &str = "CEASELESS_FORK";

/// Starts the next generation: without forking where the kernel allows (the `spawn`
/// module), else with a fork and an async-signal-safe `pre_exec`.
fn start(
    exe: &Exe,
    set: &[(OsString, OsString)],
    removed: &[OsString],
    sources: &[RawFd],
) -> io::Result<Proc> {
    #[cfg(target_os = "linux")]
    if !crate::sys::portable()
        && std::env::var_os(FORK_ENV).is_none_or(|v| v.is_empty() || v == "0")
    {
        use std::os::unix::ffi::OsStrExt;
        let env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(k, _)| !removed.contains(k) && !set.iter().any(|(s, _)| s == k))
            .chain(set.iter().cloned())
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let spec = crate::sys::spawn::Spec {
            path: exe.path.as_os_str(),
            args: &exe.args,
            cwd: exe.cwd.as_os_str(),
            env,
            fds: sources,
        };
        if let Some(child) = crate::sys::spawn::spawn(&spec)? {
            return Ok(Proc::Cloned(child));
        }
        tracing::debug!("no CLONE_PIDFD on this kernel: forking the next generation");
    }
    fork(exe, set, removed, sources).map(Proc::Forked)
}

/// The next generation through `std`'s fork and exec.
fn fork(
    exe: &Exe,
    set: &[(OsString, OsString)],
    removed: &[OsString],
    sources: &[RawFd],
) -> io::Result<tokio::process::Child> {
    let mut cmd = std::process::Command::new(&exe.path);
    cmd.args(&exe.args)
        .current_dir(&exe.cwd)
        .stdin(Stdio::null());
    for v in removed {
        cmd.env_remove(v);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    crate::sys::child::prepare(&mut cmd, sources.to_vec(), Default::default());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_resolution() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_argv0(Path::new("./bin/server"), cwd, None),
            PathBuf::from("/srv/app/./bin/server")
        );
        assert_eq!(
            resolve_argv0(Path::new("/usr/bin/server"), cwd, None),
            PathBuf::from("/usr/bin/server")
        );
        // A bare name is looked up in PATH.
        let found = resolve_argv0(
            Path::new("sh"),
            cwd,
            Some("/nonexistent:/bin:/usr/bin".into()),
        );
        assert!(found.ends_with("sh") && found.is_absolute(), "{found:?}");
    }
}
