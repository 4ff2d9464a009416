//! Several servers in one process, as endless's multi_port example: each keeps its
//! socket across restarts, and one SIGTERM drains them all.
//!
//! ```text
//! cargo run --example multi_port             # 127.0.0.1:4242 and 127.0.0.1:4243
//! curl localhost:4242/ ; curl localhost:4243/
//! ```
//!
//! `--addr-file PATH` reads the addresses (one per line) from a file at start-up, so a
//! restart can add or remove ports: edit the file, then `kill -HUP <pid>`. Since a new
//! version may serve fewer addresses than the old one, the process declares its
//! readiness itself ([`ceaseless::Readiness::Manual`]) once each of its servers listens;
//! an inherited socket no server took is then closed.

use axum::{extract::State, routing::get, Router};

fn app(n: usize) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(n): State<usize>| async move {
                format!("server {n} from pid {}\n", std::process::id())
            }),
        )
        .with_state(n)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let file = std::env::args().skip_while(|a| a != "--addr-file").nth(1);
    let addrs: Vec<String> = match file {
        Some(f) => match std::fs::read_to_string(&f) {
            Ok(s) => s
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            Err(e) => {
                eprintln!("multi_port: cannot read {f}: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        None => vec!["127.0.0.1:4242".into(), "127.0.0.1:4243".into()],
    };
    let process = match ceaseless::Process::builder()
        .readiness(ceaseless::Readiness::Manual)
        .start()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("multi_port: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // Ready once every server listens.
    let listening = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total = addrs.len();
    let servers: Vec<_> = addrs
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            let (process, listening) = (process.clone(), listening.clone());
            let server = ceaseless::Server::new(addr, app(i + 1)).before_begin(move |local| {
                tracing::info!(pid = std::process::id(), addr = %local, "serving");
                if listening.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == total {
                    process.ready();
                }
            });
            tokio::spawn(server.listen_and_serve())
        })
        .collect();
    let mut code = std::process::ExitCode::SUCCESS;
    for s in servers {
        let failure = match s.await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!("multi_port: {failure}");
        code = std::process::ExitCode::from(1);
    }
    code
}
