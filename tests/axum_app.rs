//! The README's quick start, `examples/axum_app.rs` (a typical axum 0.8 service served
//! by `ceaseless::serve` with `into_make_service_with_connect_info`), through ten
//! SIGHUP restarts under keep-alive load, with real processes, real signals and real
//! clients over 127.0.0.1: not one request fails; `GET /ip` answers every request of
//! its clients with that client's own address (axum's `ConnectInfo`); a WebSocket
//! client sees close code 1012 at each restart and reconnects to the new generation
//! (1001 at the final shutdown); a server-sent events client that reconnects with
//! `Last-Event-ID` gets every id once, in order, without a gap. The tower-http layers
//! (request id, compression) and the JSON API answer as they should.
//!
//! The example is a binary: `cargo test --test axum_app` alone does not rebuild it
//! after a change to the library (run `cargo build --examples` first).
#![cfg(unix)]
#![cfg(feature = "axum")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::generations::{expect_gone, installed, restart_ok, wait_line_of, LONG};
use common::load::{
    body_pid, chain, exchange, reqwest_client, shared_client, Client, Expect, Load, Shared,
    REQUEST_TIMEOUT,
};
use common::{become_subreaper, field, runtime, signal, wait_until, Proc};

const RESTARTS: usize = 10;

/// Close codes (RFC 6455, 7.4.1).
const GOING_AWAY: u16 = 1001;
const SERVICE_RESTART: u16 = 1012;

/// What each generation must show every long-lived client before the next restart.
const WS_ANSWERS_PER_GENERATION: u64 = 3;
const SSE_EVENTS_PER_GENERATION: usize = 3;

// ---------------------------------------------------------------------------------------
// `GET /ip` on every request: the answer is the client's own address
// ---------------------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 client asking `GET /ip` on one connection at a time (a new
/// one after `Connection: close`, or for every request when `fresh`): each answer must
/// be the connection's local address. Counted in the load's tally (a wrong address as
/// a wrong answer) and in `checked`.
async fn ip_client(
    name: String,
    addr: SocketAddr,
    fresh: bool,
    sh: Shared,
    stop: Arc<AtomicBool>,
    checked: Arc<AtomicU64>,
) {
    let mut conn: Option<(tokio::net::TcpStream, SocketAddr)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (epoch, _) = sh.expectation();
        let (s, local) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let connected =
                    tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await;
                match connected {
                    Ok(Ok(s)) => {
                        let local = s.local_addr().unwrap();
                        conn.insert((s, local))
                    }
                    Ok(Err(e)) => {
                        sh.record(&name, epoch, None, Err(format!("connect: {e}")));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(_) => {
                        sh.record(&name, epoch, None, Err("connect timed out".into()));
                        continue;
                    }
                }
            }
        };
        let local = *local;
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, "/ip")).await {
            Ok(Ok(r)) => {
                if r.close || fresh {
                    conn = None;
                }
                if r.close {
                    sh.tally.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if r.status == 200 {
                    checked.fetch_add(1, Ordering::Relaxed);
                    if r.body.trim() != local.to_string() {
                        sh.tally.wrong.fetch_add(1, Ordering::Relaxed);
                        sh.tally.note(format!(
                            "{name}: GET /ip on the connection from {local} answered {:?}",
                            r.body
                        ));
                    }
                }
                sh.record(&name, epoch, None, Ok((r.status, r.body)));
            }
            Ok(Err(e)) => {
                conn = None;
                sh.record(&name, epoch, None, Err(e));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                conn = None;
                sh.record(&name, epoch, None, Err("no response in time".into()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A WebSocket client that reconnects after each 1012
// ---------------------------------------------------------------------------------------

/// One WebSocket connection as the client saw it.
#[derive(Debug, Default, Clone)]
struct WsConn {
    /// The generation that answered (every answer on a connection names the same one).
    pid: Option<u32>,
    answered: u64,
    /// The code of the close frame that ended it.
    close: Option<u16>,
}

#[derive(Debug, Default)]
struct WsLog {
    conns: Vec<WsConn>,
    problems: Vec<String>,
}

/// Sends a message every 50 ms, each answered before the next; on a close frame
/// completes the handshake, then reconnects after a 1012 and stops after any other
/// code. Stops at its first problem.
async fn ws_client(url: String, log: Arc<Mutex<WsLog>>) {
    let problem = |s: String| log.lock().unwrap().problems.push(s);
    let mut k = 0u64;
    loop {
        let mut ws =
            match tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::connect_async(&url))
                .await
            {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => return problem(format!("connect: {}", chain(&e))),
                Err(_) => return problem("connect: no answer in time".into()),
            };
        log.lock().unwrap().conns.push(WsConn::default());
        let close = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            k += 1;
            let text = format!("m{k}");
            if let Err(e) = ws.send(Message::text(text.clone())).await {
                return problem(format!("sending {text}: {}", chain(&e)));
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(answer)))) => {
                    let pid = answer
                        .as_str()
                        .strip_prefix("pid ")
                        .and_then(|a| a.split_once(": "))
                        .filter(|(_, echoed)| *echoed == text)
                        .and_then(|(pid, _)| pid.parse::<u32>().ok());
                    let mut l = log.lock().unwrap();
                    let conn = l.conns.last_mut().unwrap();
                    match pid {
                        Some(pid) if conn.pid.is_none_or(|p| p == pid) => {
                            conn.pid = Some(pid);
                            conn.answered += 1;
                        }
                        _ => {
                            let was = conn.pid;
                            l.problems.push(format!(
                                "{text} answered {:?} on a connection to {was:?}",
                                answer.as_str()
                            ));
                            return;
                        }
                    }
                }
                // The close frame came instead of the answer: the message crossed it.
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(other))) => return problem(format!("{text} answered {other:?}")),
                Ok(Some(Err(e))) => return problem(format!("awaiting {text}: {}", chain(&e))),
                Ok(None) => return problem(format!("ended without a close frame, {text} sent")),
                Err(_) => return problem(format!("{text} not answered in time")),
            }
        };
        log.lock().unwrap().conns.last_mut().unwrap().close = close;
        // The handshake: reading sends the close reply; then the server ends the
        // connection.
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
            Ok(None) => {}
            Ok(Some(Ok(m))) => return problem(format!("after the close: {m:?}")),
            Ok(Some(Err(e))) => return problem(format!("the close handshake: {}", chain(&e))),
            Err(_) => return problem("the connection stayed open after the close".into()),
        }
        if close != Some(SERVICE_RESTART) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// A server-sent events client that resumes with Last-Event-ID
// ---------------------------------------------------------------------------------------

/// One stream (one request): the Last-Event-ID it was asked with, and (id, data) of
/// each event.
type SseStream = (Option<u64>, Vec<(u64, String)>);

#[derive(Debug, Default)]
struct SseLog {
    streams: Vec<SseStream>,
    problems: Vec<String>,
}

/// Streams `/events`; whenever a stream ends, asks again with the last id received,
/// until `stop`. Stops at its first problem.
async fn sse_client(url: String, log: Arc<Mutex<SseLog>>, stop: Arc<AtomicBool>) {
    let problem = |s: String| log.lock().unwrap().problems.push(s);
    // No overall timeout: a stream lasts as long as its generation.
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("reqwest client");
    let mut last: Option<u64> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut req = client.get(&url);
        if let Some(k) = last {
            req = req.header("Last-Event-ID", k.to_string());
        }
        let mut res = match tokio::time::timeout(REQUEST_TIMEOUT, req.send()).await {
            Ok(Ok(r)) if r.status() == 200 => r,
            Ok(Ok(r)) => return problem(format!("GET /events: {}", r.status())),
            Ok(Err(e)) => return problem(format!("GET /events after {last:?}: {}", chain(&e))),
            Err(_) => return problem(format!("GET /events after {last:?}: no answer")),
        };
        log.lock().unwrap().streams.push((last, Vec::new()));
        let mut buf = String::new();
        loop {
            match tokio::time::timeout(REQUEST_TIMEOUT, res.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    buf.push_str(&String::from_utf8_lossy(&bytes));
                    while let Some(end) = buf.find("\n\n") {
                        let event: String = buf.drain(..end + 2).collect();
                        let (mut id, mut data) = (None, None);
                        for line in event.lines() {
                            if let Some(v) = line.strip_prefix("id:") {
                                id = v.trim().parse::<u64>().ok();
                            } else if let Some(v) = line.strip_prefix("data:") {
                                data = Some(v.trim().to_string());
                            }
                        }
                        match (id, data) {
                            (Some(id), Some(data)) => {
                                last = Some(id);
                                let mut l = log.lock().unwrap();
                                l.streams.last_mut().unwrap().1.push((id, data));
                            }
                            // A keep-alive comment.
                            (None, None) => {}
                            _ => return problem(format!("a malformed event: {event:?}")),
                        }
                    }
                }
                Ok(Ok(None)) if buf.trim().is_empty() => break,
                Ok(Ok(None)) => return problem(format!("ended inside an event: {buf:?}")),
                Ok(Err(e)) => return problem(format!("cut after {last:?}: {}", chain(&e))),
                Err(_) => return problem(format!("no event for {REQUEST_TIMEOUT:?}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// Before the load: the JSON API, the request id and compression layers, the health
/// check.
fn check_the_routes(rt: &tokio::runtime::Runtime, addr: SocketAddr, p: &Proc) {
    rt.block_on(async {
        let c = reqwest_client(false);
        let r = c
            .get(format!("http://{addr}/api/items"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET /api/items; output:\n{}", p.output());
        let h = r.headers();
        assert_eq!(h["content-encoding"], "gzip", "{h:?}");
        assert!(h.contains_key("x-request-id"), "no request id: {h:?}");
        // A request id the client sent comes back.
        let r = c
            .post(format!("http://{addr}/api/items"))
            .header("x-request-id", "req-42")
            .header("content-type", "application/json")
            .body(r#"{"name":"plum","n":3}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-request-id"], "req-42");
        let echoed: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(echoed, serde_json::json!({"name": "plum", "n": 3}));
        let r = c
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok\n");
    });
}

/// Ten SIGHUPs under keep-alive load (pooled HTTP/1.1 and HTTP/2, raw keep-alive
/// connections, a new connection per request, `GET /ip` checked on every request),
/// with a WebSocket and an event stream open throughout: nothing fails, every answer
/// between restarts comes from the newest generation, `/ip` is always the client's own
/// address, the WebSocket is closed with 1012 by each generation and reconnects to the
/// next (1001 at the final SIGTERM), and the event ids run 1, 2, 3, ... across all
/// eleven generations.
#[test]
fn a_typical_axum_service_through_ten_restarts() {
    become_subreaper();
    let (_dir, app) = installed("axum-app", "axum_app");
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr: SocketAddr = p.serving_addr(1).parse().unwrap();
    let rt = runtime();
    check_the_routes(&rt, addr, &p);

    let url = format!("http://{addr}/");
    let load = Load::start("axum-app", || {
        let mut c = shared_client(reqwest_client(false), &url, 3);
        c.extend(shared_client(reqwest_client(true), &url, 2));
        c.extend((0..3).map(|_| Client::Tcp(addr)));
        c.extend((0..2).map(|_| Client::FreshTcp(addr)));
        c
    });
    let only = |pid| Some(Expect { pid, version: None });
    load.expect(only(p.pid));

    let stop_ip = Arc::new(AtomicBool::new(false));
    let ip_checked = Arc::new(AtomicU64::new(0));
    let ip_tasks: Vec<_> = (0..4)
        .map(|i| {
            rt.spawn(ip_client(
                format!("ip client {i}"),
                addr,
                i == 3,
                load.shared.clone(),
                stop_ip.clone(),
                ip_checked.clone(),
            ))
        })
        .collect();
    let ws_log: Arc<Mutex<WsLog>> = Arc::default();
    let ws_task = rt.spawn(ws_client(format!("ws://{addr}/ws"), ws_log.clone()));
    let sse_log: Arc<Mutex<SseLog>> = Arc::default();
    let stop_sse = Arc::new(AtomicBool::new(false));
    let sse_task = rt.spawn(sse_client(
        format!("http://{addr}/events"),
        sse_log.clone(),
        stop_sse.clone(),
    ));

    // Every client served by generation `pid`: the load's answers checked against it,
    // the WebSocket's current connection answered by it, its events in the stream.
    let served_by = |pid: u32, what: &str| {
        load.wait_checked(300, what);
        let ip_before = ip_checked.load(Ordering::Relaxed);
        let state = || {
            format!(
                "ws: {:?}\nsse: {:?}\noutput:\n{}",
                ws_log.lock().unwrap(),
                sse_log.lock().unwrap(),
                p.output()
            )
        };
        wait_until(
            &format!("{what}: the WebSocket, the event stream and /ip served by {pid}"),
            LONG,
            || {
                let ws = ws_log.lock().unwrap();
                let sse = sse_log.lock().unwrap();
                assert!(ws.problems.is_empty(), "{what}: ws: {:?}", ws.problems);
                assert!(sse.problems.is_empty(), "{what}: sse: {:?}", sse.problems);
                let prefix = format!("pid {pid} n ");
                let events = sse
                    .streams
                    .iter()
                    .flat_map(|s| &s.1)
                    .filter(|(_, data)| data.starts_with(&prefix))
                    .count();
                ws.conns
                    .last()
                    .is_some_and(|c| c.pid == Some(pid) && c.answered >= WS_ANSWERS_PER_GENERATION)
                    && events >= SSE_EVENTS_PER_GENERATION
                    && ip_checked.load(Ordering::Relaxed) >= ip_before + 20
            },
            state,
        );
    };

    let mut gens = vec![p.pid];
    served_by(p.pid, "the first generation");
    for i in 1..=RESTARTS {
        load.expect(None);
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        let exit = wait_line_of(&p, "axum_app exiting", old);
        assert!(
            exit.contains(&format!("handed over to pid {new}")),
            "restart {i}: {exit}"
        );
        load.expect(only(new));
        served_by(new, &format!("restart {i}: the new generation {new}"));
        gens.push(new);
    }

    // The short requests first, then the long-lived connections see the shutdown.
    stop_ip.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in ip_tasks {
            tokio::time::timeout(LONG, t).await.unwrap().unwrap();
        }
    });
    let summary = load.stop();
    summary.print("axum-app");
    summary.assert_clean("axum-app");
    stop_sse.store(true, Ordering::SeqCst);
    let last = *gens.last().unwrap();
    signal(last, libc::SIGTERM);
    let exit = wait_line_of(&p, "axum_app exiting", last);
    assert_eq!(field(&exit, "ended").as_deref(), Some("shutdown"), "{exit}");
    expect_gone(&p, last, "the last generation after SIGTERM");
    rt.block_on(async {
        tokio::time::timeout(LONG, ws_task).await.unwrap().unwrap();
        tokio::time::timeout(LONG, sse_task).await.unwrap().unwrap();
    });

    // The WebSocket: one connection answered by each generation, in order, closed with
    // 1012 by all but the last (1001). A connection the old generation accepted as its
    // drain began is closed at once with 1012, unanswered.
    let ws = ws_log.lock().unwrap();
    assert!(ws.problems.is_empty(), "ws: {:?}", ws.problems);
    let answered: Vec<(u32, Option<u16>)> = ws
        .conns
        .iter()
        .filter_map(|c| c.pid.map(|pid| (pid, c.close)))
        .collect();
    let mut want: Vec<(u32, Option<u16>)> =
        gens.iter().map(|g| (*g, Some(SERVICE_RESTART))).collect();
    want.last_mut().unwrap().1 = Some(GOING_AWAY);
    assert_eq!(
        answered, want,
        "(generation, close code) of each answered connection: {:?}",
        ws.conns
    );
    for c in ws.conns.iter().filter(|c| c.pid.is_none()) {
        assert_eq!(c.close, Some(SERVICE_RESTART), "{:?}", ws.conns);
    }
    let restart_closes = ws
        .conns
        .iter()
        .filter(|c| c.close == Some(SERVICE_RESTART))
        .count();
    let ws_messages: u64 = ws.conns.iter().map(|c| c.answered).sum();

    // The event stream: every id once, in order, each stream from its Last-Event-ID on,
    // each generation's events in one stream.
    let sse = sse_log.lock().unwrap();
    assert!(sse.problems.is_empty(), "sse: {:?}", sse.problems);
    let ids: Vec<u64> = sse
        .streams
        .iter()
        .flat_map(|s| s.1.iter().map(|(id, _)| *id))
        .collect();
    let want_ids: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, want_ids, "every id once, in order");
    let mut senders = Vec::new();
    for (from, events) in &sse.streams {
        let Some((first, data)) = events.first() else {
            continue;
        };
        assert_eq!(*first, from.map_or(1, |k| k + 1), "a stream after {from:?}");
        let pid = body_pid(data).unwrap();
        for (id, data) in events {
            assert_eq!(*data, format!("pid {pid} n {id}"));
        }
        senders.push(pid);
    }
    assert_eq!(senders, gens, "each generation sent one stream, in order");

    println!(
        "[axum-app] {RESTARTS} restarts; {} requests answered ({} of them GET /ip, each \
         the client's own address), {} failed; WebSocket: {} connections, {ws_messages} \
         messages answered, {restart_closes} closes with 1012, then 1001; SSE: ids 1..={} \
         in {} streams, no gap",
        summary.ok,
        ip_checked.load(Ordering::Relaxed),
        summary.failed,
        ws.conns.len(),
        ids.len(),
        sse.streams.len()
    );
}
