//! The lifecycle of a generation, proved with real processes, real signals and real
//! clients: servers that start one after another, a new generation that warms up before
//! it serves, a Unix socket named by a relative path, SIGTERM in the middle of a
//! restart (to the old generation and to the new one), axum's own `axum::serve` on a
//! listener from ceaseless, and a new generation that accepts but never reports ready.
//!
//! As in restart.rs: every test installs its binaries in its own scratch directory and
//! listens on 127.0.0.1 (port 0 or ports it picked) or on Unix sockets of its own, so
//! the tests run in parallel. Nothing asserts on timing: every wait is bounded and
//! generous, and what is checked is what happened, and in which order.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::generations::{
    children_of, expect_gone, free_ports, install, install_script, installed, lines_of,
    listen_inode, log_time, logged_at, newest, pid_field, reaped, restart_fails, restart_ok,
    socket_path, unix_socket_exists, wait_line_of, wait_status, LONG,
};
use common::load::{
    body_pid, get_tcp, get_unix, reqwest_client, shared_client, BodyCheck, Client, Expect, Load,
    Summary,
};
use common::{
    alive, become_subreaper, example_bin, field, live_processes_named, scratch_dir, signal, Proc,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Any generation answers.
fn anyone() -> Option<Expect> {
    None
}

/// Only `pid` may answer.
fn only(pid: u32) -> Option<Expect> {
    Some(Expect { pid, version: None })
}

/// Waits until generation `pid` reported ready.
fn wait_ready(p: &Proc, pid: u32) -> String {
    wait_line_of(p, "declared ready", pid)
}

/// The addresses generation `pid` logged "serving" on.
fn serving_addrs(p: &Proc, pid: u32) -> Vec<String> {
    lines_of(p, "serving pid=", pid)
        .iter()
        .filter_map(|l| field(l, "addr"))
        .collect()
}

/// The new generation the restart of `old` handed over to, once it logged success.
fn handed_over_to(p: &Proc, old: u32) -> Option<u32> {
    lines_of(p, "restart succeeded", old)
        .first()
        .map(|l| pid_field(l, "new_pid"))
}

/// The generations `old` started (whatever became of them).
fn started_by(p: &Proc, old: u32) -> Vec<u32> {
    lines_of(p, "started the next generation", old)
        .iter()
        .map(|l| pid_field(l, "new_pid"))
        .collect()
}

/// Waits until `pid` is no more, not even a zombie (its parent reaped it).
fn expect_reaped(p: &Proc, pid: u32, what: &str) {
    let deadline = Instant::now() + LONG;
    while !reaped(pid) {
        assert!(
            Instant::now() < deadline,
            "{what}: pid {pid} was not reaped within {LONG:?}; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The inode of the file at `path` (not following a symlink).
fn file_inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// A thread that samples a value (an inode, say) until stopped, and reports every
/// distinct value it saw: one value throughout means it never changed, nor vanished.
struct Watch {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<BTreeSet<Option<u64>>>,
}

impl Watch {
    fn start(every: Duration, f: impl Fn() -> Option<u64> + Send + 'static) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                seen.insert(f());
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(every);
            }
            seen
        });
        Watch {
            stop,
            samples,
            thread,
        }
    }

    /// (every distinct value seen, number of samples).
    fn stop(self) -> (BTreeSet<Option<u64>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().unwrap();
        (seen, self.samples.load(Ordering::Relaxed))
    }
}

/// `app restart --control PATH`: the restart client built into hello.
fn control_restart(app: &Path, control: &Path) -> Output {
    Command::new(app)
        .args(["restart", "--control"])
        .arg(control)
        .args(["--timeout-ms", "30000"])
        .output()
        .expect("run hello restart")
}

/// The new pid a successful `hello restart` printed; panics with its output otherwise.
fn restarted(out: &Output, p: &Proc) -> u32 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hello restart failed: {:?}\nstdout: {stdout}\nstderr: {}\nserver output:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        p.output()
    );
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("hello restart printed {stdout:?}, not a pid"))
}

/// The pid a PID file names, once it names `want` (bounded wait); what it named last
/// otherwise.
fn pid_file_names(path: &Path, want: u32) -> Option<u32> {
    let read = || {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let deadline = Instant::now() + LONG;
    loop {
        let got = read();
        if got == Some(want) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Zero failed requests, no connect refused, no answer from a generation that should be
/// gone.
fn assert_no_failures(s: &Summary, tag: &str) {
    s.print(tag);
    assert_eq!(
        s.refused,
        0,
        "[{tag}] {} connects were refused: a moment when nothing listened; first problems:\n  {}",
        s.refused,
        s.notes.join("\n  ")
    );
    s.assert_clean(tag);
}

#[test]
fn log_time_reads_tracing_timestamps() {
    let at = |s: &str| log_time(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
    assert_eq!(
        at("1970-01-01T00:00:00.000001Z  INFO x"),
        Some(Duration::from_micros(1))
    );
    assert_eq!(
        at("2000-03-01T00:00:00Z x"),
        Some(Duration::from_secs(951_868_800))
    );
    assert_eq!(
        at("2026-12-01T22:51:33.113013Z  INFO hello: hello starting pid=1"),
        Some(Duration::new(1_796_165_493, 113_013_000))
    );
    assert_eq!(at("hello starting pid=1"), None);
}

// ---------------------------------------------------------------------------------------
// 1. Servers started one after another
// ---------------------------------------------------------------------------------------

/// Two servers, the second started 800 ms after the first in every generation. A new
/// generation serves the first address long before the second; until it serves both
/// it is not ready, so the old one keeps the second address served. Under a load of
/// fresh connections on the second address, three restarts refuse no connect, fail no
/// request, and the second address is served from one listening socket throughout.
#[test]
fn staggered_servers_hand_over_without_a_gap() {
    become_subreaper();
    let (_dir, app) = installed("stagger", "hello");
    let ports = free_ports(2);
    let [a, b] = [0, 1].map(|i| format!("127.0.0.1:{}", ports[i]));
    let p = Proc::spawn(&app, &["--addr", &a, "--addr", &b, "--stagger-ms", "800"]);
    let gen1 = p.pid;
    wait_ready(&p, gen1);
    let mut served = serving_addrs(&p, gen1);
    served.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(served, want, "the first generation serves both addresses");
    let inode_a = listen_inode(ports[0]).expect("A's listening socket in /proc/net/tcp");
    let inode_b = listen_inode(ports[1]).expect("B's listening socket in /proc/net/tcp");
    let watch = Watch::start(Duration::from_millis(10), {
        let port = ports[1];
        move || listen_inode(port)
    });

    let b_addr: SocketAddr = b.parse().unwrap();
    let load = Load::start("stagger", || {
        (0..8).map(|_| Client::FreshTcp(b_addr)).collect()
    });
    load.expect(only(gen1));
    load.wait_checked(100, "before the first restart");
    let mut gens = vec![gen1];
    for i in 1..=3 {
        load.expect(anyone());
        let (old, new) = restart_ok(&p);
        assert_eq!(old, *gens.last().unwrap(), "restart {i}");
        let mut served = serving_addrs(&p, new);
        served.sort();
        assert_eq!(served, want, "restart {i}: the new generation serves both");
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        load.expect(only(new));
        load.wait_checked(100, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }
    let summary = load.stop();
    let (seen, samples) = watch.stop();
    assert_no_failures(&summary, "stagger");
    println!(
        "[stagger] 3 restarts of two servers 800 ms apart, generations {gens:?}: {} requests \
         on fresh connections to B, {} failed, {} refused; B's listening inode over {samples} \
         samples: {seen:?}",
        summary.ok, summary.failed, summary.refused
    );
    assert_eq!(
        seen,
        BTreeSet::from([Some(inode_b)]),
        "B's listening socket changed or vanished during the restarts (first {inode_b})"
    );
    assert_eq!(
        listen_inode(ports[0]),
        Some(inode_a),
        "A's listening socket"
    );
    let last = *gens.last().unwrap();
    signal(last, libc::SIGTERM);
    expect_gone(&p, last, "the last generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 2. A new generation that warms up before it serves
// ---------------------------------------------------------------------------------------

/// Every generation waits 1.5 s before it starts its server. After the SIGHUP the old
/// generation answers everything while the new one warms up; the new one answers
/// nothing before it serves. The order is read on the one clock both sides share: each
/// response's arrival (taken by the client) against the new generation's own log
/// timestamps.
#[test]
fn warmup_keeps_the_old_generation_answering() {
    become_subreaper();
    let (_dir, app) = installed("warmup", "hello");
    let spawned_at = SystemTime::now();
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0", "--warmup-ms", "1500"]);
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let gen1 = p.pid;
    wait_ready(&p, gen1);
    // The log's clock is the test's clock (and the timestamps parse): the first
    // generation started after the spawn, and before now.
    let started1 = logged_at(&p, "hello starting", gen1);
    assert!(
        spawned_at <= started1 && started1 <= SystemTime::now(),
        "the log's timestamps are not on the test's clock: spawned at {spawned_at:?}, \
         logged {started1:?}"
    );

    // Every response: who answered, and when it arrived.
    let arrivals: Arc<Mutex<Vec<(u32, SystemTime)>>> = Arc::default();
    let check: BodyCheck = {
        let arrivals = arrivals.clone();
        Arc::new(move |body: &str| {
            let at = SystemTime::now();
            let pid = body_pid(body).ok_or_else(|| format!("no pid in {body:?}"))?;
            arrivals.lock().unwrap().push((pid, at));
            Ok(())
        })
    };
    let load = Load::start_checked("warmup", Some(check), || {
        let mut c: Vec<Client> = (0..6).map(|_| Client::FreshTcp(addr)).collect();
        c.extend((0..2).map(|_| Client::Tcp(addr)));
        c.extend(shared_client(
            reqwest_client(false),
            &format!("http://{addr}/"),
            2,
        ));
        c
    });
    load.expect(only(gen1));
    load.wait_checked(100, "before the restart");
    load.expect(anyone());
    let (old, new) = restart_ok(&p);
    assert_eq!(old, gen1);
    expect_gone(&p, old, "the old generation");
    load.expect(only(new));
    load.wait_checked(100, "after the restart");
    let summary = load.stop();
    assert_no_failures(&summary, "warmup");

    let started = logged_at(&p, "hello starting", new);
    let serving = logged_at(&p, "serving pid=", new);
    let ready = logged_at(&p, "declared ready", new);
    let arrivals = arrivals.lock().unwrap();
    let by_old_in_warmup = arrivals
        .iter()
        .filter(|(pid, at)| *pid == old && started <= *at && *at <= serving)
        .count();
    let by_new: Vec<SystemTime> = arrivals
        .iter()
        .filter(|(pid, _)| *pid == new)
        .map(|(_, at)| *at)
        .collect();
    let first_new = by_new.iter().min().copied();
    let before_serving = by_new.iter().filter(|at| **at < serving).count();
    let before_ready = by_new.iter().filter(|at| **at < ready).count();
    println!(
        "[warmup] new generation {new}: {by_old_in_warmup} responses from the old one while it \
         warmed up; {} from it, {before_serving} of them before its serving line, \
         {before_ready} before its ready line",
        by_new.len()
    );
    assert!(
        by_old_in_warmup > 0,
        "the old generation answered nothing between the new one's start and its serving \
         line; output:\n{}",
        p.output()
    );
    assert_eq!(
        before_serving, 0,
        "{before_serving} responses from the new generation arrived before it logged serving \
         (first at {first_new:?}, serving at {serving:?}): it accepted during its warm-up"
    );
    assert!(!by_new.is_empty(), "the new generation never answered");
    signal(new, libc::SIGTERM);
    expect_gone(&p, new, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 3. A Unix socket named by a relative path
// ---------------------------------------------------------------------------------------

/// A scratch directory short enough that `<dir>/<name>` fits in a Unix socket address.
fn short_scratch_dir(tag: &str, name: &str) -> PathBuf {
    let dir = scratch_dir(tag);
    if dir.join(name).as_os_str().len() < 100 {
        return dir;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ceaseless-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--addr unix:rel.sock`, relative to the working directory: every generation (started
/// by the one before, in the same directory) serves the same socket file, which keeps
/// its inode across three restarts, answers throughout, and goes at the final SIGTERM.
#[test]
fn relative_unix_socket_path_survives_restarts() {
    become_subreaper();
    let dir = short_scratch_dir("unix-rel", "rel.sock");
    let app = dir.join("app");
    install(&example_bin("hello"), &app);
    let sock = dir.join("rel.sock");
    let mut cmd = Command::new(&app);
    cmd.current_dir(&dir).args(["--addr", "unix:rel.sock"]);
    let p = Proc::spawn_with(&mut cmd);
    let gen1 = p.pid;
    wait_ready(&p, gen1);
    assert!(
        unix_socket_exists(&sock),
        "no socket at {} (the working directory); output:\n{}",
        sock.display(),
        p.output()
    );
    let ino = file_inode(&sock).unwrap();
    assert_eq!(body_pid(&get_unix(&sock, "/").body), Some(gen1));
    let watch = Watch::start(Duration::from_millis(5), {
        let sock = sock.clone();
        move || file_inode(&sock)
    });

    let load = Load::start("unix-rel", || {
        let mut c: Vec<Client> = (0..4).map(|_| Client::Unix(sock.clone())).collect();
        c.extend((0..4).map(|_| Client::FreshUnix(sock.clone())));
        c
    });
    load.expect(only(gen1));
    load.wait_checked(100, "before the first restart");
    let mut gens = vec![gen1];
    for i in 1..=3 {
        load.expect(anyone());
        let (old, new) = restart_ok(&p);
        assert_eq!(old, *gens.last().unwrap(), "restart {i}");
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        assert_eq!(
            file_inode(&sock),
            Some(ino),
            "restart {i}: the socket file was replaced or removed"
        );
        load.expect(only(new));
        load.wait_checked(100, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }
    let summary = load.stop();
    let (seen, samples) = watch.stop();
    assert_no_failures(&summary, "unix-rel");
    println!(
        "[unix-rel] 3 restarts on unix:rel.sock, generations {gens:?}; the file's inode over \
         {samples} samples: {seen:?}"
    );
    assert_eq!(
        seen,
        BTreeSet::from([Some(ino)]),
        "the socket file changed or vanished during the restarts (first inode {ino})"
    );
    let last = *gens.last().unwrap();
    assert_eq!(body_pid(&get_unix(&sock, "/").body), Some(last));
    signal(last, libc::SIGTERM);
    expect_gone(&p, last, "the last generation after SIGTERM");
    assert!(
        file_inode(&sock).is_none(),
        "the socket file outlived the final shutdown; output:\n{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// 4. SIGTERM during a restart
// ---------------------------------------------------------------------------------------

/// One hello with a Unix socket, a TCP port, a control socket and a PID file.
struct Service {
    dir: PathBuf,
    app: PathBuf,
    sock: PathBuf,
    control: PathBuf,
    pid_file: PathBuf,
    p: Proc,
    tcp: String,
}

impl Service {
    fn start(tag: &str, extra: &[&str]) -> Service {
        let (dir, app) = installed(tag, "hello");
        let sock = socket_path(&dir, "s.sock");
        let control = socket_path(&dir, "ctl.sock");
        let pid_file = dir.join("hello.pid");
        let spec = format!("unix:{}", sock.display());
        let (c, f) = (control.to_str().unwrap(), pid_file.to_str().unwrap());
        let mut args = vec![
            "--addr",
            &spec,
            "--addr",
            "127.0.0.1:0",
            "--control",
            c,
            "--pid-file",
            f,
        ];
        args.extend_from_slice(extra);
        let p = Proc::spawn(&app, &args);
        wait_ready(&p, p.pid);
        let tcp = serving_addrs(&p, p.pid)
            .into_iter()
            .find(|a| !a.starts_with("unix:"))
            .unwrap_or_else(|| panic!("no TCP server; output:\n{}", p.output()));
        Service {
            dir,
            app,
            sock,
            control,
            pid_file,
            p,
            tcp,
        }
    }

    fn app_name(&self) -> String {
        self.app.to_string_lossy().into_owned()
    }

    /// Generation `pid` is the one live generation, and everything it owns works: both
    /// servers answer from it, its PID file names it, its control socket restarts it.
    /// Returns the generation that restart started.
    fn assert_live(&self, pid: u32, what: &str) -> u32 {
        let p = &self.p;
        assert!(alive(pid), "{what}: pid {pid} is not alive");
        assert!(
            unix_socket_exists(&self.sock),
            "{what}: the Unix socket file is gone; output:\n{}",
            p.output()
        );
        assert_eq!(
            body_pid(&get_unix(&self.sock, "/").body),
            Some(pid),
            "{what}: the Unix socket"
        );
        assert_eq!(
            body_pid(&get_tcp(&self.tcp, "/").body),
            Some(pid),
            "{what}: TCP"
        );
        assert_eq!(
            pid_file_names(&self.pid_file, pid),
            Some(pid),
            "{what}: the PID file"
        );
        assert!(
            unix_socket_exists(&self.control),
            "{what}: the control socket is gone; output:\n{}",
            p.output()
        );
        let next = restarted(&control_restart(&self.app, &self.control), p);
        expect_gone(
            p,
            pid,
            &format!("{what}: the generation restarted by control"),
        );
        assert_eq!(
            body_pid(&get_unix(&self.sock, "/").body),
            Some(next),
            "{what}: after the restart by control"
        );
        next
    }

    /// SIGTERM to `pid`, the last generation: it exits, and every file goes with it.
    fn stop_and_assert_clean(&self, pid: u32, what: &str) {
        signal(pid, libc::SIGTERM);
        expect_gone(&self.p, pid, what);
        assert!(self.p.wait_closed(LONG), "{what}: output still open");
        self.assert_no_files(what);
    }

    fn assert_no_files(&self, what: &str) {
        for (f, name) in [
            (&self.sock, "the Unix socket file"),
            (&self.control, "the control socket"),
            (&self.pid_file, "the PID file"),
        ] {
            assert!(
                file_inode(f).is_none(),
                "{what}: {name} {} is left; output:\n{}",
                f.display(),
                self.p.output()
            );
        }
    }
}

/// How a SIGTERM during a restart ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The restart committed first: the new generation lives on.
    Live(u32),
    /// The restart was aborted: nothing is left.
    Nothing,
}

/// SIGTERM to the old generation at several offsets after its SIGHUP. Before the
/// handover commits, TERM aborts the restart: the new generation is told to stop, the
/// old one shuts down, no process is left and no file either. After the commit, TERM
/// is ignored (the old one drains already): the new generation lives, with its files.
/// Either way the end state is one of these two, never a mix.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn sigterm_to_the_old_generation_during_a_restart() {
    become_subreaper();
    let mut ends = Vec::new();
    for offset in [0u64, 2, 5, 10, 20, 40, 80] {
        let what = format!("TERM {offset} ms after HUP");
        let s = Service::start(&format!("term-old-{offset}"), &[]);
        let p = &s.p;
        let old = p.pid;
        assert_eq!(body_pid(&get_unix(&s.sock, "/").body), Some(old));
        signal(old, libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(offset));
        signal(old, libc::SIGTERM);

        // Settle: the old generation gone, and either nothing left, or exactly one
        // generation, the one the old handed over to.
        let app_name = s.app_name();
        let deadline = Instant::now() + LONG;
        let end = loop {
            let live = live_processes_named(&app_name);
            if !alive(old) {
                if live.is_empty() {
                    break End::Nothing;
                }
                if let [x] = live[..] {
                    if handed_over_to(p, old) == Some(x) {
                        break End::Live(x);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: did not settle within {LONG:?}: live {live:?}; output:\n{}",
                p.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        expect_gone(p, old, &what);
        let started = started_by(p, old);
        match end {
            End::Live(new) => {
                let next = s.assert_live(new, &what);
                s.stop_and_assert_clean(next, &format!("{what}: the final SIGTERM"));
            }
            End::Nothing => {
                // Everything they printed is in: no handover was logged, so the end
                // state is the aborted restart's (or no restart at all).
                assert!(p.wait_closed(LONG), "{what}: output still open");
                assert_eq!(
                    handed_over_to(p, old),
                    None,
                    "{what}: the restart committed, yet no generation lives; output:\n{}",
                    p.output()
                );
                for g in &started {
                    expect_gone(p, *g, &format!("{what}: the aborted new generation"));
                    assert!(reaped(*g), "{what}: the aborted generation {g} is a zombie");
                }
                s.assert_no_files(&what);
            }
        }
        println!(
            "[term old] {what}: {end:?}; generations started by the old one: {started:?}; \
             dir {}",
            s.dir.display()
        );
        ends.push((offset, end));
    }
    println!("[term old] end states by offset: {ends:?}");
}

/// SIGTERM to the new generation while it warms up (1 s, so it is surely not ready):
/// it exits without touching any file, the restart fails, and the old generation
/// carries on with its sockets, its control socket and its PID file. Several offsets
/// on the same old generation; at the end its control socket still restarts it.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn sigterm_to_the_new_generation_before_it_is_ready() {
    become_subreaper();
    let s = Service::start("term-new", &["--warmup-ms", "1000"]);
    let p = &s.p;
    let old = p.pid;
    for offset in [0u64, 20, 100, 300] {
        let what = format!("TERM to the new generation {offset} ms after it started");
        let (starts, failed) = (p.count("hello starting"), p.count("restart failed"));
        signal(old, libc::SIGHUP);
        let line = p
            .wait_for_nth("hello starting", starts + 1, LONG)
            .unwrap_or_else(|| panic!("{what}: no new generation; output:\n{}", p.output()));
        let new = pid_field(&line, "pid");
        assert_ne!(new, old);
        std::thread::sleep(Duration::from_millis(offset));
        signal(new, libc::SIGTERM);
        let verdict = p
            .wait_for_nth("restart failed", failed + 1, LONG)
            .unwrap_or_else(|| panic!("{what}: the restart did not fail; output:\n{}", p.output()));
        assert_eq!(pid_field(&verdict, "pid"), old, "{verdict}");
        expect_gone(p, new, &what);
        expect_reaped(p, new, &what);
        assert!(
            lines_of(p, "declared ready", new).is_empty(),
            "{what}: the new generation was ready after all; the premise fails; output:\n{}",
            p.output()
        );
        assert_eq!(handed_over_to(p, old), None, "{what}");
        assert_eq!(
            live_processes_named(&s.app_name()),
            vec![old],
            "{what}: processes left"
        );
        assert_eq!(children_of(old), vec![], "{what}: children left");
        assert!(
            unix_socket_exists(&s.sock),
            "{what}: the Unix socket file is gone"
        );
        assert!(
            unix_socket_exists(&s.control),
            "{what}: the control socket is gone"
        );
        std::os::unix::net::UnixStream::connect(&s.control)
            .unwrap_or_else(|e| panic!("{what}: the control socket does not connect: {e}"));
        assert_eq!(
            pid_file_names(&s.pid_file, old),
            Some(old),
            "{what}: the PID file"
        );
        assert_eq!(body_pid(&get_unix(&s.sock, "/").body), Some(old), "{what}");
        assert_eq!(body_pid(&get_tcp(&s.tcp, "/").body), Some(old), "{what}");
        println!("[term new] {what}: pid {new} gone; {verdict}");
    }
    // The old generation is whole: its control socket restarts it.
    let next = s.assert_live(old, "after the aborted restarts");
    s.stop_and_assert_clean(next, "the final SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 5. axum::serve on a listener from ceaseless
// ---------------------------------------------------------------------------------------

/// axum's own `axum::serve(listener, app).with_graceful_shutdown(..)` on a listener
/// from ceaseless: under load, three restarts hand its socket over (the same listening
/// socket throughout), each old generation says it handed over to the next, and the
/// last one, on SIGTERM, says it shut down and exits 0.
///
/// Not zero failed requests: axum's graceful shutdown closes, at once, every
/// connection it is not answering on (an idle keep-alive connection whose client is
/// sending its next request, a connection accepted but not read yet), so a client can
/// lose the one request it had in flight there. That is axum::serve's own behaviour
/// (plain axum::serve on a shared socket, without ceaseless, loses requests the same
/// way). What ceaseless answers for is held strictly: no connect is ever refused, no
/// gone generation answers, and no client loses more than that one request per
/// restart (a gap in the handover would make every client fail again and again).
#[test]
fn axum_serve_restarts_under_load() {
    become_subreaper();
    let (_dir, app) = installed("axum-serve", "axum_serve");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let gen1 = newest(&p);
    assert_eq!(body_pid(&get_tcp(&addr.to_string(), "/").body), Some(gen1));
    let inode = listen_inode(addr.port()).expect("the listening socket in /proc/net/tcp");

    // Clients 0-7: pooled reqwest (HTTP/1.1); 8-11: raw keep-alive connections, which
    // reconnect only after Connection: close; 12-15: a new connection per request.
    let load = Load::start("axum-serve", || {
        let mut c = shared_client(reqwest_client(false), &format!("http://{addr}/"), 8);
        c.extend((0..4).map(|_| Client::Tcp(addr)));
        c.extend((0..4).map(|_| Client::FreshTcp(addr)));
        c
    });
    load.expect(only(gen1));
    load.wait_checked(200, "before the first restart");
    let mut gens = vec![gen1];
    for i in 1..=3 {
        load.expect(anyone());
        let (old, new) = restart_ok(&p);
        assert_eq!(old, *gens.last().unwrap(), "restart {i}");
        assert_eq!(
            listen_inode(addr.port()),
            Some(inode),
            "restart {i}: served from another socket"
        );
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        let exit = wait_line_of(&p, "axum_serve exiting", old);
        assert!(
            exit.contains(&format!("handed over to pid {new}")),
            "restart {i}: the old generation's exit line: {exit}"
        );
        load.expect(only(new));
        load.wait_checked(200, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }
    let summary = load.stop();
    summary.print("axum-serve");
    println!(
        "[axum-serve] failed requests by client (0-7 pooled, 8-11 keep-alive, 12-15 \
         fresh connections): {:?}; first problems:\n  {}",
        summary.failed_by,
        summary.notes.join("\n  ")
    );
    assert_eq!(
        summary.refused,
        0,
        "connects were refused: a moment when nothing listened; first problems:\n  {}",
        summary.notes.join("\n  ")
    );
    assert_eq!(
        summary.wrong,
        0,
        "answers from a generation that should be gone; first problems:\n  {}",
        summary.notes.join("\n  ")
    );
    assert!(summary.ok > 0, "no request was answered");
    let restarts = (gens.len() - 1) as u64;
    for (client, n) in &summary.failed_by {
        assert!(
            *n <= restarts,
            "{client} lost {n} requests in {restarts} restarts: more than the one in flight \
             on a connection axum closed; first problems:\n  {}",
            summary.notes.join("\n  ")
        );
    }

    let last = *gens.last().unwrap();
    signal(last, libc::SIGTERM);
    let status = wait_status(last, LONG).unwrap_or_else(|| {
        panic!(
            "the last generation {last} did not exit after SIGTERM; output:\n{}",
            p.output()
        )
    });
    let exit = wait_line_of(&p, "axum_serve exiting", last);
    println!("[axum-serve] generations {gens:?}; last: {status}; {exit}");
    assert!(status.success(), "the last generation exited with {status}");
    assert_eq!(
        field(&exit, "ended").as_deref(),
        Some("shutdown"),
        "the last generation's exit line: {exit}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A new generation that accepts but never becomes ready
// ---------------------------------------------------------------------------------------

/// A deploy whose new generation serves (it accepts connections on the inherited
/// socket, answering some of the load) but never reports ready. The old generation's
/// ready timeout fails the restart; the new one is told to stop and answers what it
/// accepted, so no request fails; it is gone and reaped, and the old generation carries
/// on alone.
#[test]
fn never_ready_generation_is_stopped_without_losing_requests() {
    become_subreaper();
    let dir = scratch_dir("never-ready");
    let hello = dir.join("hello-bin");
    install(&example_bin("hello"), &hello);
    let app = dir.join("app");
    install(&hello, &app);
    let p = Proc::spawn(
        &app,
        &["--addr", "127.0.0.1:0", "--ready-timeout-ms", "2000"],
    );
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let gen1 = p.pid;
    wait_ready(&p, gen1);

    let load = Load::start("never-ready", || {
        (0..8).map(|_| Client::FreshTcp(addr)).collect()
    });
    load.expect(only(gen1));
    load.wait_checked(200, "before the deploy");

    install_script(
        &app,
        &format!("#!/bin/sh\nexec '{}' \"$@\" --no-ready\n", hello.display()),
    );
    load.expect(anyone());
    let line = restart_fails(&p);
    assert!(
        line.contains("did not take over within"),
        "the failure should name the ready timeout: {line}"
    );
    let never = *started_by(&p, gen1)
        .last()
        .unwrap_or_else(|| panic!("no new generation was started; output:\n{}", p.output()));
    assert!(
        !lines_of(&p, "serving pid=", never).is_empty(),
        "the never-ready generation never served; output:\n{}",
        p.output()
    );
    expect_gone(&p, never, "the never-ready generation");
    expect_reaped(&p, never, "the never-ready generation");
    assert!(alive(gen1), "the old generation died");
    assert_eq!(
        children_of(gen1),
        vec![],
        "the old generation has children left"
    );
    let dir_name = dir.to_string_lossy().into_owned();
    assert_eq!(
        live_processes_named(&dir_name),
        vec![gen1],
        "processes left"
    );
    load.expect(only(gen1));
    load.wait_checked(200, "after the failed restart");
    let summary = load.stop();
    assert_no_failures(&summary, "never-ready");
    let by_never = summary.by_pid.get(&never).copied().unwrap_or(0);
    println!("[never-ready] pid {never} answered {by_never} requests; {line}");
    assert!(
        by_never > 0,
        "the never-ready generation answered nothing: did it accept? responses by pid: {:?}",
        summary.by_pid
    );
    assert_eq!(body_pid(&get_tcp(&addr.to_string(), "/").body), Some(gen1));
    signal(gen1, libc::SIGTERM);
    expect_gone(&p, gen1, "the old generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// A deploy that flips a `current -> releases/N` symlink
// ---------------------------------------------------------------------------------------

/// Started from inside `current` (a symlink to `releases/1`) as `./app`, the way a
/// service started with `WorkingDirectory=/srv/app/current` is: after the deploy flips
/// the symlink to `releases/2`, a restart runs the new release, because the start
/// directory is the logical one (`$PWD`), not the physical `releases/1`.
#[test]
fn a_deploy_that_flips_a_current_symlink_restarts_the_new_release() {
    let builds = common::versioned_hellos(&["v1", "v2"]);
    become_subreaper();
    let dir = scratch_dir("symlink");
    for (i, build) in builds.iter().enumerate() {
        let release = dir.join("releases").join((i + 1).to_string());
        std::fs::create_dir_all(&release).unwrap();
        install(build, &release.join("app"));
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink("releases/1", &current).unwrap();
    let mut cmd = Command::new("./app");
    cmd.current_dir(&current)
        .env("PWD", &current)
        .args(["--addr", "127.0.0.1:0"]);
    let p = Proc::spawn_with(&mut cmd);
    let addr = p.serving_addr(1);
    assert_eq!(common::generations::hello_version(&p, p.pid), "v1");

    // The deploy: a new symlink renamed over the old one.
    let flipping = dir.join("current.new");
    std::os::unix::fs::symlink("releases/2", &flipping).unwrap();
    std::fs::rename(&flipping, &current).unwrap();
    let (_, new) = restart_ok(&p);
    let version = common::generations::hello_version(&p, new);
    println!("[symlink] after the flip, pid {new} runs {version}");
    assert_eq!(version, "v2", "the restart ran the old release");
    assert!(get_tcp(&addr, "/").body.contains("version v2"));
    expect_gone(&p, p.pid, "the first generation");
    signal(new, libc::SIGTERM);
    expect_gone(&p, new, "the second generation");
}

// ---------------------------------------------------------------------------------------
// Tracing: every connection's span names its peer, protocol and generation
// ---------------------------------------------------------------------------------------

/// `GET /log` over a connection whose port the test knows: the handler's log line
/// carries the connection's span, which names the peer, the protocol and the generation
/// number (1, then 2 after a restart).
#[test]
fn a_log_line_names_its_connection_and_generation() {
    use std::io::{Read, Write};
    become_subreaper();
    let (_dir, app) = installed("spans", "hello");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let log_through = |generation: u32| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"GET /log HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
        let want = format!("conn{{peer={me} generation={generation} proto=HTTP/1.1}}");
        let line = p.expect_line(&want, LONG);
        assert!(line.contains("handling /log"), "{line}");
        println!("[spans] {line}");
    };
    // Over HTTP/2 the handler runs in a task of its own per stream: it still logs in
    // its connection's span.
    let log_through_h2 = |generation: u32| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (me, status) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let me = tcp.local_addr().unwrap();
            let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = http::Request::get(format!("http://{addr}/log"))
                .body(())
                .unwrap();
            let (res, _) = client.send_request(req, true).unwrap();
            (me, res.await.unwrap().status())
        });
        assert_eq!(status, 200);
        let want = format!("conn{{peer={me} generation={generation} proto=HTTP/2.0}}");
        let line = p.expect_line(&want, LONG);
        assert!(line.contains("handling /log"), "{line}");
        println!("[spans] {line}");
    };
    log_through(1);
    log_through_h2(1);
    let (_, new) = restart_ok(&p);
    expect_gone(&p, p.pid, "the first generation");
    log_through(2);
    log_through_h2(2);
    signal(new, libc::SIGTERM);
    expect_gone(&p, new, "the second generation");
}

/// axum::serve's connections are bounded too: a generation whose stream outlives the
/// process owner's hammer time exits, cutting it, and says so; a restart is not held
/// up by it. The extractors on that path: `Drain` is the process's, `ConnInfo` answers
/// 500 with what to change.
#[test]
fn axum_serve_is_cut_at_hammer_time_and_its_extractors_say_what_to_do() {
    use std::io::{BufRead, BufReader, Write};
    become_subreaper();
    let (_dir, app) = installed("axum-hammer", "axum_serve");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0", "--hammer-ms", "500"]);
    let addr = p.serving_addr(1);
    let old = newest(&p);

    if cfg!(feature = "axum") {
        let r = get_tcp(&addr, "/drain");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "served: None\n"),
            "{r:?}"
        );
        let r = get_tcp(&addr, "/conn");
        assert_eq!(r.status, 500, "{r:?}");
        assert!(r.body.contains("ceaseless::serve(listener, app)"), "{r:?}");
    }

    // A stream of the old generation, open across the restart.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !line.contains("tick") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream ended at once"
        );
    }
    assert!(line.contains(&format!("from pid {old}")), "{line}");

    let (was, new) = restart_ok(&p);
    assert_eq!(was, old);
    let cut = wait_line_of(&p, "[STOP - Hammer Time]", old);
    expect_gone(&p, old, "the old generation, at its hammer time");
    // (axum's accept loop may still take a connection or two right after the commit,
    // before its graceful shutdown stops it; once the old generation is gone, the new
    // one alone answers.)
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(new));
    // The stream ends with it: the rest of what was sent, then the end.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    assert!(
        !rest.contains(&format!("from pid {new}")),
        "the stream moved to the new generation?"
    );
    println!("[axum-hammer] {cut}");
}
