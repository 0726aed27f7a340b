//! The gRPC transport: µBench's `microservice.MicroService` with the same semantics as REST.
//!
//! `GetMicroServiceResponse` answers the body in one message with `status_code = true`;
//! `StreamMicroServiceResponse` runs the same request and streams the body in chunks of at
//! most [`CHUNK_BYTES`]. A `Message` without `trace` is a stochastic request (REST GET) with
//! `query` forwarded; with `trace` it is trace-driven (REST POST). Failures are gRPC statuses
//! — `INVALID_ARGUMENT` (bad trace), `UNAVAILABLE` (a downstream failed, or shutting down),
//! `DEADLINE_EXCEEDED` (downstream timeout), `INTERNAL` — whose message names the failing
//! downstream, which is also in the `x-cellmesh-failed-service` metadata. Trace headers
//! arrive and leave as metadata. The engine's answers: `RESOURCE_EXHAUSTED` (queue full,
//! with `retry-after` metadata in seconds), `DEADLINE_EXCEEDED` (the request's deadline
//! passed, queued or running), `UNAVAILABLE` (draining, or the worker was lost: the message
//! names it); `x-cellmesh-error-code` carries the engine's code.
//!
//! Deadline: the client's `grpc-timeout`, answered [`DEADLINE_MARGIN`] early (at most) so
//! the client gets the cell's `DEADLINE_EXCEEDED` before tonic's own timer would answer
//! `CANCELLED`; else `x-request-timeout` (ms) metadata; else the profile's `requestTimeout`.
//!
//! An App cell (pipeline mode) takes the JSON input in `Message.message` (empty = `null`);
//! `GetMicroServiceResponse` answers the JSON array of every output in `text`,
//! `StreamMicroServiceResponse` one message per output (its JSON in `text`), in order, as
//! the pipeline emits them; a failure after some outputs ends the stream with its status.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::app::{App, PipelineCell, Workload};
use crate::downstream::CallError;
use crate::engine::{EngineError, deadline};
use crate::headers::TraceHeaders;
use crate::metrics::Endpoint;
use crate::proto::micro_service_server::{MicroService, MicroServiceServer};
use crate::proto::{Message, MessageResponse};
use crate::service::{CellError, CellRequest, Work};

/// Largest chunk of a streamed body.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// Most the cell answers before a `grpc-timeout` deadline (a tenth of it when shorter).
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(10);

/// The deadline the request's metadata asks for (see the module docs).
fn requested_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, Status> {
    let text = |key: &str| -> Result<Option<&str>, Status> {
        metadata
            .get(key)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::invalid_argument(format!("{key} is not ASCII")))
            })
            .transpose()
    };
    if let Some(value) = text("grpc-timeout")? {
        let timeout = deadline::from_grpc_timeout(value).map_err(Status::invalid_argument)?;
        return Ok(Some(timeout - DEADLINE_MARGIN.min(timeout / 10)));
    }
    match text(crate::http::TIMEOUT_HEADER)? {
        Some(value) => deadline::from_timeout_header(value)
            .map(Some)
            .map_err(Status::invalid_argument),
        None => Ok(None),
    }
}

/// The gRPC service of a cell.
#[derive(Clone, Debug)]
pub struct GrpcService {
    app: Arc<App>,
}

/// The tonic server wrapper for `app`.
pub fn grpc_service(app: Arc<App>) -> MicroServiceServer<GrpcService> {
    MicroServiceServer::new(GrpcService { app })
}

impl GrpcService {
    async fn run(
        &self,
        endpoint: Endpoint,
        request: Request<Message>,
    ) -> Result<(Bytes, TraceHeaders), Status> {
        let (metadata, _, message) = request.into_parts();
        let timeout = requested_timeout(&metadata)?;
        let headers = TraceHeaders::from_headers(&metadata.into_headers());
        let work = match message.trace {
            Some(node) => Work::Trace(node.into()),
            None => Work::Stochastic,
        };
        let query = (!message.query.is_empty()).then_some(message.query.as_str());
        let Some(cell) = self.app.service() else {
            return Err(Status::internal("this cell runs no workmodel service"));
        };
        let result = cell
            .handle(CellRequest {
                endpoint,
                query,
                work,
                headers: &headers,
                timeout,
            })
            .await;
        match result {
            Ok(body) => Ok((body, headers)),
            Err(error) => Err(to_status(&error, &headers)),
        }
    }
}

#[tonic::async_trait]
impl MicroService for GrpcService {
    async fn get_micro_service_response(
        &self,
        request: Request<Message>,
    ) -> Result<Response<MessageResponse>, Status> {
        if let Workload::Pipeline(pipeline) = &self.app.workload {
            let mut outputs = submit(pipeline, request)?;
            let mut values = Vec::new();
            while let Some(item) = outputs.next().await {
                values.push(item.map_err(|e| engine_status(&e))?);
            }
            return Ok(Response::new(MessageResponse {
                text: serde_json::Value::Array(values).to_string(),
                status_code: true,
            }));
        }
        let (body, headers) = self.run(Endpoint::Grpc, request).await?;
        let mut response = Response::new(MessageResponse {
            text: text_of(&body),
            status_code: true,
        });
        attach(&headers, response.metadata_mut());
        Ok(response)
    }

    type StreamMicroServiceResponseStream =
        Pin<Box<dyn Stream<Item = Result<MessageResponse, Status>> + Send + 'static>>;

    async fn stream_micro_service_response(
        &self,
        request: Request<Message>,
    ) -> Result<Response<Self::StreamMicroServiceResponseStream>, Status> {
        if let Workload::Pipeline(pipeline) = &self.app.workload {
            let outputs = submit(pipeline, request)?;
            let messages = futures::StreamExt::map(outputs.into_stream(), |item| match item {
                Ok(value) => Ok(MessageResponse {
                    text: value.to_string(),
                    status_code: true,
                }),
                Err(error) => Err(engine_status(&error)),
            });
            return Ok(Response::new(
                Box::pin(messages) as Self::StreamMicroServiceResponseStream
            ));
        }
        let (body, headers) = self.run(Endpoint::GrpcStream, request).await?;
        let chunks: Vec<Result<MessageResponse, Status>> = body
            .chunks(CHUNK_BYTES)
            .map(|chunk| {
                Ok(MessageResponse {
                    text: text_of(chunk),
                    status_code: true,
                })
            })
            .collect();
        let mut response = Response::new(
            Box::pin(futures::stream::iter(chunks)) as Self::StreamMicroServiceResponseStream
        );
        attach(&headers, response.metadata_mut());
        Ok(response)
    }
}

/// Admit an App request: its input is the JSON in `message`.
fn submit(
    pipeline: &PipelineCell,
    request: Request<Message>,
) -> Result<crate::engine::ResponseStream, Status> {
    let (metadata, _, message) = request.into_parts();
    let timeout = requested_timeout(&metadata)?;
    let input = if message.message.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&message.message)
            .map_err(|e| Status::invalid_argument(format!("message must be the JSON input: {e}")))?
    };
    pipeline
        .submit(input, timeout)
        .map_err(|e| to_status(&e, &TraceHeaders::default()))
}

/// The gRPC status of an engine error, with its code (and `retry-after`) as metadata.
pub fn engine_status(error: &EngineError) -> Status {
    let mut status = Status::new(error.grpc_code(), error.to_string());
    let metadata = status.metadata_mut();
    metadata.insert(
        "x-cellmesh-error-code",
        MetadataValue::from_static(error.code()),
    );
    if let Some(seconds) = error.retry_after_secs()
        && let Ok(value) = MetadataValue::try_from(seconds.to_string())
    {
        metadata.insert("retry-after", value);
    }
    status
}

/// Bodies are ASCII; anything else is replaced rather than refused.
fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn attach(headers: &TraceHeaders, metadata: &mut MetadataMap) {
    if !headers.is_empty() {
        *metadata = MetadataMap::from_headers(headers.to_header_map());
    }
}

/// The gRPC status for `error`, with trace headers and the failing service as metadata.
pub fn to_status(error: &CellError, headers: &TraceHeaders) -> Status {
    let message = error.to_string();
    let mut status = match error {
        CellError::BadRequest(_) => Status::invalid_argument(message),
        CellError::Downstream(CallError::Failed { .. }) => Status::unavailable(message),
        CellError::Downstream(CallError::TimedOut { .. }) => Status::deadline_exceeded(message),
        CellError::Internal(_) => Status::internal(message),
        CellError::Engine(error) => engine_status(error),
    };
    let metadata = status.metadata_mut();
    attach(headers, metadata);
    if let Some(service) = error.service()
        && let Ok(value) = MetadataValue::try_from(service)
    {
        metadata.insert("x-cellmesh-failed-service", value);
    }
    status
}
