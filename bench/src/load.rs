//! The load generator: keep-alive clients over HTTP/1.1, h2c, and TLS (HTTP/1.1 or h2 by
//! ALPN), every request's latency in a histogram, every failure counted by kind.
//!
//! What counts as a failure: a connection that cannot be made, a request that errs
//! (reset, closed mid-answer, timed out), a non-2xx answer, a body that cannot be read.
//! What does not: a request the client never sent because the server had announced it
//! would close the connection (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), and an
//! HTTP/2 stream the server refused by GOAWAY before processing it (RFC 9113 §6.8: safe
//! to retry, and clients do). Those are counted apart as "retried" and sent again on a
//! new connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams per HTTP/2 connection.
pub const H2_STREAMS_PER_CONN: usize = 8;
/// Distinct failure descriptions kept (the rest are counted as "other").
const MAX_KINDS: usize = 24;

/// The client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    TlsH1,
    TlsH2,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::H1, Proto::H2, Proto::TlsH1, Proto::TlsH2];

    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2c",
            Proto::TlsH1 => "tls-h1",
            Proto::TlsH2 => "tls-h2",
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        Proto::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "h2" && *p == Proto::H2))
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Proto::TlsH1 | Proto::TlsH2)
    }

    pub fn is_h2(self) -> bool {
        matches!(self, Proto::H2 | Proto::TlsH2)
    }
}

/// Where and how to send the load.
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// With the ALPN list for `proto` set.
    pub tls: Option<Arc<ClientConfig>>,
    host: String,
    uri: http::Uri,
}

impl Target {
    pub fn new(addr: SocketAddr, proto: Proto, tls: Option<Arc<ClientConfig>>) -> Target {
        let host = if proto.is_tls() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        let scheme = if proto.is_tls() { "https" } else { "http" };
        // HTTP/2 needs the scheme and authority; HTTP/1.1 sends the origin form.
        let uri = if proto.is_h2() {
            format!("{scheme}://{host}/").parse().expect("valid uri")
        } else {
            http::Uri::from_static("/")
        };
        Target {
            addr,
            proto,
            tls,
            host,
            uri,
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut b = Request::get(self.uri.clone());
        if !self.proto.is_h2() {
            b = b.header(header::HOST, &self.host);
        }
        b.body(Empty::new()).expect("valid request")
    }
}

/// Shared switches of a running load.
#[derive(Default)]
pub struct Control {
    stop: AtomicBool,
    /// 0: steady; [`STARTING`] or [`HANDING_OVER`]: a restart window.
    window: AtomicU8,
}

/// The restart window from the SIGHUP until the new generation's first answer: the new
/// generation is starting (on the same CPU as the loaded old one, when pinned).
pub const STARTING: u8 = 1;
/// The restart window from the new generation's first answer until the old one exits:
/// the old one drains, its clients reconnect.
pub const HANDING_OVER: u8 = 2;

impl Control {
    /// Requests that start from now on are counted in the restart window's `phase`
    /// (0: none).
    pub fn set_window(&self, phase: u8) {
        self.window.store(phase, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// What a load saw.
pub struct Stats {
    /// Latency (µs) of successful requests outside restart windows.
    pub steady: Histogram<u64>,
    /// Latency (µs) of successful requests that started inside a restart window.
    pub window: Histogram<u64>,
    /// The part of `window` that started while the new generation was starting.
    pub window_starting: Histogram<u64>,
    pub ok: u64,
    pub ok_window: u64,
    pub failed: u64,
    pub failed_window: u64,
    pub retried: u64,
    pub connections: u64,
    pub failures: BTreeMap<String, u64>,
    pub retries: BTreeMap<String, u64>,
    /// Every successful request: when it started (ms since [`epoch`]) and its latency
    /// (µs), for the latency-over-time picture.
    pub timeline: Vec<(u32, u32)>,
}

/// The instant the bench's clock for timelines starts (its first use).
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Stats {
            steady: h(),
            window: h(),
            window_starting: h(),
            ok: 0,
            ok_window: 0,
            failed: 0,
            failed_window: 0,
            retried: 0,
            connections: 0,
            failures: BTreeMap::new(),
            retries: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    pub fn merge(&mut self, o: Stats) {
        self.steady.add(&o.steady).expect("same bounds");
        self.window.add(&o.window).expect("same bounds");
        self.window_starting
            .add(&o.window_starting)
            .expect("same bounds");
        self.ok += o.ok;
        self.ok_window += o.ok_window;
        self.failed += o.failed;
        self.failed_window += o.failed_window;
        self.retried += o.retried;
        self.connections += o.connections;
        for (k, v) in o.failures {
            count(&mut self.failures, k, v);
        }
        for (k, v) in o.retries {
            count(&mut self.retries, k, v);
        }
        self.timeline.extend(o.timeline);
    }

    /// All successful requests' latencies, windows included.
    pub fn all(&self) -> Histogram<u64> {
        let mut h = self.steady.clone();
        h.add(&self.window).expect("same bounds");
        h
    }

    fn ok(&mut self, started: Instant, window: u8) {
        let latency = started.elapsed();
        let us = latency.as_micros().max(1) as u64;
        let at = started.saturating_duration_since(epoch()).as_millis();
        self.timeline.push((
            u32::try_from(at).unwrap_or(u32::MAX),
            us.min(u64::from(u32::MAX)) as u32,
        ));
        if window != 0 {
            self.ok_window += 1;
            self.window.saturating_record(us);
            if window == STARTING {
                self.window_starting.saturating_record(us);
            }
        } else {
            self.steady.saturating_record(us);
        }
        self.ok += 1;
    }

    fn fail(&mut self, kind: String, window: u8) {
        self.failed += 1;
        if window != 0 {
            self.failed_window += 1;
        }
        count(&mut self.failures, kind, 1);
    }

    fn retry(&mut self, kind: String) {
        self.retried += 1;
        count(&mut self.retries, kind, 1);
    }
}

fn count(map: &mut BTreeMap<String, u64>, kind: String, n: u64) {
    if map.len() >= MAX_KINDS && !map.contains_key(&kind) {
        *map.entry("other".into()).or_default() += n;
    } else {
        *map.entry(kind).or_default() += n;
    }
}

/// A running load.
pub struct Load {
    pub control: Arc<Control>,
    tasks: Vec<JoinHandle<Stats>>,
    started: Instant,
}

impl Load {
    /// Starts `concurrency` request loops against `target`: as many HTTP/1.1
    /// connections, or HTTP/2 connections of [`H2_STREAMS_PER_CONN`] streams each.
    pub fn start(rt: &Runtime, target: Arc<Target>, concurrency: usize) -> Load {
        let control = Arc::new(Control::default());
        let mut tasks = Vec::new();
        if target.proto.is_h2() {
            let conns = concurrency.div_ceil(H2_STREAMS_PER_CONN).max(1);
            for i in 0..conns {
                // Spread the streams so that they add up to `concurrency`.
                let streams = concurrency / conns + usize::from(i < concurrency % conns);
                tasks.push(rt.spawn(h2_conn(target.clone(), control.clone(), streams.max(1))));
            }
        } else {
            for _ in 0..concurrency.max(1) {
                tasks.push(rt.spawn(h1_conn(target.clone(), control.clone())));
            }
        }
        Load {
            control,
            tasks,
            started: Instant::now(),
        }
    }

    /// Stops the load (requests in flight finish) and returns what it saw, with the
    /// time it ran.
    pub fn stop(self, rt: &Runtime) -> (Stats, Duration) {
        self.control.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut total = Stats::new();
        rt.block_on(async {
            for t in self.tasks {
                match t.await {
                    Ok(s) => total.merge(s),
                    Err(e) => total.fail(format!("load task failed: {e}"), 0),
                }
            }
        });
        (total, elapsed)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A new connection, TLS handshake included.
async fn connect(target: &Target) -> Result<Pin<Box<dyn Io>>, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {}", io_kind(&e)))?;
    let _ = tcp.set_nodelay(true);
    let Some(cfg) = &target.tls else {
        return Ok(Box::pin(tcp));
    };
    let name = ServerName::try_from("localhost").expect("valid name");
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls handshake: {}", io_kind(&e)))?;
    let want: &[u8] = if target.proto.is_h2() {
        b"h2"
    } else {
        b"http/1.1"
    };
    if tls.get_ref().1.alpn_protocol() != Some(want) {
        return Err("tls: ALPN did not choose the requested protocol".into());
    }
    Ok(Box::pin(tls))
}

/// An IO error's kind, without the details that would make every error distinct.
fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => format!("{:?}: {e}", e.kind()),
    }
}

/// How one request ended.
enum Outcome {
    Ok {
        close: bool,
    },
    Fail(String),
    /// Never processed by the server, by its own account: sent again.
    Retry(String),
}

/// Sorts a client error into a failure or a safe retry.
fn classify(e: &hyper::Error) -> Outcome {
    use std::error::Error as _;
    if e.is_canceled() {
        // hyper: the connection closed before this request was written.
        return Outcome::Retry("not sent: connection closed first".into());
    }
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.is_go_away() && h2e.is_remote() && h2e.reason() == Some(h2::Reason::NO_ERROR) {
                return Outcome::Retry("h2: stream beyond GOAWAY's last stream id".into());
            }
            if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::Retry("h2: REFUSED_STREAM".into());
            }
            return Outcome::Fail(format!("h2: {h2e}"));
        }
        if let Some(ioe) = s.downcast_ref::<std::io::Error>() {
            return Outcome::Fail(format!("{e}: {}", io_kind(ioe)));
        }
        src = s.source();
    }
    Outcome::Fail(e.to_string())
}

/// Sends one request and reads its answer.
async fn exchange<F, Fut>(send: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
{
    let work = async {
        let res = match send().await {
            Ok(r) => r,
            Err(e) => return classify(&e),
        };
        let status = res.status();
        let close = res
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        match res.into_body().collect().await {
            Ok(_) if status.is_success() => Outcome::Ok { close },
            Ok(_) => Outcome::Fail(format!("status {}", status.as_u16())),
            Err(e) => match classify(&e) {
                Outcome::Fail(k) => Outcome::Fail(format!("body: {k}")),
                other => other,
            },
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(o) => o,
        Err(_) => Outcome::Fail("timeout".into()),
    }
}

/// One HTTP/1.1 keep-alive connection after another, one request at a time.
async fn h1_conn(target: Arc<Target>, ctl: Arc<Control>) -> Stats {
    let mut st = Stats::new();
    while !ctl.stopped() {
        let window = ctl.window.load(Ordering::Relaxed);
        let io = match connect(&target).await {
            Ok(io) => io,
            Err(e) => {
                st.fail(e, window);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        st.connections += 1;
        let (mut tx, conn) = match http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await {
            Ok(x) => x,
            Err(e) => {
                st.fail(format!("h1 handshake: {e}"), window);
                continue;
            }
        };
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        while !ctl.stopped() {
            if tx.ready().await.is_err() {
                break; // closed while idle, before we sent anything: reconnect
            }
            let window = ctl.window.load(Ordering::Relaxed);
            let t = Instant::now();
            let req = target.request();
            match exchange(|| tx.send_request(req)).await {
                Outcome::Ok { close } => {
                    st.ok(t, window);
                    if close {
                        break; // as every client does: reconnect
                    }
                }
                Outcome::Fail(k) => {
                    st.fail(k, window);
                    break;
                }
                Outcome::Retry(k) => {
                    st.retry(k);
                    break;
                }
            }
        }
        drop(tx);
        driver.abort();
    }
    st
}

/// One HTTP/2 connection after another, `streams` request loops on each.
async fn h2_conn(target: Arc<Target>, ctl: Arc<Control>, streams: usize) -> Stats {
    let mut st = Stats::new();
    while !ctl.stopped() {
        let window = ctl.window.load(Ordering::Relaxed);
        let io = match connect(&target).await {
            Ok(io) => io,
            Err(e) => {
                st.fail(e, window);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        st.connections += 1;
        let (tx, conn) =
            match http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), TokioIo::new(io))
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    st.fail(format!("h2 handshake: {e}"), window);
                    continue;
                }
            };
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut loops = tokio::task::JoinSet::new();
        for _ in 0..streams {
            loops.spawn(h2_stream(tx.clone(), target.clone(), ctl.clone()));
        }
        drop(tx);
        while let Some(r) = loops.join_next().await {
            match r {
                Ok(s) => st.merge(s),
                Err(e) => st.fail(format!("stream task failed: {e}"), 0),
            }
        }
        driver.abort();
    }
    st
}

/// One request at a time on a shared HTTP/2 connection, until it goes away.
async fn h2_stream(
    mut tx: http2::SendRequest<Empty<Bytes>>,
    target: Arc<Target>,
    ctl: Arc<Control>,
) -> Stats {
    let mut st = Stats::new();
    while !ctl.stopped() {
        if tx.ready().await.is_err() {
            break; // the connection is gone: the owner reconnects
        }
        let window = ctl.window.load(Ordering::Relaxed);
        let t = Instant::now();
        let req = target.request();
        match exchange(|| tx.send_request(req)).await {
            Outcome::Ok { .. } => st.ok(t, window),
            Outcome::Fail(k) => {
                st.fail(k, window);
                break;
            }
            Outcome::Retry(k) => {
                st.retry(k);
                break;
            }
        }
    }
    st
}

/// The client TLS configuration: trusts `cert_der` only, offers `alpn`.
pub fn client_config(
    cert_der: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der.clone()).expect("a valid certificate");
    #[allow(deprecated)] // ring's provider: rustls deprecates it for post-quantum's sake
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}
