//! `ceaseless::serve`: `axum::serve`'s one line, on ceaseless's own connections. The
//! listener comes from the process owner (inherited from the previous generation, or
//! bound); a restart (SIGHUP) loses no request, as with [`Server`](ceaseless::Server).
//!
//! ```text
//! cargo run --example ceaseless_serve -- --addr 127.0.0.1:4249
//! curl localhost:4249/ip         # your address, from axum's ConnectInfo
//! kill -HUP <pid>                # the next generation takes the socket over
//! curl localhost:4249/stop       # this server's own graceful shutdown
//! ```
//!
//! `--unix PATH` serves the router on a Unix socket instead (`/conn` then names the
//! client's uid and pid). `--control PATH` opens a control socket (`hello status --control PATH` shows the
//! connections). `--app` chooses what is served (default `connect-info`):
//! - `connect-info`: `router.into_make_service_with_connect_info::<SocketAddr>()`;
//! - `router`: the `Router` itself; `make-service`: `router.into_make_service()`;
//! - `timeout`: the router inside a tower `Timeout` of 300 ms: a slower request fails
//!   in the service, and the client gets a `500`.
//!
//! Routes: `/` (the pid), `/ip` (axum's `ConnectInfo<SocketAddr>`), `/conn`
//! (`ceaseless::ConnInfo`), `/drain` (`ceaseless::Drain`), `/slow?ms=N` (answers after N
//! ms), `/stream` (a chunk every 100 ms, until the client or the hammer ends it),
//! `/stop` (ends this server: its graceful-shutdown signal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery};
use axum::routing::get;
use axum::Router;
use ceaseless::{ConnInfo, Drain, Served};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let addr = arg("--addr").unwrap_or_else(|| "127.0.0.1:4249".into());
    let app = arg("--app").unwrap_or_else(|| "connect-info".into());
    let unix = arg("--unix");
    match run(&addr, unix.as_deref(), &app, arg("--control")).await {
        Ok(ended) => {
            tracing::info!(pid = std::process::id(), %ended, "ceaseless_serve exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ceaseless_serve: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(
    addr: &str,
    unix: Option<&str>,
    app: &str,
    control: Option<String>,
) -> std::io::Result<Served> {
    let builder = ceaseless::Process::builder().readiness(ceaseless::Readiness::Manual);
    // `status` on it shows this server's connections under its address.
    #[cfg(feature = "control")]
    let builder = match control {
        Some(path) => builder.control_socket(path),
        None => builder,
    };
    #[cfg(not(feature = "control"))]
    let _ = control;
    let process = builder.start()?;
    let stop = Arc::new(Notify::new());
    let router = routes(stop.clone());
    // This server's own reason to stop, besides the process's (SIGTERM, a restart).
    let signal = async move { stop.notified().await };
    #[cfg(not(unix))]
    if unix.is_some() {
        return Err(std::io::Error::other("--unix: Unix sockets need Unix"));
    }
    #[cfg(unix)]
    if let Some(path) = unix {
        // A Unix socket: the same line with the other listener.
        let listener = process.unix_listener(path)?;
        process.ready();
        ceaseless::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await?;
        return Ok(process.finish().await);
    }
    let listener = process.tcp_listener(addr)?;
    process.ready();
    match app {
        "connect-info" => {
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            ceaseless::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await?
        }
        "router" => {
            ceaseless::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await?
        }
        "make-service" => {
            ceaseless::serve(listener, router.into_make_service())
                .with_graceful_shutdown(signal)
                .await?
        }
        "timeout" => {
            let app = tower::timeout::Timeout::new(router, Duration::from_millis(300));
            ceaseless::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await?
        }
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown --app {other}"),
            ))
        }
    };
    if process.served().is_none() {
        // Stopped on its own signal: the process had nothing else to serve.
        process.shutdown();
    }
    Ok(process.finish().await)
}

fn routes(stop: Arc<Notify>) -> Router {
    let pid = std::process::id();
    Router::new()
        .route(
            "/",
            get(move || async move { format!("hello from pid {pid}\n") }),
        )
        .route(
            "/ip",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
        )
        .route(
            "/conn",
            get(|info: ConnInfo| async move { format!("{info}\n") }),
        )
        .route(
            "/drain",
            get(|drain: Drain| async move {
                match drain.served() {
                    None => "serving\n".to_string(),
                    Some(why) => format!("draining: {why}\n"),
                }
            }),
        )
        .route(
            "/slow",
            get(move |RawQuery(q): RawQuery| async move {
                let ms = q
                    .as_deref()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slow answer from pid {pid}\n")
            }),
        )
        .route("/stream", get(|| async { Body::from_stream(ticks()) }))
        .route(
            "/stop",
            get(move || async move {
                stop.notify_one();
                "stopping\n"
            }),
        )
}

/// A chunk every 100 ms, for as long as the response lives.
fn ticks() -> impl futures_util::Stream<Item = Result<String, std::io::Error>> + Send {
    futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(format!("tick {n}\n")), n + 1))
    })
}
