//! Starting the next generation without copying this one (Linux).
//!
//! `std::process::Command` (and tokio's, built on it) forks as soon as a `pre_exec`
//! closure is set, and ceaseless needs one: the listening sockets go to fds 3, 4, … and
//! SIGHUP is ignored until the new generation installs its handler. A fork copies the
//! page tables of the whole process and marks every page copy-on-write while holding
//! its memory map's lock: the thread that restarts (a runtime worker) stops for as long
//! as that takes, every other thread that faults a page waits for the lock, and every
//! page written afterwards faults once more. That grows with the process: in the
//! benchmark the restarting thread was held 0.65 ms by a fork at 6 MiB resident and
//! 37 ms at 1 GiB (`--ballast-mb 1000`), against 0.17–0.18 ms either way this module's
//! way; those milliseconds are taken from the requests the old generation is serving. (`posix_spawn`, which std uses without
//! `pre_exec`, cannot set a signal to be ignored, and no maintained crate spawns with
//! both an fd layout and a signal disposition without forking; hence this module.)
//!
//! So the child is started as `posix_spawn` starts one: `clone(CLONE_VM | CLONE_VFORK)`,
//! which shares the parent's memory (nothing is copied) and suspends only the calling
//! thread until the child has called `execve`. Between the clone and the exec the child
//! runs on a stack of its own and makes only async-signal-safe system calls, on data
//! prepared before the clone: it resets every signal the parent handles to its default
//! (a handler of the parent's must never run in a child that shares its memory), ignores
//! SIGHUP, unblocks all signals, changes directory, puts `/dev/null` on stdin and the
//! sockets in place ([`super::child::place_fds`]), and executes. All signals are blocked in
//! the calling thread around the clone, so none is handled in the child before its
//! dispositions are reset. An error of the child is left in shared memory for the
//! parent, which reaps the child and reports it.
//!
//! The restart calls [`spawn`] on a blocking thread of the runtime, so that even that
//! short suspension is not a worker's.
//!
//! The child comes with a pidfd (`CLONE_PIDFD`): it is waited for through the runtime
//! (the pidfd is readable once it exited) and reaped with `waitid(P_PIDFD)`, so no pid
//! can be confused with a later process. On a kernel without `CLONE_PIDFD` (before 5.2)
//! [`spawn`] says so, and the caller forks as before.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;

use super::child::Kernel;

/// The child's stack: its few calls need far less.
const STACK: usize = 64 << 10;

/// What the caller asks for.
pub(crate) struct Spec<'a> {
    pub(crate) path: &'a OsStr,
    pub(crate) args: &'a [std::ffi::OsString],
    pub(crate) cwd: &'a OsStr,
    /// The whole environment, `KEY=value` each.
    pub(crate) env: Vec<Vec<u8>>,
    /// The descriptors to put at 3, 4, … in this order.
    pub(crate) fds: &'a [RawFd],
}

/// A started child, with its pidfd.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

/// Everything the child reads, prepared before the clone (it must not allocate).
struct Args {
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    devnull: RawFd,
    sources: Vec<RawFd>,
    scratch: Vec<RawFd>,
    last_signal: libc::c_int,
    /// The errno of the child's failure (0: it executed).
    error: AtomicI32,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in an argument or variable",
        )
    })
}

/// Starts `spec`'s program. `Ok(None)`: this kernel cannot (no `CLONE_PIDFD`), fork
/// instead.
pub(crate) fn spawn(spec: &Spec<'_>) -> io::Result<Option<Child>> {
    let path = cstring(spec.path.as_bytes())?;
    let mut owned_argv = vec![path.clone()];
    for a in spec.args {
        owned_argv.push(cstring(a.as_bytes())?);
    }
    let owned_env = spec
        .env
        .iter()
        .map(|e| cstring(e))
        .collect::<io::Result<Vec<_>>>()?;
    let argv = owned_argv
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp = owned_env
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let devnull = std::fs::File::open("/dev/null")?;
    let mut args = Args {
        path,
        argv,
        envp,
        cwd: cstring(spec.cwd.as_bytes())?,
        devnull: devnull.as_raw_fd(),
        sources: spec.fds.to_vec(),
        scratch: vec![-1; spec.fds.len()],
        last_signal: libc::SIGRTMAX(),
        error: AtomicI32::new(0),
    };
    let stack = Stack::new()?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask initialise and use
    // it. clone gets a child function that only makes async-signal-safe calls on `args`
    // (alive until the child executed or exited: CLONE_VFORK suspends this thread until
    // then) and a stack of its own, whose top it is given.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &mut args as *mut Args as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return match err.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOSYS) => Ok(None),
                _ => Err(err),
            };
        }
        pid
    };
    drop(stack);
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let failed = args.error.load(Ordering::Acquire);
    if failed != 0 {
        // It exited without executing: reap it, then report why.
        let _ = reap(pid, 0);
        return Err(io::Error::from_raw_os_error(failed));
    }
    // `AsyncFd::with_interest` (deprecated in newer tokio for the `register` this
    // crate's minimum tokio lacks) is sound here: the AsyncFd owns the OwnedFd, which
    // stays open, and the same descriptor, for the AsyncFd's whole life.
    #[allow(deprecated)]
    let pidfd = AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE);
    match pidfd {
        Ok(pidfd) => Ok(Some(Child {
            pid: pid as u32,
            pidfd,
            status: None,
        })),
        Err(e) => {
            // Not watchable: not started, then. (Unreaped, so the pid is still its.)
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = reap(pid, 0);
            Err(e)
        }
    }
}

/// The child, between clone and exec (module docs). Async-signal-safe calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Args`, alive and unchanged while this runs (the
    // parent is suspended). Only system calls follow, on data prepared for them.
    unsafe {
        let a = &mut *(arg as *mut Args);
        let mut sa: libc::sigaction = std::mem::zeroed();
        for sig in 1..=a.last_signal {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, std::ptr::null(), &mut sa) == 0
                && sa.sa_sigaction != libc::SIG_DFL
                && sa.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        if super::child::ignore_sighup().is_err() {
            fail(a);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::chdir(a.cwd.as_ptr()) < 0 || libc::dup2(a.devnull, 0) < 0 {
            fail(a);
        }
        if super::child::place_fds(&mut Kernel, &a.sources, &mut a.scratch).is_err() {
            fail(a);
        }
        libc::execve(a.path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        fail(a)
    }
}

/// The child failed before it executed: its errno for the parent, and out.
unsafe fn fail(a: &Args) -> ! {
    let e = *libc::__errno_location();
    a.error
        .store(if e == 0 { libc::ECHILD } else { e }, Ordering::Release);
    libc::_exit(127)
}

/// A stack for the child, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Self> {
        // SAFETY: sysconf only reads a system setting.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let len = STACK.next_multiple_of(page) + page;
        // SAFETY: an anonymous private mapping, then its lowest page made inaccessible.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::mprotect(base, page, libc::PROT_NONE);
            Ok(Stack { base, len })
        }
    }

    /// The top of the stack (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, whose length is a multiple of the
        // page size (so of 16).
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by nothing any more (the child
        // executed or exited before clone returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Reaps `pid` if it exited: its status, or `None` while it runs (`flags`: WNOHANG).
/// By pid: it is this process's unreaped child, so the pid cannot have been reused.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into the integer it is given.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    match r {
        0 => Ok(None),
        r if r < 0 => Err(io::Error::last_os_error()),
        _ => Ok(Some(ExitStatus::from_raw(status))),
    }
}

impl Child {
    /// Its exit status once it exited (reaping it), `None` while it runs.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = reap(self.pid as libc::pid_t, libc::WNOHANG)?;
        }
        Ok(self.status)
    }

    /// Waits until it exits, and reaps it.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Sends it `sig` (nothing once it is reaped).
    pub(crate) fn signal(&self, sig: super::process::Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        super::process::pidfd_signal(self.pidfd.get_ref().as_fd(), sig).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;

    fn start(script: &str, cwd: &str, fds: &[RawFd]) -> io::Result<Option<Child>> {
        spawn(&Spec {
            path: OsStr::new("/bin/sh"),
            args: &["-c".into(), script.into()],
            cwd: OsStr::new(cwd),
            env: vec![
                b"GREETING=hello there".to_vec(),
                b"PATH=/usr/bin:/bin".to_vec(),
            ],
            fds,
        })
    }

    #[tokio::test]
    async fn the_child_gets_its_fds_environment_directory_and_ignores_sighup() {
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // SIGHUP first: ignored, the script goes on. stdin is /dev/null: `read` fails.
        let script = r#"kill -HUP $$; echo "$GREETING in $(pwd)" >&3; read x || echo "stdin at its end" >&3; exit 7"#;
        let mut child = start(script, "/tmp", &[theirs.as_raw_fd()])
            .unwrap()
            .expect("this kernel has CLONE_PIDFD");
        drop(theirs);
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(7), "{status:?}");
        let mut out = String::new();
        ours.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello there in /tmp\nstdin at its end\n");
        // Reaped once: asking again gives the same status, and signals go nowhere.
        assert_eq!(child.try_wait().unwrap(), Some(status));
        child.signal(super::super::process::Signal::KILL).unwrap();
    }

    #[tokio::test]
    async fn a_running_child_is_signalled_and_reaped() {
        let mut child = start("sleep 30", "/", &[]).unwrap().expect("CLONE_PIDFD");
        assert_eq!(child.try_wait().unwrap(), None);
        child.signal(super::super::process::Signal::TERM).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    }

    #[tokio::test]
    async fn what_cannot_start_is_an_error() {
        let missing = spawn(&Spec {
            path: OsStr::new("/nonexistent/program"),
            args: &[],
            cwd: OsStr::new("/"),
            env: vec![],
            fds: &[],
        });
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        let bad_dir = start("exit 0", "/nonexistent/dir", &[]);
        assert_eq!(bad_dir.unwrap_err().kind(), io::ErrorKind::NotFound);
        let bad_fd = start("exit 0", "/", &[9999]);
        assert_eq!(bad_fd.unwrap_err().raw_os_error(), Some(libc::EBADF));
    }
}
