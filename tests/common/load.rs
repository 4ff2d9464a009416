//! HTTP/1.1 by hand, and the load: concurrent clients that count every request and
//! check which generation answered it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::generations::LONG;

/// The longest a client waits for one response before counting it as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// HTTP/1.1 by hand: one request, a response read by its Content-Length
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub close: bool,
    pub body: String,
}

pub fn request_bytes(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: ceaseless.test\r\n\r\n").into_bytes()
}

/// Parses one response from the front of `buf`: Ok(None) while it is incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return if buf.len() > 64 * 1024 {
            Err("response head larger than 64 KiB".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut len, mut close) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unexpected Transfer-Encoding: {v}"));
        }
    }
    let len = len.ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    if buf.len() < head_end + len {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    Ok(Some((
        Response {
            status,
            close,
            body,
        },
        head_end + len,
    )))
}

/// One request and its response on an open connection (async).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> Result<Response, String> {
    s.write_all(&request_bytes(path))
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    loop {
        if let Some((r, used)) = parse_response(&buf)? {
            if used != buf.len() {
                return Err(format!(
                    "{} unexpected bytes after the response",
                    buf.len() - used
                ));
            }
            return Ok(r);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) => {
                return Err(format!(
                    "connection closed after {} bytes of the response",
                    buf.len()
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(format!(
                    "reading the response ({} bytes in): {e}",
                    buf.len()
                ))
            }
        }
    }
}

/// One request and its response on an open connection (blocking).
pub fn exchange_blocking<S: Read + Write>(s: &mut S, path: &str) -> Result<Response, String> {
    s.write_all(&request_bytes(path))
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::new();
    loop {
        if let Some((r, _)) = parse_response(&buf)? {
            return Ok(r);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "connection closed after {} bytes of the response",
                    buf.len()
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(format!(
                    "reading the response ({} bytes in): {e}",
                    buf.len()
                ))
            }
        }
    }
}

pub fn connect_tcp(addr: &str) -> io::Result<StdTcpStream> {
    let sa: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let s = StdTcpStream::connect_timeout(&sa, Duration::from_secs(10))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    Ok(s)
}

/// `GET path` on a fresh TCP connection; panics with the reason on failure.
pub fn get_tcp(addr: &str, path: &str) -> Response {
    let mut s = connect_tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    exchange_blocking(&mut s, path).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// `POST path` with an empty body on a fresh TCP connection: (status, body).
pub fn post_tcp(addr: &str, path: &str) -> (u16, String) {
    let mut s = connect_tcp(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// `GET path` on a fresh connection to the Unix socket at `path`; panics with the
/// reason on failure.
pub fn get_unix(sock: &std::path::Path, path: &str) -> Response {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    exchange_blocking(&mut s, path)
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", sock.display()))
}

/// The pid named by a response body ("... pid 1234 ...").
pub fn body_pid(body: &str) -> Option<u32> {
    body.split("pid ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The version named by a hello response body ("..., version v2").
pub fn body_version(body: &str) -> Option<&str> {
    body.split("version ").nth(1).map(str::trim)
}

/// An error with its sources, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// ---------------------------------------------------------------------------------------
// Load: concurrent clients that count every request and check who answered it
// ---------------------------------------------------------------------------------------

/// Who must answer, while the test knows it: every older generation is gone and the
/// next restart has not begun.
#[derive(Clone, Debug)]
pub struct Expect {
    pub pid: u32,
    pub version: Option<String>,
}

/// A check of every successful response body, on top of the expectation.
pub type BodyCheck = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub wrong: AtomicU64,
    pub checked: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connects refused (counted among the failed too): nothing listened at that moment.
    pub refused: AtomicU64,
    pub notes: Mutex<Vec<String>>,
    pub by_pid: Mutex<BTreeMap<u32, u64>>,
    /// Failed requests by client.
    pub failed_by: Mutex<BTreeMap<String, u64>>,
    /// Answers other than 200 (counted among the failed too), by status.
    pub by_status: Mutex<BTreeMap<u16, u64>>,
}

impl Tally {
    /// Counts a failed request of client `who`.
    pub fn fail(&self, who: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .failed_by
            .lock()
            .unwrap()
            .entry(who.to_string())
            .or_default() += 1;
    }

    /// Keeps the first problems, stamped with the UTC time of day as the servers' logs
    /// are, to find what the server did at that moment.
    pub fn note(&self, s: String) {
        let mut n = self.notes.lock().unwrap();
        if n.len() < 20 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let (secs, ms) = (now.as_secs() % 86_400, now.subsec_millis());
            let (h, m, sec) = (secs / 3600, secs / 60 % 60, secs % 60);
            n.push(format!("{h:02}:{m:02}:{sec:02}.{ms:03}Z {s}"));
        }
    }
}

#[derive(Clone)]
pub struct Shared {
    stop: Arc<AtomicBool>,
    /// (epoch, expectation): a response is checked only if the epoch did not change
    /// while its request was in flight.
    expect: Arc<RwLock<(u64, Option<Expect>)>>,
    pub tally: Arc<Tally>,
    check: Option<BodyCheck>,
}

impl Shared {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Counts a failed connect that was refused.
    pub fn count_refused(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.tally.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn expectation(&self) -> (u64, Option<Expect>) {
        self.expect.read().unwrap().clone()
    }

    pub fn record(
        &self,
        who: &str,
        epoch: u64,
        exp: Option<Expect>,
        res: Result<(u16, String), String>,
    ) {
        let t = &self.tally;
        let body = match res {
            Ok((200, body)) => body,
            Ok((status, body)) => {
                *t.by_status.lock().unwrap().entry(status).or_default() += 1;
                t.fail(who);
                t.note(format!("{who}: status {status}: {body:?}"));
                return;
            }
            Err(e) => {
                t.fail(who);
                t.note(format!("{who}: {e}"));
                return;
            }
        };
        t.ok.fetch_add(1, Ordering::Relaxed);
        let pid = body_pid(&body);
        *t.by_pid
            .lock()
            .unwrap()
            .entry(pid.unwrap_or(0))
            .or_default() += 1;
        if let Some(check) = &self.check {
            if let Err(e) = check(&body) {
                t.wrong.fetch_add(1, Ordering::Relaxed);
                t.note(format!("{who}: {e}"));
            }
        }
        let Some(e) = exp else { return };
        if self.expect.read().unwrap().0 != epoch {
            return; // a restart may have begun while this request was in flight
        }
        t.checked.fetch_add(1, Ordering::Relaxed);
        let version_ok = e.version.is_none() || body_version(&body) == e.version.as_deref();
        if pid != Some(e.pid) || !version_ok {
            t.wrong.fetch_add(1, Ordering::Relaxed);
            t.note(format!(
                "{who}: expected an answer from pid {} version {:?}, got {body:?}",
                e.pid, e.version
            ));
        }
    }
}

/// One client of the load.
pub enum Client {
    /// A reqwest client (pooled keep-alive, HTTP/1.1 or HTTP/2) sending `GET url`.
    Http(reqwest::Client, String),
    /// One raw HTTP/1.1 keep-alive connection at a time, over TCP.
    Tcp(SocketAddr),
    /// The same over a Unix socket.
    Unix(PathBuf),
    /// Every request on a new TCP connection, closed once the response is read: each
    /// request needs the listening socket to accept.
    FreshTcp(SocketAddr),
    /// The same over a Unix socket: each request also needs the socket file.
    FreshUnix(PathBuf),
}

/// A plain-HTTP reqwest client.
pub fn reqwest_client(h2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT);
    let b = if h2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().expect("reqwest client")
}

/// `tasks` tasks sharing one pooled reqwest client.
pub fn shared_client(client: reqwest::Client, url: &str, tasks: usize) -> Vec<Client> {
    (0..tasks)
        .map(|_| Client::Http(client.clone(), url.to_string()))
        .collect()
}

pub struct Load {
    rt: tokio::runtime::Runtime,
    pub shared: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What a load saw, once stopped.
#[derive(Debug)]
pub struct Summary {
    pub ok: u64,
    pub failed: u64,
    pub wrong: u64,
    pub checked: u64,
    pub reconnects: u64,
    pub refused: u64,
    pub notes: Vec<String>,
    pub by_pid: BTreeMap<u32, u64>,
    pub failed_by: BTreeMap<String, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub secs: f64,
}

impl Summary {
    pub fn print(&self, tag: &str) {
        println!(
            "[{tag}] {} requests answered, {} failed, {} by the wrong generation; {} checked \
             against the expected generation; {} reconnects after Connection: close; \
             {:.1} s; responses by pid: {:?}",
            self.ok, self.failed, self.wrong, self.checked, self.reconnects, self.secs, self.by_pid
        );
    }

    /// Zero failed requests and no answer from a generation that should be gone.
    pub fn assert_clean(&self, tag: &str) {
        assert!(
            self.failed == 0 && self.wrong == 0,
            "[{tag}] {} failed requests and {} answers from the wrong generation out of {}; \
             first problems:\n  {}",
            self.failed,
            self.wrong,
            self.ok + self.failed,
            self.notes.join("\n  ")
        );
        assert!(self.ok > 0, "[{tag}] no request was answered at all");
    }
}

impl Load {
    pub fn start(tag: &str, clients: impl FnOnce() -> Vec<Client>) -> Load {
        Self::start_checked(tag, None, clients)
    }

    pub fn start_checked(
        tag: &str,
        check: Option<BodyCheck>,
        clients: impl FnOnce() -> Vec<Client>,
    ) -> Load {
        let rt = super::runtime();
        let clients = {
            let _in_rt = rt.enter();
            clients()
        };
        let shared = Shared {
            stop: Arc::default(),
            expect: Arc::new(RwLock::new((0, None))),
            tally: Arc::default(),
            check,
        };
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| rt.spawn(run_client(format!("{tag} client {i}"), c, shared.clone())))
            .collect();
        Load {
            rt,
            shared,
            tasks,
            started: Instant::now(),
        }
    }

    /// From now on (until the next call) only `e` may answer.
    pub fn expect(&self, e: Option<Expect>) {
        let mut g = self.shared.expect.write().unwrap();
        g.0 += 1;
        g.1 = e;
    }

    pub fn checked(&self) -> u64 {
        self.shared.tally.checked.load(Ordering::Relaxed)
    }

    /// Waits until `n` more responses were checked against the expectation.
    pub fn wait_checked(&self, n: u64, what: &str) {
        let target = self.checked() + n;
        let deadline = Instant::now() + LONG;
        while self.checked() < target {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} of {n} responses from the expected generation within {LONG:?}; \
                 {} requests failed; first problems: {:?}",
                n + self.checked() - target,
                self.shared.tally.failed.load(Ordering::Relaxed),
                self.shared.tally.notes.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every client, closes every connection, and reports.
    pub fn stop(self) -> Summary {
        self.shared.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.rt.block_on(async {
            for t in tasks {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(5), t).await;
            }
        });
        // Dropping the runtime closes every client connection, pooled ones included.
        self.rt.shutdown_timeout(Duration::from_secs(5));
        let t = &self.shared.tally;
        Summary {
            ok: t.ok.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            wrong: t.wrong.load(Ordering::Relaxed),
            checked: t.checked.load(Ordering::Relaxed),
            reconnects: t.reconnects.load(Ordering::Relaxed),
            refused: t.refused.load(Ordering::Relaxed),
            notes: t.notes.lock().unwrap().clone(),
            by_pid: t.by_pid.lock().unwrap().clone(),
            failed_by: t.failed_by.lock().unwrap().clone(),
            by_status: t.by_status.lock().unwrap().clone(),
            secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

pub async fn run_client(name: String, c: Client, sh: Shared) {
    match c {
        Client::Http(client, url) => http_loop(name, client, url, sh).await,
        Client::Tcp(addr) => raw_loop(name, move || tokio::net::TcpStream::connect(addr), sh).await,
        Client::Unix(path) => {
            raw_loop(
                name,
                move || tokio::net::UnixStream::connect(path.clone()),
                sh,
            )
            .await
        }
        Client::FreshTcp(addr) => {
            fresh_loop(name, move || tokio::net::TcpStream::connect(addr), sh).await
        }
        Client::FreshUnix(path) => {
            fresh_loop(
                name,
                move || tokio::net::UnixStream::connect(path.clone()),
                sh,
            )
            .await
        }
    }
}

pub async fn http_loop(name: String, client: reqwest::Client, url: String, sh: Shared) {
    while !sh.stopped() {
        let (epoch, exp) = sh.expectation();
        let res = async {
            let r = client.get(&url).send().await.map_err(|e| chain(&e))?;
            let status = r.status().as_u16();
            let body = r
                .text()
                .await
                .map_err(|e| format!("reading the body: {}", chain(&e)))?;
            Ok((status, body))
        }
        .await;
        let failed = res.is_err();
        sh.record(&name, epoch, exp, res);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A keep-alive HTTP/1.1 client on one connection at a time: it reconnects only after a
/// response carrying `Connection: close`; any other end of the connection is a failure.
pub async fn raw_loop<S, F, Fut>(name: String, connect: F, sh: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut conn: Option<S> = None;
    while !sh.stopped() {
        let (epoch, exp) = sh.expectation();
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, connect()).await {
                Ok(Ok(s)) => conn.insert(s),
                Ok(Err(e)) => {
                    sh.count_refused(&e);
                    sh.record(&name, epoch, exp, Err(format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    sh.record(&name, epoch, exp, Err("connect timed out".into()));
                    continue;
                }
            },
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, "/")).await {
            Ok(Ok(r)) => {
                if r.close {
                    conn = None;
                    sh.tally.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                sh.record(&name, epoch, exp, Ok((r.status, r.body)));
            }
            Ok(Err(e)) => {
                conn = None;
                sh.record(&name, epoch, exp, Err(e));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                conn = None;
                sh.record(&name, epoch, exp, Err("no response in time".into()));
            }
        }
    }
}

/// A client that opens a new connection for every request and closes it once the
/// response is read: a connect that fails, or a response that never comes, is a failure.
pub async fn fresh_loop<S, F, Fut>(name: String, connect: F, sh: Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    while !sh.stopped() {
        let (epoch, exp) = sh.expectation();
        let res = async {
            let mut s = match tokio::time::timeout(REQUEST_TIMEOUT, connect()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    sh.count_refused(&e);
                    return Err(format!("connect: {e}"));
                }
                Err(_) => return Err("connect timed out".to_string()),
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut s, "/")).await {
                Ok(r) => r.map(|r| (r.status, r.body)),
                Err(_) => Err("no response in time".to_string()),
            }
        }
        .await;
        let failed = res.is_err();
        sh.record(&name, epoch, exp, res);
        if failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
