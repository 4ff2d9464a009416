//! gRPC through restarts, with a real tonic client against the `grpc` example (tonic's
//! `Routes` served by ceaseless's own `Server`, h2c): unary calls from several clients
//! that never fail while the server restarts three times, and a server stream that ends
//! with `UNAVAILABLE` when its generation drains, so the client resumes where it left
//! off on the next generation; SIGTERM at the end, exit 0. The same again with the
//! `Routes` served by `ceaseless::serve(listener, routes)`, the one line a tonic user
//! changes (`--serve-fn`), through five restarts.
//!
//! As in lifecycle.rs: the binary is installed in a scratch directory, the server
//! listens on 127.0.0.1 port 0, every wait is bounded and nothing asserts on timing.
#![cfg(unix)]

mod common;

#[path = "../examples/grpc/ticker.rs"]
mod ticker;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::generations::{install, newest, restart_ok, LONG};
use common::{become_subreaper, example_bin, runtime, scratch_dir, signal, Proc};
use ticker::{HelloRequest, Tick, TickerClient, TicksRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// The longest a client waits for one call (or one message of a stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A scratch directory holding a copy of the example at `<dir>/app`, as a deploy would
/// install it: restarts re-execute that path.
fn installed(tag: &str) -> PathBuf {
    let app = scratch_dir(tag).join("app");
    install(&example_bin("grpc"), &app);
    app
}

/// Starts the example on a port of its choosing; returns it and its address.
fn start_with(tag: &str, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let p = Proc::spawn(&installed(tag), &all);
    let addr = p.serving_addr(1);
    p.expect_line(&format!("grpc starting pid={}", p.pid), LONG);
    (p, addr)
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(CALL_TIMEOUT)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Waits for `pid`, a child of this process (directly, or re-parented to it as the
/// subreaper once its parent exited), to exit, and reaps it: its exit status.
fn exit_status(p: &mut Proc, pid: u32) -> ExitStatus {
    if pid == p.pid {
        return p
            .wait_exit(LONG)
            .unwrap_or_else(|| panic!("pid {pid} still runs; output:\n{}", p.output()));
    }
    let deadline = Instant::now() + LONG;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one pid, with WNOHANG.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return ExitStatus::from_raw(status);
        }
        // r < 0 (ECHILD): not re-parented to us yet, its parent still drains.
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not exit (or never became our child) within {LONG:?}; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Unary calls through three restarts
// ---------------------------------------------------------------------------------------

/// What one client saw: the pid of every answer, in order, with repeats collapsed.
#[derive(Default)]
struct Seen {
    pids: Vec<u32>,
    calls: u64,
    /// Why each call that had to be sent again was not processed.
    retried: Vec<&'static str>,
}

/// Whether a failed call was never processed by the server, so that sending it again is
/// safe: gRPC's "transparent retry", which grpc-go and grpc-java do on their own and
/// tonic does not. The same kinds reqwest resends on its own (hyper-util's pool the
/// canceled ones, reqwest's retry the two from h2), and the ones BENCHMARKS.md counts
/// as retried, not failed. What qualifies, as hyper's and h2's client report it:
/// - canceled: hyper had queued the request for a connection that closed before it was
///   written (after the server's GOAWAY the client closes the connection once its
///   streams are done, and cancels what it had queued for it);
/// - h2's GOAWAY error with NO_ERROR from the server: h2 gives it to the streams beyond
///   the last stream id of the server's GOAWAY (RFC 9113 §6.8: not processed) and to
///   the streams asked for on that connection after the GOAWAY arrived (never opened);
/// - a stream the server reset with REFUSED_STREAM (RFC 9113 §8.7: not processed).
///
/// Anything else (another reset, a connection cut mid-call, a timeout, a status from
/// the server) is a failure.
fn never_processed(status: &tonic::Status) -> Option<&'static str> {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return Some("canceled before it was sent");
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            let remote_no_error = e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR);
            if e.is_go_away() && remote_no_error {
                return Some("not opened or beyond the GOAWAY's last stream id");
            }
            if e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some("refused by the server");
            }
        }
        source = e.source();
    }
    None
}

/// Several clients, on two channels, call `Hello` in a loop while the newest
/// generation is SIGHUPed three times. No call may fail; each answer names the caller's
/// name and a generation's pid; after each restart every client is answered by the new
/// generation, and no client is ever answered by an older generation again (the old one
/// serves only what was sent to it before its GOAWAY). Each old generation exits 0; so
/// does the last one on SIGTERM.
#[test]
fn unary_calls_never_fail_through_three_restarts() {
    unary_calls_never_fail_through_restarts("grpc-unary", &[], 3);
}

/// The same through five restarts, with tonic's `Routes` served by
/// `ceaseless::serve(listener, routes)` (the example's `--serve-fn`).
#[test]
fn unary_calls_through_ceaseless_serve_never_fail_through_five_restarts() {
    unary_calls_never_fail_through_restarts("grpc-unary-serve-fn", &["--serve-fn"], 5);
}

fn unary_calls_never_fail_through_restarts(tag: &str, args: &[&str], restarts: usize) {
    become_subreaper();
    let (mut p, addr) = start_with(tag, args);
    let rt = runtime();
    let channels = rt.block_on(async { [channel(&addr).await, channel(&addr).await] });

    const CLIENTS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = TickerClient::new(channels[i % channels.len()].clone());
            let (stop, failures, seen) = (stop.clone(), failures.clone(), seen[i].clone());
            rt.spawn(async move {
                // Bounded in count and time whatever the test does.
                let end = Instant::now() + Duration::from_secs(120);
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) && k < 1_000_000 && Instant::now() < end {
                    k += 1;
                    let name = format!("client{i}-call{k}");
                    let mut retried = Vec::new();
                    let answer = loop {
                        let call = client.hello(HelloRequest { name: name.clone() });
                        match tokio::time::timeout(CALL_TIMEOUT, call).await {
                            Ok(Err(status)) if retried.len() < 5 => {
                                match never_processed(&status) {
                                    Some(why) => retried.push(why),
                                    None => break Ok(Err(status)),
                                }
                                // A moment for the channel to see its connection go.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            other => break other,
                        }
                    };
                    seen.lock().unwrap().retried.extend(&retried);
                    let message = match answer {
                        Ok(Ok(r)) => r.into_inner().message,
                        Ok(Err(status)) => {
                            failures.lock().unwrap().push(format!(
                                "{name} (after retrying {retried:?}): {:?} {:?} {:?}",
                                status.code(),
                                status.message(),
                                std::error::Error::source(&status)
                            ));
                            continue;
                        }
                        Err(_) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{name}: no answer within {CALL_TIMEOUT:?}"));
                            continue;
                        }
                    };
                    let pid = message
                        .strip_prefix("pid ")
                        .and_then(|m| m.strip_suffix(&format!(": hello {name}")))
                        .and_then(|pid| pid.parse::<u32>().ok());
                    let Some(pid) = pid else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{name}: unexpected answer {message:?}"));
                        continue;
                    };
                    let mut s = seen.lock().unwrap();
                    s.calls += 1;
                    if s.pids.last() != Some(&pid) {
                        s.pids.push(pid);
                    }
                }
            })
        })
        .collect();

    let answered_by = |pid: u32| {
        seen.iter()
            .all(|s| s.lock().unwrap().pids.last() == Some(&pid))
    };
    let calls = || seen.iter().map(|s| s.lock().unwrap().calls).sum::<u64>();
    let first = p.pid;
    p.wait_until("every client answered by the first generation", || {
        answered_by(first)
    });
    let mut generations = vec![first];
    for round in 1..=restarts {
        // Some load on this generation first, so that the SIGHUP lands among calls.
        let before = calls();
        p.wait_until("200 more calls answered", || calls() >= before + 200);
        let (old, new) = restart_ok(&p);
        assert_eq!(old, *generations.last().unwrap());
        generations.push(new);
        p.wait_until(
            &format!("restart {round}: every client answered by the new generation {new}"),
            || answered_by(new),
        );
        let status = exit_status(&mut p, old);
        assert_eq!(
            status.code(),
            Some(0),
            "restart {round}: the old generation {old} exited with {status}; output:\n{}",
            p.output()
        );
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(LONG, t)
                .await
                .expect("a client did not stop")
                .expect("a client panicked");
        }
    });

    let failures = failures.lock().unwrap();
    let calls = calls();
    let mut retried = std::collections::BTreeMap::<&str, usize>::new();
    for s in &seen {
        for why in &s.lock().unwrap().retried {
            *retried.entry(why).or_default() += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls failed (generations {generations:?}): {:#?}\noutput:\n{}",
        failures.len(),
        calls + failures.len() as u64,
        &failures[..failures.len().min(20)],
        p.output()
    );
    for (i, s) in seen.iter().enumerate() {
        // Each client met every generation, in order, never an older one after a newer.
        assert_eq!(
            s.lock().unwrap().pids,
            generations,
            "client {i}: the generations that answered, in order"
        );
    }
    eprintln!(
        "{calls} calls answered through {restarts} restarts by {generations:?}, none failed; \
         sent again, never processed: {retried:?}"
    );

    let last = newest(&p);
    assert_eq!(last, *generations.last().unwrap());
    drop(channels);
    signal(last, libc::SIGTERM);
    let status = exit_status(&mut p, last);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: the last generation exited with {status}"
    );
}

// ---------------------------------------------------------------------------------------
// A server stream across a restart, and SIGTERM
// ---------------------------------------------------------------------------------------

/// How one `Ticks` call ended.
#[derive(Debug, Clone)]
struct Ended {
    /// The `from` it was called with.
    from: u64,
    /// The ticks it delivered.
    ticks: usize,
    code: Code,
    message: String,
}

/// What the following client saw.
#[derive(Default)]
struct Followed {
    ticks: Vec<Tick>,
    calls: Vec<Ended>,
    /// Calls that were sent again because they were never processed.
    retried: Vec<&'static str>,
    /// Why it gave up, if it did not end on "draining: shutdown".
    failed: Option<String>,
}

/// Follows `Ticks` from 0: on `UNAVAILABLE` "draining: restart" it calls again from the
/// next n, on the same channel (tonic reconnects it to whoever listens now); it stops
/// on "draining: shutdown" or anything else (which the test reports).
async fn follow(channel: Channel, followed: Arc<Mutex<Followed>>) {
    let mut client = TickerClient::new(channel);
    let mut next = 0u64;
    // Bounded: a stream per restart, and a few more for the race described in the test.
    for _ in 0..20 {
        let from = next;
        let call = tokio::time::timeout(CALL_TIMEOUT, client.ticks(TicksRequest { from })).await;
        let mut stream = match call {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                let retry = {
                    let mut f = followed.lock().unwrap();
                    match never_processed(&s) {
                        Some(why) if f.retried.len() < 5 => {
                            f.retried.push(why);
                            true
                        }
                        _ => {
                            f.failed = Some(format!("Ticks from {from}: the call failed: {s:?}"));
                            false
                        }
                    }
                };
                if !retry {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                followed.lock().unwrap().failed = Some(format!(
                    "Ticks from {from}: no response within {CALL_TIMEOUT:?}"
                ));
                return;
            }
        };
        let mut ticks = 0;
        let end = loop {
            match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(tick))) => {
                    if tick.n != next {
                        followed.lock().unwrap().failed = Some(format!(
                            "Ticks from {from}: tick {} where {next} was due",
                            tick.n
                        ));
                        return;
                    }
                    next += 1;
                    ticks += 1;
                    followed.lock().unwrap().ticks.push(tick);
                }
                Ok(Ok(None)) => break Err("the stream ended without a status".to_string()),
                Ok(Err(status)) => break Ok(status),
                Err(_) => break Err(format!("no message within {CALL_TIMEOUT:?}")),
            }
        };
        let status = match end {
            Ok(s) => s,
            Err(e) => {
                followed.lock().unwrap().failed = Some(format!("Ticks from {from}: {e}"));
                return;
            }
        };
        let ended = Ended {
            from,
            ticks,
            code: status.code(),
            message: status.message().to_string(),
        };
        let mut f = followed.lock().unwrap();
        f.calls.push(ended.clone());
        match (ended.code, ended.message.as_str()) {
            (Code::Unavailable, "draining: restart") => continue,
            (Code::Unavailable, "draining: shutdown") => return,
            _ => {
                f.failed = Some(format!(
                    "Ticks from {from} ended with {status:?} (source {:?})",
                    std::error::Error::source(&status)
                ));
                return;
            }
        }
    }
    followed.lock().unwrap().failed = Some("more than 20 calls".into());
}

/// A `Ticks` stream open across a restart ends with `UNAVAILABLE` "draining: restart"
/// after its last whole message, not with a transport error; the client calls again
/// from the next n and is served by the new generation: the pid in the ticks changes
/// once, and the tick numbers run on without a gap or a repeat. SIGTERM to the new
/// generation ends the stream with `UNAVAILABLE` "draining: shutdown"; both generations
/// exit 0.
#[test]
fn a_stream_ends_unavailable_on_the_drain_and_resumes_on_the_new_generation() {
    a_stream_resumes("grpc-ticks", &[]);
}

/// The same with tonic's `Routes` served by `ceaseless::serve` (`--serve-fn`).
#[test]
fn a_stream_through_ceaseless_serve_resumes_on_the_new_generation() {
    a_stream_resumes("grpc-ticks-serve-fn", &["--serve-fn"]);
}

fn a_stream_resumes(tag: &str, args: &[&str]) {
    become_subreaper();
    let (mut p, addr) = start_with(tag, args);
    let rt = runtime();
    let channel = rt.block_on(channel(&addr));
    let followed: Arc<Mutex<Followed>> = Arc::default();
    let follower = rt.spawn(follow(channel, followed.clone()));

    let ticks_of = |pid: u32| {
        let f = followed.lock().unwrap();
        assert!(f.failed.is_none(), "the client gave up: {:?}", f.failed);
        f.ticks.iter().filter(|t| t.pid == pid).count()
    };
    let first = p.pid;
    p.wait_until("3 ticks from the first generation", || ticks_of(first) >= 3);
    let (old, new) = restart_ok(&p);
    assert_eq!(old, first);
    p.wait_until("3 ticks from the new generation", || ticks_of(new) >= 3);
    let status = exit_status(&mut p, old);
    assert_eq!(
        status.code(),
        Some(0),
        "the old generation exited with {status}"
    );

    signal(new, libc::SIGTERM);
    rt.block_on(async {
        tokio::time::timeout(LONG, follower)
            .await
            .expect("the client did not end after SIGTERM")
            .expect("the client panicked");
    });
    let status = exit_status(&mut p, new);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: the new generation exited with {status}"
    );

    let f = followed.lock().unwrap();
    assert!(f.failed.is_none(), "the client gave up: {:?}", f.failed);
    // Every tick once, in order (the client checked each against the next due).
    let ns: Vec<u64> = f.ticks.iter().map(|t| t.n).collect();
    assert_eq!(ns, (0..ns.len() as u64).collect::<Vec<_>>());
    // The first generation's ticks, then the new one's: one change of pid.
    let pids: Vec<u32> = f.ticks.iter().map(|t| t.pid).collect();
    let switch = pids.iter().position(|&pid| pid != old).unwrap();
    assert!(switch >= 3, "{pids:?}");
    assert!(
        pids[..switch].iter().all(|&pid| pid == old)
            && pids[switch..].iter().all(|&pid| pid == new),
        "the pids of the ticks, in order: {pids:?}"
    );
    // How the calls ended: the first on the restart's drain, the last on the shutdown.
    let calls = &f.calls;
    let first_call = &calls[0];
    assert_eq!(
        (first_call.from, first_call.ticks),
        (0, switch),
        "the first call delivered the old generation's ticks: {calls:?}"
    );
    assert_eq!(
        (first_call.code, first_call.message.as_str()),
        (Code::Unavailable, "draining: restart"),
        "{calls:?}"
    );
    let last_call = calls.last().unwrap();
    assert_eq!(
        (last_call.code, last_call.message.as_str()),
        (Code::Unavailable, "draining: shutdown"),
        "{calls:?}"
    );
    assert_eq!(
        last_call.ticks,
        pids.len() - switch,
        "the last call delivered all of the new generation's ticks: {calls:?}"
    );
    // A call in between is a retry that still reached the old generation: the status
    // that ended the first stream can reach the client before the GOAWAY does (the
    // handler and the connection each see the drain begin), and the old generation
    // accepts streams until its second GOAWAY. Its drain has begun, so it answers at
    // once: no tick, the same status, and the client tries again.
    let between = &calls[1..calls.len() - 1];
    for c in between {
        assert_eq!(
            (c.from, c.ticks, c.code, c.message.as_str()),
            (switch as u64, 0, Code::Unavailable, "draining: restart"),
            "{calls:?}"
        );
    }
    // Who served each call, from the log: the first and those in between by the old
    // generation, the last by the new one.
    assert!(p.wait_closed(LONG), "output still open after both exited");
    let begun = |pid: u32| {
        p.output()
            .lines()
            .filter(|l| l.contains(&format!("ticks: stream begins pid={pid} ")))
            .count()
    };
    assert_eq!(
        (begun(old), begun(new)),
        (1 + between.len(), 1),
        "Ticks calls served by {old} and by {new}; calls: {calls:?}; output:\n{}",
        p.output()
    );
    eprintln!(
        "{} ticks, {} from {old} then {} from {new}; calls: {calls:?}; sent again, never \
         processed: {:?}",
        pids.len(),
        switch,
        pids.len() - switch,
        f.retried
    );
}

// ---------------------------------------------------------------------------------------
// The same routes through ceaseless::serve

/// tonic's `Routes` served by `ceaseless::serve(listener, routes)` (the example's
/// `--serve-fn`): unary calls are answered before and after a restart, each by the
/// generation serving then, and the old generation exits, handed over.
#[test]
fn routes_through_ceaseless_serve_restart() {
    become_subreaper();
    let (p, addr) = start_with("grpc-serve-fn", &["--serve-fn"]);
    let rt = runtime();
    let hello = |who: &str| {
        rt.block_on(async {
            let mut client = TickerClient::new(channel(&addr).await);
            let call = client.hello(HelloRequest { name: who.into() });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(r)) => r.into_inner().message,
                other => panic!("hello {who}: {other:?}; output:\n{}", p.output()),
            }
        })
    };
    let first = newest(&p);
    assert_eq!(hello("one"), format!("pid {first}: hello one"));
    let (old, new) = restart_ok(&p);
    assert_eq!(old, first);
    assert_eq!(hello("two"), format!("pid {new}: hello two"));
    let exit = common::generations::wait_line_of(&p, "grpc exiting", old);
    assert!(
        exit.contains(&format!("handed over to pid {new}")),
        "{exit}"
    );
}
