//! Serving one connection: HTTP/1.1 and HTTP/2 through hyper ([`crate::serve::http`] tells
//! which), the timeouts, and the lame-duck drain.
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
//! # The lingering close
//! When hyper closes a connection it shuts the write side (after HTTP/2's last GOAWAY,
//! or an HTTP/1 response with `Connection: close`), and the socket is closed when the
//! connection's future is dropped. A socket closed with bytes still unread makes the
//! kernel send a reset, and a reset can discard what the client had not read yet: the
//! GOAWAY that tells it its newest streams were never processed (so it would resend
//! them), leaving it only the end of the stream, and an error for calls that are safe
//! to send again. So after the shutdown the connection reads and discards until the
//! client closes its side, or for the drain grace (two seconds at most), before it
//! lets go, as nginx's `lingering_close` does (neither hyper nor h2 does it).
//!
//! # One future, one timer
//! Each connection is one task, and a plaintext one is one future, [`ConnFuture`]:
//! hyper's connection, the connection's one timer, and its waker registered with its
//! server, which wakes it only when the drain begins or the hammer falls (a TLS
//! connection's task also has [`Watched`](crate::serve::drain::Watched) around it, for its
//! handshake). Its deadlines (the request's read deadline, the handler's, a stalled
//! write's, the idle or drain-grace limit) are atomics in the connection's state, kept
//! on a coarse clock; the timer sleeps until the nearest and is never reset when a
//! deadline moves later: when it fires early it is re-armed for what is due then. A
//! deadline that passed sets a bit that the IO (or the handler's future) turns into an
//! error when it is next polled. So a request served over keep-alive costs no timer
//! operation at all, whether its handler is ready on its first poll or not. (HTTP/2
//! streams run as tasks of their own: a stream whose handler is pending puts its
//! deadline in its connection's list, which the same timer serves and which wakes the
//! stream's task when it passes.)
//!
//! # Timeouts, in Go's sense
//! - read timeout: from the first byte of a request until its body is read, headers
//!   included: past the deadline, until the response starts, the connection's reads
//!   fail. (hyper's own header read timer is left off: it
//!   duplicated this deadline at the price of a timer armed and dropped on every request,
//!   the largest single cost of the wrapper in the benchmark's profile.) Keep-alive
//!   idleness is the idle timeout's.
//! - write timeout: the handler must start its response within it, from the end of the
//!   request headers (else the connection is closed, or the HTTP/2 stream reset); then a
//!   write that makes no progress for that long (a client that stopped reading) closes
//!   the connection. A streaming response (server-sent events, a long download, a gRPC
//!   server stream) is never cut while the client keeps reading, however long it runs
//!   and however long the application stays silent between two chunks.
//! - max header bytes: 431 for a request whose headers are larger (over HTTP/1 hyper's
//!   read buffer enforces it from 8 KiB up, below that the head is measured; over
//!   HTTP/2, hyper's header list limit).
//!
//! # Upgraded connections (WebSockets)
//! A connection that switched protocols (`101`) stays one of its server's open
//! connections until the upgraded IO is dropped: the drain waits for it, and hammer time
//! (or SIGUSR2 during a drain) closes it — its reads and writes fail from then on. The
//! HTTP read, write and idle timeouts stop applying to it; what applies instead is the
//! application's own protocol (WebSocket pings, say) and the hammer. The application
//! learns that the drain began from its [`Drain`] ([`Drain::current`], taken before it
//! spawns the socket's task), to send its close frame.
//!
//! # What handlers learn of their connection
//! While ceaseless polls a request's service call, its future or its response body, the
//! connection's context is current on that thread: [`ConnInfo::current`] (the peer's
//! address, or its credentials on a Unix socket) and [`Drain::current`] read it (see
//! [`crate::serve::context`] for why not request extensions). With
//! `Server::request_extensions(true)` requests also carry both, and with the `axum`
//! feature axum's `ConnectInfo<SocketAddr>`, in their extensions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioTimer;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::duration::{instant_at, millis, now_ms};
use crate::lifecycle::Drain;
use crate::serve::context::{self, ConnInfo, Ctx};
use crate::serve::drain::{
    ConnState, Registration, Tracker, EXPIRED_HANDLER, EXPIRED_READ, EXPIRED_STALL,
};
use crate::serve::http::{Builders, Connection, Http, Proto, Sniffed};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may stay idle during a drain before it is closed.
pub(crate) const DEFAULT_DRAIN_GRACE: Duration = Duration::from_millis(250);

/// The longest a lingering close waits for the client's EOF, whatever the drain grace: a
/// client that neither sends nor closes must not hold a drain up for longer.
const MAX_LINGER: Duration = Duration::from_secs(2);

/// The smallest read buffer hyper accepts.
const MIN_BUF: usize = 8192;

/// Limits that apply to every connection of a server.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_header_bytes: usize,
    pub(crate) drain_grace: Duration,
    pub(crate) drain_spread: Duration,
}

/// What every connection of one server shares (read only).
pub(crate) struct Shared {
    builders: Arc<Builders>,
    limits: Limits,
    drain: Drain,
    extensions: bool,
    read_ms: Option<u64>,
    write_ms: Option<u64>,
    idle_ms: Option<u64>,
    grace_ms: u64,
    spread_ms: u64,
    /// HTTP/1 heads are measured against the limit: hyper's buffer cannot enforce it.
    measure_heads: bool,
    /// The process's count of responses, for a probation's error policy.
    outcomes: Arc<crate::lifecycle::Outcomes>,
}

impl Shared {
    /// `drain` is what requests are told: it completes once their server stopped
    /// accepting. `extensions`: whether requests carry the [`Drain`], the [`ConnInfo`]
    /// (and axum's `ConnectInfo`).
    pub(crate) fn new(
        limits: Limits,
        drain: Drain,
        extensions: bool,
        outcomes: Arc<crate::lifecycle::Outcomes>,
    ) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1
            // The read deadline of `TimedIo` covers the headers; see the module docs.
            .header_read_timeout(None)
            // hyper answers 431 itself for a head that does not fit its read buffer
            // (while a head is incomplete the buffer holds nothing else), but the buffer
            // is never smaller than 8 KiB: below that the head is measured
            // (`measure_heads`).
            .max_buf_size(limits.max_header_bytes.max(MIN_BUF));
        let mut h2 = hyper::server::conn::http2::Builder::new(crate::serve::http::SpanExecutor);
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Shared {
            builders: Arc::new(Builders { h1, h2 }),
            read_ms: limits.read_timeout.map(millis),
            write_ms: limits.write_timeout.map(millis),
            idle_ms: limits.idle_timeout.map(millis),
            grace_ms: millis(limits.drain_grace),
            spread_ms: millis(limits.drain_spread),
            measure_heads: limits.max_header_bytes < MIN_BUF,
            outcomes,
            limits,
            drain,
            extensions,
        }
    }

    /// Over how long the drain spreads the `Connection: close` of busy connections.
    pub(crate) fn spread_ms(&self) -> u64 {
        self.spread_ms
    }

    /// What the handlers of a connection from `info` learn of it.
    pub(crate) fn context(&self, info: ConnInfo) -> Ctx {
        Ctx {
            info,
            drain: self.drain.for_connection(),
            outcomes: self.outcomes.clone(),
        }
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn drain_grace(&self) -> Duration {
        self.limits.drain_grace
    }
}

/// Counts a request in flight until its response body is finished or dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done(now_ms());
    }
}

/// Serves one accepted connection until it ends, is drained, or is upgraded (then the
/// upgraded IO carries the connection's registration and the hammer on). (When the
/// hammer falls the future ends, and dropping it closes the socket.) `proto`: what ALPN
/// chose, if anything.
pub(crate) fn serve<I, S, B>(
    io: I,
    app: S,
    shared: Arc<Shared>,
    proto: Proto,
    reg: Registration,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = reg.state().clone();
    let tracker = reg.tracker().clone();
    state.touch(now_ms());
    state.h2.store(proto == Proto::H2, Ordering::Relaxed);
    let io = TimedIo::new(io, state.clone(), &shared, reg);
    let svc = Svc {
        app,
        state: state.clone(),
        shared: shared.clone(),
    };
    let conn = Http::new(io, svc, &shared.builders, proto);
    ConnFuture {
        conn,
        state,
        shared: shared.clone(),
        tracker,
        sleep: None,
        armed: 0,
        waker: None,
        registered: None,
        drain_seen: false,
        shut: false,
    }
}

pin_project! {
    /// hyper's connection, the drain, and the connection's one timer (module docs).
    struct ConnFuture<C> {
        #[pin]
        conn: C,
        state: Arc<ConnState>,
        shared: Arc<Shared>,
        tracker: Arc<Tracker>,
        #[pin]
        sleep: Option<Sleep>,
        // The instant `sleep` is armed for (0: none).
        armed: u64,
        // The waker `sleep` was last polled with.
        waker: Option<Waker>,
        // The waker the server wakes when the drain begins or the hammer falls.
        registered: Option<Waker>,
        drain_seen: bool,
        shut: bool,
    }
}

impl<C, T, E> Future for ConnFuture<C>
where
    C: Connection<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let state = &**this.state;
        let shared = &**this.shared;
        state.register(this.registered, cx.waker());
        if this.tracker.hammered() {
            // Dropping the connection closes it.
            return Poll::Ready(());
        }
        loop {
            let draining = this.tracker.draining();
            let drained_before = *this.drain_seen;
            if draining && !*this.drain_seen {
                *this.drain_seen = true;
                // The grace counts from the drain's start: a connection idle in a
                // client's pool since before it is the one the client falls back on when
                // its busy ones get `Connection: close`, so closing it at once races
                // that request.
                state.touch(now_ms());
            }
            // Checked on every poll, not only when the drain begins: a connection whose
            // first bytes were not read yet then is known to be HTTP/2 only later (the
            // timer fires at least once per drain grace while it is open).
            if draining && !*this.shut && state.h2.load(Ordering::Relaxed) {
                // GOAWAY: streams in flight finish, new ones go elsewhere.
                this.conn.as_mut().graceful_shutdown();
                *this.shut = true;
            }
            let shut_before = *this.shut;
            if let Poll::Ready(res) = this.conn.as_mut().poll(cx) {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            let elapsed = this
                .sleep
                .as_ref()
                .as_pin_ref()
                .is_some_and(|s| s.is_elapsed());
            let waker_changed = !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            // The fast path: the timer has not fired, no deadline was set before the
            // one it is armed for (`ConnState::due_at`), nothing changed here: the timer
            // stands as it is.
            if !elapsed
                && !waker_changed
                && *this.armed != 0
                && !state.rearm.load(Ordering::Acquire)
                && drained_before == *this.drain_seen
                && shut_before == *this.shut
            {
                return Poll::Pending;
            }
            state.rearm.swap(false, Ordering::AcqRel);
            let idle = match (*this.shut, draining) {
                (true, _) => None,
                (false, true) => Some(shared.grace_ms),
                (false, false) => shared.idle_ms,
            };
            state.idle_limit.store(idle.unwrap_or(0), Ordering::Relaxed);
            let due = next_due(state, idle);
            if due == 0 {
                // Nothing to time. A timer still armed fires once, finds nothing due
                // and is left alone; once it has, nothing is armed.
                if elapsed && *this.armed != 0 {
                    *this.armed = 0;
                    state.armed.store(0, Ordering::Release);
                }
                return Poll::Pending;
            }
            if elapsed {
                let now = now_ms();
                if due <= now {
                    if expire(state, idle, now) {
                        this.conn.as_mut().graceful_shutdown();
                        *this.shut = true;
                    }
                    // The IO or the handler fails when polled; an idle connection
                    // closes. Poll hyper again so that they are.
                    continue;
                }
            }
            let rearm = elapsed || *this.armed == 0 || due < *this.armed;
            if rearm {
                let at = instant_at(due);
                match this.sleep.as_mut().as_pin_mut() {
                    Some(s) => s.reset(at),
                    None => this.sleep.set(Some(tokio::time::sleep_until(at))),
                }
                *this.armed = due;
                state.armed.store(due, Ordering::Release);
            }
            if rearm || waker_changed {
                *this.waker = Some(cx.waker().clone());
                let sleep = this.sleep.as_mut().as_pin_mut().expect("armed above");
                if sleep.poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

/// The nearest of the connection's deadlines not yet expired (0: none). `idle`: the
/// idle limit that applies, in ms.
fn next_due(st: &ConnState, idle: Option<u64>) -> u64 {
    let expired = st.expired.load(Ordering::Relaxed);
    let mut due = u64::MAX;
    for (bit, d) in [
        (EXPIRED_READ, &st.read_deadline),
        (EXPIRED_HANDLER, &st.handler_deadline),
        (EXPIRED_STALL, &st.stall_deadline),
    ] {
        let at = d.load(Ordering::Relaxed);
        if at != 0 && expired & bit == 0 {
            due = due.min(at);
        }
    }
    let streams = st.streams_due.load(Ordering::Acquire);
    if streams != 0 {
        due = due.min(streams);
    }
    if let Some(limit) = idle {
        if st.in_flight.load(Ordering::Acquire) == 0 {
            let since = st.last_activity.load(Ordering::Relaxed);
            due = due.min(since.saturating_add(limit));
        }
    }
    if due == u64::MAX {
        0
    } else {
        due
    }
}

/// Marks the deadlines that passed by `now`; true if the connection has been idle for
/// `idle` (then it is to be closed).
fn expire(st: &ConnState, idle: Option<u64>, now: u64) -> bool {
    let mut bits = 0;
    for (bit, d) in [
        (EXPIRED_READ, &st.read_deadline),
        (EXPIRED_HANDLER, &st.handler_deadline),
        (EXPIRED_STALL, &st.stall_deadline),
    ] {
        let at = d.load(Ordering::Relaxed);
        if at != 0 && at <= now {
            bits |= bit;
        }
    }
    if bits != 0 {
        st.expired.fetch_or(bits, Ordering::Relaxed);
    }
    let streams = st.streams_due.load(Ordering::Acquire);
    if streams != 0 && streams <= now {
        st.expire_streams(now);
    }
    idle.is_some_and(|limit| {
        st.in_flight.load(Ordering::Acquire) == 0
            && st
                .last_activity
                .load(Ordering::Relaxed)
                .saturating_add(limit)
                <= now
    })
}

#[cfg(feature = "tls")]
/// The TLS handshake of an accepted connection, bounded by `timeout` and, once the drain
/// begins, abandoned when it has received nothing for the drain grace (as an idle
/// connection is closed). `None` if it failed, timed out or was abandoned.
pub(crate) async fn tls_handshake<I>(
    io: I,
    acceptor: &tokio_rustls::TlsAcceptor,
    shared: &Shared,
    tracker: &Tracker,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<ReadActivity<I>>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let last_read = Arc::new(std::sync::atomic::AtomicU64::new(now_ms()));
    let io = ReadActivity {
        inner: io,
        last_read: last_read.clone(),
    };
    let handshake = tokio::time::timeout(timeout, acceptor.accept(io));
    tokio::pin!(handshake);
    let grace = millis(shared.drain_grace());
    let mut sleep: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(res) = handshake.as_mut().poll(cx) {
            return Poll::Ready(match res {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            });
        }
        // Woken by the tracker when the drain begins (see `Watched`).
        if !tracker.draining() {
            return Poll::Pending;
        }
        let due = last_read.load(Ordering::Relaxed).saturating_add(grace);
        if now_ms() >= due {
            tracing::debug!("TLS handshake idle during the drain; closing");
            return Poll::Ready(None);
        }
        let at = instant_at(due);
        match sleep.as_mut() {
            Some(s) if s.deadline() == at => {}
            Some(s) => s.as_mut().reset(at),
            None => sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        if sleep
            .as_mut()
            .expect("set above")
            .as_mut()
            .poll(cx)
            .is_pending()
        {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(feature = "tls")]
/// An IO that records when it last received bytes (see [`tls_handshake`]).
pub(crate) struct ReadActivity<I> {
    inner: I,
    last_read: Arc<std::sync::atomic::AtomicU64>,
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
        let st = &self.state;
        if !st.proto_known.load(Ordering::Relaxed) {
            st.proto_known.store(true, Ordering::Relaxed);
            tracing::Span::current().record("proto", tracing::field::debug(req.version()));
        }
        if self.shared.extensions {
            let ext = req.extensions_mut();
            ext.insert(st.ctx.drain.clone());
            ext.insert(st.ctx.info);
            #[cfg(feature = "axum")]
            if let ConnInfo::Tcp { peer, .. } = st.ctx.info {
                ext.insert(axum::extract::ConnectInfo(peer));
            }
        }
        st.in_flight.fetch_add(1, Ordering::AcqRel);
        // The connection's task is the only writer (see `ConnState::requests`).
        let n = st.requests.load(Ordering::Relaxed);
        st.requests.store(n + 1, Ordering::Relaxed);
        let guard = InFlight(st.clone());
        let h1 = req.version() < Version::HTTP_2;
        // A body hyper already knows to be empty says so through its size hint, without
        // the lock an HTTP/2 stream's `is_end_stream` takes.
        let end = req.body().size_hint().exact() == Some(0) || req.body().is_end_stream();
        // The request's bytes arrived at the last read (HTTP/1), or just now (HTTP/2,
        // whose connection reads ahead): no clock read here.
        let now = if h1 {
            if end && st.read_deadline.load(Ordering::Relaxed) != 0 {
                st.read_deadline.store(0, Ordering::Relaxed);
            }
            st.last_activity.load(Ordering::Relaxed)
        } else {
            st.h2.store(true, Ordering::Relaxed);
            let now = now_ms();
            st.touch(now);
            now
        };
        let shared = &*self.shared;
        let mut deadline = shared.write_ms.map(|d| now.saturating_add(d));
        let mut read_bound = false;
        if let (false, false, Some(rt)) = (h1, end, shared.read_ms) {
            // HTTP/2: the read timeout of a stream whose body is still coming ends when
            // its response starts, as over HTTP/1 (see `Server::read_timeout`). A stream
            // that trickles its body past it is reset; the connection's other streams
            // carry on.
            let at = now.saturating_add(rt);
            if deadline.is_none_or(|w| at < w) {
                deadline = Some(at);
                read_bound = true;
            }
        }
        // HTTP/2 heads are bounded by hyper's header list limit.
        if h1 && shared.measure_heads && head_bytes(&req) > shared.limits.max_header_bytes {
            let mut res = Response::new(ResBody::empty(guard));
            *res.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            if h1 {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return SvcFuture {
                handler: Handler::Early { res: Some(res) },
                guard: None,
                deadline: 0,
                stream: None,
                armed: false,
                h1,
                read_bound,
            };
        }
        let app = self.app.clone();
        // The service may look at its context when called (a router, a middleware).
        // The service is called in the handler's first poll, inside the context's
        // scope (a router or a middleware may look at it when called). Calling it here
        // inside a scope of its own costs more: the handler's future would be moved out
        // of the scope's closure (about 150 instructions a request, measured).
        let handler = Handler::Ready {
            app,
            req: Some(req),
        };
        SvcFuture {
            handler,
            guard: Some(guard),
            deadline: deadline.unwrap_or(0),
            stream: None,
            armed: false,
            h1,
            read_bound,
        }
    }
}

pin_project! {
    /// The application's readiness, then its call; or an answer of ceaseless's own.
    #[project = HandlerProj]
    enum Handler<S, F, R> {
        Ready { app: S, req: Option<Request<Incoming>> },
        Call { #[pin] fut: F },
        Early { res: Option<R> },
    }
}

impl<S, R> Future for Handler<S, S::Future, R>
where
    S: tower_service::Service<Request<Incoming>>,
{
    type Output = Result<Result<S::Response, S::Error>, R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                HandlerProj::Ready { app, req } => {
                    if let Err(e) = ready!(app.poll_ready(cx)) {
                        return Poll::Ready(Ok(Err(e)));
                    }
                    let fut = app.call(req.take().expect("polled after completion"));
                    self.set(Handler::Call { fut });
                }
                HandlerProj::Call { fut } => return fut.poll(cx).map(Ok),
                HandlerProj::Early { res } => {
                    return Poll::Ready(Err(res.take().expect("polled after completion")))
                }
            }
        }
    }
}

pin_project! {
    /// One request through `Svc`, without a boxed future: the handler under its
    /// deadline, then `Connection: close` during a drain and the counted response body.
    /// The deadline is the connection timer's, handed to it only if the handler is
    /// pending: over HTTP/1 as `handler_deadline`, over HTTP/2 in the connection's list
    /// of pending streams.
    pub(crate) struct SvcFuture<S, B>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        #[pin]
        handler: Handler<S, S::Future, Response<ResBody<B>>>,
        guard: Option<InFlight>,
        // The handler's deadline (0: none).
        deadline: u64,
        // HTTP/2: the deadline, in the connection's list of pending streams.
        stream: Option<StreamTimer>,
        // HTTP/1: `deadline` was handed to the connection's timer.
        armed: bool,
        h1: bool,
        // The deadline is the read timeout's (an HTTP/2 request body still coming).
        read_bound: bool,
    }
}

/// During a drain, should this HTTP/1 response close its connection? Yes, unless the
/// server spreads the closes (`Server::drain_spread`) and this connection's turn has
/// not come: its turn is a fixed offset within the spread after the drain began, so
/// that the clients of a busy server do not all reconnect (and, over TLS, handshake)
/// in the same millisecond.
fn close_now(st: &ConnState) -> bool {
    let mut since = crate::lifecycle::draining_since();
    if since == 0 {
        // The generation serves on; this server may have stopped on its own signal.
        since = st.drain_began.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
    }
    st.close_turn == 0 || now_ms() >= since.saturating_add(st.close_turn)
}

impl<S, B> Future for SvcFuture<S, B>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let ctx = this.guard.as_ref().map(|g| &g.0.ctx);
        let polled = context::scoped(ctx, || this.handler.poll(cx));
        let res = match polled {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(early)) => return Poll::Ready(Ok(early)),
            Poll::Pending => {
                if *this.deadline == 0 {
                    return Poll::Pending;
                }
                let timed_out = || -> BoxError {
                    Box::new(timed_out(if *this.read_bound {
                        "read timeout: request body"
                    } else {
                        "write timeout: handler"
                    }))
                };
                if *this.h1 {
                    let st = &this.guard.as_ref().expect("guarded until the response").0;
                    if st.expired(EXPIRED_HANDLER) {
                        return Poll::Ready(Err(timed_out()));
                    }
                    if !*this.armed {
                        *this.armed = true;
                        st.handler_deadline.store(*this.deadline, Ordering::Relaxed);
                        st.due_at(*this.deadline);
                    }
                    return Poll::Pending;
                }
                match this.stream {
                    Some(t) if t.state.stream_expired(t.key, cx.waker()) => {
                        return Poll::Ready(Err(timed_out()))
                    }
                    Some(_) => {}
                    None => {
                        let state = this.guard.as_ref().expect("guarded until the response");
                        let state = state.0.clone();
                        let key = state.stream_wait(*this.deadline, cx.waker());
                        *this.stream = Some(StreamTimer { state, key });
                    }
                }
                return Poll::Pending;
            }
        };
        this.stream.take();
        let guard = this.guard.take().expect("one response per request");
        if *this.armed {
            guard.0.handler_deadline.store(0, Ordering::Relaxed);
        }
        let (mut parts, body) = match res {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                (parts, Some(body))
            }
            Err(e) => {
                // Not an empty reply: the client learns that the request failed here.
                let e: BoxError = e.into();
                tracing::error!(error = %e, "the service failed; answering 500");
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.status = StatusCode::INTERNAL_SERVER_ERROR;
                (parts, None)
            }
        };
        guard.0.ctx.outcomes.record(parts.status);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // From now on the IO belongs to the application's protocol. An upgrade
            // answered during the drain stays one (`Connection: upgrade`): the
            // application closes it when it learns of the drain.
            guard.0.upgraded.store(true, Ordering::Release);
        } else if *this.h1 && close_now(&guard.0) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let body = match body {
            Some(body) => ResBody::new(body, guard),
            None => ResBody::empty(guard),
        };
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// An HTTP/2 stream's place in its connection's list of pending handlers.
struct StreamTimer {
    state: Arc<ConnState>,
    key: usize,
}

impl Drop for StreamTimer {
    fn drop(&mut self) {
        self.state.stream_done(self.key);
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
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
        let ctx = this.guard.as_ref().map(|g| &g.0.ctx);
        let polled = context::scoped(ctx, || inner.poll_frame(cx));
        match ready!(polled) {
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

/// The connection's IO: the read deadline of a request starts at its first bytes, a
/// stalled write's deadline when it stalls; the connection's timer enforces both (see
/// the module docs), this fails the read or write it marked expired. It holds the
/// connection's registration with its server and, once upgraded, waits on the hammer.
struct TimedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    read_ms: Option<u64>,
    write_ms: Option<u64>,
    /// The bytes read to tell the protocol (`crate::serve::http`), which hyper reads first:
    /// `replay[replay_at..replay_len]` are still to be read.
    replay: [u8; 24],
    replay_at: u8,
    replay_len: u8,
    /// Created once the connection is upgraded: until then the hammer drops the whole
    /// connection task instead, which costs nothing per operation.
    hammered: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// How long a lingering close waits for the client's EOF: the drain grace, at most
    /// [`MAX_LINGER`].
    linger_ms: u64,
    reg: Registration,
}

impl<I> TimedIo<I> {
    fn new(inner: I, state: Arc<ConnState>, shared: &Shared, reg: Registration) -> Self {
        TimedIo {
            inner,
            state,
            read_ms: shared.read_ms,
            write_ms: shared.write_ms,
            replay: [0; 24],
            replay_at: 0,
            replay_len: 0,
            hammered: None,
            linger_ms: shared.grace_ms.min(millis(MAX_LINGER)),
            reg,
        }
    }

    fn upgraded(&self) -> bool {
        self.state.upgraded.load(Ordering::Acquire)
    }

    /// Hands out what is left of the bytes read to tell the protocol.
    #[cold]
    fn replay(&mut self, buf: &mut ReadBuf<'_>) {
        let left = &self.replay[usize::from(self.replay_at)..usize::from(self.replay_len)];
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        // n ≤ 24: the buffer's length.
        self.replay_at += n as u8;
    }

    /// Upgraded: has the hammer fallen? (Registers the waker when it has not.)
    fn poll_hammer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let token = self.reg.tracker().hammer_token();
        let fut = self
            .hammered
            .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
        fut.as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::ConnectionAborted, "hammer time"))
    }

    fn after_write(&mut self) {
        let st = &self.state;
        // The response has started: the request is no longer being read.
        if st.read_deadline.load(Ordering::Relaxed) != 0 {
            st.read_deadline.store(0, Ordering::Relaxed);
        }
        if st.stall_deadline.load(Ordering::Relaxed) != 0 {
            st.stall_deadline.store(0, Ordering::Relaxed);
        }
    }

    /// A write is pending: the client is not reading. Past the write timeout without
    /// progress, the connection is cut.
    fn write_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.upgraded() {
            return self.poll_hammer(cx);
        }
        let st = &self.state;
        if st.expired(EXPIRED_STALL) {
            return Poll::Ready(timed_out("write timeout: the client stopped reading"));
        }
        if let Some(wt) = self.write_ms {
            self.arm_stall(wt);
        }
        Poll::Pending
    }

    /// Sets the stall deadline `ms` from now, unless one is set already (seen by the
    /// connection's timer once this poll returns).
    fn arm_stall(&self, ms: u64) {
        let st = &self.state;
        if st.stall_deadline.load(Ordering::Relaxed) == 0 {
            let at = now_ms().saturating_add(ms);
            st.stall_deadline.store(at, Ordering::Relaxed);
            st.due_at(at);
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Sniffed for TimedIo<I> {
    fn sniffed(&mut self, first: &[u8], h2: bool) {
        let n = first.len().min(self.replay.len());
        self.replay[..n].copy_from_slice(&first[..n]);
        self.replay_at = 0;
        // n ≤ 24: the buffer's length.
        self.replay_len = n as u8;
        if h2 {
            self.state.h2.store(true, Ordering::Relaxed);
            // The preface was read as if it began an HTTP/1 request; HTTP/2 requests'
            // read deadlines are their streams' (`Svc::call`).
            self.state.read_deadline.store(0, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replay_at < this.replay_len {
            // Received (and accounted for) already.
            this.replay(buf);
            return Poll::Ready(Ok(()));
        }
        if this.hammered.is_some() || this.upgraded() {
            if let Poll::Ready(e) = this.poll_hammer(cx) {
                return Poll::Ready(Err(e));
            }
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let st = &this.state;
        if st.expired(EXPIRED_READ) {
            return Poll::Ready(Err(timed_out("read timeout")));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            let now = now_ms();
            st.touch(now);
            if let Some(rt) = this.read_ms {
                if !st.h2.load(Ordering::Relaxed)
                    && st.in_flight.load(Ordering::Acquire) == 0
                    && st.read_deadline.load(Ordering::Relaxed) == 0
                {
                    // The first bytes of a request: its read deadline starts.
                    let at = now.saturating_add(rt);
                    st.read_deadline.store(at, Ordering::Relaxed);
                    st.due_at(at);
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
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
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        if this.upgraded() {
            return Poll::Ready(Ok(()));
        }
        this.poll_linger(cx).map(Ok)
    }
}

impl<I: AsyncRead + Unpin> TimedIo<I> {
    /// The lingering close (see the module docs): once the write side is shut, reads and
    /// discards what the client still sends until it closes its side, the read fails,
    /// or the linger time passes (on the connection's timer, as the stall deadline).
    #[cold]
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.expired(EXPIRED_STALL) {
            return Poll::Ready(());
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // The client's EOF, or an error: nothing more can be lost.
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        self.arm_stall(self.linger_ms);
        Poll::Pending
    }
}
