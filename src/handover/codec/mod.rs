//! The codec of the handover's environment and messages (the protocol is stated in
//! the folder's `mod.rs`): the names of the descriptors, the variables and who may
//! read them, the pids and start times of generations, when a restart began; systemd's
//! socket activation (`systemd`), the messages on the channels (`wire`) and the
//! restarts' history (`restarts`).

mod restarts;
mod systemd;
mod wire;

pub(crate) use restarts::*;
pub(crate) use systemd::*;
pub(crate) use wire::*;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use std::time::{SystemTime, UNIX_EPOCH};

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::handover::history::{Outcome, Restart, RestartCounts};

/// Names of the handed-over descriptors, one per line, for fds 3, 4, ...
pub(crate) const ENV_FDS: &str = "CEASELESS_FDS";
/// The pid of the generation that handed them over (checked against `getppid()`).
pub(crate) const ENV_PARENT_PID: &str = "CEASELESS_PARENT_PID";
/// The child's end of the readiness channel.
pub(crate) const ENV_READY_FD: &str = "CEASELESS_READY_FD";
/// The child's generation number: the parent's plus one (the first generation is 1).
pub(crate) const ENV_GENERATION: &str = "CEASELESS_GENERATION";
/// The restart history the parent carries to the child (see [`encode_history`]).
pub(crate) const ENV_RESTARTS: &str = "CEASELESS_RESTARTS";
/// When the restart that started the child began (see [`Began`]).
pub(crate) const ENV_RESTART_BEGAN: &str = "CEASELESS_RESTART_BEGAN";
/// The variables of a handover honoured only by the process they were meant for (see
/// [`meant_for`]). The two that name the process that set them
/// (`CEASELESS_PARENT_PID`, `CEASELESS_SUPERVISOR`) are what decides it, so they are
/// read by every process (a malformed one is reported); `CEASELESS_FORK`, a setting of
/// the process itself, is not a handover variable.
pub(crate) const HANDOVER_VARS: [&str; 7] = [
    ENV_FDS,
    ENV_READY_FD,
    ENV_GENERATION,
    ENV_RESTARTS,
    ENV_RESTART_BEGAN,
    ENV_DRAINING,
    ENV_ACTIVATED,
];

/// Whether the handover variables in `env` were meant for the process whose parent is
/// `ppid`: the process that set them names itself, in `CEASELESS_PARENT_PID` (a restart,
/// or the supervisor handing sockets over) or in `CEASELESS_SUPERVISOR` (the supervisor
/// starting a generation it has no socket for). Variables left in the environment of
/// anything else — a shell, a wrapper, a container image, a subprocess of a generation —
/// are ignored, every one of them, by this one check.
pub(crate) fn meant_for(env: &dyn Env, ppid: u32) -> bool {
    let names_parent = |name: &str| {
        env.get(name)
            .and_then(|v| v.trim().split(':').next()?.parse::<u32>().ok())
            == Some(ppid)
    };
    names_parent(ENV_PARENT_PID) || names_parent(ENV_SUPERVISOR)
}

/// The process environment, read-only, as the process may take it: the handover
/// variables only when they were meant for this process ([`handover::meant_for`]).
pub(crate) struct ProcessEnv;

/// The process environment as it is.
struct Raw;

impl Env for Raw {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        if HANDOVER_VARS.contains(&name) && !meant_for(&Raw, std::os::unix::process::parent_id()) {
            return None;
        }
        Raw.get(name)
    }
}

/// The first descriptor of a handover, as in systemd's protocol (the OS layer puts
/// the descriptors there).
pub(crate) use crate::sys::child::FIRST_FD;
/// The most descriptors one handover may announce.
pub(crate) const MAX_FDS: usize = 1024;

/// What one handed-over descriptor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// A listener for this address. `managed`: a Unix socket whose file belongs to the
    /// service manager (it came from socket activation, possibly generations ago).
    Listener { addr: ListenAddr, managed: bool },
    /// The control socket at this path.
    Control(PathBuf),
    /// A descriptor the application handed over under a name of its choosing (a UDP
    /// socket, any socket or file): see `Process::fd`.
    Fd(String),
}

const TCP: &str = "tcp:";
const UNIX: &str = "unix:";
const UNIX_MANAGED: &str = "unix-managed:";
const CONTROL: &str = "control:";
const FD: &str = "fd:";

impl Name {
    /// The name as written into `CEASELESS_FDS`.
    pub(crate) fn encode(&self) -> String {
        match self {
            Name::Listener {
                addr: ListenAddr::Tcp(a),
                ..
            } => format!("{TCP}{a}"),
            Name::Listener {
                addr: ListenAddr::Unix(p),
                managed,
            } => {
                let prefix = if *managed { UNIX_MANAGED } else { UNIX };
                format!("{prefix}{}", escape(p))
            }
            Name::Control(p) => format!("{CONTROL}{}", escape(p)),
            Name::Fd(n) => format!("{FD}{}", escape_bytes(n.as_bytes())),
        }
    }

    /// Reads one name; the reason if it is none of ours.
    pub(crate) fn decode(s: &str) -> Result<Name, String> {
        if let Some(a) = s.strip_prefix(TCP) {
            return a
                .parse::<SocketAddr>()
                .map(|a| Name::Listener {
                    addr: ListenAddr::Tcp(a),
                    managed: false,
                })
                .map_err(|_| format!("{a:?} is not a socket address"));
        }
        let path = |p: &str| {
            let p = unescape(p)?;
            if p.as_os_str().is_empty() {
                return Err("an empty path".to_string());
            }
            Ok(p)
        };
        if let Some(p) = s.strip_prefix(UNIX_MANAGED) {
            return Ok(Name::Listener {
                addr: ListenAddr::Unix(path(p)?),
                managed: true,
            });
        }
        if let Some(p) = s.strip_prefix(UNIX) {
            return Ok(Name::Listener {
                addr: ListenAddr::Unix(path(p)?),
                managed: false,
            });
        }
        if let Some(p) = s.strip_prefix(CONTROL) {
            return Ok(Name::Control(path(p)?));
        }
        if let Some(n) = s.strip_prefix(FD) {
            let n = String::from_utf8(unescape_bytes(n)?)
                .map_err(|_| "a descriptor name that is not UTF-8".to_string())?;
            if n.is_empty() {
                return Err("an empty descriptor name".into());
            }
            return Ok(Name::Fd(n));
        }
        Err("a name must look like tcp:ADDR, unix:PATH, control:PATH or fd:NAME".into())
    }

    /// Is the kernel's description of the socket (`actual`) of the kind this name says?
    pub(crate) fn fits(&self, actual: &ListenAddr) -> bool {
        match self {
            Name::Listener { addr, .. } => addr.same_kind(actual),
            Name::Control(_) => matches!(actual, ListenAddr::Unix(_)),
            // Not a listener: nothing to compare (see `inherit`).
            Name::Fd(_) => false,
        }
    }
}

fn escape(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_bytes())
}

fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (b'!'..=b'~').contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Result<PathBuf, String> {
    let out = unescape_bytes(s)?;
    if out.contains(&0) {
        return Err("a path with a NUL byte".into());
    }
    Ok(PathBuf::from(OsString::from_vec(out)))
}

fn unescape_bytes(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// An environment to read from: the process's, or a fixed map in tests.
pub(crate) trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// Our own handover, as the child reads it.
#[derive(Debug)]
pub(crate) struct Ours {
    /// The parent's pid.
    pub(crate) parent: u32,
    /// For fds 3, 4, …: the name, or why it was rejected.
    pub(crate) entries: Vec<Result<Name, Error>>,
    /// The readiness channel's descriptor.
    pub(crate) ready_fd: Option<RawFd>,
    /// This generation's number (2 when the parent did not say: it was the first).
    pub(crate) generation: u64,
}

impl Ours {
    /// Every descriptor this handover announces (listeners, then the readiness channel).
    pub(crate) fn announced(&self) -> impl Iterator<Item = RawFd> + '_ {
        (FIRST_FD..).take(self.entries.len()).chain(self.ready_fd)
    }
}

/// Reads our own handover: `None` when there is none, or it is meant for another
/// process. An error rejects the whole set only when the set cannot be read at all (the
/// parent's pid or the readiness descriptor is malformed, or too many are announced);
/// a bad name rejects its own entry.
pub(crate) fn read_ours(env: &dyn Env, ppid: u32) -> Result<Option<Ours>, Error> {
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
    let names: Vec<String> = match env.get(ENV_FDS) {
        Some(v) if !v.is_empty() => v.split('\n').map(String::from).collect(),
        _ => Vec::new(),
    };
    if names.len() > MAX_FDS {
        return Err(Error::Environment {
            name: ENV_FDS,
            value: format!("{} names", names.len()),
            reason: "too many descriptors".into(),
        });
    }
    let ready_fd = match env.get(ENV_READY_FD) {
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
    let entries = names
        .into_iter()
        .map(|n| {
            Name::decode(&n).map_err(|reason| Error::Environment {
                name: ENV_FDS,
                value: n,
                reason,
            })
        })
        .collect();
    // A number that cannot be read is not worth dropping the handover for.
    let generation = env
        .get(ENV_GENERATION)
        .and_then(|g| g.trim().parse::<u64>().ok())
        .filter(|g| *g >= 2)
        .unwrap_or(2);
    Ok(Some(Ours {
        parent,
        entries,
        ready_fd,
        generation,
    }))
}

/// The variables a child gets for a handover of `names` (at fds 3, 4, …) and the
/// readiness channel right after them. The second value is that channel's number.
/// `generation` is the parent's number; the child's is the next.
pub(crate) fn child_env(
    names: &[Name],
    parent: u32,
    generation: u64,
) -> (Vec<(&'static str, String)>, RawFd) {
    let ready_fd = FIRST_FD + names.len() as RawFd;
    let listed: Vec<String> = names.iter().map(Name::encode).collect();
    (
        vec![
            (ENV_FDS, listed.join("\n")),
            (ENV_PARENT_PID, parent.to_string()),
            (ENV_READY_FD, ready_fd.to_string()),
            (ENV_GENERATION, generation.saturating_add(1).to_string()),
        ],
        ready_fd,
    )
}

/// The variables a child must not see: systemd's (or a development loop's), which
/// announce descriptors this process took, and the supervisor's relay of them, meant for
/// the generation it starts alone.
pub(crate) const CHILD_ENV_REMOVED: [&str; 5] = [
    ENV_LISTEN_FDS,
    ENV_LISTEN_PID,
    ENV_LISTEN_FDNAMES,
    ENV_LISTEN_FDS_FIRST_FD,
    ENV_ACTIVATED,
];

/// Names the supervisor (see the `supervise` module) and the descriptor of this
/// generation's end of its report channel: `<supervisor pid>:<fd>`.
pub(crate) const ENV_SUPERVISOR: &str = "CEASELESS_SUPERVISOR";
/// The older generations still draining when this one was started, oldest first:
/// `<pid>@<start time>` entries separated by commas (the start time is field 22 of
/// `/proc/<pid>/stat`, so that a pid reused by another process is never signalled).
pub(crate) const ENV_DRAINING: &str = "CEASELESS_DRAINING";

/// One process, told apart from a later process that reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProcId {
    pub(crate) pid: u32,
    /// Its start time, in clock ticks since boot.
    pub(crate) start: u64,
}

/// `CEASELESS_SUPERVISOR`'s value.
pub(crate) fn supervisor_value(pid: u32, fd: RawFd) -> String {
    format!("{pid}:{fd}")
}

/// Reads `CEASELESS_SUPERVISOR`: the supervisor's pid and our end of its channel.
pub(crate) fn read_supervisor(env: &dyn Env) -> Result<Option<(u32, RawFd)>, Error> {
    let Some(v) = env.get(ENV_SUPERVISOR) else {
        return Ok(None);
    };
    let bad = |reason: &str| Error::Environment {
        name: ENV_SUPERVISOR,
        value: v.clone(),
        reason: reason.into(),
    };
    let (pid, fd) = v
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("not <pid>:<fd>"))?;
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("not a pid"))?;
    let fd: RawFd = fd
        .parse()
        .ok()
        .filter(|fd| *fd >= FIRST_FD)
        .ok_or_else(|| bad("not a descriptor number"))?;
    Ok(Some((pid, fd)))
}

/// `CEASELESS_DRAINING`'s value for these processes, oldest first.
pub(crate) fn draining_value(gens: &[ProcId]) -> String {
    let parts: Vec<String> = gens
        .iter()
        .map(|g| format!("{}@{}", g.pid, g.start))
        .collect();
    parts.join(",")
}

/// Reads `CEASELESS_DRAINING` (absent or empty: none).
pub(crate) fn read_draining(env: &dyn Env) -> Result<Vec<ProcId>, Error> {
    let Some(v) = env.get(ENV_DRAINING) else {
        return Ok(Vec::new());
    };
    decode_draining(&v).map_err(|(value, reason)| Error::Environment {
        name: ENV_DRAINING,
        value: value.unwrap_or(v.clone()),
        reason,
    })
}

/// Reads a [`draining_value`]; on error, what to show of it (if not all) and why.
fn decode_draining(v: &str) -> Result<Vec<ProcId>, (Option<String>, String)> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = v.trim().split(',').collect();
    if parts.len() > MAX_FDS {
        return Err((
            Some(format!("{} entries", parts.len())),
            "too many generations".into(),
        ));
    }
    parts
        .into_iter()
        .map(|p| {
            let parsed = p.split_once('@').and_then(|(pid, start)| {
                Some(ProcId {
                    pid: pid.parse().ok().filter(|p| *p > 0)?,
                    start: start.parse().ok()?,
                })
            });
            parsed.ok_or_else(|| (None, format!("{p:?} is not <pid>@<start time>")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    struct Fixed(HashMap<&'static str, String>);
    impl Env for Fixed {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn env(pairs: &[(&'static str, &str)]) -> Fixed {
        Fixed(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn addr() -> impl Strategy<Value = ListenAddr> {
        let v4 = (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)));
        let v6 = (any::<u128>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
        });
        // Any bytes but NUL: relative and absolute, spaces, newlines, '%', not UTF-8.
        let path = proptest::collection::vec(1u8..=255, 1..64)
            .prop_map(|b| ListenAddr::Unix(PathBuf::from(OsString::from_vec(b))));
        prop_oneof![
            v4.prop_map(ListenAddr::Tcp),
            v6.prop_map(ListenAddr::Tcp),
            path
        ]
    }

    fn name() -> impl Strategy<Value = Name> {
        prop_oneof![
            (addr(), any::<bool>()).prop_map(|(addr, managed)| Name::Listener {
                managed: managed && matches!(addr, ListenAddr::Unix(_)),
                addr,
            }),
            proptest::collection::vec(1u8..=255, 1..64)
                .prop_map(|b| Name::Control(PathBuf::from(OsString::from_vec(b)))),
            ".+".prop_map(Name::Fd),
        ]
    }

    #[test]
    fn offers_refusals_and_garbage() {
        assert_eq!(
            Offer::decode("error a restart is already in progress\n"),
            Err(OfferError::Refused(
                "a restart is already in progress".into()
            ))
        );
        for bad in [
            "",
            "HTTP/1.1 400 Bad Request\r\n",
            "handover 1 2 - 3 tcp:1.2.3.4:5\n",
            "handover 0 2 - 0\n",
            "handover 1 x - 0\n",
            "handover 1 2 0\n",
            "handover 1 2 7@x 0\n",
        ] {
            assert!(
                matches!(Offer::decode(bad), Err(OfferError::Garbage(_))),
                "{bad:?}"
            );
        }
        let o = Offer::decode("handover 3 41 7@99,8@100 2 tcp:127.0.0.1:80 quic:1\n").unwrap();
        assert_eq!((o.generation, o.pid), (3, 41));
        assert_eq!(
            o.draining,
            [ProcId { pid: 7, start: 99 }, ProcId { pid: 8, start: 100 }]
        );
        assert!(o.names[0].is_ok() && o.names[1].is_err());
        assert_eq!(Message::decode(TAKEOVER_REQUEST), None);
    }

    proptest! {
        #[test]
        fn an_offer_round_trips(
            names in proptest::collection::vec(name(), 0..12),
            pid in 1u32..,
            generation in 1u64..,
            draining in proptest::collection::vec((1u32.., any::<u64>()), 0..5),
        ) {
            let draining: Vec<ProcId> =
                draining.into_iter().map(|(pid, start)| ProcId { pid, start }).collect();
            let o = Offer { generation, pid, draining, names };
            let line = o.encode();
            prop_assert_eq!(line.matches('\n').count(), 1, "{:?}", line);
            let got = Offer::decode(&line).unwrap();
            prop_assert_eq!((got.generation, got.pid), (generation, pid));
            prop_assert_eq!(&got.draining, &o.draining);
            let names: Vec<Name> = got.names.into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(names, o.names);
        }

        /// Garbage is never an offer with more names than it announces, and never panics.
        #[test]
        fn any_offer_text_is_survived(text in "(handover |error )?[0-9a-z :%.-]{0,80}\n?") {
            if let Ok(o) = Offer::decode(&text) {
                prop_assert!(o.pid > 0 && o.generation > 0);
            }
        }

        #[test]
        fn names_round_trip(n in name()) {
            let s = n.encode();
            prop_assert!(!s.contains('\n') && !s.contains('\0'), "{s:?}");
            prop_assert_eq!(Name::decode(&s), Ok(n));
        }

        #[test]
        fn a_handover_round_trips(
            names in proptest::collection::vec(name(), 0..12),
            parent in 1u32..,
            generation in 1u64..u64::MAX,
        ) {
            let (vars, ready) = child_env(&names, parent, generation);
            let e = Fixed(vars.into_iter().collect());
            let ours = read_ours(&e, parent).unwrap().expect("meant for us");
            prop_assert_eq!(ours.parent, parent);
            prop_assert_eq!(ours.ready_fd, Some(ready));
            prop_assert_eq!(ours.generation, generation + 1);
            let got: Vec<Name> = ours.entries.into_iter().map(|e| e.unwrap()).collect();
            prop_assert_eq!(got, names);
        }

        #[test]
        fn supervisor_env_round_trips(pid in 1u32.., fd in FIRST_FD..) {
            let e = Fixed([(ENV_SUPERVISOR, supervisor_value(pid, fd))].into_iter().collect());
            prop_assert_eq!(read_supervisor(&e).unwrap(), Some((pid, fd)));
        }

        #[test]
        fn draining_env_round_trips(
            gens in proptest::collection::vec((1u32.., any::<u64>()), 0..20),
        ) {
            let gens: Vec<ProcId> = gens.into_iter().map(|(pid, start)| ProcId { pid, start }).collect();
            let e = Fixed([(ENV_DRAINING, draining_value(&gens))].into_iter().collect());
            prop_assert_eq!(read_draining(&e).unwrap(), gens);
        }

        #[test]
        fn reports_round_trip(
            pid in 1u32..,
            start in any::<u64>(),
            generation in any::<u64>(),
            other in 1u32..,
            names in proptest::collection::vec(name(), 0..12),
            which in 0u8..5,
        ) {
            let r = match which {
                0 => Report::Live { id: ProcId { pid, start }, generation, names },
                1 => Report::Committed { pid, new_pid: other },
                2 => Report::RestartFailed { pid },
                3 => Report::Stopping { pid },
                _ => Report::Parked { pid, ms: start },
            };
            prop_assert_eq!(Report::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = Name::decode(&s);
            let _ = Message::decode(&s);
            let e = env(&[(ENV_PARENT_PID, "7"), (ENV_FDS, &s), (ENV_READY_FD, &s)]);
            let _ = read_ours(&e, 7);
            let e = env(&[(ENV_LISTEN_PID, "7"), (ENV_LISTEN_FDS, &s), (ENV_LISTEN_FDNAMES, &s)]);
            let _ = read_systemd(&e, 7);
            let e = env(&[(ENV_LISTEN_FDS, &s), (ENV_LISTEN_FDS_FIRST_FD, &s), (ENV_LISTEN_PID, &s)]);
            let _ = read_systemd(&e, 7);
            let _ = announced(&e, 1, 7);
            let _ = read_activated(&env(&[(ENV_ACTIVATED, &s)]), 3);
            let _ = Report::decode(&s);
            let e = env(&[(ENV_SUPERVISOR, &s), (ENV_DRAINING, &s)]);
            let _ = read_supervisor(&e);
            let _ = read_draining(&e);
        }
    }

    #[test]
    fn relative_unix_paths_are_names() {
        let n = Name::Listener {
            addr: ListenAddr::Unix("app.sock".into()),
            managed: false,
        };
        assert_eq!(n.encode(), "unix:app.sock");
        assert_eq!(Name::decode("unix:app.sock"), Ok(n));
        assert_eq!(
            Name::decode("unix:/run/a%20b.sock"),
            Ok(Name::Listener {
                addr: ListenAddr::Unix("/run/a b.sock".into()),
                managed: false
            })
        );
    }

    #[test]
    fn ours_needs_our_parent() {
        let e = env(&[(ENV_PARENT_PID, "999"), (ENV_FDS, "tcp:127.0.0.1:1")]);
        assert!(read_ours(&e, 4242).unwrap().is_none());
        let e = env(&[
            (ENV_PARENT_PID, "4242"),
            (ENV_FDS, "tcp:127.0.0.1:1\nunix:/x\ncontrol:/run/x.sock"),
        ]);
        let ours = read_ours(&e, 4242).unwrap().unwrap();
        assert_eq!(ours.entries.len(), 3);
        assert!(ours.entries.iter().all(|e| e.is_ok()));
        assert_eq!(ours.ready_fd, None);
        assert_eq!(ours.parent, 4242);
    }

    #[test]
    fn one_bad_name_rejects_only_itself() {
        let e = env(&[
            (ENV_PARENT_PID, "7"),
            (
                ENV_FDS,
                "tcp:nowhere\nunix:ok.sock\nftp:1.2.3.4:5\ntcp:[::1]:80",
            ),
            (ENV_READY_FD, "7"),
        ]);
        let ours = read_ours(&e, 7).unwrap().unwrap();
        let ok: Vec<bool> = ours.entries.iter().map(|e| e.is_ok()).collect();
        assert_eq!(ok, [false, true, false, true]);
        assert_eq!(ours.announced().collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
    }

    #[test]
    fn ours_rejects_an_unreadable_set() {
        for pairs in [
            vec![(ENV_PARENT_PID, "seven")],
            vec![
                (ENV_PARENT_PID, "7"),
                (ENV_FDS, "tcp:127.0.0.1:1"),
                (ENV_READY_FD, "3"),
            ],
            vec![(ENV_PARENT_PID, "7"), (ENV_READY_FD, "x")],
        ] {
            assert!(read_ours(&env(&pairs), 7).is_err(), "{pairs:?}");
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
        let got = read_systemd(&e, 5).unwrap().unwrap();
        assert_eq!(got.names, vec![Some("web".to_string()), None]);
        assert!(got.names_ignored.is_none());
        let e = env(&[
            (ENV_LISTEN_FDS, "2"),
            (ENV_LISTEN_PID, "5"),
            (ENV_LISTEN_FDNAMES, "a:b:c"),
        ]);
        let got = read_systemd(&e, 5).unwrap().unwrap();
        assert_eq!(got.names, vec![None, None]);
        assert!(got.names_ignored.is_some());
        assert!(!got.unaddressed);
        let e = env(&[(ENV_LISTEN_FDS, "many"), (ENV_LISTEN_PID, "5")]);
        assert!(read_systemd(&e, 5).is_err());
    }

    #[test]
    fn a_development_loop_names_no_pid() {
        // Exactly as `systemfd --no-pid -s http::3000` sets them.
        let e = env(&[(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_FDS_FIRST_FD, "3")]);
        let got = read_systemd(&e, 5).unwrap().unwrap();
        assert_eq!(got.names, vec![None]);
        assert!(got.unaddressed);
        assert_eq!(
            announced(&e, 1, 5),
            if cfg!(feature = "systemd") {
                Announcement {
                    fds: vec![3],
                    unaddressed: true,
                }
            } else {
                Announcement::default()
            }
        );
        // Without the first descriptor's number, or with an empty pid (as listenfd
        // reads it), it is the same set; names are read as systemd's.
        for pairs in [
            vec![(ENV_LISTEN_FDS, "2")],
            vec![(ENV_LISTEN_FDS, "2"), (ENV_LISTEN_PID, " ")],
            vec![(ENV_LISTEN_FDS, "2"), (ENV_LISTEN_FDNAMES, "web:unknown")],
        ] {
            let got = read_systemd(&env(&pairs), 5).unwrap().unwrap();
            assert_eq!(got.names.len(), 2, "{pairs:?}");
            assert!(got.unaddressed, "{pairs:?}");
        }
        // A pid that is not ours still means "not for us"; ours is a guarded set.
        let e = env(&[(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_PID, "6")]);
        assert!(read_systemd(&e, 5).unwrap().is_none());
        assert_eq!(announced(&e, 1, 5), Announcement::default());
        let e = env(&[(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_PID, "5")]);
        assert!(!read_systemd(&e, 5).unwrap().unwrap().unaddressed);
        // Descriptors said to start anywhere but 3, or a count that is none, are refused
        // as a whole: nothing is taken.
        for pairs in [
            vec![(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_FDS_FIRST_FD, "4")],
            vec![(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_FDS_FIRST_FD, "three")],
            vec![(ENV_LISTEN_FDS, "-1")],
            vec![(ENV_LISTEN_FDS, "1"), (ENV_LISTEN_PID, "x")],
        ] {
            assert!(read_systemd(&env(&pairs), 5).is_err(), "{pairs:?}");
            assert_eq!(announced(&env(&pairs), 1, 5), Announcement::default());
        }
        // Our own handover comes first: a restarted generation never reads LISTEN_FDS.
        let e = env(&[
            (ENV_PARENT_PID, "1"),
            (ENV_FDS, "tcp:127.0.0.1:1"),
            (ENV_LISTEN_FDS, "3"),
        ]);
        assert!(!announced(&e, 1, 5).unaddressed);
        assert_eq!(announced(&e, 1, 5).fds, [3]);
    }

    #[test]
    fn no_child_sees_the_activation_variables() {
        for var in [
            ENV_LISTEN_FDS,
            ENV_LISTEN_PID,
            ENV_LISTEN_FDNAMES,
            ENV_LISTEN_FDS_FIRST_FD,
            ENV_ACTIVATED,
        ] {
            assert!(CHILD_ENV_REMOVED.contains(&var), "{var}");
        }
    }

    #[test]
    fn handover_variables_are_meant_for_the_child_of_whoever_set_them() {
        let e = env(&[(ENV_PARENT_PID, "41"), (ENV_DRAINING, "7@9")]);
        assert!(meant_for(&e, 41));
        assert!(!meant_for(&e, 42), "a grandchild, or a re-parented process");
        let e = env(&[(ENV_SUPERVISOR, "5:7")]);
        assert!(meant_for(&e, 5));
        assert!(!meant_for(&e, 6));
        assert!(
            !meant_for(&env(&[(ENV_DRAINING, "7@9")]), 1),
            "no one named"
        );
        assert!(!meant_for(&env(&[(ENV_PARENT_PID, "x")]), 0));
    }

    #[test]
    fn a_relayed_activation_keeps_its_names() {
        assert!(read_activated(&env(&[]), 2).is_none());
        for names in [
            vec![Some("web".to_string()), None],
            vec![None],
            vec![Some("a".into()), Some("b".into()), Some("c".into())],
        ] {
            let v = activated_value(&names);
            let got = read_activated(&env(&[(ENV_ACTIVATED, &v)]), names.len()).unwrap();
            assert_eq!(got.names, names, "{v:?}");
            assert!(got.names_ignored.is_none());
        }
        // Names that do not match the count: ignored (matched by address), and said.
        let got = read_activated(&env(&[(ENV_ACTIVATED, "web:api")]), 3).unwrap();
        assert_eq!(got.names, vec![None, None, None]);
        assert!(got.names_ignored.is_some());
    }

    #[test]
    fn messages() {
        for m in [
            Message::Ready(42),
            Message::Go,
            Message::Holding,
            Message::Live,
            Message::Abort,
            Message::Probation(30_000),
            Message::Rollback(crate::lifecycle::RollbackTrigger::Operator),
            Message::Rollback(crate::lifecycle::RollbackTrigger::Errors),
            Message::Rollback(crate::lifecycle::RollbackTrigger::Application),
            Message::Release,
            Message::Ended,
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(Message::decode("ready x\n"), None);
        assert_eq!(Message::decode("probation -1\n"), None);
        assert_eq!(Message::decode("rollback sideways\n"), None);
        assert_eq!(Message::decode("hello\n"), None);
    }

    fn restart() -> impl Strategy<Value = Restart> {
        (
            0u64..253_402_300_799_999,
            any::<u64>(),
            0u8..6,
            proptest::option::of(any::<u32>()),
            proptest::option::of(proptest::collection::vec(any::<char>(), 0..40)),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(at, generation, kind, pid, reason, ready, gone)| {
                use crate::lifecycle::RollbackTrigger as T;
                // ok, failed, or a rollback by each trigger.
                let (outcome, trigger) = match kind {
                    0 => (Outcome::Ok, None),
                    1 => (Outcome::Failed, None),
                    k => (
                        Outcome::RolledBack,
                        Some(
                            [T::Crash, T::Errors, T::Application, T::Operator][usize::from(k - 2)],
                        ),
                    ),
                };
                let rolled_back = trigger.is_some();
                Restart {
                    at: UNIX_EPOCH + std::time::Duration::from_millis(at),
                    generation,
                    outcome,
                    pid,
                    reason: reason.map(|c| c.into_iter().collect()),
                    sighup_to_ready_ms: ready.filter(|_| !rolled_back),
                    ready_to_old_gone_ms: gone,
                    trigger,
                    rollback_ms: ready.filter(|_| rolled_back),
                }
            })
    }

    proptest! {
        /// Whatever the history holds (any reason text: spaces, newlines, '%', '-',
        /// non-ASCII), the child reads back its last MAX_RESTARTS entries and the totals.
        #[test]
        fn a_history_round_trips(
            restarts in proptest::collection::vec(restart(), 0..24),
            ok in any::<u64>(),
            failed in any::<u64>(),
            rollbacks in any::<[u64; 4]>(),
        ) {
            let mut totals = RestartCounts::default();
            (totals.ok, totals.failed) = (ok, failed);
            let r = &mut totals.rollbacks;
            [r.crash, r.errors, r.application, r.operator] = rollbacks;
            let h = History { totals, restarts };
            let encoded = encode_history(&h);
            prop_assert!(!encoded.contains('\0'));
            let (got, rejected) = decode_history(&encoded);
            prop_assert!(rejected.is_empty(), "{rejected:?}");
            prop_assert_eq!(got.totals, h.totals);
            let skip = h.restarts.len().saturating_sub(MAX_RESTARTS);
            prop_assert_eq!(&got.restarts[..], &h.restarts[skip..]);
        }

        /// Garbage never panics, and never yields more than MAX_RESTARTS entries.
        #[test]
        fn any_history_text_is_survived(text in "(totals [0-9 ]{0,8}\n)?[0-9a-z =%\n-]{0,200}") {
            let (got, _) = decode_history(&text);
            prop_assert!(got.restarts.len() <= MAX_RESTARTS);
        }

        #[test]
        fn began_round_trips(mono_ns in any::<u64>(), unix_ms in any::<u64>()) {
            let b = Began { mono_ns, unix_ms };
            prop_assert_eq!(Began::decode(&b.encode()).unwrap(), b);
        }
    }

    #[test]
    fn a_bad_history_line_drops_that_line_alone() {
        let text = "totals 3 1\n\
            1000 2 ok 41 12 - -\n\
            1000 2 ok 41 twelve - -\n\
            1000 2 maybe 41 12 - -\n\
            1000 2 failed - - - reason-without-equals\n\
            2000 2 failed 42 - - =gone%20missing";
        let (got, rejected) = decode_history(text);
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(rejected.iter().all(|e| matches!(
            e,
            Error::Environment {
                name: ENV_RESTARTS,
                ..
            }
        )));
        assert_eq!((got.totals.ok, got.totals.failed), (3, 1));
        assert_eq!(
            got.totals.rollbacks.total(),
            0,
            "a version before rollbacks"
        );
        assert_eq!(got.restarts.len(), 2);
        assert_eq!(got.restarts[0].sighup_to_ready_ms, Some(12));
        assert_eq!(got.restarts[1].reason.as_deref(), Some("gone missing"));
        // Unreadable totals are counted from the lines read.
        let (got, rejected) = decode_history("totals many\n1000 2 ok 41 12 - -");
        assert_eq!(rejected.len(), 1);
        assert_eq!((got.totals.ok, got.totals.failed), (1, 0));
        assert!(Began::decode("12").is_err());
        assert!(Began::decode("a b").is_err());
        // A reason too long is cut, on a character boundary.
        let long = Restart {
            reason: Some("é".repeat(MAX_REASON)),
            ..decode_history("totals 0 0\n1 1 failed - - - -").0.restarts[0].clone()
        };
        let h = History {
            totals: RestartCounts::default(),
            restarts: vec![long],
        };
        let (got, _) = decode_history(&encode_history(&h));
        let r = got.restarts[0].reason.as_deref().unwrap();
        assert!(
            r.len() <= MAX_REASON && r.chars().all(|c| c == 'é'),
            "{r:?}"
        );
    }

    #[test]
    fn bad_supervisor_and_draining_values_are_errors() {
        for v in ["", "12", "x:3", "12:x", "0:3", "12:1", "12:-4"] {
            assert!(
                read_supervisor(&env(&[(ENV_SUPERVISOR, v)])).is_err(),
                "{v:?}"
            );
        }
        for v in ["12", "12@", "@5", "0@5", "1@2,x", "1@2,,3@4"] {
            assert!(read_draining(&env(&[(ENV_DRAINING, v)])).is_err(), "{v:?}");
        }
        assert_eq!(read_draining(&env(&[(ENV_DRAINING, "")])).unwrap(), vec![]);
        assert_eq!(read_supervisor(&env(&[])).unwrap(), None);
        for r in [
            "live 1 2",
            "committed 1",
            "failed",
            "stopping 1\nx",
            "live 1 2 3\nftp:x",
        ] {
            assert!(Report::decode(r).is_err(), "{r:?}");
        }
    }
}
