//! Long-lived connections across restarts: WebSockets and server-sent events on an axum
//! `Router` served by ceaseless's [`Server`](ceaseless::Server), whose handlers take a
//! [`Drain`](ceaseless::Drain) (`Drain::current()`) to learn when their generation
//! starts draining, and why. (With ceaseless's `axum` feature `Drain` and `ConnInfo` are
//! also extractors; this example builds without it.)
//!
//! ```text
//! cargo run --example realtime -- --addr 127.0.0.1:4247
//! curl localhost:4247/                    # pid 1234
//! curl -N localhost:4247/events           # id: 1, data: pid 1234 n 1, every 100 ms
//! curl localhost:4247/ip                  # 127.0.0.1:51324: the peer, from ConnInfo
//! kill -HUP 1234                          # the streams end cleanly, clients reconnect
//! ```
//!
//! - `GET /ws`: a WebSocket that answers each text message `m` with `pid <pid>: m`.
//!   When the drain begins it sends a close frame, code 1012 ("service restart") after
//!   a SIGHUP, 1001 ("going away") at a shutdown, and reads on until the client's
//!   close reply, so the handshake completes and the client knows to reconnect (one
//!   opened while the drain is under way is closed at once, with the same code). A
//!   message that crossed the close frame on the wire cannot be answered any more (RFC
//!   6455: nothing follows a close frame); it is logged as such. The old generation's
//!   drain waits for its WebSockets, until the hammer (`--hammer-ms`) or SIGUSR2.
//! - `GET /events`: server-sent events, one every 100 ms (`id: n`, `data: pid <pid> n
//!   <n>`), from 1 or, with `Last-Event-ID: k`, from k+1. When the drain begins the
//!   stream ends after its last whole event; an `EventSource` reconnects with the last
//!   id and the next generation carries on where this one stopped.
//! - `GET /ip`: the peer address, from `ceaseless::ConnInfo::current()`.
//! - `GET /`: `pid <pid>`.
//!
//! Options: `--addr ADDR` (default 127.0.0.1:4247), `--hammer-ms N`,
//! `--read-timeout-ms N`, `--write-timeout-ms N` (0: no limit), `--drain-grace-ms N`,
//! `--control PATH` (a control socket: its `status` counts the WebSockets as upgraded
//! connections).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ceaseless::{Drain, Served};

/// How often `/events` sends an event.
const EVENT_EVERY: Duration = Duration::from_millis(100);

struct Options {
    addr: String,
    hammer: Option<Duration>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    drain_grace: Option<Duration>,
    control: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        addr: "127.0.0.1:4247".into(),
        hammer: Some(ceaseless::DEFAULT_HAMMER_TIME),
        read_timeout: Some(ceaseless::DEFAULT_READ_TIMEOUT),
        write_timeout: Some(ceaseless::DEFAULT_WRITE_TIMEOUT),
        drain_grace: None,
        control: None,
    };
    let mut args = std::env::args().skip(1);
    // A number of milliseconds; 0 means none.
    let ms = |v: Option<String>, name: &str| -> Result<Option<Duration>, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{name}: not a number: {v}"))?;
        Ok((n > 0).then(|| Duration::from_millis(n)))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => o.addr = args.next().ok_or("--addr needs a value")?,
            "--hammer-ms" => o.hammer = ms(args.next(), &a)?,
            "--read-timeout-ms" => o.read_timeout = ms(args.next(), &a)?,
            "--write-timeout-ms" => o.write_timeout = ms(args.next(), &a)?,
            "--drain-grace-ms" => o.drain_grace = Some(ms(args.next(), &a)?.unwrap_or_default()),
            "--control" => o.control = Some(args.next().ok_or("--control needs a value")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// Completes when the drain begins, with its reason. Owns its `Drain`, so it can be
/// kept across the awaits of a loop.
fn drained(drain: &Drain) -> impl std::future::Future<Output = Served> + Send + 'static {
    let drain = drain.clone();
    async move { drain.wait().await }
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    // Taken now: the socket's own task is polled by the runtime, not by ceaseless.
    let Some(drain) = Drain::current() else {
        return not_served_by_ceaseless().into_response();
    };
    upgrade.on_upgrade(move |socket| session(socket, drain))
}

/// What a handler answers when it finds no `Drain` (not served by ceaseless).
fn not_served_by_ceaseless() -> (StatusCode, &'static str) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "not served by ceaseless\n",
    )
}

/// One WebSocket: echoes until the drain, then closes with the drain's reason.
async fn session(mut socket: WebSocket, drain: Drain) {
    let pid = std::process::id();
    let until_drained = drained(&drain);
    tokio::pin!(until_drained);
    let why = loop {
        tokio::select! {
            // The drain first: a WebSocket opened while the drain is under way is closed
            // at once, its first message unanswered.
            biased;
            why = &mut until_drained => break why,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let answer = format!("pid {pid}: {}", text.as_str());
                    if socket.send(Message::Text(answer.into())).await.is_err() {
                        return;
                    }
                }
                // Pings are answered by the library; binary messages are not ours.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {}
                // The client closed (its close is answered by the library), or left.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            },
        }
    };
    let (code, reason) = match why {
        Served::HandedOver { .. } => (close_code::RESTART, "service restart"),
        Served::Shutdown => (close_code::AWAY, "going away"),
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if socket.send(close).await.is_err() {
        return;
    }
    // The handshake: read until the client's close reply (or the socket's end).
    // Messages read meanwhile crossed the close frame and cannot be answered.
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Close(_) => break,
            Message::Text(text) => tracing::info!(
                pid,
                text = %text.as_str(),
                "a message crossed the close frame; not answered"
            ),
            _ => {}
        }
    }
}

/// `/events`: an event every 100 ms from `Last-Event-ID` + 1, until the drain.
async fn events(headers: HeaderMap) -> Response {
    let Some(drain) = Drain::current() else {
        return not_served_by_ceaseless().into_response();
    };
    let first = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(1, |k| k.saturating_add(1));
    let mut ticks = tokio::time::interval(EVENT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (first, Box::pin(drained(&drain)), ticks);
    let stream = futures_util::stream::unfold(state, |(n, mut until_drained, mut ticks)| {
        async move {
            // Only whole events are ever sent, so ending here ends after the last one.
            tokio::select! {
                biased;
                _ = &mut until_drained => None,
                _ = ticks.tick() => {
                    let pid = std::process::id();
                    let event = Event::default()
                        .id(n.to_string())
                        .data(format!("pid {pid} n {n}"));
                    Some((Ok::<_, Infallible>(event), (n + 1, until_drained, ticks)))
                }
            }
        }
    });
    Sse::new(stream).into_response()
}

/// `/ip`: the peer address.
async fn ip() -> Response {
    match ceaseless::ConnInfo::current() {
        Some(info) => format!("{info}\n").into_response(),
        None => not_served_by_ceaseless().into_response(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("realtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(pid = std::process::id(), "realtime starting");
    if let Some(path) = &opts.control {
        // A control socket: `hello status --control PATH` shows the WebSockets as
        // upgraded connections, `hello restart --control PATH` restarts.
        #[cfg(feature = "control")]
        if let Err(e) = ceaseless::Process::builder().control_socket(path).start() {
            eprintln!("realtime: {e}");
            return std::process::ExitCode::from(1);
        }
        #[cfg(not(feature = "control"))]
        {
            eprintln!("realtime: --control {path}: built without the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    let app = Router::new()
        .route(
            "/",
            get(|| async { format!("pid {}\n", std::process::id()) }),
        )
        .route("/ws", get(ws))
        .route("/events", get(events))
        .route("/ip", get(ip));
    let mut server = ceaseless::Server::new(opts.addr, app)
        .hammer_time(opts.hammer)
        .read_timeout(opts.read_timeout)
        .write_timeout(opts.write_timeout);
    if let Some(g) = opts.drain_grace {
        server = server.drain_grace(g);
    }
    match server.listen_and_serve().await {
        Ok(ended) => {
            tracing::info!(pid = std::process::id(), %ended, "realtime exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            eprintln!("realtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
