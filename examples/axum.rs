//! An axum `Router` drops in: `ceaseless::Server` instead of `axum::serve`.
//!
//! ```text
//! cargo run --example axum          # serves 127.0.0.1:4245
//! curl localhost:4245/users/7
//! curl localhost:4245/ip            # 127.0.0.1:51324: the peer, from ConnectInfo
//! curl localhost:4245/peer          # the same, from the ceaseless::ConnInfo extractor
//! curl localhost:4245/drain         # serving: the ceaseless::Drain extractor
//! ```
//!
//! With `request_extensions(true)` ceaseless gives axum's `ConnectInfo<SocketAddr>` to
//! every request over TCP (the `axum` feature), as `axum::serve` with
//! `into_make_service_with_connect_info` would. (`ceaseless::ConnInfo` is an extractor
//! too, and costs nothing per request: `/peer`.)

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
        )
        .route(
            "/peer",
            get(|info: ceaseless::ConnInfo| async move { format!("{info}\n") }),
        )
        .route(
            "/drain",
            get(|drain: ceaseless::Drain| async move {
                match drain.served() {
                    None => "serving\n".to_string(),
                    Some(why) => format!("draining: {why}\n"),
                }
            }),
        );
    ceaseless::Server::new(addr, app)
        .request_extensions(true)
        .listen_and_serve()
        .await?;
    Ok(())
}
