//! Living with process managers, with real processes: sd_notify as systemd receives it
//! (with the sender's pid, as NotifyAccess=main checks it), socket activation, the PID
//! file, and the restart command's answer.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(30);

/// One sd_notify datagram: who sent it (SCM_CREDENTIALS) and its fields, in order.
#[derive(Debug)]
struct Note {
    pid: u32,
    fields: Vec<(String, String)>,
}

impl Note {
    fn keys(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }
}

/// A stand-in for systemd's notification socket: a datagram socket that learns each
/// sender's pid from the kernel, as the service manager does.
struct NotifySocket {
    sock: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    env: String,
}

impl NotifySocket {
    fn path(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        Self::ready(sock, path.to_str().unwrap().to_string())
    }

    fn abstract_name(name: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Self::ready(sock, format!("@{name}"))
    }

    fn ready(sock: UnixDatagram, env: String) -> Self {
        common::notify::pass_credentials(&sock);
        NotifySocket { sock, env }
    }

    /// The next message; panics if none comes within the timeout.
    fn recv(&self) -> Note {
        self.sock.set_read_timeout(Some(LONG)).unwrap();
        self.try_recv()
            .unwrap_or_else(|e| panic!("no notification within {LONG:?}: {e}"))
    }

    /// Nothing is queued (every sender has exited, so nothing more can come).
    fn assert_empty(&self) {
        self.sock.set_nonblocking(true).unwrap();
        match self.try_recv() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("unexpected notification: {other:?}"),
        }
    }

    fn try_recv(&self) -> std::io::Result<Note> {
        let (pid, text) = common::notify::recv_with_pid(&self.sock)?;
        let fields = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Ok(Note { pid, fields })
    }
}

/// CLOCK_MONOTONIC in µs, the clock of `MONOTONIC_USEC=`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A copy of `hello` at `dir/hello`, the path the server is started from (and so the
/// path a restart re-executes, where a deploy puts a new build).
fn install_hello(dir: &Path) -> PathBuf {
    let bin = dir.join("hello");
    deploy(&example_bin("hello"), &bin);
    bin
}

/// Deploys a broken "new build" at `dest`: a script, or a file without execute
/// permission.
fn deploy_broken(dir: &Path, dest: &Path, name: &str, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join(name);
    std::fs::write(&src, content).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode)).unwrap();
    deploy(&src, dest);
}

/// `hello restart --control PATH`.
fn restart_command(control: &Path) -> Output {
    Command::new(example_bin("hello"))
        .args(["restart", "--control"])
        .arg(control)
        .args(["--timeout-ms", "60000"])
        .output()
        .expect("run hello restart")
}

/// The new pid a successful restart command printed.
fn restarted(out: &Output) -> u32 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restart command failed: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("restart command printed {stdout:?}, not a pid"))
}

/// The reason a failed restart command printed.
fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "restart command succeeded: stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "a failure prints no pid");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `GET path` over a fresh connection; the body.
fn get(addr: &str, path: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(LONG))?;
        s.set_write_timeout(Some(LONG))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    let reply = attempt().unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn answered_by(addr: &str) -> u32 {
    let body = get(addr, "/");
    body.strip_prefix("hello from pid ")
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {body:?}"))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pid of the `n`-th "restart succeeded" line (1-based), checking who logged it.
fn nth_restart(p: &Proc, n: usize, old: u32) -> u32 {
    let line = p
        .wait_for_nth("restart succeeded", n, LONG)
        .unwrap_or_else(|| panic!("restart {n} did not succeed; output:\n{}", p.output()));
    assert_eq!(field(&line, "pid"), Some(old.to_string()), "{line}");
    field(&line, "new_pid").unwrap().parse().unwrap()
}

/// Plays systemd: starts the server with `NOTIFY_SOCKET`, restarts it by SIGHUP, by the
/// control socket, then with a broken build, stops it, and checks every message and who
/// sent it: always the process systemd would consider the main one at that moment.
fn notify_scenario(tag: &str, notify: &NotifySocket) {
    become_subreaper();
    let dir = scratch_dir(tag);
    let bin = install_hello(&dir);
    let control = dir.join("control.sock");
    let mut cmd = Command::new(&bin);
    cmd.args(["--addr", "127.0.0.1:0", "--control"])
        .arg(&control)
        .env("NOTIFY_SOCKET", &notify.env);
    let p = Proc::spawn_with(&mut cmd);
    let p1 = p.pid;

    // The first generation is ready: READY=1, from itself.
    let n = notify.recv();
    assert_eq!((n.pid, n.keys()), (p1, vec!["READY", "STATUS"]), "{n:?}");
    assert_eq!(n.get("READY"), "1");
    let addr = p.serving_addr(1);
    assert_eq!(answered_by(&addr), p1);

    // SIGHUP: RELOADING=1 with a monotonic timestamp taken after the request, then the
    // old main process names the new one and says it is ready.
    let before = monotonic_usec();
    p.signal(libc::SIGHUP);
    let n = notify.recv();
    let after = monotonic_usec();
    assert_eq!(
        (n.pid, n.keys()),
        (p1, vec!["RELOADING", "MONOTONIC_USEC"]),
        "{n:?}"
    );
    assert_eq!(n.get("RELOADING"), "1");
    let usec: u64 = n.get("MONOTONIC_USEC").parse().unwrap();
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p1, vec!["MAINPID", "READY", "STATUS"]),
        "{n:?}"
    );
    let p2: u32 = n.get("MAINPID").parse().unwrap();
    assert_eq!(n.get("READY"), "1");
    assert_ne!(p2, p1);
    assert_eq!(nth_restart(&p, 1, p1), p2);
    assert!(alive(p2));
    assert_eq!(answered_by(&addr), p2);

    // A restart through the control socket, now served by the second generation: the
    // messages come from it, the new main process.
    let p3 = restarted(&restart_command(&control));
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p2, vec!["RELOADING", "MONOTONIC_USEC"]),
        "{n:?}"
    );
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p2, vec!["MAINPID", "READY", "STATUS"]),
        "{n:?}"
    );
    assert_eq!(n.get("MAINPID"), p3.to_string());

    // A broken build: the reload ends with READY=1 from the same process, and no
    // MAINPID=.
    deploy_broken(&dir, &bin, "broken", "#!/bin/sh\nexit 3\n", 0o755);
    let reason = refused(&restart_command(&control));
    assert!(reason.contains("exit status: 3"), "{reason}");
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p3, vec!["RELOADING", "MONOTONIC_USEC"]),
        "{n:?}"
    );
    let n = notify.recv();
    assert_eq!((n.pid, n.keys()), (p3, vec!["READY", "STATUS"]), "{n:?}");
    assert!(n.get("STATUS").contains("failed"), "{n:?}");
    assert_eq!(answered_by(&addr), p3);

    // Stop: STOPPING=1 from the main process; the drained generations said nothing.
    signal(p3, libc::SIGTERM);
    let n = notify.recv();
    assert_eq!((n.pid, n.keys()), (p3, vec!["STOPPING", "STATUS"]), "{n:?}");
    for pid in [p1, p2, p3] {
        assert!(wait_gone(pid, LONG), "pid {pid} still running");
    }
    notify.assert_empty();
    assert!(!control.exists(), "the control socket outlived the service");
}

#[test]
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
fn sd_notify_follows_the_main_process_on_a_path_socket() {
    let dir = scratch_dir("notify-socket");
    let notify = NotifySocket::path(&dir.join("notify"));
    notify_scenario("notify-path", &notify);
}

#[test]
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
fn sd_notify_follows_the_main_process_on_an_abstract_socket() {
    let name = format!("ceaseless-manager-test-{}", std::process::id());
    let notify = NotifySocket::abstract_name(&name);
    notify_scenario("notify-abstract", &notify);
}

/// A drain that outlasts the service manager's patience is not killed by it while it is
/// still inside hammer time: past 5 s the live generation asks for more time.
#[test]
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
fn a_long_drain_asks_the_service_manager_for_more_time() {
    let dir = scratch_dir("notify-extend");
    let notify = NotifySocket::path(&dir.join("notify"));
    let mut p = Proc::spawn_with(
        Command::new(example_bin("hello"))
            .args(["--addr", "127.0.0.1:0", "--hammer-ms", "60000"])
            .env("NOTIFY_SOCKET", &notify.env),
    );
    let n = notify.recv();
    assert_eq!((n.pid, n.keys()), (p.pid, vec!["READY", "STATUS"]), "{n:?}");
    let addr = p.serving_addr(1);
    // A request that takes 7 s, accepted before the drain (connections are accepted in
    // order: once a later one is answered, this one is in).
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET /slow?ms=7000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let slow = std::thread::spawn(move || {
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    });
    assert_eq!(answered_by(&addr), p.pid);
    p.signal(libc::SIGTERM);
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p.pid, vec!["STOPPING", "STATUS"]),
        "{n:?}"
    );
    let n = notify.recv();
    assert_eq!(
        (n.pid, n.keys()),
        (p.pid, vec!["EXTEND_TIMEOUT_USEC", "STATUS"]),
        "{n:?}"
    );
    assert_eq!(n.get("EXTEND_TIMEOUT_USEC"), "10000000");
    let reply = slow.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
    assert!(
        p.wait_exit(LONG).is_some_and(|s| s.success()),
        "{}",
        p.output()
    );
    notify.assert_empty();
}

#[test]
fn without_notify_socket_nothing_is_sent() {
    // A notify socket exists but the server is not told about it.
    let dir = scratch_dir("notify-silent");
    let notify = NotifySocket::path(&dir.join("notify"));
    let mut p = Proc::spawn_with(
        Command::new(example_bin("hello"))
            .args(["--addr", "127.0.0.1:0"])
            .env_remove("NOTIFY_SOCKET"),
    );
    let addr = p.serving_addr(1);
    assert_eq!(answered_by(&addr), p.pid);
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(LONG).is_some_and(|s| s.success()));
    notify.assert_empty();
}

#[test]
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
fn socket_activation_serves_the_passed_sockets_and_hands_them_over() {
    become_subreaper();
    // The "socket unit": two listening sockets, kept open here as systemd keeps them.
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap().to_string();
    let other_addr = other.local_addr().unwrap().to_string();

    // "web" is matched by its name (the server asks for port 0, so only the name can
    // match); the other by its address (its name, the unit's, means nothing to us).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(example_bin("hello"))
        .args(["--addr", "127.0.0.1:0", "--fd-name", "web", "--addr"])
        .arg(&other_addr)
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "web:hello.socket");
    let copies = pass_fds(&mut cmd, &[web.as_raw_fd(), other.as_raw_fd()]);
    let p = Proc::spawn_with(&mut cmd);
    drop(copies);
    let p1 = p.pid;

    let mut served = vec![p.serving_addr(1), p.serving_addr(2)];
    served.sort();
    let mut expected = vec![web_addr.clone(), other_addr.clone()];
    expected.sort();
    assert_eq!(
        served, expected,
        "the servers did not take the passed sockets"
    );
    assert_eq!(p.count("origin=Systemd"), 2, "{}", p.output());
    assert_eq!(answered_by(&web_addr), p1);
    assert_eq!(answered_by(&other_addr), p1);

    // Restart: the same sockets go to the new generation, under our own names, and
    // systemd's variables do not.
    p.signal(libc::SIGHUP);
    let p2 = nth_restart(&p, 1, p1);
    assert_eq!(answered_by(&web_addr), p2);
    assert_eq!(answered_by(&other_addr), p2);
    assert_eq!(p.count("origin=Parent"), 2, "{}", p.output());
    for fd in [web.as_raw_fd(), other.as_raw_fd()] {
        let inode = socket_inode(fd);
        assert!(holds(p2, &inode), "pid {p2} does not hold {inode}");
    }
    let env = environ(p2);
    for var in ["LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES="] {
        assert!(
            !env.iter().any(|v| v.starts_with(var)),
            "{var} reached the new generation"
        );
    }
    assert!(wait_gone(p1, LONG));
    assert_eq!(answered_by(&web_addr), p2);

    signal(p2, libc::SIGTERM);
    assert!(wait_gone(p2, LONG));
}

/// `GET /` over a Unix socket; the answering pid.
fn answered_by_unix(path: &Path) -> u32 {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("hello from pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"))
}

#[test]
#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
fn a_socket_file_from_socket_activation_outlives_restarts_and_the_final_stop() {
    become_subreaper();
    let dir = scratch_dir("sd-unix");
    let path = dir.join("api.sock");
    // The "socket unit" created the file and the listening socket; it owns both.
    let unit_socket = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(example_bin("hello"))
        .arg("--addr")
        .arg(format!("unix:{}", path.display()))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "api");
    let copies = pass_fds(&mut cmd, &[unit_socket.as_raw_fd()]);
    let p = Proc::spawn_with(&mut cmd);
    drop(copies);
    p.serving_addr(1);
    assert_eq!(p.count("origin=Systemd"), 1, "{}", p.output());
    assert_eq!(answered_by_unix(&path), p.pid);

    p.signal(libc::SIGHUP);
    let p2 = nth_restart(&p, 1, p.pid);
    assert!(wait_gone(p.pid, LONG));
    assert_eq!(
        answered_by_unix(&path),
        p2,
        "the socket was not handed over"
    );

    signal(p2, libc::SIGTERM);
    assert!(wait_gone(p2, LONG));
    assert!(
        path.exists(),
        "the final stop removed a socket file the service manager owns:\n{}",
        p.output()
    );
    // The socket itself still listens (the unit holds it): a connection is queued.
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
}

#[test]
fn socket_activation_for_another_pid_is_ignored() {
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_addr = web.local_addr().unwrap().to_string();
    // LISTEN_PID names the test process (the shell's parent): variables meant for
    // another process, as when they leak into a child.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$PPID; export LISTEN_PID; exec "$0" "$@""#)
        .arg(example_bin("hello"))
        .args(["--addr", "127.0.0.1:0", "--fd-name", "web"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "web");
    let copies = pass_fds(&mut cmd, &[web.as_raw_fd()]);
    let mut p = Proc::spawn_with(&mut cmd);
    drop(copies);

    let addr = p.serving_addr(1);
    assert_ne!(addr, web_addr, "took a socket meant for another process");
    assert_eq!(
        p.count("took over an inherited listener"),
        0,
        "{}",
        p.output()
    );
    assert_eq!(answered_by(&addr), p.pid);
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(LONG).is_some());
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn pid_file_names_the_live_generation_across_restarts_and_goes_at_stop() {
    become_subreaper();
    let dir = scratch_dir("pidfile");
    let pid_file = dir.join("hello.pid");
    let control = dir.join("control.sock");

    // A stale file from a process that is gone.
    let mut dead = Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    std::fs::write(&pid_file, format!("{}\n", dead.id())).unwrap();

    let p = Proc::spawn(
        &example_bin("hello"),
        &[
            "--addr",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr = p.serving_addr(1);
    p.wait_until("the PID file to name the first generation", || {
        read_pid(&pid_file) == Some(p.pid)
    });

    // Reads the file over and over meanwhile: it must never be missing or partial, and
    // never go back to an older generation.
    let stop = Arc::new(AtomicBool::new(false));
    let (first_read_tx, first_read) = std::sync::mpsc::channel::<()>();
    let watcher = {
        let (stop, pid_file) = (stop.clone(), pid_file.clone());
        std::thread::spawn(move || {
            let (mut seen, mut bad) = (Vec::<u32>::new(), Vec::new());
            // One more read after the stop, so the last state the main thread saw is
            // seen here too, however the two threads were scheduled.
            let mut last_round = false;
            while !last_round {
                last_round = stop.load(Ordering::Acquire);
                match std::fs::read_to_string(&pid_file) {
                    Ok(s) => match s.trim().parse::<u32>() {
                        Ok(pid) if seen.last() != Some(&pid) => seen.push(pid),
                        Ok(_) => {}
                        Err(_) => bad.push(format!("content {s:?}")),
                    },
                    Err(e) => bad.push(e.to_string()),
                }
                let _ = first_read_tx.send(());
                std::thread::sleep(Duration::from_millis(1));
            }
            (seen, bad)
        })
    };
    // The watcher has read the first generation's pid before anything changes it,
    // however the threads are scheduled.
    first_read
        .recv_timeout(LONG)
        .expect("the watcher never read the PID file");

    let mut generations = vec![p.pid];
    for i in 0..5 {
        let current = *generations.last().unwrap();
        let new = if i % 2 == 0 {
            signal(current, libc::SIGHUP);
            nth_restart(&p, i + 1, current)
        } else {
            let new = restarted(&restart_command(&control));
            assert_eq!(nth_restart(&p, i + 1, current), new);
            new
        };
        // The handover is done, and the file was replaced before it.
        assert_eq!(read_pid(&pid_file), Some(new), "restart {}", i + 1);
        assert!(alive(new));
        assert_eq!(answered_by(&addr), new);
        generations.push(new);
    }
    let last = *generations.last().unwrap();
    for old in &generations[..5] {
        assert!(wait_gone(*old, LONG), "generation {old} still running");
    }
    // The generations that drained away left the file alone.
    assert_eq!(read_pid(&pid_file), Some(last));

    stop.store(true, Ordering::Release);
    let (seen, bad) = watcher.join().unwrap();
    assert!(bad.is_empty(), "the PID file was unreadable: {bad:?}");
    assert_eq!(seen.first(), Some(&generations[0]));
    assert_eq!(seen.last(), Some(&last));
    let mut rest = generations.iter();
    for pid in &seen {
        assert!(
            rest.any(|g| g == pid),
            "the PID file went back or named a stranger: saw {seen:?}, generations {generations:?}"
        );
    }

    signal(last, libc::SIGTERM);
    assert!(wait_gone(last, LONG));
    assert!(!pid_file.exists(), "the PID file outlived the service");
    assert!(!control.exists(), "the control socket outlived the service");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn restart_command_answers_with_the_new_pid_or_the_reason() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    become_subreaper();
    let dir = scratch_dir("restart-command");
    let bin = install_hello(&dir);
    let control = dir.join("control.sock");
    let p = Proc::spawn_with(
        Command::new(&bin)
            .args([
                "--addr",
                "127.0.0.1:0",
                "--ready-timeout-ms",
                "3000",
                "--control",
            ])
            .arg(&control),
    );
    let addr = p.serving_addr(1);
    let meta = std::fs::symlink_metadata(&control).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "not owner-only");

    // A good restart: exit 0, the new pid on stdout, and that pid serves.
    let p2 = restarted(&restart_command(&control));
    assert_ne!(p2, p.pid);
    assert_eq!(answered_by(&addr), p2);

    // Broken builds: non-zero with the reason; the old generation still answers.
    deploy_broken(&dir, &bin, "exits", "#!/bin/sh\nexit 3\n", 0o755);
    let reason = refused(&restart_command(&control));
    assert!(
        reason.contains("exited before it took over") && reason.contains("exit status: 3"),
        "{reason}"
    );
    assert_eq!(answered_by(&addr), p2);

    deploy_broken(&dir, &bin, "not-executable", "not a program\n", 0o644);
    let reason = refused(&restart_command(&control));
    assert!(reason.contains("cannot start"), "{reason}");
    assert_eq!(answered_by(&addr), p2);

    deploy_broken(&dir, &bin, "hangs", "#!/bin/sh\nexec sleep 60\n", 0o755);
    let reason = refused(&restart_command(&control));
    assert!(reason.contains("did not take over within"), "{reason}");
    assert_eq!(answered_by(&addr), p2);
    assert!(alive(p2));

    // Fixed: the next restart works again, on the same control socket.
    deploy(&example_bin("hello"), &bin);
    let p3 = restarted(&restart_command(&control));
    assert_ne!(p3, p2);
    assert_eq!(answered_by(&addr), p3);

    // Nobody there: non-zero, and says so.
    let reason = refused(&restart_command(&dir.join("nobody.sock")));
    assert!(reason.contains("cannot connect"), "{reason}");

    signal(p3, libc::SIGTERM);
    assert!(wait_gone(p3, LONG));
    assert!(!control.exists(), "the control socket outlived the service");
}

/// Plays systemd through a probation: the parked generation names itself the main
/// process again when the new one crashes (it could not), and when an operator rolls
/// back; the new one's probation shows in STATUS=.
#[test]
#[cfg_attr(
    not(all(feature = "systemd", feature = "control")),
    ignore = "needs the `systemd` and `control` features"
)]
fn sd_notify_names_the_parked_generation_after_a_rollback() {
    become_subreaper();
    let dir = scratch_dir("notify-rollback");
    let notify = NotifySocket::path(&dir.join("notify"));
    let bin = install_hello(&dir);
    let good = dir.join("good");
    deploy(&example_bin("hello"), &good);
    let control = dir.join("control.sock");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--probation-ms",
        "60000",
        "--control",
    ])
    .arg(&control)
    .env("NOTIFY_SOCKET", &notify.env);
    let p = Proc::spawn_with(&mut cmd);
    let p1 = p.pid;
    let n = notify.recv();
    assert_eq!((n.pid, n.get("READY")), (p1, "1"), "{n:?}");
    let addr = p.serving_addr(1);

    // Until a note satisfies `want`: the notes before it.
    let until = |want: &dyn Fn(&Note) -> bool| -> Vec<Note> {
        let mut seen = Vec::new();
        loop {
            let n = notify.recv();
            if want(&n) {
                seen.push(n);
                return seen;
            }
            seen.push(n);
        }
    };
    let mainpid = |n: &Note| {
        n.fields
            .iter()
            .find(|(k, _)| k == "MAINPID")
            .map(|(_, v)| v.clone())
    };

    // A build that crashes after going live.
    deploy_broken(
        &dir,
        &bin,
        "crashing",
        &format!(
            "#!/bin/sh\nexec {} \"$@\" --crash-after-ms 1000\n",
            good.display()
        ),
        0o755,
    );
    p.signal(libc::SIGHUP);
    let p2 = nth_restart(&p, 1, p1);
    let notes = until(&|n| n.pid == p2 && n.fields.iter().any(|(_, v)| v.contains("probation")));
    assert!(
        notes
            .iter()
            .any(|n| n.pid == p1 && mainpid(n) == Some(p2.to_string())),
        "the old main process named the new one first: {notes:?}"
    );
    // The crash: the parked one names itself, READY=1, and why.
    let notes = until(&|n| mainpid(n) == Some(p1.to_string()));
    let n = notes.last().unwrap();
    assert_eq!((n.pid, n.get("READY")), (p1, "1"), "{notes:?}");
    assert!(n.get("STATUS").contains("rolled back from pid"), "{n:?}");
    assert!(n.get("STATUS").contains("crash"), "{n:?}");
    assert!(wait_gone(p2, LONG));
    assert_eq!(answered_by(&addr), p1);

    // A good build, then an operator's rollback.
    deploy(&good, &bin);
    let p3 = restarted(&restart_command(&control));
    until(&|n| n.pid == p3 && n.fields.iter().any(|(_, v)| v.contains("probation")));
    let out = Command::new(example_bin("hello"))
        .args(["rollback", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = until(&|n| n.pid == p1 && mainpid(n) == Some(p1.to_string()));
    assert!(
        notes
            .iter()
            .all(|n| mainpid(n).is_none_or(|m| m == p1.to_string())),
        "only the parked generation is named: {notes:?}"
    );
    assert!(
        notes.last().unwrap().get("STATUS").contains("operator"),
        "{notes:?}"
    );
    assert!(wait_gone(p3, LONG));
    assert_eq!(answered_by(&addr), p1);

    signal(p1, libc::SIGTERM);
    let notes = until(&|n| n.fields.iter().any(|(k, _)| k == "STOPPING"));
    assert_eq!(notes.last().unwrap().pid, p1, "{notes:?}");
    assert!(wait_gone(p1, LONG));
}
