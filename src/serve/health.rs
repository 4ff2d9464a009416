//! A health check that follows the process, for load balancers and Kubernetes probes.
//!
//! A restart is invisible to it: the address stays served, so the draining generation
//! still answers `200` (its HTTP/1 responses carry `Connection: close`, so the checker's
//! next probe reaches the new generation), and a new generation that is not ready yet
//! answers `200` too (it shares its sockets with the previous one, which serves). A
//! shutdown is not: from the lame-duck period ([`ProcessBuilder::lame_duck`]) on it
//! answers `503`, while everything else is still served, so the balancer takes the
//! process out of rotation before its listeners close. A first generation that has not
//! declared ready answers `503` as well.
//!
//! [`ProcessBuilder::lame_duck`]: crate::ProcessBuilder::lame_duck

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};

use crate::process::Process;

/// The health check as a tower service, for any request: `200 ok` while the process
/// serves (restarts included), `503 unavailable` during a shutdown's lame-duck period
/// and drain, and before a first generation is ready.
///
/// ```no_run
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello\n" }))
///     .route_service("/healthz", ceaseless::Health);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Health;

/// The health check's answer, for a handler of your own.
pub fn health() -> Response<String> {
    let (status, text) = match Process::current() {
        Some(p) if p.healthy() => (StatusCode::OK, "ok\n"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not started\n"),
    };
    let mut res = Response::new(text.to_string());
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl<B> tower_service::Service<Request<B>> for Health {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(health()))
    }
}
