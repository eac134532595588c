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
        use futures_util::FutureExt;
        let next = Next(self.inner.clone());
        // Boxed as it is made: an async block around it would be boxed with room for it and
        // then move it in on its first poll, a copy of its whole state more per request.
        Box::pin(self.middleware.clone().call(request, next).map(Ok))
    }
}

/// tower-http's compression for the clients that ask for it (`Accept-Encoding`); a request
/// without the header passes it by (its answer gets the `Vary` the compression layer would
/// have added). Its answer type carries a compressor's whole state inline
/// (about 6 KB), copied at each layer it passes and boxed at the top, on every answer, also
/// for clients that take no compressed answer at all (scripts, monitors, load tests).
#[derive(Clone)]
pub(crate) struct CompressWhenAsked<S> {
    compress: tower_http::compression::Compression<S>,
    plain: S,
}

/// Puts [`CompressWhenAsked`] above a service.
#[derive(Clone, Copy)]
pub(crate) struct CompressWhenAskedLayer;

impl<S: Clone> Layer<S> for CompressWhenAskedLayer {
    type Service = CompressWhenAsked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CompressWhenAsked {
            compress: tower_http::compression::Compression::new(inner.clone()),
            plain: inner,
        }
    }
}

type Compressed<F> = futures_util::future::Map<
    tower_http::compression::ResponseFuture<F, tower_http::compression::DefaultPredicate>,
    fn(
        Result<Response<tower_http::compression::CompressionBody<Body>>, Infallible>,
    ) -> Result<Response, Infallible>,
>;

type Plain<F> =
    futures_util::future::Map<F, fn(Result<Response, Infallible>) -> Result<Response, Infallible>>;

/// `Vary: Accept-Encoding` on an answer that would have been compressed for a client that
/// asked, as the compression layer puts it there (a shared cache must not give this plain
/// copy to a client that asks for a compressed one, or the other way round).
fn vary_by_encoding(answer: Result<Response, Infallible>) -> Result<Response, Infallible> {
    use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE, VARY};
    use tower_http::compression::predicate::{DefaultPredicate, Predicate};
    let Ok(mut response) = answer;
    let headers = response.headers();
    let compressible = !headers.contains_key(CONTENT_ENCODING)
        && !headers.contains_key(CONTENT_RANGE)
        && DefaultPredicate::new().should_compress(&response);
    let varies = headers.get_all(VARY).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|name| name.trim_ascii().eq_ignore_ascii_case(b"accept-encoding"))
    });
    if compressible && !varies {
        response.headers_mut().append(VARY, ACCEPT_ENCODING.into());
    }
    Ok(response)
}

impl<S> Service<Request<Body>> for CompressWhenAsked<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures_util::future::Either<Compressed<S::Future>, Plain<S::Future>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Like the router below it, always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        use futures_util::FutureExt;
        if request
            .headers()
            .contains_key(axum::http::header::ACCEPT_ENCODING)
        {
            let boxed: fn(_) -> _ = |answer: Result<Response<_>, Infallible>| {
                answer.map(|response| response.map(Body::new))
            };
            futures_util::future::Either::Left(self.compress.call(request).map(boxed))
        } else {
            let vary: fn(_) -> _ = vary_by_encoding;
            futures_util::future::Either::Right(self.plain.call(request).map(vary))
        }
    }
}
