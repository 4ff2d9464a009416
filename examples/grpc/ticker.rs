//! `ceaseless.test.Ticker` (see `ticker.proto` beside this file), written by hand: what
//! tonic-build would generate, minus what this example does not use. The messages are
//! prost derives; the server and client are tonic's generic `server::Grpc` and
//! `client::Grpc` with the prost codec. Shared by the example and `tests/grpc.rs`, each of
//! which uses one half (hence `dead_code` allowed).
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

pub const SERVICE: &str = "ceaseless.test.Ticker";
const HELLO: &str = "/ceaseless.test.Ticker/Hello";
const TICKS: &str = "/ceaseless.test.Ticker/Ticks";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TicksRequest {
    #[prost(uint64, tag = "1")]
    pub from: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tick {
    #[prost(uint64, tag = "1")]
    pub n: u64,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// What an implementation of the service provides.
pub trait Ticker: Send + Sync + 'static {
    type TicksStream: Stream<Item = Result<Tick, Status>> + Send + 'static;

    fn hello(
        &self,
        req: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;

    fn ticks(
        &self,
        req: Request<TicksRequest>,
    ) -> impl Future<Output = Result<Response<Self::TicksStream>, Status>> + Send;
}

/// The service as a tower `Service` over HTTP requests, for `tonic::service::Routes`.
pub struct TickerServer<T> {
    inner: Arc<T>,
}

impl<T> TickerServer<T> {
    pub fn new(inner: T) -> Self {
        TickerServer {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for TickerServer<T> {
    fn clone(&self) -> Self {
        TickerServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for TickerServer<T> {
    const NAME: &'static str = SERVICE;
}

struct HelloSvc<T>(Arc<T>);

impl<T: Ticker> tonic::server::UnaryService<HelloRequest> for HelloSvc<T> {
    type Response = HelloReply;
    type Future = BoxFuture<Response<HelloReply>, Status>;

    fn call(&mut self, req: Request<HelloRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.hello(req).await })
    }
}

struct TicksSvc<T>(Arc<T>);

impl<T: Ticker> tonic::server::ServerStreamingService<TicksRequest> for TicksSvc<T> {
    type Response = Tick;
    type ResponseStream = T::TicksStream;
    type Future = BoxFuture<Response<T::TicksStream>, Status>;

    fn call(&mut self, req: Request<TicksRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.ticks(req).await })
    }
}

impl<T, B> tower::Service<http::Request<B>> for TickerServer<T>
where
    T: Ticker,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        match req.uri().path() {
            HELLO => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(HelloSvc(inner), req).await)
            }),
            TICKS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(TicksSvc(inner), req).await)
            }),
            _ => Box::pin(async move {
                let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
                Ok(http::Response::from_parts(
                    parts,
                    tonic::body::Body::empty(),
                ))
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A client over any gRPC transport, such as a `tonic::transport::Channel`.
#[derive(Clone)]
pub struct TickerClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> TickerClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    pub fn new(inner: T) -> Self {
        TickerClient {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {}", e.into())))
    }

    pub async fn hello(
        &mut self,
        req: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(HELLO);
        self.inner
            .unary(req.into_request(), path, ProstCodec::default())
            .await
    }

    pub async fn ticks(
        &mut self,
        req: impl tonic::IntoRequest<TicksRequest>,
    ) -> Result<Response<Streaming<Tick>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(TICKS);
        self.inner
            .server_streaming(req.into_request(), path, ProstCodec::default())
            .await
    }
}
