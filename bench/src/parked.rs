//! What a probation costs (`hello --probation-ms`): the memory a parked generation
//! holds beside the live one, and SIGHUP → serving with and without a probation,
//! alternating in the same run (the baseline is the run without).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::{free_port, hello_args, ms, probe, procs, start_server, Bins, Config, Cpus};

/// The memory of one parked generation.
pub struct Memory {
    /// MiB of ballast hello held (an application's caches).
    pub ballast_mb: u64,
    /// RSS of the first generation before any restart, KiB.
    pub first_idle_kib: u64,
    /// RSS of that generation once parked behind the next one, KiB.
    pub parked_kib: u64,
    /// RSS of the live generation beside it, KiB.
    pub live_kib: u64,
}

/// One probation run.
pub struct ParkedReport {
    pub memory: Vec<Memory>,
    /// SIGHUP → the new generation answers, median ms: without a probation, with one.
    pub restart_ms: (f64, f64),
    /// Restarts timed each way.
    pub restarts: usize,
}

impl ParkedReport {
    pub fn print(&self) {
        println!("probation (hello --probation-ms):");
        for m in &self.memory {
            println!(
                "  RSS with {} MiB of ballast: first generation idle {} KiB; parked {} KiB \
                 beside the live one's {} KiB",
                m.ballast_mb, m.first_idle_kib, m.parked_kib, m.live_kib
            );
        }
        println!(
            "  SIGHUP -> serving, median of {}: {:.2} ms without a probation, {:.2} ms with one ({:.2}x)",
            self.restarts,
            self.restart_ms.0,
            self.restart_ms.1,
            self.restart_ms.1 / self.restart_ms.0
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A hello, `extra` flags added, restarted `n` times; SIGHUP → serving each time, and
/// the server left running (its latest generation's pid in it).
fn restarts(
    bins: &Bins,
    cfg: &Config,
    cpus: &Cpus,
    extra: &[&str],
    n: usize,
) -> Result<(Vec<f64>, procs::Server), String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec!["--addr".to_string(), addr.to_string()];
    args.extend(hello_args(cfg));
    args.extend(extra.iter().map(|s| s.to_string()));
    let (mut server, _, _) = start_server(&bins.hello, &args, addr, None, cpus)?;
    let mut took = Vec::new();
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(200));
        let old = server.pid;
        let t0 = Instant::now();
        procs::kill(old, libc::SIGHUP);
        let sv = probe::wait_serving(
            addr,
            None,
            Some(old),
            Duration::from_micros(500),
            Duration::from_secs(20),
        )
        .map_err(|(_, e)| format!("no new generation: {e:?}"))?;
        took.push(ms(sv.at - t0));
        server.pid = sv.pid;
    }
    Ok((took, server))
}

/// One restart of a hello holding `ballast_mb` MiB, then both generations measured once
/// settled.
fn parked_memory(
    cfg: &Config,
    bins: &Bins,
    cpus: &Cpus,
    ballast_mb: u64,
) -> Result<Memory, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec!["--addr".to_string(), addr.to_string()];
    args.extend(hello_args(cfg));
    args.extend(["--probation-ms".to_string(), "600000".to_string()]);
    if ballast_mb > 0 {
        args.extend(["--ballast-mb".to_string(), ballast_mb.to_string()]);
    }
    let (server, _, _) = start_server(&bins.hello, &args, addr, None, cpus)?;
    std::thread::sleep(Duration::from_millis(300));
    let first = server.pid;
    let first_idle_kib = procs::rss_kib(first).unwrap_or(0);
    procs::kill(first, libc::SIGHUP);
    let sv = probe::wait_serving(
        addr,
        None,
        Some(first),
        Duration::from_micros(500),
        Duration::from_secs(20),
    )
    .map_err(|(_, e)| format!("no new generation: {e:?}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let parked_kib = procs::rss_kib(first).unwrap_or(0);
    let live_kib = procs::rss_kib(sv.pid).unwrap_or(0);
    // SIGTERM to the live one ends the probation: both exit.
    procs::stop(sv.pid, Duration::from_secs(5));
    procs::stop(first, Duration::from_secs(5));
    Ok(Memory {
        ballast_mb,
        first_idle_kib,
        parked_kib,
        live_kib,
    })
}

pub fn run(cfg: &Config, bins: &Bins, cpus: &Cpus) -> Result<ParkedReport, String> {
    let n = if cfg.quick { 4 } else { 10 };
    eprintln!("bench: probation: memory of a parked generation, {n} restarts with and without");
    let mut memory = Vec::new();
    for ballast_mb in [0, 32] {
        memory.push(parked_memory(cfg, bins, cpus, ballast_mb)?);
    }
    // The speed: restarts without and with a probation, alternating batches.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (t, s) = restarts(bins, cfg, cpus, &[], n / 2)?;
        without.extend(t);
        procs::stop(s.pid, Duration::from_secs(5));
        let (t, s) = restarts(bins, cfg, cpus, &["--probation-ms", "600000"], n / 2)?;
        with.extend(t);
        procs::stop(s.pid, Duration::from_secs(5));
    }
    let restarts = without.len();
    Ok(ParkedReport {
        memory,
        restart_ms: (median(without), median(with)),
        restarts,
    })
}
