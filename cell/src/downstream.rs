//! Calls to downstream services.
//!
//! Addresses: `--resolve NAME=HOST:PORT` wins; otherwise the service's `url` (µBench: REST
//! `http://{url}{path}`, port 80 when the url has none; gRPC `{host}:51313`); otherwise the
//! service name itself. A downstream is called with the protocol **it** serves (its
//! `requestMethod`) — in µBench every service must use the same one, so this only matters for
//! mixed meshes.
//!
//! REST goes through one pooled keep-alive client (hyper-util's) shared by all requests; gRPC
//! through one lazily connected HTTP/2 channel per downstream. Every call is bounded by the
//! downstream timeout (covering the whole response body), is counted per service and outcome,
//! and fails with an error naming the service: a non-200 status, a gRPC error status or
//! µBench's `status_code = false`, a connection failure, or the timeout.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use cellmesh_api::service::{RequestMethod, ServiceSpec};
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use crate::headers::TraceHeaders;
use crate::metrics::DownstreamMetrics;
use crate::proto;
use crate::proto::micro_service_client::MicroServiceClient;
use crate::trace::TraceNode;

/// µBench's fixed gRPC port.
pub const GRPC_PORT: u16 = 51313;

/// Longest part of a failing downstream's body quoted in the error.
const QUOTED_BODY_BYTES: usize = 300;

/// The REST client: pooled keep-alive HTTP/1.1 connections.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the shared REST client: keep-alive with a pool large enough for every in-flight
/// request to keep its connection.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// A downstream service this cell may call.
#[derive(Debug)]
pub struct Downstream {
    /// Service name.
    pub name: String,
    /// Where and how it is called.
    pub target: Target,
    /// Outcome counters.
    pub metrics: DownstreamMetrics,
}

/// Address and protocol of a downstream.
#[derive(Clone, Debug)]
pub enum Target {
    /// HTTP on `uri` (`http://host[:port]/path`).
    Rest {
        /// The request URI without query.
        uri: Uri,
    },
    /// gRPC at `address` (`host:port`).
    Grpc {
        /// `host:port`.
        address: String,
        /// Client over a lazily connected channel.
        client: MicroServiceClient<Channel>,
    },
}

impl Target {
    /// Where the target is, for logs and `/info`.
    pub fn describe(&self) -> String {
        match self {
            Self::Rest { uri } => uri.to_string(),
            Self::Grpc { address, .. } => format!("grpc://{address}"),
        }
    }
}

/// Why a target could not be built.
#[derive(Debug, thiserror::Error)]
#[error("service `{service}`: address `{address}` is not usable: {reason}")]
pub struct AddressError {
    service: String,
    address: String,
    reason: String,
}

/// Resolves the target of service `name` (see the module docs for the order). Must run
/// inside a tokio runtime (the gRPC channel spawns its worker).
pub fn target(
    name: &str,
    spec: &ServiceSpec,
    resolve: &HashMap<String, String>,
) -> Result<Target, AddressError> {
    let fail = |address: &str, reason: String| AddressError {
        service: name.to_owned(),
        address: address.to_owned(),
        reason,
    };
    let url_host = spec
        .url
        .as_deref()
        .map(|url| url.trim_start_matches("http://").trim_end_matches('/'));
    match spec.request_method {
        RequestMethod::Rest => {
            let authority = resolve
                .get(name)
                .map(String::as_str)
                .or(url_host)
                .unwrap_or(name);
            let text = format!("http://{authority}{}", spec.path());
            let uri = Uri::try_from(text.as_str()).map_err(|e| fail(&text, e.to_string()))?;
            Ok(Target::Rest { uri })
        }
        RequestMethod::Grpc => {
            let address = match resolve.get(name) {
                Some(address) => address.clone(),
                None => {
                    let host_port = url_host.unwrap_or(name);
                    let authority = http::uri::Authority::try_from(host_port)
                        .map_err(|e| fail(host_port, e.to_string()))?;
                    format!("{}:{GRPC_PORT}", authority.host())
                }
            };
            let endpoint = Channel::from_shared(format!("http://{address}"))
                .map_err(|e| fail(&address, e.to_string()))?
                .tcp_nodelay(true);
            let client = MicroServiceClient::new(endpoint.connect_lazy());
            Ok(Target::Grpc { address, client })
        }
    }
}

/// What one downstream call carries.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    /// Query string to forward (without `?`).
    pub query: Option<&'a str>,
    /// Subtree to run: a trace-driven call (POST) instead of a stochastic one (GET).
    pub trace: Option<&'a TraceNode>,
    /// Trace-context headers to propagate.
    pub headers: &'a TraceHeaders,
}

/// Why a downstream call failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Connection failure, error status or failure flag.
    #[error("downstream service `{service}` failed: {reason}")]
    Failed {
        /// The downstream service.
        service: String,
        /// What happened.
        reason: String,
    },
    /// No complete answer within the downstream timeout.
    #[error("downstream service `{service}` did not answer within {after:?}")]
    TimedOut {
        /// The downstream service.
        service: String,
        /// The timeout.
        after: Duration,
    },
}

/// Makes downstream calls.
#[derive(Clone, Debug)]
pub struct Caller {
    http: HttpClient,
    timeout: Duration,
}

impl Caller {
    /// A caller sharing `http`, bounding each call by `timeout`.
    pub fn new(http: HttpClient, timeout: Duration) -> Self {
        Self { http, timeout }
    }

    /// Calls `downstream` once, counting the outcome.
    pub async fn call(
        &self,
        downstream: &Downstream,
        outgoing: Outgoing<'_>,
    ) -> Result<(), CallError> {
        let attempt = async {
            match &downstream.target {
                Target::Rest { uri } => self.rest(uri, outgoing).await,
                Target::Grpc { client, .. } => grpc(client.clone(), outgoing).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(())) => {
                downstream.metrics.ok.inc();
                return Ok(());
            }
            Ok(Err(reason)) => {
                downstream.metrics.error.inc();
                CallError::Failed {
                    service: downstream.name.clone(),
                    reason,
                }
            }
            Err(_) => {
                downstream.metrics.timeout.inc();
                CallError::TimedOut {
                    service: downstream.name.clone(),
                    after: self.timeout,
                }
            }
        };
        Err(result)
    }

    async fn rest(&self, base: &Uri, outgoing: Outgoing<'_>) -> Result<(), String> {
        let uri = match outgoing.query {
            Some(query) if !query.is_empty() => Uri::try_from(format!("{base}?{query}"))
                .map_err(|e| format!("cannot forward the query string: {e}"))?,
            _ => base.clone(),
        };
        let (method, body) = match outgoing.trace {
            Some(node) => (Method::POST, Full::new(Bytes::from(node.to_body()))),
            None => (Method::GET, Full::default()),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        outgoing.headers.apply(headers);
        if outgoing.trace.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response body: {e}"))?
            .to_bytes();
        if status == http::StatusCode::OK {
            Ok(())
        } else {
            let quoted = &body[..body.len().min(QUOTED_BODY_BYTES)];
            Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(quoted).trim()
            ))
        }
    }
}

async fn grpc(
    mut client: MicroServiceClient<Channel>,
    outgoing: Outgoing<'_>,
) -> Result<(), String> {
    let mut request = tonic::Request::new(proto::Message {
        message: String::new(),
        query: outgoing.query.unwrap_or_default().to_owned(),
        trace: outgoing.trace.map(proto::TraceNode::from),
    });
    if !outgoing.headers.is_empty() {
        *request.metadata_mut() = MetadataMap::from_headers(outgoing.headers.to_header_map());
    }
    match client.get_micro_service_response(request).await {
        Ok(response) if response.get_ref().status_code => Ok(()),
        Ok(response) => Err(format!(
            "answered status_code=false: {}",
            response
                .get_ref()
                .text
                .chars()
                .take(QUOTED_BODY_BYTES)
                .collect::<String>()
        )),
        Err(status) => Err(format!("gRPC {:?}: {}", status.code(), status.message())),
    }
}

/// The most specific cause in a client error chain ("connection refused", not "client error").
fn describe_client_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellmesh_api::service::{ComputePi, InternalService};

    fn spec(method: RequestMethod, url: Option<&str>) -> ServiceSpec {
        let mut spec = ServiceSpec::new(InternalService::compute_pi(ComputePi::default()));
        spec.request_method = method;
        spec.url = url.map(str::to_owned);
        spec
    }

    #[tokio::test]
    async fn rest_address_prefers_resolve_then_url_then_name() {
        let resolve = HashMap::from([("s1".to_owned(), "127.0.0.9:8080".to_owned())]);
        let describe = |name: &str, url| {
            target(name, &spec(RequestMethod::Rest, url), &resolve)
                .unwrap()
                .describe()
        };
        assert_eq!(
            describe("s1", Some("s1.default.svc")),
            "http://127.0.0.9:8080/api/v1"
        );
        assert_eq!(
            describe("s2", Some("s2.default.svc.cluster.local")),
            "http://s2.default.svc.cluster.local/api/v1"
        );
        assert_eq!(
            describe("s2", Some("http://10.1.2.3:81/")),
            "http://10.1.2.3:81/api/v1"
        );
        assert_eq!(describe("s3", None), "http://s3/api/v1");
    }

    #[tokio::test]
    async fn grpc_address_uses_port_51313_unless_resolved() {
        let resolve = HashMap::from([("s1".to_owned(), "127.0.0.9:7000".to_owned())]);
        let describe = |name: &str, url| {
            target(name, &spec(RequestMethod::Grpc, url), &resolve)
                .unwrap()
                .describe()
        };
        assert_eq!(describe("s1", None), "grpc://127.0.0.9:7000");
        assert_eq!(
            describe("s2", Some("s2.ns.svc:8080")),
            "grpc://s2.ns.svc:51313"
        );
        assert_eq!(describe("s3", None), "grpc://s3:51313");
    }

    #[tokio::test]
    async fn bad_addresses_are_errors_naming_the_service() {
        let resolve = HashMap::from([("s1".to_owned(), "bad host:x".to_owned())]);
        let err = target("s1", &spec(RequestMethod::Rest, None), &resolve).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("service `s1`: address `http://bad host:x/api/v1`"),
            "{err}"
        );
    }
}
