//! The ReplicaSet controller: keeps `spec.replicas` pods (named `<replicaset>-<5 random>`,
//! controlled by the ReplicaSet) and reports the ReplicaSet's status (`replicas`,
//! `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`, `observedGeneration`).
//!
//! Pods matching the selector without a controller are adopted. When there are too many
//! pods, the ones deleted first are those Kubernetes ranks lowest: unscheduled before
//! scheduled, pending before running, not ready before ready, recently ready before long
//! ready, more restarts first, newer first. Pods only become ready when their Ready
//! condition says so (the node agent's job); availability waits `minReadySeconds` more.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use cellmesh_apimachinery::selector::LabelSelector;

use super::{events, util};

/// Whether a pod counts towards its ReplicaSet: not being deleted and not finished.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// When the pod became Ready, if it is Ready.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    if ready.status != "True" {
        return None;
    }
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// Whether the pod has been Ready for at least `min_ready` at `now`.
pub fn is_available(pod: &Pod, min_ready: Duration, now: jiff::Timestamp) -> bool {
    ready_since(pod).is_some_and(|since| {
        min_ready.is_zero()
            || jiff::SignedDuration::try_from(min_ready)
                .ok()
                .and_then(|d| since.checked_add(d).ok())
                .is_some_and(|at| at <= now)
    })
}

/// How long until the first ready-but-not-yet-available pod becomes available.
pub fn next_available_in(
    pods: &[&Pod],
    min_ready: Duration,
    now: jiff::Timestamp,
) -> Option<Duration> {
    pods.iter()
        .filter_map(|p| ready_since(p))
        .filter_map(|since| {
            let at = since
                .checked_add(jiff::SignedDuration::try_from(min_ready).ok()?)
                .ok()?;
            (at > now).then(|| Duration::try_from(at.duration_since(now)).ok())?
        })
        .min()
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// Kubernetes' `ActivePods` ordering: the pod to delete first sorts first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let scheduled = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    scheduled(a)
        .cmp(&scheduled(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        // Ready more recently is deleted first.
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

/// What a sync of one ReplicaSet does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Pods to create.
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    pub status: ReplicaSetStatus,
    /// When to look again because a pod becomes available (minReadySeconds).
    pub recheck: Option<Duration>,
}

/// Decides a ReplicaSet's sync from the pods it controls (`pods`: controlled by it).
pub fn plan(rs: &ReplicaSet, pods: &[Pod], now: jiff::Timestamp) -> Plan {
    let spec = rs.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let min_ready =
        Duration::from_secs(spec.and_then(|s| s.min_ready_seconds).unwrap_or(0).max(0) as u64);
    let mut active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let (create, delete) = if deleting {
        (0, Vec::new())
    } else if active.len() < desired {
        (desired - active.len(), Vec::new())
    } else {
        active.sort_by(|a, b| deletion_order(a, b));
        let extra = active.len() - desired;
        let names = active[..extra]
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (0, names)
    };
    let template_labels = LabelSelector::from_set(
        spec.and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .into_iter()
            .flatten(),
    );
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(count(&|p| {
            template_labels.matches(&util::labels_of(&p.metadata))
        })),
        ready_replicas: Some(count(&|p| ready_since(p).is_some())),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    Plan {
        create,
        delete,
        status,
        recheck: next_available_in(&active, min_ready, now),
    }
}

/// Batch sizes for creating `n` pods: 1, 2, 4, … (the last one what remains).
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let (mut size, mut left) = (1, n);
    while left > 0 {
        let batch = size.min(left);
        batches.push(batch);
        left -= batch;
        size *= 2;
    }
    batches
}

/// A new pod of the ReplicaSet: its template with a generated name and controller reference.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template: PodTemplateSpec = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or("pod"))),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![util::controller_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

struct Context {
    client: kube::Client,
}

/// The pods the ReplicaSet controls, adopting matching orphans.
async fn owned_pods(rs: &ReplicaSet, pods: &Api<Pod>) -> Result<Vec<Pod>, kube::Error> {
    // An empty (or invalid) selector adopts nothing: Kubernetes' controller refuses it.
    let Some(selector) = rs
        .spec
        .as_ref()
        .and_then(|s| LabelSelector::from_metav1(Some(&s.selector)).ok())
        .filter(|s| !s.is_everything())
    else {
        return Ok(Vec::new());
    };
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let listed = pods
        .list(&ListParams::default().labels(&selector.to_string()))
        .await?;
    let mut owned = Vec::new();
    for pod in listed.items {
        match util::controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => owned.push(pod),
            Some(_) => {}
            None if is_active(&pod) && rs.metadata.deletion_timestamp.is_none() => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(util::controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}});
                match pods
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(adopted) => owned.push(adopted),
                    Err(err) if util::is_stale(&err) || util::is_not_found(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned = owned_pods(&rs, &pods).await?;
    let plan = plan(&rs, &owned, jiff::Timestamp::now());
    let mut failure = None;
    if plan.create > 0 {
        let new_pod = pod_from_template(&rs);
        let params = PostParams::default();
        let mut created = 0;
        // Kubernetes' slow start: batches of 1, 2, 4, … so a failing create (a namespace
        // being deleted, an invalid template) costs one request, not `replicas` of them.
        for batch in slow_start_batches(plan.create) {
            let creates = (0..batch).map(|_| pods.create(&params, &new_pod));
            for result in futures::future::join_all(creates).await {
                match result {
                    Ok(pod) => {
                        created += 1;
                        let pod_name = pod.metadata.name.unwrap_or_default();
                        record(
                            &ctx.client,
                            &rs,
                            "SuccessfulCreate",
                            format!("Created pod: {pod_name}"),
                        );
                    }
                    Err(err) => failure = Some(err),
                }
            }
            if failure.is_some() {
                break;
            }
        }
        tracing::info!(replicaset = %format!("{ns}/{name}"), count = created, "created pods");
    }
    for pod in &plan.delete {
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(replicaset = %format!("{ns}/{name}"), %pod, "deleted pod");
                record(
                    &ctx.client,
                    &rs,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod}"),
                );
            }
            Err(err) if util::is_not_found(&err) => {}
            Err(err) => failure = Some(err),
        }
    }
    let status = replica_failure(plan.status.clone(), failure.as_ref());
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(err) if util::is_not_found(&err) => return Ok(Action::await_change()),
            Err(err) => return Err(err),
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    Ok(match plan.recheck {
        Some(after) => Action::requeue(after + Duration::from_millis(50)),
        None => Action::await_change(),
    })
}

fn record(client: &kube::Client, rs: &ReplicaSet, reason: &str, message: String) {
    let object = events::reference("apps/v1", "ReplicaSet", &rs.metadata);
    events::record(
        client,
        events::normal("replicaset-controller", object, reason, message),
    );
}

/// The `ReplicaFailure` condition Kubernetes sets when pods cannot be created or deleted
/// (e.g. a namespace being deleted, or quota), cleared when syncs succeed again.
fn replica_failure(
    mut status: ReplicaSetStatus,
    failure: Option<&kube::Error>,
) -> ReplicaSetStatus {
    let mut conditions = status.conditions.take().unwrap_or_default();
    conditions.retain(|c| c.type_ != "ReplicaFailure");
    if let Some(err) = failure {
        let message = match err {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        };
        conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message),
            last_transition_time: Some(util::now()),
        });
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    status
}

fn error_policy(rs: Arc<ReplicaSet>, err: &kube::Error, _ctx: Arc<Context>) -> Action {
    // Refusals (a namespace being deleted) and stale reads are expected: the ReplicaFailure
    // condition already says why.
    let expected = util::is_stale(err) || matches!(err, kube::Error::Api(s) if s.code == 403);
    if expected {
        tracing::debug!(replicaset = %util::key_of(&rs.metadata), %err, "replicaset sync failed; retrying");
    } else {
        tracing::warn!(replicaset = %util::key_of(&rs.metadata), %err, "replicaset sync failed; retrying");
    }
    Action::requeue(Duration::from_secs(1))
}

/// Runs the ReplicaSet controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

/// Labels of a pod made from `rs` (for tests and the deployment controller's checks).
pub fn template_labels(rs: &ReplicaSet) -> BTreeMap<String, String> {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "rs-uid", "generation": 4},
            "spec": {"replicas": replicas, "minReadySeconds": min_ready,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap()
    }

    fn pod(name: &str, created: i64, ready_at: Option<i64>, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                creation_timestamp: Some(Time(ts(created))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(
                    if ready_at.is_some() {
                        "Running"
                    } else {
                        "Pending"
                    }
                    .into(),
                ),
                conditions: ready_at.map(|at| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(at))),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn creates_missing_pods_and_counts_readiness() {
        let pods = vec![pod("a", 0, Some(10), Some("n")), pod("b", 0, None, None)];
        let p = plan(&rs(3, 0), &pods, ts(100));
        assert_eq!((p.create, p.delete.len()), (1, 0));
        assert_eq!(p.status.replicas, 2);
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.available_replicas, Some(1));
        assert_eq!(p.status.fully_labeled_replicas, Some(2));
        assert_eq!(p.status.observed_generation, Some(4));
        assert_eq!(p.recheck, None);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let pods = vec![pod("a", 0, Some(95), Some("n"))];
        let p = plan(&rs(1, 10), &pods, ts(100));
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.available_replicas, Some(0));
        assert_eq!(p.recheck, Some(Duration::from_secs(5)));
        let later = plan(&rs(1, 10), &pods, ts(105));
        assert_eq!(later.status.available_replicas, Some(1));
    }

    #[test]
    fn surplus_pods_least_valuable_first() {
        let pods = vec![
            pod("old-ready", 0, Some(10), Some("n")),
            pod("new-ready", 5, Some(50), Some("n")),
            pod("unready", 1, None, Some("n")),
            pod("unscheduled", 2, None, None),
        ];
        let p = plan(&rs(1, 0), &pods, ts(100));
        assert_eq!(p.delete, ["unscheduled", "unready", "new-ready"]);
        let mut finished = pod("done", 0, None, Some("n"));
        finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let p = plan(&rs(1, 0), &[finished], ts(100));
        assert_eq!(
            (p.create, p.status.replicas),
            (1, 0),
            "finished pods do not count"
        );
    }

    #[test]
    fn pods_are_created_in_doubling_batches() {
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(1), [1]);
        assert!(slow_start_batches(0).is_empty());
    }

    #[test]
    fn a_replicaset_being_deleted_creates_nothing() {
        let mut set = rs(3, 0);
        set.metadata.deletion_timestamp = Some(Time(ts(1)));
        assert_eq!(plan(&set, &[], ts(2)).create, 0);
    }

    #[test]
    fn new_pods_come_from_the_template() {
        let p = pod_from_template(&rs(1, 0));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.labels.unwrap()["app"], "web");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ReplicaSet", "rs-uid", Some(true))
        );
        assert_eq!(p.spec.unwrap().containers[0].name, "c");
    }
}
