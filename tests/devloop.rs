//! The development loop, with real processes, sockets and signals: a socket server such
//! as `systemfd --no-pid -s http::3000 -- cargo watch -x run` binds the socket once and
//! starts every build with it at descriptor 3, `LISTEN_FDS=1`, `LISTEN_FDS_FIRST_FD=3`
//! and no `LISTEN_PID` (the command is `cargo watch`, then `cargo run`, then the
//! program: no pid could be right). Here the test is that socket server, and a shell
//! that runs `hello` as its child stands for what lies between.
#![cfg(unix)]

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::Command;

use common::generations::{expect_gone, free_ports, restart_ok, unix_socket_exists, LONG};
use common::load::{body_pid, connect_tcp, exchange_blocking, get_tcp, get_unix};
use common::*;

/// The variables of a development loop, none of which may reach a generation that a
/// process which took them starts itself.
const LOOP_VARS: [&str; 4] = [
    "LISTEN_FDS=",
    "LISTEN_FDS_FIRST_FD=",
    "LISTEN_PID=",
    "LISTEN_FDNAMES=",
];

/// Starts `hello args` as a development loop starts each build: `fds` at 3, 4, …, the
/// variables exactly as `systemfd --no-pid` sets them, and a process in between that
/// knows nothing of sockets (a shell, as `cargo watch` is).
fn in_the_loop(args: &[&str], fds: &[RawFd]) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$0" "$@"; exit $?"#)
        .arg(example_bin("hello"))
        .args(args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDS_FIRST_FD", "3")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    let copies = pass_fds(&mut cmd, fds);
    let p = Proc::spawn_with(&mut cmd);
    drop(copies);
    p
}

/// The program the loop started (the shell's child): the first pid that served.
fn program(p: &Proc) -> u32 {
    p.serving_addr(1);
    let pid = p.generation_pids()[0];
    assert_ne!(pid, p.pid, "the shell in between served");
    pid
}

/// Asserts that none of the loop's variables reached `pid`.
fn assert_no_loop_env(pid: u32, what: &str) {
    let env = environ(pid);
    for var in LOOP_VARS {
        assert!(
            !env.iter().any(|v| v.starts_with(var)),
            "{what}: {var} reached pid {pid}"
        );
    }
}

/// What `pid` holds at descriptor 3 (`/proc` link), and whether it is close-on-exec.
fn fd3(pid: u32) -> (String, bool) {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .unwrap_or_else(|| panic!("no flags in {info:?}"));
    (
        link.to_string_lossy().into_owned(),
        flags & libc::O_CLOEXEC as u32 != 0,
    )
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn the_loops_socket_is_served_kept_through_a_sighup_and_outlives_the_program() {
    become_subreaper();
    // The loop's socket, bound once and kept open here as the socket server keeps it.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let inode = socket_inode(socket.as_raw_fd());

    let p = in_the_loop(&["--addr", &addr], &[socket.as_raw_fd()]);
    let first = program(&p);
    assert_eq!(p.ready_addr(1), addr);
    p.expect_line("LISTEN_FDS without LISTEN_PID", LONG);
    assert_eq!(
        p.count("took over an inherited listener"),
        1,
        "{}",
        p.output()
    );
    // Served on that very socket: the port is held by the socket server, so no other
    // socket could listen on it.
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(first)));
    assert!(
        holds(first, &inode),
        "the program bound a socket of its own"
    );

    // kill -HUP: the next generation serves the same socket, and never saw the loop's
    // variables.
    let (old, second) = restart_ok(&p);
    assert_eq!(old, first);
    assert_eq!(p.serving_addr(2), addr);
    assert_no_loop_env(second, "the generation after SIGHUP");
    expect_gone(&p, first, "the old generation after its drain");
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(second)));
    assert!(holds(second, &inode), "the next generation bound afresh");

    // The loop stops the program for the next build: the socket outlives it, and a
    // connection made while no program runs is answered by the next one.
    signal(second, libc::SIGTERM);
    expect_gone(&p, second, "the program after SIGTERM");
    let mut waiting = connect_tcp(&addr).expect("the loop's socket still listens");
    let next = in_the_loop(&["--addr", &addr], &[socket.as_raw_fd()]);
    let next_pid = program(&next);
    let r = exchange_blocking(&mut waiting, "/").expect("the waiting connection");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(next_pid)));
    assert!(holds(next_pid, &inode));
    signal(next_pid, libc::SIGTERM);
    expect_gone(&next, next_pid, "the next build after SIGTERM");
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn a_unix_socket_of_the_loop_keeps_its_file_for_the_next_build() {
    become_subreaper();
    let dir = scratch_dir("devloop-unix");
    let path = common::generations::socket_path(&dir, "app.sock");
    // `systemfd -s unix::PATH`: the socket server created the file; it owns it.
    let socket = UnixListener::bind(&path).unwrap();
    let inode = socket_inode(socket.as_raw_fd());
    let unix_addr = format!("unix:{}", path.display());

    let p = in_the_loop(&["--addr", &unix_addr], &[socket.as_raw_fd()]);
    let first = program(&p);
    p.ready_addr(1);
    assert_eq!(body_pid(&get_unix(&path, "/").body), Some(first));
    assert!(
        holds(first, &inode),
        "the program bound a socket of its own"
    );
    signal(first, libc::SIGTERM);
    expect_gone(&p, first, "the program after SIGTERM");
    assert!(
        unix_socket_exists(&path),
        "the program removed the socket file the loop owns:\n{}",
        p.output()
    );
    let next = in_the_loop(&["--addr", &unix_addr], &[socket.as_raw_fd()]);
    let next_pid = program(&next);
    assert_eq!(body_pid(&get_unix(&path, "/").body), Some(next_pid));
    assert!(holds(next_pid, &inode));
    signal(next_pid, libc::SIGTERM);
    expect_gone(&next, next_pid, "the next build after SIGTERM");
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn a_supervisor_in_the_loop_hands_the_socket_to_its_generations_without_the_variables() {
    become_subreaper();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let inode = socket_inode(socket.as_raw_fd());
    let mut p = in_the_loop(&["--supervise", "--addr", &addr], &[socket.as_raw_fd()]);
    let first = program(&p);
    let started = p.expect_line("supervisor: started a generation", LONG);
    let supervisor: u32 = field(&started, "pid").unwrap().parse().unwrap();
    assert!(holds(supervisor, &inode), "the supervisor did not take it");
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(first)));
    assert!(
        holds(first, &inode),
        "generation 1 bound a socket of its own"
    );
    assert_no_loop_env(first, "generation 1");

    // SIGHUP to the supervisor: the next generation serves the same socket.
    signal(supervisor, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart succeeded", 1, LONG)
        .unwrap_or_else(|| {
            panic!(
                "no restart; output:
{}",
                p.output()
            )
        });
    let second: u32 = field(&line, "new_pid").unwrap().parse().unwrap();
    p.wait_for_nth(&format!("serving pid={second} "), 1, LONG);
    assert_no_loop_env(second, "generation 2");
    assert!(
        holds(second, &inode),
        "generation 2 bound a socket of its own"
    );
    expect_gone(&p, first, "generation 1 after its drain");
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(second));

    signal(supervisor, libc::SIGTERM);
    let status = p.wait_exit(LONG).unwrap_or_else(|| {
        panic!(
            "the supervisor did not exit; output:
{}",
            p.output()
        )
    });
    assert!(
        status.success(),
        "{status:?}; output:
{}",
        p.output()
    );
}

/// Starts `hello --addr addr` with `bad` at descriptor 3 announced as the loop's; checks
/// that it was refused with the reason logged, left open exactly as it was, and that
/// the program serves an address it bound itself.
fn refused(bad: RawFd, addr: &str, reason: &str) -> Proc {
    let bad_inode = socket_inode(bad);
    let p = in_the_loop(&["--addr", addr], &[bad]);
    let pid = program(&p);
    let served = p.ready_addr(1);
    let logged = p.expect_line("inherited fd 3", LONG);
    assert!(
        logged.contains(reason) && logged.contains("ERROR"),
        "{logged:?} does not say {reason:?}"
    );
    assert_eq!(p.count("took over an inherited listener"), 0);
    let r = get_tcp(&served, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(pid)));
    // Not ours: still open at 3, not even made close-on-exec.
    assert_eq!(fd3(pid), (bad_inode, false), "descriptor 3 was touched");
    p
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn a_descriptor_that_is_not_a_listening_socket_is_refused_and_left_alone() {
    // A connected TCP socket: a stream, but not listening.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    let p = refused(client.as_raw_fd(), "127.0.0.1:0", "not a listening socket");
    // Only the program holds the connection now: were it closed, the peer would read
    // its end.
    drop(client);
    peer.set_nonblocking(true).unwrap();
    let read = peer.read(&mut [0u8; 1]);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the program closed the connection it was handed: {read:?}"
    );
    drop(p);
}

#[cfg_attr(not(feature = "systemd"), ignore = "needs the `systemd` feature")]
#[test]
fn a_socket_of_the_wrong_kind_is_refused_and_the_program_binds_its_address() {
    // `systemfd -s udp::PORT` where the program serves HTTP on that port: refused, and
    // the program binds the TCP port itself (one free for TCP, as a UDP port need not be).
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let udp = UdpSocket::bind(&addr).unwrap();
    let p = refused(udp.as_raw_fd(), &addr, "not a stream socket");
    assert_eq!(p.serving_addr(1), addr);
}

#[cfg_attr(
    feature = "systemd",
    ignore = "what a build without the `systemd` feature does"
)]
#[test]
fn without_the_systemd_feature_the_loops_socket_is_left_alone() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = socket_inode(socket.as_raw_fd());
    let p = in_the_loop(&["--addr", "127.0.0.1:0"], &[socket.as_raw_fd()]);
    let pid = program(&p);
    let served = p.ready_addr(1);
    assert_ne!(served, socket.local_addr().unwrap().to_string());
    assert_eq!(p.count("took over an inherited listener"), 0);
    assert_eq!(body_pid(&get_tcp(&served, "/").body), Some(pid));
    assert_eq!(fd3(pid), (inode, false), "descriptor 3 was touched");
}
