//! systemd's socket activation as the handover reads it (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`; without `LISTEN_PID`, a development loop's), and its relay by the
//! supervisor (`CEASELESS_ACTIVATED`). Pure functions over the environment.

use std::os::fd::RawFd;

use super::*;

/// systemd's socket activation variables (sd_listen_fds(3)).
pub(crate) const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const ENV_LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The number of the first descriptor, as a development loop's socket server
/// (`systemfd`) writes it next to `LISTEN_FDS`: anything but 3 is not the protocol.
pub(crate) const ENV_LISTEN_FDS_FIRST_FD: &str = "LISTEN_FDS_FIRST_FD";

/// The socket unit's names of the descriptors a socket-activated supervisor hands to a
/// generation it starts (see [`activated_value`]).
pub(crate) const ENV_ACTIVATED: &str = "CEASELESS_ACTIVATED";

/// What systemd's socket activation hands over.
#[cfg_attr(not(feature = "systemd"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct Activated {
    /// The names of fds 3, 4, … (`None` for an unnamed one).
    pub(crate) names: Vec<Option<String>>,
    /// `LISTEN_FDNAMES` did not match the count and was ignored (sockets are then
    /// matched by address): worth a log line, not a refusal.
    pub(crate) names_ignored: Option<Error>,
    /// No `LISTEN_PID` named this process: a development loop's socket server
    /// (`systemfd --no-pid`, whose command is `cargo watch`, then `cargo run`, then the
    /// program, so no pid could be right). Nothing proves the descriptors are meant for
    /// this process, so only listening sockets among them are taken, and anything else
    /// is left exactly as it is (see `sys::fd`).
    pub(crate) unaddressed: bool,
}

#[cfg_attr(not(feature = "systemd"), allow(dead_code))]
/// systemd's socket activation (sd_listen_fds(3)), or `None` when the set is meant for
/// another pid or absent. `LISTEN_FDS` without `LISTEN_PID` (or with an empty one) is a
/// development loop's, as `systemfd --no-pid` sets it and the `listenfd` crate accepts
/// it: an [`Activated::unaddressed`] set.
pub(crate) fn read_systemd(env: &dyn Env, pid: u32) -> Result<Option<Activated>, Error> {
    let Some(count) = env.get(ENV_LISTEN_FDS) else {
        return Ok(None);
    };
    let for_pid = env.get(ENV_LISTEN_PID).filter(|p| !p.trim().is_empty());
    if let Some(for_pid) = &for_pid {
        let for_pid: u32 = for_pid.trim().parse().map_err(|_| Error::Environment {
            name: ENV_LISTEN_PID,
            value: for_pid.clone(),
            reason: "not a pid".into(),
        })?;
        if for_pid != pid {
            return Ok(None);
        }
    }
    if let Some(first) = env.get(ENV_LISTEN_FDS_FIRST_FD) {
        if first.trim().parse::<RawFd>().ok() != Some(FIRST_FD) {
            return Err(Error::Environment {
                name: ENV_LISTEN_FDS_FIRST_FD,
                value: first,
                reason: format!("the descriptors must start at {FIRST_FD}"),
            });
        }
    }
    let n: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_FDS)
        .ok_or_else(|| Error::Environment {
            name: ENV_LISTEN_FDS,
            value: count.clone(),
            reason: "not a descriptor count".into(),
        })?;
    Ok(Some(Activated {
        unaddressed: for_pid.is_none(),
        ..fd_names(ENV_LISTEN_FDNAMES, env.get(ENV_LISTEN_FDNAMES), n)
    }))
}

/// The descriptors the environment announces to a process.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub(crate) fds: Vec<RawFd>,
    /// No pid guards them ([`Activated::unaddressed`]): each must prove itself a
    /// listening socket before the process touches it.
    pub(crate) unaddressed: bool,
}

/// The descriptors `env` announces to this process, past the pid guards (ours, else
/// systemd's or a development loop's): what the process may take as inherited if they
/// are open.
pub(crate) fn announced(env: &dyn Env, ppid: u32, pid: u32) -> Announcement {
    match read_ours(env, ppid) {
        Ok(Some(ours)) => Announcement {
            fds: ours.announced().collect(),
            unaddressed: false,
        },
        #[cfg(feature = "systemd")]
        _ => match read_systemd(env, pid) {
            Ok(Some(activated)) => Announcement {
                fds: (FIRST_FD..).take(activated.names.len()).collect(),
                unaddressed: activated.unaddressed,
            },
            _ => Announcement::default(),
        },
        #[cfg(not(feature = "systemd"))]
        _ => {
            let _ = pid;
            Announcement::default()
        }
    }
}

/// The names of `n` activated descriptors from `var` (`LISTEN_FDNAMES`'s format: one
/// name per descriptor, separated by colons; empty or `unknown` for an unnamed one).
fn fd_names(var: &'static str, value: Option<String>, n: usize) -> Activated {
    let mut names: Vec<Option<String>> = match &value {
        Some(v) => v
            .split(':')
            .map(|s| (!s.is_empty() && s != "unknown").then(|| s.to_string()))
            .collect(),
        None => Vec::new(),
    };
    let mut names_ignored = None;
    if !names.is_empty() && names.len() != n {
        // Names that do not match the count name nothing reliably: match by address.
        names_ignored = Some(Error::Environment {
            name: var,
            value: value.unwrap_or_default(),
            reason: format!(
                "{} names for {n} descriptors; matching by address",
                names.len()
            ),
        });
        names.clear();
    }
    names.resize(n, None);
    Activated {
        names,
        names_ignored,
        unaddressed: false,
    }
}

/// `CEASELESS_ACTIVATED`'s value: the socket unit's names of the descriptors a
/// socket-activated supervisor hands over (in their order), as `LISTEN_FDNAMES` writes
/// them (`unknown` for an unnamed one). Its presence says that the handover relays
/// systemd's sockets, so that the generation takes them as activated ones: by name,
/// and with their files belonging to the service manager.
pub(crate) fn activated_value(names: &[Option<String>]) -> String {
    let names: Vec<&str> = names
        .iter()
        .map(|n| n.as_deref().unwrap_or("unknown"))
        .collect();
    names.join(":")
}

/// Reads `CEASELESS_ACTIVATED` for a handover of `n` descriptors: `None` when the
/// handover relays no socket activation.
pub(crate) fn read_activated(env: &dyn Env, n: usize) -> Option<Activated> {
    let value = env.get(ENV_ACTIVATED)?;
    Some(fd_names(ENV_ACTIVATED, Some(value), n))
}
