//! Probation and rollback after the commit (`ProcessBuilder::probation`), with real
//! processes, signals, sockets and clients. A good build (v1) is deployed, then a bad
//! one (v2: the same binary behind a script that adds `--crash-after-ms` or
//! `--fail-ratio`); v2 passes readiness, goes live, and is rolled back to v1, which
//! parked behind it with every listener:
//! - a crash: v1 serves again at once; the only failed requests are those in flight on
//!   v2 (at most the load's concurrency), and how fast v1 took over is measured and
//!   printed, never asserted;
//! - the error policy: every failed request is one of v2's own 500s;
//! - an operator (`hello rollback`) and the application (`Process::rollback`): 0 failed;
//!   after the probation a rollback is refused with the reason, and v1 has exited;
//! - the same under the stable-PID supervisor (its pid never changes) and after a
//!   takeover.
//!
//! Each run has keep-alive (pooled and raw) and fresh-connection clients.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::generations::{install, install_script, log_time, socket_path, LONG};
use common::load::{
    get_tcp, post_tcp, reqwest_client, shared_client, Client, Expect, Load, Summary,
};
use common::{
    alive, become_subreaper, example_bin, field, hello_cli, hello_status, scratch_dir, signal,
    wait_gone, Proc,
};

/// The load: 3 pooled keep-alive, 3 raw keep-alive, 3 fresh-connection clients.
const CLIENTS: u64 = 9;

fn clients(addr: SocketAddr) -> Vec<Client> {
    let mut c = shared_client(reqwest_client(false), &format!("http://{addr}/"), 3);
    c.extend((0..3).map(|_| Client::Tcp(addr)));
    c.extend((0..3).map(|_| Client::FreshTcp(addr)));
    c
}

fn expect(pid: u32) -> Option<Expect> {
    Some(Expect { pid, version: None })
}

/// A deploy: the good build at `<dir>/good`, installed as `<dir>/app`.
struct Deploy {
    app: PathBuf,
    good: PathBuf,
}

impl Deploy {
    fn new(dir: &Path) -> Deploy {
        let good = dir.join("good");
        install(&example_bin("hello"), &good);
        let app = dir.join("app");
        install(&good, &app);
        Deploy { app, good }
    }

    /// The next restart starts the good build.
    fn good(&self) {
        install(&self.good, &self.app);
    }

    /// The next restart starts a bad build: the good one with `flags` added.
    fn bad(&self, flags: &str) {
        install_script(
            &self.app,
            &format!("#!/bin/sh\nexec {} \"$@\" {flags}\n", self.good.display()),
        );
    }
}

/// The pid of the generation a restart started, from the old generation's log.
fn restarted_to(p: &Proc, n: usize) -> u32 {
    let line = p
        .wait_for_nth("restart succeeded", n, LONG)
        .unwrap_or_else(|| panic!("no restart #{n}:\n{}", p.output()));
    field(&line, "new_pid").unwrap().parse().unwrap()
}

/// Waits until `pid` answers the control socket, live and on probation.
fn wait_on_probation(control: &Path, pid: u32) {
    common::wait_until(
        &format!("pid {pid} on probation"),
        LONG,
        || {
            let s = hello_status(control);
            s["pid"] == pid && !s["probation"].is_null()
        },
        || hello_status(control).to_string(),
    );
}

/// The rollback recorded last in the status, and the rollback counts.
fn last_rollback(control: &Path) -> (serde_json::Value, serde_json::Value) {
    let s = hello_status(control);
    let r = s["restarts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["outcome"] == "rolled_back")
        .cloned()
        .unwrap_or_else(|| panic!("no rollback in the history: {s}"));
    (r, s["restarts_total"]["rollbacks"].clone())
}

/// The failed requests of a run whose only loss may be what was in flight on a crashed
/// generation: at most one per client.
fn assert_lost_at_most_in_flight(s: &Summary, tag: &str) {
    assert_eq!(s.wrong, 0, "[{tag}] {:?}", s.notes);
    assert!(
        s.failed <= CLIENTS,
        "[{tag}] {} failed requests, more than the {CLIENTS} a crash can catch in flight: {:?}",
        s.failed,
        s.notes
    );
    for (client, n) in &s.failed_by {
        assert!(*n <= 1, "[{tag}] {client} failed {n} times: {:?}", s.notes);
    }
}

/// A crash of v2 on probation (`--crash-after-ms`): v1 takes the service back by
/// itself. Returns (v1, v2) pids once v1 serves the load again, and prints how long
/// after the crash v1 accepted again.
fn crash_and_rollback(p: &Proc, v1: u32, deploy: &Deploy, load: &Load, restart: impl FnOnce()) {
    deploy.bad("--crash-after-ms 1500");
    load.expect(None);
    restart();
    p.wait_for_nth("crashing on purpose", 1, LONG)
        .unwrap_or_else(|| panic!("v2 did not crash:\n{}", p.output()));
    p.wait_for_nth("rolled back: this generation is live again", 1, LONG)
        .unwrap_or_else(|| panic!("no rollback:\n{}", p.output()));
    load.expect(expect(v1));
    load.wait_checked(300, "v1 after the crash of v2");
    // What the logs say of the switch: from v2's last word to v1 accepting again.
    let crash = p.wait_for_nth("crashing on purpose", 1, LONG).unwrap();
    let back = p
        .wait_for_nth("rolled back to this generation: accepting again", 1, LONG)
        .unwrap();
    let (crashed, accepting) = (log_time(&crash), log_time(&back));
    if let (Some(a), Some(b)) = (crashed, accepting) {
        let after = b.duration_since(a).unwrap_or_default();
        println!(
            "v1 accepted again {:.2} ms after v2 logged its crash",
            after.as_secs_f64() * 1000.0
        );
    }
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn a_crash_on_probation_rolls_back_to_the_parked_generation() {
    become_subreaper();
    let dir = scratch_dir("probation-crash");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let pid_file = dir.join("hello.pid");
    let mut p = Proc::spawn(
        &deploy.app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "60000",
            "--control",
            control.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let v1 = p.pid;
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let load = Load::start("crash", || clients(addr));
    load.expect(expect(v1));
    load.wait_checked(200, "v1");

    crash_and_rollback(&p, v1, &deploy, &load, || signal(v1, libc::SIGHUP));
    let v2 = restarted_to(&p, 1);
    assert!(wait_gone(v2, LONG), "v2 is still there");
    let summary = load.stop();
    summary.print("crash");
    println!("failed by status: {:?}", summary.by_status);
    assert_lost_at_most_in_flight(&summary, "crash");

    // v1 is the live generation again, seen from outside.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        v1.to_string()
    );
    let s = hello_status(&control);
    assert_eq!(s["pid"], v1, "{s}");
    assert_eq!(s["phase"], "serving");
    assert_eq!(s["live"], true);
    assert!(s["probation"].is_null(), "{s}");
    let (r, counts) = last_rollback(&control);
    assert_eq!(r["trigger"], "crash", "{r}");
    assert_eq!(r["pid"], v1, "{r}");
    assert!(r["rollback_ms"].is_u64(), "{r}");
    println!("recorded rollback: {r}");
    assert_eq!(counts["crash"], 1, "{counts}");
    assert_eq!(get_tcp(&addr.to_string(), "/").status, 200);
    if cfg!(feature = "metrics") {
        // hello's `GET /metrics` (Prometheus' text format) counts it by trigger.
        let m = get_tcp(&addr.to_string(), "/metrics").body;
        for (trigger, n) in [("crash", 1), ("errors", 0), ("operator", 0)] {
            let line = format!("ceaseless_rollbacks_total{{trigger=\"{trigger}\"}} {n}");
            assert!(m.lines().any(|l| l == line), "no {line:?} in:\n{m}");
        }
        assert!(m.contains("ceaseless_phase{phase=\"parked\"} 0"), "{m}");
    }

    // A good build after the rollback: a restart as usual, then v3 on probation behind
    // which v1 parks.
    deploy.good();
    let out = hello_cli("restart", &control);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v3: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let s = hello_status(&control);
    assert_eq!(s["pid"], v3);
    assert_eq!(s["probation"]["parked"], false, "{s}");
    assert_eq!(s["probation"]["other_pid"], v1, "{s}");
    assert!(alive(v1), "v1 parks during the probation");
    // A hammer (SIGUSR2) of the parked generation ends the probation: it exits, v3
    // serves on, and nothing is parked any more.
    signal(v1, libc::SIGUSR2);
    assert!(
        p.wait_exit(LONG).is_some(),
        "the parked v1 did not exit on SIGUSR2:\n{}",
        p.output()
    );
    common::wait_until(
        "v3's probation over",
        LONG,
        || hello_status(&control)["probation"].is_null(),
        || hello_status(&control).to_string(),
    );
    assert_eq!(get_tcp(&addr.to_string(), "/").status, 200);
    signal(v3, libc::SIGTERM);
    assert!(wait_gone(v3, LONG), "v3 did not stop");
    assert!(!control.exists(), "the control socket file is left behind");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn the_error_policy_rolls_a_failing_build_back() {
    become_subreaper();
    let dir = scratch_dir("probation-errors");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let mut p = Proc::spawn(
        &deploy.app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "60000",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let v1 = p.pid;
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let load = Load::start("errors", || clients(addr));
    load.expect(expect(v1));
    load.wait_checked(200, "v1");

    // v2 answers 500 to half of `GET /`; its policy: over 30% of at least 50.
    deploy.bad("--fail-ratio 0.5 --rollback-on-errors 0.3:50");
    load.expect(None);
    signal(v1, libc::SIGHUP);
    let v2 = restarted_to(&p, 1);
    p.wait_for_nth("error policy of the probation tripped", 1, LONG)
        .unwrap_or_else(|| panic!("the policy did not trip:\n{}", p.output()));
    p.wait_for_nth("rolled back: this generation is live again", 1, LONG)
        .unwrap_or_else(|| panic!("no rollback:\n{}", p.output()));
    assert!(wait_gone(v2, LONG), "v2 did not drain and exit");
    load.expect(expect(v1));
    load.wait_checked(300, "v1 after the rollback");
    let summary = load.stop();
    summary.print("errors");
    let five_hundreds = summary.by_status.get(&500).copied().unwrap_or(0);
    println!(
        "v2's own 500s: {five_hundreds}; failed by status: {:?}",
        summary.by_status
    );
    assert!(
        five_hundreds >= 25,
        "the policy tripped on {five_hundreds} errors"
    );
    assert_eq!(
        summary.failed, five_hundreds,
        "failed requests besides v2's own 500s: {:?}",
        summary.notes
    );
    assert_eq!(summary.wrong, 0, "{:?}", summary.notes);
    let (r, counts) = last_rollback(&control);
    assert_eq!(r["trigger"], "errors", "{r}");
    assert_eq!(counts["errors"], 1, "{counts}");
    let s = hello_status(&control);
    assert_eq!(s["pid"], v1);
    signal(v1, libc::SIGTERM);
    assert!(p.wait_exit(LONG).is_some(), "v1 did not stop");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn an_operator_or_the_application_rolls_back_and_not_after_the_probation() {
    become_subreaper();
    let dir = scratch_dir("probation-operator");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let mut p = Proc::spawn(
        &deploy.app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "8000",
            "--admin",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let v1 = p.pid;
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let addr_s = addr.to_string();
    let load = Load::start("operator", || clients(addr));
    load.expect(expect(v1));
    load.wait_checked(200, "v1");
    // The health check, probed throughout on connections of its own: 200 through the
    // rollbacks (a balancer must not take the service out).
    let probing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let health = {
        let (probing, addr_s) = (probing.clone(), addr_s.clone());
        std::thread::spawn(move || {
            let (mut ok, mut bad) = (0u64, Vec::new());
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get_tcp(&addr_s, "/healthz");
                if r.status == 200 {
                    ok += 1;
                } else {
                    bad.push(format!("{} {}", r.status, r.body));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (ok, bad)
        })
    };

    // An operator: `hello rollback` on the control socket.
    load.expect(None);
    signal(v1, libc::SIGHUP);
    let v2 = restarted_to(&p, 1);
    let out = hello_cli("rollback", &control);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.output()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v1.to_string());
    // (v2 answers what its connections sent before it stopped accepting, then exits.)
    assert!(wait_gone(v2, LONG), "v2 did not drain and exit");
    load.expect(expect(v1));
    load.wait_checked(300, "v1 after the operator's rollback");
    assert_eq!(last_rollback(&control).0["trigger"], "operator");

    // The application: `Process::rollback` (hello's `POST /admin/rollback`).
    load.expect(None);
    signal(v1, libc::SIGHUP);
    let v3 = restarted_to(&p, 2);
    // (Before it is live, v3 already answers, as the one not on probation yet.)
    wait_on_probation(&control, v3);
    let (code, answer) = post_tcp(&addr_s, "/admin/rollback");
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains(&format!("pid {v1} serves")), "{answer}");
    assert!(wait_gone(v3, LONG), "v3 did not drain and exit");
    load.expect(expect(v1));
    load.wait_checked(300, "v1 after the application's rollback");
    let (r, counts) = last_rollback(&control);
    assert_eq!(r["trigger"], "application", "{r}");
    assert_eq!(
        (counts["operator"].as_u64(), counts["application"].as_u64()),
        (Some(1), Some(1))
    );

    // After the probation: v1 exits, and a rollback is refused with the reason.
    load.expect(None);
    signal(v1, libc::SIGHUP);
    let v4 = restarted_to(&p, 3);
    assert!(
        p.wait_exit(LONG).is_some(),
        "v1 did not exit at the end of its probation:\n{}",
        p.output()
    );
    load.expect(expect(v4));
    load.wait_checked(200, "v4 after the probation");
    let out = hello_cli("rollback", &control);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing to roll back to"), "{err}");
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (healthy, unhealthy) = health.join().unwrap();
    println!("health checks: {healthy} answered 200");
    assert!(
        unhealthy.is_empty(),
        "the health check failed: {unhealthy:?}"
    );
    assert!(healthy > 0);
    let summary = load.stop();
    summary.print("operator");
    summary.assert_clean("operator");
    assert_eq!(get_tcp(&addr_s, "/").status, 200);
    signal(v4, libc::SIGTERM);
    assert!(wait_gone(v4, LONG), "v4 did not stop");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn under_the_supervisor_the_pid_stays_and_the_parked_generation_takes_over() {
    become_subreaper();
    let dir = scratch_dir("probation-supervised");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let pid_file = dir.join("hello.pid");
    let mut p = Proc::spawn(
        &deploy.app,
        &[
            "--supervise",
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "60000",
            "--control",
            control.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let v1 = hello_status(&control)["pid"].as_u64().unwrap() as u32;
    assert_ne!(v1, p.pid, "the supervisor serves through its generations");
    let load = Load::start("supervised", || clients(addr));
    load.expect(expect(v1));
    load.wait_checked(200, "v1");

    // A crash: SIGHUP goes to the supervisor, which forwards it.
    let supervisor = p.pid;
    crash_and_rollback(&p, v1, &deploy, &load, || signal(supervisor, libc::SIGHUP));
    p.wait_for_nth("supervisor: rolled back to a parked generation", 1, LONG)
        .unwrap_or_else(|| panic!("the supervisor did not follow:\n{}", p.output()));
    assert_eq!(hello_status(&control)["pid"], v1);
    // The supervisor knew v1 parked ("the parked generation takes the service back",
    // when it reaps v2 before v1's report), and waited for it rather than start a
    // replacement.
    assert_eq!(
        p.count("supervisor: started a generation"),
        1,
        "{}",
        p.output()
    );
    assert_eq!(p.count("starting a generation again"), 0, "{}", p.output());

    // An operator's rollback, then the supervisor still restarts v1.
    deploy.good();
    load.expect(None);
    signal(supervisor, libc::SIGHUP);
    let v3 = restarted_to(&p, 2);
    let out = hello_cli("rollback", &control);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_gone(v3, LONG), "v3 did not exit");
    load.expect(expect(v1));
    load.wait_checked(300, "v1 after the operator's rollback");
    p.wait_for_nth("supervisor: the current generation handed over", 3, LONG)
        .unwrap_or_else(|| {
            panic!(
                "the supervisor did not follow the handback:\n{}",
                p.output()
            )
        });

    let summary = load.stop();
    summary.print("supervised");
    assert_lost_at_most_in_flight(&summary, "supervised");
    assert!(alive(supervisor), "the supervisor is the service's pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        supervisor.to_string()
    );
    signal(supervisor, libc::SIGTERM);
    assert!(p.wait_exit(LONG).is_some(), "the supervisor did not stop");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn after_a_takeover_the_old_process_parks_and_takes_a_crash_back() {
    become_subreaper();
    let dir = scratch_dir("probation-takeover");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let ctl = control.to_str().unwrap();
    let mut old = Proc::spawn(
        &deploy.app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "60000",
            "--control",
            ctl,
        ],
    );
    let addr: SocketAddr = old.ready_addr(1).parse().unwrap();
    let load = Load::start("takeover", || clients(addr));
    load.expect(expect(old.pid));
    load.wait_checked(200, "the old process");

    // A new process, started by anyone from another path, takes over, then crashes.
    load.expect(None);
    let addr_s = addr.to_string();
    let mut new = Proc::spawn(
        &deploy.good,
        &[
            "--takeover",
            ctl,
            "--addr",
            &addr_s,
            "--crash-after-ms",
            "1500",
        ],
    );
    old.wait_for_nth("parked for the probation", 1, LONG)
        .unwrap_or_else(|| panic!("the old process did not park:\n{}", old.output()));
    new.expect_line("crashing on purpose", LONG);
    old.wait_for_nth("rolled back: this generation is live again", 1, LONG)
        .unwrap_or_else(|| panic!("no rollback:\n{}\nnew:\n{}", old.output(), new.output()));
    load.expect(expect(old.pid));
    load.wait_checked(300, "the old process after the crash");
    let status_new = new.wait_exit(LONG).expect("the new process is still there");
    assert!(!status_new.success(), "the crash was an abnormal exit");
    let summary = load.stop();
    summary.print("takeover");
    assert_lost_at_most_in_flight(&summary, "takeover");
    assert_eq!(hello_status(&control)["pid"], old.pid);
    signal(old.pid, libc::SIGTERM);
    assert!(
        old.wait_exit(LONG).is_some(),
        "the old process did not stop"
    );
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn faults_during_the_probation_never_leave_nothing_listening() {
    become_subreaper();
    let dir = scratch_dir("probation-faults");
    let deploy = Deploy::new(&dir);
    let control = socket_path(&dir, "control.sock");
    let p = Proc::spawn(
        &deploy.app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--probation-ms",
            "60000",
            "--ready-timeout-ms",
            "3000",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let v1 = p.pid;
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let load = Load::start("faults", || clients(addr));
    load.expect(expect(v1));
    load.wait_checked(200, "v1");
    let mut restarts = 0;
    let mut restart = |from: u32| {
        restarts += 1;
        signal(from, libc::SIGHUP);
        let to = restarted_to(&p, restarts);
        wait_on_probation(&control, to);
        to
    };

    // The parked generation killed: the live one serves on, its probation over.
    load.expect(None);
    let v2 = restart(v1);
    signal(v1, libc::SIGKILL);
    assert!(wait_gone(v1, LONG));
    load.expect(expect(v2));
    load.wait_checked(300, "v2 once the parked v1 was killed");
    common::wait_until(
        "the probation over",
        LONG,
        || hello_status(&control)["probation"].is_null(),
        || hello_status(&control).to_string(),
    );
    let out = hello_cli("rollback", &control);
    assert_eq!(out.status.code(), Some(1), "nothing is parked any more");

    // A SIGTERM to the parked generation ends the probation: it exits, v3 serves on.
    load.expect(None);
    let v3 = restart(v2);
    signal(v2, libc::SIGTERM);
    assert!(wait_gone(v2, LONG), "the parked v2 did not exit on SIGTERM");
    load.expect(expect(v3));
    load.wait_checked(300, "v3 once the parked v2 was told to stop");
    assert!(hello_status(&control)["probation"].is_null());

    // A restart during a probation ends it first: v3 parks, v4 is on probation.
    load.expect(None);
    let v4 = restart(v3);
    load.expect(None);
    let v5 = restart(v4);
    assert!(
        wait_gone(v3, LONG),
        "the older parked generation did not exit"
    );
    let s = hello_status(&control);
    assert_eq!(s["probation"]["other_pid"], v4, "{s}");
    assert!(alive(v4), "v4 parks behind v5");

    // The parked generation stopped (SIGSTOP) when a rollback is asked for: the new
    // one waits for it no longer than its ready timeout, gives the probation up and
    // serves on; the parked one, resumed, hears that and exits. Nothing is lost.
    signal(v4, libc::SIGSTOP);
    let out = hello_cli("rollback", &control);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer"), "{err}");
    signal(v4, libc::SIGCONT);
    assert!(
        wait_gone(v4, LONG),
        "the parked v4 did not exit once resumed"
    );
    load.expect(expect(v5));
    load.wait_checked(300, "v5 after the unanswered rollback");
    let clean = load.stop();
    clean.print("faults");
    clean.assert_clean("faults");

    // The new generation killed in the middle of a rollback (after it asked, before
    // it read the answer: the parked one is stopped meanwhile): the parked one takes
    // the service back once it runs again. Only what was in flight on v6 is lost.
    let load = Load::start("faults-kill", || clients(addr));
    load.expect(None);
    let v6 = restart(v5);
    signal(v5, libc::SIGSTOP);
    let asked = {
        let control = control.clone();
        std::thread::spawn(move || hello_cli("rollback", &control))
    };
    p.wait_for_nth("rollback requested on the control socket", 3, LONG)
        .unwrap_or_else(|| panic!("no rollback request:\n{}", p.output()));
    signal(v6, libc::SIGKILL);
    assert!(wait_gone(v6, LONG));
    signal(v5, libc::SIGCONT);
    p.wait_for_nth("rolled back: this generation is live again", 1, LONG)
        .unwrap_or_else(|| panic!("v5 did not take the service back:\n{}", p.output()));
    let out = asked.join().unwrap();
    assert!(!out.status.success(), "v6 died before answering");
    load.expect(expect(v5));
    load.wait_checked(300, "v5 after v6 died mid-rollback");
    let summary = load.stop();
    summary.print("faults-kill");
    assert_lost_at_most_in_flight(&summary, "faults-kill");
    assert_eq!(hello_status(&control)["pid"], v5);

    // A shutdown of the generation on probation ends it: the parked one exits too.
    let v7 = restart(v5);
    signal(v7, libc::SIGTERM);
    assert!(wait_gone(v7, LONG), "v7 did not stop");
    assert!(wait_gone(v5, LONG), "the parked v5 outlived the shutdown");
    assert!(!control.exists(), "the control socket file is left behind");
}

#[test]
fn bad_probation_settings_are_refused_with_the_reason() {
    let hello = example_bin("hello");
    // Refused by the process owner at start: nothing is bound.
    for flags in [
        ["--rollback-on-errors", "1.5:10"],
        ["--rollback-on-errors", "0.2:0"],
        ["--rollback-on-errors", "NaN:10"],
    ] {
        let out = std::process::Command::new(&hello)
            .args(["--addr", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains("rollback_on_errors"), "{flags:?}: {err}");
    }
    // Refused by hello's own parsing, with the value.
    for flags in [
        ["--rollback-on-errors", "half"],
        ["--fail-ratio", "2"],
        ["--probation-ms", "soon"],
    ] {
        let out = std::process::Command::new(&hello)
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(flags[0]), "{flags:?}: {err}");
    }
}
