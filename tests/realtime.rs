//! Long-lived connections across restarts, with the `realtime` example (an axum
//! `Router` on ceaseless's `Server`): WebSockets closed with the drain's reason and the
//! close handshake completed, a WebSocket that never answers the close cut at hammer
//! time, server-sent events resumed with `Last-Event-ID` without a gap or a repeat, and
//! the peer address from `ConnInfo` and from axum's `ConnectInfo`.
//!
//! As in lifecycle.rs: every test installs its binary in its own scratch directory and
//! listens on 127.0.0.1 port 0, so the tests run in parallel. Every wait is bounded and
//! generous; the only timings asserted are the hammer's, and only bounds a slow machine
//! cannot break (a timer does not fire early; the upper bound has ten seconds to spare).
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use common::generations::{
    expect_gone, installed, lines_of, logged_at, restart_ok, wait_line_of, wait_status, LONG,
};
use common::load::{body_pid, chain, connect_tcp, exchange_blocking, get_tcp, REQUEST_TIMEOUT};
use common::{become_subreaper, field, runtime, signal, Proc};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Close codes (RFC 6455, 7.4.1).
const GOING_AWAY: u16 = 1001;
const SERVICE_RESTART: u16 = 1012;

/// The drain grace the example runs with (the library's default).
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// The log line of a message the example read after it had sent its close frame.
const CROSSED: &str = "a message crossed the close frame";

/// `s`, stamped with the UTC time of day as the servers' logs are.
fn stamped(s: String) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{h:02}:{m:02}:{sec:02}.{ms:03}Z {s}")
}

/// The exit status of generation `pid` (our child, or re-parented to us), which must be
/// 0.
fn expect_exit_0(p: &Proc, pid: u32, what: &str) {
    let status = wait_status(pid, LONG).unwrap_or_else(|| {
        panic!(
            "{what}: pid {pid} did not exit within {LONG:?} (or is not our child); output:\n{}",
            p.output()
        )
    });
    assert!(
        status.success(),
        "{what}: pid {pid} exited with {status:?}; output:\n{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// WebSocket by hand: the upgrade, and frames, for clients that misbehave on purpose
// ---------------------------------------------------------------------------------------

/// Asks for a WebSocket on `/ws` on an open connection; the response head. Only the
/// head is read (byte by byte), so no frame is consumed.
fn upgrade(s: &mut StdTcpStream) -> String {
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ceaseless.test\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("reading the upgrade response ({head:?} so far): {e}"));
        head.push(byte[0]);
        assert!(head.len() < 64 * 1024, "upgrade response head too large");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Whether a response head accepts the upgrade as a client must check it (RFC 6455,
/// 4.1): status 101 and `Connection: Upgrade` (a client refuses the handshake without
/// it).
fn upgraded(head: &str) -> bool {
    head.starts_with("HTTP/1.1 101 ")
        && head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("connection")
                    && v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Opens a WebSocket on `/ws` over a new TCP connection.
fn ws_upgrade(addr: &str) -> StdTcpStream {
    let mut s = connect_tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let head = upgrade(&mut s);
    assert!(upgraded(&head), "the upgrade was refused: {head:?}");
    s
}

/// Sends a frame, masked as a client must.
fn send_frame(s: &mut StdTcpStream, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)
}

/// Sends a text frame.
fn send_text(s: &mut StdTcpStream, text: &str) -> io::Result<()> {
    send_frame(s, 1, text.as_bytes())
}

/// The status code of a close frame's payload (1005: none).
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

/// One frame from the server: (opcode, payload).
fn read_frame(s: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    if h[1] & 0x80 != 0 {
        return Err(io::Error::other("a masked frame from the server"));
    }
    let len = match h[1] & 0x7f {
        126 => {
            let mut e = [0u8; 2];
            s.read_exact(&mut e)?;
            u64::from(u16::from_be_bytes(e))
        }
        127 => {
            let mut e = [0u8; 8];
            s.read_exact(&mut e)?;
            u64::from_be_bytes(e)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    s.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

/// Sends `text` and reads its answer, which must be a text frame.
fn echo(s: &mut StdTcpStream, text: &str) -> String {
    send_text(s, text).unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
    match read_frame(s) {
        Ok((1, payload)) => String::from_utf8_lossy(&payload).into_owned(),
        Ok((op, payload)) => panic!("answer to {text:?}: opcode {op}, {payload:?}"),
        Err(e) => panic!("reading the answer to {text:?}: {e}"),
    }
}

/// Whether the server ended the connection (FIN or reset), without reading from it:
/// POLLRDHUP says so even while unread data waits in the receive buffer.
fn peer_closed(s: &StdTcpStream, wait: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0 && fds.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

// ---------------------------------------------------------------------------------------
// 1. WebSocket clients through restarts
// ---------------------------------------------------------------------------------------

const WS_CLIENTS: usize = 40;
const WS_RESTARTS: usize = 5;
/// Each client sends a message this often (and one at a time: the next only once the
/// previous one is answered).
const MESSAGE_EVERY: Duration = Duration::from_millis(100);
/// Answers every client gets from each generation before the next restart: 1.2 s of
/// messages, longer than the example's read and write timeouts in that test (1 s), which
/// must not apply to an upgraded connection.
const ANSWERS_PER_GENERATION: u64 = 12;

/// One WebSocket connection, as its client saw it.
#[derive(Debug, Default, Clone)]
struct WsConn {
    /// The generation that answered (every answer on a connection names the same).
    pid: Option<u32>,
    answered: u64,
    /// The code of the close frame that ended it.
    close: Option<u16>,
    /// The message that was in flight when the close frame came instead of its answer.
    crossed: Option<String>,
}

#[derive(Debug, Default)]
struct WsLog {
    conns: Vec<WsConn>,
    /// Anything abnormal: an end without a close frame, an IO error, a wrong answer.
    problems: Vec<String>,
}

/// A WebSocket client: a message every [`MESSAGE_EVERY`], each answered before the
/// next; on a close frame it completes the handshake, reconnects after a 1012 and stops
/// after any other code. Stops at its first problem.
async fn ws_client(id: usize, url: String, log: Arc<Mutex<WsLog>>) {
    let problem = |s: String| log.lock().unwrap().problems.push(stamped(s));
    let mut k = 0u64;
    loop {
        let mut ws = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return problem(format!("client {id}: connect: {}", chain(&e))),
            Err(_) => return problem(format!("client {id}: connect: no answer in time")),
        };
        log.lock().unwrap().conns.push(WsConn::default());
        // The clients reconnect together: each starts at its own point of the period,
        // so that at any moment of a drain some message may be on the wire.
        let phase = MESSAGE_EVERY * (id % WS_CLIENTS) as u32 / WS_CLIENTS as u32;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, MESSAGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (frame, crossed): (Option<CloseFrame>, Option<String>) = loop {
            tokio::select! {
                _ = tick.tick() => {
                    k += 1;
                    let text = format!("c{id}-m{k}");
                    if let Err(e) = ws.send(Message::text(text.clone())).await {
                        return problem(format!("client {id}: sending {text}: {}", chain(&e)));
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
                                    l.problems.push(stamped(format!(
                                        "client {id}: {text} answered {:?} (the connection's \
                                         pid so far: {was:?})",
                                        answer.as_str()
                                    )));
                                    return;
                                }
                            }
                        }
                        Ok(Some(Ok(Message::Close(frame)))) => break (frame, Some(text)),
                        Ok(Some(Ok(other))) => {
                            return problem(format!("client {id}: {text} answered {other:?}"))
                        }
                        Ok(Some(Err(e))) => {
                            return problem(format!("client {id}: awaiting the answer to {text}: {}", chain(&e)))
                        }
                        Ok(None) => {
                            return problem(format!("client {id}: the connection ended without a close frame, {text} unanswered"))
                        }
                        Err(_) => return problem(format!("client {id}: {text} not answered in time")),
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(frame))) => break (frame, None),
                    Some(Ok(other)) => return problem(format!("client {id}: unasked for: {other:?}")),
                    Some(Err(e)) => return problem(format!("client {id}: between messages: {}", chain(&e))),
                    None => return problem(format!("client {id}: the connection ended without a close frame")),
                },
            }
        };
        let Some(frame) = frame else {
            return problem(format!("client {id}: a close frame without a code"));
        };
        let code = u16::from(frame.code);
        {
            let mut l = log.lock().unwrap();
            let conn = l.conns.last_mut().unwrap();
            conn.close = Some(code);
            conn.crossed = crossed;
        }
        // The handshake: reading sends the library's close reply; then the server ends
        // the connection, and nothing else may come.
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
            Ok(None) => {}
            Ok(Some(Ok(m))) => return problem(format!("client {id}: after the close: {m:?}")),
            Ok(Some(Err(e))) => {
                return problem(format!(
                    "client {id}: the close handshake (code {code}): {}",
                    chain(&e)
                ))
            }
            Err(_) => {
                return problem(format!(
                    "client {id}: the connection stayed open after the close handshake"
                ))
            }
        }
        if code != SERVICE_RESTART {
            return;
        }
    }
}

struct WsClients {
    rt: tokio::runtime::Runtime,
    logs: Vec<Arc<Mutex<WsLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WsClients {
    fn start(n: usize, url: &str) -> WsClients {
        let rt = runtime();
        let logs: Vec<Arc<Mutex<WsLog>>> = (0..n).map(|_| Arc::default()).collect();
        let tasks = logs
            .iter()
            .enumerate()
            .map(|(id, log)| rt.spawn(ws_client(id, url.to_string(), log.clone())))
            .collect();
        WsClients { rt, logs, tasks }
    }

    fn problems(&self) -> Vec<String> {
        self.logs
            .iter()
            .flat_map(|l| l.lock().unwrap().problems.clone())
            .collect()
    }

    /// Per client: (connections so far, answers on the last one, its pid).
    fn state(&self) -> String {
        let per: Vec<String> = self
            .logs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let l = l.lock().unwrap();
                let last = l.conns.last();
                format!(
                    "c{i}: {} conns, last {:?}/{}",
                    l.conns.len(),
                    last.and_then(|c| c.pid),
                    last.map_or(0, |c| c.answered)
                )
            })
            .collect();
        format!(
            "clients: {}; problems: {:#?}",
            per.join(", "),
            self.problems()
        )
    }

    /// Waits until every client's current connection has `n` answers from `pid`;
    /// panics at once on a client's problem.
    fn wait_answered_by(&self, pid: u32, n: u64, what: &str) {
        common::wait_until(
            &format!("{what}: every client answered {n} times by pid {pid}"),
            LONG,
            || {
                let problems = self.problems();
                assert!(
                    problems.is_empty(),
                    "{what}: clients saw problems:\n  {}",
                    problems.join("\n  ")
                );
                self.logs.iter().all(|l| {
                    l.lock()
                        .unwrap()
                        .conns
                        .last()
                        .is_some_and(|c| c.pid == Some(pid) && c.answered >= n)
                })
            },
            || self.state(),
        );
    }

    /// Waits for every client to stop; their connections.
    fn join(self) -> (Vec<Vec<WsConn>>, Vec<String>) {
        let WsClients { rt, logs, tasks } = self;
        rt.block_on(async {
            for t in tasks {
                tokio::time::timeout(LONG, t)
                    .await
                    .expect("a WebSocket client did not stop")
                    .expect("a WebSocket client panicked");
            }
        });
        let problems = logs
            .iter()
            .flat_map(|l| l.lock().unwrap().problems.clone())
            .collect();
        let conns = logs
            .iter()
            .map(|l| l.lock().unwrap().conns.clone())
            .collect();
        (conns, problems)
    }
}

/// 40 WebSocket clients, each sending a message every 100 ms, through 5 restarts and a
/// shutdown. Every connection ends with a close frame, 1012 at each restart and 1001 at
/// the shutdown, and a completed close handshake: no connection ends without one, none
/// with an IO error. Every message is answered by the generation the connection is on,
/// except one that crossed the close frame on the wire (the server had sent its close
/// before it read the message; RFC 6455 allows nothing after a close frame): each such
/// message is one the server logged as read after its close, and no other message goes
/// unanswered. After each 1012 the client reconnects to the next generation: per
/// client, the connections' pids are the generations in order. The example's read and
/// write timeouts (1 s) are shorter than each connection's life; they do not apply once
/// upgraded. The last generation exits 0.
#[test]
fn websockets_close_with_1012_at_each_restart_and_1001_at_shutdown() {
    become_subreaper();
    let (_dir, app) = installed("ws-restarts", "realtime");
    let p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--read-timeout-ms",
            "1000",
            "--write-timeout-ms",
            "1000",
        ],
    );
    let addr = p.serving_addr(1);
    let clients = WsClients::start(WS_CLIENTS, &format!("ws://{addr}/ws"));
    let mut gens = vec![p.pid];
    clients.wait_answered_by(p.pid, ANSWERS_PER_GENERATION, "the first generation");
    for i in 1..=WS_RESTARTS {
        let (old, new) = restart_ok(&p);
        assert_eq!(old, *gens.last().unwrap(), "restart {i}");
        // The old generation's drain waits for its WebSockets: it exits once every
        // close handshake is done.
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        clients.wait_answered_by(new, ANSWERS_PER_GENERATION, &format!("restart {i}"));
        gens.push(new);
    }
    let last = *gens.last().unwrap();
    signal(last, libc::SIGTERM);
    expect_exit_0(&p, last, "the last generation after SIGTERM");
    let (conns, problems) = clients.join();
    assert!(
        problems.is_empty(),
        "the clients saw problems:\n  {}\noutput:\n{}",
        problems.join("\n  "),
        p.output()
    );

    // Per client, each connection's (generation, close code): one per generation, in
    // order, 1012 but the last.
    let mut want: Vec<(Option<u32>, Option<u16>)> = gens
        .iter()
        .map(|g| (Some(*g), Some(SERVICE_RESTART)))
        .collect();
    want.last_mut().unwrap().1 = Some(GOING_AWAY);
    let mut crossed_by_clients = BTreeSet::new();
    let mut answered = 0;
    for (i, c) in conns.iter().enumerate() {
        let seen: Vec<(Option<u32>, Option<u16>)> = c.iter().map(|c| (c.pid, c.close)).collect();
        assert_eq!(
            seen, want,
            "client {i}: (the generation that answered, the close code) of each connection, \
             in order. (A connection without answers, closed with 1012, between two \
             generations: a reconnect that the old generation accepted after it had told its \
             WebSockets of the drain.) Its connections: {c:?}"
        );
        for conn in c {
            answered += conn.answered;
            if let Some(text) = &conn.crossed {
                crossed_by_clients.insert(text.clone());
            }
        }
    }
    let crossed_in_log: BTreeSet<String> = gens
        .iter()
        .flat_map(|g| lines_of(&p, CROSSED, *g))
        .map(|l| field(&l, "text").unwrap_or_default())
        .collect();
    println!(
        "[ws] {WS_CLIENTS} clients, generations {gens:?}: {answered} messages answered, {} \
         crossed a close frame: {crossed_by_clients:?}",
        crossed_by_clients.len()
    );
    assert_eq!(
        crossed_by_clients, crossed_in_log,
        "the messages the clients saw unanswered (left) are exactly those the server read \
         after its close frame (right)"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A WebSocket that never answers the close: the hammer
// ---------------------------------------------------------------------------------------

const HAMMER: Duration = Duration::from_millis(2000);

/// Two WebSocket clients that never answer the close frame and keep their TCP
/// connection open: one reads nothing after the upgrade, one reads everything and never
/// replies. First they sit idle for 1.5 s, three times the example's read and write
/// timeouts (500 ms): still open, and the reading one is still answered. Then SIGTERM
/// (or SIGHUP): the reading one gets the close frame (1001, or 1012), and both are cut
/// by the hammer (`--hammer-ms 2000`), which the old generation logs. The cut is timed
/// from the drain's start, as logged by the old generation: not before half the hammer
/// time (well past the 250 ms drain grace that closes idle HTTP connections: timers do
/// not fire early, so no machine is too slow for this), and before the hammer time plus
/// ten seconds.
fn hammer_cuts_websockets_that_never_answer_the_close(restart: bool) {
    become_subreaper();
    let tag = if restart {
        "ws-hammer-hup"
    } else {
        "ws-hammer-term"
    };
    let (_dir, app) = installed(tag, "realtime");
    let mut p = Proc::spawn(
        &app,
        &[
            "--addr",
            "127.0.0.1:0",
            "--hammer-ms",
            &HAMMER.as_millis().to_string(),
            "--read-timeout-ms",
            "500",
            "--write-timeout-ms",
            "500",
        ],
    );
    let addr = p.serving_addr(1);
    let gen1 = p.pid;
    let deaf = ws_upgrade(&addr);
    let mut mute = ws_upgrade(&addr);
    assert_eq!(echo(&mut mute, "hello"), format!("pid {gen1}: hello"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !peer_closed(&deaf, Duration::ZERO),
        "a WebSocket that sent nothing for 1.5 s was closed: the HTTP timeouts (500 ms) \
         must not apply once upgraded; output:\n{}",
        p.output()
    );
    assert_eq!(
        echo(&mut mute, "still here"),
        format!("pid {gen1}: still here"),
        "the reading WebSocket after 1.5 s idle"
    );

    // Watch both from now on: when each connection ends, and what the reading one got.
    let until = Instant::now() + HAMMER + Duration::from_secs(30);
    let deaf_cut = std::thread::spawn(move || {
        while Instant::now() < until {
            if peer_closed(&deaf, Duration::from_millis(20)) {
                return Some(SystemTime::now());
            }
        }
        None
    });
    let mute_cut = std::thread::spawn(move || {
        let mut frames = Vec::new();
        loop {
            match read_frame(&mut mute) {
                Ok(f) => frames.push(f),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (frames, None, e),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return (frames, None, e),
                Err(e) => return (frames, Some(SystemTime::now()), e),
            }
        }
    });

    let signalled = SystemTime::now();
    let (old, new) = if restart {
        restart_ok(&p)
    } else {
        signal(gen1, libc::SIGTERM);
        (gen1, 0)
    };
    let drain_began = logged_at(&p, "stopped accepting; draining", old);
    let deaf_cut = deaf_cut.join().unwrap();
    let (frames, mute_cut, mute_end) = mute_cut.join().unwrap();
    println!(
        "[{tag}] drain began {:?} after the signal; cut after {:?} (not reading) and {:?} \
         (reading, ended by: {mute_end})",
        drain_began.duration_since(signalled).unwrap_or_default(),
        deaf_cut.map(|t| t.duration_since(drain_began)),
        mute_cut.map(|t| t.duration_since(drain_began)),
    );

    let want = if restart { SERVICE_RESTART } else { GOING_AWAY };
    let closes: Vec<u16> = frames
        .iter()
        .filter(|(op, _)| *op == 8)
        .map(|(_, payload)| close_code(payload))
        .collect();
    assert_eq!(
        closes,
        vec![want],
        "the close frames the reading client got (all frames: {frames:?})"
    );
    for (who, cut) in [("not reading", deaf_cut), ("reading", mute_cut)] {
        let cut = cut.unwrap_or_else(|| {
            panic!(
                "the WebSocket that is {who} was not cut within {:?} of the signal; \
                 output:\n{}",
                HAMMER + Duration::from_secs(30),
                p.output()
            )
        });
        let after_drain = cut.duration_since(drain_began).unwrap_or_default();
        assert!(
            after_drain >= (HAMMER / 2).max(DRAIN_GRACE),
            "the WebSocket that is {who} was cut {after_drain:?} after the drain began: before \
             the hammer ({HAMMER:?}); output:\n{}",
            p.output()
        );
        let after_signal = cut.duration_since(signalled).unwrap_or_default();
        assert!(
            after_signal < HAMMER + Duration::from_secs(10),
            "the WebSocket that is {who} was cut only {after_signal:?} after the signal; \
             output:\n{}",
            p.output()
        );
    }

    let hammered = wait_line_of(&p, "[STOP - Hammer Time]", old);
    println!("[{tag}] {hammered}");

    if restart {
        expect_gone(&p, old, "the hammered generation");
        let r = get_tcp(&addr, "/");
        assert_eq!(body_pid(&r.body), Some(new), "the new generation serves");
        signal(new, libc::SIGTERM);
        expect_exit_0(&p, new, "the new generation after SIGTERM");
    } else {
        let status = p.wait_exit(LONG).expect("exit after the hammer");
        assert!(status.success(), "exit status {status:?}");
    }
}

#[test]
fn hammer_cuts_websockets_that_never_answer_the_close_at_shutdown() {
    hammer_cuts_websockets_that_never_answer_the_close(false);
}

#[test]
fn hammer_cuts_websockets_that_never_answer_the_close_at_restart() {
    hammer_cuts_websockets_that_never_answer_the_close(true);
}

/// A connection the old generation accepted before its drain asks for a WebSocket
/// during it (a client's pooled keep-alive connection; or a fresh one that the old
/// generation's accept loop took just before it noticed the drain). The upgrade is
/// still answered as an upgrade (101 with `Connection: Upgrade`: the drain's
/// `Connection: close` would make any client refuse the handshake), and the WebSocket
/// is closed at once with 1012, so the client reconnects to the new generation. The
/// drain grace is 10 s here, so the idle keep-alive connection is not closed before
/// the request is sent.
#[test]
fn an_upgrade_during_the_drain_is_accepted_then_closed_with_1012() {
    become_subreaper();
    let (_dir, app) = installed("ws-upgrade-draining", "realtime");
    let p = Proc::spawn(
        &app,
        &["--addr", "127.0.0.1:0", "--drain-grace-ms", "10000"],
    );
    let addr = p.serving_addr(1);
    let gen1 = p.pid;
    let mut s = connect_tcp(&addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let r = exchange_blocking(&mut s, "/").unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(
        body_pid(&r.body),
        Some(gen1),
        "the first generation answers"
    );
    let (old, new) = restart_ok(&p);
    wait_line_of(&p, "stopped accepting; draining", old);

    let head = upgrade(&mut s);
    assert!(
        upgraded(&head),
        "the draining generation answered the upgrade with {head:?}: a WebSocket client \
         refuses this handshake; output:\n{}",
        p.output()
    );
    let (op, payload) = read_frame(&mut s).unwrap_or_else(|e| panic!("reading the close: {e}"));
    assert_eq!(
        (op, close_code(&payload)),
        (8, SERVICE_RESTART),
        "the first frame on a WebSocket opened during the drain"
    );
    send_frame(&mut s, 8, &payload[..2]).expect("send the close reply");
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(
        end.is_ok() && rest.is_empty(),
        "after the close handshake the server ends the connection: {end:?}, {rest:?}"
    );
    expect_gone(&p, old, "the old generation");
    signal(new, libc::SIGTERM);
    expect_exit_0(&p, new, "the new generation after SIGTERM");
}

// ---------------------------------------------------------------------------------------
// 3. Server-sent events resumed with Last-Event-ID
// ---------------------------------------------------------------------------------------

/// Events every stream gets from each generation before the next restart: 1 s of
/// events, twice the example's write timeout in that test (500 ms), which must not cut
/// a stream the client keeps reading.
const EVENTS_PER_GENERATION: usize = 10;

/// One SSE stream (one request), as the client saw it.
#[derive(Debug, Default, Clone)]
struct SseStream {
    /// The Last-Event-ID it was asked with.
    resumed_from: Option<u64>,
    /// (id, data) of each whole event.
    events: Vec<(u64, String)>,
    /// Ended cleanly (the body's end), with no partial event left.
    ended: bool,
}

#[derive(Debug, Default)]
struct SseLog {
    streams: Vec<SseStream>,
    problems: Vec<String>,
}

/// An `EventSource`: streams `/events`, and when a stream ends reconnects with the last
/// id received, until `stop` is set. Stops at its first problem.
async fn sse_client(url: String, log: Arc<Mutex<SseLog>>, stop: Arc<AtomicBool>) {
    let problem = |s: String| log.lock().unwrap().problems.push(stamped(s));
    // No overall timeout: a stream lasts as long as its generation.
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .build()
        .expect("reqwest client");
    let mut last: Option<u64> = None;
    loop {
        let mut req = client.get(&url);
        if let Some(k) = last {
            req = req.header("Last-Event-ID", k.to_string());
        }
        let mut res = match tokio::time::timeout(REQUEST_TIMEOUT, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return problem(format!("GET /events after {last:?}: {}", chain(&e))),
            Err(_) => return problem(format!("GET /events after {last:?}: no answer in time")),
        };
        let ctype = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if res.status() != 200 || !ctype.starts_with("text/event-stream") {
            return problem(format!("GET /events: {} {ctype:?}", res.status()));
        }
        log.lock().unwrap().streams.push(SseStream {
            resumed_from: last,
            ..Default::default()
        });
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
                        let (Some(id), Some(data)) = (id, data) else {
                            return problem(format!("an event without id or data: {event:?}"));
                        };
                        last = Some(id);
                        log.lock()
                            .unwrap()
                            .streams
                            .last_mut()
                            .unwrap()
                            .events
                            .push((id, data));
                    }
                }
                Ok(Ok(None)) => {
                    if !buf.is_empty() {
                        return problem(format!("the stream ended inside an event: {buf:?}"));
                    }
                    log.lock().unwrap().streams.last_mut().unwrap().ended = true;
                    break;
                }
                Ok(Err(e)) => {
                    return problem(format!("the stream after {last:?} was cut: {}", chain(&e)))
                }
                Err(_) => {
                    return problem(format!("no event for {REQUEST_TIMEOUT:?} after {last:?}"))
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// An SSE client that resumes with `Last-Event-ID` whenever a stream ends, through 3
/// restarts and a shutdown, receives every id exactly once and in order: 1, 2, 3, ...
/// without a gap. Every stream ends cleanly (the body's end, after a whole event: never
/// cut, even though it outlives the example's 500 ms write timeout), each event names
/// its own id and the generation that sent it, and each generation sent one stream of
/// events, in order. (A reconnect may first land on the old generation's keep-alive
/// connection, which is draining: that stream ends at once, without events, and the
/// client reconnects again.)
#[test]
fn sse_resumes_with_last_event_id_through_restarts() {
    become_subreaper();
    let (_dir, app) = installed("sse", "realtime");
    let p = Proc::spawn(
        &app,
        &["--addr", "127.0.0.1:0", "--write-timeout-ms", "500"],
    );
    let addr = p.serving_addr(1);
    let rt = runtime();
    let log: Arc<Mutex<SseLog>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = rt.spawn(sse_client(
        format!("http://{addr}/events"),
        log.clone(),
        stop.clone(),
    ));
    let state = || format!("{:#?}", log.lock().unwrap());
    let events_from = |pid: u32| {
        let prefix = format!("pid {pid} n ");
        let l = log.lock().unwrap();
        assert!(l.problems.is_empty(), "the SSE client: {:#?}", l.problems);
        l.streams
            .iter()
            .flat_map(|s| &s.events)
            .filter(|(_, data)| data.starts_with(&prefix))
            .count()
    };
    let mut gens = vec![p.pid];
    common::wait_until(
        "events from the first generation",
        LONG,
        || events_from(p.pid) >= EVENTS_PER_GENERATION,
        state,
    );
    for i in 1..=3 {
        let (old, new) = restart_ok(&p);
        expect_gone(&p, old, &format!("restart {i}: the old generation"));
        common::wait_until(
            &format!("restart {i}: events from the new generation {new}"),
            LONG,
            || events_from(new) >= EVENTS_PER_GENERATION,
            state,
        );
        gens.push(new);
    }
    let last = *gens.last().unwrap();
    stop.store(true, Ordering::SeqCst);
    signal(last, libc::SIGTERM);
    expect_exit_0(&p, last, "the last generation after SIGTERM");
    rt.block_on(async { tokio::time::timeout(LONG, task).await })
        .expect("the SSE client did not stop")
        .expect("the SSE client panicked");

    let l = log.lock().unwrap();
    assert!(
        l.problems.is_empty(),
        "the SSE client: {:#?}\noutput:\n{}",
        l.problems,
        p.output()
    );
    let ids: Vec<u64> = l
        .streams
        .iter()
        .flat_map(|s| s.events.iter().map(|(id, _)| *id))
        .collect();
    let want: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, want, "every id exactly once, in order");
    let mut senders = Vec::new();
    for (i, s) in l.streams.iter().enumerate() {
        assert!(s.ended, "stream {i} did not end cleanly: {s:?}");
        let Some((first, _)) = s.events.first() else {
            continue;
        };
        assert_eq!(
            *first,
            s.resumed_from.map_or(1, |k| k + 1),
            "stream {i} starts after its Last-Event-ID"
        );
        let pid = body_pid(&s.events[0].1);
        for (id, data) in &s.events {
            assert_eq!(
                *data,
                format!("pid {} n {id}", pid.unwrap_or(0)),
                "stream {i}: one generation, and the event's own id"
            );
        }
        senders.push(pid.unwrap());
    }
    println!(
        "[sse] {} events in {} streams ({} of them empty), by {senders:?}",
        ids.len(),
        l.streams.len(),
        l.streams.len() - senders.len()
    );
    assert_eq!(
        senders, gens,
        "each generation sent one stream of events, in order"
    );
}

// ---------------------------------------------------------------------------------------
// 4. ConnInfo and ConnectInfo: the peer address
// ---------------------------------------------------------------------------------------

/// Each of `paths` on a raw connection answers that connection's own address (its
/// client port), and a second request on it the same.
#[cfg(feature = "axum")]
fn assert_ip_is_the_peer(addr: &str, what: &str, paths: &[&str]) {
    let mut s = connect_tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let local = s.local_addr().unwrap();
    for n in 1..=2 {
        for path in paths {
            let r = exchange_blocking(&mut s, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(
                (r.status, r.body),
                (200, format!("{local}\n")),
                "{what}: GET {path} #{n} on the connection from {local}"
            );
        }
    }
}

/// `GET /ip` answers the client's exact address, before and after a restart: from the
/// `ConnInfo` extractor without request extensions (realtime), from axum's
/// `ConnectInfo` with them (the axum example, whose `/peer` is the `ConnInfo`
/// extractor's answer).
#[cfg(feature = "axum")]
fn ip_is_the_peer_before_and_after_a_restart(example: &str, paths: &[&str]) {
    become_subreaper();
    let (_dir, app) = installed(&format!("ip-{example}"), example);
    let p = Proc::spawn(&app, &["--addr", "127.0.0.1:0"]);
    let addr = p.serving_addr(1);
    assert_ip_is_the_peer(&addr, "the first generation", paths);
    if example == "axum" {
        // The `Drain` extractor: nothing drains yet.
        let mut s = connect_tcp(&addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let r = exchange_blocking(&mut s, "/drain").unwrap_or_else(|e| panic!("GET /drain: {e}"));
        assert_eq!((r.status, r.body.as_str()), (200, "serving\n"));
    }
    let (old, new) = restart_ok(&p);
    expect_gone(&p, old, "the old generation");
    assert_ip_is_the_peer(&addr, "the new generation", paths);
    signal(new, libc::SIGTERM);
    expect_exit_0(&p, new, "the new generation after SIGTERM");
}

#[cfg(feature = "axum")]
#[test]
fn ip_is_the_peer_address_from_conn_info() {
    ip_is_the_peer_before_and_after_a_restart("realtime", &["/ip"]);
}

#[cfg(feature = "axum")]
#[test]
fn ip_is_the_peer_address_from_connect_info_with_request_extensions() {
    ip_is_the_peer_before_and_after_a_restart("axum", &["/ip", "/peer"]);
}
