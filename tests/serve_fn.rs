//! `ceaseless::serve(listener, app)`, axum::serve's shape on ceaseless's connections,
//! proved against real processes of the `ceaseless_serve` example with real signals and
//! real clients over 127.0.0.1: axum's `ConnectInfo` and ceaseless's extractors through
//! `into_make_service_with_connect_info`, keep-alive load through three restarts with
//! no failed request, the hammer on a response that never ends, a service error
//! answered 500, and the server's own graceful shutdown.
//!
//! The example is a binary: `cargo test --test serve_fn` alone does not rebuild it after
//! a change to the library (run `cargo build --examples` first).
#![cfg(unix)]
#![cfg(feature = "axum")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::generations::{expect_gone, installed, newest, restart_ok, wait_line_of, LONG};
use common::load::{
    connect_tcp, exchange_blocking, get_tcp, get_unix, reqwest_client, shared_client, Client,
    Expect, Load,
};
use common::{become_subreaper, example_bin, field, scratch_dir, signal, Proc};

/// Starts the example serving `app` (its `--app`) on a port of the kernel's choice;
/// returns it and its address once it serves.
fn start(app: &str) -> (Proc, String) {
    let p = Proc::spawn(
        &example_bin("ceaseless_serve"),
        &["--addr", "127.0.0.1:0", "--app", app],
    );
    let addr = p.ready_addr(1);
    (p, addr)
}

/// `GET path` on an open connection, which must answer 200; returns the body.
fn get_ok(s: &mut TcpStream, path: &str, p: &Proc) -> String {
    let r = exchange_blocking(s, path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}; output:\n{}", p.output()));
    assert_eq!(r.status, 200, "GET {path}: {r:?}; output:\n{}", p.output());
    r.body
}

/// `into_make_service_with_connect_info::<SocketAddr>()`: axum's `ConnectInfo`
/// answers the client's own address (without `request_extensions`), and ceaseless's
/// `ConnInfo` and `Drain` extractors work too.
#[test]
fn connect_info_and_the_extractors() {
    let (p, addr) = start("connect-info");
    let mut s = connect_tcp(&addr).unwrap();
    let me = s.local_addr().unwrap();
    assert_eq!(
        get_ok(&mut s, "/ip", &p).trim(),
        me.to_string(),
        "ConnectInfo"
    );
    assert_eq!(
        get_ok(&mut s, "/conn", &p).trim(),
        me.to_string(),
        "ConnInfo"
    );
    assert_eq!(get_ok(&mut s, "/drain", &p).trim(), "serving", "Drain");
    let hello = get_ok(&mut s, "/", &p);
    assert!(hello.contains(&format!("pid {}", p.pid)), "{hello:?}");

    // The other shapes axum::serve takes are served as well.
    for app in ["router", "make-service"] {
        let (p, addr) = start(app);
        let r = get_tcp(&addr, "/conn");
        assert_eq!(r.status, 200, "{app}: {r:?}; output:\n{}", p.output());
        assert!(r.body.starts_with("127.0.0.1:"), "{app}: {r:?}");
    }
}

/// A `UnixListener` from the process owner: served, `ConnInfo` names the client's
/// credentials, and a restart hands the socket over.
#[test]
fn a_unix_listener_is_served_and_handed_over() {
    become_subreaper();
    let sock = scratch_dir("serve-fn-unix").join("app.sock");
    let p = Proc::spawn(
        &example_bin("ceaseless_serve"),
        &["--unix", sock.to_str().unwrap()],
    );
    p.ready_addr(1);
    let r = get_unix(&sock, "/conn");
    let me = format!("pid={}", std::process::id());
    assert!(
        r.status == 200 && r.body.contains(&me),
        "{r:?}; output:\n{}",
        p.output()
    );
    let (_, new) = restart_ok(&p);
    let r = get_unix(&sock, "/");
    assert_eq!(common::load::body_pid(&r.body), Some(new), "{r:?}");
}

/// The status counts a `ceaseless::serve` server's connections under its listener's
/// address, as a `Server`'s.
#[cfg(feature = "control")]
#[test]
fn the_status_counts_the_connections() {
    let control = scratch_dir("serve-fn-status").join("control.sock");
    let p = Proc::spawn(
        &example_bin("ceaseless_serve"),
        &[
            "--addr",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr = p.ready_addr(1);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect_tcp(&addr).unwrap()).collect();
    for s in &mut conns {
        get_ok(s, "/", &p);
    }
    // Counted once each response is finished on the server's side: asked until then.
    let counts = || {
        let status = ceaseless::control::request_status(&control, LONG)
            .unwrap_or_else(|e| panic!("status: {e}; output:\n{}", p.output()));
        let listener = status
            .listeners
            .iter()
            .find(|l| l.address == addr)
            .unwrap_or_else(|| panic!("no listener {addr} in {status:?}"));
        let counted = listener
            .connections
            .unwrap_or_else(|| panic!("{addr}: connections not counted: {status:?}"));
        (counted, status)
    };
    common::wait_until(
        "three idle connections in the status",
        LONG,
        || {
            let (c, _) = counts();
            c.open == 3 && c.idle == 3
        },
        || format!("{:?}", counts().1),
    );
    let (_, status) = counts();
    assert!(status.requests >= 3, "{status:?}");
}

/// Keep-alive load through three restarts of a `ceaseless::serve` server: not one
/// request fails (pooled HTTP/1.1 and HTTP/2 clients, raw keep-alive connections that
/// reconnect only after `Connection: close`, a new connection per request), and once
/// a restart is over only the new generation answers.
#[test]
fn keep_alive_load_through_three_restarts_loses_nothing() {
    become_subreaper();
    let (_dir, app) = installed("serve-fn", "ceaseless_serve");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let url = format!("http://{addr}/");
    let load = Load::start("serve-fn", || {
        let mut c = shared_client(reqwest_client(false), &url, 4);
        c.extend(shared_client(reqwest_client(true), &url, 2));
        c.extend((0..4).map(|_| Client::Tcp(addr)));
        c.extend((0..2).map(|_| Client::FreshTcp(addr)));
        c
    });
    let only = |pid| Some(Expect { pid, version: None });
    load.expect(only(newest(&p)));
    load.wait_checked(300, "before the first restart");
    let mut gens = vec![newest(&p)];
    for i in 1..=3 {
        load.expect(None);
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        let exit = wait_line_of(&p, "ceaseless_serve exiting", old);
        assert!(
            exit.contains(&format!("handed over to pid {new}")),
            "restart {i}: {exit}"
        );
        load.expect(only(new));
        load.wait_checked(300, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }
    let summary = load.stop();
    summary.print("serve-fn");
    summary.assert_clean("serve-fn");
    assert!(
        summary.reconnects > 0,
        "no keep-alive client was told to reconnect: was the lame-duck drain used?"
    );

    let last = *gens.last().unwrap();
    signal(last, libc::SIGTERM);
    let exit = wait_line_of(&p, "ceaseless_serve exiting", last);
    assert_eq!(field(&exit, "ended").as_deref(), Some("shutdown"), "{exit}");
    expect_gone(&p, last, "the last generation after SIGTERM");
}

/// The hammer: a response that never ends keeps the old generation draining after
/// a restart, until SIGUSR2 cuts it; then the old generation exits.
#[test]
fn the_hammer_cuts_an_endless_response() {
    become_subreaper();
    let (_dir, app) = installed("serve-fn-hammer", "ceaseless_serve");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.ready_addr(1);
    let mut s = connect_tcp(&addr).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: ceaseless.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("tick 1\n") {
        let n = read_some(&mut s, &mut buf).expect("reading the stream");
        assert!(
            n > 0,
            "the stream ended early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }

    let (old, new) = restart_ok(&p);
    wait_line_of(&p, "stopped accepting; draining", old);
    // Still streaming from the old generation, which waits for it.
    let n = read_some(&mut s, &mut buf).expect("the stream, during the drain");
    assert!(n > 0, "the stream ended at the drain, before the hammer");
    assert!(
        common::alive(old),
        "the old generation left before the hammer"
    );
    // The new generation serves meanwhile.
    let r = get_tcp(&addr, "/");
    assert_eq!(common::load::body_pid(&r.body), Some(new), "{r:?}");

    signal(old, libc::SIGUSR2);
    let hammer = wait_line_of(&p, "[STOP - Hammer Time]", old);
    assert!(hammer.contains("connections=1"), "{hammer}");
    // The stream is cut: its reads end (EOF or an error) within a bounded number.
    let mut ended = false;
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(ended, "the stream went on after the hammer");
    expect_gone(&p, old, "the old generation after the hammer");
    let exit = wait_line_of(&p, "ceaseless_serve exiting", old);
    assert!(
        exit.contains(&format!("handed over to pid {new}")),
        "{exit}"
    );
}

/// A service error (a tower `Timeout` around the router) reaches the client as a
/// 500, logged, not as an empty reply; the connection serves on.
#[test]
fn a_service_error_is_answered_500() {
    let (p, addr) = start("timeout");
    let mut s = connect_tcp(&addr).unwrap();
    let r = exchange_blocking(&mut s, "/slow?ms=3000")
        .unwrap_or_else(|e| panic!("an empty reply: {e}; output:\n{}", p.output()));
    assert_eq!(r.status, 500, "{r:?}; output:\n{}", p.output());
    p.expect_line("the service failed; answering 500", LONG);
    // A request within the timeout, on the same connection.
    assert!(get_ok(&mut s, "/", &p).contains("hello from pid"));

    // With reqwest too (its own HTTP/1.1 and HTTP/2 clients).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for h2 in [false, true] {
        let status = rt.block_on(async {
            reqwest_client(h2)
                .get(format!("http://{addr}/slow?ms=3000"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| common::load::chain(&e))
        });
        assert_eq!(status, Ok(500), "h2: {h2}; output:\n{}", p.output());
    }
}

/// `with_graceful_shutdown(signal)`: when the signal fires (`GET /stop`), the server
/// stops accepting, answers the request in flight (with `Connection: close`), and
/// returns; the example then exits.
#[test]
fn the_graceful_shutdown_signal_answers_what_is_in_flight() {
    let (mut p, addr) = start("connect-info");
    // A connection that is served (so accepted), then a slow request on it.
    let mut slow = connect_tcp(&addr).unwrap();
    get_ok(&mut slow, "/", &p);
    slow.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: ceaseless.test\r\n\r\n")
        .unwrap();
    // Give the slow request a moment to be read (ordering only, no assertion on it:
    // read or not yet, it is answered).
    std::thread::sleep(Duration::from_millis(200));

    let r = get_tcp(&addr, "/stop");
    assert_eq!(r.status, 200, "{r:?}");
    p.expect_line("stopped accepting; draining", LONG);

    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        if let Some((r, _)) = common::load::parse_response(&got).unwrap() {
            break r;
        }
        let n = read_some(&mut slow, &mut buf).unwrap_or_else(|e| {
            panic!(
                "the request in flight was not answered: {e}; output:\n{}",
                p.output()
            )
        });
        assert!(n > 0, "closed before the answer; output:\n{}", p.output());
        got.extend_from_slice(&buf[..n]);
    };
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("slow answer"), "{answer:?}");
    assert!(
        answer.close,
        "no Connection: close during the drain: {answer:?}"
    );

    let status = p.wait_exit(LONG).unwrap_or_else(|| {
        panic!(
            "still running after its graceful shutdown; output:\n{}",
            p.output()
        )
    });
    assert!(status.success(), "{status}; output:\n{}", p.output());
    let exit = p.expect_line("ceaseless_serve exiting", LONG);
    assert_eq!(field(&exit, "ended").as_deref(), Some("shutdown"), "{exit}");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting after the shutdown"
    );
}

/// One read, retried when a signal interrupts it: the tests' process is a subreaper,
/// and a generation of another test that exits is its child then (SIGCHLD).
fn read_some(s: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
