//! Taking the descriptors a process was handed at start-up: by the previous generation
//! of itself, or by systemd's socket activation (directly, or relayed by a
//! socket-activated supervisor: see the `supervise` module), or by a development loop's
//! socket server (`LISTEN_FDS` without `LISTEN_PID`, as `systemfd --no-pid` sets it).
//! (What the variables mean is the [`handover`](crate::handover) module's; this one
//! touches the descriptors.)
//!
//! The environment is read once and never changed (no `set_var`/`remove_var`: other
//! threads may be reading it). Stale variables are harmless: each set is guarded by a
//! pid (ours by the parent's pid against `getppid()`, systemd's `LISTEN_PID` against our
//! own), and every descriptor announced gets close-on-exec before `main` runs, so a
//! subprocess the application starts sees neither a listener nor variables meant for it.
//! A development loop's set names no pid, so nothing proves it is meant for this
//! process: of it, only the listening stream sockets are taken; any other descriptor is
//! refused (a logged [`Error::InheritedFd`]) and left exactly as it is, not even made
//! close-on-exec, since it is not ours. Whoever took a set never passes its variables on:
//! the generations a process starts never see `LISTEN_*` (see `restart` and
//! `supervise`).
//!
//! Only a descriptor that was open when the process started is ever taken: by the time
//! the process owner reads the environment, a number it announces but that was never
//! handed over may belong to the process itself (the async runtime's epoll, say), and
//! taking it would close it under its owner. Each descriptor is checked on its own
//! against what the kernel says it is; one that fails is logged and closed, and the
//! others are still taken.

use std::os::fd::{AsFd, OwnedFd, RawFd};

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::handover::listen::describe_listener;
use crate::handover::{self, Env, Name, ProcessEnv, ENV_READY_FD, FIRST_FD};
use crate::sys::fd::{self, take_inherited};

/// How an inherited socket was announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announced {
    /// By the previous generation, under this name.
    Parent(Name),
    /// By systemd, under the socket unit's `FileDescriptorName=`, if any.
    #[cfg_attr(not(feature = "systemd"), allow(dead_code))]
    Systemd(Option<String>),
}

impl Announced {
    /// The name it was announced under, for logs; `unnamed()` for an unnamed one.
    fn label(&self, unnamed: impl FnOnce() -> String) -> String {
        match self {
            Announced::Parent(n) => n.encode(),
            Announced::Systemd(Some(n)) => n.clone(),
            Announced::Systemd(None) => unnamed(),
        }
    }
}

/// One inherited listening socket, validated.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) announced: Announced,
    /// What the kernel says it is bound to.
    pub(crate) actual: ListenAddr,
    pub(crate) fd: OwnedFd,
}

impl Entry {
    /// The socket file belongs to the service manager (socket activation, possibly
    /// several generations ago): never remove it.
    pub(crate) fn managed(&self) -> bool {
        match &self.announced {
            Announced::Systemd(_) => true,
            Announced::Parent(Name::Listener { managed, .. }) => *managed,
            Announced::Parent(Name::Control(_) | Name::Fd(_)) => false,
        }
    }

    pub(crate) fn origin(&self) -> &'static str {
        match self.announced {
            Announced::Parent(_) => "Parent",
            Announced::Systemd(_) => "Systemd",
        }
    }

    fn label(&self) -> String {
        self.announced.label(|| self.actual.to_string())
    }
}

/// The readiness channel to the previous generation.
#[derive(Debug)]
pub(crate) enum ReadyChannel {
    /// A pipe: report, and be live at once.
    Pipe(OwnedFd),
    /// A socket: report, then the parent's answer says whether we are live.
    Socket(OwnedFd),
}

/// What a process found in its environment at start-up.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    /// Sockets not claimed yet.
    pub(crate) entries: Vec<Entry>,
    /// The application's named descriptors (`fd:` names) not claimed yet.
    pub(crate) extras: Vec<(String, OwnedFd)>,
    pub(crate) ready: Option<ReadyChannel>,
    /// The previous generation's pid, when this process is a restart.
    pub(crate) parent: Option<u32>,
    /// This generation's number: 1 for the first, +1 at each restart.
    pub(crate) generation: u64,
}

fn log(e: Error) {
    tracing::error!(error = %e, "ignoring an inherited listener; binding afresh instead");
}

impl Inherited {
    /// Reads our own handover, else systemd's socket activation. Problems are logged as
    /// typed errors and the affected descriptors closed; nothing here panics.
    pub(crate) fn from_env(env: &dyn Env) -> Self {
        fd::record_open_at_start(announced_now);
        let mut found = Inherited {
            generation: 1,
            ..Inherited::default()
        };
        match handover::read_ours(env, std::os::unix::process::parent_id()) {
            Ok(Some(ours)) => {
                found.parent = Some(ours.parent);
                found.generation = ours.generation;
                let relayed = relayed_activation(env, &ours);
                if relayed.is_some() {
                    // The supervisor's first start: a handover, but no restart.
                    found.generation = 1;
                }
                for (i, entry) in ours.entries.into_iter().enumerate() {
                    let fd = FIRST_FD + i as RawFd;
                    match entry {
                        Ok(Name::Fd(name)) => match take_inherited(fd) {
                            // The application's: whatever it is, it is its to check.
                            Ok(owned) => found.extras.push((name, owned)),
                            Err(reason) => log(Error::InheritedFd {
                                fd,
                                name: Name::Fd(name).encode(),
                                reason,
                            }),
                        },
                        Ok(name) => {
                            let announced = match &relayed {
                                Some(names) if matches!(name, Name::Listener { .. }) => {
                                    Announced::Systemd(names.get(i).cloned().flatten())
                                }
                                _ => Announced::Parent(name),
                            };
                            found.adopt(fd, announced)
                        }
                        Err(e) => {
                            // Not ours to keep: close it, if it was handed over at all.
                            drop(take_inherited(fd));
                            log(e);
                        }
                    }
                }
                if let Some(fd) = ours.ready_fd {
                    match take_inherited(fd).and_then(|owned| match fd::kind(owned.as_fd()) {
                        fd::Kind::Pipe => Ok(ReadyChannel::Pipe(owned)),
                        fd::Kind::Socket => Ok(ReadyChannel::Socket(owned)),
                        fd::Kind::Other => Err("not a pipe or a socket".into()),
                    }) {
                        Ok(ch) => found.ready = Some(ch),
                        Err(reason) => log(Error::InheritedFd {
                            fd,
                            name: ENV_READY_FD.into(),
                            reason,
                        }),
                    }
                }
                return found;
            }
            Ok(None) => {}
            Err(e) => log(e),
        }
        #[cfg(feature = "systemd")]
        found.adopt_activated(env);
        found
    }

    /// What systemd's socket activation handed to this process, whatever else the
    /// environment holds: the sockets a socket-activated supervisor relays to its
    /// generations. Problems are logged and the affected descriptors closed, as in
    /// [`Inherited::from_env`].
    #[cfg(feature = "systemd")]
    pub(crate) fn activated(env: &dyn Env) -> Self {
        fd::record_open_at_start(announced_now);
        let mut found = Inherited {
            generation: 1,
            ..Inherited::default()
        };
        found.adopt_activated(env);
        found
    }

    #[cfg(feature = "systemd")]
    fn adopt_activated(&mut self, env: &dyn Env) {
        match handover::read_systemd(env, std::process::id()) {
            Ok(Some(activated)) => {
                if activated.unaddressed && !activated.names.is_empty() {
                    tracing::info!(
                        fds = activated.names.len(),
                        "LISTEN_FDS without LISTEN_PID (a development loop's socket server): taking the listening sockets among them"
                    );
                }
                if let Some(e) = activated.names_ignored {
                    tracing::warn!(error = %e, "socket activation: ignoring the descriptor names");
                }
                for (i, name) in activated.names.into_iter().enumerate() {
                    self.adopt(FIRST_FD + i as RawFd, Announced::Systemd(name));
                }
            }
            Ok(None) => {}
            Err(e) => log(e),
        }
    }

    /// What a takeover received (see the `takeover` module): the running process
    /// (`parent`, generation `generation`) offered these sockets, and the connection is
    /// the readiness channel. Each is checked as an inherited one is.
    #[cfg_attr(not(feature = "control"), allow(dead_code))]
    pub(crate) fn from_takeover(
        parent: u32,
        generation: u64,
        entries: Vec<(Result<Name, String>, OwnedFd)>,
        channel: OwnedFd,
    ) -> Self {
        use std::os::fd::AsRawFd;
        let mut found = Inherited {
            generation: generation.saturating_add(1),
            parent: Some(parent),
            ready: Some(ReadyChannel::Socket(channel)),
            ..Inherited::default()
        };
        for (name, fd) in entries {
            let raw = fd.as_raw_fd();
            match name {
                // The application's (a UDP socket, the state, the TLS ticket key), as a
                // restart hands them over.
                Ok(Name::Fd(name)) => found.extras.push((name, fd)),
                Ok(name) => found.adopt_taken(raw, Ok(fd), Announced::Parent(name)),
                Err(reason) => log(Error::InheritedFd {
                    fd: raw,
                    name: "(takeover)".into(),
                    reason,
                }),
            }
        }
        found
    }

    fn adopt(&mut self, fd: RawFd, announced: Announced) {
        self.adopt_taken(fd, take_inherited(fd), announced)
    }

    fn adopt_taken(&mut self, fd: RawFd, taken: Result<OwnedFd, String>, announced: Announced) {
        let label = announced.label(|| format!("fd {fd}"));
        let checked = taken.and_then(|owned| {
            let actual = describe_listener(owned.as_fd())?;
            match &announced {
                Announced::Parent(n) if !n.fits(&actual) => {
                    Err(format!("announced as {label} but it is {actual}"))
                }
                _ => Ok((owned, actual)),
            }
        });
        match checked {
            Ok((fd, actual)) => {
                let e = Entry {
                    announced,
                    actual,
                    fd,
                };
                tracing::debug!(name = %label, actual = %e.actual, origin = e.origin(), "inherited listener");
                self.entries.push(e);
            }
            Err(reason) => log(Error::InheritedFd {
                fd,
                name: label,
                reason,
            }),
        }
    }

    /// Hands the inherited socket for `requested` to a server: the one announced under
    /// its name, else (socket activation without names) the one bound to the same
    /// address. Port 0 matches by name only.
    pub(crate) fn claim(&mut self, requested: &ListenAddr, fd_name: Option<&str>) -> Option<Entry> {
        let by_name = self.entries.iter().position(|e| {
            requested.same_kind(&e.actual)
                && match &e.announced {
                    Announced::Parent(Name::Listener { addr, .. }) => addr == requested,
                    Announced::Parent(Name::Control(_) | Name::Fd(_)) => false,
                    Announced::Systemd(n) => n.is_some() && n.as_deref() == fd_name,
                }
        });
        let by_addr = || {
            self.entries.iter().position(|e| {
                !matches!(e.announced, Announced::Parent(Name::Control(_)))
                    && match (&e.actual, requested) {
                        (ListenAddr::Tcp(a), ListenAddr::Tcp(r)) => r.port() != 0 && a == r,
                        (ListenAddr::Unix(a), ListenAddr::Unix(r)) => a == r,
                        _ => false,
                    }
            })
        };
        let i = by_name.or_else(by_addr)?;
        Some(self.entries.swap_remove(i))
    }

    /// The control socket at `path`, if it was handed over.
    pub(crate) fn claim_control(&mut self, path: &std::path::Path) -> Option<Entry> {
        let i = self.entries.iter().position(
            |e| matches!(&e.announced, Announced::Parent(Name::Control(p)) if p == path),
        )?;
        Some(self.entries.swap_remove(i))
    }

    /// The application's descriptor handed over under `name`, if it was.
    pub(crate) fn claim_fd(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.extras.iter().position(|(n, _)| n == name)?;
        Some(self.extras.swap_remove(i).1)
    }

    /// Listeners and the application's descriptors still unclaimed (the control socket
    /// aside).
    pub(crate) fn unclaimed_listeners(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| !matches!(e.announced, Announced::Parent(Name::Control(_))))
            .count()
            + self.extras.len()
    }

    /// Closes everything nobody claimed (the claims are settled: see the `commit` module).
    pub(crate) fn close_unclaimed(&mut self) {
        for e in self.entries.drain(..) {
            tracing::info!(name = %e.label(), addr = %e.actual, "closing an inherited listener no server claimed");
        }
        for (name, _) in self.extras.drain(..) {
            tracing::info!(%name, "closing an inherited descriptor the application did not claim");
        }
    }
}

/// The socket unit's names of the sockets in `ours`, when the handover relays systemd's
/// socket activation: set by the supervisor alone (the handover must come from it), for
/// the generations it starts before any was live.
fn relayed_activation(env: &dyn Env, ours: &handover::Ours) -> Option<Vec<Option<String>>> {
    let relayed = handover::read_activated(env, ours.entries.len())?;
    let from_supervisor = matches!(
        handover::read_supervisor(env),
        Ok(Some((pid, _))) if pid == ours.parent
    );
    if !from_supervisor {
        let e = Error::Environment {
            name: handover::ENV_ACTIVATED,
            value: env.get(handover::ENV_ACTIVATED).unwrap_or_default(),
            reason: format!(
                "the handover comes from pid {}, not from a supervisor",
                ours.parent
            ),
        };
        tracing::warn!(error = %e, "socket activation: ignoring the relay; taking the sockets as handed over");
        return None;
    }
    if let Some(e) = relayed.names_ignored {
        tracing::warn!(error = %e, "socket activation: ignoring the descriptor names");
    }
    Some(relayed.names)
}
/// What the environment announces to this process, past the pid guards: the
/// descriptor numbers, and whether no pid guarded them (a development loop's).
fn announced_now() -> (Vec<RawFd>, bool) {
    let a = handover::announced(
        &ProcessEnv,
        std::os::unix::process::parent_id(),
        std::process::id(),
    );
    (a.fds, a.unaddressed)
}

extern "C" fn record_open_at_start() {
    fd::record_open_at_start(announced_now);
}

// Before `main`, so that nothing the program opens can sit at an announced number by
// then, and nothing it starts inherits the descriptors. Where that cannot be, the record
// is made when the process owner starts, which is right as long as nothing opened a
// descriptor at an announced number before.
crate::sys::before_main!(RECORD_OPEN_AT_START, record_open_at_start);
