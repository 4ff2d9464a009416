//! The handover's invariant, with real processes, signals and clients: from the first
//! generation's readiness until a shutdown is asked for, at least one process accepts
//! on every listener. A new generation that dies (SIGKILL, exit) or hangs at any step of
//! the commit's exchange — before `ready`, after it, after `go`, at its `holding` —
//! leaves the old generation accepting, under load: no connection is ever refused, the
//! only requests that fail are those in flight on the process that was killed (at most
//! one per client), the restart is reported as failed with its reason, and the next
//! restart succeeds. An application that declares ready before its servers took their
//! sockets restarts ten times under fresh connections without one failure.
//!
//! The faults come from `examples/fault.rs`, installed where the binary is, so that the
//! restart executes it: it starts the real `hello` and sits on the readiness channel.
//!
//! Nothing asserts on timing: every wait is bounded and waits for an event.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::generations::{install, install_script, installed, pid_field, socket_path, LONG};
use common::load::{body_pid, get_tcp, Client, Load, Summary};
use common::{alive, become_subreaper, example_bin, hello_cli, signal, wait_until, Proc};

/// The control socket's `status`, as JSON (`None` while nothing answers).
fn status(control: &Path) -> Option<serde_json::Value> {
    let out = hello_cli("status", control);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the generation `pid` answers the control socket as the serving one.
fn wait_serving(control: &Path, pid: u32) {
    wait_until(
        "the generation serves",
        LONG,
        || {
            status(control)
                .is_some_and(|s| s["pid"] == pid && s["phase"] == "serving" && s["live"] == true)
        },
        || format!("status: {:?}", status(control)),
    );
}

/// `hello restart` on the control socket: the new pid, or why the restart failed.
fn restart(control: &Path) -> Result<u32, String> {
    let out = hello_cli("restart", control);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        text.parse().map_err(|_| format!("not a pid: {text:?}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Keep-alive and fresh-connection clients.
fn clients(addr: SocketAddr) -> Vec<Client> {
    vec![
        Client::Tcp(addr),
        Client::FreshTcp(addr),
        Client::FreshTcp(addr),
    ]
}

/// Waits until the load answered `n` more requests.
fn wait_answered(load: &Load, n: u64, what: &str) {
    let answered = || {
        load.shared
            .tally
            .ok
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let target = answered() + n;
    wait_until(what, LONG, || answered() >= target, || "load".into());
}

fn served_by(addr: SocketAddr) -> Option<u32> {
    body_pid(&get_tcp(&addr.to_string(), "/").body)
}

/// The invariant, as the clients saw it: no connection was ever refused (something
/// always accepted), and at most `in_flight` requests failed (those a killed process had
/// accepted: one per client at the most).
fn assert_someone_accepted(s: &Summary, tag: &str, in_flight: u64) {
    s.print(tag);
    assert_eq!(
        s.refused,
        0,
        "[{tag}] {} connections refused: nothing accepted for a moment; first problems:\n  {}",
        s.refused,
        s.notes.join("\n  ")
    );
    assert!(
        s.failed <= in_flight,
        "[{tag}] {} failed requests (at most {in_flight} may have been in flight on the \
         killed process); first problems:\n  {}",
        s.failed,
        s.notes.join("\n  ")
    );
    assert!(s.ok > 0, "[{tag}] nothing was answered");
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn early_readiness_through_ten_restarts_loses_nothing() {
    become_subreaper();
    let (dir, app) = installed("early-ready", "hello");
    let control = socket_path(&dir, "c.sock");
    let p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--early-ready",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    wait_serving(&control, p.pid);
    let load = Load::start("early ready", || clients(addr));
    wait_answered(&load, 100, "load before the restarts");
    let mut pid = p.pid;
    for i in 1..=10 {
        let new = restart(&control)
            .unwrap_or_else(|e| panic!("restart {i} failed: {e}; output:\n{}", p.output()));
        assert_ne!(new, pid);
        wait_serving(&control, new);
        assert_eq!(served_by(addr), Some(new), "restart {i}");
        wait_answered(&load, 50, "load between restarts");
        pid = new;
    }
    let s = load.stop();
    s.assert_clean("early ready");
    assert_eq!(s.refused, 0);
    assert_eq!(served_by(addr), Some(pid), "a process listens at the end");
}

/// One fault: a restart into `examples/fault.rs` failing at `at` as `action` says. The
/// old generation must report the failure, serve on through it and restart fine after.
/// `supervised`: the same under the stable-PID supervisor.
fn fault(at: &str, action: &str, supervised: bool) {
    become_subreaper();
    let model = if supervised { "sup" } else { "reexec" };
    let tag = format!("fault-{model}-{at}-{action}");
    let (dir, app) = installed(&tag, "hello");
    let control = socket_path(&dir, "c.sock");
    let hello = example_bin("hello");
    let mut cmd = Command::new(&app);
    if supervised {
        cmd.arg("--supervise");
    }
    cmd.args(["--addr", "127.0.0.1:0", "--control"])
        .arg(&control)
        .args(["--ready-timeout-ms", "3000"])
        .env("FAULT_EXEC", &hello)
        .env("FAULT_AT", at)
        .env("FAULT_DO", action)
        .env("FAULT_ONCE", dir.join("fault-done"));
    let p = Proc::spawn_with(&mut cmd);
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let old = common::generations::newest(&p);
    wait_serving(&control, old);
    let load = Load::start(&tag, || clients(addr));
    wait_answered(&load, 100, "load before the fault");

    // The next restart executes the fault.
    install(&example_bin("fault"), &app);
    let e = match restart(&control) {
        Ok(pid) => panic!(
            "[{tag}] the restart to pid {pid} succeeded; output:\n{}",
            p.output()
        ),
        Err(e) => e,
    };
    assert!(
        dir.join("fault-done").exists(),
        "[{tag}] the fault never ran"
    );
    assert!(
        !e.is_empty(),
        "[{tag}] a failure without a reason; output:\n{}",
        p.output()
    );
    // The old generation serves on, recorded the failure, and is the live one.
    let s = status(&control).expect("status after the failed restart");
    assert_eq!(s["pid"], old, "[{tag}] {s}");
    assert_eq!(s["live"], true, "[{tag}] {s}");
    let recent = s["restarts"].as_array().expect("recent restarts");
    let last = recent.last().expect("a restart recorded");
    assert_eq!(last["outcome"], "failed", "[{tag}] {s}");
    assert!(
        last["reason"].is_string(),
        "[{tag}] no reason recorded: {s}"
    );
    assert_eq!(served_by(addr), Some(old), "[{tag}]");
    wait_answered(&load, 100, "load after the fault");

    // The slot is free again: the real binary restarts.
    install(&hello, &app);
    let new = restart(&control)
        .unwrap_or_else(|e| panic!("[{tag}] the next restart failed: {e}\n{}", p.output()));
    wait_serving(&control, new);
    assert_eq!(served_by(addr), Some(new), "[{tag}]");
    wait_answered(&load, 100, "load after the next restart");
    let s = load.stop();
    assert_someone_accepted(&s, &tag, clients(addr).len() as u64);
    println!("[{tag}] the failed restart said: {e}");
}

const STEPS: [&str; 4] = ["start", "ready", "go", "holding"];

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn successor_killed_at_each_step_leaves_the_old_one_accepting() {
    for at in STEPS {
        fault(at, "kill", false);
    }
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn successor_exiting_right_after_its_ready_report_or_at_any_step_is_not_committed_to() {
    for at in STEPS {
        fault(at, "exit", false);
    }
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn successor_hanging_at_each_step_leaves_the_old_one_accepting() {
    for at in STEPS {
        fault(at, "hang", false);
    }
}

#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn under_the_supervisor_a_successor_failing_at_each_step_leaves_the_old_one_accepting() {
    for action in ["kill", "hang"] {
        for at in STEPS {
            fault(at, action, true);
        }
    }
}

/// The start time of `pid` (field 22 of /proc/<pid>/stat), as the handover names a
/// draining generation.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Handover variables left in the environment of a process nobody handed anything to
/// (a shell, a wrapper, an image) are ignored, every one of them: a stale
/// `CEASELESS_DRAINING` naming a live process never gets it signalled when the bound on
/// draining generations is applied, and a stale history or generation number is not
/// taken as this process's.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn a_stale_ceaseless_draining_and_other_handover_variables_are_ignored_by_a_first_generation() {
    become_subreaper();
    let (dir, app) = installed("stale-vars", "hello");
    let control = socket_path(&dir, "c.sock");
    // A bystander: SIGUSR2 (the hammer) would end it.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let by = bystander.id();
    let mut cmd = Command::new(&app);
    cmd.args(["--addr", "127.0.0.1:0", "--max-draining", "1", "--control"])
        .arg(&control)
        .env("CEASELESS_DRAINING", format!("{by}@{}", start_time(by)))
        .env("CEASELESS_RESTARTS", "totals 7 7")
        .env("CEASELESS_GENERATION", "9");
    let p = Proc::spawn_with(&mut cmd);
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    wait_serving(&control, p.pid);
    let s = status(&control).unwrap();
    assert_eq!(s["generation"], 1, "{s}");
    assert_eq!(s["restarts_total"]["ok"], 0, "{s}");
    assert_eq!(s["restarts_total"]["failed"], 0, "{s}");
    // A restart applies the bound: with the stale list honoured, the bystander would
    // be "the oldest beyond it" and get SIGUSR2.
    let new = restart(&control).unwrap_or_else(|e| panic!("{e}; output:\n{}", p.output()));
    wait_serving(&control, new);
    assert_eq!(served_by(addr), Some(new));
    assert!(
        !p.output().contains(&format!("pid={by}")) && bystander.try_wait().unwrap().is_none(),
        "the bystander {by} was signalled; output:\n{}",
        p.output()
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// The pid of the generation the n-th restart of `p` started, from its log.
fn started_pid(p: &Proc, n: usize) -> u32 {
    let line = p
        .wait_for_nth("started the next generation", n, LONG)
        .unwrap_or_else(|| panic!("no restart #{n} started; output:\n{}", p.output()));
    pid_field(&line, "new_pid")
}

/// A SIGTERM that lands while a restart is under way calls the restart off and shuts
/// the live generation down as it would have without the restart: the lame duck first
/// (the health check says 503 while everything is still served), then the drain. The
/// new generation, stuck in its warm-up, never went live and accepted nothing: told to
/// stop, it exits at once rather than holding the restart slot for the stop grace.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn sigterm_during_a_restart_keeps_the_lame_duck_and_the_warming_generation_exits_at_once() {
    become_subreaper();
    let (dir, app) = installed("term-lame-duck", "hello");
    let control = socket_path(&dir, "c.sock");
    let mut p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--lame-duck-ms",
            "4000",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr = p.ready_addr(1);
    wait_serving(&control, p.pid);
    // The next generation warms up far longer than this test waits.
    let hello = example_bin("hello");
    install_script(
        &app,
        &format!(
            "#!/bin/sh\nexec '{}' \"$@\" --warmup-ms 60000\n",
            hello.display()
        ),
    );
    signal(p.pid, libc::SIGHUP);
    let new = started_pid(&p, 1);
    wait_until(
        "the restart is under way",
        LONG,
        || status(&control).is_some_and(|s| s["phase"] == "restarting"),
        || format!("status: {:?}", status(&control)),
    );
    p.wait_for_nth(&format!("warming up pid={new} "), 1, LONG)
        .unwrap_or_else(|| panic!("the new generation never warmed up:\n{}", p.output()));
    signal(p.pid, libc::SIGTERM);

    // The lame duck: 503 from the health check, everything else served, by the old one.
    wait_until(
        "the health check says 503",
        LONG,
        || get_tcp(&addr, "/healthz").status == 503,
        || p.output(),
    );
    let r = get_tcp(&addr, "/");
    assert_eq!((r.status, body_pid(&r.body)), (200, Some(p.pid)), "{r:?}");

    // The warming generation exited at once on being told to stop.
    wait_until(
        "the new generation is gone",
        LONG,
        || !alive(new),
        || p.output(),
    );
    // (Its log lines may still be on their way through the pipe: waited for.)
    for line in [
        format!("never went live and has no connection to finish; exiting now pid={new}"),
        "the failed generation stopped".to_string(),
    ] {
        p.wait_for_nth(&line, 1, LONG)
            .unwrap_or_else(|| panic!("no {line:?}; output:\n{}", p.output()));
    }
    assert!(
        !p.output().contains("did not stop in time"),
        "{}",
        p.output()
    );

    // Then the drain, and a clean exit.
    let status = p.wait_exit(LONG).expect("the old generation exits");
    assert!(status.success(), "{status}; output:\n{}", p.output());
}

/// A SIGHUP that arrives while a failed generation is being stopped is not lost: it
/// waits for the restart slot and starts the next restart once the stop is over.
#[test]
#[cfg_attr(not(feature = "control"), ignore = "needs the `control` feature")]
fn sighup_while_a_failed_generation_is_stopped_starts_the_next_restart() {
    become_subreaper();
    let (dir, app) = installed("hup-queued", "hello");
    let control = socket_path(&dir, "c.sock");
    let p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--ready-timeout-ms",
            "1000",
            "--stop-grace-ms",
            "3000",
            "--control",
            control.to_str().unwrap(),
        ],
    );
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    wait_serving(&control, p.pid);
    // A broken deploy that is never ready and ignores SIGTERM: stopping it takes the
    // whole stop grace.
    install_script(&app, "#!/bin/sh\ntrap '' TERM\nexec sleep 60\n");
    signal(p.pid, libc::SIGHUP);
    let broken = started_pid(&p, 1);
    wait_until(
        "the failure is recorded",
        LONG,
        || status(&control).is_some_and(|s| s["restarts_total"]["failed"] == 1),
        || p.output(),
    );
    assert!(
        alive(broken),
        "the broken generation is still being stopped"
    );
    // The fix is deployed, and the deploy sends SIGHUP at once.
    install(&example_bin("hello"), &app);
    signal(p.pid, libc::SIGHUP);
    let line = p
        .wait_for_nth("restart succeeded", 1, LONG)
        .unwrap_or_else(|| panic!("the second SIGHUP was lost; output:\n{}", p.output()));
    assert!(
        !p.output().contains("already in progress"),
        "{}",
        p.output()
    );
    assert!(!alive(broken), "the broken generation is gone");
    let new = pid_field(&line, "new_pid");
    wait_serving(&control, new);
    assert_eq!(served_by(addr), Some(new));
}

/// Under the supervisor, a new generation killed right after the old one's `live` (the
/// old one committed to it: it was the service) is replaced by the supervisor on the
/// very same sockets: no connection is refused meanwhile, and a generation serves at
/// the end.
#[test]
fn successor_killed_after_its_acknowledgement_is_replaced_by_the_supervisor() {
    become_subreaper();
    let (dir, app) = installed("fault-acked-sup", "hello");
    let mut cmd = Command::new(&app);
    cmd.args(["--supervise", "--addr", "127.0.0.1:0"])
        .env("FAULT_EXEC", example_bin("hello"))
        .env("FAULT_AT", "acked")
        .env("FAULT_DO", "kill")
        .env("FAULT_ONCE", dir.join("fault-done"));
    let p = Proc::spawn_with(&mut cmd);
    let addr: SocketAddr = p.ready_addr(1).parse().unwrap();
    let first = common::generations::newest(&p);
    let load = Load::start("acked kill, supervised", || clients(addr));
    wait_answered(&load, 100, "load before the fault");
    install(&example_bin("fault"), &app);
    signal(p.pid, libc::SIGHUP);
    // The old generation commits to the new one, which dies at once; the supervisor
    // starts another on the same sockets.
    wait_until(
        "a generation other than the first serves",
        LONG,
        || served_by(addr).is_some_and(|pid| pid != first && alive(pid)),
        || p.output(),
    );
    assert!(dir.join("fault-done").exists(), "the fault never ran");
    wait_answered(&load, 100, "load after the fault");
    let s = load.stop();
    assert_someone_accepted(&s, "acked kill, supervised", clients(addr).len() as u64);
}
