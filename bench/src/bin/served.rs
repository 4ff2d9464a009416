//! The ceaseless side of the cost comparison: the shared handler (`../handler.rs`),
//! the one `bare` serves, served by `ceaseless::Server` with its defaults (read, write
//! and idle timeouts on, the drain, restarts on SIGHUP, the connection's context for
//! `ConnInfo::current` and `Drain::current`). `--extensions`: also the request
//! extensions (`Server::request_extensions(true)`).
//!
//! ```text
//! served [--extensions] --addr 127.0.0.1:0   # logs `serving pid=P addr=A` on stderr
//! ```

#[path = "../handler.rs"]
mod handler;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    handler::init_logging();
    let mut addr = "127.0.0.1:4242".to_string();
    let mut extensions = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--extensions" => extensions = true,
            "--addr" => match args.next() {
                Some(v) => addr = v,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let svc = tower::service_fn(handler::handle::<hyper::body::Incoming>);
    let server = ceaseless::Server::new(addr, svc).request_extensions(extensions);
    match server.listen_and_serve().await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("served: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn usage() -> std::process::ExitCode {
    eprintln!("served: usage: served [--extensions] [--addr ADDR]");
    std::process::ExitCode::from(2)
}
