//! Serving one connection: HTTP/1.1 and HTTP/2 through hyper-util's auto builder, the
//! timeouts, and the lame-duck drain.
//!
//! # The drain, and why not `graceful_shutdown()` at once
//! On an HTTP/1 connection that sits between two requests, hyper's graceful shutdown
//! closes the socket at once, even when the client's next request is already on the
//! wire; and a connection that has not sent its first bytes yet is dropped. Every such
//! client would see an error. So when the drain begins:
//! - HTTP/1 responses carry `Connection: close` from then on (hyper closes the
//!   connection after writing such a response), so a busy keep-alive client finishes
//!   its request and reconnects (to the new generation);
//! - HTTP/2 connections get a graceful GOAWAY at once: streams in flight complete, and
//!   the client opens new ones elsewhere;
//! - a connection that stays idle for [`DEFAULT_DRAIN_GRACE`] (no request in flight, no
//!   byte received) is closed with `graceful_shutdown()`: a client that was about to
//!   send is answered rather than reset, and a brand-new connection gets the chance to
//!   send its request;
//! - a TLS handshake still under way is abandoned once it has received nothing for the
//!   same grace: a client that stalls its handshake must not hold the drain up until the
//!   handshake timeout or the hammer.
//!
//! Each connection's "requests in flight" and "last activity" are two atomics touched by
//! the service wrapper and the IO wrapper: no lock on the request path.
//!
//! # Timeouts, in Go's sense
//! - read timeout: from the first byte of a request until its body is read, headers
//!   included: the IO wrapper fails a read that is still waiting past the deadline,
//!   until the response starts. (hyper's own header read timer is left off: it
//!   duplicated this deadline at the price of a timer armed and dropped on every request,
//!   the largest single cost of the wrapper in the benchmark's profile.) Keep-alive
//!   idleness is the idle timeout's.
//! - write timeout: the handler must start its response within it, from the end of the
//!   request headers (else the connection is closed, or the HTTP/2 stream reset); then a
//!   write that makes no progress for that long (a client that stopped reading) closes
//!   the connection. A streaming response (server-sent events, a long download, a gRPC
//!   server stream) is never cut while the client keeps reading, however long it runs
//!   and however long the application stays silent between two chunks.
//! - max header bytes: 431 for a request whose headers are larger.
//!
//! # Upgraded connections (WebSockets)
//! A connection that switched protocols (`101`) stays one of its server's open
//! connections until the upgraded IO is dropped: the drain waits for it, and hammer time
//! (or SIGUSR2 during a drain) closes it — its reads and writes fail from then on. The
//! HTTP read, write and idle timeouts stop applying to it; what applies instead is the
//! application's own protocol (WebSocket pings, say) and the hammer. The application
//! learns that the drain began from the [`Drain`] request extension, to send its close
//! frame.
//!
//! # Request extensions
//! Every request carries a [`Drain`] and a [`ConnInfo`] (the peer's address, or its
//! credentials on a Unix socket); with the `axum` feature, TCP requests also carry
//! axum's `ConnectInfo<SocketAddr>`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::duration::millis;
use crate::lifecycle::{Drain, Watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may stay idle during a drain before it is closed.
pub(crate) const DEFAULT_DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Milliseconds since the first call, on a monotonic clock: cheap to store in atomics.
fn now_ms() -> u64 {
    millis(epoch().elapsed()) + 1
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The instant `ms` (see [`now_ms`]) stands for; far in the future when it cannot be
/// represented (a deadline that saturated is never reached).
fn instant_of(ms: u64) -> tokio::time::Instant {
    let at = epoch()
        .checked_add(Duration::from_millis(ms.saturating_sub(1)))
        .unwrap_or_else(|| epoch() + Duration::from_secs(100 * 365 * 86_400));
    tokio::time::Instant::from_std(at)
}

/// Limits that apply to every connection of a server.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_header_bytes: usize,
    pub(crate) drain_grace: Duration,
}

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub(crate) builder: auto::Builder<SpanExecutor>,
    pub(crate) limits: Limits,
    pub(crate) watch: Watch,
    drain: Drain,
}

impl Shared {
    /// `drain` is what requests are told: it completes once their server stopped
    /// accepting.
    pub(crate) fn new(limits: Limits, watch: Watch, drain: Drain) -> Self {
        let mut builder = auto::Builder::new(SpanExecutor);
        builder
            .http1()
            // The read deadline of `TimedIo` covers the headers; see the module docs.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.saturating_add(4096).max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Shared {
            builder,
            limits,
            drain,
            watch,
        }
    }
}

/// The state of one connection, shared by its IO wrapper, its service wrapper and its
/// response bodies.
#[derive(Debug, Default)]
struct ConnState {
    in_flight: AtomicU32,
    last_activity: AtomicU64,
    h2: AtomicBool,
    /// 0: none. Else the instant (see `now_ms`) by which the request must be read.
    read_deadline: AtomicU64,
    /// The connection switched protocols: no HTTP timeout applies any more.
    upgraded: AtomicBool,
    /// The protocol was written into the connection's span.
    proto_known: AtomicBool,
}

/// Runs hyper's tasks (HTTP/2 streams) inside the span of their connection, so that
/// what a handler logs is tied to its connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanExecutor;

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(tracing::Instrument::in_current_span(fut));
    }
}

impl ConnState {
    fn touch(&self) {
        self.last_activity.store(now_ms(), Ordering::Relaxed);
    }

    /// Idle (nothing in flight, nothing received) for at least `d`?
    fn idle_for(&self, d: Duration) -> Result<(), u64> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Err(now_ms().saturating_add(millis(d)));
        }
        let since = self.last_activity.load(Ordering::Relaxed);
        let due = since.saturating_add(millis(d));
        if now_ms() >= due {
            Ok(())
        } else {
            Err(due)
        }
    }
}

/// Counts a request in flight until its response body is finished or dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one open connection of a server, upgraded or not, until its IO is dropped.
pub(crate) struct ConnGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl ConnGuard {
    pub(crate) fn new(tx: &Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        tx.send_modify(|n| *n += 1);
        ConnGuard(tx.clone())
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Who is at the other end of a connection: a request extension on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnInfo {
    /// A TCP connection.
    Tcp {
        /// The client's address.
        peer: std::net::SocketAddr,
        /// The address it connected to.
        local: std::net::SocketAddr,
    },
    /// A Unix socket connection, with the peer's credentials when the kernel gives them.
    Unix {
        /// The peer process's user id, group id and pid.
        cred: Option<(u32, u32, Option<i32>)>,
    },
}

impl std::fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnInfo::Tcp { peer, .. } => write!(f, "{peer}"),
            ConnInfo::Unix {
                cred: Some((uid, _, Some(pid))),
            } => write!(f, "unix:uid={uid},pid={pid}"),
            ConnInfo::Unix { .. } => f.write_str("unix"),
        }
    }
}

/// What one accepted connection brings along to [`serve`].
pub(crate) struct Accepted {
    pub(crate) guard: ConnGuard,
    pub(crate) hammer: CancellationToken,
    pub(crate) info: ConnInfo,
}

/// Serves one accepted connection until it ends, is drained, or is upgraded (then the
/// upgraded IO carries the connection's count and the hammer on). (The hammer drops
/// this future, which closes the socket.) `h2` says ALPN already chose HTTP/2.
pub(crate) async fn serve<I, S, B>(io: I, app: S, shared: Arc<Shared>, h2: bool, acc: Accepted)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::new(ConnState::default());
    state.touch();
    state.h2.store(h2, Ordering::Relaxed);
    let io = TokioIo::new(TimedIo::new(
        io,
        state.clone(),
        &shared.limits,
        acc.guard,
        acc.hammer,
    ));
    let svc = Svc {
        app,
        state: state.clone(),
        shared: shared.clone(),
        info: acc.info,
    };
    let conn = shared.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut phase = shared.watch.state.clone();
    let mut drain_seen = false;
    let mut shut = false;
    loop {
        let draining = phase.borrow().is_draining();
        if draining && !drain_seen {
            drain_seen = true;
            // The grace counts from the drain's start: a connection idle in a client's
            // pool since before it is the one the client falls back on when its busy
            // ones get `Connection: close`, so closing it at once races that request.
            state.touch();
        }
        // Checked on every wake, not only when the drain begins: a connection whose
        // first bytes were not read yet then is known to be HTTP/2 only later (the
        // loop wakes at least once per drain grace while the connection is open).
        if draining && !shut && state.h2.load(Ordering::Relaxed) {
            // GOAWAY: streams in flight finish, new ones go elsewhere.
            conn.as_mut().graceful_shutdown();
            shut = true;
        }
        let idle_limit = if draining {
            Some(shared.limits.drain_grace)
        } else {
            shared.limits.idle_timeout
        };
        let wake = match idle_limit {
            Some(limit) if !shut => match state.idle_for(limit) {
                Ok(()) => {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                    None
                }
                Err(due) => Some(instant_of(due)),
            },
            _ => None,
        };
        tokio::select! {
            // The connection first: under CPU starvation a request that just arrived
            // must win over the grace timer that would close the connection.
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = phase.changed(), if !draining => {}
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
        }
    }
}

#[cfg(feature = "tls")]
/// The TLS handshake of an accepted connection, bounded by `timeout` and, once the drain
/// begins, abandoned when it has received nothing for the drain grace (as an idle
/// connection is closed). `None` if it failed, timed out or was abandoned.
pub(crate) async fn tls_handshake<I>(
    io: I,
    acceptor: &tokio_rustls::TlsAcceptor,
    shared: &Shared,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<ReadActivity<I>>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let last_read = Arc::new(AtomicU64::new(now_ms()));
    let io = ReadActivity {
        inner: io,
        last_read: last_read.clone(),
    };
    let handshake = tokio::time::timeout(timeout, acceptor.accept(io));
    tokio::pin!(handshake);
    let mut phase = shared.watch.state.clone();
    let grace = millis(shared.limits.drain_grace);
    loop {
        let draining = phase.borrow_and_update().is_draining();
        let wake = if draining {
            let due = last_read.load(Ordering::Relaxed).saturating_add(grace);
            if now_ms() >= due {
                tracing::debug!("TLS handshake idle during the drain; closing");
                return None;
            }
            Some(instant_of(due))
        } else {
            None
        };
        tokio::select! {
            res = handshake.as_mut() => return match res {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            },
            _ = phase.changed(), if !draining => {}
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
        }
    }
}

#[cfg(feature = "tls")]
/// An IO that records when it last received bytes (see [`tls_handshake`]).
pub(crate) struct ReadActivity<I> {
    inner: I,
    last_read: Arc<AtomicU64>,
}

#[cfg(feature = "tls")]
impl<I: AsyncRead + Unpin> AsyncRead for ReadActivity<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last_read.store(now_ms(), Ordering::Relaxed);
        }
        res
    }
}

#[cfg(feature = "tls")]
impl<I: AsyncWrite + Unpin> AsyncWrite for ReadActivity<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Wraps the application: counts requests in flight, applies the write timeout and the
/// header size limit, and marks responses `Connection: close` during a drain.
struct Svc<S> {
    app: S,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    info: ConnInfo,
}

/// Approximate size of a request's head, as it was on the wire.
fn head_bytes<T>(req: &Request<T>) -> usize {
    // The URI's length as sent, measured without formatting it (no allocation).
    let uri = req.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + uri_len + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Svc<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody<B>>;
    type Error = BoxError;
    type Future = SvcFuture<S, B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let now = now_ms();
        if !self.state.proto_known.load(Ordering::Relaxed) {
            self.state.proto_known.store(true, Ordering::Relaxed);
            tracing::Span::current().record("proto", tracing::field::debug(req.version()));
        }
        let ext = req.extensions_mut();
        ext.insert(self.shared.drain.clone());
        ext.insert(self.info);
        #[cfg(feature = "axum")]
        if let ConnInfo::Tcp { peer, .. } = self.info {
            ext.insert(axum::extract::ConnectInfo(peer));
        }
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        self.state.last_activity.store(now, Ordering::Relaxed);
        let guard = InFlight(self.state.clone());
        let h1 = req.version() < Version::HTTP_2;
        if !h1 {
            self.state.h2.store(true, Ordering::Relaxed);
        }
        if req.body().is_end_stream() {
            self.state.read_deadline.store(0, Ordering::Relaxed);
        }
        let limits = &self.shared.limits;
        let mut deadline = limits.write_timeout.map(|d| now.saturating_add(millis(d)));
        let mut read_bound = false;
        if let (false, Some(rt)) = (h1, limits.read_timeout) {
            // HTTP/2: the read timeout of a stream whose body is still coming ends when
            // its response starts, as over HTTP/1 (see `Server::read_timeout`). A stream
            // that trickles its body past it is reset; the connection's other streams
            // carry on.
            if !req.body().is_end_stream() {
                let at = now.saturating_add(millis(rt));
                if deadline.is_none_or(|w| at < w) {
                    deadline = Some(at);
                    read_bound = true;
                }
            }
        }
        if head_bytes(&req) > limits.max_header_bytes {
            let mut res = Response::new(ResBody::empty(guard));
            *res.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            if h1 {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return SvcFuture {
                inner: None,
                early: Some(res),
                guard: None,
                h1,
                read_bound,
            };
        }
        let handler = Handler::Ready {
            app: self.app.clone(),
            req: Some(req),
        };
        SvcFuture {
            inner: Some(Deadline::new(handler, deadline)),
            early: None,
            guard: Some(guard),
            h1,
            read_bound,
        }
    }
}

pin_project! {
    /// The application's readiness, then its call.
    #[project = HandlerProj]
    enum Handler<S, F> {
        Ready { app: S, req: Option<Request<Incoming>> },
        Call { #[pin] fut: F },
    }
}

impl<S> Future for Handler<S, S::Future>
where
    S: tower_service::Service<Request<Incoming>>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                HandlerProj::Ready { app, req } => {
                    ready!(app.poll_ready(cx))?;
                    let fut = app.call(req.take().expect("polled after completion"));
                    self.set(Handler::Call { fut });
                }
                HandlerProj::Call { fut } => return fut.poll(cx),
            }
        }
    }
}

pin_project! {
    /// One request through `Svc`, without a boxed future: the handler under the write
    /// deadline, then `Connection: close` during a drain and the counted response body.
    pub(crate) struct SvcFuture<S, B>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        #[pin]
        inner: Option<Deadline<Handler<S, S::Future>>>,
        early: Option<Response<ResBody<B>>>,
        guard: Option<InFlight>,
        h1: bool,
        // The deadline is the read timeout's (an HTTP/2 request body still coming).
        read_bound: bool,
    }
}

impl<S, B> Future for SvcFuture<S, B>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(res) = this.early.take() {
            return Poll::Ready(Ok(res));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let res = ready!(inner.poll(cx))
            .map_err(|_| -> BoxError {
                Box::new(timed_out(if *this.read_bound {
                    "read timeout: request body"
                } else {
                    "write timeout: handler"
                }))
            })?
            .map_err(Into::into)?;
        let (mut parts, body) = res.into_parts();
        let guard = this.guard.take().expect("one response per request");
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // From now on the IO belongs to the application's protocol. An upgrade
            // answered during the drain stays one (`Connection: upgrade`): the
            // application closes it when it learns of the drain.
            guard.0.upgraded.store(true, Ordering::Release);
        } else if *this.h1 && crate::lifecycle::draining() {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(Response::from_parts(parts, ResBody::new(body, guard))))
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

pin_project! {
    /// A future with an optional deadline; the timer is only created if the future
    /// does not finish on its first poll, so fast handlers never touch the timer wheel.
    struct Deadline<F> {
        #[pin]
        fut: F,
        at: Option<u64>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F> Deadline<F> {
    fn new(fut: F, at: Option<u64>) -> Self {
        Deadline {
            fut,
            at,
            sleep: None,
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        poll_deadline(this.sleep, *this.at, cx).map(Err)
    }
}

/// Polls a lazily created timer for `at`; Ready once it has passed.
fn poll_deadline(
    sleep: &mut Option<Pin<Box<Sleep>>>,
    at: Option<u64>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let Some(at) = at else {
        return Poll::Pending;
    };
    let when = instant_of(at);
    match sleep {
        Some(s) if s.deadline() == when => {}
        Some(s) => s.as_mut().reset(when),
        None => *sleep = Some(Box::pin(tokio::time::sleep_until(when))),
    }
    sleep.as_mut().expect("set above").as_mut().poll(cx)
}

pin_project! {
    /// The response body: the application's, holding the request's in-flight count
    /// until it is finished or dropped. No timer: a stalled client is the IO's to cut
    /// (see [`TimedIo`]), and an application silent between two chunks is its own
    /// business.
    pub(crate) struct ResBody<B> {
        #[pin]
        inner: Option<B>,
        guard: Option<InFlight>,
    }
}

impl<B> ResBody<B> {
    fn new(inner: B, guard: InFlight) -> Self {
        ResBody {
            inner: Some(inner),
            guard: Some(guard),
        }
    }

    fn empty(guard: InFlight) -> Self {
        ResBody {
            inner: None,
            guard: Some(guard),
        }
    }
}

impl<B> Body for ResBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            this.guard.take();
            return Poll::Ready(None);
        };
        match ready!(inner.poll_frame(cx)) {
            None => {
                this.guard.take();
                Poll::Ready(None)
            }
            Some(r) => Poll::Ready(Some(r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// The connection's IO: the read deadline of a request, the write-stall deadline, the
/// activity the drain reads, the connection's place in its server's count, and (once
/// upgraded) the hammer.
struct TimedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    read_sleep: Option<Pin<Box<Sleep>>>,
    write_sleep: Option<Pin<Box<Sleep>>>,
    /// 0: no write is stalled. Else the instant by which it must make progress.
    write_stalled_until: u64,
    first_read: bool,
    hammer: CancellationToken,
    /// Created once the connection is upgraded: until then the hammer drops the whole
    /// connection future instead, which costs nothing per operation.
    hammered: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _counted: ConnGuard,
}

impl<I> TimedIo<I> {
    fn new(
        inner: I,
        state: Arc<ConnState>,
        limits: &Limits,
        counted: ConnGuard,
        hammer: CancellationToken,
    ) -> Self {
        TimedIo {
            inner,
            state,
            read_timeout: limits.read_timeout,
            write_timeout: limits.write_timeout,
            read_sleep: None,
            write_sleep: None,
            write_stalled_until: 0,
            first_read: true,
            hammer,
            hammered: None,
            _counted: counted,
        }
    }

    fn upgraded(&self) -> bool {
        self.state.upgraded.load(Ordering::Acquire)
    }

    /// Upgraded: has the hammer fallen? (Registers the waker when it has not.)
    fn poll_hammer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let hammer = &self.hammer;
        let fut = self
            .hammered
            .get_or_insert_with(|| Box::pin(hammer.clone().cancelled_owned()));
        fut.as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::ConnectionAborted, "hammer time"))
    }

    fn after_write(&mut self) {
        // The response has started: the request is no longer being read.
        if self.state.read_deadline.load(Ordering::Relaxed) != 0 {
            self.state.read_deadline.store(0, Ordering::Relaxed);
        }
        self.write_stalled_until = 0;
    }

    /// A write is pending: the client is not reading. Past the write timeout without
    /// progress, the connection is cut.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.upgraded() {
            return self.poll_hammer(cx);
        }
        let Some(wt) = self.write_timeout else {
            return Poll::Pending;
        };
        if self.write_stalled_until == 0 {
            self.write_stalled_until = now_ms().saturating_add(millis(wt));
        }
        poll_deadline(&mut self.write_sleep, Some(self.write_stalled_until), cx)
            .map(|_| timed_out("write timeout: the client stopped reading"))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.hammered.is_some() || this.upgraded() {
            if let Poll::Ready(e) = this.poll_hammer(cx) {
                return Poll::Ready(Err(e));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let st = &this.state;
                    if this.first_read {
                        this.first_read = false;
                        if got.starts_with(b"PRI ") {
                            st.h2.store(true, Ordering::Relaxed);
                        }
                    }
                    let now = now_ms();
                    st.last_activity.store(now, Ordering::Relaxed);
                    if let Some(rt) = this.read_timeout {
                        if !st.h2.load(Ordering::Relaxed)
                            && st.in_flight.load(Ordering::Acquire) == 0
                            && st.read_deadline.load(Ordering::Relaxed) == 0
                        {
                            // The first bytes of a request: its read deadline starts.
                            let at = now.saturating_add(millis(rt));
                            st.read_deadline.store(at, Ordering::Relaxed);
                        }
                    }
                }
                this.read_sleep = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let at = this.state.read_deadline.load(Ordering::Relaxed);
                if at == 0 {
                    return Poll::Pending;
                }
                ready!(poll_deadline(&mut this.read_sleep, Some(at), cx));
                Poll::Ready(Err(timed_out("read timeout")))
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.hammered.is_some() || this.upgraded() {
            if let Poll::Ready(e) = this.poll_hammer(cx) {
                return Poll::Ready(Err(e));
            }
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.after_write();
                Poll::Ready(r)
            }
            Poll::Pending => this.write_stalled(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.hammered.is_some() || this.upgraded() {
            if let Poll::Ready(e) = this.poll_hammer(cx) {
                return Poll::Ready(Err(e));
            }
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.after_write();
                Poll::Ready(r)
            }
            Poll::Pending => this.write_stalled(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.write_stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
