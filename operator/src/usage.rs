//! Usage per container for the Guardian: from Prometheus' HTTP API, or — when a policy names
//! no Prometheus and the operator runs without `--prometheus-url` — from the resource metrics
//! API `metrics.k8s.io/v1beta1` (metrics-server, or cellmesh-local's API server asking each
//! node agent), the source of `kubectl top`.
//!
//! A ScalingPolicy names PromQL templates (defaults: cAdvisor's
//! `container_cpu_usage_seconds_total` and `container_memory_working_set_bytes`); `{{window}}`
//! becomes the policy's window. The answer must be an instant vector labelled `namespace`,
//! `pod` and `container`; other series are ignored. Every failure is an error that says what
//! to check: the controller then holds every size and sets `MetricsAvailable=False` with
//! the message, and resumes by itself on the next successful query.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::guardian::ContainerKey;

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Prometheus could not be reached or did not answer in time.
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Prometheus answered with an error (bad query, overload …).
    #[error("Prometheus rejected the query {query:?}: {error_type}: {error}")]
    Rejected {
        query: String,
        error_type: String,
        error: String,
    },
    /// The answer is not what the PromQL of a ScalingPolicy must return.
    #[error("unexpected answer to {query:?}: {reason}")]
    Malformed { query: String, reason: String },
    /// The URL cannot be used.
    #[error("invalid Prometheus URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// `metrics.k8s.io` failed (not installed, forbidden, or a malformed PodMetrics).
    #[error("metrics.k8s.io PodMetrics of namespace {namespace}: {reason}")]
    MetricsApi { namespace: String, reason: String },
}

/// Usage of every container of a namespace: CPU in cores, memory in bytes, and the share of
/// CPU periods throttled where the source knows it (Prometheus with cAdvisor's counters).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu: BTreeMap<ContainerKey, f64>,
    pub memory: BTreeMap<ContainerKey, f64>,
    pub cpu_throttling: BTreeMap<ContainerKey, f64>,
}

/// A `PodMetricsList` of `metrics.k8s.io/v1beta1` (only the fields the Guardian needs).
#[derive(Debug, Deserialize)]
pub struct PodMetricsList {
    #[serde(default)]
    pub items: Vec<PodMetrics>,
}

/// One pod's `PodMetrics`: usage per container over the reader's window.
#[derive(Debug, Deserialize)]
pub struct PodMetrics {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

/// One container's `usage` (`cpu`, `memory` quantities such as `250000000n`, `65536Ki`).
#[derive(Debug, Deserialize)]
pub struct ContainerMetrics {
    pub name: String,
    #[serde(default)]
    pub usage: BTreeMap<String, String>,
}

/// The usage in a `PodMetricsList` of `namespace` (items of other namespaces are skipped).
/// A quantity that does not parse is an error naming the pod, container and field.
pub fn parse_pod_metrics(namespace: &str, list: &PodMetricsList) -> Result<Usage, UsageError> {
    let mut usage = Usage::default();
    for pod in &list.items {
        let Some(name) = pod.metadata.name.as_deref() else {
            continue;
        };
        if pod
            .metadata
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            continue;
        }
        for container in &pod.containers {
            let key = ContainerKey::new(name, &container.name);
            for (field, target) in [("cpu", &mut usage.cpu), ("memory", &mut usage.memory)] {
                let Some(text) = container.usage.get(field) else {
                    continue;
                };
                let value =
                    cellmesh_api::quantity::parse(text).map_err(|e| UsageError::MetricsApi {
                        namespace: namespace.to_owned(),
                        reason: format!(
                            "{name}/{}: usage.{field} {text:?} is not a quantity: {e}",
                            container.name
                        ),
                    })?;
                target.insert(key.clone(), value);
            }
        }
    }
    Ok(usage)
}

/// Lists `namespace`'s PodMetrics through the API server (`GET
/// /apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods`).
pub async fn metrics_api_usage(
    client: &kube::Client,
    namespace: &str,
    timeout: Duration,
) -> Result<Usage, UsageError> {
    let failed = |reason: String| UsageError::MetricsApi {
        namespace: namespace.to_owned(),
        reason,
    };
    let request = http::Request::get(format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
    ))
    .body(Vec::new())
    .map_err(|e| failed(e.to_string()))?;
    let list: PodMetricsList = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    parse_pod_metrics(namespace, &list)
}

/// `{{window}}` in a template replaced by the window in Prometheus' duration syntax.
pub fn render(template: &str, window: Duration) -> String {
    template.replace("{{window}}", &prometheus_duration(window))
}

/// A duration as PromQL writes it: `10s`, `1500ms`, `2m`.
pub fn prometheus_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(60_000) && millis > 0 {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The samples of an instant-vector answer in `namespace`, keyed by pod and container.
pub fn parse(
    query: &str,
    namespace: &str,
    body: &[u8],
) -> Result<BTreeMap<ContainerKey, f64>, UsageError> {
    let malformed = |reason: String| UsageError::Malformed {
        query: query.to_owned(),
        reason,
    };
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not Prometheus JSON: {e}")))?;
    if answer.status != "success" {
        return Err(UsageError::Rejected {
            query: query.to_owned(),
            error_type: answer.error_type.unwrap_or_else(|| "error".into()),
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer
        .data
        .ok_or_else(|| malformed("no data in a successful answer".into()))?;
    if data.result_type != "vector" {
        return Err(malformed(format!(
            "the query must return an instant vector, not a {}",
            data.result_type
        )));
    }
    let mut samples = BTreeMap::new();
    for series in data.result {
        let label = |name: &str| series.metric.get(name).filter(|v| !v.is_empty());
        let (Some(ns), Some(pod), Some(container)) =
            (label("namespace"), label("pod"), label("container"))
        else {
            continue;
        };
        if ns != namespace {
            continue;
        }
        let value: f64 = series.value.1.parse().map_err(|_| {
            malformed(format!(
                "sample {:?} of {pod}/{container} is not a number",
                series.value.1
            ))
        })?;
        if value.is_finite() {
            samples.insert(ContainerKey::new(pod, container), value);
        }
    }
    Ok(samples)
}

/// A client of one Prometheus server's HTTP API.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Prometheus {
    /// A client for `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, UsageError> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: http::Uri =
            base.parse()
                .map_err(|e: http::uri::InvalidUri| UsageError::BadUrl {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(UsageError::BadUrl {
                url: url.to_owned(),
                reason: "only http://host:port URLs are supported".into(),
            });
        }
        Ok(Self {
            base,
            timeout,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Runs an instant query and returns the samples of `namespace`'s containers.
    pub async fn usage(
        &self,
        query: &str,
        namespace: &str,
    ) -> Result<BTreeMap<ContainerKey, f64>, UsageError> {
        let unreachable = |reason: String| UsageError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let body = format!("query={}", urlencode(query));
        let request = http::Request::post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let mut reason = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    reason = format!("{reason}: {source}");
                }
                unreachable(reason)
            })?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, UsageError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        // Prometheus answers 400/422/503 with a JSON error body: parse() reports it.
        if !status.is_success() && !bytes.starts_with(b"{") {
            return Err(unreachable(format!("HTTP {status}")));
        }
        parse(query, namespace, &bytes)
    }
}

/// `application/x-www-form-urlencoded` encoding of a PromQL query.
fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_render_in_promql_syntax() {
        let q = render("rate(x[{{window}}])", Duration::from_secs(10));
        assert_eq!(q, "rate(x[10s])");
        assert_eq!(prometheus_duration(Duration::from_secs(120)), "2m");
        assert_eq!(prometheus_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn parses_a_vector_keeping_only_the_namespace_s_containers() {
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"namespace": "shop", "pod": "s0-a", "container": "cell"}, "value": [1.0, "0.75"]},
            {"metric": {"namespace": "other", "pod": "x", "container": "cell"}, "value": [1.0, "9"]},
            {"metric": {"namespace": "shop", "pod": "s0-a", "container": ""}, "value": [1.0, "3"]},
            {"metric": {"namespace": "shop", "pod": "s1-b"}, "value": [1.0, "3"]},
            {"metric": {"namespace": "shop", "pod": "s1-b", "container": "cell"}, "value": [1.0, "NaN"]}
        ]}});
        let samples = parse("q", "shop", body.to_string().as_bytes()).unwrap();
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[&ContainerKey::new("s0-a", "cell")], 0.75);
    }

    #[test]
    fn prometheus_errors_and_wrong_shapes_are_explained() {
        let rejected =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        let err = parse("rate(", "ns", rejected.to_string().as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("bad_data: parse error at char 5"),
            "{err}"
        );
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        let err = parse("x[1m]", "ns", matrix.to_string().as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("instant vector, not a matrix"),
            "{err}"
        );
        let err = parse("q", "ns", b"<html>").unwrap_err();
        assert!(err.to_string().contains("not Prometheus JSON"), "{err}");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Prometheus::new("http://127.0.0.1:9090/", Duration::from_secs(1)).is_ok());
        let err = Prometheus::new("ftp://x", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("only http://"), "{err}");
    }

    #[test]
    fn queries_are_form_encoded() {
        assert_eq!(
            urlencode("sum(rate(a{b!=\"\"}[1m]))"),
            "sum%28rate%28a%7Bb%21%3D%22%22%7D%5B1m%5D%29%29"
        );
        assert_eq!(urlencode("a b"), "a+b");
    }

    /// A fake Prometheus on loopback: the client posts the query and reads the vector.
    #[tokio::test]
    async fn queries_a_server_and_reports_an_unreachable_one() {
        use axum::{Router, extract::Form, routing::post};
        #[derive(serde::Deserialize)]
        struct Query {
            query: String,
        }
        let app = Router::new().route(
            "/api/v1/query",
            post(|Form(q): Form<Query>| async move {
                axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": [
                    {"metric": {"namespace": "ns", "pod": "p", "container": "c"}, "value": [1.0, q.query.len().to_string()]}
                ]}}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let prometheus =
            Prometheus::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        let samples = prometheus.usage("up{job=\"a b\"}", "ns").await.unwrap();
        // The server saw the query decoded intact.
        assert_eq!(
            samples[&ContainerKey::new("p", "c")],
            "up{job=\"a b\"}".len() as f64
        );
        server.abort();
        let _ = server.await;
        let err = prometheus.usage("up", "ns").await.unwrap_err();
        assert!(matches!(err, UsageError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn pod_metrics_give_cores_and_bytes_per_container_of_the_namespace() {
        let list: PodMetricsList = serde_json::from_value(serde_json::json!({
            "kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
            "items": [
                {"metadata": {"name": "web-0", "namespace": "demo"}, "timestamp": "2026-11-23T10:00:00Z",
                 "window": "10.000s", "containers": [
                    {"name": "cell", "usage": {"cpu": "250000000n", "memory": "65536Ki"}},
                    {"name": "side", "usage": {"cpu": "2m"}}]},
                {"metadata": {"name": "web-0", "namespace": "other"},
                 "containers": [{"name": "cell", "usage": {"cpu": "1"}}]}
            ]
        }))
        .unwrap();
        let usage = parse_pod_metrics("demo", &list).unwrap();
        let cell = ContainerKey::new("web-0", "cell");
        let side = ContainerKey::new("web-0", "side");
        assert!((usage.cpu[&cell] - 0.25).abs() < 1e-9);
        assert!((usage.cpu[&side] - 0.002).abs() < 1e-9);
        assert_eq!(usage.memory[&cell], 64.0 * 1024.0 * 1024.0);
        assert!(!usage.memory.contains_key(&side), "no memory reading");
        assert_eq!(usage.cpu.len(), 2, "other namespaces are skipped");
    }

    #[test]
    fn a_bad_pod_metrics_quantity_names_the_container_and_field() {
        let list: PodMetricsList = serde_json::from_value(serde_json::json!({"items": [
            {"metadata": {"name": "web-0", "namespace": "demo"},
             "containers": [{"name": "cell", "usage": {"cpu": "lots"}}]}]}))
        .unwrap();
        let err = parse_pod_metrics("demo", &list).unwrap_err().to_string();
        assert!(err.contains("web-0/cell: usage.cpu \"lots\""), "{err}");
    }
}
