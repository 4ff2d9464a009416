//! An axum `Router` drops in: `ceaseless::listen_and_serve` instead of `axum::serve`.
//!
//! ```text
//! cargo run --example axum          # serves 127.0.0.1:4245
//! curl localhost:4245/users/7
//! curl localhost:4245/ip            # 127.0.0.1:51324: the peer, from ConnectInfo
//! ```
//!
//! ceaseless gives axum's `ConnectInfo<SocketAddr>` to every request over TCP (the
//! `axum` feature), as `axum::serve` with `into_make_service_with_connect_info` would.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path};
use axum::{routing::get, Json, Router};

#[tokio::main]
async fn main() -> Result<(), ceaseless::Error> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4245".into());
    let app = Router::new()
        .route("/", get(|| async { "hello from axum\n" }))
        .route(
            "/users/{id}",
            get(|Path(id): Path<u64>| async move { Json(vec![id, std::process::id() as u64]) }),
        )
        .route(
            "/ip",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("{peer}\n") }),
        );
    ceaseless::listen_and_serve(addr, app).await?;
    Ok(())
}
