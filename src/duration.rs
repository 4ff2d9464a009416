//! Durations of any size: deadlines that saturate instead of overflowing. A setting too
//! large to add to the clock means "never", not a panic or an instant timeout.

use std::time::Duration;

use tokio::time::Instant;

/// `now + d`, or `None` (never) when that is past what the clock can represent.
pub(crate) fn deadline(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Sleeps until `at`; forever when `at` is `None`.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }

    #[tokio::test]
    async fn a_huge_deadline_is_never() {
        assert!(deadline(Duration::MAX).is_none());
        assert!(deadline(Duration::from_secs(1)).is_some());
        let never = tokio::time::timeout(Duration::from_millis(10), sleep_until(None));
        assert!(never.await.is_err());
    }
}
