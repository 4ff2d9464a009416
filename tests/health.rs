//! The health check seen from outside, with real processes and real probes: a restart is
//! invisible to it, a shutdown's lame-duck period is not.
//!
//! Every probe is a fresh TCP connection, as a load balancer's or kubelet's is. Nothing
//! asserts on timing: what is checked is what each probe got, and in which order the
//! process said it changed phase.
#![cfg(unix)]

mod common;

use common::generations::{expect_gone, restart_ok, LONG};
use common::probe::{probe, Prober};
use common::{become_subreaper, example_bin, Proc};

#[test]
fn a_restart_is_invisible_to_the_health_check() {
    become_subreaper();
    let p = Proc::spawn(&example_bin("hello"), &["--addr", "127.0.0.1:0"]);
    let addr = p.ready_addr(1);
    let prober = Prober::start(addr.clone());
    prober.wait_for(20);
    let mut gens = vec![p.pid];
    for i in 1..=3 {
        let before = prober.count();
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        prober.wait_for(before + 20);
        gens.push(new);
    }
    let seen = prober.stop();
    let bad: Vec<_> = seen.iter().filter(|r| **r != Ok(200)).take(10).collect();
    println!(
        "[health] {} probes through 3 restarts (generations {gens:?}), {} not 200",
        seen.len(),
        seen.iter().filter(|r| **r != Ok(200)).count()
    );
    assert!(
        bad.is_empty(),
        "a probe saw the restart: {bad:?}; output:\n{}",
        p.output()
    );
    common::signal(*gens.last().unwrap(), libc::SIGTERM);
    expect_gone(&p, *gens.last().unwrap(), "the last generation");
}

#[test]
fn a_shutdown_lame_duck_says_503_while_everything_else_is_served() {
    let mut p = Proc::spawn(
        &example_bin("hello"),
        &["--addr", "127.0.0.1:0", "--lame-duck-ms", "1500"],
    );
    let addr = p.ready_addr(1);
    assert_eq!(probe(&addr, "/healthz"), Ok(200));
    p.signal(libc::SIGTERM);
    p.expect_line("lame duck", LONG);
    // The lame-duck period: the health check says 503, and everything else is served,
    // on new connections too.
    assert_eq!(probe(&addr, "/healthz"), Ok(503), "{}", p.output());
    assert_eq!(probe(&addr, "/"), Ok(200), "{}", p.output());
    assert_eq!(
        p.count("stopped accepting"),
        0,
        "the listener closed before the lame-duck period ended:\n{}",
        p.output()
    );
    // Then the usual drain: the listener closes, the process exits 0.
    p.expect_line("stopped accepting", LONG);
    let status = p.wait_exit(LONG).expect("exit after the lame-duck period");
    assert!(status.success(), "{status}; output:\n{}", p.output());
    assert!(
        probe(&addr, "/healthz").is_err(),
        "still answering after the exit"
    );
}

#[test]
fn a_second_shutdown_request_ends_the_lame_duck_period_at_once() {
    let mut p = Proc::spawn(
        &example_bin("hello"),
        &["--addr", "127.0.0.1:0", "--lame-duck-ms", "600000"],
    );
    let addr = p.ready_addr(1);
    p.signal(libc::SIGTERM);
    p.expect_line("lame duck", LONG);
    assert_eq!(probe(&addr, "/healthz"), Ok(503));
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(LONG).unwrap_or_else(|| {
        panic!(
            "a second SIGTERM did not end a 10-minute lame duck:\n{}",
            p.output()
        )
    });
    assert!(status.success(), "{status}; output:\n{}", p.output());
}
