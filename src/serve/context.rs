//! What a handler learns of the connection its request came over: who is at the other
//! end ([`ConnInfo`]) and when its server begins to drain ([`Drain`]).
//!
//! # Why a scoped context and not only request extensions
//! `http::Extensions` allocates a map and a box per value on every request: for the
//! `Drain`, the `ConnInfo` and axum's `ConnectInfo` that was about 1,400 instructions,
//! a seventh of a small request's whole cost (see BENCHMARKS.md), paid whether or not a
//! handler reads them. So by default nothing is inserted. Instead, while ceaseless polls
//! a request's service call, its future and its response body, a scoped thread-local
//! lends the connection's context (the OS layer's `scoped_borrow`: a pointer set and
//! restored around each poll, a few instructions), and [`ConnInfo::current`] and [`Drain::current`] read it. With the
//! `axum` feature both are also extractors. `Server::request_extensions(true)` adds them
//! (and axum's `ConnectInfo<SocketAddr>`) to the request's extensions as well, for code
//! that reads extensions or runs outside those polls.
//!
//! A task the handler spawns (an upgraded WebSocket's, say) is polled by the runtime,
//! not by ceaseless: the handler takes what it needs before spawning it.
//!
//! `tokio::task_local!` would scope a value to one future, but it has to own the value
//! (a clone per request) and wraps the future in another: a scoped thread-local costs
//! neither. (A reference-counted handle in a thread-local costs a count per poll: about
//! 200 instructions of a request, measured; the `scoped-tls` crate about 110: see
//! BENCHMARKS.md.)

pub(crate) use crate::handover::listen::ConnInfo;
use crate::lifecycle::Drain;

/// One connection's context, as its handlers see it.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) info: ConnInfo,
    /// The connection's own copy of its server's drain.
    pub(crate) drain: Drain,
    /// Where its responses are counted for the error policy of a probation.
    pub(crate) outcomes: std::sync::Arc<crate::lifecycle::Outcomes>,
}

crate::sys::scoped_borrow! {
    /// The context of the request being polled on this thread.
    mod current: Ctx
}

/// Runs `f` with `ctx` as the current context (`None`: as it is); the previous one is
/// current again afterwards, even if `f` panics.
#[inline]
pub(crate) fn scoped<R>(ctx: Option<&Ctx>, f: impl FnOnce() -> R) -> R {
    match ctx {
        Some(ctx) => current::set(ctx, f),
        None => f(),
    }
}

fn with_current<R>(f: impl FnOnce(&Ctx) -> R) -> Option<R> {
    current::with(f)
}

impl ConnInfo {
    /// The connection of the request being handled: `Some` inside a handler served by
    /// ceaseless (its service call, its future and its response body), `None` elsewhere
    /// (a task the handler spawned, say: take it before spawning).
    pub fn current() -> Option<ConnInfo> {
        with_current(|c| c.info)
    }
}

impl Drain {
    /// The drain of the request being handled (see [`ConnInfo::current`] for where it
    /// is `Some`). A WebSocket handler takes it before spawning the socket's task:
    ///
    /// ```
    /// # async fn handler(_req: http::Request<hyper::body::Incoming>) {
    /// if let Some(drain) = ceaseless::Drain::current() {
    ///     tokio::spawn(async move {
    ///         let why = drain.wait().await;
    ///         // send a close frame: 1012 for a restart, 1001 for a shutdown
    ///         # let _ = why;
    ///     });
    /// }
    /// # }
    /// ```
    pub fn current() -> Option<Drain> {
        with_current(|c| c.drain.clone())
    }
}

#[cfg(feature = "axum")]
mod extract {
    use axum::extract::FromRequestParts;
    use http::request::Parts;
    use http::StatusCode;

    use super::{ConnInfo, Drain};

    /// What `ConnInfo` answers on a connection ceaseless does not serve: what is
    /// wrong, and the fix.
    const NOT_OURS: (StatusCode, &str) = (
        StatusCode::INTERNAL_SERVER_ERROR,
        "ceaseless: ConnInfo is known on the connections ceaseless serves, and this \
         request came through another server (axum::serve?): serve the app with \
         ceaseless::serve(listener, app) instead, or take axum's ConnectInfo\n",
    );

    /// What `Drain` answers where no process owner was started (so nothing drains).
    const NO_PROCESS: (StatusCode, &str) = (
        StatusCode::INTERNAL_SERVER_ERROR,
        "ceaseless: no process owner was started, so there is no drain to follow: \
         start one (Process::builder().start()) or serve with ceaseless::serve\n",
    );

    impl<S: Send + Sync> FromRequestParts<S> for ConnInfo {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<ConnInfo>()
                .copied()
                .or_else(ConnInfo::current)
                .ok_or(NOT_OURS)
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Drain {
        type Rejection = (StatusCode, &'static str);

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            // On a connection of another server, the process's drain: it starts when
            // the generation drains, a little before a ceaseless server's own would.
            parts
                .extensions
                .get::<Drain>()
                .cloned()
                .or_else(Drain::current)
                .or_else(|| crate::process::Process::current().map(|p| p.drain()))
                .ok_or(NO_PROCESS)
        }
    }
}
