//! A takeover by an independently started process, with real processes, sockets and
//! clients: `hello --takeover PATH` from a binary installed at another path takes the
//! listeners of a running `hello` over its control socket, under load, with zero failed
//! requests, and the old process exits; then it restarts itself as usual. A newcomer
//! that crashes, one that never becomes ready, one that arrives while a takeover is
//! under way, and one pointed at something that is not a control socket change
//! nothing: the old process serves on, alone.
//!
//! Nothing asserts on timing: every wait is bounded and waits for an event.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::generations::{install, socket_path, LONG};
use common::load::{body_pid, get_tcp, reqwest_client, shared_client, Client, Expect, Load};
use common::{
    alive, become_subreaper, example_bin, field, hello_cli, hello_status, scratch_dir, signal,
    wait_gone, Proc,
};

/// `hello` installed at `<dir>/<sub>/app`.
fn hello_at(dir: &Path, sub: &str) -> PathBuf {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).unwrap();
    let app = d.join("app");
    install(&example_bin("hello"), &app);
    app
}

/// The pid the control socket's `status` names.
fn status_pid(control: &Path) -> u32 {
    hello_status(control)["pid"].as_u64().unwrap() as u32
}

fn clients(addr: SocketAddr) -> Vec<Client> {
    let mut c = shared_client(reqwest_client(false), &format!("http://{addr}/"), 6);
    c.extend((0..4).map(|_| Client::Tcp(addr)));
    c.extend((0..2).map(|_| Client::FreshTcp(addr)));
    c
}

fn expect(pid: u32) -> Option<Expect> {
    Some(Expect { pid, version: None })
}

/// The log line of `p` reporting the n-th restart failure, which names the reason.
fn nth_failure(p: &Proc, n: usize) -> String {
    p.wait_for_nth("restart failed", n, LONG)
        .unwrap_or_else(|| panic!("no failure #{n}; output:\n{}", p.output()))
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn takeover_from_another_path_under_load() {
    become_subreaper();
    let dir = scratch_dir("takeover");
    let (old_app, new_app) = (hello_at(&dir, "old"), hello_at(&dir, "new"));
    let control = socket_path(&dir, "control.sock");
    let pid_file = dir.join("hello.pid");
    let ctl = control.to_str().unwrap();
    let mut old = Proc::spawn(
        &old_app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--control",
            ctl,
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = old.ready_addr(1).parse().unwrap();

    let load = Load::start("takeover", || clients(addr));
    load.expect(expect(old.pid));
    load.wait_checked(200, "before the takeover");

    // Started by "anyone": not a child of the old process, from another path, naming
    // the same address and the old process's control socket.
    load.expect(None);
    let addr_s = addr.to_string();
    let mut new = Proc::spawn(&new_app, &["--takeover", ctl, "--addr", &addr_s]);
    let line = old
        .wait_for_nth("restart succeeded", 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "no takeover; old:\n{}\nnew:\n{}",
                old.output(),
                new.output()
            )
        });
    assert_eq!(
        field(&line, "new_pid").as_deref(),
        Some(&*new.pid.to_string()),
        "{line}"
    );
    new.expect_line("declared ready", LONG);
    let status = old
        .wait_exit(LONG)
        .expect("the old process still runs after the takeover");
    assert!(
        status.success(),
        "the old process exited with {status}:\n{}",
        old.output()
    );
    assert!(!alive(old.pid));

    load.expect(expect(new.pid));
    load.wait_checked(300, "after the takeover");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.pid.to_string(),
        "the PID file names the new process"
    );
    // The control socket came over too: the new process answers on it.
    assert_eq!(status_pid(&control), new.pid);

    // Started with --takeover, it still restarts as any generation does: its child
    // inherits (the option in its arguments is not a second takeover).
    load.expect(None);
    let out = hello_cli("restart", &control);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "the restart failed: {text}\n{}",
        new.output()
    );
    let third: u32 = text.parse().expect("hello restart prints the new pid");
    assert!(
        new.wait_exit(LONG).is_some(),
        "the taken-over process did not hand over"
    );
    load.expect(expect(third));
    load.wait_checked(200, "after the restart of the new process");

    let summary = load.stop();
    summary.print("takeover");
    summary.assert_clean("takeover");
    assert_eq!(old.count("restart failed"), 0, "{}", old.output());
    signal(third, libc::SIGTERM);
    assert!(wait_gone(third, LONG), "the last generation did not stop");
    assert!(!control.exists(), "the control socket file is left behind");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn a_failed_takeover_changes_nothing() {
    become_subreaper();
    let dir = scratch_dir("takeover-fails");
    let (old_app, new_app) = (hello_at(&dir, "old"), hello_at(&dir, "new"));
    let control = socket_path(&dir, "control.sock");
    let ctl = control.to_str().unwrap();
    let mut old = Proc::spawn(
        &old_app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--control",
            ctl,
            "--ready-timeout-ms",
            "5000",
        ],
    );
    let addr: SocketAddr = old.ready_addr(1).parse().unwrap();
    let addr_s = addr.to_string();
    let load = Load::start("takeover-fails", || clients(addr));
    load.expect(expect(old.pid));
    load.wait_checked(100, "before the takeovers");

    // 1. A newcomer that crashes once it holds the sockets (while warming up, before
    // it accepts anything).
    let mut crash = Proc::spawn(
        &new_app,
        &["--takeover", ctl, "--addr", &addr_s, "--warmup-ms", "60000"],
    );
    crash.expect_line("took the listeners over", LONG);
    signal(crash.pid, libc::SIGKILL);
    crash
        .wait_exit(LONG)
        .expect("the crashed newcomer is reaped");
    let line = nth_failure(&old, 1);
    assert!(line.contains("left before it took over"), "{line}");
    load.wait_checked(100, "after the crash");

    // 2. A newcomer that serves but never declares ready: the old process gives up at
    // its ready timeout and tells it to stop; it drains what it accepted.
    load.expect(None);
    let mut hang = Proc::spawn(
        &new_app,
        &["--takeover", ctl, "--addr", &addr_s, "--no-ready"],
    );
    hang.expect_line("took the listeners over", LONG);
    // Meanwhile, a second newcomer is refused: one takeover (or restart) at a time.
    let refused = Command::new(&new_app)
        .args(["--takeover", ctl, "--addr", &addr_s])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("refused: a restart is already in progress"),
        "{said}"
    );
    // (The refusal is logged as a failed restart too: the second failure.)
    let line = nth_failure(&old, 3);
    assert!(
        line.contains("did not take over within 5s; told it to stop"),
        "{line}"
    );
    hang.wait_exit(LONG)
        .expect("the newcomer that never became ready is still running");
    load.expect(expect(old.pid));
    load.wait_checked(100, "after the hang");

    // 3. Something that is not a control socket: the newcomer says so and exits,
    // binding nothing.
    let fake = socket_path(&dir, "fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&fake).unwrap();
    let answering = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let out = Command::new(&new_app)
        .args(["--takeover", fake.to_str().unwrap(), "--addr", &addr_s])
        .output()
        .unwrap();
    answering.join().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cannot take over from") && said.contains("unexpected answer"),
        "{said}"
    );
    let file = dir.join("not-a-socket");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(&new_app)
        .args(["--takeover", file.to_str().unwrap(), "--addr", &addr_s])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("cannot connect to the control socket"),
        "{said}"
    );

    load.wait_checked(100, "after the bad control sockets");
    let summary = load.stop();
    summary.print("takeover-fails");
    summary.assert_clean("takeover-fails");
    // The old process is the one live process, and still answers on its control socket.
    assert!(alive(old.pid));
    assert_eq!(status_pid(&control), old.pid);
    assert_eq!(old.count("restart succeeded"), 0, "{}", old.output());
    old.signal(libc::SIGTERM);
    assert!(
        old.wait_exit(LONG).is_some(),
        "the old process did not stop"
    );
}

/// The bound on draining generations holds across a takeover: the newcomer is told of
/// the old process, still draining a long request, and its own restart hammers it.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn the_draining_bound_follows_a_takeover() {
    become_subreaper();
    let dir = scratch_dir("takeover-bound");
    let (old_app, new_app) = (hello_at(&dir, "old"), hello_at(&dir, "new"));
    let control = socket_path(&dir, "control.sock");
    let ctl = control.to_str().unwrap();
    let bound = ["--max-draining", "1"];
    let mut old = Proc::spawn(
        &old_app,
        &[&["--addr", "127.0.0.1:0", "--control", ctl][..], &bound].concat(),
    );
    let addr = old.ready_addr(1);
    // A request the old process is busy with long after the takeover.
    let mut slow = common::load::connect_tcp(&addr).unwrap();
    slow.write_all(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while hello_status(&control)["connections"]["active"].as_u64() != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let mut new = Proc::spawn(
        &new_app,
        &[&["--takeover", ctl, "--addr", &addr][..], &bound].concat(),
    );
    old.expect_line("restart succeeded", LONG);
    new.expect_line("declared ready", LONG);
    assert!(
        alive(old.pid),
        "the old process should still drain its request"
    );

    // The newcomer's own restart leaves two draining (the old process and itself):
    // over the bound of one, so the old process is hammered.
    let out = hello_cli("restart", &control);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = new.expect_line("hammering the oldest", LONG);
    assert_eq!(
        field(&line, "hammered"),
        Some(old.pid.to_string()),
        "{line}"
    );
    assert!(
        old.wait_exit(LONG).is_some(),
        "the hammered process still runs"
    );
    assert!(
        new.wait_exit(LONG).is_some(),
        "the newcomer did not hand over"
    );
    let third: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    signal(third, libc::SIGTERM);
    assert!(wait_gone(third, LONG));
    drop(slow);
}

/// A takeover hands over what a restart does: the application's named descriptors (a
/// UDP socket) and its state (hello's count of `GET /`) come over the control socket
/// too, so a process with a UDP socket can be taken over, and the count goes on.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn takeover_hands_over_the_udp_socket_and_the_state() {
    use common::generations::udp_inode;
    use std::net::UdpSocket;
    use std::time::Duration;

    become_subreaper();
    let dir = scratch_dir("takeover-udp");
    let (old_app, new_app) = (hello_at(&dir, "old"), hello_at(&dir, "new"));
    let control = socket_path(&dir, "control.sock");
    let ctl = control.to_str().unwrap();
    let port = common::generations::free_udp_port();
    let udp = format!("127.0.0.1:{port}");
    let mut old = Proc::spawn(
        &old_app,
        &["--addr", "127.0.0.1:0", "--udp", &udp, "--control", ctl],
    );
    let addr = old.ready_addr(1);
    let inode = udp_inode(port).expect("the UDP socket is bound");
    for _ in 0..3 {
        assert_eq!(get_tcp(&addr, "/").status, 200);
    }

    let new = Proc::spawn(
        &new_app,
        &["--takeover", ctl, "--addr", &addr, "--udp", &udp],
    );
    new.expect_line("declared ready", LONG);
    let status = old
        .wait_exit(LONG)
        .unwrap_or_else(|| panic!("the old process still runs; new:\n{}", new.output()));
    assert!(status.success(), "old:\n{}", old.output());

    // The same UDP socket, answered by the newcomer.
    assert_eq!(udp_inode(port), Some(inode), "another UDP socket");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(&udp).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send(b"after the takeover").unwrap();
    let mut buf = [0u8; 256];
    let n = client.recv(&mut buf).expect("a UDP answer");
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("pid {}: after the takeover", new.pid)
    );
    // The state came over: the count goes on from the old process's.
    let count = get_tcp(&addr, "/count").body;
    let n: u64 = count
        .trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{count:?}"));
    assert!(
        n >= 3,
        "the count started again: {count:?}; new:\n{}",
        new.output()
    );
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(new.pid));
}

/// One fault in a takeover: the newcomer, behind `examples/fault.rs` on the control
/// connection, fails at `at` as `action` says. The old process never stops accepting:
/// no connection is refused, at most one request per client (in flight on the killed
/// newcomer) fails, the failure is recorded, and a real takeover succeeds afterwards.
fn takeover_fault(at: &str, action: &str) {
    use common::generations::LONG;
    become_subreaper();
    let tag = format!("takeover-fault-{at}-{action}");
    let dir = scratch_dir(&tag);
    let old_app = hello_at(&dir, "old");
    let control = socket_path(&dir, "control.sock");
    let proxy = socket_path(&dir, "proxy.sock");
    let ctl = control.to_str().unwrap();
    let mut old = Proc::spawn(
        &old_app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--control",
            ctl,
            "--ready-timeout-ms",
            "3000",
        ],
    );
    let addr: SocketAddr = old.ready_addr(1).parse().unwrap();
    let n_clients = std::cell::Cell::new(0);
    let load = Load::start(&tag, || {
        let c = clients(addr);
        n_clients.set(c.len() as u64);
        c
    });
    load.expect(expect(old.pid));
    load.wait_checked(100, "before the takeover");

    // The newcomer accepts too until it fails: anyone may answer meanwhile.
    load.expect(None);
    let addr_s = addr.to_string();
    let mut cmd = Command::new(example_bin("fault"));
    cmd.args(["--takeover", proxy.to_str().unwrap(), "--control", ctl])
        .args(["--addr", &addr_s])
        .env("FAULT_EXEC", example_bin("hello"))
        .env("FAULT_AT", at)
        .env("FAULT_DO", action)
        .env("FAULT_TAKEOVER", ctl)
        .env("FAULT_PROXY", &proxy);
    let mut faulty = Proc::spawn_with(&mut cmd);
    let line = nth_failure(&old, 1);
    println!("[{tag}] {line}");
    assert!(
        faulty.wait_exit(LONG).is_some(),
        "[{tag}] the failed newcomer still runs:\n{}",
        faulty.output()
    );
    let s = hello_status(&control);
    assert_eq!(s["pid"], old.pid, "[{tag}] {s}");
    assert_eq!(s["restarts_total"]["failed"], 1, "[{tag}] {s}");
    load.expect(expect(old.pid));
    load.wait_checked(100, "after the failed takeover");

    // A real newcomer takes over afterwards.
    load.expect(None);
    let new_app = hello_at(&dir, "new");
    let new = Proc::spawn(&new_app, &["--takeover", ctl, "--addr", &addr_s]);
    assert!(
        old.wait_exit(LONG).is_some(),
        "[{tag}] no takeover after the failure"
    );
    load.expect(expect(new.pid));
    load.wait_checked(100, "after the takeover");
    let s = load.stop();
    s.print(&tag);
    assert_eq!(s.refused, 0, "[{tag}] refused connections: {:?}", s.notes);
    let in_flight = n_clients.get();
    assert!(
        s.failed <= in_flight,
        "[{tag}] {} failed: {:?}",
        s.failed,
        s.notes
    );
    assert_eq!(s.wrong, 0, "[{tag}] {:?}", s.notes);
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn takeover_newcomer_failing_at_each_step_leaves_the_old_one_accepting() {
    for action in ["kill", "exit", "hang"] {
        for at in ["start", "ready", "go", "holding"] {
            takeover_fault(at, action);
        }
    }
}
