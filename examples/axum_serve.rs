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

use axum::{routing::get, Router};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4246".into());
    match run(&addr).await {
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

async fn run(addr: &str) -> Result<ceaseless::Served, Box<dyn std::error::Error>> {
    // Readiness declared by hand: once the listener is taken and the app built (a real
    // app would open its pools and fill its caches here too).
    let process = ceaseless::Process::builder()
        .readiness(ceaseless::Readiness::Manual)
        .start()?;
    let listener = process.tcp_listener(addr)?;
    tracing::info!(pid = std::process::id(), addr = %listener.local_addr()?, "serving");
    let app = Router::new().route(
        "/",
        get(|| async { format!("hello from pid {}\n", std::process::id()) }),
    );
    process.ready();
    axum::serve(listener, app)
        .with_graceful_shutdown(process.draining())
        .await?;
    Ok(process.finish().await)
}
