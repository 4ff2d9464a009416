//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`,
//! on by default): ceaseless records, the application picks the exporter (Prometheus,
//! StatsD, OpenTelemetry, …) by installing a recorder. Without one every call is a
//! no-op.
//!
//! Nothing is recorded per request or per connection. The gauges and counters are set
//! from a [`Status`] snapshot when [`Process::publish_metrics`](crate::Process::publish_metrics) is called — call it where
//! the metrics are read, just before rendering them (an exporter's scrape handler), or
//! on a timer; the two histograms are recorded once per restart, when their event
//! happens. Install the recorder before starting the [`Process`](crate::Process), so
//! that the new generation's restart histograms are not lost.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `ceaseless_generation` | gauge | | this generation's number (1, then +1 at each successful restart) |
//! | `ceaseless_live` | gauge | | 1 while this generation owns its files and answers for the process |
//! | `ceaseless_phase` | gauge | `phase` | 1 for the current [`Phase`] (`starting`, `confirming`, `serving`, `restarting`, `lame_duck`, `draining`, `parked`), 0 for the others |
//! | `ceaseless_start_time_seconds` | gauge | | when this process started, in seconds since the Unix epoch |
//! | `ceaseless_connections` | gauge | `listener`, `state` = `active`, `idle`, `upgraded` | open connections of each listener a ceaseless server serves, by state (they add up to the open ones) |
//! | `ceaseless_requests_total` | counter | | requests this generation received (a new generation starts from 0, as any process's counter does) |
//! | `ceaseless_restarts_total` | counter | `outcome` = `ok`, `failed` | restarts since the first generation (carried across restarts, so it does not fall back to 0 at each one) |
//! | `ceaseless_rollbacks_total` | counter | `trigger` = `crash`, `errors`, `application`, `operator` | rollbacks after a probation ([`ProcessBuilder::probation`](crate::ProcessBuilder::probation)), carried across restarts as the restarts are |
//! | `ceaseless_restart_duration_seconds` | histogram | | from the start of a restart (SIGHUP) to the new generation's readiness; recorded by the new generation |
//! | `ceaseless_drain_duration_seconds` | histogram | | from the new generation's readiness to the old generation's exit (its drain); recorded by the new generation |
//!
//! Nothing is recorded per request: the request count is summed from the connections'
//! own counters when the snapshot is taken.
//!
//! ```no_run
//! // With metrics-exporter-prometheus (no HTTP listener of its own):
//! # fn f(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
//! // let handle = PrometheusBuilder::new().install_recorder()?; // first, in main
//! if let Some(p) = ceaseless::Process::current() {
//!     p.publish_metrics();
//! }
//! handle.render() // the body of GET /metrics
//! # }
//! ```

use std::time::SystemTime;

use metrics::{counter, gauge};

use crate::observe::metrics_record::describe;
use crate::observe::status::{Phase, Status};

/// Sets the gauges and counters from `s`: for a snapshot taken anyway.
pub fn publish_status(s: &Status) {
    describe();
    gauge!("ceaseless_generation").set(s.generation as f64);
    gauge!("ceaseless_live").set(if s.live { 1.0 } else { 0.0 });
    for p in Phase::ALL {
        gauge!("ceaseless_phase", "phase" => p.as_str()).set(if p == s.phase { 1.0 } else { 0.0 });
    }
    let started = s
        .started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge!("ceaseless_start_time_seconds").set(started);
    for l in &s.listeners {
        if let Some(c) = l.connections {
            for (state, n) in [
                ("active", c.active),
                ("idle", c.idle),
                ("upgraded", c.upgraded),
            ] {
                gauge!("ceaseless_connections", "listener" => l.address.clone(), "state" => state)
                    .set(n as f64);
            }
        }
    }
    counter!("ceaseless_requests_total").absolute(s.requests);
    counter!("ceaseless_restarts_total", "outcome" => "ok").absolute(s.restarts_total.ok);
    counter!("ceaseless_restarts_total", "outcome" => "failed").absolute(s.restarts_total.failed);
    let r = s.restarts_total.rollbacks;
    for (trigger, n) in [
        ("crash", r.crash),
        ("errors", r.errors),
        ("application", r.application),
        ("operator", r.operator),
    ] {
        counter!("ceaseless_rollbacks_total", "trigger" => trigger).absolute(n);
    }
}
