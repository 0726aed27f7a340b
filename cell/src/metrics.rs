//! The cell's Prometheus metrics, exposed on the main port's and the admin port's `/metrics`.
//!
//! µBench's names, as real histograms (series `<name>_bucket{le=…}`, `<name>_sum`,
//! `<name>_count`; µBench itself exposes `<name>_bucket_bucket` because its histogram names
//! already end in `_bucket`):
//! - `mub_request_processing_latency_milliseconds`: whole request, ms;
//! - `mub_internal_processing_latency_milliseconds`: the internal function, ms;
//! - `mub_external_processing_latency_milliseconds`: all downstream calls, ms;
//! - `mub_response_size`: body bytes.
//!
//! Their labels are `zone` (env `ZONE`), `app_name` (env `K8S_APP`, else the service name),
//! `method` (`GET`, `POST`, `grpc`), `endpoint` (the path, `grpc` or `grpc-stream`) and
//! `kubernetes_service`. µBench's `from` label (the caller's IP) is **dropped**: its
//! cardinality grows with every client. As in µBench they are observed for successful
//! requests (the internal latency also when a downstream then fails).
//! The latency buckets include all of µBench's (0.5, 1, 10, 100, 1000, 10000 ms), so µBench
//! queries on `le` keep working.
//!
//! cellmesh adds `cellmesh_requests_total{method,endpoint,code}` (every answered request, by
//! status code; gRPC codes are mapped to their HTTP equivalents), `cellmesh_downstream_calls_total
//! {service,outcome}` (`ok`, `error`, `timeout`), and the gauges `cellmesh_inflight_requests` and
//! `cellmesh_admission_capacity`.
//!
//! Every series a request touches is resolved once at start-up into a handle; a request only
//! updates atomics and per-histogram locks, never looks labels up.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of [`CellMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in ms: µBench's six plus finer steps.
const LATENCY_BUCKETS_MS: [f64; 16] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0,
];

/// Body size buckets in bytes: powers of 4 from 16 B to 16 MiB.
const SIZE_BUCKETS: [f64; 11] = [
    16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Status codes whose counters are resolved up front (others are created on first use).
const KNOWN_CODES: [u16; 7] = [200, 400, 404, 500, 502, 503, 504];

/// Where a request came in; selects a set of pre-resolved series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// REST `GET` on the service path.
    RestGet,
    /// REST `POST` (trace) on the service path.
    RestPost,
    /// gRPC unary `GetMicroServiceResponse`.
    Grpc,
    /// gRPC server-streaming `StreamMicroServiceResponse`.
    GrpcStream,
}

impl Endpoint {
    const ALL: [Endpoint; 4] = [Self::RestGet, Self::RestPost, Self::Grpc, Self::GrpcStream];

    fn method(self) -> &'static str {
        match self {
            Self::RestGet => "GET",
            Self::RestPost => "POST",
            Self::Grpc | Self::GrpcStream => "grpc",
        }
    }
}

/// Labels of the `mub_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MubLabels {
    zone: String,
    app_name: String,
    method: String,
    endpoint: String,
    kubernetes_service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DownstreamLabels {
    service: String,
    outcome: String,
}

/// Identity of this cell in the `mub_*` labels.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `zone` label.
    pub zone: String,
    /// `app_name` label.
    pub app_name: String,
    /// `kubernetes_service` label: the service name.
    pub service: String,
    /// `endpoint` label of REST requests: the service path.
    pub path: String,
}

/// Pre-resolved series of one [`Endpoint`].
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    /// `mub_request_processing_latency_milliseconds`.
    pub request_ms: Histogram,
    /// `mub_internal_processing_latency_milliseconds`.
    pub internal_ms: Histogram,
    /// `mub_external_processing_latency_milliseconds`.
    pub external_ms: Histogram,
    /// `mub_response_size`.
    pub response_size: Histogram,
    codes: [(u16, Counter); KNOWN_CODES.len()],
    labels: (String, String),
    family: Family<RequestLabels, Counter>,
}

impl EndpointMetrics {
    /// Counts one answered request with `code`.
    pub fn count(&self, code: u16) {
        match self.codes.iter().find(|(known, _)| *known == code) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                self.family
                    .get_or_create(&RequestLabels {
                        method: self.labels.0.clone(),
                        endpoint: self.labels.1.clone(),
                        code: code.to_string(),
                    })
                    .inc();
            }
        }
    }
}

/// Outcome counters of calls to one downstream service.
#[derive(Clone, Debug)]
pub struct DownstreamMetrics {
    /// Calls answered with success.
    pub ok: Counter,
    /// Calls that failed (connection, status, protocol).
    pub error: Counter,
    /// Calls that hit the downstream timeout.
    pub timeout: Counter,
}

/// Every metric of the cell and the registry that encodes them.
#[derive(Debug)]
pub struct CellMetrics {
    registry: Registry,
    endpoints: [EndpointMetrics; 4],
    downstream: Family<DownstreamLabels, Counter>,
    /// Requests admitted and not yet answered.
    pub inflight: Gauge,
}

impl CellMetrics {
    /// Registers every series for `identity`.
    pub fn new(identity: &Identity, capacity: u32) -> Self {
        let mut registry = Registry::default();
        let latency = || {
            Family::<MubLabels, Histogram>::new_with_constructor(
                (|| Histogram::new(LATENCY_BUCKETS_MS)) as fn() -> Histogram,
            )
        };
        let request_ms = latency();
        let internal_ms = latency();
        let external_ms = latency();
        let response_size = Family::<MubLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(SIZE_BUCKETS)) as fn() -> Histogram,
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let downstream = Family::<DownstreamLabels, Counter>::default();
        let inflight = Gauge::default();
        let admission_capacity = Gauge::<i64>::default();
        admission_capacity.set(i64::from(capacity));

        registry.register(
            "mub_request_processing_latency_milliseconds",
            "Request latency including internal and external processing, in milliseconds",
            request_ms.clone(),
        );
        registry.register(
            "mub_internal_processing_latency_milliseconds",
            "Latency of the internal function, in milliseconds",
            internal_ms.clone(),
        );
        registry.register(
            "mub_external_processing_latency_milliseconds",
            "Latency of all downstream calls of a request, in milliseconds",
            external_ms.clone(),
        );
        registry.register(
            "mub_response_size",
            "Response body size, in bytes",
            response_size.clone(),
        );
        registry.register(
            "cellmesh_requests",
            "Answered requests by status code",
            requests.clone(),
        );
        registry.register(
            "cellmesh_downstream_calls",
            "Downstream calls by service and outcome (ok, error, timeout)",
            downstream.clone(),
        );
        registry.register(
            "cellmesh_inflight_requests",
            "Requests admitted and not yet answered",
            inflight.clone(),
        );
        registry.register(
            "cellmesh_admission_capacity",
            "Requests run at once with the profile in force at start (poolLimit x concurrency)",
            admission_capacity,
        );

        let endpoints = Endpoint::ALL.map(|endpoint| {
            let endpoint_label = match endpoint {
                Endpoint::RestGet | Endpoint::RestPost => identity.path.clone(),
                Endpoint::Grpc => "grpc".to_owned(),
                Endpoint::GrpcStream => "grpc-stream".to_owned(),
            };
            let labels = MubLabels {
                zone: identity.zone.clone(),
                app_name: identity.app_name.clone(),
                method: endpoint.method().to_owned(),
                endpoint: endpoint_label.clone(),
                kubernetes_service: identity.service.clone(),
            };
            EndpointMetrics {
                request_ms: request_ms.get_or_create_owned(&labels),
                internal_ms: internal_ms.get_or_create_owned(&labels),
                external_ms: external_ms.get_or_create_owned(&labels),
                response_size: response_size.get_or_create_owned(&labels),
                codes: KNOWN_CODES.map(|code| {
                    let counter = requests.get_or_create_owned(&RequestLabels {
                        method: endpoint.method().to_owned(),
                        endpoint: endpoint_label.clone(),
                        code: code.to_string(),
                    });
                    (code, counter)
                }),
                labels: (endpoint.method().to_owned(), endpoint_label),
                family: requests.clone(),
            }
        });

        Self {
            registry,
            endpoints,
            downstream,
            inflight,
        }
    }

    /// Adds the engine's gauges and counters (`cellmesh_engine_*`), rendered at scrape time.
    pub fn register_engine(&mut self, engine: &crate::engine::Engine) {
        engine.register_metrics(&mut self.registry);
    }

    /// The series of `endpoint`.
    pub fn endpoint(&self, endpoint: Endpoint) -> &EndpointMetrics {
        let index = Endpoint::ALL
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or_default();
        &self.endpoints[index]
    }

    /// Resolves the outcome counters of calls to `service`.
    pub fn downstream(&self, service: &str) -> DownstreamMetrics {
        let get = |outcome: &str| {
            self.downstream.get_or_create_owned(&DownstreamLabels {
                service: service.to_owned(),
                outcome: outcome.to_owned(),
            })
        };
        DownstreamMetrics {
            ok: get("ok"),
            error: get("error"),
            timeout: get("timeout"),
        }
    }

    /// The OpenMetrics text exposition of every series.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Shared handle to the metrics.
pub type SharedMetrics = Arc<CellMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> CellMetrics {
        CellMetrics::new(
            &Identity {
                zone: "z1".into(),
                app_name: "shop".into(),
                service: "s0".into(),
                path: "/api/v1".into(),
            },
            64,
        )
    }

    #[test]
    fn histograms_have_correct_names_and_labels() {
        let metrics = metrics();
        let get = metrics.endpoint(Endpoint::RestGet);
        get.request_ms.observe(3.0);
        get.internal_ms.observe(0.2);
        get.external_ms.observe(2.0);
        get.response_size.observe(10.0);
        let text = metrics.encode();
        let labels =
            r#"zone="z1",app_name="shop",method="GET",endpoint="/api/v1",kubernetes_service="s0""#;
        for name in [
            "mub_request_processing_latency_milliseconds",
            "mub_internal_processing_latency_milliseconds",
            "mub_external_processing_latency_milliseconds",
            "mub_response_size",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} histogram")),
                "{name}\n{text}"
            );
            assert!(
                text.contains(&format!("{name}_count{{{labels}}} 1")),
                "{name}\n{text}"
            );
            assert!(
                text.contains(&format!("{name}_bucket{{le=\"+Inf\",{labels}}} 1")),
                "{text}"
            );
        }
        assert!(!text.contains("_bucket_bucket"));
        assert!(!text.contains("from="));
        assert!(
            text.contains(
                r#"mub_request_processing_latency_milliseconds_bucket{le="10.0",zone="z1""#
            )
        );
    }

    #[test]
    fn counters_by_code_and_downstream_outcome() {
        let metrics = metrics();
        let grpc = metrics.endpoint(Endpoint::Grpc);
        grpc.count(200);
        grpc.count(200);
        grpc.count(418);
        let s1 = metrics.downstream("s1");
        s1.timeout.inc();
        metrics.inflight.inc();
        let text = metrics.encode();
        for line in [
            r#"cellmesh_requests_total{method="grpc",endpoint="grpc",code="200"} 2"#,
            r#"cellmesh_requests_total{method="grpc",endpoint="grpc",code="418"} 1"#,
            r#"cellmesh_requests_total{method="GET",endpoint="/api/v1",code="502"} 0"#,
            r#"cellmesh_downstream_calls_total{service="s1",outcome="timeout"} 1"#,
            r#"cellmesh_downstream_calls_total{service="s1",outcome="ok"} 0"#,
            "cellmesh_inflight_requests 1",
            "cellmesh_admission_capacity 64",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
