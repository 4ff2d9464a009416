//! A tonic gRPC service served by ceaseless's own `Server`: `tonic::service::Routes` is a
//! tower service over any HTTP body, so it drops in like an axum `Router`, and gRPC (h2c)
//! gets the same handover and drain as any HTTP/2 client (GOAWAY, streams in flight
//! finish).
//!
//! With `--serve-fn`, the same routes go through `ceaseless::serve` instead, on a listener
//! from the process owner, in one line (`Routes` is a tower service; so is
//! `routes.into_axum_router()`):
//!
//! ```text
//! ceaseless::serve(process.tcp_listener(addr)?, routes).await?
//! ```
//!
//! ```text
//! cargo run --example grpc -- --addr 127.0.0.1:4248 [--hammer-ms N] [--serve-fn]
//! grpcurl -plaintext -import-path examples/grpc -proto ticker.proto \
//!     -d '{"name": "you"}' 127.0.0.1:4248 ceaseless.test.Ticker/Hello
//! ```
//!
//! The service, `ceaseless.test.Ticker` (`ticker.proto`; the glue is written by hand in
//! `ticker.rs`, as there is no build script):
//! - `Hello{name}` answers `pid <pid>: hello <name>`;
//! - `Ticks{from}` streams `Tick{n, pid}` every 100 ms from `n = from` on, until this
//!   generation starts draining: then the stream ends, after its last whole message, with
//!   status `UNAVAILABLE` and the message `draining: restart` (SIGHUP: the next
//!   generation serves already) or `draining: shutdown` (SIGTERM). A client resumes with
//!   `from` = the next n, on a new connection, served by the new generation. (A retry
//!   sent before the client read the GOAWAY can still reach this generation: its drain
//!   has begun, so that call ends at once, with no tick and the same status.)
//!
//! The drain reaches the handler through `ceaseless::Drain::current()`: tonic polls the
//! handler inside ceaseless's poll of the request.

mod ticker;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ceaseless::{Drain, Served};
use tonic::{Request, Response, Status};

use ticker::{HelloReply, HelloRequest, Tick, Ticker, TickerServer, TicksRequest};

/// The interval between ticks.
const EVERY: Duration = Duration::from_millis(100);

struct Service;

impl Ticker for Service {
    type TicksStream = Ticks;

    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let message = format!("pid {}: hello {}", std::process::id(), req.get_ref().name);
        tracing::debug!(name = %req.get_ref().name, "hello");
        Ok(Response::new(HelloReply { message }))
    }

    async fn ticks(&self, req: Request<TicksRequest>) -> Result<Response<Ticks>, Status> {
        let drain = Drain::current()
            .ok_or_else(|| Status::internal("no ceaseless::Drain: not served by ceaseless"))?;
        let from = req.get_ref().from;
        let mut interval = tokio::time::interval(EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(pid = std::process::id(), from, "ticks: stream begins");
        Ok(Response::new(Ticks {
            n: from,
            pid: std::process::id(),
            interval,
            drain: Box::pin(async move { drain.wait().await }),
            done: false,
        }))
    }
}

/// The `Ticks` stream. A message is made only when tonic asks for the next one, and the
/// drain is checked first: once it began, the stream ends with its status, and every
/// message before it went out whole.
struct Ticks {
    n: u64,
    pid: u32,
    interval: tokio::time::Interval,
    drain: Pin<Box<dyn Future<Output = Served> + Send>>,
    done: bool,
}

impl tokio_stream::Stream for Ticks {
    type Item = Result<Tick, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(served) = this.drain.as_mut().poll(cx) {
            this.done = true;
            let why = match served {
                Served::HandedOver { .. } => "restart",
                Served::Shutdown => "shutdown",
            };
            tracing::info!(
                pid = this.pid,
                next = this.n,
                reason = why,
                "ticks: stream ends, draining"
            );
            return Poll::Ready(Some(Err(Status::unavailable(format!("draining: {why}")))));
        }
        std::task::ready!(this.interval.poll_tick(cx));
        let tick = Tick {
            n: this.n,
            pid: this.pid,
        };
        this.n += 1;
        Poll::Ready(Some(Ok(tick)))
    }
}

struct Args {
    addr: String,
    hammer: Option<Duration>,
    serve_fn: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = "127.0.0.1:4248".to_string();
    let mut hammer = Some(ceaseless::DEFAULT_HAMMER_TIME);
    let mut serve_fn = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--serve-fn" {
            serve_fn = true;
            continue;
        }
        let value = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--addr" => addr = value,
            "--hammer-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--hammer-ms: not a number: {value}"))?;
                hammer = (ms > 0).then(|| Duration::from_millis(ms));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if serve_fn && hammer != Some(ceaseless::DEFAULT_HAMMER_TIME) {
        return Err("--serve-fn serves with the default hammer time".into());
    }
    Ok(Args {
        addr,
        hammer,
        serve_fn,
    })
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grpc: {e}\nusage: grpc [--addr ADDR] [--hammer-ms N] [--serve-fn]");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(pid = std::process::id(), "grpc starting");
    let routes = tonic::service::Routes::new(TickerServer::new(Service));
    let served = if args.serve_fn {
        match ceaseless::Process::builder().start() {
            Ok(process) => match process.tcp_listener(&args.addr) {
                // The one line that serves tonic's routes through ceaseless.
                Ok(listener) => ceaseless::serve(listener, routes).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    } else {
        ceaseless::Server::new(args.addr, routes)
            .hammer_time(args.hammer)
            .listen_and_serve()
            .await
    };
    match served {
        Ok(served) => {
            tracing::info!(pid = std::process::id(), ended = %served, "grpc exiting");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serve");
            eprintln!("grpc: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
