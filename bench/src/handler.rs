//! The one handler both sides of the cost comparison serve (`bare` and `served`), so
//! that the two binaries differ only in what serves the connections.
//!
//! - `GET /`: the `hello` example's answer, ready on its first poll.
//! - `GET /async`: the same answer after yielding once to the scheduler, as a handler
//!   that awaits anything (a database, a channel) is: pending on its first poll, so the
//!   server's per-request timers, if any, are armed.
//! - anything else: 404.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// The hello example's version marker when `HELLO_VERSION` is unset: its crate's
/// version, which this package shares, so both bodies have the same length.
const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// See the module docs.
pub async fn handle<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = || {
        Full::new(Bytes::from(format!(
            "hello from pid {}, version {VERSION}\n",
            std::process::id()
        )))
    };
    let res = match req.uri().path() {
        "/" => Response::new(answer()),
        "/async" => {
            tokio::task::yield_now().await;
            Response::new(answer())
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(res)
}

/// The logging set-up of the `hello` example, shared by both sides.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
