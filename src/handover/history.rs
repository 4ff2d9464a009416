//! What a restart was, as the status reports it and the handover carries it from one
//! generation to the next: plain data, and the time format the JSON uses. A leaf
//! module: both `status` (which keeps the history) and `handover` (which encodes it)
//! use it, and it uses neither.

use std::time::SystemTime;

/// Restarts by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RestartCounts {
    /// Restarts that handed over to a new generation.
    pub ok: u64,
    /// Restarts that failed, leaving the old generation serving.
    pub failed: u64,
    /// Rollbacks after a probation, by what triggered them (carried across restarts,
    /// as the restarts are).
    #[cfg_attr(feature = "control", serde(default))]
    pub rollbacks: RollbackCounts,
}

/// Rollbacks by trigger (see
/// [`ProcessBuilder::probation`](crate::ProcessBuilder::probation)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RollbackCounts {
    /// The generation on probation exited without a shutdown.
    pub crash: u64,
    /// The error policy tripped.
    pub errors: u64,
    /// The application asked ([`Process::rollback`](crate::Process::rollback)).
    pub application: u64,
    /// An operator asked on the control socket.
    pub operator: u64,
}

impl RestartCounts {
    /// Counts `r`, by its outcome (a rollback by its trigger).
    #[cfg_attr(not(unix), allow(dead_code))] // no restart on Windows
    pub(crate) fn count(&mut self, r: &Restart) {
        match (r.outcome, r.trigger) {
            (Outcome::Ok, _) => self.ok += 1,
            (Outcome::Failed, _) => self.failed += 1,
            (Outcome::RolledBack, Some(t)) => self.rollbacks.add(t),
            (Outcome::RolledBack, None) => {}
        }
    }
}

impl RollbackCounts {
    /// Counts one rollback of `trigger`.
    #[cfg_attr(not(unix), allow(dead_code))] // no rollback on Windows
    fn add(&mut self, trigger: crate::lifecycle::RollbackTrigger) {
        use crate::lifecycle::RollbackTrigger as T;
        match trigger {
            T::Crash => self.crash += 1,
            T::Errors => self.errors += 1,
            T::Application => self.application += 1,
            T::Operator => self.operator += 1,
        }
    }

    /// Every rollback, whatever triggered it.
    pub fn total(&self) -> u64 {
        self.crash + self.errors + self.application + self.operator
    }
}

/// How a restart ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "control",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Outcome {
    /// The new generation serves.
    Ok,
    /// Nothing changed: the old generation still serves.
    Failed,
    /// A rollback: the generation parked during the probation took the service back
    /// from the one this restart started (`trigger` says why).
    RolledBack,
}

/// One restart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "control", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Restart {
    /// When it began (the SIGHUP, or the request).
    #[cfg_attr(feature = "control", serde(with = "crate::handover::history::rfc3339"))]
    pub at: SystemTime,
    /// The generation that serves after it: the new one's number, or on a failure the
    /// number of the one that stayed.
    pub generation: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The new generation's pid: the one that serves, or the failed one when it was
    /// started.
    pub pid: Option<u32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// From the start of the restart to the new generation's readiness, in ms.
    pub sighup_to_ready_ms: Option<u64>,
    /// From the new generation's readiness to the exit of the old one (its drain), in
    /// ms; `None` while the old one still drains.
    pub ready_to_old_gone_ms: Option<u64>,
    /// For a rollback: what triggered it.
    #[cfg_attr(feature = "control", serde(default))]
    pub trigger: Option<crate::lifecycle::RollbackTrigger>,
    /// For a rollback: from its trigger (the ask, or the crash seen) to the parked
    /// generation's being live again, in ms.
    #[cfg_attr(feature = "control", serde(default))]
    pub rollback_ms: Option<u64>,
}

/// RFC 3339 in UTC with milliseconds, as the JSON carries times.
pub(crate) mod rfc3339 {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[cfg(feature = "control")]
    pub(crate) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    #[cfg(feature = "control")]
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<SystemTime, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 UTC time: {s:?}")))
    }

    /// Days since 1970-01-01 of a civil date (proleptic Gregorian), and back: the
    /// classic era-based conversion.
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    pub(crate) fn format(t: SystemTime) -> String {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }

    /// Reads what [`format`] writes (fractions of any length, or none).
    #[cfg_attr(not(feature = "control"), allow(dead_code))]
    pub(crate) fn parse(s: &str) -> Option<SystemTime> {
        let s = s.strip_suffix('Z')?;
        let (date, time) = s.split_once('T')?;
        let mut dp = date.splitn(3, '-');
        let (y, m, d): (i64, i64, i64) = (
            dp.next()?.parse().ok()?,
            dp.next()?.parse().ok()?,
            dp.next()?.parse().ok()?,
        );
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut tp = hms.splitn(3, ':');
        let (h, mi, sec): (i64, i64, i64) = (
            tp.next()?.parse().ok()?,
            tp.next()?.parse().ok()?,
            tp.next()?.parse().ok()?,
        );
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let ms: u64 = if frac.is_empty() {
            0
        } else {
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?
        };
        let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + sec;
        let secs = u64::try_from(secs).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(
            secs.checked_mul(1000)?.checked_add(ms)?,
        ))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        #[test]
        fn known_dates() {
            assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
            let t = UNIX_EPOCH + Duration::from_millis(1_796_174_403_117);
            assert_eq!(format(t), "2026-12-02T01:20:03.117Z");
            assert_eq!(parse("2026-12-02T01:20:03.117Z"), Some(t));
            assert_eq!(
                parse("2000-02-29T00:00:00Z"),
                Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
            );
            assert_eq!(parse("2026-13-02T01:20:03Z"), None);
            assert_eq!(parse("yesterday"), None);
        }

        proptest! {
            #[test]
            fn times_round_trip(ms in 0u64..253_402_300_799_999) {
                let t = UNIX_EPOCH + Duration::from_millis(ms);
                prop_assert_eq!(parse(&format(t)), Some(t));
            }
        }
    }
}
