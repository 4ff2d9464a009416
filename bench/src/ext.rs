//! External load generators for the steady-state comparison: `wrk` (HTTP/1.1) and
//! `h2load` (h2c), installed by `bench/install-tools.sh`. Each run's requests/s and
//! p50/p99 latency, parsed from their output (h2load's from its per-request log).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::procs;

/// One run of a load generator against one server.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn available(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// `wrk -t T -c C -d D --latency`, pinned to `cpu`.
pub fn wrk(
    addr: SocketAddr,
    connections: usize,
    threads: usize,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<RunResult, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{}s", duration.as_secs().max(1)),
        "--latency",
        "--timeout",
        "10s",
        &format!("http://{addr}/"),
    ]);
    procs::pin_command(&mut cmd, cpu);
    let out = cmd.output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<RunResult> {
    let mut r = RunResult::default();
    let mut in_dist = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some((pct, v)) = l.split_once(char::is_whitespace) {
                match pct {
                    "50%" => r.p50_us = duration_us(v.trim())?,
                    "99%" => r.p99_us = duration_us(v.trim())?,
                    p if p.ends_with('%') => {}
                    _ => in_dist = false,
                }
            } else {
                in_dist = false;
            }
        }
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
        }
        if l.contains(" requests in ") {
            r.requests = l.split_whitespace().next()?.parse().ok()?;
        }
        if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect N, read N, write N, timeout N
            r.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    (r.rps > 0.0).then_some(r)
}

/// "577.00us", "1.23ms", "2.00s" → microseconds.
fn duration_us(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

/// `h2load` over h2c: `conns` connections of `streams` concurrent streams each, for
/// `duration`; latencies from its per-request log.
pub fn h2load(
    addr: SocketAddr,
    conns: usize,
    streams: usize,
    duration: Duration,
    cpu: Option<usize>,
    scratch: &Path,
) -> Result<RunResult, String> {
    let log = scratch.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("h2load");
    cmd.args([
        "-c",
        &conns.to_string(),
        "-m",
        &streams.to_string(),
        "-t",
        "1",
        "-D",
        &duration.as_secs().max(1).to_string(),
        "--log-file",
    ])
    .arg(&log)
    .arg(format!("http://{addr}/"));
    procs::pin_command(&mut cmd, cpu);
    let out = cmd.output().map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut r = RunResult::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("finished in ") {
            // finished in 5.00s, 48339.40 req/s, 2.81MB/s
            let rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.split_whitespace().next());
            r.rps = rps.and_then(|v| v.parse().ok()).unwrap_or(0.0);
        }
        if let Some(rest) = l.strip_prefix("requests:") {
            // N total, N started, N done, N succeeded, N failed, N errored, N timeout
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "succeeded" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.errors += n,
                    _ => {}
                }
            }
        }
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let logged = std::fs::read_to_string(&log).map_err(|e| format!("h2load log: {e}"))?;
    for line in logged.lines() {
        // start time, status, duration in µs (tab-separated)
        let mut f = line.split('\t');
        let (_, status, us) = (f.next(), f.next(), f.next());
        let ok = status.is_some_and(|s| s.starts_with('2'));
        match us.and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(us) if ok => h.saturating_record(us.max(1)),
            _ => {}
        }
    }
    let _ = std::fs::remove_file(&log);
    if h.is_empty() || r.rps <= 0.0 {
        return Err(format!("cannot read h2load's output:\n{text}"));
    }
    r.p50_us = h.value_at_quantile(0.50) as f64;
    r.p99_us = h.value_at_quantile(0.99) as f64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  1 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.00ms  100.00us   5.00ms   90.00%\n  Latency Distribution\n     50%  577.00us\n     75%    1.00ms\n     90%    1.10ms\n     99%    1.23ms\n  123456 requests in 5.00s, 14.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\nRequests/sec:  24691.20\nTransfer/sec:      2.80MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 123456);
        assert_eq!(r.errors, 3);
        assert!((r.p50_us - 577.0).abs() < 1e-9);
        assert!((r.p99_us - 1230.0).abs() < 1e-9);
        assert!((r.rps - 24691.2).abs() < 1e-9);
    }
}
