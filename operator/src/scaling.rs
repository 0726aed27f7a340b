//! The ScalingPolicy controller: every `interval`, per policy, read the targeted pods and
//! their usage from Prometheus, let the [`Guardian`] decide, carry the decisions out through
//! `pods/resize` (the [`scaler`](crate::scaler)) and write what it saw and did into the
//! policy's status.
//!
//! Failure handling follows the policy's contract: Prometheus unreachable or a bad query →
//! hold every size, `MetricsAvailable=False` with the error, try again next interval; a resize
//! the kubelet calls `Infeasible` → `ResizeInfeasible` condition and a Warning Event, and the
//! same target is not patched again (a different target is) and the Guardian decides from the
//! size in force; a resize the kubelet has `Deferred` or still applies → no new patch for that
//! pod until it settles or a timeout (6 intervals, at least 30 s) passes; an increase the pod's node has no room
//! for (allocatable minus the other pods' requests) → held, `InsufficientNodeHeadroom` Event;
//! a memory decrease Kubernetes forbids in place (no `resizePolicy: RestartContainer`) → left
//! as a recommendation; `mode: Off` → recommendations in the status only.
//!
//! Usage comes from Prometheus (the policy's or `--prometheus-url`), otherwise from
//! `metrics.k8s.io`. Every action is an Event, a log line and a
//! `cellmesh_scaling_actions_total` sample (see [`crate::telemetry`]); every tick is timed
//! into `cellmesh_scaling_decision_seconds`. `mode: InPlaceOrRecreate` acts as `InPlace`
//! for now (no Deployment-template fallback yet).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellmesh_api::crd::conditions::{self, Observed as ObservedCondition, scaling as cond};
use cellmesh_api::crd::scaling::{
    ContainerScalingStatus, Resource, ResourceScalingStatus, ScalingMode, ScalingPolicy,
    ScalingPolicySpec, ScalingPolicyStatus, TargetKind,
};
use cellmesh_api::quantity;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::json;

// The labels the WorkModel and App builders put on their pods select a policy's targets.
use crate::build::{APP_LABEL, SERVICE_LABEL, WORKMODEL_LABEL};
use crate::guardian::{ContainerKey, Decision, Guardian, ResourceName, Tick};
use crate::scaler::{self, ResizeState};
use crate::telemetry::{Health, ScalingResult};
use crate::usage::{self, Prometheus, UsageError};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Prometheus for policies that name none (`--prometheus-url`).
    pub prometheus_url: Option<String>,
    /// Longest wait for one Prometheus query.
    pub query_timeout: Duration,
    /// Only this namespace's policies; all when `None`.
    pub namespace: Option<String>,
    /// Where every action is counted (`cellmesh_scaling_*` on `/metrics`).
    pub health: Arc<Health>,
}

/// What the controller remembers of one policy between ticks.
struct PolicyState {
    uid: String,
    guardian: Guardian,
    /// Resize patches the kubelet called infeasible, per pod: not sent again.
    infeasible: BTreeMap<String, serde_json::Value>,
    /// The last resize sent per pod: its patch, its changes as (resource, up) for the
    /// metrics, and the kubelet verdict already counted for it.
    sent: BTreeMap<String, Sent>,
    last_action: Option<(String, Time)>,
}

/// A resize patch sent to one pod.
struct Sent {
    patch: serde_json::Value,
    at: Instant,
    changes: Vec<(&'static str, bool)>,
    /// `infeasible` or `deferred` once counted, so each verdict is counted once.
    verdict: Option<ScalingResult>,
}

impl PolicyState {
    fn new(uid: String) -> Self {
        Self {
            uid,
            guardian: Guardian::new(),
            infeasible: BTreeMap::new(),
            sent: BTreeMap::new(),
            last_action: None,
        }
    }
}

struct Context {
    client: Client,
    config: Config,
    recorder: Recorder,
    started: Instant,
    policies: Mutex<HashMap<(String, String), PolicyState>>,
}

/// Errors that make the controller retry with backoff (policy-level problems go into the
/// status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let policies: Api<ScalingPolicy> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let reporter = Reporter {
        controller: "cellmesh-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        config,
        started: Instant::now(),
        policies: Mutex::new(HashMap::new()),
    });
    Controller::new(policies, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "scaling reconcile failed");
            }
        })
        .await;
    Ok(())
}

fn error_policy(_: Arc<ScalingPolicy>, err: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%err, "ScalingPolicy: retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(policy: Arc<ScalingPolicy>, context: Arc<Context>) -> Result<Action, Error> {
    let tick_started = Instant::now();
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let spec = &policy.spec;
    let interval = spec.interval.get().max(Duration::from_millis(500));
    let now_time = Time(jiff::Timestamp::now());
    let generation = policy.metadata.generation;
    let previous = policy.status.clone().unwrap_or_default();
    let mut status = ScalingPolicyStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        last_action: previous.last_action.clone(),
        last_scale_time: previous.last_scale_time.clone(),
        containers: Vec::new(),
    };
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let selector = target_selector(spec);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(is_running)
        .collect();

    let source = Source::of(spec, &context.config);
    let usage = read_usage(&context, spec, &namespace, &source).await;
    let (cpu_usage, memory_usage) = match usage {
        Ok(samples) => {
            conditions::set(
                &mut status.conditions,
                condition(
                    cond::METRICS_AVAILABLE,
                    true,
                    "QuerySucceeded",
                    format!("usage read from {}", source.describe()),
                    generation,
                ),
                now_time.clone(),
            );
            samples
        }
        Err(err) => {
            conditions::set(
                &mut status.conditions,
                condition(
                    cond::METRICS_AVAILABLE,
                    false,
                    source.unavailable_reason(),
                    format!("{err}; holding every size"),
                    generation,
                ),
                now_time.clone(),
            );
            conditions::set(
                &mut status.conditions,
                condition(
                    cond::READY,
                    true,
                    "Holding",
                    "metrics unavailable: no resize until they return".into(),
                    generation,
                ),
                now_time.clone(),
            );
            write_status(&context, &policy, &status).await?;
            return Ok(Action::requeue(interval));
        }
    };

    let resize_states: BTreeMap<String, ResizeState> = pods
        .iter()
        .map(|pod| {
            let state = scaler::resize_state(pod, pod.metadata.generation.unwrap_or(0));
            (pod.name_any(), state)
        })
        .collect();
    let observations: BTreeMap<ContainerKey, _> = pods
        .iter()
        .flat_map(|pod| {
            // An infeasible resize stays in the spec but was never applied: decide from the
            // size in force, so the same target is wanted again (and not sent) until usage
            // moves it.
            if matches!(
                resize_states.get(&pod.name_any()),
                Some(ResizeState::Infeasible(_))
            ) {
                scaler::observe(&scaler::in_force(pod), &cpu_usage, &memory_usage)
            } else {
                scaler::observe(pod, &cpu_usage, &memory_usage)
            }
        })
        .collect();
    let elapsed = context.started.elapsed();
    let tick = {
        let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
        let uid = policy.uid().unwrap_or_default();
        let state = states
            .entry((namespace.clone(), name.clone()))
            .or_insert_with(|| PolicyState::new(uid.clone()));
        if state.uid != uid {
            // Deleted and recreated under the same name: start afresh.
            *state = PolicyState::new(uid);
        }
        state.guardian.tick(spec, elapsed, &observations)
    };
    let tick = match tick {
        Ok(tick) => tick,
        Err(err) => {
            conditions::set(
                &mut status.conditions,
                condition(
                    cond::READY,
                    false,
                    "InvalidPolicy",
                    err.to_string(),
                    generation,
                ),
                now_time,
            );
            write_status(&context, &policy, &status).await?;
            return Ok(Action::requeue(interval.max(Duration::from_secs(30))));
        }
    };

    let mut pending = Vec::new();
    let mut infeasible = Vec::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        let Some(state) = resize_states.get(&pod_name) else {
            continue;
        };
        match state {
            ResizeState::Deferred(message) | ResizeState::Failed(message) => {
                pending.push(format!("{pod_name}: {message}"));
            }
            ResizeState::InProgress => pending.push(format!("{pod_name}: in progress")),
            ResizeState::Infeasible(message) => infeasible.push(format!("{pod_name}: {message}")),
            ResizeState::NotObserved | ResizeState::Done => {}
        }
        kubelet_verdict(&context, &policy, &pod_name, state).await;
    }

    match spec.mode {
        ScalingMode::Off => recommend(&context, &policy, &tick).await,
        _ => {
            let target = Applying {
                pods_api: &pods_api,
                pods: pods.iter().map(|p| (p.name_any(), p)).collect(),
                resize_states: &resize_states,
                resize_timeout: resize_timeout(interval),
            };
            apply(&context, &policy, &target, &tick, &mut status, &now_time).await;
        }
    }
    context
        .config
        .health
        .metrics
        .scaling_decision(tick_started.elapsed());

    conditions::set(
        &mut status.conditions,
        condition(
            cond::RESIZE_PENDING,
            !pending.is_empty(),
            if pending.is_empty() {
                "NoneWaiting"
            } else {
                "KubeletWaiting"
            },
            if pending.is_empty() {
                "no resize is waiting for the kubelet".into()
            } else {
                pending.join("; ")
            },
            generation,
        ),
        now_time.clone(),
    );
    conditions::set(
        &mut status.conditions,
        condition(
            cond::RESIZE_INFEASIBLE,
            !infeasible.is_empty(),
            if infeasible.is_empty() {
                "AllFeasible"
            } else {
                "Infeasible"
            },
            if infeasible.is_empty() {
                "every resize fits its node".into()
            } else {
                infeasible.join("; ")
            },
            generation,
        ),
        now_time.clone(),
    );
    let ready_message = match (spec.mode, pods.len()) {
        (_, 0) => format!("no running pod matches {selector}"),
        (ScalingMode::Off, n) => format!("recommending for {n} pod(s); mode Off changes nothing"),
        (_, n) => format!("guarding {n} pod(s)"),
    };
    conditions::set(
        &mut status.conditions,
        condition(
            cond::READY,
            true,
            if pods.is_empty() {
                "NoTargets"
            } else {
                "Guarding"
            },
            ready_message,
            generation,
        ),
        now_time,
    );
    status.containers = container_statuses(&tick);
    write_status(&context, &policy, &status).await?;
    Ok(Action::requeue(interval))
}

/// Patches `pods/resize` for every pod with decisions, unless the same patch was found
/// infeasible before; records an Event per action and the last action in the status.
async fn apply(
    context: &Context,
    policy: &ScalingPolicy,
    target: &Applying<'_>,
    tick: &Tick,
    status: &mut ScalingPolicyStatus,
    now: &Time,
) {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    // Only what the API server accepts in place: memory decreases of containers without
    // `resizePolicy: RestartContainer` are left as recommendations (status only).
    let decisions: Vec<Decision> = tick
        .decisions
        .iter()
        .filter_map(|decision| {
            let pod = target.pods.get(&decision.key.pod)?;
            let changes: Vec<_> = decision
                .changes
                .iter()
                .filter(|c| scaler::resizable_in_place(pod, &decision.key.container, c))
                .cloned()
                .collect();
            (!changes.is_empty()).then(|| Decision {
                key: decision.key.clone(),
                changes,
            })
        })
        .collect();
    let mut by_pod: BTreeMap<&str, Vec<&Decision>> = BTreeMap::new();
    for decision in &decisions {
        by_pod.entry(&decision.key.pod).or_default().push(decision);
    }
    for (pod, decisions) in by_pod {
        let patch = scaler::resize_patch(&decisions);
        let skip = {
            let states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            states
                .get(&key)
                .and_then(|s| s.infeasible.get(pod))
                .is_some_and(|p| *p == patch)
        };
        if skip {
            continue;
        }
        if let Some(pod_object) = target.pods.get(pod)
            && let Err(reason) = node_headroom(context, pod_object, &decisions).await
        {
            for (resource, up) in action_labels(&decisions) {
                context
                    .config
                    .health
                    .metrics
                    .scaling_action(resource, up, ScalingResult::Deferred);
            }
            let note = format!("{pod}: not resized, its node lacks headroom: {reason}");
            tracing::info!(policy = %key.1, namespace = %key.0, reason = "InsufficientNodeHeadroom", "{note}");
            publish(
                context,
                policy,
                EventType::Warning,
                "InsufficientNodeHeadroom",
                note,
            )
            .await;
            continue;
        }
        let sent_age = {
            let states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            states
                .get(&key)
                .and_then(|s| s.sent.get(pod))
                .map(|sent| sent.at.elapsed())
        };
        if let Some(state) = target.resize_states.get(pod)
            && waits_for_kubelet(state, sent_age, target.resize_timeout)
        {
            tracing::debug!(
                pod,
                ?state,
                "a resize is under way: waiting for the kubelet"
            );
            continue;
        }
        let description = decisions
            .iter()
            .flat_map(|d| {
                d.changes
                    .iter()
                    .map(move |c| format!("{}/{} {}", pod, d.key.container, c.describe()))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let result = target
            .pods_api
            .patch_subresource(
                "resize",
                pod,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await;
        let (event_type, reason, note) = match &result {
            Ok(resized) => {
                if let ResizeState::Infeasible(message) =
                    scaler::resize_state(resized, resized.metadata.generation.unwrap_or(0))
                {
                    let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(state) = states.get_mut(&key) {
                        state.infeasible.insert(pod.to_owned(), patch.clone());
                    }
                    (
                        EventType::Warning,
                        "ResizeInfeasible",
                        format!("{description}: {message}"),
                    )
                } else {
                    (EventType::Normal, "Resized", description.clone())
                }
            }
            Err(err) => (
                EventType::Warning,
                "ResizeFailed",
                format!("{description}: {err}"),
            ),
        };
        tracing::info!(policy = %key.1, namespace = %key.0, %reason, "{note}");
        let changes = action_labels(&decisions);
        let counted = match (&result, reason) {
            (Err(_), _) => ScalingResult::Failed,
            (Ok(_), "ResizeInfeasible") => ScalingResult::Infeasible,
            (Ok(_), _) => ScalingResult::Applied,
        };
        for &(resource, up) in &changes {
            context
                .config
                .health
                .metrics
                .scaling_action(resource, up, counted);
        }
        if result.is_ok() {
            let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = states.get_mut(&key) {
                state.sent.insert(
                    pod.to_owned(),
                    Sent {
                        patch: patch.clone(),
                        at: Instant::now(),
                        changes,
                        verdict: (counted == ScalingResult::Infeasible).then_some(counted),
                    },
                );
            }
        }
        if result.is_ok() {
            status.last_action = Some(description.clone());
            status.last_scale_time = Some(now.clone());
            let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = states.get_mut(&key) {
                state.last_action = Some((description.clone(), now.clone()));
            }
        }
        publish(context, policy, event_type, reason, note).await;
    }
}

/// Checks, before an increase is sent, that `pod` still fits its node (Node allocatable minus
/// the other pods' requests), as the kubelet would when admitting the resize. A pod not bound
/// to a node, or a node without allocatable, is not checked; an API error is.
async fn node_headroom(
    context: &Context,
    pod: &Pod,
    decisions: &[&Decision],
) -> Result<(), String> {
    if !decisions
        .iter()
        .flat_map(|d| d.changes.iter())
        .any(|c| c.is_up())
    {
        return Ok(());
    }
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Ok(());
    };
    let nodes: Api<Node> = Api::all(context.client.clone());
    let node = nodes
        .get(node_name)
        .await
        .map_err(|e| format!("cannot read Node {node_name}: {e}"))?;
    let Some(allocatable) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) else {
        return Ok(());
    };
    let value = |name: &str| {
        allocatable
            .get(name)
            .and_then(|q| quantity::parse(&q.0).ok())
            .unwrap_or(f64::INFINITY)
    };
    let pods: Api<Pod> = Api::all(context.client.clone());
    let others = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await
        .map_err(|e| format!("cannot list the pods of Node {node_name}: {e}"))?
        .items;
    scaler::fits_node([value("cpu"), value("memory")], &others, pod, decisions)
}

/// What [`apply`] needs besides the tick: where to patch and what the kubelet says.
struct Applying<'a> {
    pods_api: &'a Api<Pod>,
    pods: BTreeMap<String, &'a Pod>,
    resize_states: &'a BTreeMap<String, ResizeState>,
    resize_timeout: Duration,
}

/// How long a resize the kubelet has `Deferred` (or still applies) is waited for before the
/// Guardian may send another: the kubelet retries a deferred resize by itself when room frees
/// up, so a new patch would only replace its queue entry.
fn resize_timeout(interval: Duration) -> Duration {
    (interval * 6).max(Duration::from_secs(30))
}

/// Whether to hold a pod's next resize: the kubelet still has the last one `Deferred` or in
/// progress, this operator sent it `sent_age` ago and the timeout has not passed. A resize not
/// sent by this process (`None`: e.g. before a restart) is not waited for: a pod whose node
/// never reports the size in force must not block the policy forever.
fn waits_for_kubelet(state: &ResizeState, sent_age: Option<Duration>, timeout: Duration) -> bool {
    matches!(state, ResizeState::Deferred(_) | ResizeState::InProgress)
        && sent_age.is_some_and(|age| age < timeout)
}

/// Records a Kubernetes Event on the policy (best effort: a lost Event is logged, not fatal).
async fn publish(
    context: &Context,
    policy: &ScalingPolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Resize".into(),
        secondary: None,
    };
    if let Err(err) = context
        .recorder
        .publish(&event, &policy.object_ref(&()))
        .await
    {
        tracing::debug!(%err, "cannot record an Event");
    }
}

/// `(resource, up)` of every change in `decisions`, the labels of the action metric.
fn action_labels(decisions: &[&Decision]) -> Vec<(&'static str, bool)> {
    decisions
        .iter()
        .flat_map(|d| d.changes.iter())
        .map(|c| (c.resource.field(), c.is_up()))
        .collect()
}

/// `mode: Off`: every decision is a recommendation only — counted, logged and recorded as an
/// Event; the status carries the recommended sizes.
async fn recommend(context: &Context, policy: &ScalingPolicy, tick: &Tick) {
    for decision in &tick.decisions {
        let description = decision
            .changes
            .iter()
            .map(|c| {
                format!(
                    "{}/{} {}",
                    decision.key.pod,
                    decision.key.container,
                    c.describe()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        for (resource, up) in action_labels(&[decision]) {
            context
                .config
                .health
                .metrics
                .scaling_action(resource, up, ScalingResult::Recommended);
        }
        tracing::info!(
            policy = %policy.name_any(),
            namespace = %policy.namespace().unwrap_or_default(),
            reason = "Recommended",
            "{description} (mode Off: not applied)"
        );
        publish(
            context,
            policy,
            EventType::Normal,
            "Recommended",
            format!("{description} (mode Off: not applied)"),
        )
        .await;
    }
}

/// Counts, logs and records the kubelet's verdict on the last resize sent to `pod` — once per
/// resize. An `Infeasible` resize is remembered so the same patch is not sent again.
async fn kubelet_verdict(
    context: &Context,
    policy: &ScalingPolicy,
    pod: &str,
    state: &ResizeState,
) {
    let (result, message) = match state {
        ResizeState::Infeasible(message) => (ScalingResult::Infeasible, message),
        ResizeState::Deferred(message) => (ScalingResult::Deferred, message),
        ResizeState::Failed(message) => (ScalingResult::Failed, message),
        _ => return,
    };
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let changes = {
        let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
        let Some(policy_state) = states.get_mut(&key) else {
            return;
        };
        let Some(sent) = policy_state.sent.get_mut(pod) else {
            return;
        };
        if sent.verdict == Some(result) {
            return;
        }
        sent.verdict = Some(result);
        let changes = sent.changes.clone();
        if result == ScalingResult::Infeasible {
            let patch = sent.patch.clone();
            policy_state.infeasible.insert(pod.to_owned(), patch);
        }
        changes
    };
    for &(resource, up) in &changes {
        context
            .config
            .health
            .metrics
            .scaling_action(resource, up, result);
    }
    let (type_, reason) = match result {
        ScalingResult::Infeasible => (EventType::Warning, "ResizeInfeasible"),
        ScalingResult::Deferred => (EventType::Normal, "ResizeDeferred"),
        _ => (EventType::Warning, "ResizeFailed"),
    };
    tracing::info!(policy = %key.1, namespace = %key.0, %reason, pod, "{message}");
    publish(context, policy, type_, reason, format!("{pod}: {message}")).await;
}

/// Where a policy's usage comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Prometheus(String),
    /// `metrics.k8s.io`: no Prometheus named by the policy nor by `--prometheus-url`.
    MetricsApi,
}

impl Source {
    fn of(spec: &ScalingPolicySpec, config: &Config) -> Self {
        spec.metrics
            .prometheus
            .as_ref()
            .map(|p| p.url.clone())
            .or_else(|| config.prometheus_url.clone())
            .map_or(Self::MetricsApi, Self::Prometheus)
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Prometheus(_) => "Prometheus",
            Self::MetricsApi => "metrics.k8s.io",
        }
    }

    /// The `MetricsAvailable=False` reason.
    fn unavailable_reason(&self) -> &'static str {
        match self {
            Self::Prometheus(_) => "PrometheusUnavailable",
            Self::MetricsApi => "MetricsApiUnavailable",
        }
    }
}

async fn read_usage(
    context: &Context,
    spec: &ScalingPolicySpec,
    namespace: &str,
    source: &Source,
) -> Result<(BTreeMap<ContainerKey, f64>, BTreeMap<ContainerKey, f64>), UsageError> {
    let url = match source {
        Source::Prometheus(url) => url,
        Source::MetricsApi => {
            let usage =
                usage::metrics_api_usage(&context.client, namespace, context.config.query_timeout)
                    .await?;
            // PodMetrics carry both resources; keep only the guarded ones, as with PromQL.
            return Ok((
                if spec.cpu.is_some() {
                    usage.cpu
                } else {
                    BTreeMap::new()
                },
                if spec.memory.is_some() {
                    usage.memory
                } else {
                    BTreeMap::new()
                },
            ));
        }
    };
    let prometheus = Prometheus::new(url, context.config.query_timeout)?;
    let window = spec.window.get();
    let cpu = match spec.cpu {
        Some(_) => {
            prometheus
                .usage(&usage::render(spec.metrics.cpu_query(), window), namespace)
                .await?
        }
        None => BTreeMap::new(),
    };
    let memory = match spec.memory {
        Some(_) => {
            prometheus
                .usage(
                    &usage::render(spec.metrics.memory_query(), window),
                    namespace,
                )
                .await?
        }
        None => BTreeMap::new(),
    };
    Ok((cpu, memory))
}

async fn write_status(
    context: &Context,
    policy: &ScalingPolicy,
    status: &ScalingPolicyStatus,
) -> Result<(), Error> {
    if policy.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<ScalingPolicy> = Api::namespaced(
        context.client.clone(),
        &policy.namespace().unwrap_or_default(),
    );
    api.patch_status(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

fn condition(
    type_: &'static str,
    holds: bool,
    reason: &'static str,
    message: String,
    generation: Option<i64>,
) -> ObservedCondition<'static> {
    ObservedCondition {
        type_,
        status: if holds {
            conditions::TRUE
        } else {
            conditions::FALSE
        },
        reason,
        message,
        observed_generation: generation,
    }
}

fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Running")
}

/// The label selector of the pods a policy targets.
pub fn target_selector(spec: &ScalingPolicySpec) -> String {
    let target = &spec.target_ref;
    match (&target.kind, &target.name, &target.selector) {
        (Some(TargetKind::WorkModel), Some(name), _) => {
            let mut selector = format!("{WORKMODEL_LABEL}={name}");
            if !target.services.is_empty() {
                selector.push_str(&format!(
                    ",{SERVICE_LABEL} in ({})",
                    target.services.join(",")
                ));
            }
            selector
        }
        (Some(TargetKind::App), Some(name), _) => format!("{APP_LABEL}={name}"),
        (_, _, Some(selector)) => label_selector(selector),
        // Admission requires kind+name or selector; match nothing rather than everything.
        _ => format!("{WORKMODEL_LABEL}=,{WORKMODEL_LABEL}!="),
    }
}

fn label_selector(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        parts.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    parts.join(",")
}

/// The status entries of every observed container, from a tick's reports.
pub fn container_statuses(tick: &Tick) -> Vec<ContainerScalingStatus> {
    tick.reports
        .iter()
        .map(|(key, reports)| {
            let resource_status = |name: ResourceName, resource: Resource| {
                reports.get(&name).map(|report| {
                    let format = |value: f64| match resource {
                        Resource::Cpu => quantity::cpu(value),
                        Resource::Memory => quantity::memory(value),
                    };
                    ResourceScalingStatus {
                        usage: report.usage.map(format),
                        request: report.request.map(format),
                        limit: report.limit.map(format),
                        upper: report.upper.map(format),
                        lower: report.lower.map(format),
                        up_events: report.up_events,
                        down_events: report.down_events,
                        recommendation: report.recommendation.map(format),
                    }
                })
            };
            let action = tick.decisions.iter().find(|d| &d.key == key).map(|d| {
                d.changes
                    .iter()
                    .map(|c| c.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            ContainerScalingStatus {
                pod: key.pod.clone(),
                container: key.container.clone(),
                cpu: resource_status(ResourceName::Cpu, Resource::Cpu),
                memory: resource_status(ResourceName::Memory, Resource::Memory),
                last_action: action,
                last_scale_time: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(target: serde_json::Value) -> ScalingPolicySpec {
        serde_json::from_value(json!({"targetRef": target, "cpu": {"min": "100m", "max": "2"}}))
            .unwrap()
    }

    #[test]
    fn deferred_and_running_resizes_are_waited_for_until_the_timeout() {
        let timeout = Duration::from_secs(30);
        let deferred = ResizeState::Deferred("node full".into());
        assert!(waits_for_kubelet(
            &deferred,
            Some(Duration::from_secs(5)),
            timeout
        ));
        assert!(!waits_for_kubelet(&deferred, None, timeout));
        assert!(!waits_for_kubelet(
            &deferred,
            Some(Duration::from_secs(31)),
            timeout
        ));
        assert!(waits_for_kubelet(
            &ResizeState::InProgress,
            Some(Duration::ZERO),
            timeout
        ));
        for state in [
            ResizeState::Done,
            ResizeState::NotObserved,
            ResizeState::Infeasible("too big".into()),
            ResizeState::Failed("error".into()),
        ] {
            assert!(
                !waits_for_kubelet(&state, Some(Duration::ZERO), timeout),
                "{state:?}"
            );
        }
        assert_eq!(resize_timeout(Duration::from_secs(1)), timeout);
        assert_eq!(
            resize_timeout(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn selectors_follow_the_operator_s_labels() {
        assert_eq!(
            target_selector(&spec(json!({"kind": "WorkModel", "name": "shop"}))),
            "cellmesh.io/workmodel=shop"
        );
        assert_eq!(
            target_selector(&spec(
                json!({"kind": "WorkModel", "name": "shop", "services": ["s0", "s1"]})
            )),
            "cellmesh.io/workmodel=shop,cellmesh.io/service in (s0,s1)"
        );
        assert_eq!(
            target_selector(&spec(json!({"kind": "App", "name": "scorer"}))),
            "cellmesh.io/app=scorer"
        );
        assert_eq!(
            target_selector(&spec(json!({"selector": {
                "matchLabels": {"tier": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                     {"key": "canary", "operator": "DoesNotExist"}]}}))),
            "tier=web,env in (a,b),!canary"
        );
    }

    #[test]
    fn statuses_report_usage_bands_and_recommendations_as_quantities() {
        let policy: ScalingPolicySpec = serde_json::from_value(json!({
            "targetRef": {"kind": "App", "name": "a"},
            "cpu": {"min": "100m", "max": "2", "upEvents": 1},
            "cooldown": "0s"
        }))
        .unwrap();
        let key = ContainerKey::new("p", "c");
        let observations = BTreeMap::from([(
            key,
            crate::guardian::Observation {
                cpu: crate::guardian::Observed {
                    usage: Some(0.5),
                    request: Some(0.5),
                    limit: Some(0.5),
                },
                ..Default::default()
            },
        )]);
        let tick = Guardian::new()
            .tick(&policy, Duration::from_secs(1), &observations)
            .unwrap();
        let statuses = container_statuses(&tick);
        let cpu = statuses[0].cpu.as_ref().unwrap();
        assert_eq!(cpu.usage.as_ref().unwrap().0, "500m");
        assert_eq!(cpu.up_events, 1);
        assert_eq!(cpu.upper.as_ref().unwrap().0, "400m");
        assert_eq!(cpu.lower.as_ref().unwrap().0, "200m");
        assert_eq!(cpu.recommendation.as_ref().unwrap().0, "1250m");
        assert_eq!(
            statuses[0].last_action.as_deref(),
            Some("cpu 500m→1250m (1 up event)")
        );
        assert!(statuses[0].memory.is_none(), "memory is not guarded");
    }
}
