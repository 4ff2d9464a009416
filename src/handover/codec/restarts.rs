//! The restarts' history and a restart's start time as they travel from one generation
//! to the next (`CEASELESS_RESTARTS`, `CEASELESS_RESTART_BEGAN`): encoded by the old
//! generation, decoded by the new one, so that the status counts restarts across them.

use super::*;
use crate::handover::history::RollbackCounts;
use crate::lifecycle::RollbackTrigger;

/// The most restarts a history carries (the oldest are dropped first).
pub(crate) const MAX_RESTARTS: usize = 16;
/// The longest reason a history carries, in bytes (longer ones are cut).
pub(crate) const MAX_REASON: usize = 512;

/// When a restart began: on the machine-wide monotonic clock, to measure durations
/// across the two processes, and on the wall clock, to report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Began {
    pub(crate) mono_ns: u64,
    pub(crate) unix_ms: u64,
}

impl Began {
    pub(crate) fn encode(&self) -> String {
        format!("{} {}", self.mono_ns, self.unix_ms)
    }

    pub(crate) fn decode(s: &str) -> Result<Began, Error> {
        let bad = |reason: &str| Error::Environment {
            name: ENV_RESTART_BEGAN,
            value: s.chars().take(64).collect(),
            reason: reason.into(),
        };
        let mut it = s.split(' ');
        let (Some(m), Some(u), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad("expected two numbers"));
        };
        match (m.parse(), u.parse()) {
            (Ok(mono_ns), Ok(unix_ms)) => Ok(Began { mono_ns, unix_ms }),
            _ => Err(bad("not a number")),
        }
    }
}

/// The restart history a generation carries to the next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct History {
    pub(crate) totals: RestartCounts,
    /// Oldest first.
    pub(crate) restarts: Vec<Restart>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The value of `CEASELESS_RESTARTS` for `h`: its last [`MAX_RESTARTS`] restarts.
pub(crate) fn encode_history(h: &History) -> String {
    let b = h.totals.rollbacks;
    let mut out = format!(
        "totals {} {} {} {} {} {}",
        h.totals.ok, h.totals.failed, b.crash, b.errors, b.application, b.operator
    );
    let skip = h.restarts.len().saturating_sub(MAX_RESTARTS);
    for r in &h.restarts[skip..] {
        let outcome = match (r.outcome, r.trigger) {
            (Outcome::RolledBack, Some(t)) => format!("rolled_back:{}", t.as_str()),
            (Outcome::RolledBack, None) => "rolled_back".to_string(),
            (Outcome::Ok, _) => "ok".to_string(),
            (Outcome::Failed, _) => "failed".to_string(),
        };
        // A rollback carries its own time where a restart carries SIGHUP→ready.
        let first_ms = match r.outcome {
            Outcome::RolledBack => r.rollback_ms,
            _ => r.sighup_to_ready_ms,
        };
        let reason = r.reason.as_deref().map_or_else(
            || "-".to_string(),
            |s| format!("={}", escape_bytes(cut(s, MAX_REASON).as_bytes())),
        );
        out.push_str(&format!(
            "\n{} {} {outcome} {} {} {} {reason}",
            unix_ms(r.at),
            r.generation,
            opt(r.pid),
            opt(first_ms),
            opt(r.ready_to_old_gone_ms),
        ));
    }
    out
}

fn decode_restart(line: &str) -> Result<Restart, String> {
    let f: Vec<&str> = line.split(' ').collect();
    let [at, generation, outcome, pid, ready, gone, reason] = f[..] else {
        return Err(format!("{} fields, not 7", f.len()));
    };
    fn num<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, String> {
        v.parse().map_err(|_| format!("{what}: not a number"))
    }
    fn maybe<T: std::str::FromStr>(what: &str, v: &str) -> Result<Option<T>, String> {
        if v == "-" {
            Ok(None)
        } else {
            num(what, v).map(Some)
        }
    }
    let at: u64 = num("time", at)?;
    let at = UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(at))
        .ok_or("time out of range")?;
    let (outcome, trigger) = match outcome {
        "ok" => (Outcome::Ok, None),
        "failed" => (Outcome::Failed, None),
        "rolled_back" => (Outcome::RolledBack, None),
        o => match o.strip_prefix("rolled_back:").map(RollbackTrigger::parse) {
            Some(Some(t)) => (Outcome::RolledBack, Some(t)),
            _ => return Err("the outcome is neither ok, failed nor rolled_back".into()),
        },
    };
    let first_ms = maybe("SIGHUP to ready", ready)?;
    let rolled_back = outcome == Outcome::RolledBack;
    let reason = match reason {
        "-" => None,
        r => match r.strip_prefix('=') {
            Some(r) => Some(String::from_utf8_lossy(&unescape_bytes(r)?).into_owned()),
            None => return Err("a reason must start with '='".into()),
        },
    };
    Ok(Restart {
        at,
        generation: num("generation", generation)?,
        outcome,
        pid: maybe("pid", pid)?,
        reason,
        sighup_to_ready_ms: first_ms.filter(|_| !rolled_back),
        ready_to_old_gone_ms: maybe("ready to old gone", gone)?,
        trigger,
        rollback_ms: first_ms.filter(|_| rolled_back),
    })
}

/// Reads `CEASELESS_RESTARTS`: what could be read, and why each line that could not be
/// was dropped. Totals that cannot be read are counted from the restarts listed.
pub(crate) fn decode_history(s: &str) -> (History, Vec<Error>) {
    let bad = |line: &str, reason: String| Error::Environment {
        name: ENV_RESTARTS,
        value: cut(line, 128).to_string(),
        reason,
    };
    let mut rejected = Vec::new();
    let mut lines = s.split('\n');
    let totals = lines.next().and_then(|first| {
        let t = first.strip_prefix("totals ").and_then(|t| {
            let n: Vec<u64> = t
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            // Two numbers from a version before rollbacks; six since.
            let (ok, failed, b) = match n[..] {
                [ok, failed] => (ok, failed, [0; 4]),
                [ok, failed, c, e, a, o] => (ok, failed, [c, e, a, o]),
                _ => return None,
            };
            let [crash, errors, application, operator] = b;
            Some(RestartCounts {
                ok,
                failed,
                rollbacks: RollbackCounts {
                    crash,
                    errors,
                    application,
                    operator,
                },
            })
        });
        if t.is_none() {
            rejected.push(bad(
                first,
                "expected `totals <ok> <failed> [<crash> <errors> <application> <operator>]`"
                    .into(),
            ));
        }
        t
    });
    let mut restarts = Vec::new();
    for line in lines {
        match decode_restart(line) {
            Ok(r) => restarts.push(r),
            Err(reason) => rejected.push(bad(line, reason)),
        }
    }
    if restarts.len() > MAX_RESTARTS {
        restarts.drain(..restarts.len() - MAX_RESTARTS);
    }
    let totals = totals.unwrap_or_else(|| {
        let mut totals = RestartCounts::default();
        for r in &restarts {
            totals.count(r);
        }
        totals
    });
    (History { totals, restarts }, rejected)
}
