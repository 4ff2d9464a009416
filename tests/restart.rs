//! Zero-downtime restarts, proved with real processes, real signals and real clients:
//! deploys under load (HTTP/1.1, HTTP/2, TLS, a Unix socket), rollbacks, a SIGHUP storm,
//! ports added and removed, a long request across a restart, and a hostile environment.
//!
//! Every test installs copies of the example binaries in its own scratch directory, as a
//! deploy would, and listens on 127.0.0.1 port 0 (or on ports it picked, or on Unix
//! sockets), so the tests run in parallel. Nothing here asserts on timing: every wait is
//! bounded and generous, and what is checked is what happened, not how fast.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::generations::{
    children_of, expect_gone, fd_listing, free_ports, hello_version, install, install_script,
    listen_inode, newest, pid_field, reaped, restart_fails, restart_ok, settled_fd_count,
    socket_path, unix_socket_exists, write_atomically, LONG,
};
use common::load::{
    body_pid, body_version, connect_tcp, exchange_blocking, get_tcp, post_tcp, reqwest_client,
    shared_client, BodyCheck, Client, Expect, Load, REQUEST_TIMEOUT,
};
use common::{
    alive, become_subreaper, example_bin, fd_count, field, live_processes_named, scratch_dir,
    signal, versioned_hellos, wait_gone, Proc,
};

// ---------------------------------------------------------------------------------------
// 1, 2. Restarts under load
// ---------------------------------------------------------------------------------------

/// A binary to deploy, and the version it answers with (hello), if any.
type Build = (PathBuf, Option<String>);

/// Starts `builds[0]` at a deploy path, warms it up, then restarts it `restarts` times
/// under the load `clients` makes (deploying `builds[1]`, `builds[2]`, ... in turn), and
/// checks: zero failed requests, every restart succeeded, after each old generation
/// exited only the new one answers, the final generation holds as many descriptors as
/// the first did, and every old generation is gone and reaped.
fn restarts_under_load(
    tag: &str,
    builds: &[Build],
    extra_args: &[&str],
    restarts: usize,
    clients: impl Fn(SocketAddr) -> Vec<Client>,
) {
    let t0 = Instant::now();
    become_subreaper();
    let dir = scratch_dir(tag);
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let mut args = vec!["--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra_args);
    let p = Proc::spawn(&app, &args);
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let first = newest(&p);
    if let Some(v) = &builds[0].1 {
        assert_eq!(
            &hello_version(&p, first),
            v,
            "the first build answers with another version"
        );
    }
    let expect = |pid: u32, i: usize| {
        Some(Expect {
            pid,
            version: builds[i % builds.len()].1.clone(),
        })
    };

    // Warm up, then count the first generation's descriptors with no client connected.
    let warm = Load::start(&format!("{tag} warm-up"), || clients(addr));
    warm.expect(expect(first, 0));
    warm.wait_checked(200, "warm-up");
    let warm = warm.stop();
    warm.assert_clean(&format!("{tag} warm-up"));
    let baseline = settled_fd_count(first);
    let baseline_fds = fd_listing(first);

    let load = Load::start(tag, || clients(addr));
    load.expect(expect(first, 0));
    load.wait_checked(300, "before the first restart");
    let mut gens = vec![first];
    for i in 1..=restarts {
        load.expect(None);
        let (bin, version) = &builds[i % builds.len()];
        install(bin, &app);
        let (old, new) = restart_ok(&p);
        assert_eq!(
            old,
            *gens.last().unwrap(),
            "restart {i} came from another generation"
        );
        if let Some(v) = version {
            assert_eq!(
                &hello_version(&p, new),
                v,
                "restart {i}: the new generation runs another build than the one deployed"
            );
        }
        if !wait_gone(old, LONG) {
            panic!(
                "restart {i}: the old generation {old} still runs after {LONG:?}; responses \
                 by pid so far: {:?}; open descriptors of {old}:\n{}\noutput:\n{}",
                load.shared.tally.by_pid.lock().unwrap(),
                fd_listing(old),
                p.output()
            );
        }
        load.expect(expect(new, i));
        load.wait_checked(300, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }
    let summary = load.stop();
    summary.print(tag);
    summary.assert_clean(tag);

    assert_eq!(p.count("restart succeeded"), restarts, "{}", p.output());
    assert_eq!(p.count("restart failed"), 0, "{}", p.output());
    let last = *gens.last().unwrap();
    assert_eq!(newest(&p), last);

    // The final generation holds what the first held: nothing leaks across handovers.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fd_count(last) != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let final_count = fd_count(last);
    println!(
        "[{tag}] open descriptors: first generation {baseline}, final generation {final_count} \
         (after {restarts} restarts)"
    );
    assert_eq!(
        final_count,
        baseline,
        "descriptors of the first generation (pid {first}):\n{baseline_fds}\n\
         descriptors of the final generation (pid {last}):\n{}",
        fd_listing(last)
    );

    // Every old generation exited and was reaped; only the final one runs.
    for &g in &gens[..gens.len() - 1] {
        assert!(
            reaped(g),
            "old generation {g} is still there (zombie or alive)"
        );
    }
    let app_name = app.to_string_lossy().into_owned();
    assert_eq!(
        live_processes_named(&app_name),
        vec![last],
        "processes left running"
    );
    assert!(children_of(last).is_empty(), "{:?}", children_of(last));

    signal(last, libc::SIGTERM);
    expect_gone(&p, last, "the final generation after SIGTERM");
    println!(
        "[{tag}] {restarts} restarts, generations {gens:?}, wall time {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

fn hello_builds(versions: &[&str]) -> Vec<Build> {
    versioned_hellos(versions)
        .into_iter()
        .zip(versions)
        .map(|(p, v)| (p, Some(v.to_string())))
        .collect()
}

#[test]
fn restarts_under_http1_load() {
    let builds = hello_builds(&["v1", "v2", "v3"]);
    restarts_under_load("http1", &builds, &[], 10, |addr| {
        let url = format!("http://{addr}/");
        let mut c = shared_client(reqwest_client(false), &url, 16);
        c.extend((0..16).map(|_| Client::Tcp(addr)));
        c
    });
}

#[test]
fn restarts_under_http2_load() {
    let builds = hello_builds(&["v1", "v2", "v3"]);
    restarts_under_load("http2", &builds, &[], 5, |addr| {
        let url = format!("http://{addr}/");
        // Four HTTP/2 connections, eight concurrent streams each.
        (0..4)
            .flat_map(|_| shared_client(reqwest_client(true), &url, 8))
            .collect()
    });
}

#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn restarts_under_tls_load() {
    let dir = scratch_dir("tls-cert");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("make a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let root = reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap();
    let builds = vec![(example_bin("tls"), None)];
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    restarts_under_load("tls", &builds, &["--cert", cert, "--key", key], 5, |addr| {
        let url = format!("https://127.0.0.1:{}/", addr.port());
        let tls = |h1: bool| {
            let b = reqwest::Client::builder()
                .use_rustls_tls()
                .add_root_certificate(root.clone())
                .no_proxy()
                .timeout(REQUEST_TIMEOUT);
            let b = if h1 { b.http1_only() } else { b };
            b.build().expect("TLS client")
        };
        // Two HTTP/2 connections (ALPN) of eight streams, sixteen HTTP/1.1 tasks.
        let mut c: Vec<Client> = (0..2)
            .flat_map(|_| shared_client(tls(false), &url, 8))
            .collect();
        c.extend(shared_client(tls(true), &url, 16));
        c
    });
}

// ---------------------------------------------------------------------------------------
// 3. Rollback
// ---------------------------------------------------------------------------------------

#[test]
fn broken_deploys_roll_back() {
    let t0 = Instant::now();
    let builds = hello_builds(&["v1", "v2"]);
    become_subreaper();
    let dir = scratch_dir("rollback");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let p = Proc::spawn(
        &app,
        &["--addr", "127.0.0.1:0", "--ready-timeout-ms", "2500"],
    );
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let gen1 = newest(&p);

    let load = Load::start("rollback", || {
        let mut c = shared_client(reqwest_client(false), &format!("http://{addr}/"), 8);
        c.extend((0..8).map(|_| Client::Tcp(addr)));
        c
    });
    // The first generation must answer everything until the good deploy.
    load.expect(Some(Expect {
        pid: gen1,
        version: Some("v1".into()),
    }));
    load.wait_checked(100, "before the broken deploys");

    type Prepare = fn(&Path);
    let cases: [(&str, Prepare, &[&str]); 3] = [
        (
            "a binary that exits at once",
            |app| install_script(app, "#!/bin/sh\nexit 3\n"),
            &["exited before it took over", "exit status: 3"],
        ),
        (
            "a binary that never becomes ready",
            |app| install_script(app, "#!/bin/sh\nexec sleep 600\n"),
            &["did not take over within 2.5s", "stopped it"],
        ),
        (
            "a missing binary",
            |app| std::fs::remove_file(app).unwrap(),
            &["cannot start", "No such file or directory"],
        ),
    ];
    for (what, prepare, reasons) in cases {
        prepare(&app);
        let line = restart_fails(&p);
        for r in reasons {
            assert!(
                line.contains(r),
                "{what}: the failure should say {r:?}: {line}"
            );
        }
        println!("[rollback] {what}: {line}");
        assert!(alive(gen1), "{what}: the old generation died");
        assert_eq!(
            newest(&p),
            gen1,
            "{what}: another generation logged serving"
        );
        // The failed generation was killed and reaped: no child, not even a zombie.
        assert_eq!(
            children_of(gen1),
            vec![],
            "{what}: the old generation has children left"
        );
        let app_name = dir.to_string_lossy().into_owned();
        assert_eq!(
            live_processes_named(&app_name),
            vec![gen1],
            "{what}: processes left"
        );
        load.wait_checked(100, &format!("after {what}"));
    }

    // A good deploy still goes through.
    load.expect(None);
    install(&builds[1].0, &app);
    let (old, gen2) = restart_ok(&p);
    assert_eq!(old, gen1);
    assert_eq!(hello_version(&p, gen2), "v2");
    expect_gone(&p, gen1, "the old generation after the good deploy");
    load.expect(Some(Expect {
        pid: gen2,
        version: Some("v2".into()),
    }));
    load.wait_checked(100, "after the good deploy");
    let summary = load.stop();
    summary.print("rollback");
    summary.assert_clean("rollback");
    assert_eq!(p.count("restart failed"), 3, "{}", p.output());
    assert!(reaped(gen1));
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the new generation after SIGTERM");
    println!("[rollback] wall time {:.1} s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 4. A SIGHUP storm
// ---------------------------------------------------------------------------------------

#[test]
fn sighup_storm() {
    let t0 = Instant::now();
    let builds = hello_builds(&["v1"]);
    become_subreaper();
    let dir = scratch_dir("storm");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let app_name = app.to_string_lossy().into_owned();
    // Two servers: a generation is ready only once both accept, so a SIGHUP can land
    // on a generation that serves on one socket but is not ready yet.
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0"]);
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    p.serving_addr(2);
    let gen1 = newest(&p);
    let load = Load::start("storm", || (0..8).map(|_| Client::Tcp(addr)).collect());
    load.expect(Some(Expect {
        pid: gen1,
        version: None,
    }));
    load.wait_checked(50, "before the storm");
    load.expect(None);

    // 100 SIGHUPs in about a second, each to the newest generation known from the log,
    // as an operator (or a deploy script in a loop) reading a PID file would send them.
    let storm = Instant::now();
    let mut max_live = 0;
    let sent = 100;
    for _ in 0..sent {
        signal(newest(&p), libc::SIGHUP);
        max_live = max_live.max(live_processes_named(&app_name).len());
        std::thread::sleep(Duration::from_millis(10));
    }
    let storm_secs = storm.elapsed().as_secs_f64();

    // Settle: nothing in flight, one generation left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = p.count("started the next generation");
        let concluded = p.count("restart succeeded")
            + p.output()
                .lines()
                .filter(|l| l.contains("restart failed") && l.contains("(pid "))
                .count();
        let live = live_processes_named(&app_name);
        if started == concluded && live == vec![newest(&p)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the storm did not settle: {started} restarts started, {concluded} concluded, \
             live {live:?}; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let last = newest(&p);
    load.expect(Some(Expect {
        pid: last,
        version: None,
    }));
    load.wait_checked(50, "after the storm");
    let summary = load.stop();
    summary.print("storm");
    summary.assert_clean("storm");

    let out = p.output();
    let lines: Vec<&str> = out.lines().collect();
    let started: Vec<(usize, u32, u32)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("started the next generation"))
        .map(|(i, l)| (i, pid_field(l, "pid"), pid_field(l, "new_pid")))
        .collect();
    let handovers: Vec<(u32, u32)> = lines
        .iter()
        .filter(|l| l.contains("restart succeeded"))
        .map(|l| (pid_field(l, "pid"), pid_field(l, "new_pid")))
        .collect();
    let refused = lines
        .iter()
        .filter(|l| l.contains("restart failed") && l.contains("already in progress"))
        .count();
    let draining = lines
        .iter()
        .filter(|l| l.contains("restart failed") && l.contains("shutting down"))
        .count();
    println!(
        "[storm] {sent} SIGHUPs in {storm_secs:.2} s: {} generations started, {} handovers, \
         {refused} refused (restart in progress), {draining} refused (draining), \
         at most {max_live} processes alive at once; settled on pid {last}; wall {:.1} s",
        started.len(),
        handovers.len(),
        t0.elapsed().as_secs_f64()
    );

    // No fork bomb: never more generations than signals, and at least one handover.
    assert!(
        started.len() <= sent,
        "{} generations for {sent} signals",
        started.len()
    );
    assert!(
        !handovers.is_empty(),
        "no restart succeeded; output:\n{out}"
    );
    // A generation restarts only once it reported ready itself: the restart it came
    // from is over before the next one begins, so at most one is in flight at a time.
    for &(i, pid, new_pid) in &started {
        let ready_before = lines[..i]
            .iter()
            .any(|l| l.contains("declared ready") && field(l, "pid") == Some(pid.to_string()));
        assert!(
            ready_before,
            "pid {pid} started generation {new_pid} before it was ready itself (line {i}); \
             output:\n{out}"
        );
    }
    // The handovers form one chain from the first generation to the last: no
    // generation handed over twice, none was handed over to twice.
    let mut next: HashMap<u32, u32> = HashMap::new();
    for &(old, new) in &handovers {
        assert!(
            next.insert(old, new).is_none(),
            "pid {old} handed over twice:\n{out}"
        );
    }
    let (mut cur, mut steps) = (gen1, 0);
    while let Some(&n) = next.get(&cur) {
        cur = n;
        steps += 1;
        assert!(steps <= handovers.len(), "the handovers loop:\n{out}");
    }
    assert_eq!(
        steps,
        handovers.len(),
        "the handovers do not form one chain:\n{out}"
    );
    assert_eq!(
        cur, last,
        "the chain of handovers does not end at the serving generation"
    );

    // Exactly one generation is left; it serves; nothing else remains.
    assert_eq!(live_processes_named(&app_name), vec![last]);
    assert_eq!(body_pid(&get_tcp(&addr.to_string(), "/").body), Some(last));
    for g in p.generation_pids().into_iter().filter(|&g| g != last) {
        assert!(
            wait_gone(g, LONG) && reaped(g),
            "generation {g} is still there"
        );
    }
    for &(_, _, child) in &started {
        if child != last {
            assert!(
                wait_gone(child, LONG) && reaped(child),
                "pid {child} is still there"
            );
        }
    }
    assert!(children_of(last).is_empty(), "{:?}", children_of(last));
    signal(last, libc::SIGTERM);
    expect_gone(&p, last, "the last generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 5. Ports added and removed across a restart
// ---------------------------------------------------------------------------------------

/// "server N from pid P" -> (N, P).
fn server_and_pid(body: &str) -> Option<(usize, u32)> {
    let n = body
        .strip_prefix("server ")?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((n, body_pid(body)?))
}

#[test]
fn ports_added_and_removed() {
    become_subreaper();
    let dir = scratch_dir("ports");
    let app = dir.join("app");
    install(&example_bin("multi_port"), &app);
    let ports = free_ports(3);
    let [a, b, c] = [0, 1, 2].map(|i| format!("127.0.0.1:{}", ports[i]));
    let addr_file = dir.join("addrs");
    write_atomically(&addr_file, &format!("{a}\n{b}\n"));
    let p = Proc::spawn(&app, &["--addr-file", addr_file.to_str().unwrap()]);
    p.serving_addr(2);
    let gen1 = newest(&p);
    let served = |addr: &str| server_and_pid(&get_tcp(addr, "/").body);
    assert_eq!(
        served(&a),
        Some((1, gen1)),
        "A is server 1 of the first generation"
    );
    assert_eq!(
        served(&b),
        Some((2, gen1)),
        "B is server 2 of the first generation"
    );
    let inode_b = listen_inode(ports[1]).expect("B's listening socket in /proc/net/tcp");

    // Clients on B throughout: B is server 2 in the first generation, server 1 after.
    let check: BodyCheck = Arc::new(move |body: &str| match server_and_pid(body) {
        Some((2, pid)) if pid == gen1 => Ok(()),
        Some((1, pid)) if pid != gen1 => Ok(()),
        _ => Err(format!("wrong mapping on B: {body:?}")),
    });
    let b_addr: SocketAddr = b.parse().unwrap();
    let load = Load::start_checked("ports", Some(check), || {
        (0..8).map(|_| Client::Tcp(b_addr)).collect()
    });
    load.expect(Some(Expect {
        pid: gen1,
        version: None,
    }));
    load.wait_checked(50, "before the restart");
    load.expect(None);

    write_atomically(&addr_file, &format!("{b}\n{c}\n"));
    let (_, gen2) = restart_ok(&p);
    expect_gone(&p, gen1, "the first generation");
    load.expect(Some(Expect {
        pid: gen2,
        version: None,
    }));
    load.wait_checked(50, "after the restart");
    let summary = load.stop();
    summary.print("ports");
    summary.assert_clean("ports");

    let out = p.output();
    for addr in [&b, &c] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!("serving pid={gen2} addr={addr}"))),
            "the new generation does not serve {addr}:\n{out}"
        );
    }
    assert!(
        out.contains(&format!("took over an inherited listener addr={b} ")),
        "B was not handed over:\n{out}"
    );
    assert!(
        out.contains("closing an inherited listener no server claimed")
            && out.contains(&format!("tcp:{a}")),
        "A's socket was not released by the new generation:\n{out}"
    );
    assert_eq!(
        listen_inode(ports[1]),
        Some(inode_b),
        "B is served from another socket than before the restart"
    );
    assert_eq!(
        served(&b),
        Some((1, gen2)),
        "B is server 1 of the new generation"
    );
    assert_eq!(
        served(&c),
        Some((2, gen2)),
        "C is server 2 of the new generation"
    );
    match connect_tcp(&a) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("A should refuse connections, got: {e}"),
        Ok(mut s) => panic!("A still accepts: {:?}", exchange_blocking(&mut s, "/")),
    }
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 6. A long request across a restart
// ---------------------------------------------------------------------------------------

#[test]
fn long_request_finishes_on_the_old_generation() {
    let builds = hello_builds(&["v1"]);
    become_subreaper();
    let dir = scratch_dir("slow");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let gen1 = newest(&p);

    // A first request on the connection proves the old generation owns it.
    let mut conn = connect_tcp(&addr).unwrap();
    let first = exchange_blocking(&mut conn, "/").unwrap();
    assert_eq!(body_pid(&first.body), Some(gen1), "{first:?}");
    let slow = std::thread::spawn(move || exchange_blocking(&mut conn, "/slow?ms=3000"));
    std::thread::sleep(Duration::from_millis(200));
    let (old, gen2) = restart_ok(&p);
    assert_eq!(old, gen1);
    assert!(
        alive(gen1),
        "the old generation exited with a request in flight"
    );
    // New connections already go to the new generation.
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(gen2));

    let slow = slow.join().unwrap();
    let slow = slow.unwrap_or_else(|e| panic!("the slow request failed: {e}; {}", p.output()));
    println!("[slow] {slow:?}");
    assert_eq!(slow.status, 200);
    assert_eq!(
        body_pid(&slow.body),
        Some(gen1),
        "the slow request must finish on the old generation"
    );
    // Connection: close is added when the handler finishes during the drain: so the
    // request was in flight when the restart succeeded, and was served to the end.
    assert!(
        slow.close,
        "the slow response lacks Connection: close: it finished before the drain began, \
         so it did not span the restart"
    );
    expect_gone(
        &p,
        gen1,
        "the old generation once its last request finished",
    );
    assert!(reaped(gen1));
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 7. A Unix socket
// ---------------------------------------------------------------------------------------

#[test]
fn unix_socket_restarts() {
    let builds = hello_builds(&["v1", "v2"]);
    become_subreaper();
    let dir = scratch_dir("unix");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let sock = socket_path(&dir, "s.sock");
    let _ = std::fs::remove_file(&sock);
    let spec = format!("unix:{}", sock.display());
    let p = Proc::spawn(&app, &["--addr", &spec]);
    assert_eq!(p.serving_addr(1), spec);
    let mut gen = newest(&p);
    assert!(unix_socket_exists(&sock));

    let load = Load::start("unix", || {
        (0..16).map(|_| Client::Unix(sock.clone())).collect()
    });
    load.expect(Some(Expect {
        pid: gen,
        version: Some("v1".into()),
    }));
    load.wait_checked(100, "before the first restart");
    for i in 1..=3 {
        load.expect(None);
        let (bin, version) = &builds[i % 2];
        install(bin, &app);
        let (old, new) = restart_ok(&p);
        assert_eq!(old, gen);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        assert!(
            unix_socket_exists(&sock),
            "restart {i}: the socket file is gone after the handover"
        );
        load.expect(Some(Expect {
            pid: new,
            version: version.clone(),
        }));
        load.wait_checked(100, &format!("restart {i}: the new generation"));
        gen = new;
    }
    let summary = load.stop();
    summary.print("unix");
    summary.assert_clean("unix");
    assert!(unix_socket_exists(&sock));
    signal(gen, libc::SIGTERM);
    expect_gone(&p, gen, "the last generation after SIGTERM");
    assert!(
        !sock.exists(),
        "the socket file outlived the final shutdown"
    );
}

// ---------------------------------------------------------------------------------------
// 8. A hostile environment
// ---------------------------------------------------------------------------------------

/// Makes `fds[i].0` the child's descriptor `fds[i].1`, without close-on-exec.
fn pass_fds(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: between fork and exec the closure only calls fcntl and dup2, which are
    // async-signal-safe, and reads a vector allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = [-1; 8];
            // Move every source clear of the targets first, so no dup2 clobbers one.
            for (slot, (src, _)) in moved.iter_mut().zip(&fds) {
                *slot = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 64);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (tmp, (_, target)) in moved.iter().zip(&fds) {
                if libc::dup2(*tmp, *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A listening socket to hand over, and its port.
fn handed_listener() -> (OwnedFd, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (OwnedFd::from(l), port)
}

/// Everything written on a pipe until its write end closes (bounded in time).
fn read_pipe(r: OwnedFd) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(LONG).ok()
}

fn refuses(port: u16) -> bool {
    matches!(
        StdTcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

#[test]
fn hostile_environment_binds_afresh() {
    let builds = hello_builds(&["v1"]);
    let hello = builds[0].0.clone();
    become_subreaper();
    let me = std::process::id().to_string();

    struct Case {
        what: &'static str,
        env: Vec<(&'static str, String)>,
        /// Descriptors to hand over: (ours, the child's number). Ours are closed once
        /// the child runs.
        fds: Vec<(OwnedFd, RawFd)>,
        /// What the log must say.
        logged: Vec<String>,
        /// A port that must refuse connections once the server serves (the handed
        /// socket was closed, not leaked).
        closed_port: Option<u16>,
    }

    let (tcp_wrong_kind, wrong_kind_port) = handed_listener();
    let (tcp_unclaimed, unclaimed_port) = handed_listener();
    let udp = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let file = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());

    let cases = vec![
        Case {
            what: "a parent pid that is no number",
            env: vec![("CEASELESS_PARENT_PID", "not-a-pid".into()), ("CEASELESS_FDS", "tcp:127.0.0.1:0".into())],
            fds: vec![],
            logged: vec!["malformed environment variable CEASELESS_PARENT_PID".into()],
            closed_port: None,
        },
        Case {
            what: "malformed names",
            env: vec![("CEASELESS_PARENT_PID", me.clone()), ("CEASELESS_FDS", "tcp:nowhere\nftp:1.2.3.4:5".into())],
            fds: vec![],
            logged: vec!["malformed environment variable CEASELESS_FDS".into()],
            closed_port: None,
        },
        Case {
            what: "a malformed readiness fd",
            env: vec![
                ("CEASELESS_PARENT_PID", me.clone()),
                ("CEASELESS_FDS", String::new()),
                ("CEASELESS_READY_FD", "stdout".into()),
            ],
            fds: vec![],
            logged: vec!["malformed environment variable CEASELESS_READY_FD".into()],
            closed_port: None,
        },
        Case {
            what: "descriptors announced but never handed over",
            env: vec![
                ("CEASELESS_PARENT_PID", me.clone()),
                ("CEASELESS_FDS", "tcp:127.0.0.1:0\nunix:/nonexistent/x.sock".into()),
                ("CEASELESS_READY_FD", "5".into()),
            ],
            fds: vec![],
            logged: vec![
                "inherited fd 3 (tcp:127.0.0.1:0) is unusable".into(),
                "inherited fd 4 (unix:/nonexistent/x.sock) is unusable".into(),
                "inherited fd 5 (CEASELESS_READY_FD) is unusable".into(),
            ],
            closed_port: None,
        },
        Case {
            what: "a readiness fd that is no pipe",
            env: vec![
                ("CEASELESS_PARENT_PID", me.clone()),
                ("CEASELESS_FDS", String::new()),
                ("CEASELESS_READY_FD", "3".into()),
            ],
            fds: vec![(file(), 3)],
            logged: vec!["inherited fd 3 (CEASELESS_READY_FD) is unusable: not a pipe".into()],
            closed_port: None,
        },
        Case {
            what: "a TCP listener announced as a Unix socket",
            env: vec![("CEASELESS_PARENT_PID", me.clone()), ("CEASELESS_FDS", "unix:/tmp/ceaseless-nowhere.sock".into())],
            fds: vec![(tcp_wrong_kind, 3)],
            logged: vec![format!("announced as unix:/tmp/ceaseless-nowhere.sock but it is 127.0.0.1:{wrong_kind_port}")],
            closed_port: Some(wrong_kind_port),
        },
        Case {
            what: "a UDP socket and a file announced as the requested listeners",
            env: vec![("CEASELESS_PARENT_PID", me.clone()), ("CEASELESS_FDS", "tcp:127.0.0.1:0\ntcp:127.0.0.1:0".into())],
            fds: vec![(udp, 3), (file(), 4)],
            logged: vec!["not a stream socket".into(), "not a socket".into()],
            closed_port: None,
        },
        Case {
            what: "a listener under a name no server asks for",
            env: vec![("CEASELESS_PARENT_PID", me.clone()), ("CEASELESS_FDS", "tcp:127.0.0.1:9".into())],
            fds: vec![(tcp_unclaimed, 3)],
            logged: vec!["closing an inherited listener no server claimed".into()],
            closed_port: Some(unclaimed_port),
        },
    ];

    for case in cases {
        let mut cmd = Command::new(&hello);
        cmd.args(["--addr", "127.0.0.1:0"]);
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        pass_fds(
            &mut cmd,
            case.fds
                .iter()
                .map(|(fd, n)| (fd.as_raw_fd(), *n))
                .collect(),
        );
        let mut p = Proc::spawn_with(&mut cmd);
        // Our copies go: a socket the child does not keep is closed for good.
        drop(case.fds);
        let what = case.what;
        let addr = p.serving_addr(1);
        for l in &case.logged {
            let line = p.expect_line(l, LONG);
            println!("[env] {what}: {line}");
        }
        // It serves normally, on a socket of its own.
        for _ in 0..20 {
            let r = get_tcp(&addr, "/");
            assert_eq!(
                (r.status, body_pid(&r.body)),
                (200, Some(p.pid)),
                "{what}: {r:?}"
            );
        }
        if let Some(port) = case.closed_port {
            assert_ne!(
                addr,
                format!("127.0.0.1:{port}"),
                "{what}: served on the bad socket"
            );
            assert!(
                refuses(port),
                "{what}: the handed socket on port {port} was kept open"
            );
        }
        p.signal(libc::SIGTERM);
        let status = p
            .wait_exit(LONG)
            .unwrap_or_else(|| panic!("{what}: no exit after SIGTERM"));
        let out = p.output();
        assert!(status.success(), "{what}: exit {status}; output:\n{out}");
        assert!(!out.contains("panicked"), "{what}: a panic; output:\n{out}");
    }

    // The control: the same protocol done right is honoured. A listener under the
    // requested name and a readiness pipe: the server takes the socket over, reports
    // ready on the pipe, and can itself hand over to a next generation.
    let (l, port) = handed_listener();
    let (ready_r, ready_w) = pipe();
    let mut cmd = Command::new(&hello);
    cmd.args(["--addr", "127.0.0.1:0"])
        .env("CEASELESS_PARENT_PID", &me)
        .env("CEASELESS_FDS", "tcp:127.0.0.1:0")
        .env("CEASELESS_READY_FD", "4");
    pass_fds(&mut cmd, vec![(l.as_raw_fd(), 3), (ready_w.as_raw_fd(), 4)]);
    let p = Proc::spawn_with(&mut cmd);
    drop((l, ready_w));
    let ready = read_pipe(ready_r)
        .unwrap_or_else(|| panic!("no readiness report; output:\n{}", p.output()));
    assert_eq!(ready, format!("ready {}\n", p.pid), "the readiness report");
    assert_eq!(
        p.serving_addr(1),
        format!("127.0.0.1:{port}"),
        "the handed socket is served"
    );
    p.expect_line("took over an inherited listener", LONG);
    let (_, gen2) = restart_ok(&p);
    expect_gone(&p, p.pid, "the control's first generation");
    assert_eq!(
        body_pid(&get_tcp(&format!("127.0.0.1:{port}"), "/").body),
        Some(gen2)
    );
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the control's second generation");
}

// ---------------------------------------------------------------------------------------
// 9. No restart before readiness
// ---------------------------------------------------------------------------------------

/// A generation that serves on some sockets but has not reported ready refuses to
/// restart: its own restart is still in progress, and a handover now would lose the
/// sockets its other servers have not taken over yet (the port would vanish).
///
/// The process is started as a new generation of a fake parent (this test), with one
/// socket under the requested name and one nobody asks for, and a second server that
/// starts 500 ms after the first (`--stagger-ms`): it declares ready only once both
/// serve, so it spends that time serving but not ready; the SIGHUP is sent as soon as
/// its first server serves.
#[test]
fn no_restart_before_ready() {
    let builds = hello_builds(&["v1"]);
    become_subreaper();
    let me = std::process::id().to_string();
    for attempt in 1..=5 {
        let (claimed, port) = handed_listener();
        let (unclaimed, _) = handed_listener();
        let (ready_r, ready_w) = pipe();
        let mut cmd = Command::new(&builds[0].0);
        cmd.args(["--addr", "127.0.0.1:0", "--addr", "127.0.0.1:0"])
            .args(["--stagger-ms", "500"])
            .env("CEASELESS_PARENT_PID", &me)
            .env("CEASELESS_FDS", "tcp:127.0.0.1:0\ntcp:127.0.0.1:9")
            .env("CEASELESS_READY_FD", "5");
        pass_fds(
            &mut cmd,
            vec![
                (claimed.as_raw_fd(), 3),
                (unclaimed.as_raw_fd(), 4),
                (ready_w.as_raw_fd(), 5),
            ],
        );
        let p = Proc::spawn_with(&mut cmd);
        drop((claimed, unclaimed, ready_w));
        assert_eq!(p.serving_addr(1), format!("127.0.0.1:{port}"));
        signal(p.pid, libc::SIGHUP);
        let ready_line = p.expect_line("declared ready", LONG);
        assert_eq!(
            read_pipe(ready_r).as_deref(),
            Some(format!("ready {}\n", p.pid).as_str()),
            "the generation never reported ready to its parent (did it restart before it \
             was ready?); output:\n{}",
            p.output()
        );
        // The verdict on the SIGHUP: refused, or a restart started.
        let deadline = Instant::now() + LONG;
        let (lines, verdict) = loop {
            let out = p.output();
            let lines: Vec<String> = out.lines().map(String::from).collect();
            let verdict = lines.iter().position(|l| {
                l.contains("restart failed") || l.contains("started the next generation")
            });
            if let Some(v) = verdict {
                break (lines, v);
            }
            assert!(
                Instant::now() < deadline,
                "no verdict on the SIGHUP:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let ready_at = lines.iter().position(|l| *l == ready_line).unwrap();
        if lines[verdict].contains("restart failed") {
            assert!(
                lines[verdict].contains("a restart is already in progress"),
                "refused for another reason: {}",
                lines[verdict]
            );
            println!("[not ready] attempt {attempt}: {}", lines[verdict]);
            // Once ready, the same generation restarts.
            let (_, gen2) = restart_ok(&p);
            assert_eq!(
                body_pid(&get_tcp(&format!("127.0.0.1:{port}"), "/").body),
                Some(gen2)
            );
            expect_gone(&p, p.pid, "the first generation");
            signal(gen2, libc::SIGTERM);
            expect_gone(&p, gen2, "the second generation");
            return;
        }
        assert!(
            verdict > ready_at,
            "a restart started before the generation was ready:\n{}",
            p.output()
        );
        // The SIGHUP arrived after the settle time (a slow machine): try again.
        println!("[not ready] attempt {attempt}: the SIGHUP arrived after readiness; again");
    }
    panic!("in 5 attempts no SIGHUP arrived while the generation was not ready yet");
}

// ---------------------------------------------------------------------------------------
// 10. An HTTP/2 connection that spoke first after the drain began
// ---------------------------------------------------------------------------------------

/// One HTTP/2 frame: (type, flags, stream id, payload).
type Frame = (u8, u8, u32, Vec<u8>);

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Takes the complete frames off the front of `buf`.
fn h2_frames(buf: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while buf.len() >= 9 {
        let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
        if buf.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        frames.push((buf[3], buf[4], stream, buf[9..9 + len].to_vec()));
        buf.drain(..9 + len);
    }
    frames
}

/// A connection the old generation accepted before the drain, but on which the client
/// says nothing until the drain began, then speaks HTTP/2 (prior knowledge) and keeps
/// opening streams: it must get GOAWAY like every other HTTP/2 connection, or it would
/// hold the old generation (serving the old code) until the hammer.
#[test]
fn late_http2_connection_gets_goaway() {
    const GOAWAY: u8 = 7;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    let builds = hello_builds(&["v1"]);
    become_subreaper();
    let dir = scratch_dir("late-h2");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    let gen1 = newest(&p);

    // Connect, and wait until the first generation holds the connection (one more
    // descriptor): it is the only one accepting yet.
    let before = settled_fd_count(gen1);
    let mut conn = connect_tcp(&addr).unwrap();
    let deadline = Instant::now() + LONG;
    while fd_count(gen1) <= before {
        assert!(
            Instant::now() < deadline,
            "the connection was never accepted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, gen2) = restart_ok(&p);

    // Only now the client speaks: the preface, SETTINGS, then a GET every 50 ms.
    // HPACK: :method GET, :scheme http, :path /, :authority "t" (literal, no index).
    let request = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&out).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let (mut buf, mut stream_id, mut responses) = (Vec::new(), 1u32, 0);
    let mut goaway = None;
    let sent_at = Instant::now();
    let deadline = sent_at + Duration::from_secs(10);
    let mut next_request = sent_at;
    // Until the GOAWAY, then on for the answers to what was sent before it (the server
    // may send its GOAWAY before it read the first request, which it then answers),
    // until the server closes the connection or a second has passed.
    let mut until = deadline;
    while Instant::now() < until.min(deadline) {
        // One request per 50 ms: the connection is never idle for the drain grace, and
        // never floods the server either. None after the GOAWAY.
        if goaway.is_none() && Instant::now() >= next_request {
            conn.write_all(&h2_frame(HEADERS, 0x5, stream_id, &request))
                .unwrap_or_else(|e| panic!("stream {stream_id}: {e}; output:\n{}", p.output()));
            stream_id += 2;
            next_request += Duration::from_millis(50);
        }
        let mut chunk = [0u8; 16 * 1024];
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // (A connection closed after its GOAWAY may be reset.)
            Err(_) if goaway.is_some() => break,
            Err(e) => panic!("reading frames: {e}"),
        }
        for (ty, flags, stream, payload) in h2_frames(&mut buf) {
            match ty {
                HEADERS if stream > 0 => responses += 1,
                GOAWAY if goaway.is_none() => {
                    goaway = Some((payload, sent_at.elapsed()));
                    until = Instant::now() + Duration::from_secs(1);
                }
                // (Acknowledged; a write that fails shows in the next read.)
                SETTINGS if flags & 1 == 0 => {
                    let _ = conn.write_all(&h2_frame(SETTINGS, 1, 0, &[]));
                }
                PING if flags & 1 == 0 => {
                    let _ = conn.write_all(&h2_frame(PING, 1, 0, &payload));
                }
                _ => {}
            }
        }
    }
    // GOAWAY's payload: the last stream id (4 bytes), then the error code (4 bytes).
    let goaway = goaway.map(|(payload, after)| {
        let code = payload
            .get(4..8)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        (code, after)
    });
    println!(
        "[late h2] {responses} responses on {} streams; GOAWAY (error code, after): {goaway:?}",
        stream_id / 2
    );
    assert!(
        responses > 0,
        "the old generation never answered on the connection"
    );
    assert!(
        matches!(goaway, Some((Some(0), _))),
        "no graceful GOAWAY (NO_ERROR) within 10 s on an HTTP/2 connection of the draining \
         generation ({responses} responses so far; got {goaway:?}): it keeps serving the \
         old code"
    );
    drop(conn);
    expect_gone(
        &p,
        gen1,
        "the old generation once its HTTP/2 connection went away",
    );
    assert!(reaped(gen1));
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 11. A keep-alive connection idle since before the drain
// ---------------------------------------------------------------------------------------

/// A client's pooled connection, idle for longer than the drain grace when the drain
/// begins, is the one the client falls back on once its busy connections get
/// `Connection: close`. The grace must count from the drain's start: a request sent
/// on it within the grace is answered (with `Connection: close`), not reset.
#[test]
fn connection_idle_before_the_drain_is_answered() {
    let builds = hello_builds(&["v1"]);
    become_subreaper();
    let dir = scratch_dir("idle-before");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    // A long grace, so that the client's reaction time never matters.
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0", "--drain-grace-ms", "2000"]);
    let addr = p.serving_addr(1);
    let gen1 = newest(&p);
    let mut conn = connect_tcp(&addr).unwrap();
    let first = exchange_blocking(&mut conn, "/").unwrap();
    assert_eq!((body_pid(&first.body), first.close), (Some(gen1), false));
    // Idle for longer than the grace, then the drain begins.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, gen2) = restart_ok(&p);
    let r = exchange_blocking(&mut conn, "/").unwrap_or_else(|e| {
        panic!(
            "the idle connection was closed at the drain's start under a request: {e}; \
             output:\n{}",
            p.output()
        )
    });
    println!("[idle before the drain] {r:?}");
    assert_eq!(r.status, 200);
    assert_eq!(
        body_pid(&r.body),
        Some(gen1),
        "answered by the old generation"
    );
    assert!(
        r.close,
        "the answer during the drain carries Connection: close"
    );
    drop(conn);
    expect_gone(&p, gen1, "the old generation");
    assert!(reaped(gen1));
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 12. A restart from code whose caller stops waiting
// ---------------------------------------------------------------------------------------

/// `ceaseless::restart()` under a timeout shorter than the restart (an admin endpoint
/// whose client gave up): the restart goes on to its own end regardless: the hung new
/// generation is still killed at the ready timeout and reaped, the restart slot is
/// freed, and a later restart succeeds. (Were the restart cut short with its caller,
/// the slot would stay taken for good and the new generation would run unwatched.)
#[test]
fn restart_from_code_outlives_a_caller_that_stops_waiting() {
    let builds = hello_builds(&["v1", "v2"]);
    become_subreaper();
    let dir = scratch_dir("admin");
    let app = dir.join("app");
    install(&builds[0].0, &app);
    let p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--admin",
            "--ready-timeout-ms",
            "1500",
        ],
    );
    let addr = p.serving_addr(1);
    let gen1 = newest(&p);

    install_script(&app, "#!/bin/sh\nexec sleep 600\n");
    let (status, body) = post_tcp(&addr, "/admin/restart?wait_ms=100");
    assert_eq!(
        status, 202,
        "the caller should have stopped waiting: {body}"
    );
    let (status, body) = post_tcp(&addr, "/admin/restart?wait_ms=100");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("already in progress"), "{body}");

    // The hung generation is killed at the ready timeout and reaped, though nobody
    // waits for the outcome any more.
    let deadline = Instant::now() + LONG;
    while !children_of(gen1).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the hung new generation was left behind: {:?}\n{}",
            children_of(gen1),
            p.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(gen1));

    // The slot is free again: a good deploy restarts.
    install(&builds[1].0, &app);
    let (status, body) = post_tcp(&addr, "/admin/restart?wait_ms=30000");
    assert_eq!(status, 200, "{body}\n{}", p.output());
    let gen2 = body_pid(&body).expect("new pid");
    expect_gone(&p, gen1, "the first generation after the good restart");
    let answer = get_tcp(&addr, "/").body;
    assert_eq!(body_pid(&answer), Some(gen2), "{answer}");
    assert_eq!(body_version(&answer), Some("v2"), "{answer}");
    signal(gen2, libc::SIGTERM);
    expect_gone(&p, gen2, "the second generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// The two ways a next generation is started
// ---------------------------------------------------------------------------------------

/// The next generation starts without a fork where the kernel allows (clone with the
/// parent's memory shared, the `spawn` module), and with one when `CEASELESS_FORK` asks
/// for it; either way it gets the listener, answers, and holds no more descriptors
/// than the generation before (nothing of the spawn leaks into it).
#[test]
fn next_generation_started_by_clone_and_by_fork() {
    become_subreaper();
    for (fork, logged) in [(None, "forked=false"), (Some("1"), "forked=true")] {
        let mut cmd = Command::new(example_bin("hello"));
        // Linux's own mechanisms, even in a run of the suite in the portable mode.
        cmd.args(["--addr", "127.0.0.1:0"])
            .env_remove("CEASELESS_PORTABLE");
        match fork {
            Some(v) => cmd.env("CEASELESS_FORK", v),
            None => cmd.env_remove("CEASELESS_FORK"),
        };
        let p = Proc::spawn_with(&mut cmd);
        let addr = p.serving_addr(1);
        let gen1 = newest(&p);
        assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(gen1));
        let fds_before = settled_fd_count(gen1);
        let (old, new) = restart_ok(&p);
        assert_eq!(old, gen1);
        let started = p
            .wait_for_nth("started the next generation", 1, LONG)
            .expect("logged");
        assert!(started.contains(logged), "{fork:?}: {started}");
        assert!(started.contains(&format!("new_pid={new}")), "{started}");
        expect_gone(&p, old, "the old generation");
        assert_eq!(body_pid(&get_tcp(&addr, "/").body), Some(new));
        assert_eq!(
            settled_fd_count(new),
            fds_before,
            "{fork:?}: descriptors of the new generation:\n{}",
            fd_listing(new)
        );
        signal(new, libc::SIGTERM);
        expect_gone(&p, new, "the new generation after SIGTERM");
    }
}

/// `hello --ballast-mb N` holds N MiB resident (the bench's large process), and a
/// value that is no number of MiB, or too large to allocate, is refused with the reason.
#[test]
fn hello_ballast_is_resident_and_bad_values_are_refused() {
    let p = Proc::spawn_with(Command::new(example_bin("hello")).args([
        "--addr",
        "127.0.0.1:0",
        "--no-metrics",
        "--ballast-mb",
        "64",
    ]));
    let addr = p.serving_addr(1);
    assert_eq!(get_tcp(&addr, "/").status, 200);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    assert!(
        rss_kib >= 64 << 10,
        "VmRSS {rss_kib} KiB with 64 MiB of ballast"
    );
    for (value, code, says) in [
        ("lots", 2, "--ballast-mb needs a number of MiB"),
        (
            "18446744073709551615",
            2,
            "--ballast-mb needs a number of MiB",
        ),
        (
            "17592186044415",
            1,
            "cannot allocate 17592186044415 MiB of ballast",
        ),
    ] {
        let out = Command::new(example_bin("hello"))
            .args(["--addr", "127.0.0.1:0", "--ballast-mb", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}
