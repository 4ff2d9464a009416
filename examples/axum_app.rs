//! The quick start for a typical axum 0.8 service: shared state, a JSON API, tower-http
//! layers, a WebSocket, server-sent events, a health check and the client's address,
//! served by `ceaseless::serve` in place of `axum::serve`. A restart (SIGHUP) loses no
//! request; WebSockets close with 1012 "service restart" and their clients reconnect to
//! the new generation; event streams end after their last event and resume from
//! `Last-Event-ID` on the new generation.
//!
//! ```text
//! cargo run --example axum_app -- --addr 127.0.0.1:4250
//! curl localhost:4250/                     # hello from pid 1234, request 1
//! curl localhost:4250/api/items
//! curl -d '{"name":"x"}' -H 'content-type: application/json' localhost:4250/api/items
//! curl localhost:4250/ip                   # 127.0.0.1:51324: ConnectInfo
//! curl localhost:4250/healthz              # ok
//! curl -N localhost:4250/events            # id: 1, data: pid 1234 n 1, every 100 ms
//! kill -HUP 1234                           # the next generation takes over
//! ```
//!
//! `GET /ws` echoes each text message `m` as `pid <pid>: m`. `RUST_LOG=info,tower_http=debug`
//! logs every request and response (tower-http's trace layer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use ceaseless::{Drain, Served};
use futures_util::Stream;
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// What every handler shares.
#[derive(Default)]
struct AppState {
    requests: AtomicU64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4250".into());

    let process = ceaseless::Process::builder().start()?;
    let listener = process.tcp_listener(&addr)?; // inherited at a restart

    let app = Router::new()
        .route("/", get(hello))
        .route("/api/items", get(list_items).post(create_item))
        .route("/ip", get(ip))
        .route("/ws", get(ws))
        .route("/events", get(events))
        .route_service("/healthz", ceaseless::Health)
        .with_state(Arc::new(AppState::default()))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CompressionLayer::new())
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(10),
                )),
        );

    // axum::serve's line, with ceaseless::serve.
    let ended = ceaseless::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    tracing::info!(pid = std::process::id(), %ended, "axum_app exiting");
    Ok(())
}

async fn hello(State(state): State<Arc<AppState>>) -> String {
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    format!("hello from pid {}, request {n}\n", std::process::id())
}

async fn list_items() -> Json<Value> {
    Json(json!([{ "id": 1, "name": "apple" }, { "id": 2, "name": "pear" }]))
}

async fn create_item(Json(item): Json<Value>) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(item))
}

async fn ip(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    format!("{peer}\n")
}

/// A WebSocket echo that closes when its generation drains: 1012 for a restart (the
/// client reconnects, to the new generation), 1001 for a shutdown.
async fn ws(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, drain))
}

async fn echo(mut socket: WebSocket, drain: Drain) {
    let pid = std::process::id();
    let why = loop {
        tokio::select! {
            biased; // the drain first: a socket opened as it began is closed at once
            why = drain.wait() => break why,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let answer = format!("pid {pid}: {}", text.as_str());
                    if socket.send(Message::Text(answer.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {} // pings are answered for us
                Some(Err(_)) | None => return,
            },
        }
    };
    let code = match why {
        Served::HandedOver { .. } => close_code::RESTART,
        Served::Shutdown => close_code::AWAY,
    };
    let close = CloseFrame {
        code,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_ok() {
        // Until the client's close reply: the handshake completes.
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }
}

/// Server-sent events, one every 100 ms, numbered from `Last-Event-ID` + 1: a client
/// that reconnects after a restart carries on without a gap. The stream ends after its
/// last whole event when the generation drains.
async fn events(
    headers: HeaderMap,
    drain: Drain,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(1, |last| last + 1);
    let stream = futures_util::stream::unfold(first, move |n| {
        let drain = drain.clone();
        async move {
            tokio::select! {
                _ = drain.wait() => None,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let data = format!("pid {} n {n}", std::process::id());
                    Some((Ok(Event::default().id(n.to_string()).data(data)), n + 1))
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
