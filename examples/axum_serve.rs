//! `axum::serve` itself, with zero-downtime restarts: the listener comes from the
//! process owner (inherited from the previous generation, or bound), and the graceful
//! shutdown follows the drain.
//!
//! ```text
//! cargo run --example axum_serve -- --addr 127.0.0.1:4246
//! curl localhost:4246/           # hello from pid 1234
//! kill -HUP 1234                 # the next generation takes the socket over
//! ```
//!
//! axum's own graceful shutdown applies (it closes idle keep-alive connections at
//! once, so a client can lose the request it was sending at a restart);
//! `ceaseless::serve`, the same line with `ceaseless::` in front, gives ceaseless's
//! lame-duck drain instead (`examples/ceaseless_serve.rs`).
//!
//! What stays bounded on this path: a draining generation whose connections outlive
//! the process owner's hammer time (`--hammer-ms N`; 60 s by default) exits, cutting
//! them (`GET /stream` never ends by itself). `GET /drain` takes ceaseless's `Drain`
//! (the process's), `GET /conn` its `ConnInfo`, which only ceaseless's own connections
//! know: that one answers 500 with what to change.

use std::convert::Infallible;
use std::time::Duration;

use axum::{body::Body, routing::get, Router};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let addr = arg("--addr").unwrap_or_else(|| "127.0.0.1:4246".into());
    let hammer = match arg("--hammer-ms").map(|v| v.parse::<u64>()) {
        None => Some(ceaseless::DEFAULT_HAMMER_TIME),
        Some(Ok(0)) => None,
        Some(Ok(ms)) => Some(Duration::from_millis(ms)),
        Some(Err(e)) => {
            eprintln!("axum_serve: --hammer-ms: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&addr, hammer).await {
        Ok(ended) => {
            tracing::info!(pid = std::process::id(), %ended, "axum_serve exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("axum_serve: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(
    addr: &str,
    hammer: Option<Duration>,
) -> Result<ceaseless::Served, Box<dyn std::error::Error>> {
    // Readiness declared by hand: once the listener is taken and the app built (a real
    // app would open its pools and fill its caches here too).
    let process = ceaseless::Process::builder()
        .readiness(ceaseless::Readiness::Manual)
        .hammer_time(hammer)
        .start()?;
    let listener = process.tcp_listener(addr)?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "serving");
    let app = Router::new()
        .route(
            "/",
            get(|| async { format!("hello from pid {}\n", std::process::id()) }),
        )
        .route("/stream", get(|| async { Body::from_stream(ticks()) }));
    #[cfg(feature = "axum")]
    let app = app
        .route(
            "/drain",
            get(|d: ceaseless::Drain| async move { format!("served: {:?}\n", d.served()) }),
        )
        .route(
            "/conn",
            get(|c: ceaseless::ConnInfo| async move { format!("{c}\n") }),
        );
    process.ready();
    axum::serve(listener, app)
        .with_graceful_shutdown(process.draining())
        .await?;
    Ok(process.finish().await)
}

/// A line every 100 ms, for ever: a stream only its client, or the hammer, ends.
fn ticks() -> impl futures_util::Stream<Item = Result<String, Infallible>> {
    futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok(format!("tick {n} from pid {}\n", std::process::id())),
            n + 1,
        ))
    })
}
