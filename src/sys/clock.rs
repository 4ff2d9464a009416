//! Clocks.

use rustix::time::{clock_gettime, ClockId, Timespec};

fn ns(ts: Timespec) -> u64 {
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The system-wide monotonic clock, in ns: the same for every process of the machine
/// (unlike `Instant`, which cannot cross a process boundary).
pub(crate) fn mono_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic))
}

/// The system-wide monotonic clock, in µs (systemd's `MONOTONIC_USEC=`).
pub(crate) fn mono_us() -> u64 {
    mono_ns() / 1_000
}

/// The monotonic clock at its cheapest, in whole ms: on Linux the coarse clock (a few
/// nanoseconds to read through the vDSO, no counter read, a few milliseconds of
/// resolution), elsewhere the plain monotonic clock. It is read on the request path.
#[inline]
pub(crate) fn coarse_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ts = clock_gettime(ClockId::MonotonicCoarse);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let ts = clock_gettime(ClockId::Monotonic);
    // A monotonic clock counts from boot: its seconds are far from overflowing a u64
    // once multiplied by 1000, and its nanoseconds are below 10^9, so plain arithmetic.
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}
