//! The operator's observability: Prometheus metrics per controller, the `/healthz`,
//! `/readyz` and `/metrics` endpoints, and tracing logs (text or JSON).
//!
//! Metrics (prometheus-client, OpenMetrics text):
//! - `cellmesh_operator_reconciles_total{controller}`: reconciles run;
//! - `cellmesh_operator_reconcile_errors_total{controller,category}`: failed reconciles by
//!   error category (`InvalidSpec`-style reasons such as `CallCycle`, or `Kube`);
//! - `cellmesh_operator_reconcile_duration_seconds{controller}`: histogram;
//! - `cellmesh_operator_leader`: 1 while this replica holds the Lease (or runs without
//!   leader election);
//! - `cellmesh_scaling_actions_total{resource,direction,result}`: every resize the
//!   ScalingPolicy controller decided, per resource (`cpu`, `memory`), direction (`up`,
//!   `down`) and [`ScalingResult`];
//! - `cellmesh_scaling_decision_seconds`: histogram of one policy tick, from reading the
//!   pods and their usage to the last resize patch sent.
//!
//! The scaling names carry no `cellmesh_operator_` prefix: `dashboards/scaling.json` queries
//! them exactly as above (keep both in sync).
//!
//! `/healthz` answers 200 while the process serves; `/readyz` answers 200 once the operator
//! is either leading with its controllers started or standing by for the Lease, 503 before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

/// What became of one scaling action (the `result` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ScalingResult {
    /// The API server accepted the `pods/resize` patch (the kubelet's verdict follows).
    Applied,
    /// The kubelet reported the resize `Infeasible` (counted once per resize; the same
    /// resize is not sent again).
    Infeasible,
    /// The kubelet reported the resize `Deferred` (counted once per resize), or the
    /// operator held an increase back because the pod's node lacks headroom.
    Deferred,
    /// The API server refused the patch, or the kubelet failed to apply it.
    Failed,
    /// `mode: Off`: written into the status only.
    Recommended,
    /// `mode: InPlaceOrRecreate`: impossible in place, so written into the workload's pod
    /// template (its pods are recreated at the new size).
    Template,
}

impl ScalingResult {
    /// The label value: the variant's name in lower case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Infeasible => "infeasible",
            Self::Deferred => "deferred",
            Self::Failed => "failed",
            Self::Recommended => "recommended",
            Self::Template => "template",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingLabels {
    resource: &'static str,
    direction: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The operator's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    /// 1 while this replica acts.
    pub leader: Gauge,
    scaling_actions: Family<ScalingLabels, Counter>,
    scaling_decisions: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let scaling_actions = Family::<ScalingLabels, Counter>::default();
        let scaling_decisions = duration_histogram();
        root.register(
            "cellmesh_scaling_actions",
            "Scaling actions by resource, direction and result",
            scaling_actions.clone(),
        );
        root.register(
            "cellmesh_scaling_decision_seconds",
            "Time one ScalingPolicy tick took, from reading usage to the last resize sent",
            scaling_decisions.clone(),
        );
        let registry = root.sub_registry_with_prefix("cellmesh_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations =
            Family::<ControllerLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry: root,
            reconciles,
            errors,
            durations,
            leader,
            scaling_actions,
            scaling_decisions,
        }
    }
}

impl Metrics {
    /// Records one reconcile of `controller` that took `took` and failed with `error_category`
    /// (`None` on success).
    pub fn reconciled(
        &self,
        controller: &'static str,
        took: Duration,
        error_category: Option<&'static str>,
    ) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.durations
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if let Some(category) = error_category {
            self.errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
    }

    /// Counts one scaling action: `resource` is `cpu` or `memory`, `up` its direction.
    pub fn scaling_action(&self, resource: &'static str, up: bool, result: ScalingResult) {
        self.scaling_actions
            .get_or_create(&ScalingLabels {
                resource,
                direction: if up { "up" } else { "down" },
                result: result.as_str(),
            })
            .inc();
    }

    /// Records how long one ScalingPolicy tick took to decide and act.
    pub fn scaling_decision(&self, took: Duration) {
        self.scaling_decisions.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What the health endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the operator leads with its controllers running, or stands by.
    pub ready: AtomicBool,
    /// The metrics `/metrics` serves.
    pub metrics: Metrics,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the metrics: {error}\n"),
        ),
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber: `filter` is an `EnvFilter` directive
/// (`RUST_LOG` wins when set).
pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_count_per_controller() {
        let health = Arc::new(Health::default());
        assert_eq!(
            get(router(health.clone()), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(router(health.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.ready.store(true, Ordering::Release);
        assert_eq!(
            get(router(health.clone()), "/readyz").await.0,
            StatusCode::OK
        );

        health
            .metrics
            .reconciled("workmodel", Duration::from_millis(3), None);
        health
            .metrics
            .reconciled("workmodel", Duration::from_millis(5), Some("CallCycle"));
        let (status, text) = get(router(health), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("cellmesh_operator_reconciles_total{controller=\"workmodel\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "cellmesh_operator_reconcile_errors_total{controller=\"workmodel\",category=\"CallCycle\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cellmesh_operator_reconcile_duration_seconds_count{controller=\"workmodel\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn scaling_metrics_carry_the_names_the_dashboard_queries() {
        let metrics = Metrics::default();
        metrics.scaling_action("cpu", true, ScalingResult::Applied);
        metrics.scaling_action("cpu", true, ScalingResult::Applied);
        metrics.scaling_action("memory", false, ScalingResult::Recommended);
        metrics.scaling_decision(Duration::from_millis(20));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                "cellmesh_scaling_actions_total{resource=\"cpu\",direction=\"up\",result=\"applied\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cellmesh_scaling_actions_total{resource=\"memory\",direction=\"down\",result=\"recommended\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cellmesh_scaling_decision_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("cellmesh_operator_leader"), "{text}");
        // The dashboard queries exactly these names.
        let dashboard = include_str!("../../dashboards/scaling.json");
        for name in [
            "cellmesh_scaling_actions_total",
            "cellmesh_scaling_decision_seconds_bucket",
        ] {
            assert!(
                dashboard.contains(name),
                "dashboards/scaling.json lacks {name}"
            );
            assert!(text.contains(name), "/metrics lacks {name}");
        }
    }
}
