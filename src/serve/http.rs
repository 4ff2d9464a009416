//! Which HTTP a connection speaks, and hyper's connection that serves it.
//!
//! ALPN names the protocol of a TLS connection. A plaintext one (or a TLS one without
//! ALPN) is HTTP/2 if it starts with HTTP/2's prior-knowledge preface, else HTTP/1.
//!
//! # Why not hyper-util's auto builder
//! The auto builder tells the two apart the same way, but then it wraps the IO in a
//! layer that replays the bytes it read, and keeps its own state machine around the
//! connection: every read and every wake of every request goes through both, for the
//! connection's whole life. That was ~170 instructions of a ~10,000-instruction
//! HTTP/1.1 request in the benchmark (BENCHMARKS.md). Here the first bytes are read
//! through ceaseless's own IO, which stands between hyper and the socket anyway and
//! replays them ([`Sniffed`]); once the protocol is known, what is polled is hyper's own
//! HTTP/1 (with upgrades) or HTTP/2 connection and nothing else.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http_body::Body;
use hyper::body::Incoming;
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What is known of a connection's protocol before its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))] // only ALPN tells before the bytes
pub(crate) enum Proto {
    /// Nothing: its first bytes tell.
    Sniff,
    /// HTTP/1 (ALPN said `http/1.1`).
    H1,
    /// HTTP/2 (ALPN said `h2`).
    H2,
}

/// The IO under hyper: hands the bytes read to tell the protocol back to hyper.
pub(crate) trait Sniffed: AsyncRead + AsyncWrite + Unpin {
    /// The protocol is known (HTTP/2 if `h2`): the next reads return `first`, the
    /// bytes read to tell it, before anything else.
    fn sniffed(&mut self, first: &[u8], h2: bool);
}

/// hyper's two connection builders, configured once per server.
pub(crate) struct Builders {
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<SpanExecutor>,
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
        // The connection's span is an INFO span of `ceaseless::serve`: when that is
        // filtered out there is none to enter.
        if tracing::enabled!(target: "ceaseless::serve", tracing::Level::INFO) {
            tokio::spawn(tracing::Instrument::in_current_span(fut));
        } else {
            tokio::spawn(fut);
        }
    }
}

pin_project! {
    /// One connection: its protocol being told, then hyper's connection for it.
    #[project = HttpProj]
    pub(crate) enum Http<I, S>
    where
        S: HttpService<Incoming>,
    {
        Sniff {
            io: Option<I>,
            svc: Option<S>,
            builders: Arc<Builders>,
            buf: [u8; 24],
            filled: usize,
        },
        H1 {
            #[pin]
            conn: http1::UpgradeableConnection<TokioIo<I>, S>,
        },
        H2 {
            #[pin]
            conn: http2::Connection<TokioIo<I>, S, SpanExecutor>,
        },
        // Shut down before its protocol was known.
        Closed,
    }
}

impl<I, S, B> Http<I, S>
where
    I: Sniffed + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    SpanExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// Serves `svc` on `io` once its protocol is known.
    pub(crate) fn new(io: I, svc: S, builders: &Arc<Builders>, proto: Proto) -> Self {
        match proto {
            Proto::H1 => Self::h1(io, svc, builders),
            Proto::H2 => Self::h2(io, svc, builders),
            Proto::Sniff => Http::Sniff {
                io: Some(io),
                svc: Some(svc),
                builders: builders.clone(),
                buf: [0; 24],
                filled: 0,
            },
        }
    }

    fn h1(io: I, svc: S, builders: &Builders) -> Self {
        Http::H1 {
            conn: builders
                .h1
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        }
    }

    fn h2(io: I, svc: S, builders: &Builders) -> Self {
        Http::H2 {
            conn: builders.h2.serve_connection(TokioIo::new(io), svc),
        }
    }
}

impl<I, S, B> Future for Http<I, S>
where
    I: Sniffed + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    SpanExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project() {
                HttpProj::H1 { conn } => return conn.poll(cx).map_err(Into::into),
                HttpProj::H2 { conn } => return conn.poll(cx).map_err(Into::into),
                HttpProj::Closed => return Poll::Ready(Ok(())),
                HttpProj::Sniff {
                    io,
                    svc,
                    builders,
                    buf,
                    filled,
                } => {
                    let stream = io.as_mut().expect("present until the protocol is known");
                    let h2 = ready!(poll_sniff(stream, buf, filled, cx))?;
                    let mut stream = io.take().expect("present until the protocol is known");
                    let svc = svc.take().expect("present until the protocol is known");
                    stream.sniffed(&buf[..*filled], h2);
                    if h2 {
                        Self::h2(stream, svc, builders)
                    } else {
                        Self::h1(stream, svc, builders)
                    }
                }
            };
            self.set(next);
        }
    }
}

/// The parts of a connection that its future in `conn` drives: hyper's connection,
/// and its graceful shutdown.
pub(crate) trait Connection: Future {
    /// Begins a graceful shutdown; the connection is polled on until it ends.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Connection for Http<I, S>
where
    I: Sniffed + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    SpanExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// hyper's graceful shutdown: HTTP/2's GOAWAY, or HTTP/1's close once the request
    /// in flight (if any) is answered. A connection whose protocol is not known yet
    /// (it has sent at most part of its first request's start) is closed.
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match self.as_mut().project() {
            HttpProj::H1 { conn } => conn.graceful_shutdown(),
            HttpProj::H2 { conn } => conn.graceful_shutdown(),
            HttpProj::Sniff { .. } => self.set(Http::Closed),
            HttpProj::Closed => {}
        }
    }
}

/// Reads the start of a connection into `buf` (`filled` bytes so far) until it is
/// known: `true` once it is the whole HTTP/2 preface, `false` as soon as it is not (or
/// the client closed its side).
fn poll_sniff<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut [u8; 24],
    filled: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    while *filled < PREFACE.len() {
        let start = *filled;
        let mut read = ReadBuf::new(&mut buf[start..]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        *filled += n;
        if n == 0 || buf[start..start + n] != PREFACE[start..start + n] {
            return Poll::Ready(Ok(false));
        }
    }
    Poll::Ready(Ok(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes in the given pieces, one per read, then EOF.
    struct Pieces(Vec<&'static [u8]>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(piece) = self.0.first_mut() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                *piece = &piece[n..];
                if piece.is_empty() {
                    self.0.remove(0);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn sniff(pieces: Vec<&'static [u8]>) -> (bool, Vec<u8>) {
        let mut io = Pieces(pieces);
        let (mut buf, mut filled) = ([0; 24], 0);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        match poll_sniff(&mut io, &mut buf, &mut filled, &mut cx) {
            Poll::Ready(Ok(h2)) => (h2, buf[..filled].to_vec()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_preface_is_http2_whole_or_in_pieces() {
        assert_eq!(sniff(vec![PREFACE]), (true, PREFACE.to_vec()));
        assert_eq!(
            sniff(vec![b"PRI", b" * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]),
            (true, PREFACE.to_vec())
        );
    }

    #[test]
    fn anything_else_is_http1_as_soon_as_it_differs() {
        // A request longer than the preface: only what was read to tell is kept.
        let (h2, first) = sniff(vec![b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]);
        assert!(!h2);
        assert_eq!(first, b"GET / HTTP/1.1\r\nHost: a\r".to_vec());
        // Differs within the second piece.
        assert_eq!(sniff(vec![b"PRI", b" x"]), (false, b"PRI x".to_vec()));
        // A client that closes before the preface is complete.
        assert_eq!(sniff(vec![b"PRI *"]), (false, b"PRI *".to_vec()));
        assert_eq!(sniff(vec![]), (false, Vec::new()));
    }
}
