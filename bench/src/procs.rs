//! Server processes seen from the outside: spawning them (pinned to a CPU), their log
//! lines, their exits (through pidfds), and what `/proc` says of them.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One log line of a server (any generation: they share the stderr pipe).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line's own RFC 3339 timestamp, as microseconds since the Unix epoch.
    pub ts_us: Option<i64>,
    pub text: String,
}

impl LogLine {
    /// The value of `key=` in the line (`pid=123` → "123").
    pub fn field(&self, key: &str) -> Option<&str> {
        field(&self.text, key)
    }

    pub fn pid(&self, key: &str) -> Option<u32> {
        self.field(key)?.parse().ok()
    }
}

/// `key=value` of a tracing fmt line; values end at a space.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        let before_ok = i == 0 || rest.as_bytes()[i - 1] == b' ';
        let after = &rest[i + key.len()..];
        if before_ok {
            if let Some(v) = after.strip_prefix('=') {
                return Some(v.split(' ').next().unwrap_or(v).trim_matches('"'));
            }
        }
        rest = after;
    }
    None
}

/// Every log line of one server, appended by a reader thread.
#[derive(Default)]
pub struct LogBook {
    lines: Mutex<Vec<LogLine>>,
    cond: Condvar,
}

impl LogBook {
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Waits for the first line at index `from` or later that satisfies `pred`.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> Option<LogLine> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            if let Some(l) = g.iter().skip(from).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self.cond.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn tail(&self, n: usize) -> Vec<String> {
        let g = self.lines.lock().unwrap();
        g.iter()
            .skip(g.len().saturating_sub(n))
            .map(|l| l.text.clone())
            .collect()
    }
}

/// A server started by the bench, and the generations that followed it.
pub struct Server {
    pub pid: u32,
    pub log: Arc<LogBook>,
    pub spawned_at: Instant,
}

/// Starts `bin args…` with `RUST_LOG=info`, stderr read into a [`LogBook`], pinned to
/// `cpu` if given (every later generation inherits the affinity).
pub fn spawn(bin: &Path, args: &[String], cpu: Option<usize>) -> std::io::Result<Server> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("CEASELESS_FDS")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    pin_command(&mut cmd, cpu);
    let spawned_at = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let log = Arc::new(LogBook::default());
    let stderr = child.stderr.take().expect("piped");
    {
        let log = log.clone();
        std::thread::Builder::new()
            .name(format!("log-{pid}"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(text) = line else { break };
                    let ts_us = parse_rfc3339_us(&text);
                    log.lines.lock().unwrap().push(LogLine { ts_us, text });
                    log.cond.notify_all();
                }
            })?;
    }
    // The child is reaped by `reap` (never through `Child`, which would race it).
    drop(child);
    Ok(Server {
        pid,
        log,
        spawned_at,
    })
}

/// Sets the CPU affinity of a command's process, between fork and exec: `cpu` alone, or
/// every online CPU if None (undoing the bench's own pinning, which it would inherit).
pub fn pin_command(cmd: &mut Command, cpu: Option<usize>) {
    let cpus: Vec<usize> = match cpu {
        Some(c) => vec![c],
        // SAFETY: sysconf has no memory effects.
        None => (0..unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize).collect(),
    };
    // SAFETY: the closure only calls sched_setaffinity (a plain syscall) on a cpu_set_t
    // on its own stack, reading a vector allocated before the fork; it neither
    // allocates nor locks.
    unsafe {
        cmd.pre_exec(move || {
            set_affinity(0, &cpus);
            Ok(())
        });
    }
}

/// Pins `pid` (0: the calling thread; threads created later inherit it) to `cpus`.
pub fn set_affinity(pid: libc::pid_t, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in set_affinity; sched_getaffinity fills the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Makes this process the reaper of its orphaned descendants: when a generation exits,
/// the next (its child) becomes ours, so that we can reap it and see its exit.
pub fn become_subreaper() -> bool {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

pub fn kill(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// A pidfd for `pid`: becomes readable when the process exits, whoever its parent.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` exits; the moment it was seen to, or None
/// after `timeout`.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Some(Instant::now());
        }
        if r == 0 || Instant::now() >= deadline {
            return None;
        }
    }
}

/// Reaps `pid` if it is our child and has exited; true if it was reaped (or is not
/// ours to reap).
pub fn reap(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our integer.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    r == pid as libc::pid_t || r < 0
}

/// Stops a server's current generation: SIGTERM, then SIGKILL if it is still there
/// after `grace`; reaps it.
pub fn stop(pid: u32, grace: Duration) {
    let fd = pidfd_open(pid).ok();
    if !kill(pid, libc::SIGTERM) {
        reap(pid);
        return;
    }
    let exited = fd.as_ref().and_then(|fd| wait_exit(fd, grace)).is_some();
    if !exited {
        kill(pid, libc::SIGKILL);
        if let Some(fd) = &fd {
            wait_exit(fd, Duration::from_secs(2));
        }
    }
    for _ in 0..100 {
        if reap(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills and reaps every process whose parent is this one (generations left behind
/// by an interrupted run become ours, as subreaper). Used at exit.
pub fn kill_children() {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ppid(pid) == Some(me) {
            kill(pid, libc::SIGKILL);
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: as in reap.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(1)?.parse().ok()
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Threads of a process.
pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// VmHWM (peak RSS) of a process, in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// What each open descriptor of a process is (`socket:[…]`, `pipe:[…]`, `anon_inode:…`),
/// grouped and counted; for explaining a change in the count.
pub fn fd_kinds(pid: u32) -> Vec<(String, usize)> {
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = match target.find(":[") {
                Some(i) => target[..i].to_string(),
                None => target,
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds.into_iter().collect()
}

/// CPU time used by a process so far (all its threads, user and system), from
/// `/proc/<pid>/stat`, in microseconds (clock-tick resolution).
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // After the comm: state(0) ppid(1) … utime is field 14 overall, index 11 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000 / hz)
}

/// Microseconds since the Unix epoch of a wall-clock instant.
pub fn wall_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The leading RFC 3339 timestamp of a tracing fmt line
/// (`2026-11-25T01:16:36.123456Z`), as microseconds since the Unix epoch.
pub fn parse_rfc3339_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec = t.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, "0"));
    let s: i64 = s.parse().ok()?;
    let mut us_str: String = frac.chars().take(6).collect();
    while us_str.len() < 6 {
        us_str.push('0');
    }
    let us: i64 = us_str.parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + hh) * 60 + mm) * 60_000_000 + s * 1_000_000 + us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_lines() {
        let l =
            "2026-11-25T01:16:36.123456Z  INFO ceaseless::server: serving pid=42 addr=127.0.0.1:80";
        assert_eq!(field(l, "pid"), Some("42"));
        assert_eq!(field(l, "addr"), Some("127.0.0.1:80"));
        let l2 = "x  INFO restart succeeded; draining pid=7 new_pid=8";
        assert_eq!(field(l2, "pid"), Some("7"));
        assert_eq!(field(l2, "new_pid"), Some("8"));
        assert_eq!(
            parse_rfc3339_us("1970-01-02T00:00:01.5Z x"),
            Some(86_401_500_000)
        );
        let now = wall_us(SystemTime::now());
        let days = now / 86_400_000_000;
        assert!(days > 19_000);
    }
}
