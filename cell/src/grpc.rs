//! The gRPC transport: µBench's `microservice.MicroService` with the same semantics as REST.
//!
//! `GetMicroServiceResponse` answers the body in one message with `status_code = true`;
//! `StreamMicroServiceResponse` runs the same request and streams the body in chunks of at
//! most [`CHUNK_BYTES`]. A `Message` without `trace` is a stochastic request (REST GET) with
//! `query` forwarded; with `trace` it is trace-driven (REST POST). Failures are gRPC statuses
//! — `INVALID_ARGUMENT` (bad trace), `UNAVAILABLE` (a downstream failed, or shutting down),
//! `DEADLINE_EXCEEDED` (downstream timeout), `INTERNAL` — whose message names the failing
//! downstream, which is also in the `x-cellmesh-failed-service` metadata. Trace headers
//! arrive and leave as metadata.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::downstream::CallError;
use crate::headers::TraceHeaders;
use crate::metrics::Endpoint;
use crate::proto::micro_service_server::{MicroService, MicroServiceServer};
use crate::proto::{Message, MessageResponse};
use crate::service::{CellError, CellRequest, Work};

/// Largest chunk of a streamed body.
pub const CHUNK_BYTES: usize = 32 * 1024;

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
        let headers = TraceHeaders::from_headers(&metadata.into_headers());
        let work = match message.trace {
            Some(node) => Work::Trace(node.into()),
            None => Work::Stochastic,
        };
        let query = (!message.query.is_empty()).then_some(message.query.as_str());
        let result = self
            .app
            .cell
            .handle(CellRequest {
                endpoint,
                query,
                work,
                headers: &headers,
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
        CellError::Downstream(CallError::Failed { .. }) | CellError::ShuttingDown => {
            Status::unavailable(message)
        }
        CellError::Downstream(CallError::TimedOut { .. }) => Status::deadline_exceeded(message),
        CellError::Internal(_) => Status::internal(message),
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
