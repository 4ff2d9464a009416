//! The scheduler's share of the restart window: how long a thread that never sleeps
//! waits for its core while one other busy thread shares it.
//!
//! That is the old generation's worker during a restart on a saturated core: it always
//! has a request to serve, so it never sleeps, and the starting generation (and, during
//! the handover, the new one's busy worker) runs beside it on the same core. The kernel
//! hands the core back only when a run's slice is over, checked at the scheduler tick
//! (`CONFIG_HZ`; there is no high-resolution tick unless the kernel enables one), so
//! every request in flight in the old generation waits that long, whatever either
//! process does. The probe measures it with two plain threads and nothing of
//! ceaseless, so that the restart window's p99 can be set against it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pauses shorter than this are not waits for the core (a cache miss, an interrupt).
const MIN_GAP: Duration = Duration::from_micros(20);

/// The pauses of a spinning thread, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Gaps {
    pub count: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Share of the time the thread was off its core.
    pub off_cpu: f64,
}

/// The result of [`probe`]: the pauses alone on the core, and beside a busy thread.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub cpu: usize,
    pub alone: Gaps,
    pub shared: Gaps,
}

/// Spins on `cpu` for `time` alone, then as long beside a busy thread on the same
/// core, and records every pause of at least [`MIN_GAP`]. Bounded by `time` twice.
pub fn probe(cpu: usize, time: Duration) -> Probe {
    let alone = spin(cpu, time, false);
    let shared = spin(cpu, time, true);
    Probe { cpu, alone, shared }
}

fn spin(cpu: usize, time: Duration, busy_neighbour: bool) -> Gaps {
    let stop = Arc::new(AtomicBool::new(false));
    let neighbour = busy_neighbour.then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            crate::procs::set_affinity(0, &[cpu]);
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let measured = std::thread::spawn(move || {
        crate::procs::set_affinity(0, &[cpu]);
        let began = Instant::now();
        let mut last = began;
        let mut gaps = Vec::new();
        while last.duration_since(began) < time {
            let now = Instant::now();
            let gap = now - last;
            if gap >= MIN_GAP {
                gaps.push(gap.as_secs_f64() * 1e6);
            }
            last = now;
        }
        gaps
    });
    let gaps = measured.join().expect("the measuring thread");
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = neighbour {
        let _ = t.join();
    }
    Gaps {
        count: gaps.len(),
        median_us: crate::report::median(&gaps),
        p99_us: crate::report::quantile(&gaps, 0.99),
        max_us: crate::report::max(&gaps),
        off_cpu: gaps.iter().sum::<f64>() / (time.as_secs_f64() * 1e6),
    }
}

impl std::fmt::Display for Gaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let min = MIN_GAP.as_micros();
        if self.count == 0 {
            return write!(f, "no pause of {min} µs or more");
        }
        write!(
            f,
            "{} pauses of {min} µs or more, median {:.0} µs, p99 {:.0} µs, max {:.0} µs ({:.0} % of the time off the core)",
            self.count,
            self.median_us,
            self.p99_us,
            self.max_us,
            self.off_cpu * 100.0
        )
    }
}
