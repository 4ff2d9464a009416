//! Reading the listening sockets a process was handed: by the previous generation of
//! itself, or by systemd's socket activation.
//!
//! The environment is read once and never changed (no `set_var`/`remove_var`: other
//! threads may be reading it). Stale variables are harmless: each set is guarded by a
//! pid (ours by the parent's pid against `getppid()`, systemd's `LISTEN_PID` against our
//! own), and every descriptor announced gets close-on-exec before `main` runs, so a
//! subprocess the application starts sees neither a listener nor variables meant for it.
//!
//! Only a descriptor that was open when the process started is ever taken: by the time
//! the first server reads the environment, a number it announces but that was never
//! handed over may belong to the process itself (the async runtime's epoll, say), and
//! taking it would close it under its owner.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::error::Error;
use crate::listener::{describe_listener, ListenAddr};

/// Names of the handed-over listeners, one per line, for fds 3, 4, ...
pub(crate) const ENV_FDS: &str = "CEASELESS_FDS";
/// The pid of the generation that handed them over (checked against `getppid()`).
pub(crate) const ENV_PARENT_PID: &str = "CEASELESS_PARENT_PID";
/// The write end of the readiness pipe.
pub(crate) const ENV_READY_FD: &str = "CEASELESS_READY_FD";
/// systemd's socket activation variables.
pub(crate) const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const ENV_LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The name prefix of a Unix socket whose file belongs to the service manager (it came
/// from socket activation): handed over like any other, but never unlinked by us.
pub(crate) const MANAGED_UNIX_PREFIX: &str = "unix-managed:";

/// The first descriptor of a handover, as in systemd's protocol.
pub(crate) const FIRST_FD: RawFd = 3;

/// Where an inherited socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The previous generation of this program.
    Parent,
    /// systemd socket activation.
    Systemd,
}

/// One inherited listening socket, validated.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The name it was announced under, if any.
    pub(crate) name: Option<String>,
    /// What the kernel says it is bound to.
    pub(crate) actual: ListenAddr,
    pub(crate) fd: OwnedFd,
    pub(crate) origin: Origin,
    /// The socket file belongs to the service manager (socket activation, possibly
    /// several generations ago): never remove it.
    pub(crate) managed: bool,
}

/// What a process found in its environment at start-up.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    /// Listening sockets no server has claimed yet.
    pub(crate) entries: Vec<Entry>,
    /// The pipe on which to report readiness to the previous generation.
    pub(crate) ready_pipe: Option<OwnedFd>,
    /// The pid of the previous generation, when this process is a restart.
    pub(crate) parent_pid: Option<u32>,
}

/// An environment to read from: the real one, or a fixed map in unit tests.
pub(crate) trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment, read-only.
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Inherited {
    /// Reads our own handover and systemd's socket activation. Problems are logged as
    /// typed errors and the affected sockets are simply not offered (servers then bind
    /// afresh); nothing here panics.
    pub(crate) fn from_env(env: &dyn Env) -> Self {
        let mut found = Inherited::default();
        let ppid = std::os::unix::process::parent_id();
        let pid = std::process::id();
        match read_ours(env, ppid) {
            Ok(Some((names, ready_fd, parent))) => {
                found.parent_pid = Some(parent);
                found.adopt_all(&names, Origin::Parent);
                if let Some(fd) = ready_fd {
                    match take_fd(fd).and_then(|owned| {
                        if is_pipe(owned.as_fd()) {
                            Ok(owned)
                        } else {
                            Err("not a pipe".into())
                        }
                    }) {
                        Ok(fd) => found.ready_pipe = Some(fd),
                        Err(reason) => log(Error::InheritedFd {
                            fd,
                            name: ENV_READY_FD.into(),
                            reason,
                        }),
                    }
                }
            }
            Ok(None) => {}
            Err(e) => log(e),
        }
        if found.parent_pid.is_none() {
            match read_systemd(env, pid) {
                Ok(Some(names)) => found.adopt_all(&names, Origin::Systemd),
                Ok(None) => {}
                Err(e) => log(e),
            }
        }
        found
    }

    fn adopt_all(&mut self, names: &[Option<String>], origin: Origin) {
        for (i, name) in names.iter().enumerate() {
            let fd = FIRST_FD + i as RawFd;
            let label = name.clone().unwrap_or_else(|| format!("fd {fd}"));
            match adopt_one(fd, name.as_deref()) {
                Ok((fd, actual)) => {
                    tracing::debug!(fd = ?fd, name = %label, %actual, ?origin, "inherited listener");
                    let managed = origin == Origin::Systemd
                        || name
                            .as_deref()
                            .is_some_and(|n| n.starts_with(MANAGED_UNIX_PREFIX));
                    self.entries.push(Entry {
                        name: name.clone(),
                        actual,
                        fd,
                        origin,
                        managed,
                    });
                }
                Err(reason) => log(Error::InheritedFd {
                    fd,
                    name: label,
                    reason,
                }),
            }
        }
    }

    /// Hands the inherited socket for `requested` to a server: the one announced under
    /// its name, else (socket activation without names) the one bound to the same
    /// address. Port 0 matches by name only.
    pub(crate) fn claim(
        &mut self,
        requested: &ListenAddr,
        extra_name: Option<&str>,
    ) -> Option<Entry> {
        let name = requested.handover_name();
        let same_kind = |e: &Entry| {
            matches!(
                (&e.actual, requested),
                (ListenAddr::Tcp(_), ListenAddr::Tcp(_))
                    | (ListenAddr::Unix(_), ListenAddr::Unix(_))
            )
        };
        let by_name = self.entries.iter().position(|e| {
            same_kind(e)
                && e.name
                    .as_deref()
                    .is_some_and(|n| n == name || Some(n) == extra_name)
        });
        let by_addr = || {
            self.entries
                .iter()
                .position(|e| match (&e.actual, requested) {
                    (ListenAddr::Tcp(a), ListenAddr::Tcp(r)) => r.port() != 0 && a == r,
                    (ListenAddr::Unix(a), ListenAddr::Unix(r)) => a == r,
                    _ => false,
                })
        };
        let i = by_name.or_else(by_addr)?;
        Some(self.entries.swap_remove(i))
    }
}

fn log(e: Error) {
    tracing::error!(error = %e, "ignoring an inherited listener; binding afresh instead");
}

type Ours = (Vec<Option<String>>, Option<RawFd>, u32);

/// Our own handover: honoured only when the announced parent really is our parent.
fn read_ours(env: &dyn Env, ppid: u32) -> Result<Option<Ours>, Error> {
    let Some(parent) = env.get(ENV_PARENT_PID) else {
        return Ok(None);
    };
    let parent: u32 = parent.trim().parse().map_err(|_| Error::Environment {
        name: ENV_PARENT_PID,
        value: parent.clone(),
        reason: "not a pid".into(),
    })?;
    if parent != ppid {
        return Ok(None); // meant for another process (we are a grandchild, or re-parented)
    }
    let names: Vec<Option<String>> = match env.get(ENV_FDS) {
        Some(v) if !v.is_empty() => v.split('\n').map(|n| Some(n.to_string())).collect(),
        _ => Vec::new(),
    };
    if let Some(bad) = names.iter().flatten().find(|n| !valid_name(n)) {
        return Err(Error::Environment {
            name: ENV_FDS,
            value: bad.clone(),
            reason: "a name must look like tcp:ADDR, unix:PATH or control:PATH".into(),
        });
    }
    if names.len() > 1024 {
        return Err(Error::Environment {
            name: ENV_FDS,
            value: format!("{} names", names.len()),
            reason: "too many descriptors".into(),
        });
    }
    let ready = match env.get(ENV_READY_FD) {
        None => None,
        Some(v) => match v.trim().parse::<RawFd>() {
            Ok(fd) if fd >= FIRST_FD + names.len() as RawFd => Some(fd),
            _ => {
                return Err(Error::Environment {
                    name: ENV_READY_FD,
                    value: v,
                    reason: "not a descriptor number after the listeners".into(),
                })
            }
        },
    };
    Ok(Some((names, ready, parent)))
}

fn valid_name(n: &str) -> bool {
    n.strip_prefix("tcp:")
        .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok())
        || n.strip_prefix("unix:")
            .or_else(|| n.strip_prefix(MANAGED_UNIX_PREFIX))
            .is_some_and(|p| p.starts_with('/') || p.starts_with('.'))
        || n.strip_prefix(crate::control::NAME_PREFIX)
            .is_some_and(|p| p.starts_with('/'))
}

/// systemd's socket activation (sd_listen_fds(3)).
fn read_systemd(env: &dyn Env, pid: u32) -> Result<Option<Vec<Option<String>>>, Error> {
    let (Some(count), Some(for_pid)) = (env.get(ENV_LISTEN_FDS), env.get(ENV_LISTEN_PID)) else {
        return Ok(None);
    };
    let for_pid: u32 = for_pid.trim().parse().map_err(|_| Error::Environment {
        name: ENV_LISTEN_PID,
        value: for_pid.clone(),
        reason: "not a pid".into(),
    })?;
    if for_pid != pid {
        tracing::debug!(
            for_pid,
            pid,
            "LISTEN_PID names another process; not taking its fds"
        );
        return Ok(None);
    }
    let n: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= 1024)
        .ok_or_else(|| Error::Environment {
            name: ENV_LISTEN_FDS,
            value: count.clone(),
            reason: "not a descriptor count".into(),
        })?;
    let mut names: Vec<Option<String>> = match env.get(ENV_LISTEN_FDNAMES) {
        Some(v) => v
            .split(':')
            .map(|s| (!s.is_empty() && s != "unknown").then(|| s.to_string()))
            .collect(),
        None => Vec::new(),
    };
    if !names.is_empty() && names.len() != n {
        log(Error::Environment {
            name: ENV_LISTEN_FDNAMES,
            value: env.get(ENV_LISTEN_FDNAMES).unwrap_or_default(),
            reason: format!(
                "{} names for {n} descriptors; matching by address",
                names.len()
            ),
        });
        names.clear();
    }
    names.resize(n, None);
    Ok(Some(names))
}

/// The announced descriptors that were open when the process started: recorded before
/// `main` runs (see `RECORD_OPEN_AT_START`), when no code of the process can have opened
/// one at those numbers yet.
static OPEN_AT_START: OnceLock<Vec<RawFd>> = OnceLock::new();

extern "C" fn record_open_at_start() {
    let _ = OPEN_AT_START.set(announced_and_open(&ProcessEnv));
}

// Runs at load time, before `main` (Linux and the other ELF systems). Elsewhere the
// record is made on first use, which is right as long as nothing opened a descriptor
// at an announced number before the first server starts.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
#[used]
#[link_section = ".init_array"]
static RECORD_OPEN_AT_START: extern "C" fn() = record_open_at_start;

fn open_at_start() -> &'static [RawFd] {
    OPEN_AT_START.get_or_init(|| announced_and_open(&ProcessEnv))
}

/// The descriptors the environment announces to this process (past the pid guards)
/// that are open, each made close-on-exec at once. Logs nothing: it runs before the
/// application installed a logger; `Inherited::from_env` reports the problems later.
fn announced_and_open(env: &dyn Env) -> Vec<RawFd> {
    let announced: Vec<RawFd> = match read_ours(env, std::os::unix::process::parent_id()) {
        Ok(Some((names, ready, _))) => (FIRST_FD..).take(names.len()).chain(ready).collect(),
        // (Its problems are logged by `Inherited::from_env`, once a logger exists.)
        _ => match read_systemd(env, std::process::id()) {
            Ok(Some(names)) => (FIRST_FD..).take(names.len()).collect(),
            _ => Vec::new(),
        },
    };
    announced
        .into_iter()
        .filter(|&fd| set_cloexec(fd).is_ok())
        .collect()
}

/// Takes ownership of an inherited descriptor: one that was open when the process
/// started, made close-on-exec.
fn take_fd(fd: RawFd) -> Result<OwnedFd, String> {
    if !open_at_start().contains(&fd) {
        return Err("never handed over: it was not open when the process started".into());
    }
    set_cloexec(fd)?;
    // SAFETY: the descriptor was open when the process started, so it was handed to
    // this process to own (the pid guard was checked by the caller); nothing else in
    // the process refers to it, and it is taken only once (the environment is read once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Is `fd` a pipe (or FIFO)?
fn is_pipe(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into the stat buffer we pass; it is read only on success.
    unsafe {
        libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) == 0
            && st.assume_init().st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

/// Sets close-on-exec on an open descriptor.
fn set_cloexec(fd: RawFd) -> Result<(), String> {
    // SAFETY: F_GETFD/F_SETFD only read and set flags of a descriptor number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("not open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if flags & libc::FD_CLOEXEC == 0
        && unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0
    {
        return Err(format!(
            "cannot set close-on-exec: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Takes one announced listener, checking it is a listening stream socket of the kind
/// its name says.
fn adopt_one(fd: RawFd, name: Option<&str>) -> Result<(OwnedFd, ListenAddr), String> {
    let owned = take_fd(fd)?;
    let actual = describe_listener(owned.as_fd())?;
    if let Some(name) = name {
        let kind_ok = match &actual {
            ListenAddr::Tcp(_) => {
                !(name.starts_with("unix") || name.starts_with(crate::control::NAME_PREFIX))
            }
            ListenAddr::Unix(_) => !name.starts_with("tcp:"),
        };
        if !kind_ok {
            return Err(format!("announced as {name} but it is {actual}"));
        }
    }
    Ok((owned, actual))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fixed(HashMap<&'static str, String>);
    impl Env for Fixed {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> Fixed {
        Fixed(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    #[test]
    fn ours_needs_our_parent() {
        let ppid = 4242;
        let e = env(&[(ENV_PARENT_PID, "999"), (ENV_FDS, "tcp:127.0.0.1:1")]);
        assert!(read_ours(&e, ppid).unwrap().is_none());
        let e = env(&[
            (ENV_PARENT_PID, "4242"),
            (ENV_FDS, "tcp:127.0.0.1:1\nunix:/x\ncontrol:/run/x.sock"),
        ]);
        let (names, ready, parent) = read_ours(&e, ppid).unwrap().unwrap();
        assert_eq!(names.len(), 3);
        assert_eq!(ready, None);
        assert_eq!(parent, 4242);
    }

    #[test]
    fn ours_rejects_garbage() {
        let ppid = 7;
        for pairs in [
            vec![(ENV_PARENT_PID, "seven")],
            vec![(ENV_PARENT_PID, "7"), (ENV_FDS, "tcp:nowhere")],
            vec![(ENV_PARENT_PID, "7"), (ENV_FDS, "ftp:1.2.3.4:5")],
            vec![
                (ENV_PARENT_PID, "7"),
                (ENV_FDS, "tcp:127.0.0.1:1"),
                (ENV_READY_FD, "3"),
            ],
            vec![(ENV_PARENT_PID, "7"), (ENV_READY_FD, "x")],
        ] {
            assert!(read_ours(&env(&pairs), ppid).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn systemd_needs_our_pid() {
        let e = env(&[(ENV_LISTEN_FDS, "2"), (ENV_LISTEN_PID, "1")]);
        assert!(read_systemd(&e, 5).unwrap().is_none());
        let e = env(&[
            (ENV_LISTEN_FDS, "2"),
            (ENV_LISTEN_PID, "5"),
            (ENV_LISTEN_FDNAMES, "web:unknown"),
        ]);
        let names = read_systemd(&e, 5).unwrap().unwrap();
        assert_eq!(names, vec![Some("web".to_string()), None]);
        let e = env(&[(ENV_LISTEN_FDS, "many"), (ENV_LISTEN_PID, "5")]);
        assert!(read_systemd(&e, 5).is_err());
    }

    #[test]
    fn a_closed_fd_is_refused() {
        // A descriptor number far above anything this test process has open.
        assert!(take_fd(100_000).is_err());
    }
}
