//! The baseline of the overhead comparison: the `hello` example's `GET /` served by
//! hyper-util directly, without ceaseless.
//!
//! Kept as close to `examples/hello.rs` as the comparison needs to be fair: the same
//! handler body and headers, the same runtime (`#[tokio::main]`: multi-threaded, one
//! worker per core), the same logging set-up, hyper-util's auto builder (HTTP/1.1 and
//! h2c on one port), `TCP_NODELAY` on accepted sockets as ceaseless sets it. What it
//! lacks is exactly what ceaseless adds: timeouts, the drain, restarts.
//!
//! ```text
//! bare --addr 127.0.0.1:0      # logs `serving pid=P addr=A` on stderr
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The hello example's version marker when `HELLO_VERSION` is unset: its crate's
/// version, which this package shares, so both bodies have the same length.
const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The hello example's handler for `GET /` (other paths: 404, as there).
async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = |s: String| Full::new(Bytes::from(s));
    let answer = || format!("hello from pid {}, version {VERSION}\n", std::process::id());
    let res = match req.uri().path() {
        "/" => Response::new(body(answer())),
        _ => {
            let mut r = Response::new(body("not found\n".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(res)
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
    let mut addr = "127.0.0.1:4242".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--addr", Some(v)) => addr = v,
            _ => {
                eprintln!("bare: usage: bare [--addr ADDR]");
                return std::process::ExitCode::from(2);
            }
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
    tracing::info!(pid = std::process::id(), addr = %local, "serving");
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(hello);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
