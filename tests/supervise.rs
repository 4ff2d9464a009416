//! Stable PID (the supervisor) and bounded draining generations, proved with real
//! processes, real signals and real clients: restarts under load with version swaps
//! through a supervisor whose pid never changes, a generation killed and started again,
//! a crashing deploy rolled back, a shutdown that drains, the supervisor as PID 1 of a
//! PID namespace, `cargo run`, quick restarts with long-lived connections that never
//! leave more draining generations than the bound, and socket activation of the
//! supervisor.
//!
//! Nothing here asserts on timing: every wait is bounded and generous.
#![cfg(unix)]

mod common;

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::generations::{
    children_of, expect_gone, install, install_script, installed, listen_inode, newest, pid_field,
    LONG,
};
use common::load::{
    body_pid, connect_tcp, exchange_blocking, get_tcp, get_unix, reqwest_client, shared_client,
    Client, Expect, Load,
};
use common::{
    alive, become_subreaper, environ, holds, pass_fds, scratch_dir, signal, socket_inode,
    versioned_hellos, Proc,
};

/// The versions the tests deploy, in turn. The last one built is the one `cargo run`
/// finds fresh (see `cargo_run_keeps_the_terminal`).
const VERSIONS: [&str; 2] = ["sup-a", "sup-b"];

/// SIGHUPs the supervisor and waits for the restart to succeed and for the supervisor
/// to know the new generation as live. Returns (old pid, new pid).
fn sup_restart(p: &Proc) -> (u32, u32) {
    let succeeded = p.count("restart succeeded");
    let failed = p.count("restart failed");
    signal(p.pid, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart succeeded", succeeded + 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "restart #{} through the supervisor did not succeed; output:\n{}",
                succeeded + 1,
                p.output()
            )
        });
    let (old, new) = (pid_field(&line, "pid"), pid_field(&line, "new_pid"));
    wait_sup_live(p, p.pid, new);
    assert_eq!(p.count("restart failed"), failed, "{}", p.output());
    (old, new)
}

/// SIGHUPs generation `gen` (no supervisor) and waits for its restart to succeed and
/// the new generation to log that it is live. Returns (old pid, new pid).
fn reexec_restart(p: &Proc, gen: u32) -> (u32, u32) {
    let succeeded = p.count("restart succeeded");
    signal(gen, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart succeeded", succeeded + 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "the restart of {gen} did not succeed; output:\n{}",
                p.output()
            )
        });
    let (old, new) = (pid_field(&line, "pid"), pid_field(&line, "new_pid"));
    // Live, not only serving: a SIGHUP before the previous generation's word is refused
    // (its own restart is not over).
    p.expect_line(&format!("this generation is live pid={new} "), LONG);
    (old, new)
}

/// Waits until supervisor `sup` logs that generation `gen` is live.
fn wait_sup_live(p: &Proc, sup: u32, gen: u32) {
    let pat = format!("the generation is live pid={sup} generation_pid={gen} ");
    p.wait_for_nth(&pat, 1, LONG).unwrap_or_else(|| {
        panic!(
            "the supervisor never saw {gen} live; output:\n{}",
            p.output()
        )
    });
}

fn pid_file_names(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn refuses(port: u16) -> bool {
    matches!(
        StdTcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// read(2), retried when a signal interrupts it (the test process takes SIGCHLD as
/// the subreaper of many processes).
fn read_some(s: &mut StdTcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Restarts under load: the pid never changes
// ---------------------------------------------------------------------------------------

#[test]
fn supervisor_keeps_its_pid_through_restarts_under_load() {
    let builds = versioned_hellos(&VERSIONS);
    let dir = scratch_dir("sup-load");
    let app = dir.join("app");
    let pid_file = dir.join("app.pid");
    install(&builds[0], &app);
    let mut p = Proc::spawn(
        &app,
        &[
            "--supervise",
            "--addr",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let first = newest(&p);
    wait_sup_live(&p, p.pid, first);
    assert_ne!(
        first, p.pid,
        "the server runs in a generation, not in the supervisor"
    );
    assert_eq!(
        pid_file_names(&pid_file),
        Some(p.pid),
        "the PID file names the supervisor"
    );

    let load = Load::start("sup-load", || {
        let mut c = vec![
            Client::FreshTcp(addr),
            Client::FreshTcp(addr),
            Client::Tcp(addr),
            Client::Tcp(addr),
        ];
        c.extend(shared_client(
            reqwest_client(false),
            &format!("http://{addr}/"),
            2,
        ));
        c
    });
    load.expect(Some(Expect {
        pid: first,
        version: Some(VERSIONS[0].into()),
    }));
    load.wait_checked(20, "before any restart");
    for i in 1..=10 {
        let version = VERSIONS[i % VERSIONS.len()];
        install(&builds[i % builds.len()], &app);
        load.expect(None);
        let (old, new) = sup_restart(&p);
        expect_gone(&p, old, "the old generation after its drain");
        load.expect(Some(Expect {
            pid: new,
            version: Some(version.into()),
        }));
        load.wait_checked(20, &format!("after restart {i}"));
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "the supervisor exited at restart {i}; output:\n{}",
            p.output()
        );
        assert_eq!(pid_file_names(&pid_file), Some(p.pid), "restart {i}");
    }
    let summary = load.stop();
    summary.print("sup-load");
    summary.assert_clean("sup-load");
    // The supervisor is the only process the shell started, and it is still there.
    assert!(alive(p.pid));
    assert_eq!(
        p.count("supervisor: started a generation"),
        1,
        "no crash restart"
    );
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", p.pid))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()));
    let threads = std::fs::read_dir(format!("/proc/{}/task", p.pid))
        .unwrap()
        .count();
    println!("[sup-load] supervisor RSS {rss_kb:?}, {threads} thread(s)");
    assert_eq!(threads, 1, "the supervisor runs one thread");
}

// ---------------------------------------------------------------------------------------
// Crashes: a killed generation comes back; a crashing deploy changes nothing
// ---------------------------------------------------------------------------------------

#[test]
fn a_killed_generation_comes_back_and_a_crashing_deploy_changes_nothing() {
    let (_dir, app) = installed("sup-crash", "hello");
    let p = Proc::spawn(&app, &["--supervise", "--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let inode = listen_inode(port).expect("a listening socket");
    let first = newest(&p);
    wait_sup_live(&p, p.pid, first);
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(first));

    signal(first, libc::SIGKILL);
    let why = p
        .wait_for_nth("died outside a restart", 1, LONG)
        .unwrap_or_else(|| panic!("the supervisor never noticed; output:\n{}", p.output()));
    assert!(why.contains("SIGKILL"), "{why}");
    let line = p
        .wait_for_nth(&format!("the generation is live pid={} ", p.pid), 2, LONG)
        .unwrap_or_else(|| panic!("no generation came back; output:\n{}", p.output()));
    let second = pid_field(&line, "generation_pid");
    assert_ne!(second, first);
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(second)));
    assert_eq!(
        listen_inode(port),
        Some(inode),
        "the generation started again serves the very same socket"
    );

    // A deploy whose binary crashes at start: the restart fails, the generation serves on.
    install_script(&app, "#!/bin/sh\necho 'crashing at start' >&2\nexit 3\n");
    signal(p.pid, libc::SIGHUP);
    let failed = p
        .wait_for_nth("restart failed", 1, LONG)
        .unwrap_or_else(|| panic!("the broken restart did not fail; output:\n{}", p.output()));
    assert!(failed.contains("exited"), "{failed}");
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(second)));
    assert!(alive(p.pid) && alive(second));
    assert_eq!(p.count("died outside a restart"), 1, "{}", p.output());
    assert_eq!(
        p.count("supervisor: started a generation"),
        2,
        "{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// Shutdown: TERM drains, exits 0, leaves nothing behind
// ---------------------------------------------------------------------------------------

/// Sends a request for a slow stream and reads its first bytes: it is in flight.
fn stream_in_flight(addr: &str, chunks: u32, every_ms: u32) -> (StdTcpStream, Vec<u8>) {
    let mut s = connect_tcp(addr).unwrap();
    write!(
        s,
        "GET /stream?chunks={chunks}&bytes=16&every_ms={every_ms} HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.contains(&b'x') {
        let n = read_some(&mut s, &mut buf).unwrap();
        assert!(n > 0, "the stream ended before its first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    (s, got)
}

#[test]
fn term_to_the_supervisor_drains_and_exits_0() {
    let (_dir, app) = installed("sup-term", "hello");
    let mut p = Proc::spawn(&app, &["--supervise", "--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    wait_sup_live(&p, p.pid, newest(&p));
    // One restart first, so the current generation is an orphan re-parented to it.
    let (_, current) = sup_restart(&p);

    let (mut s, mut got) = stream_in_flight(&addr, 10, 100);
    signal(p.pid, libc::SIGTERM);
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        match read_some(&mut s, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the stream in flight failed: {e}"),
        }
    }
    assert!(got.ends_with(b"0\r\n\r\n"), "the stream was cut short");
    assert_eq!(
        got.iter().filter(|b| **b == b'x').count(),
        160,
        "every chunk arrived"
    );
    let status = p
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the supervisor did not exit; output:\n{}", p.output()));
    assert!(status.success(), "{status:?}; output:\n{}", p.output());
    for pid in p.generation_pids() {
        assert!(!alive(pid), "generation {pid} outlived the supervisor");
    }
    assert!(!alive(current));
    assert!(
        refuses(port),
        "the address still accepts after the shutdown"
    );
    assert!(p.wait_closed(LONG), "a process still holds the output");
}

// ---------------------------------------------------------------------------------------
// PID 1 of a PID namespace
// ---------------------------------------------------------------------------------------

/// A process whose log names pids of another PID namespace: never signal those. On
/// drop, SIGKILL to the namespace's init ends every process in it.
struct Namespaced {
    p: ManuallyDrop<Proc>,
    init: Option<u32>,
}

impl std::ops::Deref for Namespaced {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.p
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        if let Some(init) = self.init {
            signal(init, libc::SIGKILL);
        }
        let _ = self.p.child.kill();
        let _ = self.p.child.wait();
        if std::thread::panicking() {
            eprintln!("--- output ---\n{}", self.p.output());
        }
    }
}

fn can_unshare_pid() -> Result<(), String> {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("unshare --pid --fork --mount-proc true: {s}")),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

#[test]
fn supervisor_as_pid_1_of_a_pid_namespace() {
    if let Err(why) = can_unshare_pid() {
        println!("skipping supervisor_as_pid_1_of_a_pid_namespace: {why}");
        return;
    }
    let (_dir, app) = installed("sup-pid1", "hello");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(&app)
        .args(["--supervise", "--addr", "127.0.0.1:0"]);
    let mut ns = Namespaced {
        p: ManuallyDrop::new(Proc::spawn_with(&mut cmd)),
        init: None,
    };
    let addr = ns.serving_addr(1);
    ns.expect_line("supervisor: started a generation pid=1 ", LONG);
    // The supervisor's pid out here: unshare's only child.
    let unshare = ns.pid;
    ns.wait_until("the namespace's init", || children_of(unshare).len() == 1);
    let init = children_of(unshare)[0].0;
    ns.init = Some(init);

    let mut gen = body_pid(&get_tcp(&addr, "/").body).unwrap();
    assert_ne!(gen, 1, "generations run under PID 1");
    for i in 1..=3 {
        let succeeded = ns.count("restart succeeded");
        signal(init, libc::SIGHUP);
        let line = ns
            .wait_for_nth("restart succeeded", succeeded + 1, LONG)
            .unwrap_or_else(|| panic!("restart {i} in the namespace failed"));
        assert_eq!(pid_field(&line, "pid"), gen);
        let new = pid_field(&line, "new_pid");
        wait_sup_live(&ns, 1, new);
        let r = get_tcp(&addr, "/");
        assert_eq!(
            (r.status, body_pid(&r.body)),
            (200, Some(new)),
            "restart {i}"
        );
        gen = new;
    }
    // Every old generation was an orphan re-parented to PID 1, and is reaped: no zombie
    // is left, and only the current generation remains.
    ns.wait_until("old generations reaped by PID 1", || {
        let kids = children_of(init);
        kids.len() == 1 && kids.iter().all(|(_, state)| state != "Z")
    });
    let in_ns = children_of(init)[0].0;

    signal(init, libc::SIGTERM);
    let status =
        ns.p.wait_exit(LONG)
            .unwrap_or_else(|| panic!("the namespace did not end; output:\n{}", ns.output()));
    assert!(status.success(), "{status:?}");
    assert!(
        !alive(init) && !alive(in_ns),
        "a process of the namespace is left"
    );
}

// ---------------------------------------------------------------------------------------
// cargo run keeps the terminal
// ---------------------------------------------------------------------------------------

#[test]
fn cargo_run_keeps_the_terminal() {
    // The last version built is the build `cargo run` finds fresh: nothing recompiles.
    versioned_hellos(&VERSIONS);
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", "hello", "--target-dir"])
        .arg(&target)
        .env("HELLO_VERSION", VERSIONS[VERSIONS.len() - 1])
        .args(["--", "--supervise", "--addr", "127.0.0.1:0"]);
    let mut p = Proc::spawn_with(&mut cmd);
    let addr = p.serving_addr(1);
    // `cargo run` became the supervisor: the pid the shell waits for.
    p.expect_line(
        &format!("supervisor: started a generation pid={} ", p.pid),
        LONG,
    );
    wait_sup_live(&p, p.pid, newest(&p));
    for i in 1..=2 {
        let (_, new) = sup_restart(&p);
        let r = get_tcp(&addr, "/");
        assert_eq!(body_pid(&r.body), Some(new), "restart {i}");
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "the shell got its prompt back"
        );
    }
    signal(p.pid, libc::SIGINT); // Ctrl-C
    let status = p.wait_exit(LONG).expect("the supervisor exits at Ctrl-C");
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------
// Bounded draining generations
// ---------------------------------------------------------------------------------------

/// A connection held open by a long stream, on the generation that answered it.
struct Held {
    s: StdTcpStream,
    pid: u32,
}

impl Held {
    fn new(addr: &str) -> Held {
        let mut s = connect_tcp(addr).unwrap();
        let r = exchange_blocking(&mut s, "/").unwrap();
        let pid = body_pid(&r.body).unwrap();
        write!(
            s,
            "GET /stream?chunks=100000&bytes=1&every_ms=50 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        assert!(read_some(&mut s, &mut buf).unwrap() > 0);
        Held { s, pid }
    }

    /// Whether the stream still flows.
    fn flows(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        matches!(read_some(&mut self.s, &mut buf), Ok(n) if n > 0)
    }

    /// Whether the connection was closed (reads until the end, bounded).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + LONG;
        while Instant::now() < deadline {
            match read_some(&mut self.s, &mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
        false
    }
}

fn bounded_draining(tag: &str, supervise: bool) {
    const MAX: usize = 2;
    become_subreaper();
    let (_dir, app) = installed(tag, "hello");
    let mut args = vec!["--addr", "127.0.0.1:0", "--max-draining", "2"];
    if supervise {
        args.push("--supervise");
    }
    let p = Proc::spawn(&app, &args);
    let addr = p.serving_addr(1);
    if supervise {
        wait_sup_live(&p, p.pid, newest(&p));
    }
    let mut held: Vec<Held> = Vec::new();
    for i in 1..=5 {
        let h = Held::new(&addr);
        assert_eq!(
            h.pid,
            newest(&p),
            "restart {i}: held on the newest generation"
        );
        held.push(h);
        let (old, _) = if supervise {
            sup_restart(&p)
        } else {
            reexec_restart(&p, held[i - 1].pid)
        };
        assert_eq!(old, held[i - 1].pid);
        let olds: Vec<u32> = held.iter().map(|h| h.pid).collect();
        p.wait_until(&format!("at most {MAX} draining after restart {i}"), || {
            olds.iter().filter(|pid| alive(**pid)).count() <= MAX
        });
    }
    // The three oldest were hammered, each by the generation whose restart exceeded the
    // bound, and their connections closed; the two newest old ones drain on.
    for h in &mut held[..3] {
        let pid = h.pid;
        let line = p
            .wait_for_nth(&format!(" hammered={pid} "), 1, LONG)
            .unwrap_or_else(|| {
                panic!(
                    "no log line says {pid} was hammered; output:\n{}",
                    p.output()
                )
            });
        assert!(line.contains("hammering the oldest"), "{line}");
        assert!(
            h.closed(),
            "the hammered generation {pid} kept its connection"
        );
        assert!(!alive(pid));
    }
    for h in &mut held[3..] {
        assert!(alive(h.pid), "{} should still drain", h.pid);
        assert!(h.flows(), "the stream on {} should still flow", h.pid);
    }
    assert_eq!(p.count("hammering the oldest"), 3, "{}", p.output());
    let r = get_tcp(&addr, "/");
    assert_eq!(body_pid(&r.body), Some(newest(&p)));
}

#[test]
fn quick_restarts_never_leave_more_draining_generations_than_the_bound() {
    bounded_draining("bound-reexec", false);
}

#[test]
fn the_bound_holds_under_the_supervisor_too() {
    bounded_draining("bound-sup", true);
}

// ---------------------------------------------------------------------------------------
// A crash loop backs off, and ends with a good deploy
// ---------------------------------------------------------------------------------------

#[test]
fn a_crash_loop_backs_off_until_a_good_build_returns() {
    let (dir, app) = installed("sup-loop", "hello");
    let good = dir.join("good");
    install(&app, &good);
    let p = Proc::spawn(&app, &["--supervise", "--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let inode = listen_inode(port).unwrap();
    let first = newest(&p);
    wait_sup_live(&p, p.pid, first);

    // A broken build lands, then the generation dies: every new start crashes.
    install_script(&app, "#!/bin/sh\necho 'crashing at start' >&2\nexit 3\n");
    signal(first, libc::SIGKILL);
    let backoffs = 4;
    p.wait_for_nth(
        "starting a generation again after a backoff",
        backoffs + 1,
        LONG,
    )
    .unwrap_or_else(|| panic!("no crash loop; output:\n{}", p.output()));
    let delays: Vec<u64> = p
        .output()
        .lines()
        .filter(|l| l.contains("starting a generation again after a backoff"))
        .map(|l| common::field(l, "delay_ms").unwrap().parse().unwrap())
        .collect();
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "the backoff grows: {delays:?}"
    );
    assert!(
        p.output().contains("why=exited with status 3"),
        "the log says why; output:\n{}",
        p.output()
    );
    // Meanwhile the supervisor holds the socket: a client waits in the accept queue
    // rather than being refused, and the good build, back at the path, answers it.
    let waiting = std::thread::spawn({
        let addr = addr.clone();
        move || get_tcp(&addr, "/")
    });
    install(&good, &app);
    let line = p
        .wait_for_nth(&format!("the generation is live pid={} ", p.pid), 2, LONG)
        .unwrap_or_else(|| panic!("the good build never came back; output:\n{}", p.output()));
    let back = pid_field(&line, "generation_pid");
    let r = waiting.join().unwrap();
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(back)));
    assert_eq!(
        listen_inode(port),
        Some(inode),
        "the same socket throughout"
    );
}

// ---------------------------------------------------------------------------------------
// The service manager hears from the supervisor only
// ---------------------------------------------------------------------------------------

/// A stand-in for systemd's notification socket, learning each sender's pid.
struct Notifications(std::os::unix::net::UnixDatagram);

impl Notifications {
    fn bind(path: &Path) -> Self {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        common::notify::pass_credentials(&sock);
        sock.set_read_timeout(Some(LONG)).unwrap();
        Notifications(sock)
    }

    /// The next message and its sender's pid.
    fn recv(&self) -> (u32, String) {
        common::notify::recv_with_pid(&self.0).unwrap_or_else(|e| panic!("no notification: {e}"))
    }

    /// Messages until one holds `key`; asserts each came from `pid` and names no
    /// other main pid.
    fn until(&self, key: &str, pid: u32) -> String {
        loop {
            let (from, text) = self.recv();
            assert_eq!(
                from, pid,
                "{text:?} came from another process than the supervisor"
            );
            assert!(!text.contains("MAINPID="), "the main pid changed: {text:?}");
            if text.lines().any(|l| l.starts_with(key)) {
                return text;
            }
        }
    }
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn the_supervisor_is_the_main_process_for_the_service_manager() {
    let dir = scratch_dir("sup-notify");
    let app = dir.join("app");
    install(&common::example_bin("hello"), &app);
    let sock = common::generations::socket_path(&dir, "notify.sock");
    let notes = Notifications::bind(&sock);
    let pid_file = dir.join("app.pid");
    let mut cmd = Command::new(&app);
    cmd.args(["--supervise", "--addr", "127.0.0.1:0", "--pid-file"])
        .arg(&pid_file)
        .env("NOTIFY_SOCKET", &sock);
    let mut p = Proc::spawn_with(&mut cmd);
    let ready = notes.until("READY=1", p.pid);
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    assert_eq!(pid_file_names(&pid_file), Some(p.pid));
    for _ in 0..2 {
        let (_, new) = sup_restart(&p);
        notes.until("RELOADING=1", p.pid);
        let ready = notes.until("READY=1", p.pid);
        assert!(ready.contains(&format!("pid {new}")), "{ready:?}");
        assert_eq!(pid_file_names(&pid_file), Some(p.pid));
    }
    signal(p.pid, libc::SIGTERM);
    notes.until("STOPPING=1", p.pid);
    assert!(p.wait_exit(LONG).expect("exits").success());
    assert_eq!(
        pid_file_names(&pid_file),
        None,
        "the PID file is removed at the end"
    );
}

/// A drain that outlasts the service manager's patience: the supervisor, the process it
/// tracks, asks for more time as a generation without a supervisor would.
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn the_supervisor_asks_for_more_time_while_its_generation_drains() {
    let (dir, app) = installed("sup-extend", "hello");
    let sock = common::generations::socket_path(&dir, "notify.sock");
    let notes = Notifications::bind(&sock);
    let mut cmd = Command::new(&app);
    cmd.args([
        "--supervise",
        "--addr",
        "127.0.0.1:0",
        "--hammer-ms",
        "60000",
    ])
    .env("NOTIFY_SOCKET", &sock);
    let mut p = Proc::spawn_with(&mut cmd);
    notes.until("READY=1", p.pid);
    let addr = p.serving_addr(1);
    // A stream that would outlast any stop timeout, in flight when the stop begins.
    let (stream, _) = stream_in_flight(&addr, 100_000, 100);
    signal(p.pid, libc::SIGTERM);
    notes.until("STOPPING=1", p.pid);
    let extend = notes.until("EXTEND_TIMEOUT_USEC=", p.pid);
    assert!(
        extend.lines().any(|l| l == "EXTEND_TIMEOUT_USEC=10000000"),
        "{extend:?}"
    );
    assert!(
        alive(p.pid),
        "the supervisor exited while its generation drained"
    );
    // The client goes: the drain ends, and so does the supervisor.
    drop(stream);
    let status = p
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the supervisor did not exit; output:\n{}", p.output()));
    assert!(status.success(), "{status:?}; output:\n{}", p.output());
    // Whatever else was sent came from the supervisor too.
    notes.0.set_nonblocking(true).unwrap();
    while let Ok((from, text)) = common::notify::recv_with_pid(&notes.0) {
        assert_eq!(from, p.pid, "{text:?} came from another process");
    }
}

#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
#[test]
fn the_control_socket_restarts_under_the_supervisor() {
    let (dir, app) = installed("sup-control", "hello");
    let control = common::generations::socket_path(&dir, "control.sock");
    let p = Proc::spawn(
        &app,
        &[
            "--supervise",
            "--addr",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr = p.serving_addr(1);
    wait_sup_live(&p, p.pid, newest(&p));
    for _ in 0..2 {
        let out = Command::new(common::example_bin("hello"))
            .args(["restart", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let new: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // The supervisor follows a restart it did not ask for.
        wait_sup_live(&p, p.pid, new);
        assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(new));
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: logged, typed, never a panic
// ---------------------------------------------------------------------------------------

#[test]
fn bad_supervisor_and_draining_variables_and_settings_are_refused() {
    let (dir, app) = installed("sup-bad", "hello");
    // Malformed values, in a handover meant for this process (its parent, this test,
    // names itself): logged, and the server serves.
    let mut cmd = Command::new(&app);
    cmd.args(["--addr", "127.0.0.1:0"])
        .env("CEASELESS_PARENT_PID", std::process::id().to_string())
        .env("CEASELESS_SUPERVISOR", "nobody:here")
        .env("CEASELESS_DRAINING", "1@x,2");
    let p = Proc::spawn_with(&mut cmd);
    let addr = p.serving_addr(1);
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(p.pid));
    p.expect_line("ignoring the supervisor's channel", LONG);
    p.expect_line("ignoring the list of draining generations", LONG);
    assert!(!p.output().contains("panicked"), "{}", p.output());
    drop(p);

    // A stale but well-formed value (fd 3 is no channel of that pid): `--supervise`
    // is not fooled into running as a generation; it supervises.
    let mut cmd = Command::new(&app);
    cmd.args(["--supervise", "--addr", "127.0.0.1:0"])
        .env("CEASELESS_SUPERVISOR", "1:3");
    let p = Proc::spawn_with(&mut cmd);
    let addr = p.serving_addr(1);
    wait_sup_live(&p, p.pid, newest(&p));
    assert_ne!(body_pid(&get_tcp(&addr, "/").body), Some(p.pid));
    drop(p);

    // A bound of zero is a setting refused at start.
    let out = Command::new(&app)
        .args(["--addr", "127.0.0.1:0", "--max-draining", "0"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid setting max_draining"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Job control: SIGTSTP stops the generation and the supervisor, SIGCONT resumes both
// ---------------------------------------------------------------------------------------

/// The state letter of `pid` in /proc (R, S, T, Z, ...).
fn proc_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?")
        .to_string()
}

#[test]
fn tstp_stops_the_generation_and_the_supervisor_and_cont_resumes_them() {
    let (_dir, app) = installed("sup-tstp", "hello");
    let p = Proc::spawn(&app, &["--supervise", "--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let gen = newest(&p);
    wait_sup_live(&p, p.pid, gen);
    signal(p.pid, libc::SIGTSTP);
    p.wait_until("both stopped", || {
        proc_state(p.pid) == "T" && proc_state(gen) == "T"
    });
    signal(p.pid, libc::SIGCONT);
    p.wait_until("both running again", || {
        proc_state(p.pid) != "T" && proc_state(gen) != "T"
    });
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(gen)));
    // The generation's own SIGTSTP handling ran (its hooks' place in the log).
    p.expect_line(&format!("received signal pid={gen} signal=SIGTSTP"), LONG);
}

// ---------------------------------------------------------------------------------------
// Socket activation: the supervisor's sockets go to its generations
// ---------------------------------------------------------------------------------------

/// Starts `app` as systemd starts a socket-activated service: `fds` at 3, 4, …,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` naming the started process itself
/// (a shell sets it to its own pid, then executes `app` in its place).
fn activated(app: &Path, args: &[&str], fds: &[RawFd], names: &str) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(app)
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names);
    let copies = pass_fds(&mut cmd, fds);
    let p = Proc::spawn_with(&mut cmd);
    drop(copies);
    p
}

/// Asserts that none of systemd's variables reached generation `pid`.
fn assert_no_activation_env(pid: u32, what: &str) {
    let env = environ(pid);
    for var in ["LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES="] {
        assert!(
            !env.iter().any(|v| v.starts_with(var)),
            "{what}: {var} reached generation {pid}"
        );
    }
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn supervisor_serves_socket_activated_sockets() {
    // The socket unit's socket, kept open here as systemd keeps its own.
    let unit = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unit.local_addr().unwrap().to_string();
    let inode = socket_inode(unit.as_raw_fd());
    let (_dir, app) = installed("sup-activated", "hello");
    // The server asks for port 0: only the socket unit's name can match.
    let mut p = activated(
        &app,
        &["--supervise", "--addr", "127.0.0.1:0", "--fd-name", "web"],
        &[unit.as_raw_fd()],
        "web",
    );
    assert_eq!(p.serving_addr(1), addr, "generation 1 bound afresh");
    let first = newest(&p);
    let live = p
        .wait_for_nth(
            &format!(
                "the generation is live pid={} generation_pid={first} ",
                p.pid
            ),
            1,
            LONG,
        )
        .unwrap_or_else(|| panic!("no generation got live; output:\n{}", p.output()));
    assert_eq!(
        common::field(&live, "generation").as_deref(),
        Some("1"),
        "the generation the activated sockets went to is the first: {live}"
    );
    assert!(
        holds(p.pid, &inode),
        "the supervisor holds the activated socket for its generations"
    );
    let check = |gen: u32, what: &str| {
        let r = get_tcp(&addr, "/");
        assert_eq!((r.status, body_pid(&r.body)), (200, Some(gen)), "{what}");
        assert!(
            holds(gen, &inode),
            "{what}: generation {gen} does not serve the activated socket {inode}"
        );
        assert_no_activation_env(gen, what);
    };
    check(first, "generation 1");
    let mut gen = first;
    for i in 1..=3 {
        let (old, new) = sup_restart(&p);
        assert_eq!(old, gen, "restart {i}");
        check(new, &format!("restart {i}"));
        assert!(
            !environ(new)
                .iter()
                .any(|v| v.starts_with("CEASELESS_ACTIVATED=")),
            "restart {i}: the supervisor's relay reached a restart"
        );
        gen = new;
    }
    // No generation served a socket of its own: each one's server is the unit's.
    assert_eq!(p.generation_pids().len(), 4, "{}", p.output());
    for n in 1..=4 {
        assert_eq!(p.serving_addr(n), addr, "generation {n}");
    }
    assert_eq!(p.count("supervisor: started a generation"), 1);

    signal(p.pid, libc::SIGTERM);
    let status = p
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the supervisor did not exit; output:\n{}", p.output()));
    assert!(status.success(), "{status:?}; output:\n{}", p.output());
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn an_activated_socket_file_outlives_the_supervisors_generations() {
    let (dir, app) = installed("sup-activated-unix", "hello");
    let path = common::generations::socket_path(&dir, "api.sock");
    // The socket unit created the file and the listening socket; it owns both.
    let unit = UnixListener::bind(&path).unwrap();
    let inode = socket_inode(unit.as_raw_fd());
    let unix_addr = format!("unix:{}", path.display());
    // Matched by its address: the unit's name means nothing to the server.
    let mut p = activated(
        &app,
        &["--supervise", "--addr", &unix_addr],
        &[unit.as_raw_fd()],
        "api",
    );
    p.serving_addr(1);
    let first = newest(&p);
    wait_sup_live(&p, p.pid, first);
    assert_eq!(body_pid(&get_unix(&path, "/").body), Some(first));
    assert!(
        holds(first, &inode),
        "generation 1 bound a socket of its own"
    );

    // A crash: the generation started again gets the socket from the supervisor.
    signal(first, libc::SIGKILL);
    let line = p
        .wait_for_nth(&format!("the generation is live pid={} ", p.pid), 2, LONG)
        .unwrap_or_else(|| panic!("no generation came back; output:\n{}", p.output()));
    let second = pid_field(&line, "generation_pid");
    assert_eq!(body_pid(&get_unix(&path, "/").body), Some(second));
    assert!(holds(second, &inode), "the generation after the crash");

    // A restart: the second hands over, drains and exits, leaving the file in place.
    let (old, third) = sup_restart(&p);
    assert_eq!(old, second);
    expect_gone(&p, second, "the old generation after its drain");
    assert!(
        common::generations::unix_socket_exists(&path),
        "a drained generation removed a socket file the service manager owns"
    );
    assert_eq!(body_pid(&get_unix(&path, "/").body), Some(third));
    assert!(holds(third, &inode), "the generation after the restart");

    signal(p.pid, libc::SIGTERM);
    let status = p
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the supervisor did not exit; output:\n{}", p.output()));
    assert!(status.success(), "{status:?}; output:\n{}", p.output());
    assert!(
        common::generations::unix_socket_exists(&path),
        "the final stop removed a socket file the service manager owns:\n{}",
        p.output()
    );
    // The socket itself still listens (the unit holds it): a connection is queued.
    assert!(UnixStream::connect(&path).is_ok());
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn a_bad_activated_socket_is_closed_and_the_good_one_reaches_each_generation_before_one_is_live() {
    let unit = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unit.local_addr().unwrap().to_string();
    let inode = socket_inode(unit.as_raw_fd());
    // Not a listening stream socket: refused by the supervisor.
    let bad = UdpSocket::bind("127.0.0.1:0").unwrap();
    let bad_inode = socket_inode(bad.as_raw_fd());
    let (_dir, app) = installed("sup-activated-bad", "hello");
    // --no-ready: the generations serve but never say they are ready, so none is live.
    let p = activated(
        &app,
        &[
            "--supervise",
            "--no-ready",
            "--addr",
            "127.0.0.1:0",
            "--fd-name",
            "web",
        ],
        &[unit.as_raw_fd(), bad.as_raw_fd()],
        "web:dns",
    );
    assert_eq!(p.serving_addr(1), addr, "generation 1 bound afresh");
    let first = newest(&p);
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(first));
    assert!(holds(first, &inode));
    for pid in [p.pid, first] {
        assert!(
            !holds(pid, &bad_inode),
            "pid {pid} holds the refused socket"
        );
    }
    assert_no_activation_env(first, "generation 1");

    // It dies before it is live: the next one gets the activated socket too.
    signal(first, libc::SIGKILL);
    assert_eq!(p.serving_addr(2), addr, "the next generation bound afresh");
    let second = newest(&p);
    assert_ne!(second, first);
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(second));
    assert!(holds(second, &inode));
    assert!(!holds(second, &bad_inode));
    assert_no_activation_env(second, "the generation after the crash");
    assert!(!p.output().contains("panicked"), "{}", p.output());
}
