//! The baselines of the cost comparison: the shared handler (`../handler.rs`) served by
//! hyper-util directly, without ceaseless.
//!
//! - `bare --addr A`: hyper-util's auto builder (HTTP/1.1 and h2c on one port), no
//!   timeouts, no shutdown: the least a server can do.
//! - `bare --graceful --addr A`: what an `axum::serve` user runs today: the same, plus
//!   hyper's HTTP/1 header read timeout (30 s, its timer armed per request) and
//!   hyper-util's `GracefulShutdown` watching every connection (SIGTERM: stop accepting,
//!   let the connections finish).
//!
//! Both use the same runtime as `served` and `hello` (`#[tokio::main]`: multi-threaded,
//! one worker per core), the same logging set-up, `TCP_NODELAY` on accepted sockets as
//! ceaseless sets it.
//!
//! ```text
//! bare [--graceful] --addr 127.0.0.1:0      # logs `serving pid=P addr=A` on stderr
//! ```

#[path = "../handler.rs"]
mod handler;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    handler::init_logging();
    let mut addr = "127.0.0.1:4242".to_string();
    let mut graceful = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--graceful" => graceful = true,
            "--addr" => match args.next() {
                Some(v) => addr = v,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare: cannot bind {addr}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(pid = std::process::id(), addr = %local, graceful, "serving");
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if graceful {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
    }
    let shutdown = GracefulShutdown::new();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bare: cannot watch SIGTERM: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = term.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper::service::service_fn(handler::handle);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        if graceful {
            let conn = shutdown.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
    drop(listener);
    if graceful {
        let _ = tokio::time::timeout(Duration::from_secs(60), shutdown.shutdown()).await;
    }
    std::process::ExitCode::SUCCESS
}

fn usage() -> std::process::ExitCode {
    eprintln!("bare: usage: bare [--graceful] [--addr ADDR]");
    std::process::ExitCode::from(2)
}
