//! [`serve`]: `axum::serve`'s shape on ceaseless's own connections. A listener from the
//! process owner ([`Process::tcp_listener`], [`Process::unix_listener`]) and what
//! `axum::serve` takes (a `Router`, `into_make_service()`,
//! `into_make_service_with_connect_info::<SocketAddr>()`) or any tower service; awaited
//! as it is, or `.with_graceful_shutdown(signal)`. The connections then go through the
//! same accept loop as [`Server`](crate::Server)'s ([`run`]): the lame-duck drain, the
//! hammer, the timeouts, the status's counts, `Drain` and `ConnInfo`.
//!
//! # What a make service is called with
//! [`IncomingStream`], ceaseless's counterpart of axum's: the connection's [`ConnInfo`].
//! With the `axum` feature, `SocketAddr` (over TCP) and `ConnInfo` (any listener)
//! implement axum's `Connected` for it, so `into_make_service_with_connect_info` puts
//! axum's `ConnectInfo` in every request, as under `axum::serve`.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;

use super::{run, Accepting, Cloned, MakeConn, Settings};
use crate::addr::ListenAddr;
use crate::error::Error;
use crate::handover::listen::{ConnInfo, Listener as Socket, Stream};
use crate::lifecycle::Served;
use crate::process::Process;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `app` on `listener` through ceaseless's own connections, as `axum::serve`
/// would: replace `axum::serve` by `ceaseless::serve`, and a restart (SIGHUP) loses no
/// request. Take the listener from the process owner ([`Process::tcp_listener`] or
/// [`Process::unix_listener`]), so that it is handed over to the next generation.
///
/// `app` is what `axum::serve` takes — a `Router`, `router.into_make_service()`,
/// `router.into_make_service_with_connect_info::<SocketAddr>()` (axum's `ConnectInfo`
/// then works as under axum, with no [`Server::request_extensions`](crate::Server::request_extensions)) — or any tower
/// `Service<http::Request<hyper::body::Incoming>>` that is `Clone + Send + 'static`
/// (a tower stack, a `service_fn`, tonic's routes); see [`ConnService`]. A service
/// error is answered `500` and logged, never with an empty reply.
///
/// Await it as it is (it returns once this generation drained: [`Served`] says why),
/// or with [`Serve::with_graceful_shutdown`]. The connections get what
/// [`Server`](crate::Server) gives them with its defaults: the lame-duck drain (no
/// keep-alive request lost at a restart), the hammer after 60 s or at SIGUSR2, the read,
/// write and idle timeouts, [`Drain`](crate::Drain) and [`ConnInfo`] in handlers. The
/// process owner is started with the defaults if the application did not start one.
///
/// (The example takes axum's `ConnectInfo`, which needs the `axum` feature.)
///
#[cfg_attr(feature = "axum", doc = "```no_run")]
#[cfg_attr(not(feature = "axum"), doc = "```ignore")]
/// use std::net::SocketAddr;
/// use axum::{extract::ConnectInfo, routing::get, Router};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let process = ceaseless::Process::builder().start()?;
///     let listener = process.tcp_listener("127.0.0.1:3000")?;
///     let app = Router::new().route(
///         "/",
///         get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("hello, {peer}\n") }),
///     );
///     ceaseless::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
///         .with_graceful_shutdown(async { /* this server's own reason to stop */ std::future::pending().await })
///         .await?;
///     Ok(())
/// }
/// ```
pub fn serve<L, A, M>(listener: L, app: A) -> Serve<L, A, M>
where
    L: Listener,
    A: ConnService<L, M>,
{
    Serve {
        listener,
        app,
        _marker: PhantomData,
    }
}

/// What [`serve`] returns: await it, or add [`Serve::with_graceful_shutdown`].
#[must_use = "a server does nothing until awaited"]
pub struct Serve<L, A, M> {
    listener: L,
    app: A,
    _marker: PhantomData<fn() -> M>,
}

impl<L, A, M> std::fmt::Debug for Serve<L, A, M>
where
    L: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<L, A, M> Serve<L, A, M> {
    /// Also drains this server when `signal` completes, besides the process's own drain
    /// (SIGTERM, SIGINT, a restart). Its connections drain as at a shutdown: requests
    /// in flight are answered, with `Connection: close` over HTTP/1 and a GOAWAY over
    /// HTTP/2. The listener is closed (new connections are refused) and no longer handed
    /// over at a restart; the process serves on with its other servers, and the future
    /// returns [`Served::Shutdown`] once drained.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<L, A, M, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            listener: self.listener,
            app: self.app,
            signal,
            _marker: PhantomData,
        }
    }
}

impl<L, A, M> IntoFuture for Serve<L, A, M>
where
    L: Listener,
    A: ConnService<L, M>,
{
    type Output = Result<Served, Error>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(start(self.listener, self.app.into_make(), None)))
    }
}

/// [`serve`] with its own shutdown signal ([`Serve::with_graceful_shutdown`]).
#[must_use = "a server does nothing until awaited"]
pub struct WithGracefulShutdown<L, A, M, F> {
    listener: L,
    app: A,
    signal: F,
    _marker: PhantomData<fn() -> M>,
}

impl<L, A, M, F> std::fmt::Debug for WithGracefulShutdown<L, A, M, F>
where
    L: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<L, A, M, F> IntoFuture for WithGracefulShutdown<L, A, M, F>
where
    L: Listener,
    A: ConnService<L, M>,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = Result<Served, Error>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        let stop: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(self.signal);
        ServeFuture(Box::pin(start(
            self.listener,
            self.app.into_make(),
            Some(stop),
        )))
    }
}

/// The future of a [`serve`] call: how serving ended, once this server drained.
#[must_use = "futures do nothing unless polled"]
pub struct ServeFuture(Pin<Box<dyn Future<Output = Result<Served, Error>> + Send>>);

impl Future for ServeFuture {
    type Output = Result<Served, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

/// Claims the listener for a server of the process owner's, then runs the accept loop
/// all servers share.
async fn start<L: Listener, M: MakeConn>(
    listener: L,
    make: M,
    stop: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> Result<Served, Error> {
    let process = Process::current_or_start()?;
    let (socket, local) = listener.into_socket()?;
    match process.serve_listener(&socket) {
        Ok(()) => {}
        // The process is already draining: nothing to serve.
        Err(Error::Draining) => return Ok(process.served().unwrap_or(Served::Shutdown)),
        Err(e) => return Err(e),
    }
    tracing::info!(pid = std::process::id(), addr = %local, "serving");
    let server = Accepting {
        listener: socket,
        local,
        settings: Settings::default(),
        tls: None,
        stop,
    };
    Ok(run(process, server, make).await)
}

/// A listener [`serve`] accepts on: tokio's `TcpListener` and `UnixListener` (from
/// `Process::tcp_listener` and, on Unix, `Process::unix_listener`). Sealed.
pub trait Listener: sealed::Listen + Send + 'static {}

impl Listener for tokio::net::TcpListener {}
#[cfg(unix)]
impl Listener for tokio::net::UnixListener {}

impl sealed::Listen for tokio::net::TcpListener {
    fn into_socket(self) -> Result<(Socket, ListenAddr), Error> {
        let local = self.local_addr().map_err(|source| Error::Bind {
            addr: "a TCP listener".into(),
            source,
        })?;
        Ok((Socket::Tcp(self), ListenAddr::Tcp(local)))
    }
}

#[cfg(unix)]
impl sealed::Listen for tokio::net::UnixListener {
    fn into_socket(self) -> Result<(Socket, ListenAddr), Error> {
        let local = self.local_addr().map_err(|source| Error::Bind {
            addr: "a Unix listener".into(),
            source,
        })?;
        match local.as_pathname() {
            Some(p) => {
                let p = p.to_path_buf();
                Ok((Socket::Unix(self), ListenAddr::Unix(p)))
            }
            None => Err(Error::Address {
                addr: format!("{local:?}"),
                reason: "an unnamed Unix socket".into(),
            }),
        }
    }
}

/// A connection just accepted, as [`serve`] hands it to a make service (axum's
/// `IncomingStream` for ceaseless's connections): `into_make_service_with_connect_info`
/// reads it through axum's `Connected` (with the `axum` feature: `SocketAddr` for a
/// `TcpListener`, [`ConnInfo`] for either listener).
pub struct IncomingStream<'a, L> {
    // Borrowed, as axum's borrows its IO: the connection is served once the service is
    // made.
    _stream: &'a Stream,
    info: ConnInfo,
    _listener: PhantomData<fn() -> L>,
}

impl<L> std::fmt::Debug for IncomingStream<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<L> IncomingStream<'_, L> {
    /// Who connected: the peer's and the local address over TCP, the peer's
    /// credentials over a Unix socket.
    pub fn conn_info(&self) -> ConnInfo {
        self.info
    }

    /// The client's address over TCP; `None` over a Unix socket.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        match self.info {
            ConnInfo::Tcp { peer, .. } => Some(peer),
            ConnInfo::Unix { .. } => None,
        }
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::extract::connect_info::Connected<IncomingStream<'_, tokio::net::TcpListener>>
    for SocketAddr
{
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        match stream.info {
            ConnInfo::Tcp { peer, .. } => peer,
            // A TCP listener accepts TCP connections only.
            ConnInfo::Unix { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<L> axum::extract::connect_info::Connected<IncomingStream<'_, L>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, L>) -> Self {
        stream.info
    }
}

/// What [`serve`] serves: a service, or a make service called with each connection.
/// Sealed; implemented for
/// - any tower `Service<http::Request<hyper::body::Incoming>>` that is
///   `Clone + Send + 'static`, with `Send` futures, an error that converts into
///   `Box<dyn Error + Send + Sync>` (answered `500`), and an `http_body::Body` response
///   (`Data = Bytes`): an axum `Router`, a tower stack, a `service_fn`, tonic's routes;
///   one clone per connection;
/// - any make service (`Service<IncomingStream<'_, L>>` that cannot fail, giving such
///   a service for each connection): axum's `into_make_service()` and
///   `into_make_service_with_connect_info::<C>()` (with `C: Connected<IncomingStream>`).
///
/// `M` tells the two apart and is inferred.
pub trait ConnService<L, M>: sealed::IntoMake<L, M> {}

impl<T, L, M> ConnService<L, M> for T where T: sealed::IntoMake<L, M> {}

impl<S, B, L> sealed::IntoMake<L, sealed::AsService<B>> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Make = Cloned<S>;

    fn into_make(self) -> Cloned<S> {
        Cloned(self)
    }
}

impl<Mk, S, B, L> sealed::IntoMake<L, sealed::AsMakeService<S, B>> for Mk
where
    L: Listener,
    Mk: for<'a> tower_service::Service<IncomingStream<'a, L>, Response = S, Error = Infallible>
        + Send
        + 'static,
    for<'a> <Mk as tower_service::Service<IncomingStream<'a, L>>>::Future: Send,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Make = Made<Mk, L, S, B>;

    fn into_make(self) -> Self::Make {
        Made(self, PhantomData)
    }
}

/// A make service, called with each connection for its service.
pub struct Made<Mk, L, S, B>(Mk, Types<L, S, B>);

/// The types a [`Made`] is for.
type Types<L, S, B> = PhantomData<fn() -> (L, S, B)>;

impl<Mk, L, S, B> MakeConn for Made<Mk, L, S, B>
where
    L: Listener,
    Mk: for<'a> tower_service::Service<IncomingStream<'a, L>, Response = S, Error = Infallible>
        + Send
        + 'static,
    for<'a> <Mk as tower_service::Service<IncomingStream<'a, L>>>::Future: Send,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Service = S;
    type Body = B;

    fn make<'a>(
        &'a mut self,
        stream: &'a Stream,
        info: ConnInfo,
    ) -> impl Future<Output = S> + Send + 'a {
        let make = &mut self.0;
        async move {
            let ready = std::future::poll_fn(|cx| make.poll_ready(cx)).await;
            if let Err(never) = ready {
                match never {}
            }
            let made = make
                .call(IncomingStream {
                    _stream: stream,
                    info,
                    _listener: PhantomData,
                })
                .await;
            match made {
                Ok(service) => service,
                Err(never) => match never {},
            }
        }
    }
}

mod sealed {
    use std::marker::PhantomData;

    use crate::addr::ListenAddr;
    use crate::error::Error;
    use crate::handover::listen::Listener as Socket;
    use crate::serve::MakeConn;

    /// What a listener becomes for the accept loop.
    pub trait Listen {
        /// The socket, and the address it is bound to.
        fn into_socket(self) -> Result<(Socket, ListenAddr), Error>;
    }

    /// What [`serve`](super::serve) makes of its app.
    pub trait IntoMake<L, M> {
        /// What makes each connection's service.
        type Make: MakeConn;
        /// Makes it.
        fn into_make(self) -> Self::Make;
    }

    /// A service served as it is.
    pub struct AsService<B>(PhantomData<fn() -> B>);

    /// A make service, giving `S`.
    pub struct AsMakeService<S, B>(PhantomData<fn() -> (S, B)>);
}
