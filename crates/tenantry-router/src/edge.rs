//! The one middleware every request passes through: it refuses oversized headers, opens
//! the request's root span, and once answered counts and times it under its route and
//! meters it for its tenant.
//!
//! One layer, not three (`tracing-actix-web`'s logger, a metrics layer, a header
//! check): each layer of `middleware::from_fn` boxes the request's future and calls
//! through a `dyn` service, and the logger drew a UUID for every request whether or not
//! a span was recorded. Here the future is a plain struct, the request id is drawn only
//! when the span is enabled, and the route label is the resource's own pattern, set
//! when the routes are registered ([`resource`]), never rebuilt from the path.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{web, HttpMessage, ResponseError};
use bytes::Bytes;
use tracing::Span;

use crate::meter::Billed;
use crate::{error, ApiError, AppState, ErrorCode};

/// Refuses requests whose headers add up to more than this, before any handler (or
/// token check) sees them.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The label of a request no route took (the default service, a wrong method, a
/// refusal before routing).
pub(crate) const UNMATCHED: &str = "unmatched";

/// The route pattern a resource serves: its requests' label in metrics, spans and
/// metering. Never a value from the request (one series per task id would follow).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteLabel(pub &'static str);

/// Marks a request no route took: its label is [`UNMATCHED`].
pub(crate) struct Unrouted;

/// A resource at `path`, labelled with it. A method it has no route for is answered as
/// a path no route has (404, `unmatched`).
pub(crate) fn resource(path: &'static str) -> actix_web::Resource {
    web::resource(path)
        .app_data(RouteLabel(path))
        .default_service(web::to(error::not_found))
}

/// The label a request was served under.
fn label(req: &actix_web::HttpRequest) -> &'static str {
    if req.extensions().contains::<Unrouted>() {
        return UNMATCHED;
    }
    req.app_data::<RouteLabel>().map_or(UNMATCHED, |l| l.0)
}

pub(crate) struct Edge;

/// The requests in flight, and whether the router is stopping. A request counts from
/// its arrival until its response's body is sent (or dropped). While stopping, every
/// answer asks its client to close the connection, so kept-alive connections bring no
/// more requests: [`Drain::stop`] waits for the count to reach 0 before it stops the
/// workers. Stopping a worker ends the connections its thread drives, and a request on
/// another worker may be using one of them ([`tenantry_pools`] lends a tenant's idle
/// connection across threads), so no worker stops while any request is in flight.
#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Drain {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops the router `handle` runs: no new connections, every answer from now on
    /// closes its connection, the requests in flight finish (for at most `timeout`),
    /// then the workers stop (graceful: what is left in flight gets actix's own
    /// shutdown timeout).
    pub async fn stop(&self, handle: &actix_web::dev::ServerHandle, timeout: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        handle.pause().await;
        let deadline = Instant::now() + timeout;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handle.stop(true).await;
    }
}

/// One request in flight, counted in [`Drain`] until dropped.
pub(crate) struct InFlight(web::Data<AppState>);

impl InFlight {
    fn start(state: web::Data<AppState>) -> Self {
        state.drain.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.drain.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B> Transform<S, ServiceRequest> for Edge
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<Spanned<EitherBody<B>>>;
    type Error = actix_web::Error;
    type Transform = EdgeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(EdgeService { service }))
    }
}

pub(crate) struct EdgeService<S> {
    service: S,
}

fn root_span(req: &ServiceRequest) -> Span {
    tracing::info_span!(
        "request",
        request_id = %uuid::Uuid::new_v4(),
        http.method = %req.method(),
        http.target = %req.path(),
        http.route = tracing::field::Empty,
        http.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        exception.message = tracing::field::Empty,
        exception.details = tracing::field::Empty,
        tenant = tracing::field::Empty,
    )
}

fn header_bytes(req: &ServiceRequest) -> usize {
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

impl<S, B> Service<ServiceRequest> for EdgeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<Spanned<EitherBody<B>>>;
    type Error = actix_web::Error;
    type Future = EdgeFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let span = root_span(&req);
        // The app's state, held as the request's place in flight.
        let flight = req
            .app_data::<web::Data<AppState>>()
            .cloned()
            .map(InFlight::start);
        let billed = Billed::default();
        let work = if header_bytes(&req) > MAX_HEADER_BYTES {
            req.extensions_mut().insert(Unrouted);
            let response = ApiError::new(
                ErrorCode::HeadersTooLarge,
                format!("the request headers are larger than {MAX_HEADER_BYTES} bytes"),
            )
            .error_response();
            Work::Refused {
                response: Some(req.into_response(response)),
            }
        } else {
            req.extensions_mut().insert(billed.clone());
            let fut = span.in_scope(|| self.service.call(req));
            Work::Served { fut }
        };
        EdgeFuture {
            work,
            span,
            started,
            billed,
            flight,
        }
    }
}

pin_project_lite::pin_project! {
    #[project = WorkProj]
    pub(crate) enum Work<F> {
        Served { #[pin] fut: F },
        Refused { response: Option<ServiceResponse> },
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct EdgeFuture<F> {
        #[pin]
        work: Work<F>,
        span: Span,
        started: Instant,
        billed: Billed,
        // The app's state, and the request counted in flight until its body is sent.
        flight: Option<InFlight>,
    }
}

impl<F, B> Future for EdgeFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<Spanned<EitherBody<B>>>, actix_web::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let outcome = match this.work.project() {
            WorkProj::Served { fut } => match fut.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome.map(ServiceResponse::map_into_left_body),
            },
            WorkProj::Refused { response } => Ok(response
                .take()
                .expect("the edge future is not polled after it completed")
                .map_into_right_body()),
        };
        let answered = match &outcome {
            Ok(response) => Answered {
                route: label(response.request()),
                status: response.status(),
                error: response.response().error().map(|e| e.as_response_error()),
            },
            Err(e) => Answered {
                route: UNMATCHED,
                status: e.as_response_error().status_code(),
                error: Some(e.as_response_error()),
            },
        };
        answered.record(this.span);
        if let Some(InFlight(state)) = this.flight.as_ref() {
            answered.count(state, this.billed, this.started.elapsed().as_secs_f64());
        }
        let span = this.span.clone();
        let flight = this.flight.take();
        Poll::Ready(outcome.map(|mut r| {
            if flight
                .as_ref()
                .is_some_and(|f| f.0.drain.stopping.load(Ordering::SeqCst))
            {
                r.response_mut()
                    .head_mut()
                    .set_connection_type(ConnectionType::Close);
            }
            r.map_body(|_, body| Spanned {
                body,
                span,
                _flight: flight,
            })
        }))
    }
}

/// What a request was answered with.
struct Answered<'a> {
    route: &'static str,
    status: StatusCode,
    error: Option<&'a dyn ResponseError>,
}

impl Answered<'_> {
    /// Into the request's span; an error answer is also an event (5xx an error, 4xx a
    /// debug line: a flood of refused requests is not the operator's warning).
    fn record(&self, span: &Span) {
        span.record("http.route", self.route);
        span.record("http.status_code", self.status.as_u16());
        if let Some(e) = self.error {
            if !span.is_disabled() {
                span.record("exception.message", tracing::field::display(e));
                span.record("exception.details", tracing::field::debug(e));
            }
            if self.status.is_server_error() {
                tracing::error!(status = self.status.as_u16(), "request failed: {e}");
            } else {
                tracing::debug!(status = self.status.as_u16(), "request refused: {e}");
            }
        }
        let ok = self.error.is_none() || self.status.is_client_error();
        span.record("otel.status_code", if ok { "OK" } else { "ERROR" });
    }

    /// Into the router's metrics, and the tenant's metered requests once one resolved.
    fn count(&self, state: &AppState, billed: &Billed, seconds: f64) {
        if let Some(tenant) = billed.get() {
            state
                .meter
                .request(tenant, self.route, self.status.as_u16());
        }
        state.metrics.request(self.route, self.status, seconds);
    }
}

pin_project_lite::pin_project! {
    /// A response body polled inside its request's span (a streamed `/v1/sql` result's
    /// log lines carry the request).
    pub(crate) struct Spanned<B> {
        #[pin]
        body: B,
        span: Span,
        // The request is in flight until its body is sent.
        _flight: Option<InFlight>,
    }
}

impl<B: MessageBody> MessageBody for Spanned<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.body.poll_next(cx)
    }

    fn try_into_bytes(self) -> Result<Bytes, Self> {
        let Self {
            body,
            span,
            _flight,
        } = self;
        body.try_into_bytes().map_err(|body| Self {
            body,
            span,
            _flight,
        })
    }
}
