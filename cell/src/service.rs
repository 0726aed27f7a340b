//! The service cell's request handling, free of any transport: REST and gRPC both turn their
//! request into a [`CellRequest`] and the result into their own response.
//!
//! One request: parse its trace → pick the behaviour (`?bid=`) → submit the internal
//! function to the [`Engine`] (admission: queue full → 503 + `Retry-After`; deadline from the
//! request's timeout or the profile's `requestTimeout` → 504, also while queued; the leaf
//! runs inline, on a worker thread or in a worker process as the profile's `isolate` says;
//! a lost worker → 502 naming it) → run the downstream calls in this (acceptor) process,
//! within what is left of the deadline (from the POST trace, or sampled from the spec's
//! groups; groups in parallel, calls of a group in sequence) → answer the internal
//! function's body. As in µBench, a failing call does not stop the rest of its group; the
//! request then fails with the first error in plan order. Downstream bodies are read and
//! dropped.
//!
//! Without `--profile` the engine's profile is derived from the spec ([`default_profile`]):
//! `workers × threads` requests run at once, as in µBench.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh_api::pipeline::Stage;
use cellmesh_api::profile::{PoolLimit, ProfileSpec};
use cellmesh_api::service::{ExternalServiceGroup, Function, ServiceSpec, Services};
use serde_json::{Value, json};

use crate::downstream::{self, CallError, Caller, Downstream, HttpClient, Outgoing};
use crate::engine::{Engine, EngineError};
use crate::functions::leaves::{self, INTERNAL_SERVICE, InternalArgs};
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
    /// The caller's deadline (`x-request-timeout`, `grpc-timeout`); else the profile's.
    pub timeout: Option<Duration>,
}

/// Why a request failed; each maps to an HTTP status and a gRPC code.
#[derive(Debug, PartialEq, thiserror::Error)]
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
    /// The engine refused or failed the request (queue full, deadline, lost worker, …).
    #[error(transparent)]
    Engine(EngineError),
}

impl CellError {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Downstream(CallError::Failed { .. }) => 502,
            Self::Downstream(CallError::TimedOut { .. }) => 504,
            Self::Internal(_) => 500,
            Self::Engine(error) => error.http_status().as_u16(),
        }
    }

    /// `Retry-After` seconds, for rejections that have one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Engine(error) => error.retry_after_secs(),
            _ => None,
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
            Self::Engine(EngineError::WorkerLost { reason, .. }) => reason.clone(),
            Self::Engine(error) => error.to_string(),
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
            Self::Engine(EngineError::WorkerLost { worker, .. }) => {
                format!("{worker} was lost while running the request")
            }
            Self::Engine(error) => error.to_string(),
        }
    }

    /// `{"error": …, "service": …, "reason": …}` (`service` only for downstream failures;
    /// engine errors add their `code` and, for a lost worker, `worker`).
    pub fn to_json(&self) -> String {
        let mut body = json!({"error": self.summary(), "reason": self.reason()});
        if let Some(service) = self.service() {
            body["service"] = service.into();
        }
        if let Self::Engine(error) = self {
            body["code"] = error.code().into();
            if let EngineError::WorkerLost { worker, .. } = error {
                body["worker"] = worker.as_str().into();
            }
        }
        body.to_string()
    }
}

impl From<EngineError> for CellError {
    fn from(error: EngineError) -> Self {
        Self::Engine(error)
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

/// An alternative behaviour's downstream calls, resolved (its internal function is the
/// engine leaf's business).
#[derive(Debug)]
struct BehaviorPlan {
    groups: Option<Vec<GroupPlan>>,
}

/// The profile a service runs with when the cell is given none: µBench's layout, `workers`
/// pool slots of `threads` concurrent requests each, all started at once, inline on the
/// cell's runtime; requests beyond them wait in a queue of the default length.
pub fn default_profile(spec: &ServiceSpec) -> ProfileSpec {
    ProfileSpec {
        concurrency: spec.threads().max(1),
        pool_min: spec.workers().max(1),
        pool_limit: PoolLimit::Fixed(spec.workers().max(1)),
        ..ProfileSpec::default()
    }
}

/// The engine pipeline of a workmodel service: the one [`INTERNAL_SERVICE`] leaf with the
/// spec's internal function and those of its alternative behaviours.
pub fn service_stage(spec: &ServiceSpec, scratch_dir: &std::path::Path) -> Stage {
    let args = InternalArgs {
        default: spec.internal_service.clone(),
        behaviors: spec
            .alternative_behaviors
            .iter()
            .filter_map(|(bid, b)| Some((bid.clone(), b.internal_service.clone()?)))
            .collect(),
        scratch_dir: Some(scratch_dir.to_owned()),
    };
    Stage {
        name: Some("internal".to_owned()),
        function: Some(INTERNAL_SERVICE.to_owned()),
        // Serializing plain data cannot fail.
        args: serde_json::to_value(args).ok(),
        ..Stage::default()
    }
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
    engine: Engine,
    capacity: u32,
    metrics: CellMetrics,
}

impl ServiceCell {
    /// Builds the cell for service `name` of `services`, running its internal function on
    /// `engine` (started with [`service_stage`]). Runs inside a tokio runtime.
    pub fn new(
        services: &Services,
        name: &str,
        options: CellOptions,
        http: HttpClient,
        engine: Engine,
    ) -> Result<Self, SetupError> {
        let spec = services.get(name).cloned().ok_or_else(|| {
            let names: Vec<&str> = services.keys().map(String::as_str).collect();
            SetupError::UnknownService(name.to_owned(), names.join(", "))
        })?;
        if spec.internal_service.function().is_none() {
            return Err(SetupError::NoFunction(name.to_owned()));
        }
        let capacity = {
            let info = engine.info();
            info.effective_pool_limit
                .saturating_mul(info.profile.concurrency)
                .max(1)
        };
        let mut metrics = CellMetrics::new(
            &Identity {
                zone: options.zone.clone(),
                app_name: options.app_name.clone().unwrap_or_else(|| name.to_owned()),
                service: name.to_owned(),
                path: spec.path().to_owned(),
            },
            capacity,
        );
        metrics.register_engine(&engine);
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
            engine,
            capacity,
            metrics,
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

    /// Requests run at once with the profile in force at start (`poolLimit × concurrency`).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The engine running the internal function.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Downstream services and where they are reached.
    pub fn downstreams(&self) -> impl Iterator<Item = (&str, String)> {
        self.downstreams
            .iter()
            .map(|d| (d.name.as_str(), d.target.describe()))
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
        let bid = request.query.and_then(|q| self.bid(q));
        let behavior = bid.and_then(|bid| self.behaviors.get(bid));

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

        let input = bid.map_or(Value::Null, |bid| json!({ "bid": bid }));
        let mut outcome = self.engine.submit(input, request.timeout)?;
        let deadline = outcome.deadline();
        self.metrics.inflight.inc();
        let _inflight = InflightGuard(&self.metrics);
        let internal_start = if trace.is_some() {
            Instant::now()
        } else {
            start
        };
        // The leaf emits one body, then ends; read to the end so the engine sees the request
        // finish rather than abandoned.
        let mut body = None;
        while let Some(output) = outcome.next().await {
            body.get_or_insert(leaves::body_spec(output?).map_err(CellError::Internal)?);
        }
        let body = body
            .ok_or_else(|| CellError::Internal("the internal function answered nothing".into()))?
            .materialize();
        let internal_end = Instant::now();
        series
            .internal_ms
            .observe(millis(internal_end - internal_start));
        series.response_size.observe(body.len() as f64);

        if !calls.is_empty() {
            // Boxed: the downstream futures are large, and most cells of a mesh are leaves;
            // keeping them out of this future keeps every request's future small.
            let downstream = Box::pin(self.call_groups(&calls, request.query, request.headers));
            match tokio::time::timeout_at(deadline.into(), downstream).await {
                Ok(result) => result.map_err(CellError::Downstream)?,
                Err(_) => {
                    return Err(CellError::Engine(EngineError::TimedOut {
                        after: deadline.saturating_duration_since(start),
                    }));
                }
            }
        }
        let end = Instant::now();
        series.external_ms.observe(millis(end - internal_end));
        series.request_ms.observe(millis(end - start));
        Ok(body)
    }

    /// The behaviour name `bid=<name>` in `query` selects, if the spec has it.
    fn bid<'q>(&self, query: &'q str) -> Option<&'q str> {
        if self.behaviors.is_empty() {
            return None;
        }
        let bid = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("bid="))?;
        self.behaviors.contains_key(bid).then_some(bid)
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
