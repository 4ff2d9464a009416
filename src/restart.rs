//! Starting the next generation: re-executing the binary with the listening sockets,
//! waiting for its proof of readiness, and rolling back when it fails.
//!
//! The protocol: the listeners go to fds 3, 4, … of the child (clear of close-on-exec
//! there only), their names in `CEASELESS_FDS`, our pid in `CEASELESS_PARENT_PID`, the
//! write end of a pipe after them (`CEASELESS_READY_FD`). The child writes
//! `ready <pid>` on the pipe once all its servers accept. Until then this process keeps
//! accepting on the same sockets; if the child exits, cannot be executed, or is not ready
//! in time, it is killed and reaped and nothing changed.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::error::RestartError;
use crate::generation::{Drain, Generation, Phase};
use crate::inherit::{
    ENV_FDS, ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, ENV_LISTEN_PID, ENV_PARENT_PID, ENV_READY_FD,
    FIRST_FD,
};
use crate::notify;

/// The working directory at process start, recorded before `main` runs so that a
/// `chdir` by the application cannot change what the relative `argv[0]` means.
static START_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

extern "C" fn record_start_dir() {
    let _ = START_DIR.set(std::env::current_dir().ok());
}

// Runs at load time, before `main` (Linux and the other ELF systems).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[used]
#[link_section = ".init_array"]
static RECORD_START_DIR: extern "C" fn() = record_start_dir;

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
            .get_or_init(|| std::env::current_dir().ok())
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

/// Restarts the process: starts the next generation, hands it every listener, and once
/// it reports that it serves, starts draining this one. Returns the new generation's pid.
///
/// This is what SIGHUP does; call it to restart from code (an admin endpoint, a control
/// socket) and learn the outcome. On error nothing changed: this generation still
/// serves, and a later restart may succeed. A generation restarts only once every one
/// of its servers accepts: before that the answer is [`RestartError::InProgress`] (it is
/// itself a restart still under way) or [`RestartError::NoServer`].
///
/// ```no_run
/// # async fn admin() {
/// match ceaseless::restart().await {
///     Ok(pid) => println!("now served by pid {pid}"),
///     Err(e) => eprintln!("restart failed, still serving: {e}"),
/// }
/// # }
/// ```
pub async fn restart() -> Result<u32, RestartError> {
    restart_and(|| {}).await
}

/// [`restart`], running `settled` once the outcome is known and logged, before this
/// generation starts draining: work done after the drain begins may never run, as the
/// process exits as soon as its servers are drained. (SIGHUP's post hooks go here.)
pub(crate) async fn restart_and(
    settled: impl FnOnce() + Send + 'static,
) -> Result<u32, RestartError> {
    let gen = Generation::get();
    if let Err(e) = claim_restart_slot(gen).await {
        let outcome = Err(e);
        log_outcome(&outcome);
        settled();
        return outcome;
    }
    // The restart runs to its end in a task of its own, even if the caller stops waiting
    // (a timeout around this call, a client gone from an admin endpoint): cut short, it
    // would leave the restart slot taken for good and a new generation unwatched.
    let task = tokio::spawn(async move {
        let outcome = spawn_and_wait(gen).await;
        log_outcome(&outcome);
        settled();
        match &outcome {
            Ok(pid) => {
                notify::handed_over(*pid);
                gen.begin_drain(Drain::Handover);
            }
            Err(e) => notify::restart_failed(e),
        }
        gen.end_restart();
        outcome
    });
    task.await.unwrap_or_else(|e| {
        // The task panicked (or the runtime is shutting down): free the slot.
        gen.end_restart();
        Err(RestartError::Io(io::Error::other(format!(
            "restart task failed: {e}"
        ))))
    })
}

/// How long a first generation whose servers are starting waits for them to be ready
/// before it refuses a restart (a SIGHUP sent the moment "serving" is logged).
const FIRST_READY_WAIT: Duration = Duration::from_secs(1);

/// Takes the single restart slot, or says why a restart cannot start now.
async fn claim_restart_slot(gen: &Generation) -> Result<(), RestartError> {
    if gen.phase().is_draining() {
        return Err(RestartError::ShuttingDown);
    }
    if !gen.is_ready() {
        // Not every server of this generation accepts yet. If it is itself a new
        // generation, the restart that started it is still in progress: its parent
        // waits for our report, and some of our servers may not have taken their
        // sockets over yet, so a handover now would lose them.
        let started_by_parent = gen
            .inherited()
            .as_ref()
            .is_some_and(|i| i.parent_pid.is_some());
        if started_by_parent {
            return Err(RestartError::InProgress);
        }
        // A first generation: its servers may be a moment from ready.
        let deadline = tokio::time::Instant::now() + FIRST_READY_WAIT;
        while !gen.is_ready() {
            if tokio::time::Instant::now() >= deadline || gen.phase().is_draining() {
                return Err(RestartError::NoServer);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if !gen.try_begin_restart() {
        return Err(RestartError::InProgress);
    }
    Ok(())
}

fn log_outcome(outcome: &Result<u32, RestartError>) {
    let pid = std::process::id();
    match outcome {
        Ok(new_pid) => tracing::info!(pid, new_pid, "restart succeeded; draining"),
        Err(e) => tracing::error!(pid, error = %e, "restart failed; this generation carries on"),
    }
}

async fn spawn_and_wait(gen: &'static Generation) -> Result<u32, RestartError> {
    let listeners = gen.handover_fds()?;
    if listeners.is_empty() {
        return Err(RestartError::NoServer);
    }
    notify::reloading();
    let (ready_r, ready_w) = pipe()?;
    let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
    let mut sources: Vec<RawFd> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    sources.push(ready_w.as_raw_fd());
    let ready_fd = FIRST_FD + (sources.len() as RawFd - 1);

    let exe = &gen.exe;
    let mut cmd = tokio::process::Command::new(&exe.path);
    cmd.args(&exe.args)
        .current_dir(&exe.cwd)
        .env_remove(ENV_LISTEN_FDS)
        .env_remove(ENV_LISTEN_PID)
        .env_remove(ENV_LISTEN_FDNAMES)
        .env(ENV_FDS, names.join("\n"))
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .env(ENV_READY_FD, ready_fd.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(false);
    let mut scratch: Vec<RawFd> = vec![-1; sources.len()];
    // SAFETY: the closure runs in the child between fork and exec. It only calls
    // fcntl, dup2 and sigaction (async-signal-safe) on descriptors that are open in the
    // child, and writes into vectors allocated before the fork; it neither allocates
    // nor locks.
    unsafe {
        cmd.pre_exec(move || {
            ignore_sighup()?;
            place_fds(&sources, &mut scratch)
        });
    }
    let spawned = cmd.spawn();
    drop(ready_w); // only the child holds the write end now
    drop(listeners);
    let mut child = spawned.map_err(|source| RestartError::Spawn {
        path: exe.path.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid = std::process::id(), new_pid = pid, path = %exe.path.display(), "started the next generation; waiting for it to be ready");

    let timeout = gen.ready_timeout();
    let mut phase = gen.subscribe();
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let failure = loop {
        let waited = tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.starts_with("ready") => Waited::Ready,
                Ok(Some(l)) => Waited::Unexpected(l),
                // The child closed the pipe without reporting: it exited or crashed.
                Ok(None) | Err(_) => Waited::Closed,
            },
            status = child.wait() => Waited::Exited(status),
            _ = &mut deadline => Waited::Timeout,
            _ = async { let _ = phase.wait_for(|p| *p == Phase::Draining(Drain::Shutdown)).await; } => Waited::Aborted,
        };
        break match waited {
            Waited::Ready => return Ok(pid),
            Waited::Unexpected(l) => {
                tracing::warn!(line = %l, "unexpected message on the readiness pipe");
                continue;
            }
            Waited::Closed => {
                match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                    Ok(Ok(status)) => RestartError::Exited { pid, status },
                    _ => RestartError::NotReady { pid, timeout },
                }
            }
            Waited::Exited(Ok(status)) => RestartError::Exited { pid, status },
            Waited::Exited(Err(e)) => RestartError::Io(e),
            Waited::Timeout => RestartError::NotReady { pid, timeout },
            Waited::Aborted => RestartError::Aborted { pid },
        };
    };
    // Whatever went wrong, leave no process behind and no zombie.
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    Err(failure)
}

/// What happened while waiting for the new generation.
enum Waited {
    Ready,
    Unexpected(String),
    Closed,
    Exited(io::Result<std::process::ExitStatus>),
    Timeout,
    Aborted,
}

/// In the child, between fork and exec: SIGHUP is ignored until the new generation
/// installs its own handler (when its first server starts). Without this, a SIGHUP sent
/// while it starts up (meant for the newest generation, say by a deploy script that
/// restarts twice) would kill it by the default action and waste the restart.
/// (The disposition survives exec; the handler installed later replaces it.)
///
/// Async-signal-safe: sigaction only, on a structure on the stack.
fn ignore_sighup() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; sigaction
    // only reads it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_IGN;
        if libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child, between fork and exec: puts `sources[i]` at fd `3 + i`, without
/// close-on-exec. Every source is first copied above the target range so that no
/// `dup2` overwrites a source that is still to be moved.
///
/// Async-signal-safe: fcntl and dup2 only, no allocation (the scratch space was
/// allocated before the fork), no panics (indices stay within the slices' lengths).
fn place_fds(sources: &[RawFd], scratch: &mut [RawFd]) -> io::Result<()> {
    let floor = FIRST_FD + sources.len() as RawFd;
    for (src, tmp) in sources.iter().zip(scratch.iter_mut()) {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor; no memory is touched.
        let t = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, floor) };
        if t < 0 {
            return Err(io::Error::last_os_error());
        }
        *tmp = t;
    }
    for (target, tmp) in (FIRST_FD..).zip(scratch.iter()) {
        // SAFETY: dup2 onto a descriptor number; the copy does not carry close-on-exec.
        if unsafe { libc::dup2(*tmp, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The scratch copies are close-on-exec; exec closes them.
    Ok(())
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
