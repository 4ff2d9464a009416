//! Signal hooks: code of yours before and after ceaseless handles each signal.
//!
//! ```text
//! cargo run --example hooks                       # serves 127.0.0.1:4244
//! kill -USR1 <pid>                                # hook pre SIGUSR1 / hook post SIGUSR1
//! ```
//!
//! Each hook prints one line on stdout, e.g. `hook pre SIGTERM pid=1234`, so the order is
//! visible (and checked by the tests). `--addr ADDR` to listen elsewhere.

use std::io::Write;

use axum::{routing::get, Router};
use ceaseless::{Process, Server, Signal, Stage};

fn say(stage: &str, sig: Signal) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hook {stage} {sig} pid={}", std::process::id());
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), ceaseless::Error> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4244".into());
    let app = Router::new().route("/", get(|| async { "hooked\n" }));
    // Hooks belong to the process: configure it first.
    let mut process = Process::builder();
    for sig in Signal::ALL {
        process = process.hook(sig, Stage::Pre, move || say("pre", sig)).hook(
            sig,
            Stage::Post,
            move || say("post", sig),
        );
    }
    process.start()?;
    Server::new(addr, app).listen_and_serve().await?;
    Ok(())
}
