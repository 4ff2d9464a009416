//! The demo server, and the binary the tests and benchmarks drive.
//!
//! ```text
//! cargo run --release --example hello                 # serves 127.0.0.1:4242
//! curl localhost:4242/            # hello from pid 1234, version 0.1.0
//! curl 'localhost:4242/slow?ms=2000'
//! curl localhost:4242/async       # as /, after yielding once (pending on its first poll)
//! curl localhost:4242/count       # count 17: GET / answered by every generation so far
//! curl --data-binary @file localhost:4242/echo   # read 1234 bytes
//! curl localhost:4242/peer        # tcp peer=127.0.0.1:50312 local=127.0.0.1:4242
//! curl localhost:4242/healthz     # ok (503 during a shutdown's lame-duck period)
//! curl localhost:4242/metrics     # Prometheus text: generation, restarts, connections
//! kill -HUP 1234                  # the next generation takes over
//! ```
//!
//! Options: `--addr ADDR` (repeatable: one server each; `unix:/path` for a Unix socket),
//! `--hammer-ms N` (0: no hammer time), `--read-timeout-ms N`, `--write-timeout-ms N`,
//! `--max-header-bytes N`, `--ready-timeout-ms N`, `--stop-grace-ms N` (how long a failed
//! new generation gets to stop before SIGKILL), `--drain-grace-ms N`, `--drain-spread-ms N`,
//! `--pid-file PATH`, `--no-metrics` (see `GET /metrics` below), `--ballast-mb N` (hold N MiB
//! of heap, every page resident, as an application with caches does: what a restart
//! costs a large process), `--admin` (serve `POST /admin/restart?wait_ms=N` and `POST /admin/shutdown`:
//! a restart and a shutdown from code; `POST /admin/rollback`: `Process::rollback` during a
//! probation), `--warmup-ms N` (warm up for N ms before any
//! server starts: until the generation declares ready, the previous one alone serves),
//! `--stagger-ms N` (start each `--addr` N ms after the previous one), `--lame-duck-ms N`
//! (at SIGTERM, answer `GET /healthz` with 503 for N ms while serving everything else,
//! then drain), `--no-ready`
//! (serve, but never declare ready: a broken deploy that accepts connections),
//! `--early-ready` (declare ready right after spawning the servers, before they took
//! their sockets: the order many applications use, which the handover makes safe),
//! `--fd-name NAME` (the previous `--addr` takes the socket-activated socket of that
//! name, systemd's `FileDescriptorName=`), `--control PATH` (a control socket, for
//! `hello restart`), `--max-draining N` (at most N generations draining at once; the
//! oldest beyond are hammered), `--supervise` (stable PID: this process becomes the
//! supervisor, and the server runs in generations under it; `--pid-file` then names
//! the supervisor), `--udp ADDR` (also a UDP echo on ADDR, answering
//! `pid <pid>: <payload>`, on a socket kept across restarts), `--takeover PATH` (start
//! independently and take over from the server whose control socket is PATH: its
//! listeners come over that socket, and it drains once this one is ready; PATH is then
//! this one's control socket unless `--control` names another; exits 1 with the reason,
//! binding nothing, if the takeover is refused), `--probation-ms N` (after a restart the
//! old generation parks for N ms, ready to take the service back: see
//! `ProcessBuilder::probation`), `--rollback-on-errors RATIO:MIN` (roll back a generation
//! on probation once more than RATIO of at least MIN responses were 5xx),
//! `--crash-after-ms N` (a broken build: abort N ms after going live), `--fail-ratio F`
//! (a broken build: answer 500 to the fraction F of `GET /`, evenly).
//!
//! ```text
//! cargo run --example hello -- --supervise   # the pid the shell waits for never changes
//! kill -HUP <that pid>                       # a restart, through the supervisor
//! ```
//!
//! `hello restart --control PATH [--timeout-ms N]` asks the server that opened that
//! control socket to restart and waits for the outcome: it prints the new pid and exits
//! 0, or prints why nothing changed and exits 1 (2 for a usage error). Fit for a
//! service unit's `ExecReload=` or a deploy script; see `contrib/systemd/`.
//!
//! `hello rollback --control PATH [--timeout-ms N]` asks a generation on probation to
//! hand the service back to the one parked behind it: it prints the pid that serves
//! again and exits 0, or prints why nothing changed (no probation, or it is over) and
//! exits 1.
//!
//! `hello status --control PATH [--table] [--timeout-ms N]` prints what that server is
//! doing — pid, generation, phase, listeners and connections, recent restarts — as
//! pretty JSON, or as a table with `--table`. It exits 1 with the reason when nothing
//! answers (2 for a usage error).
//!
//! `GET /metrics` (with the `metrics` feature) renders ceaseless's metrics in the
//! Prometheus text format, through `metrics-exporter-prometheus` without its own
//! listener: the handler refreshes the gauges from a snapshot, then renders.
//! `--no-metrics` installs no recorder (`GET /metrics` answers 404): that exporter's
//! clock (`quanta`) calibrates itself in a busy loop when the recorder is built, 0.5 ms
//! to 200 ms of CPU at every start, which a new generation spends on the core the old
//! one is serving from (see BENCHMARKS.md).
//! The version marker comes from `HELLO_VERSION` at build time (the crate version if
//! unset), so two builds can be told apart.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[derive(Debug)]
struct Options {
    addrs: Vec<String>,
    hammer: Option<Duration>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_header_bytes: Option<usize>,
    ready_timeout: Option<Duration>,
    stop_grace: Option<Duration>,
    drain_grace: Option<Duration>,
    drain_spread: Option<Duration>,
    pid_file: Option<String>,
    /// Serve `POST /admin/restart?wait_ms=N`.
    admin: bool,
    /// `--fd-name` of each `--addr`, in order.
    fd_names: Vec<Option<String>>,
    control: Option<String>,
    warmup: Option<Duration>,
    stagger: Option<Duration>,
    no_ready: bool,
    /// `ready()` right after spawning the servers (`--early-ready`).
    early_ready: bool,
    lame_duck: Option<Duration>,
    udp: Option<String>,
    max_draining: Option<usize>,
    supervise: bool,
    takeover: Option<String>,
    /// No Prometheus recorder (`--no-metrics`).
    no_metrics: bool,
    /// MiB of heap to hold, every page touched (`--ballast-mb`).
    ballast_mb: usize,
    /// `--probation-ms`: park the old generation this long after a restart.
    probation: Option<Duration>,
    /// `--rollback-on-errors RATIO:MIN`.
    rollback_on_errors: Option<(f64, u64)>,
    /// `--crash-after-ms`: abort this long after going live.
    crash_after: Option<Duration>,
    /// `--fail-ratio`: the fraction of `GET /` answered 500.
    fail_ratio: f64,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        addrs: Vec::new(),
        hammer: Some(ceaseless::DEFAULT_HAMMER_TIME),
        read_timeout: Some(ceaseless::DEFAULT_READ_TIMEOUT),
        write_timeout: Some(ceaseless::DEFAULT_WRITE_TIMEOUT),
        max_header_bytes: None,
        ready_timeout: None,
        stop_grace: None,
        drain_grace: None,
        drain_spread: None,
        pid_file: None,
        admin: false,
        fd_names: Vec::new(),
        control: None,
        warmup: None,
        stagger: None,
        no_ready: false,
        early_ready: false,
        lame_duck: None,
        udp: None,
        max_draining: None,
        supervise: false,
        takeover: None,
        no_metrics: false,
        ballast_mb: 0,
        probation: None,
        rollback_on_errors: None,
        crash_after: None,
        fail_ratio: 0.0,
    };
    let mut args = std::env::args().skip(1);
    let ms = |v: Option<String>, name: &str| -> Result<Option<Duration>, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{name}: not a number: {v}"))?;
        Ok((n > 0).then(|| Duration::from_millis(n)))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                o.addrs.push(args.next().ok_or("--addr needs a value")?);
                o.fd_names.push(None);
            }
            "--fd-name" => {
                let name = args.next().ok_or("--fd-name needs a value")?;
                *o.fd_names.last_mut().ok_or("--fd-name follows an --addr")? = Some(name);
            }
            "--control" => o.control = Some(args.next().ok_or("--control needs a value")?),
            "--hammer-ms" => o.hammer = ms(args.next(), &a)?,
            "--read-timeout-ms" => o.read_timeout = ms(args.next(), &a)?,
            "--write-timeout-ms" => o.write_timeout = ms(args.next(), &a)?,
            "--ready-timeout-ms" => o.ready_timeout = ms(args.next(), &a)?,
            "--stop-grace-ms" => o.stop_grace = ms(args.next(), &a)?,
            "--drain-grace-ms" => o.drain_grace = Some(ms(args.next(), &a)?.unwrap_or_default()),
            "--drain-spread-ms" => o.drain_spread = Some(ms(args.next(), &a)?.unwrap_or_default()),
            "--max-header-bytes" => {
                let v = args.next().ok_or("--max-header-bytes needs a value")?;
                o.max_header_bytes = Some(v.parse().map_err(|_| format!("not a number: {v}"))?);
            }
            "--pid-file" => o.pid_file = Some(args.next().ok_or("--pid-file needs a value")?),
            "--admin" => o.admin = true,
            "--no-metrics" => o.no_metrics = true,
            "--ballast-mb" => {
                let v = args.next().ok_or("--ballast-mb needs a value")?;
                o.ballast_mb = v
                    .parse::<usize>()
                    .ok()
                    .filter(|mb| mb.checked_mul(1 << 20).is_some())
                    .ok_or_else(|| format!("--ballast-mb needs a number of MiB, not {v:?}"))?;
            }
            "--warmup-ms" => o.warmup = ms(args.next(), &a)?,
            "--stagger-ms" => o.stagger = ms(args.next(), &a)?,
            "--no-ready" => o.no_ready = true,
            "--early-ready" => o.early_ready = true,
            "--lame-duck-ms" => o.lame_duck = ms(args.next(), &a)?,
            "--udp" => o.udp = Some(args.next().ok_or("--udp needs an address")?),
            "--max-draining" => {
                let v = args.next().ok_or("--max-draining needs a value")?;
                o.max_draining = Some(v.parse().map_err(|_| format!("not a number: {v}"))?);
            }
            "--supervise" => o.supervise = true,
            "--probation-ms" => o.probation = ms(args.next(), &a)?,
            "--crash-after-ms" => o.crash_after = Some(ms(args.next(), &a)?.unwrap_or_default()),
            "--fail-ratio" => {
                let v = args.next().ok_or("--fail-ratio needs a value")?;
                o.fail_ratio = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f))
                    .ok_or_else(|| format!("--fail-ratio needs a fraction in 0..=1, not {v:?}"))?;
            }
            "--rollback-on-errors" => {
                let v = args.next().ok_or("--rollback-on-errors needs RATIO:MIN")?;
                let parsed = v
                    .split_once(':')
                    .and_then(|(r, m)| Some((r.parse::<f64>().ok()?, m.parse::<u64>().ok()?)));
                o.rollback_on_errors = Some(parsed.ok_or_else(|| {
                    format!("--rollback-on-errors needs RATIO:MIN (0.5:20), not {v:?}")
                })?);
            }
            "--takeover" => o.takeover = Some(args.next().ok_or("--takeover needs a value")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.addrs.is_empty() {
        o.addrs.push("127.0.0.1:4242".into());
        o.fd_names.push(None);
    }
    Ok(o)
}

/// `--fail-ratio` as the bits of an `f64`, and the `GET /` answered so far under it.
static FAIL_RATIO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether this `GET /` fails (`--fail-ratio F`): evenly, F of every request.
fn fails_now() -> bool {
    let f = f64::from_bits(FAIL_RATIO.load(std::sync::atomic::Ordering::Relaxed));
    if f <= 0.0 {
        return false;
    }
    let n = ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
    ((n + 1.0) * f).floor() > (n * f).floor()
}

/// Whether `POST /admin/restart` is served (`--admin`).
static ADMIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `GET /` answered by every generation since the first: handed over as state.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `POST /admin/restart?wait_ms=N`: restarts from code with `ceaseless::restart()`,
/// waiting at most N ms (default 60000) for the outcome. The restart goes on when the
/// wait ends first; a later request then hears "already in progress" until it is over.
async fn admin_restart(req: &Request<Incoming>) -> (StatusCode, String) {
    if req.method() != http::Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
    }
    let wait = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60_000);
    match tokio::time::timeout(Duration::from_millis(wait), ceaseless::restart()).await {
        Ok(Ok(pid)) => (StatusCode::OK, format!("restarted: pid {pid}\n")),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("restart failed: {e}\n"),
        ),
        Err(_) => (
            StatusCode::ACCEPTED,
            format!("still restarting after {wait} ms\n"),
        ),
    }
}

/// `GET /stream?chunks=K&bytes=B&every_ms=N`: K chunks of B bytes, one every N ms (a
/// streaming response, as server-sent events or a long download are).
struct Chunks {
    left: u64,
    chunk: Bytes,
    every: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(std::future::Future::poll(self.sleep.as_mut(), cx));
        let next = tokio::time::Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    })
}

type HelloBody = Either<Full<Bytes>, Chunks>;

/// The Prometheus recorder's handle, installed at the top of `main`.
#[cfg(feature = "metrics")]
static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// `GET /metrics`: ceaseless's gauges refreshed from a snapshot, then everything the
/// recorder holds, in the Prometheus text format.
fn metrics_response() -> Response<HelloBody> {
    #[cfg(feature = "metrics")]
    if let Some(handle) = METRICS.get() {
        if let Some(p) = ceaseless::Process::current() {
            p.publish_metrics();
        }
        let mut r = Response::new(Either::Left(Full::new(Bytes::from(handle.render()))));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    let text: &'static [u8] = if cfg!(feature = "metrics") {
        b"no metrics recorder (--no-metrics, or it could not be installed)\n"
    } else {
        b"built without the `metrics` feature\n"
    };
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(text))));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn hello(req: Request<Incoming>) -> Result<Response<HelloBody>, Infallible> {
    let body = |s: String| Either::Left(Full::new(Bytes::from(s)));
    let answer = || format!("hello from pid {}, version {VERSION}\n", std::process::id());
    let res = match req.uri().path() {
        "/" if fails_now() => {
            let mut r = Response::new(body(format!(
                "failing on purpose (--fail-ratio), pid {}\n",
                std::process::id()
            )));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
        "/" => {
            COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Response::new(body(answer()))
        }
        "/count" => Response::new(body(format!(
            "count {}\n",
            COUNT.load(std::sync::atomic::Ordering::Relaxed)
        ))),
        "/admin/shutdown" if ADMIN.load(std::sync::atomic::Ordering::Relaxed) => {
            // A graceful shutdown from code, as SIGTERM does (without its hooks).
            let (status, text) = if req.method() != http::Method::POST {
                (StatusCode::METHOD_NOT_ALLOWED, "POST only\n")
            } else if ceaseless::shutdown() {
                (StatusCode::ACCEPTED, "shutting down\n")
            } else {
                (StatusCode::CONFLICT, "already draining\n")
            };
            let mut r = Response::new(body(text.into()));
            *r.status_mut() = status;
            r
        }
        "/admin/restart" if ADMIN.load(std::sync::atomic::Ordering::Relaxed) => {
            let (status, text) = admin_restart(&req).await;
            let mut r = Response::new(body(text));
            *r.status_mut() = status;
            r
        }
        "/admin/rollback" if ADMIN.load(std::sync::atomic::Ordering::Relaxed) => {
            // The application's own judgement (`Process::rollback`), during a probation.
            let (status, text) = if req.method() != http::Method::POST {
                (StatusCode::METHOD_NOT_ALLOWED, "POST only\n".to_string())
            } else {
                match ceaseless::Process::current() {
                    Some(p) => match p.rollback().await {
                        Ok(pid) => (StatusCode::OK, format!("rolled back: pid {pid} serves\n")),
                        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
                    },
                    None => (StatusCode::SERVICE_UNAVAILABLE, "no process owner\n".into()),
                }
            };
            let mut r = Response::new(body(text));
            *r.status_mut() = status;
            r
        }
        "/async" => {
            // The answer of `/` after yielding once: a handler that awaits anything is
            // pending on its first poll (the benchmark measures both).
            tokio::task::yield_now().await;
            Response::new(body(answer()))
        }
        "/echo" => match req.into_body().collect().await {
            // Reads the whole body (the read timeout applies), answers its size.
            Ok(b) => Response::new(body(format!("read {} bytes\n", b.to_bytes().len()))),
            Err(e) => {
                let mut r = Response::new(body(format!("cannot read the body: {e}\n")));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        },
        "/healthz" => ceaseless::health().map(|text| Either::Left(Full::new(Bytes::from(text)))),
        "/metrics" => metrics_response(),
        "/log" => {
            // A log line of a handler: tied to its connection by the connection's span.
            tracing::info!("handling /log");
            Response::new(body(answer()))
        }
        "/peer" => {
            // Who is calling, as ceaseless tells every handler.
            let text = match ceaseless::ConnInfo::current() {
                Some(ceaseless::ConnInfo::Tcp { peer, local }) => {
                    format!("tcp peer={peer} local={local}\n")
                }
                Some(ceaseless::ConnInfo::Unix {
                    cred: Some((uid, gid, pid)),
                }) => format!(
                    "unix uid={uid} gid={gid} pid={}\n",
                    pid.map_or("unknown".into(), |p| p.to_string())
                ),
                Some(ceaseless::ConnInfo::Unix { cred: None }) => "unix (no credentials)\n".into(),
                // (A kind of connection a later version may add.)
                Some(other) => format!("{other}\n"),
                None => "unknown\n".into(),
            };
            Response::new(body(text))
        }
        "/stream" => {
            let every = Duration::from_millis(query_u64(&req, "every_ms").unwrap_or(100));
            let size = query_u64(&req, "bytes").unwrap_or(16).min(1 << 20) as usize;
            Response::new(Either::Right(Chunks {
                left: query_u64(&req, "chunks").unwrap_or(10),
                chunk: Bytes::from(vec![b'x'; size]),
                every,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            }))
        }
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(body(answer()))
        }
        _ => {
            let mut r = Response::new(body("not found\n".into()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(res)
}

/// `hello status --control PATH [--table] [--timeout-ms N]`: see the module docs.
#[cfg(all(unix, feature = "control"))]
fn status_command(mut args: impl Iterator<Item = String>) -> std::process::ExitCode {
    const USAGE: &str = "usage: hello status --control PATH [--table] [--timeout-ms N]";
    let mut control = None;
    let mut table = false;
    let mut timeout = Duration::from_secs(5);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--table" => table = true,
            "--control" => match args.next() {
                Some(v) => control = Some(v),
                None => {
                    eprintln!("{USAGE}");
                    return std::process::ExitCode::from(2);
                }
            },
            "--timeout-ms" => match args.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(n) if n > 0 => timeout = Duration::from_millis(n),
                _ => {
                    eprintln!("hello status: --timeout-ms needs a positive number");
                    return std::process::ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(control) = control else {
        eprintln!("{USAGE}");
        return std::process::ExitCode::from(2);
    };
    let text = match ceaseless::control::request_status(&control, timeout) {
        Ok(s) if table => status_table(&s),
        Ok(s) => match serde_json::to_string_pretty(&s) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("hello status: {e}");
                return std::process::ExitCode::from(1);
            }
        },
        Err(e) => {
            eprintln!("hello status: no status from {control}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // Not println!: a reader that stops early (`| head`) is not an error worth a panic.
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("hello status: {e}");
            std::process::ExitCode::from(1)
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

/// `--udp`: answers each datagram with `pid <pid>: <payload>` until this generation
/// drains; from then on the datagrams queue on the same socket for the next one.
async fn udp_echo(socket: tokio::net::UdpSocket, process: ceaseless::Process) {
    if let Ok(local) = socket.local_addr() {
        tracing::info!(pid = std::process::id(), addr = %local, "udp echo");
    }
    let draining = process.draining();
    tokio::pin!(draining);
    let mut buf = vec![0u8; 64 * 1024];
    let prefix = format!("pid {}: ", std::process::id());
    loop {
        tokio::select! {
            // A datagram read is always answered before the drain is looked at.
            biased;
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    let mut answer = prefix.clone().into_bytes();
                    answer.extend_from_slice(&buf[..n]);
                    if let Err(e) = socket.send_to(&answer, from).await {
                        tracing::debug!(error = %e, "udp echo: cannot answer");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "udp echo: receive failed"),
            },
            _ = &mut draining => break,
        }
    }
}

/// The status as a table, for a person at a terminal.
#[cfg(all(unix, feature = "control"))]
fn status_table(s: &ceaseless::Status) -> String {
    use std::fmt::Write;
    let time = ceaseless::status::format_time;
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut o = String::new();
    let _ = writeln!(o, "pid         {}", s.pid);
    let _ = writeln!(o, "generation  {}", s.generation);
    let _ = writeln!(
        o,
        "phase       {}{}",
        s.phase.as_str(),
        if s.live { " (live)" } else { "" }
    );
    let _ = writeln!(
        o,
        "started     {}  (up {} ms)",
        time(s.started_at),
        s.uptime_ms
    );
    let c = s.connections;
    let _ = writeln!(
        o,
        "connections {} open: {} active, {} idle, {} upgraded",
        c.open, c.active, c.idle, c.upgraded
    );
    let _ = writeln!(o, "requests    {}", s.requests);
    let _ = writeln!(
        o,
        "restarts    {} ok, {} failed, {} rolled back",
        s.restarts_total.ok,
        s.restarts_total.failed,
        s.restarts_total.rollbacks.total()
    );
    if let Some(p) = &s.probation {
        let _ = writeln!(
            o,
            "probation   {} pid {} until {}",
            if p.parked {
                "parked behind"
            } else {
                "on probation; parked:"
            },
            p.other_pid,
            time(p.ends_at)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<40} {:<10} {:>6} {:>6} {:>6} {:>8}",
        "LISTENER", "ORIGIN", "OPEN", "ACTIVE", "IDLE", "UPGRADED"
    );
    for l in &s.listeners {
        let origin = format!("{:?}", l.origin).to_lowercase();
        let n = |f: fn(&ceaseless::status::Connections) -> usize| {
            l.connections
                .as_ref()
                .map_or_else(|| "-".into(), |c| f(c).to_string())
        };
        let _ = writeln!(
            o,
            "{:<40} {:<10} {:>6} {:>6} {:>6} {:>8}",
            l.address,
            origin,
            n(|c| c.open),
            n(|c| c.active),
            n(|c| c.idle),
            n(|c| c.upgraded)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<24} {:>4} {:<7} {:>8} {:>9} {:>9}  REASON",
        "RESTART AT", "GEN", "OUTCOME", "PID", "READY_MS", "DRAIN_MS"
    );
    for r in &s.restarts {
        let outcome = match (r.outcome, r.trigger) {
            (ceaseless::status::Outcome::RolledBack, Some(t)) => format!("rollback:{t}"),
            (o, _) => format!("{o:?}").to_lowercase(),
        };
        let pid = r.pid.map_or_else(|| "-".into(), |p| p.to_string());
        let _ = writeln!(
            o,
            "{:<24} {:>4} {:<7} {:>8} {:>9} {:>9}  {}",
            time(r.at),
            r.generation,
            outcome,
            pid,
            ms(r.sighup_to_ready_ms.or(r.rollback_ms)),
            ms(r.ready_to_old_gone_ms),
            r.reason.as_deref().unwrap_or("")
        );
    }
    o
}

/// `hello restart|rollback --control PATH [--timeout-ms N]` (see the module docs): asks
/// the server at that control socket with `request`, within `timeout` unless told
/// otherwise, and prints the pid that serves then.
#[cfg(all(unix, feature = "control"))]
fn pid_command(
    verb: &str,
    mut timeout: Duration,
    request: fn(&str, Duration) -> Result<u32, ceaseless::ControlError>,
    mut args: impl Iterator<Item = String>,
) -> std::process::ExitCode {
    let usage = format!("usage: hello {verb} --control PATH [--timeout-ms N]");
    let mut control = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--control", Some(v)) => control = Some(v),
            ("--timeout-ms", Some(v)) => match v.parse::<u64>() {
                Ok(n) if n > 0 => timeout = Duration::from_millis(n),
                _ => {
                    eprintln!("hello {verb}: --timeout-ms: not a positive number: {v}");
                    return std::process::ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{usage}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(control) = control else {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    };
    match request(&control, timeout) {
        Ok(pid) => {
            println!("{pid}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hello {verb}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("status") {
        #[cfg(all(unix, feature = "control"))]
        return status_command(std::env::args().skip(2));
        #[cfg(not(all(unix, feature = "control")))]
        {
            eprintln!("hello status: the control socket needs Unix and the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    if std::env::args().nth(1).as_deref() == Some("rollback") {
        #[cfg(all(unix, feature = "control"))]
        return pid_command(
            "rollback",
            Duration::from_secs(30),
            |c, t| ceaseless::control::request_rollback(c, t),
            std::env::args().skip(2),
        );
        #[cfg(not(all(unix, feature = "control")))]
        {
            eprintln!("hello rollback: the control socket needs Unix and the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    if std::env::args().nth(1).as_deref() == Some("restart") {
        #[cfg(all(unix, feature = "control"))]
        return pid_command(
            "restart",
            Duration::from_secs(60),
            |c, t| ceaseless::control::request_restart(c, t),
            std::env::args().skip(2),
        );
        #[cfg(not(all(unix, feature = "control")))]
        {
            eprintln!("hello restart: the control socket needs Unix and the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hello: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if opts.ballast_mb > 0 {
        // Held for the process's life, every page written so that it is resident.
        let mut ballast: Vec<u8> = Vec::new();
        if ballast.try_reserve_exact(opts.ballast_mb << 20).is_err() {
            eprintln!("hello: cannot allocate {} MiB of ballast", opts.ballast_mb);
            return std::process::ExitCode::from(1);
        }
        for page in ballast.spare_capacity_mut().chunks_mut(4096) {
            page[0].write(1);
        }
        std::mem::forget(ballast);
    }
    if opts.supervise {
        // Before any runtime starts: the first process supervises from here on (and
        // never returns); a generation under it returns at once.
        let mut sup = ceaseless::Supervisor::new();
        if let Some(p) = &opts.pid_file {
            sup = sup.pid_file(p);
        }
        if let Some(t) = opts.ready_timeout {
            sup = sup.ready_timeout(t);
        }
        if let Err(e) = sup.run() {
            tracing::error!(error = %e, "cannot supervise");
            eprintln!("hello: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve(opts)),
        Err(e) => {
            eprintln!("hello: cannot start the runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// The Prometheus recorder, for `GET /metrics`.
#[cfg(feature = "metrics")]
fn install_metrics() {
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        // Histograms with buckets (rather than summaries): they add up across a fleet.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
            &[
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )
        .and_then(|b| b.install_recorder())
    {
        Ok(handle) => {
            let _ = METRICS.set(handle);
        }
        Err(e) => tracing::warn!(error = %e, "no metrics: cannot install the recorder"),
    }
}

async fn serve(opts: Options) -> std::process::ExitCode {
    ADMIN.store(opts.admin, std::sync::atomic::Ordering::Relaxed);
    // The recorder before the process owner, so that a new generation's restart
    // histograms (recorded as it becomes live) are kept.
    #[cfg(feature = "metrics")]
    if !opts.no_metrics {
        install_metrics();
    }
    tracing::info!(
        pid = std::process::id(),
        version = VERSION,
        "hello starting"
    );

    // The process first: readiness is declared below, once every server listens.
    let mut process = ceaseless::Process::builder()
        .readiness(ceaseless::Readiness::Manual)
        // The count of `GET /`, to the next generation (`GET /count`).
        .state(|| {
            let n = COUNT.load(std::sync::atomic::Ordering::Relaxed);
            Ok(format!("count {n}").into_bytes())
        });
    if let Some(t) = opts.ready_timeout {
        process = process.ready_timeout(t);
    }
    if let Some(t) = opts.stop_grace {
        process = process.stop_grace(t);
    }
    if let Some(p) = &opts.pid_file {
        process = process.pid_file(p);
    }
    if let Some(d) = opts.lame_duck {
        process = process.lame_duck(d);
    }
    if let Some(n) = opts.max_draining {
        process = process.max_draining(n);
    }
    if let Some(p) = opts.probation {
        process = process.probation(p);
    }
    if let Some((ratio, min)) = opts.rollback_on_errors {
        process = process.rollback_on_errors(ratio, min);
    }
    FAIL_RATIO.store(
        opts.fail_ratio.to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(p) = &opts.control {
        #[cfg(feature = "control")]
        {
            process = process.control_socket(p);
        }
        #[cfg(not(feature = "control"))]
        {
            eprintln!("hello: --control {p}: built without the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    if let Some(p) = &opts.takeover {
        #[cfg(feature = "control")]
        {
            process = process.takeover(p);
        }
        #[cfg(not(feature = "control"))]
        {
            eprintln!("hello: --takeover {p}: built without the `control` feature");
            return std::process::ExitCode::from(2);
        }
    }
    let process = match process.start() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("hello: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if let Some(state) = process.inherited_state() {
        // HELLO_REJECT_STATE: a build that cannot read its predecessor's state (the
        // tests' broken deploy): it fails to start, and the restart rolls back.
        let parsed = std::str::from_utf8(state)
            .ok()
            .and_then(|t| t.strip_prefix("count "))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| std::env::var_os("HELLO_REJECT_STATE").is_none());
        match parsed {
            Some(n) => {
                COUNT.store(n, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(pid = std::process::id(), count = n, "took over the count");
            }
            None => {
                tracing::error!(
                    pid = std::process::id(),
                    "cannot read the state handed over"
                );
                eprintln!("hello: cannot read the state handed over");
                return std::process::ExitCode::from(1);
            }
        }
    }
    if let Some(addr) = &opts.udp {
        // Taken before any server starts, so that it is claimed before readiness.
        match process.udp_socket(addr) {
            Ok(socket) => {
                tokio::spawn(udp_echo(socket, process.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open the UDP socket");
                eprintln!("hello: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    }
    if let Some(w) = opts.warmup {
        // Filling caches, opening pools: no server accepts yet.
        tracing::info!(
            pid = std::process::id(),
            ms = w.as_millis() as u64,
            "warming up"
        );
        tokio::time::sleep(w).await;
    }

    let app = tower::service_fn(hello);
    let total = opts.addrs.len();
    let listening = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut servers = Vec::new();
    for (i, (addr, fd_name)) in opts.addrs.iter().zip(&opts.fd_names).enumerate() {
        if i > 0 {
            if let Some(d) = opts.stagger {
                tokio::time::sleep(d).await;
            }
        }
        let (p, listening) = (process.clone(), listening.clone());
        let no_ready = opts.no_ready || opts.early_ready;
        let mut s = ceaseless::Server::new(addr.clone(), app)
            .hammer_time(opts.hammer)
            .read_timeout(opts.read_timeout)
            .write_timeout(opts.write_timeout)
            .before_begin(move |local| {
                tracing::info!(pid = std::process::id(), addr = %local, "serving");
                let n = listening.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                if n == total && !no_ready {
                    p.ready();
                }
            });
        if let Some(n) = opts.max_header_bytes {
            s = s.max_header_bytes(n);
        }
        if let Some(t) = opts.drain_spread {
            s = s.drain_spread(t);
        }
        if let Some(t) = opts.drain_grace {
            s = s.drain_grace(t);
        }
        if let Some(n) = fd_name {
            #[cfg(feature = "systemd")]
            {
                s = s.fd_name(n);
            }
            #[cfg(not(feature = "systemd"))]
            tracing::warn!(fd_name = %n, "built without the `systemd` feature: --fd-name ignored");
        }
        servers.push(tokio::spawn(s.listen_and_serve()));
    }
    if opts.early_ready {
        // The spawned servers have not run yet: none took its socket.
        process.ready();
    }
    if let Some(after) = opts.crash_after {
        // A broken build (the tests' bad deploy): it serves, then crashes.
        let p = process.clone();
        tokio::spawn(async move {
            while !(p.status().live && p.status().phase == ceaseless::status::Phase::Serving) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(after).await;
            tracing::error!(
                pid = std::process::id(),
                "crashing on purpose (--crash-after-ms)"
            );
            std::process::abort();
        });
    }
    let mut code = 0;
    let mut ended = None;
    for s in servers {
        match s.await {
            Ok(Ok(served)) => ended = Some(served),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "server failed");
                eprintln!("hello: {e}");
                code = 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "server task panicked");
                code = 1;
            }
        }
    }
    let ended = ended.map_or_else(|| "failed".to_string(), |s| s.to_string());
    tracing::info!(pid = std::process::id(), %ended, "hello exiting");
    std::process::ExitCode::from(code)
}
