//! The messages on the channels between processes: the readiness channel's exchange
//! ([`Message`]), a generation's reports to its supervisor ([`Report`]), and a
//! takeover's request and offer ([`Offer`]). Each encoded and decoded here, so that the
//! two sides cannot drift apart.

use super::*;

/// A generation's report to its supervisor: one datagram on the report channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// This generation is live (it serves and owns the sockets), with the sockets it
    /// would hand over, named in order; the descriptors travel with the datagram.
    Live {
        /// Who it is.
        id: ProcId,
        /// Its generation number.
        generation: u64,
        /// The names of the descriptors in the datagram, in order.
        names: Vec<Name>,
    },
    /// This generation committed a restart: the new one, with this pid, takes over.
    Committed { pid: u32, new_pid: u32 },
    /// A restart of this generation failed; it carries on.
    RestartFailed { pid: u32 },
    /// The live generation began a final shutdown (not a restart).
    Stopping { pid: u32 },
    /// This generation handed over and parks for a probation of `ms`: should the live
    /// one die meanwhile, it takes the service back.
    Parked { pid: u32, ms: u64 },
}

impl Report {
    pub(crate) fn encode(&self) -> String {
        match self {
            Report::Live {
                id,
                generation,
                names,
            } => {
                let mut s = format!("live {} {} {generation}", id.pid, id.start);
                for n in names {
                    s.push('\n');
                    s.push_str(&n.encode());
                }
                s
            }
            Report::Committed { pid, new_pid } => format!("committed {pid} {new_pid}"),
            Report::RestartFailed { pid } => format!("failed {pid}"),
            Report::Stopping { pid } => format!("stopping {pid}"),
            Report::Parked { pid, ms } => format!("parked {pid} {ms}"),
        }
    }

    /// Reads a report; the reason if it is none.
    pub(crate) fn decode(s: &str) -> Result<Report, String> {
        let mut lines = s.split('\n');
        let head = lines.next().unwrap_or_default();
        let words: Vec<&str> = head.split(' ').collect();
        let num = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("a bad report {head:?}"))
        };
        let pid = |i: usize| -> Result<u32, String> {
            u32::try_from(num(i)?).map_err(|_| format!("a bad pid in {head:?}"))
        };
        let report = match words.first().copied() {
            Some("live") if words.len() == 4 => Report::Live {
                id: ProcId {
                    pid: pid(1)?,
                    start: num(2)?,
                },
                generation: num(3)?,
                names: lines.by_ref().map(Name::decode).collect::<Result<_, _>>()?,
            },
            Some("committed") if words.len() == 3 => Report::Committed {
                pid: pid(1)?,
                new_pid: pid(2)?,
            },
            Some("failed") if words.len() == 2 => Report::RestartFailed { pid: pid(1)? },
            Some("stopping") if words.len() == 2 => Report::Stopping { pid: pid(1)? },
            Some("parked") if words.len() == 3 => Report::Parked {
                pid: pid(1)?,
                ms: num(2)?,
            },
            _ => return Err(format!("an unknown report {head:?}")),
        };
        if !matches!(report, Report::Live { .. }) && lines.next().is_some() {
            return Err(format!("trailing lines after {head:?}"));
        }
        Ok(report)
    }
}

/// A message on the readiness channel: the commit's exchange (see the `commit` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Child to parent: declared ready.
    Ready(u32),
    /// Parent to child: still accepting; hold every listener and say so.
    Go,
    /// Child to parent: every listener it keeps is claimed by a server that accepts.
    Holding,
    /// Parent to child: committed (it stopped accepting and drains); the child is live.
    Live,
    /// Parent to child: the restart is off; drain and exit.
    Abort,
    /// Parent to child, before `live`: the parent parks for this many milliseconds of
    /// probation (see the `probation` module); the child echoes it once it follows the
    /// probation. From then on the channel stays open.
    Probation(u64),
    /// Child to parked parent, on probation: take the service back, for this reason.
    Rollback(crate::lifecycle::RollbackTrigger),
    /// Child to parked parent: the probation is over (the child shuts down or restarts).
    Release,
    /// Parked parent to child: the probation ended; nothing to roll back to.
    Ended,
}

impl Message {
    pub(crate) fn encode(&self) -> String {
        match self {
            Message::Ready(pid) => format!("ready {pid}\n"),
            Message::Go => "go\n".into(),
            Message::Holding => "holding\n".into(),
            Message::Live => "live\n".into(),
            Message::Abort => "abort\n".into(),
            Message::Probation(ms) => format!("probation {ms}\n"),
            Message::Rollback(t) => format!("rollback {}\n", t.as_str()),
            Message::Release => "release\n".into(),
            Message::Ended => "ended\n".into(),
        }
    }

    pub(crate) fn decode(line: &str) -> Option<Message> {
        let line = line.trim_end_matches(['\n', '\r']);
        match line {
            "go" => Some(Message::Go),
            "holding" => Some(Message::Holding),
            "live" => Some(Message::Live),
            "abort" => Some(Message::Abort),
            "release" => Some(Message::Release),
            "ended" => Some(Message::Ended),
            _ => match line.split_once(' ') {
                Some(("ready", p)) => p.parse().ok().map(Message::Ready),
                Some(("probation", ms)) => ms.parse().ok().map(Message::Probation),
                Some(("rollback", t)) => {
                    crate::lifecycle::RollbackTrigger::parse(t).map(Message::Rollback)
                }
                _ => None,
            },
        }
    }
}

/// A takeover, on the control socket: the request an independently started process
/// sends (`takeover\n`); the answer is an [`Offer`] or `error <reason>\n`.
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) const TAKEOVER_REQUEST: &str = "takeover\n";

/// The longest offer line a newcomer reads.
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) const MAX_OFFER: usize = 256 * 1024;

/// The answer to `takeover`:
/// `handover <generation> <pid> <draining> <n> <name 1> … <name n>\n`, with the n named
/// descriptors attached to it (`SCM_RIGHTS`), in that order. `generation` and `pid` are
/// the offering process's; `draining` the generations that would still drain once it
/// commits, as in `CEASELESS_DRAINING` (`-` for none), for the bound on draining. Names are the handover's (never a
/// space in one: paths are escaped); each is read on its own, so one name of a kind
/// this version does not know rejects that descriptor alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer<N> {
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) draining: Vec<ProcId>,
    pub(crate) names: Vec<N>,
}

const OFFER: &str = "handover";

impl Offer<Name> {
    pub(crate) fn encode(&self) -> String {
        let draining = match draining_value(&self.draining) {
            d if d.is_empty() => "-".to_string(),
            d => d,
        };
        let mut s = format!(
            "{OFFER} {} {} {draining} {}",
            self.generation,
            self.pid,
            self.names.len()
        );
        for n in &self.names {
            s.push(' ');
            s.push_str(&n.encode());
        }
        s.push('\n');
        s
    }
}

#[cfg_attr(not(feature = "control"), allow(dead_code))]
impl Offer<Result<Name, String>> {
    /// Reads an offer line; an `error <reason>` line or anything else is the `Err`.
    pub(crate) fn decode(line: &str) -> Result<Self, OfferError> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(reason) = line.strip_prefix("error ") {
            return Err(OfferError::Refused(reason.to_string()));
        }
        let shown = || OfferError::Garbage(cut(line, 200).to_string());
        let mut words = line.split(' ');
        if words.next() != Some(OFFER) {
            return Err(shown());
        }
        let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
        let (generation, pid) = (number(words.next()), number(words.next()));
        let draining = match words.next() {
            Some("-") => Ok(Vec::new()),
            Some(d) => decode_draining(d),
            None => Err((None, String::new())),
        };
        let n = number(words.next());
        let (Some(generation), Some(pid), Ok(draining), Some(n)) = (generation, pid, draining, n)
        else {
            return Err(shown());
        };
        let pid = u32::try_from(pid).map_err(|_| shown())?;
        let names: Vec<Result<Name, String>> = words.map(Name::decode).collect();
        if names.len() as u64 != n || generation == 0 || pid == 0 {
            return Err(shown());
        }
        Ok(Offer {
            generation,
            pid,
            draining,
            names,
        })
    }
}

/// Why an offer line is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "control"), allow(dead_code))]
pub(crate) enum OfferError {
    /// `error <reason>`: the running process refused.
    Refused(String),
    /// Not a line of this protocol (shown, cut).
    Garbage(String),
}
