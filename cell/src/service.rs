//! The service cell's request handling, free of any transport: REST and gRPC both turn their
//! request into a [`CellRequest`] and the result into their own response.
//!
//! One request: wait for admission (at most `workers × threads` in flight; later requests
//! wait their turn) → pick the behaviour (`?bid=`) → run the internal function → run the
//! downstream calls (from the POST trace, or sampled from the spec's groups) with groups in
//! parallel and calls of a group in sequence → answer the internal function's body.
//! As in µBench, a failing call does not stop the rest of its group; the request then fails
//! with the first error in plan order. Downstream bodies are read and dropped.
//!
//! This module is the seed of the engine (issue 4): admission and deadlines will grow here
//! without touching the transports.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh_api::service::{
    ExternalServiceGroup, Function, InternalService, ServiceSpec, Services,
};
use tokio::sync::{Semaphore, TryAcquireError};

use crate::downstream::{self, CallError, Caller, Downstream, HttpClient, Outgoing};
use crate::functions;
use crate::headers::TraceHeaders;
use crate::metrics::{CellMetrics, Endpoint, Identity};
use crate::plan::{GroupPlan, sample_groups};
use crate::trace::{self, TraceError, TraceNode};

/// How a cell is set up, besides its spec.
#[derive(Clone, Debug)]
pub struct CellOptions {
    /// `--resolve` overrides: service name → `host:port`.
    pub resolve: HashMap<String, String>,
    /// Bound on each downstream call.
    pub downstream_timeout: Duration,
    /// `zone` metric label.
    pub zone: String,
    /// `app_name` metric label (default: the service name).
    pub app_name: Option<String>,
    /// Directory of the disk stressor's scratch files.
    pub scratch_dir: PathBuf,
}

impl Default for CellOptions {
    fn default() -> Self {
        Self {
            resolve: HashMap::new(),
            downstream_timeout: Duration::from_secs(30),
            zone: "default".to_owned(),
            app_name: None,
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// Why a cell could not be built from its spec.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--service` names no service of the workmodel.
    #[error("service `{0}` is not in the workmodel (it has: {1})")]
    UnknownService(String, String),
    /// The internal service names no function.
    #[error("service `{0}`: internalService needs exactly one function: `computePi` or `loader`")]
    NoFunction(String),
    /// A downstream address is unusable.
    #[error(transparent)]
    Address(#[from] downstream::AddressError),
}

/// What a request asks for besides the spec's defaults.
#[derive(Debug)]
pub enum Work {
    /// µBench GET: downstream calls sampled from the spec.
    Stochastic,
    /// µBench POST: the raw JSON trace body, parsed by the cell.
    TraceJson(Bytes),
    /// A trace already parsed (gRPC).
    Trace(TraceNode),
}

/// One request, transport-free.
#[derive(Debug)]
pub struct CellRequest<'a> {
    /// Where it came in (selects metric series).
    pub endpoint: Endpoint,
    /// Query string without `?`, forwarded downstream; `bid=` selects a behaviour.
    pub query: Option<&'a str>,
    /// Stochastic or trace-driven.
    pub work: Work,
    /// Trace-context headers to propagate.
    pub headers: &'a TraceHeaders,
}

/// Why a request failed; each maps to an HTTP status and a gRPC code.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    /// The request itself is wrong (bad trace) → 400 / INVALID_ARGUMENT.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A downstream call failed → 502 / UNAVAILABLE.
    #[error(transparent)]
    Downstream(CallError),
    /// The internal function failed → 500 / INTERNAL.
    #[error("internal function failed: {0}")]
    Internal(String),
    /// The cell is shutting down → 503 / UNAVAILABLE.
    #[error("the cell is shutting down")]
    ShuttingDown,
}

impl CellError {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Downstream(CallError::Failed { .. }) => 502,
            Self::Downstream(CallError::TimedOut { .. }) => 504,
            Self::Internal(_) => 500,
            Self::ShuttingDown => 503,
        }
    }

    /// The failing downstream service, when a downstream failed.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Downstream(
                CallError::Failed { service, .. } | CallError::TimedOut { service, .. },
            ) => Some(service),
            _ => None,
        }
    }

    /// The cause without the summary.
    pub fn reason(&self) -> String {
        match self {
            Self::BadRequest(reason) | Self::Internal(reason) => reason.clone(),
            Self::Downstream(CallError::Failed { reason, .. }) => reason.clone(),
            Self::Downstream(CallError::TimedOut { after, .. }) => {
                format!("no complete answer within {after:?}")
            }
            Self::ShuttingDown => "not accepting new requests".to_owned(),
        }
    }

    /// A one-line summary without the cause.
    pub fn summary(&self) -> String {
        match self {
            Self::BadRequest(_) => "bad request".to_owned(),
            Self::Downstream(CallError::Failed { service, .. }) => {
                format!("downstream service {service} failed")
            }
            Self::Downstream(CallError::TimedOut { service, .. }) => {
                format!("downstream service {service} timed out")
            }
            Self::Internal(_) => "internal function failed".to_owned(),
            Self::ShuttingDown => "shutting down".to_owned(),
        }
    }

    /// `{"error": …, "service": …, "reason": …}` (`service` only for downstream failures).
    pub fn to_json(&self) -> String {
        let mut body = serde_json::json!({"error": self.summary(), "reason": self.reason()});
        if let Some(service) = self.service() {
            body["service"] = service.into();
        }
        body.to_string()
    }
}

impl From<TraceError> for CellError {
    fn from(error: TraceError) -> Self {
        Self::BadRequest(error.to_string())
    }
}

/// One downstream call of a request: the downstream's index and, for traces, its subtree.
type Call<'t> = (usize, Option<&'t TraceNode>);

/// The calls of a request, by group.
type CallGroups<'t> = Vec<Vec<Call<'t>>>;

/// An alternative behaviour, resolved.
#[derive(Debug)]
struct BehaviorPlan {
    internal: Option<InternalService>,
    groups: Option<Vec<GroupPlan>>,
}

/// A running service: its spec resolved into call plans, downstream clients and metrics.
#[derive(Debug)]
pub struct ServiceCell {
    name: String,
    spec: ServiceSpec,
    groups: Vec<GroupPlan>,
    behaviors: HashMap<String, BehaviorPlan>,
    downstreams: Vec<Downstream>,
    by_name: HashMap<String, usize>,
    caller: Caller,
    admission: Semaphore,
    capacity: u32,
    metrics: CellMetrics,
    scratch_dir: PathBuf,
}

impl ServiceCell {
    /// Builds the cell for service `name` of `services`. Runs inside a tokio runtime.
    pub fn new(
        services: &Services,
        name: &str,
        options: CellOptions,
        http: HttpClient,
    ) -> Result<Self, SetupError> {
        let spec = services.get(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = services.keys().map(String::as_str).collect();
            SetupError::UnknownService(name.to_owned(), names.join(", "))
        })?;
        if spec.internal_service.function().is_none() {
            return Err(SetupError::NoFunction(name.to_owned()));
        }
        let capacity = spec.concurrency().max(1);
        let metrics = CellMetrics::new(
            &Identity {
                zone: options.zone.clone(),
                app_name: options.app_name.clone().unwrap_or_else(|| name.to_owned()),
                service: name.to_owned(),
                path: spec.path().to_owned(),
            },
            capacity,
        );
        // Every other service is a potential downstream: POST traces may call any of them.
        let mut downstreams = Vec::new();
        let mut by_name = HashMap::new();
        for (other, other_spec) in services.iter().filter(|(n, _)| *n != name) {
            by_name.insert(other.clone(), downstreams.len());
            downstreams.push(Downstream {
                name: other.clone(),
                target: downstream::target(other, other_spec, &options.resolve)?,
                metrics: metrics.downstream(other),
            });
        }
        let plan = |groups: &[ExternalServiceGroup]| plan_groups(groups, &by_name);
        let groups = plan(&spec.external_services);
        let behaviors = spec
            .alternative_behaviors
            .iter()
            .map(|(bid, behavior)| {
                let resolved = BehaviorPlan {
                    internal: behavior.internal_service.clone(),
                    groups: behavior.external_services.as_deref().map(plan),
                };
                (bid.clone(), resolved)
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            groups,
            behaviors,
            downstreams,
            by_name,
            caller: Caller::new(http, options.downstream_timeout),
            admission: Semaphore::new(capacity as usize),
            capacity,
            metrics,
            scratch_dir: options.scratch_dir,
            spec,
        })
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's spec.
    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// The metrics.
    pub fn metrics(&self) -> &CellMetrics {
        &self.metrics
    }

    /// Requests admitted at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Requests currently admitted.
    pub fn in_flight(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.admission.available_permits())
    }

    /// Downstream services and where they are reached.
    pub fn downstreams(&self) -> impl Iterator<Item = (&str, String)> {
        self.downstreams
            .iter()
            .map(|d| (d.name.as_str(), d.target.describe()))
    }

    /// Stops admitting requests; waiting ones fail with [`CellError::ShuttingDown`].
    pub fn close(&self) {
        self.admission.close();
    }

    /// Handles one request and counts its outcome.
    pub async fn handle(&self, request: CellRequest<'_>) -> Result<Bytes, CellError> {
        let endpoint = request.endpoint;
        let result = self.run(request).await;
        let code = match &result {
            Ok(_) => 200,
            Err(error) => error.http_status(),
        };
        self.metrics.endpoint(endpoint).count(code);
        result
    }

    async fn run(&self, request: CellRequest<'_>) -> Result<Bytes, CellError> {
        let start = Instant::now();
        let series = self.metrics.endpoint(request.endpoint);
        let trace = match request.work {
            Work::Stochastic => None,
            Work::TraceJson(body) => Some(trace::parse(&body, &self.name)?),
            Work::Trace(node) => Some(trace::check_service(node, &self.name)?),
        };
        let (_permit, waited) = match self.admission.try_acquire() {
            Ok(permit) => (permit, false),
            Err(TryAcquireError::Closed) => return Err(CellError::ShuttingDown),
            Err(TryAcquireError::NoPermits) => {
                let permit = self
                    .admission
                    .acquire()
                    .await
                    .map_err(|_| CellError::ShuttingDown)?;
                (permit, true)
            }
        };
        self.metrics.inflight.inc();
        let _inflight = InflightGuard(&self.metrics);

        let behavior = request.query.and_then(|q| self.behavior(q));
        let internal = behavior
            .and_then(|b| b.internal.as_ref())
            .unwrap_or(&self.spec.internal_service);
        // Checked at setup for the spec; a behaviour's replacement may still be empty.
        let function = internal.function().ok_or_else(|| {
            CellError::Internal("the selected behaviour names no internal function".to_owned())
        })?;

        // Resolve a trace's calls before doing any work: an unknown service is the caller's
        // mistake (400), not a downstream failure.
        let calls: CallGroups<'_> = match &trace {
            Some(node) => self.trace_calls(node)?,
            None => {
                let groups = behavior
                    .and_then(|b| b.groups.as_deref())
                    .unwrap_or(&self.groups);
                if groups.is_empty() {
                    Vec::new()
                } else {
                    sample_groups(groups, &mut rand::rng())
                        .into_iter()
                        .map(|group| group.into_iter().map(|i| (i, None)).collect())
                        .collect()
                }
            }
        };

        // A GET admitted at once did nothing measurable since `start`, so `start` doubles as
        // the internal function's start: one clock read less on the hot path.
        let internal_start = if waited || trace.is_some() {
            Instant::now()
        } else {
            start
        };
        let body = functions::run(function, &self.scratch_dir)
            .await
            .map_err(|e| CellError::Internal(e.to_string()))?;
        let internal_end = Instant::now();
        series
            .internal_ms
            .observe(millis(internal_end - internal_start));
        series.response_size.observe(body.len() as f64);

        if !calls.is_empty() {
            // Boxed: the downstream futures are large, and most cells of a mesh are leaves;
            // keeping them out of this future keeps every request's future small.
            Box::pin(self.call_groups(&calls, request.query, request.headers))
                .await
                .map_err(CellError::Downstream)?;
        }
        let end = Instant::now();
        series.external_ms.observe(millis(end - internal_end));
        series.request_ms.observe(millis(end - start));
        Ok(body)
    }

    /// The behaviour `bid=<name>` in `query` selects, if any.
    fn behavior(&self, query: &str) -> Option<&BehaviorPlan> {
        if self.behaviors.is_empty() {
            return None;
        }
        let bid = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("bid="))?;
        self.behaviors.get(bid)
    }

    fn trace_calls<'t>(&self, node: &'t TraceNode) -> Result<CallGroups<'t>, CellError> {
        node.groups
            .iter()
            .filter(|group| !group.is_empty())
            .map(|group| {
                group
                    .iter()
                    .map(|child| {
                        let index = self.by_name.get(child.service()).ok_or_else(|| {
                            CellError::BadRequest(format!(
                                "the trace calls `{}`, which is not a service of this mesh",
                                child.service()
                            ))
                        })?;
                        Ok((*index, Some(child)))
                    })
                    .collect()
            })
            .collect()
    }

    /// Runs the groups in parallel and each group's calls in sequence; the first error in
    /// plan order wins, but every call is still made (as µBench).
    async fn call_groups(
        &self,
        groups: &[Vec<Call<'_>>],
        query: Option<&str>,
        headers: &TraceHeaders,
    ) -> Result<(), CallError> {
        match groups {
            [] => Ok(()),
            [only] => self.call_group(only, query, headers).await,
            _ => {
                futures::future::join_all(groups.iter().map(|g| self.call_group(g, query, headers)))
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    async fn call_group(
        &self,
        calls: &[Call<'_>],
        query: Option<&str>,
        headers: &TraceHeaders,
    ) -> Result<(), CallError> {
        let mut first_error = None;
        for &(index, trace) in calls {
            let outgoing = Outgoing {
                query,
                trace,
                headers,
            };
            if let Err(error) = self.caller.call(&self.downstreams[index], outgoing).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn plan_groups(
    groups: &[ExternalServiceGroup],
    by_name: &HashMap<String, usize>,
) -> Vec<GroupPlan> {
    groups
        .iter()
        .map(|group| {
            // Validation guarantees every name is a known, other service; skip defensively.
            let known: Vec<(usize, f64)> = group
                .services
                .iter()
                .filter_map(|s| by_name.get(s).map(|&i| (i, group.probability(s))))
                .collect();
            GroupPlan {
                seq_len: group.seq_len.map_or(usize::MAX, |n| n as usize),
                calls: known.iter().map(|(i, _)| *i).collect(),
                probabilities: known.iter().map(|(_, p)| *p).collect(),
            }
        })
        .filter(|plan| !plan.calls.is_empty())
        .collect()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

struct InflightGuard<'a>(&'a CellMetrics);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// Convenience for tests and tools: the spec's function, for logging.
pub fn function_name(function: Function<'_>) -> &'static str {
    match function {
        Function::ComputePi(_) => "computePi",
        Function::Loader(_) => "loader",
    }
}
