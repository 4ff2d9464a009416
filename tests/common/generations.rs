//! Installing binaries as a deploy does, and following a process's generations through
//! its log: who is newest, restarts that must succeed or fail, exits and reaping, and
//! the sockets a generation listens on, what a generation logged and when.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{example_bin, fd_count, field, scratch_dir, signal, wait_gone, Proc};

/// The bound on every wait for something a process should do soon: generous, for a
/// loaded two-core machine.
pub const LONG: Duration = Duration::from_secs(40);

/// Installs `src` at `dest` as a deploy does: a new file renamed over the old one. By
/// hard link when possible (the versioned builds are never written again, and copying
/// 70 MB per restart would only slow the tests down).
pub fn install(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("installing");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).expect("copy the binary");
    }
    std::fs::rename(&tmp, dest).expect("rename over the deployed binary");
}

/// Installs an executable shell script at `dest`, by rename.
pub fn install_script(dest: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dest.with_extension("installing");
    std::fs::write(&tmp, body).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Writes a file by rename, so a process reading it sees the old or the new content.
pub fn write_atomically(dest: &Path, content: &str) {
    let tmp = dest.with_extension("writing");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// The newest generation: the last pid that logged "serving".
pub fn newest(p: &Proc) -> u32 {
    *p.generation_pids()
        .last()
        .unwrap_or_else(|| panic!("no generation is serving; output:\n{}", p.output()))
}

pub fn pid_field(line: &str, key: &str) -> u32 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}=<pid> in {line:?}"))
}

/// SIGHUPs the newest generation and waits for its restart to succeed. Returns
/// (old pid, new pid).
pub fn restart_ok(p: &Proc) -> (u32, u32) {
    let old = newest(p);
    let succeeded = p.count("restart succeeded");
    let failed = p.count("restart failed");
    signal(old, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart succeeded", succeeded + 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "restart #{} of pid {old} did not succeed within {LONG:?}; output:\n{}",
                succeeded + 1,
                p.output()
            )
        });
    assert_eq!(
        pid_field(&line, "pid"),
        old,
        "the restart was reported by another process: {line}"
    );
    assert_eq!(
        p.count("restart failed"),
        failed,
        "a restart failed; output:\n{}",
        p.output()
    );
    let new = pid_field(&line, "new_pid");
    // The new generation declares ready before its last "serving" line, so the old
    // one may log its success first: wait for that line.
    p.wait_for_nth(&format!("serving pid={new} "), 1, LONG);
    // And live: until the previous generation's word comes, a SIGHUP to it is refused
    // (its own restart is not over), so the next restart_ok waits for this.
    p.wait_for_nth(&format!("this generation is live pid={new} "), 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "{new} never went live; output:
{}",
                p.output()
            )
        });
    assert_eq!(
        newest(p),
        new,
        "the new generation {new} should be the newest that logged serving"
    );
    (old, new)
}

/// SIGHUPs the newest generation and waits for its restart to fail; returns the log
/// line, which names the reason.
pub fn restart_fails(p: &Proc) -> String {
    let gen = newest(p);
    let succeeded = p.count("restart succeeded");
    let failed = p.count("restart failed");
    signal(gen, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart failed", failed + 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "the restart of pid {gen} should have failed within {LONG:?}; output:\n{}",
                p.output()
            )
        });
    assert_eq!(pid_field(&line, "pid"), gen, "{line}");
    assert_eq!(
        p.count("restart succeeded"),
        succeeded,
        "a broken deploy was reported as a successful restart; output:\n{}",
        p.output()
    );
    line
}

/// The version a hello generation announced at start.
pub fn hello_version(p: &Proc, pid: u32) -> String {
    let line = p.expect_line(&format!("hello starting pid={pid} "), LONG);
    field(&line, "version").unwrap_or_else(|| panic!("no version in {line:?}"))
}

/// Waits for `pid` to exit, and reaps it (the test process is the subreaper).
pub fn expect_gone(p: &Proc, pid: u32, what: &str) {
    assert!(
        wait_gone(pid, LONG),
        "{what}: pid {pid} still runs after {LONG:?}; output:\n{}",
        p.output()
    );
}

/// True once `pid` is reaped: not even a zombie is left.
pub fn reaped(pid: u32) -> bool {
    super::reap(pid);
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// (pid, state) of every process whose parent is `ppid`, zombies included.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("?").to_string();
        if rest.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            found.push((pid, state));
        }
    }
    found
}

/// The open descriptors of `pid`, one "fd -> target" per line, for failure messages.
pub fn fd_listing(pid: u32) -> String {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse().ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((n, target.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds.iter()
        .map(|(n, t)| format!("  {n} -> {t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The number of open descriptors of `pid` once it stopped changing (closed client
/// connections take a moment to be noticed).
pub fn settled_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut last, mut same) = (fd_count(pid), 0);
    while same < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let n = fd_count(pid);
        same = if n == last { same + 1 } else { 0 };
        last = n;
    }
    last
}

/// Distinct free TCP ports on 127.0.0.1 (bound together, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A free UDP port on 127.0.0.1 (bound, then released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The inode of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp: the same
/// inode before and after a restart proves the same socket was handed over.
pub fn listen_inode(port: u16) -> Option<u64> {
    // State 0A: listening.
    socket_inode("/proc/net/tcp", port, Some("0A"))
}

/// The inode of the UDP socket bound to 127.0.0.1:`port`, from /proc/net/udp.
pub fn udp_inode(port: u16) -> Option<u64> {
    socket_inode("/proc/net/udp", port, None)
}

/// The inode of the socket of `table` bound to 127.0.0.1:`port`, in `state` if given.
fn socket_inode(table: &str, port: u16, state: Option<&str>) -> Option<u64> {
    let table = std::fs::read_to_string(table).ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()) && state.is_none_or(|st| cols.get(3) == Some(&st)))
            .then(|| cols.get(9)?.parse().ok())
            .flatten()
    })
}

pub fn unix_socket_exists(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// A short path for a Unix socket (sun_path holds 108 bytes).
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if p.as_os_str().len() < 100 {
        return p;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "ceaseless-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A scratch directory holding a copy of `example` at `<dir>/app`, as a deploy would
/// install it.
pub fn installed(tag: &str, example: &str) -> (PathBuf, PathBuf) {
    let dir = scratch_dir(tag);
    let app = dir.join("app");
    install(&example_bin(example), &app);
    (dir, app)
}

/// The lines of `p`'s log that contain `pat` and name `pid` as `pid=`.
pub fn lines_of(p: &Proc, pat: &str, pid: u32) -> Vec<String> {
    let pid = pid.to_string();
    p.output()
        .lines()
        .filter(|l| l.contains(pat) && field(l, "pid").as_deref() == Some(pid.as_str()))
        .map(String::from)
        .collect()
}

/// Waits for the first line that contains `pat` and names `pid`; panics on timeout, or
/// at once when every generation exited without printing it.
pub fn wait_line_of(p: &Proc, pat: &str, pid: u32) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let closed = p.wait_closed(Duration::ZERO);
        if let Some(l) = lines_of(p, pat, pid).into_iter().next() {
            return l;
        }
        assert!(
            !closed && Instant::now() < deadline,
            "no line with {pat:?} from pid {pid} (waited at most {LONG:?}; every generation \
             exited: {closed}); output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The wall-clock time at the start of a log line (tracing's RFC 3339 UTC timestamp,
/// `2026-12-01T22:51:33.113013Z`). The servers and the test read the same clock, so a
/// log line's time and a client's `SystemTime::now()` can be put in order.
pub fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + hh * 3600 + mm * 60 + ss, nanos))
}

/// The time of the first line that contains `pat` and names `pid`.
pub fn logged_at(p: &Proc, pat: &str, pid: u32) -> SystemTime {
    let line = wait_line_of(p, pat, pid);
    log_time(&line).unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"))
}

/// Waits for `pid`, a child of this process (directly, or re-parented to it as the
/// subreaper), to exit, and reaps it: its exit status. None on timeout or if it is not
/// our child.
pub fn wait_status(pid: u32, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one pid, with WNOHANG.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return Some(ExitStatus::from_raw(status));
        }
        if r < 0 || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
