//! The part of the metrics that is recorded as things happen (the two restart
//! histograms), and the descriptions of every metric: a leaf module, so that the status
//! book can record into it without the metrics' snapshot side (which reads the status)
//! and the book importing each other.

use std::sync::Once;

use metrics::{describe_counter, describe_gauge, describe_histogram};

static DESCRIBED: Once = Once::new();

pub(crate) fn describe() {
    DESCRIBED.call_once(|| {
        describe_gauge!("ceaseless_generation", "This generation's number.");
        describe_gauge!(
            "ceaseless_live",
            "1 while this generation owns its files and answers for the process."
        );
        describe_gauge!(
            "ceaseless_phase",
            "1 for the current phase of this generation."
        );
        describe_gauge!(
            "ceaseless_start_time_seconds",
            "When this process started, in seconds since the Unix epoch."
        );
        describe_gauge!(
            "ceaseless_connections",
            "Open connections of each listener, by state."
        );
        describe_counter!(
            "ceaseless_requests_total",
            "Requests this generation received."
        );
        describe_counter!(
            "ceaseless_restarts_total",
            "Restarts since the first generation, by outcome."
        );
        describe_counter!(
            "ceaseless_rollbacks_total",
            "Rollbacks after a probation since the first generation, by trigger."
        );
        describe_histogram!(
            "ceaseless_restart_duration_seconds",
            metrics::Unit::Seconds,
            "From the start of a restart to the new generation's readiness."
        );
        describe_histogram!(
            "ceaseless_drain_duration_seconds",
            metrics::Unit::Seconds,
            "From the new generation's readiness to the old generation's exit."
        );
    });
}

/// The restart that started this generation: from its start to this one's readiness.
#[cfg(unix)]
pub(crate) fn restarted(ms: u64) {
    describe();
    metrics::histogram!("ceaseless_restart_duration_seconds").record(ms as f64 / 1000.0);
}

/// The previous generation exited, `ms` after this one's readiness.
#[cfg(unix)]
pub(crate) fn drained(ms: u64) {
    describe();
    metrics::histogram!("ceaseless_drain_duration_seconds").record(ms as f64 / 1000.0);
}
