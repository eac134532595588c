//! The portal's middlewares as plain tower services: a [`Middleware`] is an async function of
//! its state, the request and the [`Next`] service, like axum's `from_fn`, without its costs on
//! every request (the service below boxed into a `BoxCloneSyncService` and its answer boxed
//! again, the state and request put through extractors).

use axum::{body::Body, extract::Request, response::IntoResponse, response::Response};
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tower::{Layer, Service, ServiceExt};

/// A middleware: what it does with a request, given the service below it.
pub(crate) trait Middleware<S>: Clone + Send + Sync + 'static {
    /// Answers `request`, passing it on through `next` when it goes on.
    fn call(self, request: Request, next: Next<S>) -> impl Future<Output = Response> + Send;
}

/// The service below a middleware, called at most once per request.
pub(crate) struct Next<S>(S);

impl<S> Next<S>
where
    S: Service<Request, Error = Infallible> + Send,
    S::Response: IntoResponse,
    S::Future: Send,
{
    /// Passes `request` on and returns the answer.
    pub(crate) async fn run(self, request: Request) -> Response {
        match self.0.oneshot(request).await {
            Ok(response) => response.into_response(),
            Err(never) => match never {},
        }
    }
}

/// Puts a [`Middleware`] above a service (`tower::ServiceBuilder::layer`).
#[derive(Clone)]
pub(crate) struct MiddlewareLayer<M>(pub(crate) M);

impl<M: Clone, S> Layer<S> for MiddlewareLayer<M> {
    type Service = WithMiddleware<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithMiddleware {
            middleware: self.0.clone(),
            inner,
        }
    }
}

/// A service with a [`Middleware`] above it.
#[derive(Clone)]
pub(crate) struct WithMiddleware<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S> Service<Request<Body>> for WithMiddleware<M, S>
where
    M: Middleware<S>,
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The service below is made ready when the request reaches it (`Next::run`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let next = Next(self.inner.clone());
        let middleware = self.middleware.clone();
        Box::pin(async move { Ok(middleware.call(request, next).await) })
    }
}
