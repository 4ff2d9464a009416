//! The serving features, proved against real processes of the examples with real
//! signals and real clients over 127.0.0.1: graceful shutdown and the hammer, the signal
//! hooks, TLS with ALPN, the request limits and timeouts, several servers in one
//! process, malformed requests.
//!
//! Every server binds `127.0.0.1:0` and the test reads the bound address from its log,
//! so the tests run in parallel. Waits are generous (the machine may be loaded); the only
//! timing assertions are loose bounds around the hammer and the read timeout.
//!
//! The servers are the example binaries: `cargo test` builds them, but
//! `cargo test --test serve` alone does not rebuild them after a change to the library
//! (run `cargo build --examples` first).
#![cfg(unix)]

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::{example_bin, Proc};

/// How long to wait for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Processes

/// Starts an example on `127.0.0.1:0` (plus `args`); returns it and its bound address.
fn start(example: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let mut all = vec!["--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let p = Proc::spawn(&example_bin(example), &all);
    let addr = p.serving_addr(1);
    let addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad serving address {addr:?}: {e}"));
    (p, addr)
}

/// Waits for the first generation to exit; panics (with its output) if it does not.
fn expect_exit(p: &mut Proc, why: &str) -> ExitStatus {
    p.wait_exit(WAIT).unwrap_or_else(|| {
        panic!(
            "pid {} did not exit within {WAIT:?} ({why}); output:\n{}",
            p.pid,
            p.output()
        )
    })
}

/// Waits until some output line is exactly `line` (hook lines are whole lines, and an
/// exact match keeps pid 12 from matching pid 123).
fn wait_exact_line(p: &Proc, line: &str) {
    let deadline = Instant::now() + WAIT;
    while !p.output().lines().any(|l| l.trim() == line) {
        assert!(
            Instant::now() < deadline,
            "no line {line:?} within {WAIT:?}; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The scheduling state letter of `pid` (`R`, `S`, `T`, ...), from `/proc/PID/stat`.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Waits until `pid` is in state `want`; panics with the output of `p` if it is not.
fn wait_state(p: &Proc, pid: u32, want: char) {
    let deadline = Instant::now() + WAIT;
    loop {
        let state = proc_state(pid);
        if state == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} is in state {state:?}, not {want:?}, after {WAIT:?}; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// reqwest, driven from these synchronous tests (the test thread may block on the
// harness while the runtime's worker serves the client)

struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Reply {
    status: reqwest::StatusCode,
    version: reqwest::Version,
    body: String,
}

impl Client {
    fn plain() -> Client {
        Client::with(reqwest::Client::builder())
    }

    fn with(builder: reqwest::ClientBuilder) -> Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let http = {
            let _in_rt = rt.enter();
            // A fresh connection per request: a pooled one could meet the server's idle
            // timeout (1 s in some tests) just as it is reused, a race of the client's.
            builder
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(15))
                .build()
                .expect("reqwest client")
        };
        Client { rt, http }
    }

    fn try_get(&self, url: &str) -> Result<Reply, reqwest::Error> {
        self.rt.block_on(async {
            let res = self.http.get(url).send().await?;
            let (status, version) = (res.status(), res.version());
            let body = res.text().await?;
            Ok(Reply {
                status,
                version,
                body,
            })
        })
    }

    /// GET that must succeed with 200; panics with the server's output otherwise.
    fn get_ok(&self, p: &Proc, url: &str) -> Reply {
        let reply = self
            .try_get(url)
            .unwrap_or_else(|e| panic!("GET {url} failed: {e:?}; output:\n{}", p.output()));
        assert_eq!(
            reply.status,
            reqwest::StatusCode::OK,
            "GET {url}: {reply:?}; output:\n{}",
            p.output()
        );
        reply
    }
}

fn http_url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

// ---------------------------------------------------------------------------------------
// Raw TCP, for byte-level checks

/// Connects and writes `bytes` (possibly nothing).
fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    s
}

/// How a read of a connection ended.
#[derive(Debug)]
enum End {
    /// The peer closed (FIN).
    Eof,
    /// The connection failed (typically a reset).
    Failed(#[allow(dead_code)] std::io::ErrorKind), // shown in failure messages
    /// Still open when the time limit passed.
    Open,
}

impl End {
    fn closed(&self) -> bool {
        !matches!(self, End::Open)
    }
}

/// Reads until the peer closes or `limit` passes: what arrived, how it ended, and when
/// (time since the call).
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, End, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (got, End::Open, start.elapsed());
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, End::Eof, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, End::Failed(e.kind()), start.elapsed()),
        }
    }
}

/// Checks that nothing arrives on `s` and it stays open for `d`.
fn assert_quiet_and_open(p: &Proc, s: &mut TcpStream, d: Duration, what: &str) {
    let (got, end, _) = read_to_close(s, d);
    assert!(
        got.is_empty() && !end.closed(),
        "{what}: expected an open, silent connection; got {:?} then {end:?}; output:\n{}",
        String::from_utf8_lossy(&got),
        p.output()
    );
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the first response in `bytes` (head, then a `content-length` body).
fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = bytes.get(end + 4..end + 4 + len)?.to_vec();
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads one whole response from a keep-alive connection.
fn read_response(p: &Proc, s: &mut TcpStream, what: &str) -> RawResponse {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(r) = parse_response(&got) {
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: no whole response within {WAIT:?}; got {:?}; output:\n{}",
            String::from_utf8_lossy(&got),
            p.output()
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "{what}: closed before a whole response; got {:?}; output:\n{}",
                String::from_utf8_lossy(&got),
                p.output()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: read failed: {e}; got {:?}; output:\n{}",
                String::from_utf8_lossy(&got),
                p.output()
            ),
        }
    }
}

/// Sends `request` from a second thread while reading the answer, so a server that
/// answers (and closes) before reading everything is seen answering; write errors after
/// that are expected and ignored.
fn send_large(addr: SocketAddr, request: Vec<u8>) -> (Vec<u8>, End) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut writer = s.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let (got, end, _) = read_to_close(&mut s, WAIT);
    w.join().unwrap();
    (got, end)
}

/// Writes `prefix`, then one byte of `trickle` every 200 ms, until the server closes the
/// connection or 15 s pass. Returns what the server sent, how the connection ended, and
/// how long after the first byte.
fn trickle(addr: SocketAddr, prefix: &[u8], trickle: &[u8]) -> (Vec<u8>, End, Duration) {
    let mut s = raw(addr, prefix);
    let start = Instant::now();
    let limit = Duration::from_secs(15);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut bytes = trickle.iter().cycle();
    loop {
        if start.elapsed() > limit {
            return (got, End::Open, start.elapsed());
        }
        if let Err(e) = s.write_all(&[*bytes.next().unwrap()]) {
            // The server closed: read what it may have sent before.
            let (rest, _, _) = read_to_close(&mut s, Duration::from_secs(1));
            got.extend_from_slice(&rest);
            return (got, End::Failed(e.kind()), start.elapsed());
        }
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, End::Eof, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, End::Failed(e.kind()), start.elapsed()),
        }
    }
}

/// A connection attempt must be refused: nothing listens any more.
fn assert_refused(p: &Proc, addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!(
            "a new connection to {addr} should be refused, got {other:?}; output:\n{}",
            p.output()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown and the hammer

/// Durations of any size: `u64::MAX` milliseconds (far past what the clock can add)
/// means "never", not a panic when the drain begins nor a deadline already passed.
#[test]
fn huge_timeouts_mean_never() {
    let max = u64::MAX.to_string();
    let (mut p, addr) = start(
        "hello",
        &[
            "--hammer-ms",
            &max,
            "--read-timeout-ms",
            &max,
            "--write-timeout-ms",
            &max,
            "--drain-grace-ms",
            &max,
        ],
    );
    // A body sent in two parts: not cut off by a read deadline that overflowed.
    let mut s = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello",
    );
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"world").unwrap();
    let res = read_response(&p, &mut s, "a request with a body in two parts");
    assert_eq!(res.status, 200, "{res:?}");
    assert!(String::from_utf8_lossy(&res.body).contains("read 10 bytes"));

    // The drain begins (hammer time: never) and ends once the request in flight is
    // answered; the idle grace of "never" does not hold a connection-less drain.
    let mut slow = raw(
        addr,
        b"GET /slow?ms=500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    Client::plain().get_ok(&p, &http_url(addr, "/"));
    p.signal(libc::SIGTERM);
    let res = read_response(&p, &mut slow, "the request in flight at SIGTERM");
    assert_eq!(res.status, 200, "{res:?}");
    let status = expect_exit(&mut p, "after SIGTERM");
    let out = p.output();
    assert!(status.success(), "exit status {status}; output:\n{out}");
    assert!(!out.contains("panicked"), "a panic:\n{out}");
}

/// The lingering close: after a response with `Connection: close` the server shuts its
/// write side and then reads and discards what the client still sends, for the drain
/// grace, instead of closing its socket at once, which would answer those bytes with a
/// reset (and a reset can erase what the client has not read yet). So writes after the
/// server's EOF keep succeeding; without it the second one fails, the first having
/// drawn a reset from a socket that is gone. (The linger lasts the drain grace, at most
/// two seconds: far more than these writes take.)
#[test]
fn bytes_sent_after_the_servers_close_are_read_not_reset() {
    let (p, addr) = start("hello", &["--drain-grace-ms", "30000"]);
    let mut s = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (bytes, end, _) = read_to_close(&mut s, WAIT);
    assert!(
        matches!(end, End::Eof),
        "the server did not close after Connection: close: {end:?}; output:\n{}",
        p.output()
    );
    let res = parse_response(&bytes)
        .unwrap_or_else(|| panic!("no whole response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(res.status, 200);
    for i in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap_or_else(|e| panic!("write {i} after the server's EOF failed: {e}"));
        // Over loopback a reset would be back long before this.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_finishes_the_request_in_flight_with_connection_close_then_exits_0() {
    let (mut p, addr) = start("hello", &[]);
    let client = Client::plain();
    let mut slow = raw(addr, b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n");
    // Connections are accepted in order: once a later one is answered, the slow one
    // has been accepted and its request is on its way to the handler.
    client.get_ok(&p, &http_url(addr, "/"));

    p.signal(libc::SIGTERM);
    p.expect_line("stopped accepting", WAIT);
    assert_refused(&p, addr);

    let (bytes, end, _) = read_to_close(&mut slow, WAIT);
    let res = parse_response(&bytes).unwrap_or_else(|| {
        panic!(
            "the request in flight got no whole response: {:?} then {end:?}; output:\n{}",
            String::from_utf8_lossy(&bytes),
            p.output()
        )
    });
    assert_eq!(res.status, 200, "{res:?}; output:\n{}", p.output());
    assert_eq!(
        res.header("connection"),
        Some("close"),
        "a response during the drain must say Connection: close: {res:?}"
    );
    let body = String::from_utf8_lossy(&res.body);
    assert!(
        body.starts_with(&format!("hello from pid {}", p.pid)),
        "{body:?}"
    );
    assert!(
        matches!(end, End::Eof),
        "the server should close after a Connection: close response, got {end:?}"
    );

    let status = expect_exit(&mut p, "after SIGTERM and the last response");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
    p.expect_line("drained; server stopped", WAIT);
}

/// `ceaseless::shutdown()` (here behind hello's `POST /admin/shutdown`) drains as
/// SIGTERM does: the caller's own response says `Connection: close`, new connections are
/// refused, the process exits 0; a second call, on a connection opened before, answers
/// that the process already drains.
#[test]
fn shutdown_from_code_drains_like_sigterm() {
    let (mut p, addr) = start("hello", &["--admin", "--drain-grace-ms", "5000"]);
    let post = b"POST /admin/shutdown HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    // Opened (and served once) before the shutdown; idle when it begins.
    let mut early = raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_response(&p, &mut early, "warm-up").status, 200);

    let mut caller = raw(addr, post);
    let first = read_response(&p, &mut caller, "the first shutdown call");
    assert_eq!(first.status, 202, "output:\n{}", p.output());
    assert_eq!(String::from_utf8_lossy(&first.body), "shutting down\n");
    assert!(
        first
            .headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close")),
        "{:?}",
        first.headers
    );
    p.expect_line("stopped accepting", WAIT);
    assert_refused(&p, addr);

    early.write_all(post).unwrap();
    let second = read_response(&p, &mut early, "the second shutdown call");
    assert_eq!(second.status, 409, "output:\n{}", p.output());
    assert_eq!(String::from_utf8_lossy(&second.body), "already draining\n");

    let status = expect_exit(&mut p, "after shutdown()");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

#[test]
fn hammer_time_closes_a_hung_request() {
    let (mut p, addr) = start("hello", &["--hammer-ms", "1000"]);
    let client = Client::plain();
    let mut hung = raw(addr, b"GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
    client.get_ok(&p, &http_url(addr, "/")); // the hung one is accepted (see above)

    let term = Instant::now();
    p.signal(libc::SIGTERM);
    let (bytes, end, _) = read_to_close(&mut hung, WAIT);
    let after = term.elapsed();
    assert!(
        end.closed(),
        "the hung request's connection is still open {after:?} after SIGTERM; output:\n{}",
        p.output()
    );
    assert!(
        bytes.is_empty(),
        "the hung request was answered: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        after >= Duration::from_millis(800) && after <= Duration::from_secs(6),
        "closed {after:?} after SIGTERM, expected about the 1 s hammer time; output:\n{}",
        p.output()
    );
    let line = p.expect_line("[STOP - Hammer Time] Forcefully shutting down", WAIT);
    assert!(
        line.contains(&format!("pid={}", p.pid)),
        "the hammer line should name pid {}: {line}",
        p.pid
    );
    let status = expect_exit(&mut p, "after the hammer");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

#[test]
fn sigusr2_during_a_drain_hammers_at_once() {
    let (mut p, addr) = start("hello", &["--hammer-ms", "0"]);
    let client = Client::plain();
    let mut hung = raw(addr, b"GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
    client.get_ok(&p, &http_url(addr, "/"));

    p.signal(libc::SIGTERM);
    p.expect_line("stopped accepting", WAIT);
    // No hammer time: a busy connection survives the drain (well past its grace).
    assert_quiet_and_open(
        &p,
        &mut hung,
        Duration::from_millis(800),
        "busy during drain",
    );
    assert_eq!(p.count("Hammer Time"), 0, "output:\n{}", p.output());

    let usr2 = Instant::now();
    p.signal(libc::SIGUSR2);
    let (bytes, end, _) = read_to_close(&mut hung, WAIT);
    assert!(
        end.closed() && usr2.elapsed() <= Duration::from_secs(5),
        "SIGUSR2 should close the hung request at once; {end:?} after {:?}; output:\n{}",
        usr2.elapsed(),
        p.output()
    );
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    let line = p.expect_line("[STOP - Hammer Time] Forcefully shutting down", WAIT);
    assert!(line.contains(&format!("pid={}", p.pid)), "{line}");
    let status = expect_exit(&mut p, "after SIGUSR2 hammered the drain");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

#[test]
fn sigusr2_while_serving_is_ignored() {
    let (mut p, addr) = start("hello", &[]);
    let client = Client::plain();
    let mut slow = raw(addr, b"GET /slow?ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n");
    client.get_ok(&p, &http_url(addr, "/"));

    p.signal(libc::SIGUSR2);
    p.expect_line("SIGUSR2 ignored", WAIT);
    // The request in flight completes, on a connection that stays usable.
    let res = read_response(&p, &mut slow, "slow request across SIGUSR2");
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.header("connection"), None, "not draining: {res:?}");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let again = read_response(&p, &mut slow, "keep-alive request after SIGUSR2");
    assert_eq!(again.status, 200, "{again:?}");

    let reply = client.get_ok(&p, &http_url(addr, "/"));
    assert!(reply.body.contains(&format!("pid {}", p.pid)), "{reply:?}");
    assert!(p.wait_exit(Duration::from_millis(200)).is_none(), "exited");
    assert_eq!(p.count("Hammer Time"), 0, "output:\n{}", p.output());
    assert_eq!(p.count("stopped accepting"), 0, "output:\n{}", p.output());
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/2 client (prior knowledge) on a raw socket: enough to put one request
// in flight at a known moment and to watch the frames of a drain.

const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_END_STREAM: u8 = 0x1;
const H2_ACK: u8 = 0x1;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

struct H2 {
    s: TcpStream,
}

impl H2 {
    /// Connects and sends the preface, empty SETTINGS, and `GET path` as stream 1.
    fn get(addr: SocketAddr, path: &str) -> H2 {
        assert!(path.len() < 127, "a one-byte HPACK length");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
        // HPACK, static table: :method GET, :scheme http; then :path and :authority as
        // literals without indexing (no Huffman).
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 0x01, b't']);
        out.extend(h2_frame(H2_HEADERS, 0x4 | H2_END_STREAM, 1, &block));
        H2 { s: raw(addr, &out) }
    }

    /// Reads exactly `buf.len()` bytes; false at EOF or on a reset.
    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<bool, String> {
        let mut at = 0;
        while at < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no frame within {WAIT:?}"));
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut buf[at..]) {
                Ok(0) => return Ok(false),
                Ok(n) => at += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The next frame, answering SETTINGS and PING as a client must; `None` once the
    /// server closed the connection.
    fn next(&mut self, deadline: Instant) -> Result<Option<H2Frame>, String> {
        let mut head = [0u8; 9];
        if !self.read_exact(&mut head, deadline)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if !self.read_exact(&mut payload, deadline)? {
            return Err("the connection ended inside a frame".into());
        }
        let f = H2Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        let ack = match f.kind {
            H2_SETTINGS if f.flags & H2_ACK == 0 => Some(h2_frame(H2_SETTINGS, H2_ACK, 0, &[])),
            H2_PING if f.flags & H2_ACK == 0 => Some(h2_frame(H2_PING, H2_ACK, 0, &f.payload)),
            _ => None,
        };
        if let Some(ack) = ack {
            // The server may already be closing; its next frames tell.
            let _ = self.s.write_all(&ack);
        }
        Ok(Some(f))
    }
}

/// An HPACK block for `method path` (static-table method and scheme, literal path and
/// authority, no Huffman).
fn h2_request_block(method: u8, path: &str) -> Vec<u8> {
    assert!(path.len() < 127, "a one-byte HPACK length");
    let mut block = vec![method, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b't']);
    block
}

#[test]
fn an_http2_stream_trickling_its_body_past_the_read_timeout_is_reset_alone() {
    const POST: u8 = 0x83;
    const GET: u8 = 0x82;
    let (p, addr) = start("hello", &["--read-timeout-ms", "1000"]);
    // Stream 1: POST /echo with a body that never ends.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out.extend(h2_frame(
        H2_HEADERS,
        0x4,
        1,
        &h2_request_block(POST, "/echo"),
    ));
    let mut h2 = H2 { s: raw(addr, &out) };
    let writer = std::sync::Arc::new(std::sync::Mutex::new(h2.s.try_clone().unwrap()));
    let started = Instant::now();
    // The body trickles: one byte every 200 ms, for longer than the read timeout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let (writer, stop) = (writer.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..25 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                let frame = h2_frame(H2_DATA, 0, 1, b"x");
                if writer.lock().unwrap().write_all(&frame).is_err() {
                    break;
                }
            }
        })
    };
    // Stream 3, on the same connection after the read timeout passed for stream 1.
    let asker = {
        let writer = writer.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1600));
            let frame = h2_frame(
                H2_HEADERS,
                0x4 | H2_END_STREAM,
                3,
                &h2_request_block(GET, "/"),
            );
            writer.lock().unwrap().write_all(&frame).unwrap();
        })
    };
    let deadline = Instant::now() + WAIT;
    let (mut reset_1, mut answered_3, mut goaway) = (None, false, false);
    while reset_1.is_none() || !answered_3 {
        let Some(f) = h2
            .next(deadline)
            .unwrap_or_else(|e| panic!("{e}; output:\n{}", p.output()))
        else {
            break;
        };
        match (f.kind, f.stream) {
            (H2_RST_STREAM, 1) => reset_1 = Some(started.elapsed()),
            (H2_DATA, 3) if String::from_utf8_lossy(&f.payload).contains("hello from pid") => {
                answered_3 = true
            }
            (H2_GOAWAY, _) => goaway = true,
            _ => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    asker.join().unwrap();
    let reset_after = reset_1.unwrap_or_else(|| {
        panic!(
            "the trickling stream was never reset; output:\n{}",
            p.output()
        )
    });
    println!(
        "[h2 read timeout] stream 1 reset after {reset_after:?}; stream 3 answered: {answered_3}"
    );
    assert!(
        answered_3,
        "the other stream of the connection was not served; output:\n{}",
        p.output()
    );
    assert!(
        !goaway,
        "the whole connection was closed, not just the stream"
    );
    // Reset by the read timeout, not at once (it kept receiving bytes).
    assert!(
        reset_after >= Duration::from_millis(800),
        "reset after {reset_after:?}, before the 1 s read timeout"
    );
}

#[test]
fn sigterm_sends_goaway_and_lets_an_http2_stream_in_flight_finish() {
    let (mut p, addr) = start("hello", &[]);
    let mut h2 = H2::get(addr, "/slow?ms=1500");
    Client::plain().get_ok(&p, &http_url(addr, "/")); // the h2 connection is accepted

    p.signal(libc::SIGTERM);
    p.expect_line("stopped accepting", WAIT);
    assert_refused(&p, addr);

    let deadline = Instant::now() + WAIT;
    let (mut goaway_before_end, mut status, mut body, mut ended) = (false, None, Vec::new(), false);
    let mut kinds = Vec::new();
    while let Some(f) = h2
        .next(deadline)
        .unwrap_or_else(|e| panic!("{e}; frames {kinds:?}; output:\n{}", p.output()))
    {
        kinds.push(f.kind);
        match (f.kind, f.stream) {
            (H2_GOAWAY, 0) => goaway_before_end |= !ended,
            (H2_HEADERS, 1) => {
                // Skip dynamic table size updates; :status 200 is static entry 8.
                let first = f.payload.iter().find(|b| !(0x20..0x40).contains(*b));
                status = first.copied();
                ended |= f.flags & H2_END_STREAM != 0;
            }
            (H2_DATA, 1) => {
                body.extend_from_slice(&f.payload);
                ended |= f.flags & H2_END_STREAM != 0;
            }
            (H2_RST_STREAM, 1) => panic!("the stream in flight was reset; output:\n{}", p.output()),
            _ => {}
        }
    }
    assert!(
        goaway_before_end,
        "no GOAWAY before the response ended; frames {kinds:?}; output:\n{}",
        p.output()
    );
    assert_eq!(status, Some(0x88), "not a 200; frames {kinds:?}");
    assert!(ended, "the stream did not end; frames {kinds:?}");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with(&format!("hello from pid {}", p.pid)),
        "{body:?}"
    );
    let status = expect_exit(&mut p, "after SIGTERM and the last HTTP/2 stream");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// Signal hooks

fn hook_line(stage: &str, sig: &str, pid: u32) -> String {
    format!("hook {stage} {sig} pid={pid}")
}

/// Waits for the post hook of `sig` in `pid`; checks that the pre hook ran before it and
/// each ran once.
fn assert_hooks_ran(p: &Proc, sig: &str, pid: u32) {
    let (pre, post) = (hook_line("pre", sig, pid), hook_line("post", sig, pid));
    wait_exact_line(p, &post);
    let out = p.output();
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let at = |l: &str| lines.iter().position(|x| *x == l);
    let (pre_at, post_at) = (at(&pre), at(&post));
    assert!(
        matches!((pre_at, post_at), (Some(a), Some(b)) if a < b),
        "{pre:?} must come before {post:?}; output:\n{out}"
    );
    for l in [&pre, &post] {
        let n = lines.iter().filter(|x| **x == l.as_str()).count();
        assert_eq!(n, 1, "{l:?} ran {n} times; output:\n{out}");
    }
}

#[test]
fn hooks_usr1_usr2_and_tstp_keep_serving_then_term_exits() {
    let (mut p, addr) = start("hooks", &[]);
    let client = Client::plain();
    let url = http_url(addr, "/");
    let pid = p.pid;

    p.signal(libc::SIGUSR1);
    assert_hooks_ran(&p, "SIGUSR1", pid);
    assert_eq!(client.get_ok(&p, &url).body, "hooked\n");

    p.signal(libc::SIGUSR2);
    assert_hooks_ran(&p, "SIGUSR2", pid);
    p.expect_line("SIGUSR2 ignored", WAIT);
    assert_eq!(client.get_ok(&p, &url).body, "hooked\n");

    p.signal(libc::SIGTSTP);
    wait_exact_line(&p, &hook_line("pre", "SIGTSTP", pid));
    wait_state(&p, pid, 'T');
    // Give the output readers time to bring in a line printed before the stop.
    let early = p.wait_for_nth(
        &hook_line("post", "SIGTSTP", pid),
        1,
        Duration::from_millis(300),
    );
    assert!(
        early.is_none() && proc_state(pid) == Some('T'),
        "the post hook ran before the process was continued; output:\n{}",
        p.output()
    );
    p.signal(libc::SIGCONT);
    assert_hooks_ran(&p, "SIGTSTP", pid);
    assert_ne!(proc_state(pid), Some('T'), "still stopped after SIGCONT");
    assert_eq!(client.get_ok(&p, &url).body, "hooked\n");

    p.signal(libc::SIGTERM);
    assert_hooks_ran(&p, "SIGTERM", pid);
    let status = expect_exit(&mut p, "after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

#[test]
fn hooks_int_runs_pre_and_post_then_exits_0() {
    let (mut p, addr) = start("hooks", &[]);
    Client::plain().get_ok(&p, &http_url(addr, "/"));
    p.signal(libc::SIGINT);
    assert_hooks_ran(&p, "SIGINT", p.pid);
    let status = expect_exit(&mut p, "after SIGINT");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

#[test]
fn hooks_hup_run_around_the_restart() {
    let (mut p, addr) = start("hooks", &[]);
    let client = Client::plain();
    let old = p.pid;

    p.signal(libc::SIGHUP);
    assert_hooks_ran(&p, "SIGHUP", old);
    // The restart happened: a new generation serves the same address.
    let new_addr = p.serving_addr(2);
    assert_eq!(new_addr, addr.to_string(), "output:\n{}", p.output());
    let new = *p
        .generation_pids()
        .last()
        .expect("a second generation logged serving");
    assert_ne!(new, old, "output:\n{}", p.output());
    p.expect_line("restart succeeded", WAIT);
    assert_eq!(client.get_ok(&p, &http_url(addr, "/")).body, "hooked\n");

    // The old generation hands over, drains and exits; the new one did not run the
    // old one's hooks.
    let status = expect_exit(&mut p, "the old generation after the handover");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
    assert_eq!(p.count(&hook_line("pre", "SIGHUP", new)), 0);
    assert_eq!(client.get_ok(&p, &http_url(addr, "/")).body, "hooked\n");

    // Clean up the new generation (Drop would SIGKILL it otherwise).
    common::signal(new, libc::SIGTERM);
    assert_hooks_ran(&p, "SIGTERM", new);
    assert!(
        common::wait_gone(new, WAIT),
        "generation {new} did not exit after SIGTERM; output:\n{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// TLS

struct Certs {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

/// A self-signed certificate for 127.0.0.1 and localhost, in a scratch directory.
fn make_certs(tag: &str) -> Certs {
    let dir = common::scratch_dir(tag);
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let pem = ck.cert.pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Certs { cert, key, pem }
}

fn start_tls(certs: &Certs) -> (Proc, SocketAddr) {
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    start("tls", &["--cert", cert, "--key", key])
}

/// A client trusting only `certs`; `http1_only` or else ALPN offers h2 and http/1.1.
fn tls_client(certs: &Certs, http1_only: bool) -> Client {
    let root = reqwest::Certificate::from_pem(certs.pem.as_bytes()).expect("root cert");
    let mut b = reqwest::Client::builder()
        .add_root_certificate(root)
        .https_only(true);
    if http1_only {
        b = b.http1_only();
    }
    Client::with(b)
}

fn https_url(addr: SocketAddr) -> String {
    format!("https://127.0.0.1:{}/", addr.port())
}

#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn tls_serves_http1_and_http2_by_alpn() {
    let certs = make_certs("tls-alpn");
    let (p, addr) = start_tls(&certs);
    let p = &p;

    let h2 = tls_client(&certs, false).get_ok(p, &https_url(addr));
    assert_eq!(h2.version, reqwest::Version::HTTP_2, "{h2:?}");
    assert!(h2.body.contains("HTTP/2.0"), "{h2:?}");

    let h1 = tls_client(&certs, true).get_ok(p, &https_url(addr));
    assert_eq!(h1.version, reqwest::Version::HTTP_11, "{h1:?}");
    assert!(h1.body.contains("HTTP/1.1"), "{h1:?}");
}

/// Starts the TLS example with these files; it must fail at start, naming `culprit`.
fn assert_tls_start_fails(cert: &Path, key: &Path, culprit: &Path) {
    let mut p = Proc::spawn(
        &example_bin("tls"),
        &[
            "--addr",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let status = expect_exit(&mut p, "a bad TLS file must fail the start");
    assert!(
        !status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
    // The output is read by other threads: wait for the line.
    let named = p.wait_for_nth(&culprit.display().to_string(), 1, WAIT);
    let out = p.output();
    assert!(
        named.is_some(),
        "the error should name {}; output:\n{out}",
        culprit.display()
    );
    assert_eq!(p.count("serving pid="), 0, "it served; output:\n{out}");
}

#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn tls_bad_or_missing_key_fails_at_start_naming_the_file() {
    let certs = make_certs("tls-bad-key");
    let garbage = certs.key.with_file_name("garbage-key.pem");
    std::fs::write(&garbage, "this is not a private key\n").unwrap();
    assert_tls_start_fails(&certs.cert, &garbage, &garbage);

    let missing = certs.key.with_file_name("no-such-key.pem");
    assert_tls_start_fails(&certs.cert, &missing, &missing);

    // A key in PEM form that does not belong to the certificate.
    let other = certs.key.with_file_name("other-key.pem");
    let stranger = rcgen::KeyPair::generate().expect("key pair");
    std::fs::write(&other, stranger.serialize_pem()).unwrap();
    assert_tls_start_fails(&certs.cert, &other, &other);
}

#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn tls_stalled_handshakes_and_plaintext_do_not_disturb_other_clients() {
    let certs = make_certs("tls-stalled");
    let (p, addr) = start_tls(&certs);
    let p = &p;

    // One says nothing; one stops in the middle of a ClientHello record.
    let mut silent = raw(addr, b"");
    let mut partial = raw(addr, &[0x16, 0x03, 0x01, 0x00, 0x80, 0x01, 0x00]);
    let mut plaintext = raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");

    for http1_only in [false, true] {
        tls_client(&certs, http1_only).get_ok(p, &https_url(addr));
    }

    let (got, end, _) = read_to_close(&mut plaintext, WAIT);
    assert!(
        end.closed(),
        "a plaintext request on the TLS port should be closed; output:\n{}",
        p.output()
    );
    assert!(
        !got.starts_with(b"HTTP/"),
        "a plaintext request was answered in plaintext: {:?}",
        String::from_utf8_lossy(&got)
    );

    assert_quiet_and_open(p, &mut silent, Duration::from_millis(300), "silent");
    assert_quiet_and_open(p, &mut partial, Duration::from_millis(300), "partial");
    let again = tls_client(&certs, false).get_ok(p, &https_url(addr));
    assert_eq!(again.version, reqwest::Version::HTTP_2);
}

#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn tls_shutdown_is_not_held_up_by_a_stalled_handshake() {
    let certs = make_certs("tls-stalled-shutdown");
    let (mut p, addr) = start_tls(&certs);
    let mut silent = raw(addr, b"");
    // Accepted (connections are accepted in order) before the drain begins.
    tls_client(&certs, true).get_ok(&p, &https_url(addr));

    p.signal(libc::SIGTERM);
    // The stalled handshake is an idle connection: the drain closes it after its short
    // grace, not after the handshake timeout (30 s) or the hammer time (60 s).
    let (_, end, after) = read_to_close(&mut silent, Duration::from_secs(10));
    assert!(
        end.closed(),
        "a stalled handshake still open {after:?} into the drain; output:\n{}",
        p.output()
    );
    let status = expect_exit(&mut p, "after SIGTERM with a stalled handshake");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
}

// ---------------------------------------------------------------------------------------
// Limits and timeouts

fn request_with_header(path: &str, header_len: usize) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Big: ").into_bytes();
    r.resize(r.len() + header_len, b'a');
    r.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    r
}

/// The status of the answer to a request with one header value of `len` bytes.
fn status_with_header(p: &Proc, addr: SocketAddr, len: usize) -> u16 {
    let (got, end) = send_large(addr, request_with_header("/", len));
    let res = parse_response(&got).unwrap_or_else(|| {
        panic!(
            "no response to a {len}-byte header: {:?} then {end:?}; output:\n{}",
            String::from_utf8_lossy(&got[..got.len().min(300)]),
            p.output()
        )
    });
    res.status
}

#[test]
fn oversized_headers_get_431_below_and_far_above_the_read_buffer() {
    let (p, addr) = start("hello", &["--max-header-bytes", "4096"]);
    let client = Client::plain();
    assert_eq!(status_with_header(&p, addr, 3000), 200, "under the limit");
    // Fits hyper's buffer: refused by the header size check.
    assert_eq!(status_with_header(&p, addr, 6000), 431, "6000 > 4096");
    // Overflows hyper's buffer by far: refused by hyper itself.
    assert_eq!(status_with_header(&p, addr, 300_000), 431, "300 kB > 4096");
    client.get_ok(&p, &http_url(addr, "/"));
}

#[test]
fn oversized_headers_get_431_with_the_default_limit() {
    let (p, addr) = start("hello", &[]);
    assert_eq!(status_with_header(&p, addr, 100_000), 200, "under 1 MiB");
    assert_eq!(status_with_header(&p, addr, 3 << 20), 431, "3 MiB > 1 MiB");
    Client::plain().get_ok(&p, &http_url(addr, "/"));
}

#[test]
fn slowloris_headers_are_cut_off_by_the_read_timeout() {
    let (p, addr) = start("hello", &["--read-timeout-ms", "1000"]);
    let client = Client::plain();
    // The same request, sent at once, is answered.
    let mut whole = raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: abc\r\n\r\n");
    assert_eq!(read_response(&p, &mut whole, "control").status, 200);

    let slowloris = std::thread::spawn(move || {
        trickle(addr, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ", b"abcdefgh")
    });
    // Others are served meanwhile.
    for _ in 0..3 {
        client.get_ok(&p, &http_url(addr, "/"));
        std::thread::sleep(Duration::from_millis(150));
    }
    let (got, end, after) = slowloris.join().unwrap();
    assert!(
        end.closed(),
        "a slowloris client was still connected after {after:?}; output:\n{}",
        p.output()
    );
    assert!(
        after >= Duration::from_millis(500) && after <= Duration::from_secs(6),
        "cut off after {after:?}, expected about the 1 s read timeout; output:\n{}",
        p.output()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains(" 200 ") && !text.contains(" 400 "),
        "the trickled request was answered as if complete or malformed: {text:?}"
    );
    client.get_ok(&p, &http_url(addr, "/"));
}

#[test]
fn a_trickled_body_is_cut_off() {
    let (p, addr) = start("hello", &["--read-timeout-ms", "1000"]);
    let client = Client::plain();
    let head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n";

    // Control: the whole body at once is read and echoed.
    let mut whole = head.to_vec();
    whole.extend_from_slice(&[b'x'; 1000]);
    let mut s = raw(addr, &whole);
    let res = read_response(&p, &mut s, "whole body");
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(String::from_utf8_lossy(&res.body), "read 1000 bytes\n");

    // A handler reading the body: the read timeout cuts the trickle off.
    let reader = std::thread::spawn(move || trickle(addr, head, b"x"));
    // A handler ignoring the body answers at once; the rest of the body is not awaited.
    let (got, end, after) = trickle(
        addr,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n",
        b"x",
    );
    assert!(
        end.closed() && after <= Duration::from_secs(6),
        "a trickled body to a handler that ignores it held the connection: {end:?} after {after:?}"
    );
    let res = parse_response(&got).expect("an answer");
    assert_eq!(res.status, 200, "{res:?}");
    client.get_ok(&p, &http_url(addr, "/"));

    let (got, end, after) = reader.join().unwrap();
    assert!(
        end.closed(),
        "a trickled body was still being read after {after:?}; output:\n{}",
        p.output()
    );
    assert!(
        after >= Duration::from_millis(500) && after <= Duration::from_secs(6),
        "cut off after {after:?}, expected about the 1 s read timeout; output:\n{}",
        p.output()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("read 1000 bytes"), "{text:?}");
    client.get_ok(&p, &http_url(addr, "/"));
}

/// Every request says who is calling: the exact peer and local address over TCP, the
/// peer's credentials over a Unix socket.
#[test]
fn requests_carry_the_peer_address_or_credentials() {
    let dir = std::env::temp_dir().join(format!("ceaseless-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("peer.sock");
    let unix = format!("unix:{}", sock.display());
    let p = Proc::spawn(
        &example_bin("hello"),
        &["--addr", "127.0.0.1:0", "--addr", &unix],
    );
    let addr: SocketAddr = [p.serving_addr(1), p.serving_addr(2)]
        .iter()
        .find_map(|a| a.parse().ok())
        .expect("a TCP server");

    let mut tcp = raw(
        addr,
        b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let me = tcp.local_addr().unwrap();
    let res = read_response(&p, &mut tcp, "GET /peer over TCP");
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        format!("tcp peer={me} local={addr}\n")
    );

    // Over HTTP/2 the handler runs in a stream task of its own: it learns the same.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (version, h2_text) = rt.block_on(async {
        let res = common::load::reqwest_client(true)
            .get(format!("http://{addr}/peer"))
            .send()
            .await
            .expect("GET /peer over h2c");
        (res.version(), res.text().await.expect("the body"))
    });
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert!(
        h2_text.starts_with("tcp peer=127.0.0.1:")
            && h2_text.ends_with(&format!(" local={addr}\n")),
        "{h2_text:?}"
    );

    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    u.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    u.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    // SAFETY: getuid/getgid have no failure modes and no memory effects.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let want = format!("unix uid={uid} gid={gid} pid={}\n", std::process::id());
    println!("[peer] tcp {me}; unix: {:?}", text.lines().last());
    assert!(
        text.ends_with(&want),
        "{text:?}, expected it to end with {want:?}"
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_streaming_response_outlives_the_write_timeout() {
    // 12 chunks, one every 250 ms: three times the 1 s write timeout, always progressing.
    let (p, addr) = start("hello", &["--write-timeout-ms", "1000"]);
    let mut s = raw(
        addr,
        b"GET /stream?chunks=12&bytes=16&every_ms=250 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (got, end, after) = read_to_close(&mut s, WAIT);
    let text = String::from_utf8_lossy(&got);
    let xs = text.matches('x').count();
    println!("[stream] {xs} bytes of body over {after:?}, then {end:?}");
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("0\r\n\r\n") && xs == 12 * 16,
        "the stream was cut short ({xs} of {} bytes, {end:?} after {after:?}): {text:?}; output:\n{}",
        12 * 16,
        p.output()
    );
}

#[test]
fn a_client_that_stops_reading_a_stream_is_cut_after_the_write_timeout() {
    // 4000 chunks of 64 KiB as fast as they go; the client reads nothing for 4 s.
    let (p, addr) = start("hello", &["--write-timeout-ms", "1000"]);
    let mut s = raw(
        addr,
        b"GET /stream?chunks=4000&bytes=65536&every_ms=0 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    std::thread::sleep(Duration::from_secs(4));
    let (got, end, _) = read_to_close(&mut s, WAIT);
    println!(
        "[stalled] read {} bytes after the stall, then {end:?}",
        got.len()
    );
    assert!(
        end.closed() && got.len() < 4000 * 65536,
        "the stalled client was not cut off: {} bytes, {end:?}; output:\n{}",
        got.len(),
        p.output()
    );
    // Others are served meanwhile and after.
    Client::plain().get_ok(&p, &http_url(addr, "/"));
}

#[test]
fn write_timeout_cuts_off_a_slow_handler() {
    let (p, addr) = start("hello", &["--write-timeout-ms", "1000"]);
    let mut s = raw(addr, b"GET /slow?ms=30000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let (got, end, after) = read_to_close(&mut s, WAIT);
    assert!(
        end.closed() && got.is_empty(),
        "expected the connection closed unanswered; got {:?} then {end:?} after {after:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        after >= Duration::from_millis(800) && after <= Duration::from_secs(6),
        "cut off after {after:?}, expected about the 1 s write timeout; output:\n{}",
        p.output()
    );

    // Over HTTP/2 the stream fails at the deadline (the connection may live on).
    let h2c = Client::with(reqwest::Client::builder().http2_prior_knowledge());
    let start = Instant::now();
    let res = h2c.try_get(&http_url(addr, "/slow?ms=30000"));
    assert!(
        res.is_err() && start.elapsed() <= Duration::from_secs(6),
        "an HTTP/2 request past the write timeout: {res:?} after {:?}",
        start.elapsed()
    );
    Client::plain().get_ok(&p, &http_url(addr, "/"));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The idle timeout defaults to the read timeout, as in Go.
    let (p, addr) = start("hello", &["--read-timeout-ms", "1000"]);
    let mut s = raw(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(read_response(&p, &mut s, "keep-alive").status, 200);
    let (got, end, after) = read_to_close(&mut s, WAIT);
    assert!(
        matches!(end, End::Eof) && got.is_empty(),
        "expected a quiet close of the idle connection; got {:?} then {end:?} after {after:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        after >= Duration::from_millis(500) && after <= Duration::from_secs(6),
        "closed after {after:?} idle, expected about 1 s; output:\n{}",
        p.output()
    );
}

#[test]
fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let (p, addr) = start("hello", &[]);
    let client = Client::plain();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut s = raw(addr, bad);
        let (got, end, _) = read_to_close(&mut s, WAIT);
        let what = String::from_utf8_lossy(bad);
        let res = parse_response(&got).unwrap_or_else(|| {
            panic!(
                "{what:?}: no response: {:?} then {end:?}; output:\n{}",
                String::from_utf8_lossy(&got),
                p.output()
            )
        });
        assert!(
            (400..500).contains(&res.status),
            "{what:?}: expected a 4xx, got {res:?}"
        );
        assert!(end.closed(), "{what:?}: the connection stays open: {end:?}");
        client.get_ok(&p, &http_url(addr, "/"));
    }
}

#[test]
fn h2c_prior_knowledge_is_served() {
    let (p, addr) = start("hello", &[]);
    let h2c = Client::with(reqwest::Client::builder().http2_prior_knowledge());
    let reply = h2c.get_ok(&p, &http_url(addr, "/"));
    assert_eq!(reply.version, reqwest::Version::HTTP_2, "{reply:?}");
    assert!(reply.body.contains(&format!("pid {}", p.pid)), "{reply:?}");
    let h1 = Client::plain().get_ok(&p, &http_url(addr, "/"));
    assert_eq!(h1.version, reqwest::Version::HTTP_11, "{h1:?}");
}

#[test]
fn the_protocol_is_told_from_first_bytes_that_arrive_in_pieces() {
    let (p, addr) = start("hello", &[]);
    // HTTP/2 with prior knowledge, its preface split across two writes.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut h2 = H2 {
        s: raw(addr, &preface[..9]),
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut rest = preface[9..].to_vec();
    rest.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    rest.extend(h2_frame(
        H2_HEADERS,
        0x4 | H2_END_STREAM,
        1,
        &h2_request_block(0x82, "/"),
    ));
    h2.s.write_all(&rest).unwrap();
    let deadline = Instant::now() + WAIT;
    let (mut body, mut ended, mut kinds) = (Vec::new(), false, Vec::new());
    while !ended {
        let Some(f) = h2
            .next(deadline)
            .unwrap_or_else(|e| panic!("{e}; frames {kinds:?}; output:\n{}", p.output()))
        else {
            panic!(
                "closed before the answer; frames {kinds:?}; output:\n{}",
                p.output()
            );
        };
        kinds.push(f.kind);
        if f.stream == 1 && matches!(f.kind, H2_HEADERS | H2_DATA) {
            if f.kind == H2_DATA {
                body.extend_from_slice(&f.payload);
            }
            ended = f.flags & H2_END_STREAM != 0;
        }
    }
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with(&format!("hello from pid {}", p.pid)),
        "{body:?}"
    );

    // HTTP/1.1 whose first bytes match the preface's ("P"), then differ, in pieces.
    let mut s = raw(addr, b"P");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"OS").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"T / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, end, _) = read_to_close(&mut s, WAIT);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 "), "{got:?} ({end:?})");
    assert!(end.closed(), "{got:?} ({end:?})");

    // A whole HTTP/1.0 request shorter than the preface.
    let mut s = raw(addr, b"GET / HTTP/1.0\r\n\r\n");
    let (got, end, _) = read_to_close(&mut s, WAIT);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.0 200"), "{got:?} ({end:?})");
    assert!(
        got.contains(&format!("hello from pid {}", p.pid)),
        "{got:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Several servers in one process

#[test]
fn two_servers_in_one_process_serve_and_one_sigterm_drains_both() {
    let dir = common::scratch_dir("multi-port");
    let file = dir.join("addrs");
    std::fs::write(&file, "127.0.0.1:0\n127.0.0.1:0\n").unwrap();
    let mut p = Proc::spawn(
        &example_bin("multi_port"),
        &["--addr-file", file.to_str().unwrap()],
    );
    let addrs: Vec<SocketAddr> = (1..=2)
        .map(|n| p.serving_addr(n).parse().expect("address"))
        .collect();
    assert_ne!(addrs[0], addrs[1], "output:\n{}", p.output());

    let client = Client::plain();
    let mut servers = HashSet::new();
    for a in &addrs {
        let body = client.get_ok(&p, &http_url(*a, "/")).body;
        assert!(body.ends_with(&format!("from pid {}\n", p.pid)), "{body:?}");
        servers.insert(body);
    }
    assert_eq!(servers.len(), 2, "two distinct servers: {servers:?}");

    // An idle keep-alive connection on each: the drain closes them.
    let mut idle: Vec<TcpStream> = addrs
        .iter()
        .map(|a| {
            let mut s = raw(*a, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(read_response(&p, &mut s, "keep-alive").status, 200);
            s
        })
        .collect();

    p.signal(libc::SIGTERM);
    for s in &mut idle {
        let (_, end, after) = read_to_close(s, WAIT);
        assert!(
            end.closed(),
            "an idle connection is still open {after:?} into the drain; output:\n{}",
            p.output()
        );
    }
    let status = expect_exit(&mut p, "after one SIGTERM for two servers");
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        p.output()
    );
    // The output is read by other threads: wait for the lines, then count them.
    for line in ["stopped accepting", "drained; server stopped"] {
        p.wait_for_nth(line, 2, WAIT)
            .unwrap_or_else(|| panic!("not twice {line:?}; output:\n{}", p.output()));
        assert_eq!(p.count(line), 2, "output:\n{}", p.output());
    }
    for a in addrs {
        assert_refused(&p, a);
    }
}

/// `--drain-spread-ms`: at the drain, busy keep-alive connections are told to close one
/// after another over the spread, not all at once: some keep being served (without
/// `Connection: close`) after the drain began, every one is closed by the end, and
/// nothing fails.
#[test]
fn the_drain_spreads_the_closes_of_busy_connections() {
    let (mut p, addr) = start("hello", &["--drain-spread-ms", "3000"]);
    let addr = addr.to_string();
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (addr, draining) = (addr.clone(), draining.clone());
            std::thread::spawn(move || -> Result<(u32, bool), String> {
                let mut s = common::load::connect_tcp(&addr).map_err(|e| e.to_string())?;
                // Responses kept alive after the drain began, and whether it closed.
                let mut kept_after = 0;
                for _ in 0..100_000 {
                    // Sent once the drain had begun (its log line was seen)?
                    let after = draining.load(std::sync::atomic::Ordering::Acquire);
                    let r = common::load::exchange_blocking(&mut s, "/")?;
                    if r.status != 200 {
                        return Err(format!("status {}", r.status));
                    }
                    if r.close {
                        return Ok((kept_after, true));
                    }
                    if after {
                        kept_after += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok((kept_after, false))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM);
    p.expect_line("stopped accepting", WAIT);
    draining.store(true, std::sync::atomic::Ordering::Release);
    let ends: Vec<(u32, bool)> = loops
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{e}; output:\n{}", p.output()))
        })
        .collect();
    assert!(
        ends.iter().all(|(_, closed)| *closed),
        "a connection was never told to close: {ends:?}"
    );
    assert!(
        ends.iter().any(|(kept, _)| *kept > 0),
        "every busy connection was closed at once, no spread: {ends:?}"
    );
    let status = expect_exit(&mut p, "after the spread drain");
    assert!(status.success(), "{status}; output:\n{}", p.output());
}

/// `Server::tls_config`: the application's own rustls configuration (here the tls
/// example's `--client-ca`, which asks every client for a certificate): a client with a
/// certificate signed by that CA is served over both protocols, one without is refused,
/// and the drain works as with PEM files.
#[test]
#[cfg_attr(not(feature = "tls-ring"), ignore = "needs the `tls-ring` feature")]
fn an_application_rustls_config_is_served_with_client_certificates() {
    let certs = make_certs("tls-mtls");
    let dir = certs.cert.parent().unwrap().to_path_buf();
    // A CA, and a client certificate it signed.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let identity = format!("{}{}", client_cert.pem(), client_key.serialize_pem());

    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let (mut p, addr) = start(
        "tls",
        &[
            "--cert",
            cert,
            "--key",
            key,
            "--client-ca",
            ca_pem.to_str().unwrap(),
        ],
    );
    let root = || reqwest::Certificate::from_pem(certs.pem.as_bytes()).unwrap();
    let with_identity = |http1_only: bool| {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(root())
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
            .https_only(true);
        if http1_only {
            b = b.http1_only();
        }
        Client::with(b)
    };
    for http1_only in [true, false] {
        let body = with_identity(http1_only).get_ok(&p, &https_url(addr)).body;
        let want = if http1_only { "HTTP/1.1" } else { "HTTP/2.0" };
        assert!(body.contains(want), "{body:?}");
    }
    // No client certificate: the handshake is refused.
    let stranger = Client::with(
        reqwest::Client::builder()
            .add_root_certificate(root())
            .https_only(true),
    );
    assert!(
        stranger.try_get(&https_url(addr)).is_err(),
        "served a client without a certificate"
    );
    p.signal(libc::SIGTERM);
    let status = expect_exit(&mut p, "TERM after mutual TLS");
    assert!(status.success(), "{status}; output:\n{}", p.output());
}
