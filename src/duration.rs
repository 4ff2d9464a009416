//! Durations of any size: deadlines that saturate instead of overflowing. A setting too
//! large to add to the clock means "never", not a panic or an instant timeout. And the
//! coarse clock the connections' deadlines are kept on.

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

/// Milliseconds on a monotonic clock, never 0 (0 stands for "no deadline"). On Linux
/// the coarse monotonic clock: a few nanoseconds to read (no counter read, no
/// conversion), a few milliseconds of resolution, which is all a timeout of a
/// connection needs; it is read on the request path.
#[inline]
pub(crate) fn now_ms() -> u64 {
    crate::sys::clock::coarse_ms() + 1
}

/// The timer instant for `ms` of [`now_ms`]: now when it has passed, far in the future
/// when it cannot be represented (a deadline that saturated is never reached).
pub(crate) fn instant_at(ms: u64) -> Instant {
    let left = Duration::from_millis(ms.saturating_sub(now_ms()));
    let now = Instant::now();
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }

    #[test]
    fn the_coarse_clock_moves_forward_with_the_real_one() {
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(50));
        let b = now_ms();
        assert!(a > 0 && b >= a + 20, "{a} then {b}");
    }

    #[tokio::test]
    async fn a_deadline_far_off_saturates() {
        let at = instant_at(u64::MAX);
        assert!(at > Instant::now() + Duration::from_secs(86_400));
        assert!(instant_at(1) <= Instant::now());
    }

    #[tokio::test]
    async fn a_huge_deadline_is_never() {
        assert!(deadline(Duration::MAX).is_none());
        assert!(deadline(Duration::from_secs(1)).is_some());
        let never = tokio::time::timeout(Duration::from_millis(10), sleep_until(None));
        assert!(never.await.is_err());
    }
}
