//! The results of a run: the table, the one-line summary, the JSON, and the targets.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::{Proto, Stats};
use crate::{Config, Cpus};

/// Idle RSS of the ceaseless server must stay within this (6 MiB).
pub const TARGET_IDLE_RSS_KIB: u64 = 6 * 1024;
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.97;
pub const TARGET_P99_RATIO: f64 = 1.10;
pub const TARGET_RESTART_EXTRA_MS: f64 = 30.0;
pub const TARGET_READY_TO_EXIT_MS: f64 = 50.0;

/// What the machine is.
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// The kernel's scheduler tick (`CONFIG_HZ`), when its configuration is readable:
    /// a task that never sleeps, sharing a core with a starting process, waits up to a
    /// tick for its turn (see BENCHMARKS.md on the restart window).
    pub tick_hz: Option<u32>,
    pub cpus: Cpus,
    /// The commit of the code measured (`+dirty` if the work tree differs).
    pub commit: String,
}

impl Machine {
    pub fn read(cpus: &Cpus, nproc: usize) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(&root)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            commit.push_str("+dirty");
        }
        let tick_hz = tick_hz(&kernel);
        Machine {
            commit,
            nproc,
            cpu_model,
            kernel,
            tick_hz,
            cpus: *cpus,
        }
    }

    /// The scheduler tick, for the report.
    fn tick(&self) -> String {
        self.tick_hz
            .map_or("unknown".into(), |hz| format!("{hz} Hz"))
    }
}

/// `CONFIG_HZ` of the running kernel: from `/proc/config.gz` (through `zcat`) or
/// `/boot/config-<release>`; `None` when neither can be read.
fn tick_hz(release: &str) -> Option<u32> {
    let config = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{release}")).ok())?;
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

pub struct StartupResult {
    pub name: String,
    /// Spawn to first answer, seen by the probe.
    pub ms: Vec<f64>,
    /// Spawn to the `serving` log line.
    pub log_ms: Vec<f64>,
}

/// One steady-state run of one side.
#[derive(Debug, Clone)]
pub struct SideRun {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: Option<f64>,
    /// The server's CPU time over the run's wall time (1.0: one core busy).
    pub server_cpu: Option<f64>,
    pub rss_max_kib: u64,
}

pub struct SteadyClient {
    pub client: String,
    pub bare: Vec<SideRun>,
    pub ceaseless: Vec<SideRun>,
}

/// Medians of a side's runs.
pub struct SideSummary {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: f64,
    pub server_cpu: f64,
    pub errors: u64,
    pub rss_max_kib: u64,
}

fn side_summary(runs: &[SideRun]) -> Option<SideSummary> {
    if runs.is_empty() {
        return None;
    }
    let m = |f: &dyn Fn(&SideRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Some(SideSummary {
        rps: m(&|r| r.rps),
        p50_us: m(&|r| r.p50_us),
        p99_us: m(&|r| r.p99_us),
        cpu_us_per_req: m(&|r| r.cpu_us_per_req.unwrap_or(f64::NAN)),
        server_cpu: m(&|r| r.server_cpu.unwrap_or(f64::NAN)),
        errors: runs.iter().map(|r| r.errors).sum(),
        rss_max_kib: runs.iter().map(|r| r.rss_max_kib).max().unwrap_or(0),
    })
}

/// ceaseless / bare, as the median of each round's ratio: a round's two runs are back
/// to back, so a change in the machine's other load mostly hits both.
pub struct Ratios {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu: f64,
}

impl SteadyClient {
    pub fn summaries(&self) -> Option<(SideSummary, SideSummary)> {
        Some((side_summary(&self.bare)?, side_summary(&self.ceaseless)?))
    }

    pub fn ratios(&self) -> Option<Ratios> {
        let pairs: Vec<(&SideRun, &SideRun)> = self.bare.iter().zip(&self.ceaseless).collect();
        if pairs.is_empty() {
            return None;
        }
        let m = |f: &dyn Fn(&SideRun) -> f64| {
            median(&pairs.iter().map(|(b, o)| f(o) / f(b)).collect::<Vec<_>>())
        };
        Some(Ratios {
            rps: m(&|r| r.rps),
            p50: m(&|r| r.p50_us),
            p99: m(&|r| r.p99_us),
            cpu: m(&|r| r.cpu_us_per_req.unwrap_or(f64::NAN)),
        })
    }
}

#[derive(Debug, Clone)]
pub struct IdleResources {
    pub name: String,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: u64,
}

#[derive(Default)]
pub struct SteadyResults {
    /// Idle, pinned as in the steady-state runs.
    pub idle: Vec<IdleResources>,
    /// Idle, not pinned: a worker thread per core.
    pub idle_unpinned: Vec<IdleResources>,
    /// VmHWM after all steady-state runs (`fds` unused).
    pub peak: Vec<IdleResources>,
    pub clients: Vec<SteadyClient>,
}

/// One restart, timed.
#[derive(Debug, Clone, Default)]
pub struct RestartSample {
    pub old_pid: u32,
    pub new_pid: Option<u32>,
    /// SIGHUP sent → first probe answered by the new generation.
    pub sighup_to_serving_ms: Option<f64>,
    /// SIGHUP sent → the new generation's `serving` log line.
    pub sighup_to_serving_log_ms: Option<f64>,
    /// How long starting the next generation took the old one's starting thread (its log).
    pub spawn_us: Option<f64>,
    /// The next generation was started with a fork (the log's `forked=`).
    pub spawn_forked: Option<bool>,
    /// SIGHUP sent → the old generation's `restart succeeded` (readiness received).
    pub sighup_to_ready_ms: Option<f64>,
    /// SIGHUP sent → the old generation's exit (pidfd).
    pub sighup_to_exit_ms: Option<f64>,
    /// Readiness (old generation's log) → the old generation's exit (pidfd).
    pub ready_to_exit_ms: Option<f64>,
    /// Readiness → the old generation's `drained; server stopped` log line.
    pub ready_to_drained_log_ms: Option<f64>,
    pub probes: u64,
    pub probe_errors: Vec<String>,
    pub error: Option<String>,
}

pub struct RestartRun {
    pub proto: Proto,
    pub samples: Vec<RestartSample>,
    pub stats: Stats,
    pub elapsed: Duration,
    pub probe_requests: u64,
    pub probe_failures: u64,
    pub first_pid: u32,
    pub last_pid: u32,
    pub first_fds: usize,
    pub last_fds: usize,
    pub first_fd_kinds: Vec<(String, usize)>,
    pub last_fd_kinds: Vec<(String, usize)>,
    pub first_rss_kib: u64,
    pub last_rss_kib: u64,
    pub load_rss_kib: u64,
}

impl RestartRun {
    pub fn total(&self) -> u64 {
        self.stats.ok + self.stats.failed + self.probe_requests
    }

    pub fn failed(&self) -> u64 {
        self.stats.failed + self.probe_failures
    }

    pub fn succeeded(&self) -> usize {
        self.samples.iter().filter(|s| s.error.is_none()).count()
    }

    fn values(&self, f: impl Fn(&RestartSample) -> Option<f64>) -> Vec<f64> {
        self.samples.iter().filter_map(f).collect()
    }
}

pub struct Results {
    pub config: Config,
    pub machine: Machine,
    pub startup: Vec<StartupResult>,
    pub steady: SteadyResults,
    pub restarts: Vec<RestartRun>,
    /// How long a thread that never sleeps waits for its core beside one busy thread.
    pub sched: Option<crate::sched::Probe>,
    pub wall: Duration,
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The q-quantile (nearest rank) of the finite values; NaN if there are none.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    if q >= 1.0 {
        return s[s.len() - 1];
    }
    if (q - 0.5).abs() < f64::EPSILON && s.len().is_multiple_of(2) {
        return (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn max(v: &[f64]) -> f64 {
    quantile(v, 1.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn f1(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".into()
    }
}

fn f2(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "-".into()
    }
}

fn f0(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

/// One target: what it asks, what was measured, whether it was met.
pub struct Check {
    pub name: String,
    pub bar: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Results {
    fn startup_ms(&self, name: &str) -> f64 {
        self.startup
            .iter()
            .find(|s| s.name == name)
            .map_or(f64::NAN, |s| median(&s.ms))
    }

    /// The larger idle RSS of `name`, pinned or not (0: not measured).
    fn idle_rss_kib(&self, name: &str) -> u64 {
        self.steady
            .idle
            .iter()
            .chain(&self.steady.idle_unpinned)
            .filter(|i| i.name == name)
            .map(|i| i.rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub fn checks(&self) -> Vec<Check> {
        let mut c = Vec::new();
        for r in &self.restarts {
            c.push(Check {
                name: format!("failed requests, {}", r.proto.name()),
                bar: "0".into(),
                measured: format!(
                    "{} of {} ({} restarts)",
                    r.failed(),
                    r.total(),
                    r.succeeded()
                ),
                met: Some(r.failed() == 0 && r.succeeded() == r.samples.len()),
            });
        }
        for cl in &self.steady.clients {
            if let Some(ratios) = cl.ratios() {
                let ratio = ratios.rps;
                c.push(Check {
                    name: format!("throughput ceaseless/bare, {}", cl.client),
                    bar: format!(">= {TARGET_THROUGHPUT_RATIO:.2}"),
                    measured: format!("{ratio:.3}"),
                    met: Some(ratio >= TARGET_THROUGHPUT_RATIO),
                });
                let p99 = ratios.p99;
                c.push(Check {
                    name: format!("p99 latency ceaseless/bare, {}", cl.client),
                    bar: format!("<= {TARGET_P99_RATIO:.2}"),
                    measured: format!("{p99:.3}"),
                    met: Some(p99 <= TARGET_P99_RATIO),
                });
            }
        }
        for r in &self.restarts {
            let startup = self.startup_ms(if r.proto.is_tls() {
                "ceaseless-tls"
            } else {
                "ceaseless"
            });
            let serving = r.values(|s| s.sighup_to_serving_ms);
            let (med, worst) = (median(&serving), max(&serving));
            c.push(Check {
                name: format!("SIGHUP to new generation serving, {}", r.proto.name()),
                bar: format!(
                    "<= start-up {} + {TARGET_RESTART_EXTRA_MS:.0} ms",
                    f1(startup)
                ),
                measured: format!("median {} ms, max {} ms", f1(med), f1(worst)),
                met: (med.is_finite() && startup.is_finite())
                    .then_some(med <= startup + TARGET_RESTART_EXTRA_MS),
            });
        }
        for r in &self.restarts {
            let gone = r.values(|s| s.ready_to_exit_ms);
            let (med, worst) = (median(&gone), max(&gone));
            c.push(Check {
                name: format!("readiness to old generation gone, {}", r.proto.name()),
                bar: format!("<= {TARGET_READY_TO_EXIT_MS:.0} ms"),
                measured: format!("median {} ms, max {} ms", f1(med), f1(worst)),
                met: worst
                    .is_finite()
                    .then_some(worst <= TARGET_READY_TO_EXIT_MS),
            });
        }
        let idle_rss = self.idle_rss_kib("ceaseless");
        if idle_rss > 0 {
            c.push(Check {
                name: "idle RSS, ceaseless (served pinned, hello unpinned)".into(),
                bar: format!("<= {}", mib(TARGET_IDLE_RSS_KIB)),
                measured: mib(idle_rss),
                met: Some(idle_rss <= TARGET_IDLE_RSS_KIB),
            });
        }
        for r in &self.restarts {
            c.push(Check {
                name: format!("open fds first → last generation, {}", r.proto.name()),
                bar: "equal".into(),
                measured: format!(
                    "{} → {} after {} restarts",
                    r.first_fds,
                    r.last_fds,
                    r.succeeded()
                ),
                met: Some(r.first_fds == r.last_fds),
            });
        }
        c
    }

    pub fn table(&self) -> String {
        let mut o = String::new();
        let cfg = &self.config;
        let m = &self.machine;
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "commit {}; machine: {} CPUs, {}, Linux {} (scheduler tick {}); servers on CPU {}, load generators on CPU {}",
            m.commit,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.tick(),
            m.cpus.server.map_or("any".into(), |c| c.to_string()),
            m.cpus.client.map_or("any".into(), |c| format!(
                "{c} ({} threads)",
                m.cpus.client_threads
            )),
        );

        let _ = writeln!(
            o,
            "\nSTEADY STATE: GET / keep-alive, {} concurrent requests; medians of {} runs of {} s per side, alternating",
            cfg.connections,
            cfg.rounds,
            cfg.duration.as_secs()
        );
        let _ = writeln!(
            o,
            "{:<11} {:<10} {:>10} {:>9} {:>9} {:>11} {:>11} {:>7}",
            "client", "server", "req/s", "p50 µs", "p99 µs", "cpu µs/req", "server cpu", "errors"
        );
        for cl in &self.steady.clients {
            let (Some((bare, ours)), Some(r)) = (cl.summaries(), cl.ratios()) else {
                let _ = writeln!(o, "{:<10} (no result)", cl.client);
                continue;
            };
            let proto = match cl.client.as_str() {
                "h2load" => format!("{} h2c", cl.client),
                c => format!("{c} h1"),
            };
            for (name, s) in [("bare", &bare), ("ceaseless", &ours)] {
                let _ = writeln!(
                    o,
                    "{:<11} {:<10} {:>10} {:>9} {:>9} {:>11} {:>11} {:>7}",
                    proto,
                    name,
                    f0(s.rps),
                    f0(s.p50_us),
                    f0(s.p99_us),
                    f2(s.cpu_us_per_req),
                    format!("{} %", f0(s.server_cpu * 100.0)),
                    s.errors
                );
            }
            let _ = writeln!(
                o,
                "{:<11} {:<10} {:>10.3} {:>9.3} {:>9.3} {:>11.3}",
                proto, "ratio *", r.rps, r.p50, r.p99, r.cpu
            );
        }

        let _ = writeln!(
            o,
            "  (* median of the rounds' ratios, each round's two runs back to back; cpu µs/req: server CPU time per request)"
        );
        let _ = writeln!(
            o,
            "\nRESTARTS UNDER LOAD: SIGHUP every {} ms of steady load, {} concurrent keep-alive requests",
            cfg.gap.as_millis(),
            cfg.connections
        );
        let _ = writeln!(
            o,
            "{:<7} {:>8} {:>9} {:>6} {:>7} {:>15} {:>15} {:>13} {:>13} {:>11}",
            "proto",
            "restarts",
            "requests",
            "failed",
            "retried",
            "p50 steady/win",
            "p99 steady/win",
            "serving ms",
            "gone ms",
            "fds"
        );
        let _ = writeln!(
            o,
            "{:<7} {:>8} {:>9} {:>6} {:>7} {:>15} {:>15} {:>13} {:>13} {:>11}",
            "", "ok/all", "", "", "", "µs", "µs", "med/max", "med/max", "first→last"
        );
        for r in &self.restarts {
            let st = &r.stats;
            let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                if h.is_empty() {
                    "-".to_string()
                } else {
                    h.value_at_quantile(q).to_string()
                }
            };
            let serving = r.values(|s| s.sighup_to_serving_ms);
            let gone = r.values(|s| s.ready_to_exit_ms);
            let _ = writeln!(
                o,
                "{:<7} {:>8} {:>9} {:>6} {:>7} {:>15} {:>15} {:>13} {:>13} {:>11}",
                r.proto.name(),
                format!("{}/{}", r.succeeded(), r.samples.len()),
                r.total(),
                r.failed(),
                st.retried,
                format!("{}/{}", q(&st.steady, 0.5), q(&st.window, 0.5)),
                format!("{}/{}", q(&st.steady, 0.99), q(&st.window, 0.99)),
                format!("{}/{}", f1(median(&serving)), f1(max(&serving))),
                format!("{}/{}", f1(median(&gone)), f1(max(&gone))),
                format!("{}→{}", r.first_fds, r.last_fds),
            );
        }
        for r in &self.restarts {
            let st = &r.stats;
            let mut handing_over = st.window.clone();
            if handing_over.subtract(&st.window_starting).is_ok() && !st.window.is_empty() {
                let p99 = |h: &hdrhistogram::Histogram<u64>| {
                    if h.is_empty() {
                        "-".to_string()
                    } else {
                        h.value_at_quantile(0.99).to_string()
                    }
                };
                let _ = writeln!(
                    o,
                    "  {} window p99: {} µs while the new generation starts ({} requests), {} µs while the old one hands over ({} requests)",
                    r.proto.name(),
                    p99(&st.window_starting),
                    st.window_starting.len(),
                    p99(&handing_over),
                    handing_over.len(),
                );
            }
        }
        for r in &self.restarts {
            for (k, v) in &r.stats.failures {
                let _ = writeln!(o, "  {} failure: {k} × {v}", r.proto.name());
            }
            let mut probe_errs: std::collections::BTreeMap<&str, usize> = Default::default();
            for s in &r.samples {
                for e in &s.probe_errors {
                    *probe_errs.entry(e.as_str()).or_default() += 1;
                }
            }
            for (k, v) in probe_errs {
                let _ = writeln!(o, "  {} probe failure: {k} × {v}", r.proto.name());
            }
            for (k, v) in &r.stats.retries {
                let _ = writeln!(
                    o,
                    "  {} retried (never processed): {k} × {v}",
                    r.proto.name()
                );
            }
            for s in &r.samples {
                if let Some(e) = &s.error {
                    let _ = writeln!(
                        o,
                        "  {} restart of pid {} failed: {e}",
                        r.proto.name(),
                        s.old_pid
                    );
                }
            }
            if r.first_fds != r.last_fds {
                let _ = writeln!(
                    o,
                    "  {} fds of pid {}: {:?}; of pid {}: {:?}",
                    r.proto.name(),
                    r.first_pid,
                    r.first_fd_kinds,
                    r.last_pid,
                    r.last_fd_kinds
                );
            }
        }
        let _ = writeln!(o, "  (serving: SIGHUP sent → first answer from the new pid, by a fresh-connection probe every 0.5 ms;");
        let _ = writeln!(
            o,
            "   gone: readiness, as the old generation logs it → its exit, seen through a pidfd;"
        );
        let _ = writeln!(
            o,
            "   win: requests that started between the SIGHUP and the old generation's exit)"
        );
        let mut phases = Vec::new();
        for r in &self.restarts {
            phases.push(format!(
                "{}: ready {} ms, serving (log) {} ms, drained (log) {} ms after ready",
                r.proto.name(),
                f1(median(&r.values(|s| s.sighup_to_ready_ms))),
                f1(median(&r.values(|s| s.sighup_to_serving_log_ms))),
                f1(median(&r.values(|s| s.ready_to_drained_log_ms))),
            ));
        }
        if !phases.is_empty() {
            let _ = writeln!(
                o,
                "  medians after SIGHUP, from the logs: {}",
                phases.join("; ")
            );
        }
        let mut spawns = Vec::new();
        for r in &self.restarts {
            let us = r.values(|s| s.spawn_us);
            if us.is_empty() {
                continue;
            }
            let forked = r
                .samples
                .iter()
                .filter(|s| s.spawn_forked == Some(true))
                .count();
            spawns.push(format!(
                "{} median {} µs, max {} µs ({} of {} forked)",
                r.proto.name(),
                f0(median(&us)),
                f0(max(&us)),
                forked,
                us.len(),
            ));
        }
        if !spawns.is_empty() {
            let _ = writeln!(
                o,
                "  starting the next generation took the old one's starting thread (a blocking one): {}",
                spawns.join("; ")
            );
        }
        if let Some(p) = &self.sched {
            let _ = writeln!(
                o,
                "  the scheduler, CPU {} (tick {}): a thread that never sleeps, alone on it: {}; beside one busy thread: {}. \
                 The second is what the old generation's requests wait whenever a busy process shares its core (bench/src/sched.rs)",
                p.cpu,
                self.machine.tick(),
                p.alone,
                p.shared,
            );
        }

        let _ = writeln!(
            o,
            "\nSTART-UP: spawn → first answer (fresh process, probe every 0.5 ms)"
        );
        for s in &self.startup {
            let _ = writeln!(
                o,
                "{:<10} median {} ms, max {} ms, to the `serving` log line {} ms ({} samples)",
                s.name,
                f1(median(&s.ms)),
                f1(max(&s.ms)),
                f1(median(&s.log_ms)),
                s.ms.len()
            );
        }

        let _ = writeln!(o, "\nRESOURCES");
        for i in &self.steady.idle {
            let peak = self
                .steady
                .peak
                .iter()
                .find(|p| p.name == i.name)
                .map_or(0, |p| p.rss_kib);
            let load = self
                .steady
                .clients
                .iter()
                .filter_map(|c| c.summaries())
                .map(|(b, c)| {
                    if i.name == "bare" {
                        b.rss_max_kib
                    } else {
                        c.rss_max_kib
                    }
                })
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                o,
                "{:<10} idle RSS {}, {} fds, {} threads; under load RSS {} (peak {})",
                i.name,
                mib(i.rss_kib),
                i.fds,
                i.threads,
                mib(load),
                mib(peak)
            );
        }
        for i in &self.steady.idle_unpinned {
            let _ = writeln!(
                o,
                "{:<10} idle RSS {}, {} fds, {} threads, not pinned",
                i.name,
                mib(i.rss_kib),
                i.fds,
                i.threads,
            );
        }
        for r in &self.restarts {
            let _ = writeln!(
                o,
                "{:<10} first generation {} fds, RSS {}; last (after {} restarts) {} fds, RSS {}; under load {}",
                r.proto.name(),
                r.first_fds,
                mib(r.first_rss_kib),
                r.succeeded(),
                r.last_fds,
                mib(r.last_rss_kib),
                mib(r.load_rss_kib)
            );
        }

        let _ = writeln!(o, "\nTARGETS");
        for ch in self.checks() {
            let verdict = match ch.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "n/a",
            };
            let _ = writeln!(
                o,
                "{:<44} {:<28} {:<34} {}",
                ch.name, ch.measured, ch.bar, verdict
            );
        }
        let _ = writeln!(o, "(total time {:.0} s)\n", self.wall.as_secs_f64());
        o
    }

    pub fn summary(&self) -> String {
        let failed: u64 = self.restarts.iter().map(|r| r.failed()).sum();
        let total: u64 = self.restarts.iter().map(|r| r.total()).sum();
        let restarts: usize = self.restarts.iter().map(|r| r.succeeded()).sum();
        let per: Vec<String> = self
            .restarts
            .iter()
            .map(|r| format!("{} {}", r.proto.name(), r.failed()))
            .collect();
        let steady: Vec<String> = self
            .steady
            .clients
            .iter()
            .filter_map(|c| {
                let r = c.ratios()?;
                Some(format!(
                    "{} {:.3}× req/s, p99 {:.3}×, cpu/req {:.3}×",
                    c.client, r.rps, r.p99, r.cpu
                ))
            })
            .collect();
        let serving: Vec<f64> = self
            .restarts
            .iter()
            .flat_map(|r| r.values(|s| s.sighup_to_serving_ms))
            .collect();
        let gone: Vec<f64> = self
            .restarts
            .iter()
            .flat_map(|r| r.values(|s| s.ready_to_exit_ms))
            .collect();
        let fds: Vec<String> = self
            .restarts
            .iter()
            .map(|r| format!("{}→{}", r.first_fds, r.last_fds))
            .collect();
        let missed = self
            .checks()
            .iter()
            .filter(|c| c.met == Some(false))
            .count();
        format!(
            "SUMMARY: {failed} failed of {total} requests across {restarts} restarts ({}); vs bare hyper: {}; SIGHUP→serving median {} ms (fresh start-up {} ms); old gone median {} ms / max {} ms after readiness; idle RSS {}; fds {}; targets missed: {missed}",
            per.join(", "),
            if steady.is_empty() { "n/a".into() } else { steady.join("; ") },
            f1(median(&serving)),
            f1(self.startup_ms("ceaseless")),
            f1(median(&gone)),
            f1(max(&gone)),
            mib(self.idle_rss_kib("ceaseless")),
            fds.join(" "),
        )
    }

    pub fn json(&self) -> Value {
        let cfg = &self.config;
        let side = |s: &SideSummary| {
            json!({
                "rps": s.rps, "p50_us": s.p50_us, "p99_us": s.p99_us,
                "cpu_us_per_req": s.cpu_us_per_req, "server_cpu": s.server_cpu, "errors": s.errors,
                "rss_max_kib": s.rss_max_kib,
            })
        };
        let runs = |v: &[SideRun]| -> Vec<Value> {
            v.iter()
                .map(|r| {
                    json!({
                        "requests": r.requests, "errors": r.errors, "rps": r.rps,
                        "p50_us": r.p50_us, "p99_us": r.p99_us,
                        "cpu_us_per_req": r.cpu_us_per_req, "server_cpu": r.server_cpu,
                        "rss_max_kib": r.rss_max_kib,
                    })
                })
                .collect()
        };
        let steady: Vec<Value> = self
            .steady
            .clients
            .iter()
            .map(|c| {
                let sums = c.summaries();
                let ratios = c.ratios();
                json!({
                    "client": c.client,
                    "bare": sums.as_ref().map(|(b, _)| side(b)),
                    "ceaseless": sums.as_ref().map(|(_, o)| side(o)),
                    "ratio_rps": ratios.as_ref().map(|r| num(r.rps)),
                    "ratio_p50": ratios.as_ref().map(|r| num(r.p50)),
                    "ratio_p99": ratios.as_ref().map(|r| num(r.p99)),
                    "ratio_cpu_per_req": ratios.as_ref().map(|r| num(r.cpu)),
                    "runs": { "bare": runs(&c.bare), "ceaseless": runs(&c.ceaseless) },
                })
            })
            .collect();
        let hist = |h: &hdrhistogram::Histogram<u64>| {
            if h.is_empty() {
                Value::Null
            } else {
                json!({
                    "count": h.len(), "p50_us": h.value_at_quantile(0.5),
                    "p90_us": h.value_at_quantile(0.9), "p99_us": h.value_at_quantile(0.99),
                    "max_us": h.max(),
                })
            }
        };
        let restarts: Vec<Value> = self
            .restarts
            .iter()
            .map(|r| {
                let st = &r.stats;
                let dist = |f: &dyn Fn(&RestartSample) -> Option<f64>| {
                    let v = r.values(f);
                    json!({ "median": num(median(&v)), "p90": num(quantile(&v, 0.9)), "max": num(max(&v)), "samples": v })
                };
                json!({
                    "protocol": r.proto.name(),
                    "restarts": r.samples.len(),
                    "restarts_ok": r.succeeded(),
                    "requests": r.total(),
                    "failed": r.failed(),
                    "load": {
                        "ok": st.ok, "failed": st.failed, "failed_in_windows": st.failed_window,
                        "retried": st.retried, "connections": st.connections,
                        "ok_in_windows": st.ok_window, "seconds": r.elapsed.as_secs_f64(),
                        "failures": st.failures, "retries": st.retries,
                    },
                    "probes": { "requests": r.probe_requests, "failed": r.probe_failures },
                    "latency_steady": hist(&st.steady),
                    "latency_window": hist(&st.window),
                    "latency_window_starting": hist(&st.window_starting),
                    "sighup_to_serving_ms": dist(&|s| s.sighup_to_serving_ms),
                    "sighup_to_serving_log_ms": dist(&|s| s.sighup_to_serving_log_ms),
                    "spawn_us": dist(&|s| s.spawn_us),
                    "spawn_forked": r.samples.iter().filter(|s| s.spawn_forked == Some(true)).count(),
                    "sighup_to_ready_ms": dist(&|s| s.sighup_to_ready_ms),
                    "sighup_to_old_exit_ms": dist(&|s| s.sighup_to_exit_ms),
                    "ready_to_old_exit_ms": dist(&|s| s.ready_to_exit_ms),
                    "ready_to_drained_log_ms": dist(&|s| s.ready_to_drained_log_ms),
                    "errors": r.samples.iter().filter_map(|s| s.error.clone()).collect::<Vec<_>>(),
                    "fds": { "first": r.first_fds, "last": r.last_fds,
                             "first_kinds": r.first_fd_kinds, "last_kinds": r.last_fd_kinds },
                    "rss_kib": { "first_idle": r.first_rss_kib, "last_idle": r.last_rss_kib, "under_load": r.load_rss_kib },
                })
            })
            .collect();
        let checks: Vec<Value> = self
            .checks()
            .into_iter()
            .map(
                |c| json!({ "target": c.name, "bar": c.bar, "measured": c.measured, "met": c.met }),
            )
            .collect();
        json!({
            "machine": {
                "nproc": self.machine.nproc, "cpu": self.machine.cpu_model,
                "kernel": self.machine.kernel, "tick_hz": self.machine.tick_hz, "server_cpu": self.machine.cpus.server,
                "commit": self.machine.commit,
                "client_cpu": self.machine.cpus.client,
            },
            "sched_probe": self.sched.map(|p| {
                let g = |g: crate::sched::Gaps| json!({
                    "pauses": g.count, "median_us": g.median_us, "p99_us": g.p99_us,
                    "max_us": g.max_us, "off_cpu": g.off_cpu,
                });
                json!({"cpu": p.cpu, "alone": g(p.alone), "beside_busy_thread": g(p.shared)})
            }),
            "config": {
                "restarts": cfg.restarts, "duration_s": cfg.duration.as_secs(), "rounds": cfg.rounds,
                "connections": cfg.connections, "gap_ms": cfg.gap.as_millis() as u64,
                "protocols": cfg.protocols.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "clients": cfg.clients, "pin": cfg.pin, "quick": cfg.quick, "hello_metrics": cfg.hello_metrics,
            },
            "startup_ms": self.startup.iter().map(|s| json!({
                "server": s.name, "median": num(median(&s.ms)), "max": num(max(&s.ms)),
                "to_log_median": num(median(&s.log_ms)), "samples": s.ms,
            })).collect::<Vec<_>>(),
            "steady": steady,
            "idle": self.steady.idle.iter().map(|i| json!({"server": i.name, "rss_kib": i.rss_kib, "fds": i.fds, "threads": i.threads})).collect::<Vec<_>>(),
            "idle_unpinned": self.steady.idle_unpinned.iter().map(|i| json!({"server": i.name, "rss_kib": i.rss_kib, "fds": i.fds, "threads": i.threads})).collect::<Vec<_>>(),
            "peak_rss_kib": self.steady.peak.iter().map(|i| json!({"server": i.name, "rss_kib": i.rss_kib})).collect::<Vec<_>>(),
            "restarts": restarts,
            "targets": checks,
            "summary": self.summary(),
            "seconds": self.wall.as_secs_f64(),
        })
    }
}

/// A float for JSON: NaN becomes null.
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            quantile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9),
            9.0
        );
        assert_eq!(max(&[1.0, f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }
}
