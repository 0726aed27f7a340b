//! The REST transport: `GET`/`POST` on the service's path with µBench's semantics, and
//! `/metrics`. Built by [`router`], so tests drive it without a socket.
//!
//! Success: `200 text/plain` with the internal function's body. Failure: the status of the
//! [`CellError`] (400 bad trace or bad `x-request-timeout`, 500 internal, 502 downstream
//! failed or worker lost, 503 queue full (with `Retry-After`) or draining, 504 deadline
//! passed or downstream timeout) with `{"error": …, "service": …, "reason": …, "code": …}`.
//! Trace headers are copied onto every response. `x-request-timeout: <ms>` sets the
//! request's deadline (default: the profile's `requestTimeout`).
//!
//! An App cell (pipeline mode) serves `POST /` instead: the body is the JSON input (empty =
//! `null`), the answer `200 application/x-ndjson`, one output per line in order, streamed
//! (chunked) as the pipeline emits them. A request that fails before its first output gets
//! the error's status and JSON envelope; one that fails later ends the stream with an
//! `{"error": {code, message, stage?}}` line.
//!
//! [`serve`] serves the cell as HTTP/1.1 with keep-alive (what µBench's clients speak) or
//! HTTP/2 with prior knowledge (h2c). It is axum's `serve` without upgrade support and its
//! per-connection `select!`, and it hands `GET`/`POST` on the service path straight to the
//! same handlers [`router`] uses, skipping route matching and extension bookkeeping that
//! cost about as much as the rest of a trivial request; every other request goes through the
//! router.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::warn;

use crate::app::{App, Workload};
use crate::engine::deadline;
use crate::headers::TraceHeaders;
use crate::metrics::{self, Endpoint};
use crate::service::{CellError, CellRequest, Work};

/// Largest POST trace accepted, in bytes.
pub const MAX_TRACE_BYTES: usize = 16 << 20;

/// Where an App cell takes requests.
pub const PIPELINE_PATH: &str = "/";

/// The request header carrying a deadline in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout";

/// The main port's routes: the service path (or [`PIPELINE_PATH`]) and `/metrics`.
pub fn router(app: Arc<App>) -> Router {
    let path = app.path().to_owned();
    let routes = match app.workload {
        Workload::Service(_) => Router::new().route(&path, get(serve_get).post(serve_post)),
        Workload::Pipeline(_) => Router::new().route(&path, axum::routing::post(serve_pipeline)),
    };
    routes.route("/metrics", get(serve_metrics)).with_state(app)
}

/// The deadline a request asks for, if any.
fn requested_timeout(parts: &Parts) -> Result<Option<Duration>, CellError> {
    let Some(value) = parts.headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| CellError::BadRequest(format!("{TIMEOUT_HEADER} is not ASCII")))?;
    deadline::from_timeout_header(text)
        .map(Some)
        .map_err(CellError::BadRequest)
}

async fn serve_get(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    respond(&app, Endpoint::RestGet, &parts, Work::Stochastic).await
}

async fn serve_post(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_TRACE_BYTES).await {
        Ok(bytes) => respond(&app, Endpoint::RestPost, &parts, Work::TraceJson(bytes)).await,
        Err(error) => {
            let error = CellError::BadRequest(format!(
                "cannot read the POST body (at most {MAX_TRACE_BYTES} bytes): {error}"
            ));
            app.metrics()
                .endpoint(Endpoint::RestPost)
                .count(error.http_status());
            let mut response = error_response(&error);
            TraceHeaders::from_headers(&parts.headers).apply(response.headers_mut());
            response
        }
    }
}

async fn respond(app: &App, endpoint: Endpoint, parts: &Parts, work: Work) -> Response {
    let headers = TraceHeaders::from_headers(&parts.headers);
    let Some(cell) = app.service() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let result = match requested_timeout(parts) {
        Ok(timeout) => {
            cell.handle(CellRequest {
                endpoint,
                query: parts.uri.query(),
                work,
                headers: &headers,
                timeout,
            })
            .await
        }
        Err(error) => {
            app.metrics().endpoint(endpoint).count(error.http_status());
            Err(error)
        }
    };
    let mut response = match result {
        Ok(body) => {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        Err(error) => error_response(&error),
    };
    headers.apply(response.headers_mut());
    response
}

fn error_response(error: &CellError) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        error.to_json(),
    )
        .into_response();
    if let Some(seconds) = error.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `POST /` of an App cell: JSON in, NDJSON out (streamed).
async fn serve_pipeline(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let started = std::time::Instant::now();
    let series = app.metrics().endpoint(Endpoint::RestPost);
    let result = async {
        let Workload::Pipeline(pipeline) = &app.workload else {
            return Err(CellError::BadRequest("this cell runs no pipeline".into()));
        };
        let timeout = requested_timeout(&parts)?;
        let bytes = axum::body::to_bytes(body, MAX_TRACE_BYTES)
            .await
            .map_err(|e| {
                CellError::BadRequest(format!(
                    "cannot read the body (at most {MAX_TRACE_BYTES} bytes): {e}"
                ))
            })?;
        let input = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| CellError::BadRequest(format!("the body is not JSON: {e}")))?
        };
        let mut outputs = pipeline.submit(input, timeout)?;
        // Wait for the first output so that an early failure gets its own status.
        let first = outputs.next().await.transpose()?;
        Ok((first, outputs))
    }
    .await;
    let (first, rest) = match result {
        Ok(ok) => ok,
        Err(error) => {
            series.count(error.http_status());
            return error_response(&error);
        }
    };
    series.count(200);
    series
        .request_ms
        .observe(started.elapsed().as_secs_f64() * 1000.0);
    let lines = futures::stream::iter(first.map(Ok))
        .chain(rest.into_stream())
        .map(|item| {
            let mut line = match item {
                Ok(value) => value.to_string(),
                Err(error) => error.to_json().to_string(),
            };
            line.push('\n');
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
        });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `/metrics` in the OpenMetrics text format.
pub async fn serve_metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics().encode(),
    )
        .into_response()
}

/// Routes one request: the service path's `GET`/`POST` directly to their handlers, everything
/// else (`/metrics`, `HEAD`, 404, 405) through `router`.
pub async fn dispatch(app: Arc<App>, router: Router, request: Request) -> Response {
    if app.service().is_some() && request.uri().path() == app.path() {
        if request.method() == Method::GET {
            return serve_get(State(app), request).await;
        }
        if request.method() == Method::POST {
            return serve_post(State(app), request).await;
        }
    }
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Serves `app` (with `router` for the paths [`dispatch`] does not short-cut) on `listener`
/// (HTTP/1.1 or h2c) until `stop` completes, then waits for the open connections to finish
/// their current requests.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let (app, router) = (app.clone(), router.clone());
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = dispatch(app.clone(), router.clone(), request.map(Body::new));
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            let _ = watcher.watch(connection).await;
        });
    }
    // Refuse new connections from now on; the open ones finish their current requests.
    drop(listener);
    graceful.shutdown().await;
}
