//! Shared test support: real processes of the example binaries, their logs, signals,
//! and versioned builds of `hello` for deploy-like restarts. `generations` follows a
//! process's generations across restarts; `load` is the HTTP load that counts every
//! request and checks who answered it.
#![allow(dead_code)]

pub mod generations;
pub mod load;
pub mod notify;
pub mod probe;

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `target/<profile>/examples/<name>` of the build that produced this test binary.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: cargo test builds examples",
        bin.display()
    );
    bin
}

/// Polls `cond` every 10 ms until it holds; panics with `what` and `state()` once
/// `within` has passed.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; {}",
            state()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collected output lines of a process (stdout and stderr, interleaved as read).
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    cond: Condvar,
    /// Streams that reached their end (2: every process holding them exited).
    closed: std::sync::atomic::AtomicUsize,
}

/// A running example binary (and, across restarts, its later generations, whose output
/// arrives on the same pipes).
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    out: Arc<Lines>,
    pub name: String,
}

impl Proc {
    /// Starts `bin` with `args`; stdout and stderr are captured.
    pub fn spawn(bin: &Path, args: &[&str]) -> Proc {
        Self::spawn_with(Command::new(bin).args(args))
    }

    /// Starts a prepared command; stdout and stderr are captured.
    pub fn spawn_with(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn example");
        let out = Arc::new(Lines::default());
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    out.lines.lock().unwrap().push(line);
                    out.cond.notify_all();
                }
                let _lines = out.lines.lock().unwrap();
                out.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                out.cond.notify_all();
            });
        }
        let pid = child.id();
        Proc {
            child,
            pid,
            out,
            name: cmd_name(cmd),
        }
    }

    /// Waits until `cond` holds, at most [`generations::LONG`]; panics with `what` and
    /// this process's output otherwise.
    pub fn wait_until(&self, what: &str, cond: impl FnMut() -> bool) {
        wait_until(what, generations::LONG, cond, || {
            format!("output:\n{}", self.output())
        });
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.out.lines.lock().unwrap().join("\n")
    }

    /// Waits until `n` lines contain `pat`; returns the n-th such line.
    pub fn wait_for_nth(&self, pat: &str, n: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.out.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().filter(|l| l.contains(pat)).nth(n - 1) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.out.cond.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits for the first line containing `pat`; panics with the output on timeout.
    pub fn expect_line(&self, pat: &str, timeout: Duration) -> String {
        self.wait_for_nth(pat, 1, timeout).unwrap_or_else(|| {
            panic!(
                "no line with {pat:?} within {timeout:?}; output:\n{}",
                self.output()
            )
        })
    }

    /// Waits until stdout and stderr reached their end: every generation, which all
    /// write to the same pipes, exited, and everything they printed was read. False on
    /// timeout.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.out.lines.lock().unwrap();
        while self.out.closed.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            lines = self.out.cond.wait_timeout(lines, left).unwrap().0;
        }
        true
    }

    /// Number of lines containing `pat` so far.
    pub fn count(&self, pat: &str) -> usize {
        self.out
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    /// The address of the n-th "serving" log line (1-based), waiting for it.
    pub fn serving_addr(&self, n: usize) -> String {
        let line = self
            .wait_for_nth("serving pid=", n, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("server {n} never served; output:\n{}", self.output()));
        field(&line, "addr").expect("addr field")
    }

    /// As [`Proc::serving_addr`], once the first generation also declared itself
    /// ready (hello declares it just after its last "serving" line).
    pub fn ready_addr(&self, n: usize) -> String {
        let addr = self.serving_addr(n);
        self.wait_for_nth("declared ready", 1, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("never ready; output:\n{}", self.output()));
        addr
    }

    /// Pids of every generation that logged "serving", in order, without repeats.
    pub fn generation_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for l in self.out.lines.lock().unwrap().iter() {
            if l.contains("serving pid=") {
                if let Some(p) = field(l, "pid").and_then(|p| p.parse().ok()) {
                    if !pids.contains(&p) {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }

    /// Sends a signal to the first generation.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }

    /// Waits for the first generation to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for pid in self.generation_pids() {
            if pid != self.pid {
                signal(pid, libc::SIGKILL);
                reap(pid);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- output of {} (pid {}) ---\n{}",
                self.name,
                self.pid,
                self.output()
            );
        }
    }
}

fn cmd_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// The value of `key=value` in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .map(|v| v.trim_matches('"').to_string())
}

/// `hello <verb> --control PATH` (`status`, `restart`), run to its end.
pub fn hello_cli(verb: &str, control: &Path) -> std::process::Output {
    Command::new(example_bin("hello"))
        .arg(verb)
        .arg("--control")
        .arg(control)
        .output()
        .expect("run hello")
}

/// `hello status --control PATH`, which must succeed, as JSON.
pub fn hello_status(control: &Path) -> serde_json::Value {
    let out = hello_cli("status", control);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hello status failed: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is gone (or a zombie); false on timeout.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    reap(pid);
    true
}

/// Reaps `pid` if it is our child (or was re-parented to us as subreaper).
pub fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a specific pid.
    unsafe {
        libc::waitpid(pid as i32, &mut status, libc::WNOHANG);
    }
}

/// Makes this test process the subreaper of its descendants, so that later
/// generations (whose parents exit) are re-parented to it and can be reaped and counted.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a process attribute.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Live descendants of this test process whose command line contains `needle`.
pub fn live_processes_named(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The tests' own runtime, for their clients: two workers, as the machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A scratch directory under the target dir, unique per call. The first call of a
/// test binary removes those of earlier runs (named for a test process that is gone):
/// each holds copies of the example binaries, so they would pile up run after run.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let root = target.join("ceaseless-tests");
    SWEPT.call_once(|| sweep_scratch(&root));
    let dir = root.join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes the scratch directories (`<tag>-<pid>-<n>`) of test processes that are gone.
fn sweep_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplit('-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(_), Ok(pid)) = (n.parse::<usize>(), pid.parse::<u32>()) else {
            continue; // not a scratch directory (the versioned binaries, say)
        };
        if pid != std::process::id() && !alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Copies of `hello` built with `HELLO_VERSION` set to each of `versions`, as a deploy
/// would produce them. Built once per test binary, before any of them runs: building
/// runs `cargo build --example hello` (only the example recompiles), then copies the
/// result, so no process ever executes a file being written.
pub fn versioned_hellos(versions: &[&str]) -> Vec<PathBuf> {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut map = built.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let store = target_dir
        .join("ceaseless-tests")
        .join(format!("hello-versions-{profile}"));
    std::fs::create_dir_all(&store).unwrap();
    for v in versions {
        if map.contains_key(*v) {
            continue;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--example", "hello", "--target-dir"])
            .arg(&target_dir)
            .env("HELLO_VERSION", v);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building hello {v} failed");
        let dest = store.join(format!("hello-{v}"));
        let tmp = store.join(format!(".hello-{v}.{}.tmp", std::process::id()));
        std::fs::copy(profile_dir.join("examples").join("hello"), &tmp).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        map.insert(v.to_string(), dest);
    }
    versions.iter().map(|v| map[*v].clone()).collect()
}

/// Installs `src` at `dest` as a deploy does: copy beside it, then rename over it.
pub fn deploy(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("deploying");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Makes the child see `fds` as 3, 4, … (without close-on-exec), as systemd passes
/// activated sockets. Returns the parent's temporary copies, to close after the spawn.
pub fn pass_fds(cmd: &mut Command, fds: &[RawFd]) -> Vec<OwnedFd> {
    // Copies well above the target range, so that no dup2 overwrites a source yet to
    // be moved; close-on-exec, so that only the dup2'd numbers reach the program.
    let high: Vec<RawFd> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor of ours.
            let h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) };
            assert!(h >= 0, "{}", std::io::Error::last_os_error());
            h
        })
        .collect();
    let owned = high
        .iter()
        // SAFETY: each was just created and is owned by nobody else.
        .map(|h| unsafe { OwnedFd::from_raw_fd(*h) })
        .collect();
    // SAFETY: between fork and exec only dup2 runs (async-signal-safe), over a vector
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (target, h) in (3..).zip(high.iter()) {
                if libc::dup2(*h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    owned
}

/// The socket inode of a descriptor of ours, as `/proc/<pid>/fd` links show it.
pub fn socket_inode(fd: RawFd) -> String {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    link.to_string_lossy().into_owned()
}

/// Whether `pid` has a descriptor whose `/proc` link reads `link` (a socket inode, say).
pub fn holds(pid: u32, link: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link))
}

/// The environment `pid` was started with.
pub fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
