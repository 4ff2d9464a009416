//! ceaseless's own serving: [`Server`], [`listen_and_serve`], [`listen_and_serve_tls`],
//! [`serve`](crate::serve()),
//! the accept loop, and the drain with its hammer. The listener comes from the process
//! owner ([`Process`]); the connections are `conn`'s.
//!
//! # This folder
//! Serving, top of the house: it may call every other folder (`process` for the
//! listeners and the owner's state, `handover` for the listening sockets' types,
//! `observe` for the connection counts the status reads), and nothing calls it but the
//! crate's root.
//! - this file: [`Server`], the accept loop ([`run`]: every server's), the drain and
//!   its hammer;
//! - `serve_fn`: [`serve`](crate::serve()), `axum::serve`'s shape on the same loop, for a
//!   listener the process owner handed out;
//! - `conn`: one connection, its timeouts and its part of the drain; `http`: which HTTP
//!   a connection speaks; `context`: what a handler learns of its connection; `drain`:
//!   the open connections of one server;
//! - `tls` and `tickets`: TLS through rustls, session tickets shared by the
//!   generations; `health`: the health check balancers ask.

pub(crate) mod conn;
pub(crate) mod context;
pub(crate) mod drain;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod serve_fn;
#[cfg(any(feature = "tls-ring", feature = "tls-aws-lc-rs"))]
pub(crate) mod tickets;
pub(crate) mod tls;

#[cfg(feature = "tls")]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response};
use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::handover::listen::{ConnInfo, Listener, Stream};
use crate::lifecycle::Served;
use crate::process::Process;
use crate::serve::drain::{Tracker, Watched};
use conn::{Limits, Shared, DEFAULT_DRAIN_GRACE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default [`Server::read_timeout`]: 30 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Server::write_timeout`]: 60 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Server::max_header_bytes`]: 1 MiB, as Go's `http.DefaultMaxHeaderBytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1 << 20;
pub use crate::lifecycle::DEFAULT_HAMMER_TIME;
/// Default spread of the drain's closes ([`Server::drain_spread`]).
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::ZERO;

type BeforeBegin = Box<dyn FnOnce(&ListenAddr) + Send + 'static>;

/// A server, configured with a builder; endless's `NewServer` in Rust's idiom.
///
/// `app` is any tower `Service` over `http::Request<hyper::body::Incoming>` that is
/// `Clone + Send + 'static`: an axum `Router`, a tower stack, or a `service_fn`.
/// HTTP/1.1 and HTTP/2 (prior knowledge) share the port; over TLS, ALPN chooses.
///
/// ```no_run
/// use std::time::Duration;
/// use ceaseless::Server;
///
/// # async fn run() -> Result<(), ceaseless::Error> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
/// Server::new("127.0.0.1:4242", app)
///     .read_timeout(Some(Duration::from_secs(10)))
///     .write_timeout(Some(Duration::from_secs(10)))
///     .max_header_bytes(64 << 10)
///     .hammer_time(Some(Duration::from_secs(30)))
///     .before_begin(|addr| eprintln!("pid {} serving on {addr}", std::process::id()))
///     .listen_and_serve()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct Server<S> {
    addr: String,
    app: S,
    settings: Settings,
    before_begin: Option<BeforeBegin>,
    tls: Option<crate::serve::tls::Source>,
    fd_name: Option<String>,
}

/// How one server serves its connections: [`Server`]'s builder sets them, [`serve`](crate::serve())
/// uses the defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    /// `None`: the read timeout's.
    pub(crate) idle_timeout: Option<Option<Duration>>,
    pub(crate) max_header_bytes: usize,
    pub(crate) hammer_time: Option<Duration>,
    pub(crate) drain_grace: Duration,
    pub(crate) drain_spread: Duration,
    /// Whether requests carry their context in their extensions.
    pub(crate) extensions: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            idle_timeout: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            hammer_time: Some(DEFAULT_HAMMER_TIME),
            drain_grace: DEFAULT_DRAIN_GRACE,
            drain_spread: DEFAULT_DRAIN_SPREAD,
            extensions: false,
        }
    }
}

impl Settings {
    /// A timeout of zero is refused (`None` means no limit).
    fn check(&self) -> Result<(), Error> {
        for (name, t) in [
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("idle_timeout", self.idle_timeout.flatten()),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(Error::Setting {
                    name,
                    reason: "zero would cut every connection off; None means no limit".into(),
                });
            }
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            idle_timeout: self.idle_timeout.unwrap_or(self.read_timeout),
            max_header_bytes: self.max_header_bytes,
            drain_grace: self.drain_grace,
            drain_spread: self.drain_spread,
        }
    }
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("read_timeout", &self.settings.read_timeout)
            .field("write_timeout", &self.settings.write_timeout)
            .field("max_header_bytes", &self.settings.max_header_bytes)
            .field("hammer_time", &self.settings.hammer_time)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl<S, B> Server<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// A server for `addr` (`"127.0.0.1:4242"`, `"[::1]:80"`, `"unix:/run/app.sock"`;
    /// see [`ListenAddr`]) serving `app`, with the documented defaults.
    ///
    /// Across a restart each server gets back the socket of the same address. Port 0
    /// works too (the new generation keeps the port the kernel chose), but two servers
    /// of one process asking for port 0 on the same IP cannot be told apart: either may
    /// get either socket. Give them fixed ports if that matters.
    pub fn new(addr: impl Into<String>, app: S) -> Self {
        Server {
            addr: addr.into(),
            app,
            settings: Settings::default(),
            before_begin: None,
            tls: None,
            fd_name: None,
        }
    }

    /// The longest time to read a whole request, headers and body, from its first byte
    /// (default 30 s). A client that trickles its headers or body is cut off after it.
    /// `None`: no limit (then a slow client can hold a connection forever).
    ///
    /// For a request without a body the deadline ends when the headers are read. For one
    /// with a body it ends when the response starts: hyper keeps reading the socket (to
    /// notice a client that hangs up) while the handler runs, and those reads cannot be
    /// told apart from body reads. So a handler of a request with a body must start its
    /// response within the read timeout; Go, in the same case, cancels the request's
    /// context. Over HTTP/2 the same holds per stream: a stream whose body is still
    /// coming when the read timeout passes, with no response started, is reset, and the
    /// connection's other streams carry on. (An HTTP/2 request's headers arrive whole:
    /// hyper assembles them, within its header-list limit.) Once a connection is
    /// upgraded (a WebSocket) no read timeout applies to it.
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.settings.read_timeout = t;
        self
    }

    /// The longest time from the end of a request's headers to the start of its response
    /// (default 60 s), and the longest a write may make no progress (a client that stopped
    /// reading); past either the connection is closed (over HTTP/2, the stream is reset).
    /// A streaming response (server-sent events, a long download, a gRPC server stream)
    /// is never cut while the client keeps reading, however long it runs or however long
    /// the application stays silent between chunks. `None`: no limit.
    pub fn write_timeout(mut self, t: Option<Duration>) -> Self {
        self.settings.write_timeout = t;
        self
    }

    /// How long a keep-alive connection may sit idle between requests (default: the
    /// read timeout, as in Go). `None`: no limit.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.settings.idle_timeout = Some(t);
        self
    }

    /// The largest request head accepted, in bytes (default 1 MiB); a larger one is
    /// answered `431 Request Header Fields Too Large`.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.settings.max_header_bytes = n;
        self
    }

    /// How long a drain may last before every remaining connection is closed, with the
    /// log line `[STOP - Hammer Time] Forcefully shutting down` (default 60 s). `None`:
    /// never on its own; SIGUSR2 still hammers a draining server.
    pub fn hammer_time(mut self, t: Option<Duration>) -> Self {
        self.settings.hammer_time = t;
        self
    }

    /// How long a connection may stay idle during a drain before it is closed
    /// (default 250 ms). Busy connections are never cut by it: they get
    /// `Connection: close` (HTTP/1) or GOAWAY (HTTP/2) instead.
    pub fn drain_grace(mut self, t: Duration) -> Self {
        self.settings.drain_grace = t;
        self
    }

    /// Whether every request also carries its context in its extensions (default: no):
    /// the [`Drain`](crate::Drain), the [`ConnInfo`](crate::ConnInfo) and, with the
    /// `axum` feature, axum's `ConnectInfo<SocketAddr>` on TCP. Handlers find the first
    /// two without them, at no cost, with [`Drain::current`](crate::Drain::current) and
    /// [`ConnInfo::current`](crate::ConnInfo::current) (extractors with the `axum`
    /// feature). Turn them on for code that reads extensions (axum's `ConnectInfo`, a
    /// gRPC service's `Request::extensions`, a task that received the request):
    /// `http::Extensions` allocates a map and a box per value, about 1,400 instructions
    /// per request, a seventh of a small request's total (see BENCHMARKS.md). (Under
    /// [`serve`](crate::serve()), `router.into_make_service_with_connect_info::<SocketAddr>()`
    /// gives axum's `ConnectInfo` the axum way, without this.)
    ///
    /// ```no_run
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    /// use std::net::SocketAddr;
    ///
    /// # async fn run() -> Result<(), ceaseless::Error> {
    /// let app = Router::new().route(
    ///     "/ip",
    ///     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    /// );
    /// ceaseless::Server::new("127.0.0.1:8080", app)
    ///     .request_extensions(true)
    ///     .listen_and_serve()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_extensions(mut self, on: bool) -> Self {
        self.settings.extensions = on;
        self
    }

    /// Over how long the drain spreads the `Connection: close` of busy HTTP/1
    /// connections (default 0: all at once). Each connection gets its turn at a fixed
    /// offset within the spread; until then its responses keep it alive, so its client
    /// keeps being served here and reconnects later. Without a spread every client of a
    /// busy server reconnects within a millisecond or two of the drain, and over TLS
    /// each of them makes a full handshake on the new generation at the same time (see
    /// BENCHMARKS.md). The old generation lives up to that much longer.
    pub fn drain_spread(mut self, t: Duration) -> Self {
        self.settings.drain_spread = t;
        self
    }

    /// Called once the server listens, with the address it is bound to (default: log
    /// the pid and address, as endless does).
    pub fn before_begin(mut self, f: impl FnOnce(&ListenAddr) + Send + 'static) -> Self {
        self.before_begin = Some(Box::new(f));
        self
    }

    #[cfg(feature = "tls")]
    /// Serves HTTPS with the PEM certificate chain and private key in these files.
    pub fn tls(mut self, cert_pem: impl Into<PathBuf>, key_pem: impl Into<PathBuf>) -> Self {
        self.tls = Some(crate::serve::tls::Source::Files(
            cert_pem.into(),
            key_pem.into(),
        ));
        self
    }

    #[cfg(feature = "tls")]
    /// Serves HTTPS with the application's own rustls configuration: client
    /// authentication, a certificate resolver of its own (which can also swap
    /// certificates without a restart), another crypto provider, session settings. If
    /// it names no ALPN protocol, `h2` and `http/1.1` are offered, as with
    /// [`Server::tls`]; the drain, the timeouts and the handshake's bounds are the same.
    ///
    /// ```no_run
    /// # fn config() -> rustls::ServerConfig { unimplemented!() }
    /// # async fn run() -> Result<(), ceaseless::Error> {
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
    /// let config: rustls::ServerConfig = config(); // e.g. with a client certificate verifier
    /// ceaseless::Server::new("127.0.0.1:4243", app)
    ///     .tls_config(std::sync::Arc::new(config))
    ///     .listen_and_serve()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls_config(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(crate::serve::tls::Source::Config(config));
        self
    }

    #[cfg(feature = "systemd")]
    /// Under systemd socket activation, take the socket named `name` by the socket
    /// unit's `FileDescriptorName=` (otherwise sockets are matched by address).
    pub fn fd_name(mut self, name: impl Into<String>) -> Self {
        self.fd_name = Some(name.into());
        self
    }

    /// Serves until the process is told to stop (SIGINT, SIGTERM) or hands over to a new
    /// generation (SIGHUP), then drains and says which. Uses the process owner
    /// ([`Process`]), started with the defaults if the application did not start one.
    /// A timeout of zero is refused with [`Error::Setting`] (`None` means no limit).
    pub async fn listen_and_serve(self) -> Result<Served, Error> {
        self.settings.check()?;
        let process = Process::current_or_start()?;
        let addr = ListenAddr::parse(&self.addr)?;
        let tls = match &self.tls {
            Some(source) => Some(source.acceptor(&process)?),
            None => None,
        };
        let listener = match process.open(&addr, self.fd_name.as_deref(), true) {
            Ok(l) => l,
            // The process is already draining: nothing to serve.
            Err(Error::Draining) => return Ok(process.served().unwrap_or(Served::Shutdown)),
            Err(e) => return Err(e),
        };
        let local = listener.local_addr(&addr);
        match self.before_begin {
            Some(f) => f(&local),
            None => tracing::info!(pid = std::process::id(), addr = %local, "serving"),
        }
        let served = run(
            process,
            Accepting {
                listener,
                local,
                settings: self.settings,
                tls,
                stop: None,
            },
            Cloned(self.app),
        )
        .await;
        Ok(served)
    }
}

/// What makes the service of each connection a server accepts: [`Server`]'s app,
/// cloned, or what [`serve`](crate::serve()) was given (a service, or a make service called with the
/// connection).
pub trait MakeConn: Send + 'static {
    /// The service of one connection.
    type Service: tower_service::Service<
            Request<Incoming>,
            Response = Response<Self::Body>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static;
    /// Its responses' body.
    type Body: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;

    /// The service for the connection `stream`, from `info`.
    fn make<'a>(
        &'a mut self,
        stream: &'a Stream,
        info: ConnInfo,
    ) -> impl std::future::Future<Output = Self::Service> + Send + 'a;
}

/// [`Server`]'s app: one service, a clone for each connection.
pub struct Cloned<S>(pub(crate) S);

impl<S, B> MakeConn for Cloned<S>
where
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
        _: &'a Stream,
        _: ConnInfo,
    ) -> impl std::future::Future<Output = S> + Send + 'a {
        std::future::ready(self.0.clone())
    }
}

/// A server whose listener is open and claimed from the process owner.
pub(crate) struct Accepting {
    pub(crate) listener: Listener,
    /// The address it is bound to, as the status names it.
    pub(crate) local: ListenAddr,
    pub(crate) settings: Settings,
    pub(crate) tls: Option<crate::serve::tls::Acceptor>,
    /// The server's own shutdown signal, besides the process's drain.
    pub(crate) stop: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// One server's accept loop, its drain and its hammer, once its listener is open:
/// [`Server`] and [`serve`](crate::serve()) share it. Accepts until this generation drains (or the
/// server's own `stop` completes), then stops accepting, lets its connections finish
/// (the lame-duck drain of `conn`), hammers what is left at hammer time or SIGUSR2,
/// and tells the process owner it stopped.
pub(crate) async fn run<M: MakeConn>(process: Process, server: Accepting, mut make: M) -> Served {
    let Accepting {
        listener,
        local,
        settings,
        tls,
        mut stop,
    } = server;
    process.server_listening();

    let watch = process.watch();
    let generation = process.generation();
    let mut state = watch.state.clone();
    let pid = std::process::id();
    // Rounds of serving: one, unless this generation parks for a probation after a
    // handover and the service rolls back to it (then it accepts again on the same
    // listener, in a new round).
    loop {
        // Requests learn of the drain once this server stopped accepting: a client told
        // to reconnect then reaches the next generation, never this one again.
        let (told, drain) = watch::channel(None);
        let shared = Arc::new(Shared::new(
            settings.limits(),
            crate::lifecycle::Drain::new(drain),
            settings.extensions,
            process.outcomes(),
        ));
        let tracker = Tracker::new();
        process.count_connections(&local, tracker.clone());

        let mut stopped_alone = false;
        loop {
            if state.borrow_and_update().is_draining() {
                break;
            }
            tokio::select! {
                biased;
                _ = state.changed() => {}
                _ = async { stop.as_mut().expect("guarded").await }, if stop.is_some() => {
                    stopped_alone = true;
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, info)) => {
                        let reg = tracker.register(shared.context(info), shared.spread_ms());
                        // Every log line of the connection names it, and its generation.
                        let span = tracing::info_span!("conn", peer = %info, generation, proto = tracing::field::Empty);
                        let app = make.make(&stream, info).await;
                        match &tls {
                            // The connection's one future: it answers the drain and the
                            // hammer itself.
                            None => spawn_in(span, conn::serve(stream, app, shared.clone(), crate::serve::http::Proto::Sniff, reg)),
                            // The handshake comes first, woken by the drain as well, and
                            // bounded by the read timeout (10 s without one).
                            Some(acceptor) => spawn_in(span, Watched::new(
                                reg.state().clone(),
                                tracker.clone(),
                                crate::serve::tls::serve(stream, acceptor.clone(), app, shared.clone(), settings.read_timeout.unwrap_or(Duration::from_secs(10)), reg),
                            )),
                        }
                    }
                    Err(e) => accept_error(e).await,
                },
            }
        }

        // Stop accepting: from now on the listener is the new generation's alone (after
        // a handover) or closed (on shutdown: new connections are refused). A parked
        // generation keeps it, accepting nothing, for a rollback.
        if stopped_alone {
            // Only this server stops: the process keeps the other listeners, not this
            // one, so that new connections are refused rather than left in its queue.
            process.release_listener(&listener);
        }
        let parked = !stopped_alone && state.borrow().parked;
        // The requests and connections of this round learn of the drain, and it is logged.
        let begin_drain = || {
            let why = process.served().unwrap_or(Served::Shutdown);
            told.send_replace(Some(why));
            tracker.begin_drain();
            let open = tracker.open();
            tracing::info!(pid, addr = %local, connections = open, reason = %why, parked, "stopped accepting; draining");
        };
        if !parked {
            // Closed before the line says so: new connections are refused.
            drop(listener);
            begin_drain();
            drain_out(&settings, &watch, &tracker, &local).await;
            break;
        }
        begin_drain();
        let drained = drain_out(&settings, &watch, &tracker, &local);
        // Parked: drain, and wait for a rollback (accept again, the rest of this
        // round's drain in a task of its own) or the probation's end.
        let mut drained = Some(Box::pin(drained));
        let resumed = loop {
            tokio::select! {
                _ = async { drained.as_mut().expect("guarded").await }, if drained.is_some() => drained = None,
                s = state.wait_for(|s| !s.is_draining() || !s.parked) => {
                    break s.is_ok_and(|s| !s.is_draining());
                }
            }
        };
        if resumed {
            tracing::info!(pid, addr = %local, "rolled back to this generation: accepting again");
            if let Some(rest) = drained {
                tokio::spawn(rest);
            }
            continue;
        }
        drop(listener);
        if let Some(rest) = drained {
            rest.await;
        }
        break;
    }
    let served = process.server_stopped().await;
    tracing::info!(pid, addr = %local, "drained; server stopped");
    served
}

/// Waits for a round's connections to finish, hammering what is left at the hammer time
/// or on SIGUSR2.
fn drain_out(
    settings: &Settings,
    watch: &crate::lifecycle::Watch,
    tracker: &Arc<Tracker>,
    local: &ListenAddr,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let hammer_time = settings.hammer_time;
    let hammer_at = hammer_time.and_then(crate::duration::deadline);
    let mut usr2 = watch.hammer.clone();
    usr2.borrow_and_update();
    let tracker = tracker.clone();
    let local = local.clone();
    let pid = std::process::id();
    async move {
        let hammer = || {
            let conns = tracker.open();
            if conns > 0 {
                tracing::warn!(pid, addr = %local, connections = conns, "[STOP - Hammer Time] Forcefully shutting down");
            }
            tracker.hammer();
        };
        loop {
            tokio::select! {
                _ = tracker.drained() => break,
                _ = crate::duration::sleep_until(hammer_at), if hammer_time.is_some() && !tracker.hammered() => hammer(),
                _ = usr2.changed() => hammer(),
            }
        }
    }
}

/// An accept error: per-connection ones are ignored; running out of descriptors backs
/// off briefly instead of spinning.
async fn accept_error(e: std::io::Error) {
    if crate::sys::net::out_of_resources(&e) {
        tracing::error!(error = %e, "accept failed; backing off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

/// Spawns a connection's task, inside its span unless that is disabled (logging below
/// INFO: then there is no span to enter on every poll).
fn spawn_in<F>(span: tracing::Span, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if span.is_disabled() {
        tokio::spawn(task);
    } else {
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }
}

/// Serves `app` on `addr` until the process is told to stop, then drains and says how
/// it ended. endless's `ListenAndServe`; SIGHUP restarts with no connection lost.
///
/// ```no_run
/// # async fn run() -> Result<(), ceaseless::Error> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
/// ceaseless::listen_and_serve("127.0.0.1:4242", app).await?;
/// # Ok(())
/// # }
/// ```
pub async fn listen_and_serve<S, B>(addr: impl Into<String>, app: S) -> Result<Served, Error>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Server::new(addr, app).listen_and_serve().await
}

#[cfg(feature = "tls")]
/// As [`listen_and_serve`], over TLS with the PEM certificate chain and key in these
/// files (HTTP/2 and HTTP/1.1 by ALPN). endless's `ListenAndServeTLS`. A bad file is an
/// error at start that names it.
///
/// ```no_run
/// # async fn run() -> Result<(), ceaseless::Error> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello\n" }));
/// ceaseless::listen_and_serve_tls("127.0.0.1:4243", "cert.pem", "key.pem", app).await?;
/// # Ok(())
/// # }
/// ```
pub async fn listen_and_serve_tls<S, B>(
    addr: impl Into<String>,
    cert_pem: impl Into<PathBuf>,
    key_pem: impl Into<PathBuf>,
    app: S,
) -> Result<Served, Error>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Server::new(addr, app)
        .tls(cert_pem, key_pem)
        .listen_and_serve()
        .await
}
