//! Clocks.
//!
//! Through nix (libc's `clock_gettime`, which reads the vDSO as the C library does)
//! rather than rustix's own vDSO reader: that one faults under valgrind, which maps the
//! vDSO differently, and valgrind is how the benchmark counts instructions (and how
//! users look for leaks). The cost is the same: one call into the vDSO.
//!
//! On Windows, where no process ever hands anything to another (restarts are not
//! supported there), the clocks are this process's own: time since it first read one.

#[cfg(unix)]
use nix::time::{clock_gettime, ClockId};

#[cfg(unix)]
/// Reads `id`; a clock every supported platform has cannot fail, and 0 stands in if
/// it ever did.
fn read(id: ClockId) -> (u64, u64) {
    clock_gettime(id).map_or((0, 0), |ts| {
        (
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u64::try_from(ts.tv_nsec()).unwrap_or(0),
        )
    })
}

/// The system-wide monotonic clock, in ns: the same for every process of the machine
/// (unlike `Instant`, which cannot cross a process boundary).
pub(crate) fn mono_ns() -> u64 {
    #[cfg(unix)]
    let (s, ns) = read(ClockId::CLOCK_MONOTONIC);
    #[cfg(windows)]
    let (s, ns) = since_first_read();
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

/// Windows: the time since this process first read a clock (module docs).
#[cfg(windows)]
fn since_first_read() -> (u64, u64) {
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let t = FIRST.get_or_init(std::time::Instant::now).elapsed();
    (t.as_secs(), u64::from(t.subsec_nanos()))
}

/// The system-wide monotonic clock, in µs (systemd's `MONOTONIC_USEC=`).
#[cfg(unix)]
pub(crate) fn mono_us() -> u64 {
    mono_ns() / 1_000
}

/// The monotonic clock at its cheapest, in whole ms: on Linux the coarse clock (a few
/// nanoseconds to read through the vDSO, no counter read, a few milliseconds of
/// resolution), on FreeBSD its fast one, elsewhere the plain monotonic clock (on
/// Windows this process's, module docs). It is
/// read on the request path.
#[inline]
pub(crate) fn coarse_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let (s, ns) = read(ClockId::CLOCK_MONOTONIC_COARSE);
    #[cfg(target_os = "freebsd")]
    let (s, ns) = read(ClockId::CLOCK_MONOTONIC_FAST);
    #[cfg(all(
        unix,
        not(any(target_os = "linux", target_os = "android", target_os = "freebsd"))
    ))]
    let (s, ns) = read(ClockId::CLOCK_MONOTONIC);
    #[cfg(windows)]
    let (s, ns) = since_first_read();
    // A monotonic clock counts from boot: its seconds are far from overflowing a u64
    // once multiplied by 1000, and its nanoseconds are below 10^9, so plain arithmetic.
    s * 1000 + ns / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clocks_move_forward_together() {
        let (a, ms) = (mono_ns(), coarse_ms());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (b, ms2) = (mono_ns(), coarse_ms());
        assert!(b >= a + 30_000_000, "{a} then {b}");
        assert!(ms2 >= ms + 20, "{ms} then {ms2}");
        #[cfg(unix)]
        assert!(mono_us() >= b / 1_000);
    }
}
