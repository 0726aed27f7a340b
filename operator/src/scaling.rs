//! The ScalingPolicy controller: every `interval`, per policy, read the targeted pods and
//! their usage from Prometheus, let the [`Guardian`] decide, carry the decisions out through
//! `pods/resize` (the [`scaler`]) and write what it saw and did into the
//! policy's status.
//!
//! Failure handling follows the policy's contract: Prometheus unreachable or a bad query →
//! hold every size, `MetricsAvailable=False` with the error, try again next interval; a resize
//! the kubelet calls `Infeasible` → `ResizeInfeasible` condition and a Warning Event, and the
//! same target is not patched again (a different target is) and the Guardian decides from the
//! size in force; a resize the kubelet has `Deferred` or still applies → no new patch for that
//! pod until it settles or a timeout (6 intervals, at least 30 s) passes; an increase the pod's
//! node has no room for (allocatable minus the other pods' requests) → held,
//! `InsufficientNodeHeadroom` Event; a patch the API server refuses (4xx) → sent again only
//! after an exponential backoff (1, 2, 4, 8, at most 10 intervals; at once for a new target),
//! one `ResizeRefused` Warning per target; a memory decrease Kubernetes forbids in place (no
//! `resizePolicy: RestartContainer`) → left as a recommendation; `mode: Off` →
//! recommendations in the status only.
//!
//! New pods: the controller also watches the targeted pods. `status.sizes` keeps, per
//! workload (WorkModel service, App, or Deployment) and container, the size last given; a pod
//! that starts running later (a replica added, a pod recreated) is resized to it in place
//! within one reconcile, without waiting for events. The Guardian ticks once per `interval`:
//! reconciles in between (a pod started, the status was written) only size new pods, since
//! the Guardian counts one event per tick.
//!
//! `mode: InPlaceOrRecreate`: what is impossible in place (`Infeasible`, a forbidden memory
//! decrease) becomes a template recommendation (`status.templateRecommendations`, Event
//! `TemplateUpdated`); the WorkModel and App controllers watch the policies and build their
//! pod templates with [`template_overrides`], so the Deployment rolls once and the pods are
//! recreated at the size. The override is an input of the builders, not a second writer of
//! the Deployment: nothing flip-flops. For the containers it names, the policy wins over the
//! WorkModel's or App's `resources`, as VPA's autoscaler wins for the pods it manages.
//!
//! Usage comes from Prometheus (the policy's or `--prometheus-url`), otherwise from
//! `metrics.k8s.io`. Every action is an Event, a log line and a
//! `cellmesh_scaling_actions_total` sample (see [`crate::telemetry`]); every tick is timed
//! into `cellmesh_scaling_decision_seconds`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellmesh_api::crd::conditions::{self, Observed as ObservedCondition, scaling as cond};
use cellmesh_api::crd::scaling::{
    ContainerScalingStatus, ContainerSize, Resource, ResourceScalingStatus, ScalingMode,
    ScalingPolicy, ScalingPolicySpec, ScalingPolicyStatus, TargetKind,
};
use cellmesh_api::quantity;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt as _};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};

// The labels the WorkModel and App builders put on their pods select a policy's targets.
use crate::build::{APP_LABEL, ResourceOverrides, SERVICE_LABEL, WORKMODEL_LABEL};
use crate::guardian::{self, ContainerKey, Decision, Guardian, ResourceName, Tick};
use crate::scaler::{self, ResizeState};
use crate::scaling_clock;
use crate::telemetry::{Health, ScalingResult};
use crate::usage::{self, Prometheus, Usage, UsageError};

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
    /// When the Guardian last ticked. Reconciles between two ticks (a pod started, the
    /// status was written) only size new pods: the Guardian counts at most one event per
    /// tick, so extra ticks would collect events faster than `interval` says.
    last_tick: Option<Instant>,
    /// Running pods (by uid) already sized or found at start; the others are new. `None`
    /// before the first reconcile, which takes the pods it finds as known: they existed
    /// before this process, and the Guardian sizes them.
    known: Option<BTreeSet<String>>,
    /// Per pod: the last patch the API server refused, sent again only after a backoff.
    refused: BTreeMap<String, Refused>,
}

/// A resize patch sent to one pod.
struct Sent {
    patch: serde_json::Value,
    at: Instant,
    changes: Vec<(&'static str, bool)>,
    /// `infeasible` or `deferred` once counted, so each verdict is counted once.
    verdict: Option<ScalingResult>,
}

/// A resize patch the API server refused (4xx) `failures` times in a row.
struct Refused {
    patch: serde_json::Value,
    failures: u32,
    retry_at: Instant,
}

impl PolicyState {
    /// The state of a policy this process reconciles for the first time: nothing but the
    /// out-of-memory kills its status remembers (an earlier process's, or none).
    fn resumed(uid: String, status: &ScalingPolicyStatus, now: &Time, clock: Duration) -> Self {
        let mut guardian = Guardian::new();
        for kill in scaling_clock::oom_kills_from_status(&status.oom_kills, now.0, clock) {
            guardian.remember_oom(kill);
        }
        Self {
            uid,
            guardian,
            infeasible: BTreeMap::new(),
            sent: BTreeMap::new(),
            last_tick: None,
            known: None,
            refused: BTreeMap::new(),
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
    let (policies, pods): (Api<ScalingPolicy>, Api<Pod>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
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
    let controller = Controller::new(policies, watcher::Config::default());
    let store = controller.store();
    // A pod that starts running triggers its policies at once (new pods get their
    // workload's size within one reconcile); later changes of it do not.
    let running = Mutex::new(BTreeSet::new());
    controller
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let started = {
                let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                became_running(&mut running, &pod)
            };
            if started {
                policies_targeting(&store.state(), &pod)
            } else {
                Vec::new()
            }
        })
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

/// Whether `pod` has just started running (its uid was not in `running`, which is kept up
/// to date); a deleted pod leaves the set.
fn became_running(running: &mut BTreeSet<String>, pod: &Pod) -> bool {
    let Some(uid) = pod.metadata.uid.clone() else {
        return false;
    };
    if !is_running(pod) {
        running.remove(&uid);
        return false;
    }
    running.insert(uid)
}

/// The policies (among `known`) whose targets include `pod`.
fn policies_targeting(known: &[Arc<ScalingPolicy>], pod: &Pod) -> Vec<ObjectRef<ScalingPolicy>> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    known
        .iter()
        .filter(|policy| policy.namespace() == pod.namespace())
        .filter(|policy| targets(&policy.spec, labels))
        .map(|policy| ObjectRef::from_obj(policy.as_ref()))
        .collect()
}

fn error_policy(_: Arc<ScalingPolicy>, err: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(%err, "ScalingPolicy: retrying");
    Action::requeue(Duration::from_secs(5))
}

/// A pod's identity across renames: its uid (its name when it has none).
fn pod_id(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| pod.name_any())
}

async fn reconcile(policy: Arc<ScalingPolicy>, context: Arc<Context>) -> Result<Action, Error> {
    let tick_started = Instant::now();
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let spec = &policy.spec;
    let interval = spec.interval.get().max(Duration::from_millis(500));
    let now_time = Time(jiff::Timestamp::now());
    // Read together with the wall time, so that the kills' wall times in the status
    // (`scaling_clock`) are the same at every tick.
    let clock = scaling_clock::guardian_clock(context.started);
    let generation = policy.metadata.generation;
    let previous = policy.status.clone().unwrap_or_default();
    // Between two ticks the containers' entries stay as the last tick wrote them.
    let mut status = ScalingPolicyStatus {
        observed_generation: generation,
        ..previous.clone()
    };
    if spec.mode != ScalingMode::InPlaceOrRecreate {
        // Only InPlaceOrRecreate policies put sizes into templates; the builders ignore the
        // others' recommendations, and the status must not claim them.
        status.template_recommendations.clear();
    }
    // The builders write these straight into the pod template: keep them inside the
    // policy as it is now (a lowered max, a resource no longer guarded).
    scaler::clamp_sizes(&mut status.template_recommendations, spec);
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let selector = target_selector(spec);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(is_running)
        .collect();

    // Is the Guardian's tick due, and which pods are new?
    let key = (namespace.clone(), name.clone());
    let (due, next_tick, new_pods) = {
        let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
        let uid = policy.uid().unwrap_or_default();
        let state = states
            .entry(key.clone())
            .or_insert_with(|| PolicyState::resumed(uid.clone(), &previous, &now_time, clock));
        if state.uid != uid {
            // Deleted and recreated under the same name: start afresh.
            *state = PolicyState::resumed(uid, &previous, &now_time, clock);
        }
        let since = state.last_tick.map(|at| at.elapsed());
        // A tenth of slack: a requeue after `interval` may fire a moment early.
        let due = since.is_none_or(|since| since + interval / 10 >= interval);
        if due {
            state.last_tick = Some(Instant::now());
        }
        let present: BTreeSet<String> = pods.iter().map(pod_id).collect();
        let known = state.known.get_or_insert_with(|| present.clone());
        known.retain(|id| present.contains(id));
        let new_pods: BTreeSet<String> = present.difference(known).cloned().collect();
        let next_tick = if due {
            interval
        } else {
            interval.saturating_sub(since.unwrap_or_default())
        };
        (due, next_tick, new_pods)
    };
    let resize_states: BTreeMap<String, ResizeState> = pods
        .iter()
        .map(|pod| {
            let state = scaler::resize_state(pod, pod.metadata.generation.unwrap_or(0));
            (pod.name_any(), state)
        })
        .collect();

    // New pods get the size their workload's containers were given, before anything else.
    let mut pods = pods;
    if !new_pods.is_empty() {
        let resized = adopt_new_pods(
            &context,
            &policy,
            &pods_api,
            &pods,
            &new_pods,
            &resize_states,
            &mut status,
            &now_time,
        )
        .await;
        for pod in &mut pods {
            if let Some(resized) = resized.get(&pod.name_any()) {
                *pod = resized.clone();
            }
        }
    }
    if !due {
        write_status(&context, &policy, &status).await?;
        return Ok(Action::requeue(next_tick));
    }

    let source = Source::of(spec, &context.config);
    let usage = read_usage(&context, spec, &namespace, &source).await;
    let usage = match usage {
        Ok((usage, throttling_error)) => {
            let mut message = format!("usage read from {}", source.describe());
            if let Some(err) = throttling_error {
                // Optional: the usage alone still decides, so this only explains why a
                // bursty container is not seen as throttled.
                message.push_str(&format!("; CPU throttling unknown: {err}"));
            }
            conditions::set(
                &mut status.conditions,
                condition(
                    cond::METRICS_AVAILABLE,
                    true,
                    "QuerySucceeded",
                    message,
                    generation,
                ),
                now_time.clone(),
            );
            usage
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
                scaler::observe(&scaler::in_force(pod), &usage)
            } else {
                scaler::observe(pod, &usage)
            }
        })
        .collect();
    let mut observations = observations;
    scaling_clock::time_oom_kills(observations.values_mut(), now_time.0, clock);
    let tick = {
        let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
        match states.get_mut(&key) {
            Some(state) => {
                let tick = state.guardian.tick(spec, clock, &observations);
                status.oom_kills = scaling_clock::oom_kills_to_status(
                    &state.guardian.oom_kills(),
                    now_time.0,
                    clock,
                );
                tick
            }
            None => Ok(Tick::default()),
        }
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
            ResizeState::Infeasible(message) => {
                infeasible.push(format!("{pod_name}: {message}"));
                if spec.mode == ScalingMode::InPlaceOrRecreate {
                    let sizes = scaler::unapplied_sizes(pod)
                        .into_iter()
                        .filter(|(_, resource, _)| spec.resource(*resource).is_some());
                    let fallbacks: Vec<_> = sizes
                        .map(|(container, resource, size)| Fallback {
                            pod: pod_name.clone(),
                            workload: scaler::workload_of(pod),
                            container,
                            resource,
                            size,
                            why: format!("the kubelet called it Infeasible: {message}"),
                            up: true,
                        })
                        .collect();
                    fall_back_to_template(&context, &policy, &fallbacks, &mut status).await;
                }
            }
            ResizeState::NotObserved | ResizeState::Done => {}
        }
        kubelet_verdict(&context, &policy, &pod_name, state).await;
    }

    match spec.mode {
        ScalingMode::Off => {
            for decision in &tick.decisions {
                record_given(&pods, decision, &mut status);
            }
            recommend(&context, &policy, &tick.decisions, &pods).await;
        }
        _ => {
            let target = Applying {
                pods_api: &pods_api,
                pods: pods.iter().map(|p| (p.name_any(), p)).collect(),
                resize_states: &resize_states,
                resize_timeout: resize_timeout(interval),
                interval,
            };
            apply(
                &context,
                &policy,
                &target,
                &tick.decisions,
                &mut status,
                &now_time,
            )
            .await;
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

/// Gives every new pod (`new_pods`, by uid) the size its workload's containers were given
/// (`status.sizes`); with `mode: Off` only records it as a recommendation. A pod is known
/// once it has its size (or needs none); one whose resize is held (node headroom, a refused
/// patch in backoff, a resize under way) stays new and is tried again. Returns the pods as
/// resized.
#[expect(
    clippy::too_many_arguments,
    reason = "one reconcile's state, passed down once"
)]
async fn adopt_new_pods(
    context: &Context,
    policy: &ScalingPolicy,
    pods_api: &Api<Pod>,
    pods: &[Pod],
    new_pods: &BTreeSet<String>,
    resize_states: &BTreeMap<String, ResizeState>,
    status: &mut ScalingPolicyStatus,
    now: &Time,
) -> BTreeMap<String, Pod> {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let fresh: Vec<&Pod> = pods
        .iter()
        .filter(|pod| new_pods.contains(&pod_id(pod)))
        .collect();
    let decisions: Vec<Decision> = fresh
        .iter()
        .flat_map(|pod| scaler::adopt(pod, &status.sizes, &policy.spec))
        .collect();
    let mut resized = BTreeMap::new();
    let mut settled: BTreeSet<String> = fresh
        .iter()
        .filter(|pod| !decisions.iter().any(|d| d.key.pod == pod.name_any()))
        .map(|pod| pod_id(pod))
        .collect();
    if policy.spec.mode == ScalingMode::Off {
        recommend(context, policy, &decisions, pods).await;
        settled.extend(fresh.iter().map(|pod| pod_id(pod)));
    } else if !decisions.is_empty() {
        let interval = policy.spec.interval.get().max(Duration::from_millis(500));
        let target = Applying {
            pods_api,
            pods: pods.iter().map(|p| (p.name_any(), p)).collect(),
            resize_states,
            resize_timeout: resize_timeout(interval),
            interval,
        };
        resized = apply(context, policy, &target, &decisions, status, now).await;
        settled.extend(
            fresh
                .iter()
                .filter(|pod| resized.contains_key(&pod.name_any()))
                .map(|pod| pod_id(pod)),
        );
    }
    let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = states.get_mut(&key).and_then(|s| s.known.as_mut()) {
        known.extend(settled);
    }
    resized
}

/// Records the sizes `decision` gives as its workload's (`status.sizes`).
fn record_given(pods: &[Pod], decision: &Decision, status: &mut ScalingPolicyStatus) {
    let Some(workload) = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(decision.key.pod.as_str()))
        .and_then(scaler::workload_of)
    else {
        return;
    };
    for change in &decision.changes {
        scaler::record_size(
            &mut status.sizes,
            &workload,
            &decision.key.container,
            change.resource,
            scaler::container_size(&change.to),
        );
    }
}

/// A size that cannot be applied in place, for the pod template instead.
struct Fallback {
    pod: String,
    workload: Option<String>,
    container: String,
    resource: Resource,
    size: ContainerSize,
    why: String,
    up: bool,
}

/// `mode: InPlaceOrRecreate`: records sizes impossible in place as template
/// recommendations (and as the workload's size, so the recreated pods keep it); the
/// WorkModel/App controller puts them into the pod template. Each new recommendation is an
/// Event, a log line and a `template` action; a recommendation already recorded is nothing.
async fn fall_back_to_template(
    context: &Context,
    policy: &ScalingPolicy,
    fallbacks: &[Fallback],
    status: &mut ScalingPolicyStatus,
) {
    for fallback in fallbacks {
        let Some(workload) = &fallback.workload else {
            continue;
        };
        let changed = scaler::record_size(
            &mut status.template_recommendations,
            workload,
            &fallback.container,
            fallback.resource,
            fallback.size.clone(),
        );
        scaler::record_size(
            &mut status.sizes,
            workload,
            &fallback.container,
            fallback.resource,
            fallback.size.clone(),
        );
        if !changed {
            continue;
        }
        context.config.health.metrics.scaling_action(
            fallback.resource.field(),
            fallback.up,
            ScalingResult::Template,
        );
        let owner = match policy.spec.target_ref.kind {
            Some(TargetKind::WorkModel) | Some(TargetKind::App) => {
                "its pod template gets it and its pods are recreated"
            }
            None => "a selector target has no template the operator owns: reported only",
        };
        let note = format!(
            "{}/{} {} → {} (limit): impossible in place for {} ({}); {owner}",
            workload,
            fallback.container,
            fallback.resource.field(),
            fallback.size.limit,
            fallback.pod,
            fallback.why
        );
        tracing::info!(policy = %policy.name_any(), namespace = %policy.namespace().unwrap_or_default(), reason = "TemplateUpdated", "{note}");
        publish(context, policy, EventType::Normal, "TemplateUpdated", note).await;
    }
}

/// Patches `pods/resize` for every pod with decisions, unless the same patch was found
/// infeasible before or was refused and its backoff has not passed; records an Event per
/// action, the last action and the sizes given in the status. Returns the resized pods.
async fn apply(
    context: &Context,
    policy: &ScalingPolicy,
    target: &Applying<'_>,
    decisions: &[Decision],
    status: &mut ScalingPolicyStatus,
    now: &Time,
) -> BTreeMap<String, Pod> {
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let mut resized = BTreeMap::new();
    // Only what the API server accepts in place: memory decreases of containers without
    // `resizePolicy: RestartContainer` are left as recommendations (status only), or with
    // `InPlaceOrRecreate` go into the pod template.
    let mut fallbacks = Vec::new();
    let decisions: Vec<Decision> = decisions
        .iter()
        .filter_map(|decision| {
            let pod = target.pods.get(&decision.key.pod)?;
            let (changes, impossible): (Vec<_>, Vec<_>) = decision
                .changes
                .iter()
                .cloned()
                .partition(|c| scaler::resizable_in_place(pod, &decision.key.container, c));
            fallbacks.extend(impossible.into_iter().map(|change| Fallback {
                pod: decision.key.pod.clone(),
                workload: scaler::workload_of(pod),
                container: decision.key.container.clone(),
                resource: change.resource,
                size: scaler::container_size(&change.to),
                why: "a memory decrease needs resizePolicy RestartContainer".into(),
                up: change.is_up(),
            }));
            (!changes.is_empty()).then(|| Decision {
                key: decision.key.clone(),
                changes,
            })
        })
        .collect();
    if policy.spec.mode == ScalingMode::InPlaceOrRecreate {
        fall_back_to_template(context, policy, &fallbacks, status).await;
    }
    let mut by_pod: BTreeMap<&str, Vec<&Decision>> = BTreeMap::new();
    for decision in &decisions {
        by_pod.entry(&decision.key.pod).or_default().push(decision);
    }
    for (pod, decisions) in by_pod {
        let patch = scaler::resize_patch(&decisions);
        let (skip, backing_off) = {
            let states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            let state = states.get(&key);
            (
                state
                    .and_then(|s| s.infeasible.get(pod))
                    .is_some_and(|p| *p == patch),
                state
                    .and_then(|s| s.refused.get(pod))
                    .is_some_and(|r| r.patch == patch && Instant::now() < r.retry_at),
            )
        };
        if skip {
            continue;
        }
        if backing_off {
            tracing::debug!(pod, "the API server refused this resize: backing off");
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
        let changes = action_labels(&decisions);
        let (event_type, reason, note, counted) = match &result {
            Ok(resized) => {
                if let ResizeState::Infeasible(message) =
                    scaler::resize_state(resized, resized.metadata.generation.unwrap_or(0))
                {
                    let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(state) = states.get_mut(&key) {
                        state.infeasible.insert(pod.to_owned(), patch.clone());
                    }
                    (
                        Some(EventType::Warning),
                        "ResizeInfeasible",
                        format!("{description}: {message}"),
                        ScalingResult::Infeasible,
                    )
                } else {
                    (
                        Some(EventType::Normal),
                        "Resized",
                        description.clone(),
                        ScalingResult::Applied,
                    )
                }
            }
            Err(kube::Error::Api(refusal)) if (400..500).contains(&refusal.code) => {
                // Refused as written: sending it again each interval would only repeat the
                // refusal. Back off; a new target is sent at once.
                let (failures, first) = {
                    let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
                    match states.get_mut(&key) {
                        Some(state) => {
                            let (failures, first) = match state.refused.get(pod) {
                                Some(r) if r.patch == patch => {
                                    (r.failures.saturating_add(1), false)
                                }
                                _ => (1, true),
                            };
                            state.refused.insert(
                                pod.to_owned(),
                                Refused {
                                    patch: patch.clone(),
                                    failures,
                                    retry_at: Instant::now()
                                        + scaler::refusal_backoff(target.interval, failures),
                                },
                            );
                            (failures, first)
                        }
                        None => (1, true),
                    }
                };
                let delay = scaler::refusal_backoff(target.interval, failures);
                (
                    first.then_some(EventType::Warning),
                    "ResizeRefused",
                    format!(
                        "{description}: {refusal}; sent again in {}s unless the target changes",
                        delay.as_secs_f64()
                    ),
                    ScalingResult::Failed,
                )
            }
            Err(err) => (
                Some(EventType::Warning),
                "ResizeFailed",
                format!("{description}: {err}"),
                ScalingResult::Failed,
            ),
        };
        tracing::info!(policy = %key.1, namespace = %key.0, %reason, "{note}");
        for &(resource, up) in &changes {
            context
                .config
                .health
                .metrics
                .scaling_action(resource, up, counted);
        }
        if let Ok(pod_object) = result {
            let mut states = context.policies.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = states.get_mut(&key) {
                state.refused.remove(pod);
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
            drop(states);
            status.last_action = Some(description.clone());
            status.last_scale_time = Some(now.clone());
            let pods: Vec<Pod> = vec![pod_object.clone()];
            for decision in &decisions {
                record_given(&pods, decision, status);
            }
            resized.insert(pod.to_owned(), pod_object);
        }
        if let Some(event_type) = event_type {
            let pod_object = target.pods.get(pod).copied();
            publish_about(context, policy, pod_object, event_type, reason, note).await;
        }
    }
    resized
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
    /// The policy's interval: the unit of the backoff of refused patches.
    interval: Duration,
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
    publish_about(context, policy, None, type_, reason, note).await;
}

/// [`publish`], naming the pod concerned as the Event's `related` object: Events of one
/// reason form one series per related object (kube's Recorder), so each pod's resizes are
/// told apart.
async fn publish_about(
    context: &Context,
    policy: &ScalingPolicy,
    pod: Option<&Pod>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Resize".into(),
        secondary: pod.map(|pod| pod.object_ref(&())),
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
async fn recommend(
    context: &Context,
    policy: &ScalingPolicy,
    decisions: &[Decision],
    pods: &[Pod],
) {
    for decision in decisions {
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
        let pod = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(decision.key.pod.as_str()));
        publish_about(
            context,
            policy,
            pod,
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

/// The guarded resources' usage, and why the optional CPU throttling reading failed, if it
/// did (`metrics.k8s.io` has none: there only the usage decides).
async fn read_usage(
    context: &Context,
    spec: &ScalingPolicySpec,
    namespace: &str,
    source: &Source,
) -> Result<(Usage, Option<UsageError>), UsageError> {
    let url = match source {
        Source::Prometheus(url) => url,
        Source::MetricsApi => {
            let mut usage =
                usage::metrics_api_usage(&context.client, namespace, context.config.query_timeout)
                    .await?;
            // PodMetrics carry both resources; keep only the guarded ones, as with PromQL.
            if spec.cpu.is_none() {
                usage.cpu.clear();
            }
            if spec.memory.is_none() {
                usage.memory.clear();
            }
            return Ok((usage, None));
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
    let (cpu_throttling, throttling_error) = match spec.cpu {
        Some(_) => match prometheus
            .usage(
                &usage::render(spec.metrics.throttling_query(), window),
                namespace,
            )
            .await
        {
            Ok(shares) => (shares, None),
            Err(err) => {
                // Every tick would repeat it; the condition's message carries it.
                tracing::debug!(%namespace, error = %err, "no CPU throttling readings");
                (BTreeMap::new(), Some(err))
            }
        },
        None => (BTreeMap::new(), None),
    };
    Ok((
        Usage {
            cpu,
            memory,
            cpu_throttling,
        },
        throttling_error,
    ))
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
        &Patch::Merge(json!({"status": status_patch(policy.status.as_ref(), status)})),
    )
    .await?;
    Ok(())
}

/// The merge patch that turns status `old` into `new`. Empty lists and unset fields are not
/// serialised, and a merge patch leaves out-of-patch fields as they are: a field `old` has
/// and `new` lacks (the last template recommendation dropped, say) must be sent as `null`
/// to be removed.
fn status_patch(old: Option<&ScalingPolicyStatus>, new: &ScalingPolicyStatus) -> Value {
    let mut patch = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    if let (Some(Value::Object(old)), Value::Object(patch)) =
        (old.and_then(|o| serde_json::to_value(o).ok()), &mut patch)
    {
        for field in old.keys() {
            patch.entry(field.clone()).or_insert(Value::Null);
        }
    }
    patch
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

/// Whether a pod with `labels` is among the targets of a policy (the pods
/// [`target_selector`] selects).
pub fn targets(spec: &ScalingPolicySpec, labels: &BTreeMap<String, String>) -> bool {
    let target = &spec.target_ref;
    let label = |key: &str| labels.get(key).map(String::as_str);
    match (&target.kind, &target.name, &target.selector) {
        (Some(TargetKind::WorkModel), Some(name), _) => {
            label(WORKMODEL_LABEL) == Some(name.as_str())
                && (target.services.is_empty()
                    || label(SERVICE_LABEL).is_some_and(|s| target.services.iter().any(|t| t == s)))
        }
        (Some(TargetKind::App), Some(name), _) => label(APP_LABEL) == Some(name.as_str()),
        (_, _, Some(selector)) => {
            Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
        }
        _ => false,
    }
}

/// The WorkModel or App (`kind`) whose pod templates a change of `policy` may change: its
/// target while its status lists template recommendations. That covers their arrival, a
/// change of mode (the builders drop them before the status does) and the policy's deletion
/// (the deleted object still lists them); policies without any never trigger a rebuild.
/// `(namespace, name)`.
pub fn template_target(policy: &ScalingPolicy, kind: TargetKind) -> Option<(String, String)> {
    let target = &policy.spec.target_ref;
    let recommends = policy
        .status
        .as_ref()
        .is_some_and(|s| !s.template_recommendations.is_empty());
    if target.kind != Some(kind) || !recommends {
        return None;
    }
    Some((policy.namespace()?, target.name.clone()?))
}

/// The pod-template resources that the `InPlaceOrRecreate` policies among `policies` ask of
/// the `kind` named `name`: their template recommendations, keyed by workload (WorkModel
/// service or App) and container. Policies are taken in name order, so when two name the
/// same container the last one wins, the same way every time.
pub fn template_overrides(
    policies: &[ScalingPolicy],
    kind: TargetKind,
    name: &str,
) -> ResourceOverrides {
    let mut policies: Vec<&ScalingPolicy> = policies
        .iter()
        .filter(|p| p.spec.mode == ScalingMode::InPlaceOrRecreate)
        .filter(|p| p.spec.target_ref.kind == Some(kind))
        .filter(|p| p.spec.target_ref.name.as_deref() == Some(name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    policies.sort_by_key(|p| p.metadata.name.clone());
    let mut overrides = ResourceOverrides::new();
    for size in policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.template_recommendations)
    {
        let resources = overrides
            .entry(size.workload.clone())
            .or_default()
            .entry(size.container.clone())
            .or_default();
        for resource in [Resource::Cpu, Resource::Memory] {
            let Some(given) = size.resource(resource) else {
                continue;
            };
            let field = resource.field().to_owned();
            resources
                .limits
                .get_or_insert_with(BTreeMap::new)
                .insert(field.clone(), KubeQuantity(given.limit.0.clone()));
            if let Some(request) = &given.request {
                resources
                    .requests
                    .get_or_insert_with(BTreeMap::new)
                    .insert(field, KubeQuantity(request.0.clone()));
            }
        }
    }
    overrides
}

/// [`template_overrides`] of the policies of `namespace`, read from the API.
pub async fn read_template_overrides(
    client: &Client,
    namespace: &str,
    kind: TargetKind,
    name: &str,
) -> Result<ResourceOverrides, kube::Error> {
    let api: Api<ScalingPolicy> = Api::namespaced(client.clone(), namespace);
    let policies = api.list(&ListParams::default()).await?.items;
    Ok(template_overrides(&policies, kind, name))
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
/// A share (0–1) as a whole percentage, for the status.
fn percent(share: f64) -> u32 {
    // Saturating: the cast clamps NaN and out-of-range values into 0..=u32::MAX.
    (share.clamp(0.0, 1.0) * 100.0).round() as u32
}

pub fn container_statuses(tick: &Tick) -> Vec<ContainerScalingStatus> {
    tick.reports
        .iter()
        .map(|(key, reports)| {
            let resource_status = |name: ResourceName, resource: Resource| {
                reports.get(&name).map(|report| {
                    let format = |value: f64| guardian::format(resource, value);
                    ResourceScalingStatus {
                        usage: report.usage.map(format),
                        request: report.request.map(format),
                        limit: report.limit.map(format),
                        upper: report.upper.map(format),
                        lower: report.lower.map(format),
                        up_events: report.up_events,
                        down_events: report.down_events,
                        recommendation: report.recommendation.map(format),
                        throttled_percent: report.throttling.map(percent),
                        floor: report.floor.map(format),
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

    fn policy(
        name: &str,
        mode: &str,
        target: serde_json::Value,
        recommends: bool,
    ) -> ScalingPolicy {
        let mut status = json!({});
        if recommends {
            status = json!({"templateRecommendations": [{"workload": "s0", "container": "cell",
                "cpu": {"request": "625m", "limit": "1250m"}, "memory": {"limit": "1Gi"}}]});
        }
        serde_json::from_value(json!({
            "apiVersion": "cellmesh.io/v1alpha1", "kind": "ScalingPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"targetRef": target, "mode": mode, "cpu": {"min": "100m", "max": "2"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn pods_map_to_the_policies_that_target_them() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let shop_s0 = labels(&[(WORKMODEL_LABEL, "shop"), (SERVICE_LABEL, "s0")]);
        let only_s1 = spec(json!({"kind": "WorkModel", "name": "shop", "services": ["s1"]}));
        assert!(targets(
            &spec(json!({"kind": "WorkModel", "name": "shop"})),
            &shop_s0
        ));
        assert!(!targets(&only_s1, &shop_s0));
        assert!(!targets(
            &spec(json!({"kind": "App", "name": "shop"})),
            &shop_s0
        ));
        assert!(targets(
            &spec(json!({"kind": "App", "name": "scorer"})),
            &labels(&[(APP_LABEL, "scorer")])
        ));
        let selector = spec(json!({"selector": {"matchLabels": {"tier": "web"},
            "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}}));
        assert!(targets(&selector, &labels(&[("tier", "web")])));
        assert!(!targets(
            &selector,
            &labels(&[("tier", "web"), ("canary", "1")])
        ));

        let known = [
            Arc::new(policy(
                "all",
                "InPlace",
                json!({"kind": "WorkModel", "name": "shop"}),
                false,
            )),
            Arc::new(policy(
                "s1",
                "InPlace",
                json!({"kind": "WorkModel", "name": "shop", "services": ["s1"]}),
                false,
            )),
        ];
        let mut pod: Pod = serde_json::from_value(json!({"metadata": {
            "name": "s0-abc", "namespace": "ns", "uid": "u1", "labels": shop_s0}}))
        .unwrap();
        let names: Vec<String> = policies_targeting(&known, &pod)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["all"]);
        pod.metadata.namespace = Some("other".into());
        assert!(policies_targeting(&known, &pod).is_empty());
    }

    #[test]
    fn a_pod_triggers_its_policies_once_when_it_starts_running() {
        let mut pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u1"},
            "status": {"phase": "Pending"}}))
        .unwrap();
        let mut running = BTreeSet::new();
        assert!(!became_running(&mut running, &pod));
        pod.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(became_running(&mut running, &pod));
        assert!(!became_running(&mut running, &pod), "a status update later");
        pod.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!became_running(&mut running, &pod));
        assert!(running.is_empty(), "a finished pod is forgotten");
    }

    #[test]
    fn a_status_patch_removes_what_the_new_status_no_longer_has() {
        let old: ScalingPolicyStatus = serde_json::from_value(json!({
            "observedGeneration": 3,
            "lastAction": "p/cell cpu 200m→950m (2 up events)",
            "templateRecommendations": [{"workload": "s0", "container": "cell",
                                         "cpu": {"limit": "1"}}]}))
        .unwrap();
        let new = ScalingPolicyStatus {
            observed_generation: Some(4),
            last_action: old.last_action.clone(),
            ..ScalingPolicyStatus::default()
        };
        let patch = status_patch(Some(&old), &new);
        assert_eq!(
            patch,
            json!({"observedGeneration": 4,
                   "lastAction": "p/cell cpu 200m→950m (2 up events)",
                   "templateRecommendations": null})
        );
        // Applied as a JSON merge patch (RFC 7386), it gives exactly the new status.
        let mut merged = serde_json::to_value(&old).unwrap();
        json_patch::merge(&mut merged, &patch);
        assert_eq!(
            serde_json::from_value::<ScalingPolicyStatus>(merged).unwrap(),
            new
        );
        assert_eq!(
            status_patch(None, &new),
            serde_json::to_value(&new).unwrap()
        );
    }

    #[test]
    fn template_overrides_come_from_in_place_or_recreate_policies_of_the_target() {
        let shop = json!({"kind": "WorkModel", "name": "shop"});
        let policies = [
            policy("b", "InPlaceOrRecreate", shop.clone(), true),
            policy("a", "InPlace", shop.clone(), true),
            policy(
                "c",
                "InPlaceOrRecreate",
                json!({"kind": "WorkModel", "name": "other"}),
                true,
            ),
            policy(
                "d",
                "InPlaceOrRecreate",
                json!({"kind": "App", "name": "shop"}),
                true,
            ),
        ];
        let overrides = template_overrides(&policies, TargetKind::WorkModel, "shop");
        assert_eq!(
            serde_json::to_value(&overrides).unwrap(),
            json!({"s0": {"cell": {"requests": {"cpu": "625m"},
                                   "limits": {"cpu": "1250m", "memory": "1Gi"}}}})
        );
        assert!(template_overrides(&policies, TargetKind::App, "other").is_empty());
        assert_eq!(
            template_overrides(&policies, TargetKind::App, "shop").len(),
            1
        );

        // Which WorkModel/App a policy change must reconcile.
        let target = |p: &ScalingPolicy, kind| template_target(p, kind);
        assert_eq!(
            target(&policies[0], TargetKind::WorkModel),
            Some(("ns".into(), "shop".into()))
        );
        assert_eq!(target(&policies[0], TargetKind::App), None);
        // Left InPlaceOrRecreate with recommendations still listed: their removal must roll.
        assert!(target(&policies[1], TargetKind::WorkModel).is_some());
        let plain = policy("e", "InPlaceOrRecreate", shop, false);
        assert_eq!(
            target(&plain, TargetKind::WorkModel),
            None,
            "nothing to put in"
        );
    }
}
