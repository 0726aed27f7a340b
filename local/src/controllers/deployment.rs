//! The Deployment controller: Deployment → ReplicaSets, as Kubernetes' deployment controller.
//!
//! - The ReplicaSet of the current template is `<deployment>-<pod-template-hash>`, its
//!   selector and template carry the `pod-template-hash` label; it gets the
//!   `deployment.kubernetes.io/revision` annotation (one more than the highest old
//!   revision; a rollback renumbers the old ReplicaSet), which the Deployment mirrors.
//! - `RollingUpdate`: the new ReplicaSet scales up while the total of all ReplicaSets'
//!   `spec.replicas` stays within `replicas + maxSurge`; old ones scale down (unhealthy pods
//!   first) while the available pods stay at least `replicas - maxUnavailable` (both int or
//!   percent; surge rounds up, unavailability down; both zero means unavailability 1).
//!   `Recreate`: old ReplicaSets go to zero, and once their pods are gone the new one scales up.
//! - Status: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration`, `collisionCount` and the `Available` /
//!   `Progressing` conditions with Kubernetes' reasons (`MinimumReplicasAvailable`,
//!   `NewReplicaSetCreated`, `ReplicaSetUpdated`, `NewReplicaSetAvailable`,
//!   `ProgressDeadlineExceeded`), which is what `kubectl rollout status` reads.
//! - Old ReplicaSets scaled to zero beyond `revisionHistoryLimit` are deleted.
//!
//! The pod-template-hash is FNV-32a over the template's canonical JSON (plus the collision
//! count), encoded like Kubernetes' `SafeEncodeString`: same shape, not the same digits as
//! a real cluster (which hashes Go's struct dump).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use cellmesh_apimachinery::selector::LabelSelector;

use super::{events, util};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Serializes with object keys sorted, so equal values hash equally.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A value with its zero values (`false`, `0`, `""`, `null`, `{}`, `[]`) removed: Go
/// clients omit them when they serialize a template (`omitempty`) while others spell them
/// out, and Kubernetes compares templates as Go structs, where both are the same.
fn without_zero_values(value: &Value) -> Value {
    fn is_zero(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
        }
    }
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_zero_values(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        // List items keep their position (a zero item is still an item).
        Value::Array(items) => Value::Array(items.iter().map(without_zero_values).collect()),
        other => other.clone(),
    }
}

/// The `pod-template-hash` of a template (and collision count).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut text = String::new();
    canonical(
        &without_zero_values(&serde_json::to_value(template).unwrap_or(Value::Null)),
        &mut text,
    );
    let mut hash: u32 = 0x811c_9dc5;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    write(text.as_bytes());
    if let Some(count) = collision_count {
        write(&count.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// A template without the hash label, for "is this the current template" comparisons.
fn without_hash(template: Option<&PodTemplateSpec>) -> Value {
    let mut value = without_zero_values(&serde_json::to_value(template).unwrap_or(Value::Null));
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(meta) = value
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
        {
            meta.remove("labels");
        }
    }
    value
}

/// Whether `rs` runs the deployment's current template.
pub fn is_current(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = d.spec.as_ref().map(|s| &s.template);
    without_hash(want) == without_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref()))
}

/// `intstr.GetScaledValueFromIntOrPercent`.
pub fn scaled(
    value: Option<&IntOrString>,
    total: i32,
    round_up: bool,
    default: &str,
) -> Result<i32, String> {
    let text = match value {
        Some(IntOrString::Int(n)) => return Ok(*n),
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            format!(
                "invalid value for IntOrString: invalid type: string is not a percentage: {text:?}"
            )
        })?;
    let product = percent * i64::from(total);
    let result = if round_up {
        (product + 99).div_euclid(100)
    } else {
        product.div_euclid(100)
    };
    i32::try_from(result).map_err(|_| format!("{text:?} of {total} is out of range"))
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate deployment, resolved against its replicas.
pub fn surge_and_unavailable(d: &Deployment) -> Result<(i32, i32), String> {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(
        rolling.and_then(|r| r.max_surge.as_ref()),
        replicas,
        true,
        "25%",
    )
    .map_err(|e| format!("spec.strategy.rollingUpdate.maxSurge: {e}"))?;
    let unavailable = scaled(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        "25%",
    )
    .map_err(|e| format!("spec.strategy.rollingUpdate.maxUnavailable: {e}"))?;
    let unavailable = if surge == 0 && unavailable == 0 {
        1
    } else {
        unavailable.min(replicas)
    };
    Ok((surge, unavailable))
}

/// What the rollout needs to know of one ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetState {
    pub name: String,
    /// `spec.replicas`.
    pub spec: i32,
    /// `status.replicas`: pods that exist and are not terminating.
    pub pods: i32,
    pub available: i32,
}

impl SetState {
    pub fn of(rs: &ReplicaSet) -> Self {
        let status = rs.status.as_ref();
        let spec = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        Self {
            name: rs.metadata.name.clone().unwrap_or_default(),
            spec,
            pods: status.map_or(0, |s| s.replicas),
            // Pods beyond `spec` are about to be deleted, yet the ReplicaSet's status still
            // counts them until its controller syncs again (it computes the status from the
            // pods it saw before deleting). Counting them would let the next step scale
            // another old pod away and drop below `replicas - maxUnavailable`.
            available: status
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                .min(spec),
        }
    }
}

/// The replicas the new ReplicaSet should have now (`NewRSNewReplicas`). `new_spec` is its
/// current size (0 when it does not exist yet); `all` includes it.
pub fn new_set_replicas(replicas: i32, surge: i32, all_specs: i32, new_spec: i32) -> i32 {
    if new_spec >= replicas {
        return replicas;
    }
    let max_total = replicas + surge;
    if all_specs >= max_total {
        return new_spec;
    }
    new_spec + (max_total - all_specs).min(replicas - new_spec)
}

/// The new sizes of old ReplicaSets (oldest first) in a rolling update
/// (`reconcileOldReplicaSets`: unhealthy pods first, then down to `minAvailable`).
pub fn old_sets_scale_down(
    replicas: i32,
    unavailable: i32,
    new: &SetState,
    old: &[SetState],
) -> Vec<(String, i32)> {
    let old_specs: i32 = old.iter().map(|s| s.spec).sum();
    if old_specs == 0 {
        return Vec::new();
    }
    let all_specs = old_specs + new.spec;
    let min_available = replicas - unavailable;
    let new_unavailable = new.spec - new.available;
    let max_scaled_down = all_specs - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sizes: Vec<i32> = old.iter().map(|s| s.spec).collect();
    // Unhealthy replicas first: they do not count towards availability anyway.
    let mut cleaned = 0;
    for (size, set) in sizes.iter_mut().zip(old) {
        if cleaned >= max_scaled_down || *size == 0 || set.available >= *size {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(*size - set.available);
        *size -= down;
        cleaned += down;
    }
    // Then healthy ones, as long as enough stay available.
    let available: i32 = old.iter().map(|s| s.available).sum::<i32>() + new.available;
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for size in sizes.iter_mut() {
            if done >= total {
                break;
            }
            if *size == 0 {
                continue;
            }
            let down = (*size).min(total - done);
            *size -= down;
            done += down;
        }
    }
    old.iter()
        .zip(sizes)
        .filter(|(set, size)| set.spec != *size)
        .map(|(set, size)| (set.name.clone(), size))
        .collect()
}

/// What one sync does to the ReplicaSets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the new ReplicaSet with this many replicas.
    Create(i32),
    /// Set `spec.replicas` of these ReplicaSets.
    Scale(Vec<(String, i32)>),
    /// Nothing to change (waiting for pods).
    Wait,
}

/// Decides the next rollout step. `new` is the current-template ReplicaSet, `old` the
/// others oldest first.
pub fn next_step(d: &Deployment, new: Option<&SetState>, old: &[SetState]) -> Result<Step, String> {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let recreate = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate");
    if recreate {
        let to_zero: Vec<(String, i32)> = old
            .iter()
            .filter(|s| s.spec > 0)
            .map(|s| (s.name.clone(), 0))
            .collect();
        if !to_zero.is_empty() {
            return Ok(Step::Scale(to_zero));
        }
        if old.iter().any(|s| s.pods > 0) {
            return Ok(Step::Wait);
        }
        return Ok(match new {
            None => Step::Create(replicas),
            Some(n) if n.spec != replicas => Step::Scale(vec![(n.name.clone(), replicas)]),
            Some(_) => Step::Wait,
        });
    }
    let (surge, unavailable) = surge_and_unavailable(d)?;
    let old_specs: i32 = old.iter().map(|s| s.spec).sum();
    let new_spec = new.map_or(0, |n| n.spec);
    let wanted = new_set_replicas(replicas, surge, old_specs + new_spec, new_spec);
    let Some(new) = new else {
        return Ok(Step::Create(wanted));
    };
    if wanted != new.spec {
        return Ok(Step::Scale(vec![(new.name.clone(), wanted)]));
    }
    let down = old_sets_scale_down(replicas, unavailable, new, old);
    Ok(if down.is_empty() {
        Step::Wait
    } else {
        Step::Scale(down)
    })
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The new ReplicaSet for the deployment's template.
pub fn new_replica_set(
    d: &Deployment,
    replicas: i32,
    revision: i64,
    collision_count: Option<i32>,
) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, collision_count);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let name = d.metadata.name.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let surge = surge_and_unavailable(d).map_or(0, |(s, _)| s);
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: Some(BTreeMap::from([
                (REVISION.to_owned(), revision.to_string()),
                (DESIRED_REPLICAS.to_owned(), desired.to_string()),
                (MAX_REPLICAS.to_owned(), (desired + surge).to_string()),
            ])),
            owner_references: Some(vec![util::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// What happened in this sync, for the Progressing condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Created,
    Found,
    Nothing,
}

fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(old) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
        if old.status == new.status && old.reason == new.reason && old.message == new.message {
            return;
        }
        *old = new;
    } else {
        conditions.push(new);
    }
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> DeploymentCondition {
    DeploymentCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(util::now()),
        last_transition_time: Some(util::now()),
    }
}

/// The Deployment's status from its ReplicaSets (`all` includes `new`).
pub fn status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    event: Event,
    now: jiff::Timestamp,
) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let total = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    });
    let updated = new
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let unavailable_allowed = surge_and_unavailable(d).map_or(0, |(_, u)| u);
    let recreate = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate");
    let min_available = if recreate {
        replicas
    } else {
        replicas - unavailable_allowed
    };
    if available >= min_available {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    let new_name = new
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let complete =
        new.is_some() && updated == replicas && available == replicas && total == replicas;
    let progressed = updated > old.updated_replicas.unwrap_or(0)
        || ready > old.ready_replicas.unwrap_or(0)
        || available > old.available_replicas.unwrap_or(0)
        || total < old.replicas.unwrap_or(0);
    let progressing = if complete {
        Some(condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        ))
    } else if event == Event::Created {
        Some(condition(
            "Progressing",
            true,
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_name}\""),
        ))
    } else if progressed && new.is_some() {
        Some(condition(
            "Progressing",
            true,
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        ))
    } else if event == Event::Found && !conditions.iter().any(|c| c.type_ == "Progressing") {
        Some(condition(
            "Progressing",
            true,
            "FoundNewReplicaSet",
            format!("Found new replica set \"{new_name}\""),
        ))
    } else {
        deadline_exceeded(d, &conditions, now).then(|| {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            )
        })
    };
    if let Some(c) = progressing {
        // A progressing update refreshes lastUpdateTime even when nothing else changes.
        let refresh = c.reason.as_deref() == Some("ReplicaSetUpdated");
        if refresh
            && let Some(old) = conditions
                .iter_mut()
                .find(|o| o.type_ == "Progressing" && o.reason == c.reason)
        {
            old.last_update_time = c.last_update_time.clone();
        }
        set_condition(&mut conditions, c);
    }
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        collision_count: old.collision_count,
        conditions: Some(conditions),
        terminating_replicas: None,
    }
}

fn deadline_exceeded(
    d: &Deployment,
    conditions: &[DeploymentCondition],
    now: jiff::Timestamp,
) -> bool {
    let Some(deadline) = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds) else {
        return false;
    };
    let Some(progressing) = conditions.iter().find(|c| c.type_ == "Progressing") else {
        return false;
    };
    if progressing.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return false;
    }
    progressing
        .last_update_time
        .as_ref()
        .and_then(|t| {
            t.0.checked_add(jiff::SignedDuration::from_secs(i64::from(deadline)))
                .ok()
        })
        .is_some_and(|at| at < now)
}

/// Old ReplicaSets to delete beyond `revisionHistoryLimit` (fully scaled down, oldest first).
pub fn history_to_delete(d: &Deployment, old: &[&ReplicaSet]) -> Vec<String> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut idle: Vec<&&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            SetState::of(rs).spec == 0
                && SetState::of(rs).pods == 0
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if idle.len() <= limit {
        return Vec::new();
    }
    idle.sort_by_key(|rs| revision_of(rs));
    idle[..idle.len() - limit]
        .iter()
        .filter_map(|rs| rs.metadata.name.clone())
        .collect()
}

struct Context {
    client: kube::Client,
}

/// The ReplicaSets the deployment controls, adopting matching orphans.
async fn owned_sets(d: &Deployment, api: &Api<ReplicaSet>) -> Result<Vec<ReplicaSet>, kube::Error> {
    // An empty (or invalid) selector adopts nothing: Kubernetes' controller refuses it.
    let Some(selector) = d
        .spec
        .as_ref()
        .and_then(|s| LabelSelector::from_metav1(Some(&s.selector)).ok())
        .filter(|s| !s.is_everything())
    else {
        return Ok(Vec::new());
    };
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let mut owned = Vec::new();
    for rs in api.list(&ListParams::default()).await?.items {
        match util::controller_of(&rs.metadata) {
            Some(owner) if owner.uid == uid => owned.push(rs),
            None if selector.matches(&util::labels_of(&rs.metadata))
                && rs.metadata.deletion_timestamp.is_none()
                && d.metadata.deletion_timestamp.is_none() =>
            {
                let name = rs.metadata.name.clone().unwrap_or_default();
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(util::controller_ref("apps/v1", "Deployment", &d.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(adopted) => owned.push(adopted),
                    Err(err) if util::is_stale(&err) || util::is_not_found(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            _ => {}
        }
    }
    owned.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    Ok(owned)
}

fn scale_patch(d: &Deployment, replicas: i32) -> Value {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let surge = surge_and_unavailable(d).map_or(0, |(s, _)| s);
    json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: (desired + surge).to_string()}},
        "spec": {"replicas": replicas},
    })
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned = owned_sets(&d, &sets).await?;
    let new_index = owned.iter().position(|rs| is_current(&d, rs));
    let max_old_revision = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_index)
        .map(|(_, rs)| revision_of(rs))
        .max()
        .unwrap_or(0);
    let revision = max_old_revision + 1;
    let mut event = if new_index.is_some() {
        Event::Found
    } else {
        Event::Nothing
    };
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    if d.metadata.deletion_timestamp.is_none() && !paused {
        // A rollback makes an old ReplicaSet current again: it takes the next revision.
        if let Some(i) = new_index
            && revision_of(&owned[i]) < revision
        {
            let rs_name = owned[i].metadata.name.clone().unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
            owned[i] = sets
                .patch(&rs_name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        let new_state = new_index.map(|i| SetState::of(&owned[i]));
        let old_states: Vec<SetState> = owned
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != new_index)
            .map(|(_, rs)| SetState::of(rs))
            .collect();
        match next_step(&d, new_state.as_ref(), &old_states) {
            Err(message) => {
                tracing::warn!(deployment = %format!("{ns}/{name}"), %message, "invalid deployment");
                return Ok(Action::await_change());
            }
            Ok(Step::Create(replicas)) => {
                let collision = d.status.as_ref().and_then(|s| s.collision_count);
                let rs = new_replica_set(&d, replicas, revision, collision);
                match sets.create(&PostParams::default(), &rs).await {
                    Ok(created) => {
                        let rs_name = created.metadata.name.clone().unwrap_or_default();
                        tracing::info!(deployment = %format!("{ns}/{name}"), replicaset = %rs_name, replicas, "created new replica set");
                        scaling_event(&ctx.client, &d, &rs_name, 0, replicas);
                        owned.push(created);
                        event = Event::Created;
                    }
                    Err(err) if matches!(&err, kube::Error::Api(s) if s.code == 409) => {
                        // A ReplicaSet of that name runs another template: hash again with a
                        // bumped collision count (Kubernetes' collision avoidance).
                        let existing = sets
                            .get_opt(rs.metadata.name.as_deref().unwrap_or(""))
                            .await?;
                        if existing.is_some_and(|e| !is_current(&d, &e)) {
                            let count = collision.unwrap_or(0) + 1;
                            let patch = json!({"status": {"collisionCount": count}});
                            deployments
                                .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                                .await?;
                        }
                        return Ok(Action::requeue(Duration::from_millis(100)));
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(Step::Scale(changes)) => {
                for (rs_name, replicas) in changes {
                    tracing::info!(deployment = %format!("{ns}/{name}"), replicaset = %rs_name, replicas, "scaling replica set");
                    let updated = sets
                        .patch(
                            &rs_name,
                            &PatchParams::default(),
                            &Patch::Merge(scale_patch(&d, replicas)),
                        )
                        .await?;
                    if let Some(slot) = owned
                        .iter_mut()
                        .find(|rs| rs.metadata.name.as_deref() == Some(rs_name.as_str()))
                    {
                        let before = SetState::of(slot).spec;
                        scaling_event(&ctx.client, &d, &rs_name, before, replicas);
                        *slot = updated;
                    }
                }
            }
            Ok(Step::Wait) => {}
        }
    }
    let new_rs = owned.iter().find(|rs| is_current(&d, rs));
    let all: Vec<&ReplicaSet> = owned.iter().collect();
    let olds: Vec<&ReplicaSet> = owned.iter().filter(|rs| !is_current(&d, rs)).collect();
    for old in history_to_delete(&d, &olds) {
        match sets.delete(&old, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(deployment = %format!("{ns}/{name}"), replicaset = %old, "deleted old replica set beyond the revision history limit")
            }
            Err(err) if util::is_not_found(&err) => {}
            Err(err) => return Err(err),
        }
    }
    let new_status = status(&d, new_rs, &all, event, jiff::Timestamp::now());
    let current_revision = new_rs.map(revision_of).filter(|r| *r > 0);
    let annotated = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned();
    if let Some(rev) = current_revision
        && annotated != Some(rev.to_string())
    {
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        deployments
            .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    if d.status.as_ref() != Some(&new_status) && !same_but_times(d.status.as_ref(), &new_status) {
        let patch = json!({"status": new_status});
        match deployments
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(err) if util::is_not_found(&err) => return Ok(Action::await_change()),
            Err(err) => return Err(err),
        }
    }
    // The progress deadline is checked again later even if nothing else happens.
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Records Kubernetes' `ScalingReplicaSet` event on the Deployment.
fn scaling_event(client: &kube::Client, d: &Deployment, rs_name: &str, from: i32, to: i32) {
    let direction = if to >= from { "up" } else { "down" };
    events::record(
        client,
        events::normal(
            "deployment-controller",
            events::reference("apps/v1", "Deployment", &d.metadata),
            "ScalingReplicaSet",
            format!("Scaled {direction} replica set {rs_name} from {from} to {to}"),
        ),
    );
}

/// Whether two statuses differ only in condition timestamps (no write needed).
fn same_but_times(old: Option<&DeploymentStatus>, new: &DeploymentStatus) -> bool {
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_update_time = None;
            c.last_transition_time = None;
        }
        s
    };
    old.is_some_and(|o| strip(o) == strip(new))
}

fn error_policy(d: Arc<Deployment>, err: &kube::Error, _ctx: Arc<Context>) -> Action {
    if !util::is_stale(err) {
        tracing::warn!(deployment = %util::key_of(&d.metadata), %err, "deployment sync failed; retrying");
    }
    Action::requeue(Duration::from_millis(500))
}

/// Runs the Deployment controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v1"}]}}}
        }))
        .unwrap()
    }

    fn set(name: &str, spec: i32, available: i32) -> SetState {
        SetState {
            name: name.into(),
            spec,
            pods: spec,
            available,
        }
    }

    #[test]
    fn int_or_percent_rounds_like_kubernetes() {
        assert_eq!(
            scaled(Some(&IntOrString::String("25%".into())), 10, true, "0"),
            Ok(3)
        );
        assert_eq!(
            scaled(Some(&IntOrString::String("25%".into())), 10, false, "0"),
            Ok(2)
        );
        assert_eq!(scaled(Some(&IntOrString::Int(4)), 10, false, "0"), Ok(4));
        assert_eq!(scaled(None, 4, true, "25%"), Ok(1));
        assert!(
            scaled(Some(&IntOrString::String("lots".into())), 4, true, "0")
                .unwrap_err()
                .contains("not a percentage")
        );
        let d = deployment(4, json!(0), json!(0));
        assert_eq!(
            surge_and_unavailable(&d),
            Ok((0, 1)),
            "both zero: one may be unavailable"
        );
        let d = deployment(4, json!("bad"), json!(1));
        assert!(
            surge_and_unavailable(&d)
                .unwrap_err()
                .starts_with("spec.strategy.rollingUpdate.maxSurge")
        );
    }

    #[test]
    fn hashes_are_stable_safe_and_collision_aware() {
        let d = deployment(1, json!(1), json!(0));
        let t = &d.spec.as_ref().unwrap().template;
        let h = template_hash(t, None);
        assert_eq!(h, template_hash(t, None));
        assert_ne!(h, template_hash(t, Some(1)));
        assert!(
            h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{h}"
        );
        let rs = new_replica_set(&d, 1, 3, None);
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{h}").as_str())
        );
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()[HASH_LABEL],
            h
        );
        assert_eq!(rs.metadata.annotations.as_ref().unwrap()[REVISION], "3");
        assert!(
            is_current(&d, &rs),
            "the hash label does not make the template differ"
        );
        // Zero values spelled out (as protobuf-decoding clients write them) change nothing.
        let mut spelled = rs.clone();
        let template = spelled.spec.as_mut().unwrap().template.as_mut().unwrap();
        template.spec.as_mut().unwrap().host_network = Some(false);
        template.spec.as_mut().unwrap().containers[0].stdin = Some(false);
        template.metadata.as_mut().unwrap().generation = Some(0);
        assert!(is_current(&d, &spelled));
        let mut spelled_d = d.clone();
        spelled_d
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .host_ipc = Some(false);
        assert_eq!(
            template_hash(&spelled_d.spec.as_ref().unwrap().template, None),
            h
        );
        let mut changed = d.clone();
        changed
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v2".into());
        assert!(!is_current(&changed, &rs));
    }

    /// Simulates a rolling update where every pod becomes available as soon as it exists,
    /// checking Kubernetes' invariants at every step.
    fn roll(replicas: i32, surge: Value, unavailable: Value) -> usize {
        let d = deployment(replicas, surge, unavailable);
        let (max_surge, max_unavailable) = surge_and_unavailable(&d).unwrap();
        let mut old = vec![set("old", replicas, replicas)];
        let mut new: Option<SetState> = None;
        for step in 1..100 {
            let total: i32 =
                old.iter().map(|s| s.spec).sum::<i32>() + new.as_ref().map_or(0, |n| n.spec);
            let available: i32 = old.iter().map(|s| s.available).sum::<i32>()
                + new.as_ref().map_or(0, |n| n.available);
            assert!(
                total <= replicas + max_surge,
                "step {step}: {total} pods > {replicas}+{max_surge}"
            );
            assert!(
                available >= replicas - max_unavailable,
                "step {step}: {available} available"
            );
            match next_step(&d, new.as_ref(), &old).unwrap() {
                Step::Create(n) => new = Some(set("new", n, 0)),
                Step::Scale(changes) => {
                    for (name, n) in changes {
                        let target = if name == "new" {
                            new.as_mut().unwrap()
                        } else {
                            &mut old[0]
                        };
                        target.spec = n;
                        target.available = target.available.min(n);
                    }
                }
                Step::Wait => {
                    // Pods of the new set become available.
                    let n = new.as_mut().unwrap();
                    if n.available == n.spec {
                        assert_eq!((n.spec, old[0].spec), (replicas, 0), "finished");
                        return step;
                    }
                    n.available = n.spec;
                }
            }
        }
        panic!("the rollout did not finish");
    }

    /// The race behind a once-flaky rollout test: the old set was just scaled 4 → 3 but its
    /// status still counts 4 available pods. Trusting it would scale the old set to 1 while
    /// only one new pod is ready: 2 ready of 4 with maxUnavailable 1.
    #[test]
    fn a_stale_old_status_cannot_take_availability_below_the_minimum() {
        let d = deployment(4, json!(1), json!(1));
        let replica_set = |name: &str, spec: i32, available: i32| -> ReplicaSet {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"replicas": spec, "selector": {}},
                "status": {"replicas": available, "availableReplicas": available},
            }))
            .unwrap()
        };
        let old = SetState::of(&replica_set("old", 3, 4));
        let new = SetState::of(&replica_set("new", 2, 1));
        let step = next_step(&d, Some(&new), std::slice::from_ref(&old)).unwrap();
        let old_after = match &step {
            Step::Scale(changes) => changes
                .iter()
                .find(|(name, _)| name == "old")
                .map_or(old.spec, |(_, n)| *n),
            _ => old.spec,
        };
        // Ready afterwards: the old set's remaining pods plus the one ready new pod.
        assert!(
            old_after + new.available >= 4 - 1,
            "old set scaled to {old_after}: {step:?}"
        );
    }

    #[test]
    fn rolling_updates_respect_surge_and_unavailability() {
        assert!(roll(4, json!(1), json!(0)) > 4, "one at a time");
        roll(4, json!(0), json!(1));
        roll(10, json!("25%"), json!("25%"));
        roll(3, json!("50%"), json!("0%"));
        roll(1, json!(1), json!(0));
    }

    #[test]
    fn unhealthy_old_pods_go_first() {
        // 3 old pods, 2 of them unavailable, one may be unavailable: only an unhealthy one
        // goes (available pods are already at the minimum).
        let down = old_sets_scale_down(3, 1, &set("new", 1, 0), &[set("old", 3, 1)]);
        assert_eq!(down, vec![("old".to_owned(), 2)]);
        // Nothing may go while that would leave fewer than replicas - maxUnavailable.
        assert!(old_sets_scale_down(3, 0, &set("new", 1, 0), &[set("old", 3, 2)]).is_empty());
    }

    #[test]
    fn recreate_empties_old_sets_before_creating() {
        let mut d = deployment(2, json!(1), json!(0));
        d.spec.as_mut().unwrap().strategy =
            Some(serde_json::from_value(json!({"type": "Recreate"})).unwrap());
        assert_eq!(
            next_step(&d, None, &[set("old", 2, 2)]),
            Ok(Step::Scale(vec![("old".into(), 0)]))
        );
        let draining = SetState {
            name: "old".into(),
            spec: 0,
            pods: 1,
            available: 0,
        };
        assert_eq!(next_step(&d, None, &[draining]), Ok(Step::Wait));
        assert_eq!(
            next_step(&d, None, &[set("old", 0, 0)]),
            Ok(Step::Create(2))
        );
    }

    #[test]
    fn scaling_without_a_rollout_resizes_the_new_set() {
        let d = deployment(5, json!(1), json!(0));
        assert_eq!(
            next_step(&d, Some(&set("new", 2, 2)), &[]),
            Ok(Step::Scale(vec![("new".into(), 5)]))
        );
        let d = deployment(1, json!(1), json!(0));
        assert_eq!(
            next_step(&d, Some(&set("new", 3, 3)), &[]),
            Ok(Step::Scale(vec![("new".into(), 1)]))
        );
    }

    fn rs_with_status(
        name: &str,
        spec: i32,
        pods: i32,
        available: i32,
        template_image: &str,
    ) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {REVISION: "1"}},
            "spec": {"replicas": spec, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": template_image}]}}},
            "status": {"replicas": pods, "readyReplicas": available, "availableReplicas": available}
        }))
        .unwrap()
    }

    #[test]
    fn status_and_conditions_follow_the_replica_sets() {
        let d = deployment(2, json!(1), json!(0));
        let old = rs_with_status("web-old", 1, 1, 1, "v0");
        let new = rs_with_status("web-new", 2, 2, 1, "v1");
        let s = status(
            &d,
            Some(&new),
            &[&old, &new],
            Event::Created,
            jiff::Timestamp::now(),
        );
        assert_eq!(
            (
                s.replicas,
                s.updated_replicas,
                s.available_replicas,
                s.unavailable_replicas
            ),
            (Some(3), Some(2), Some(2), Some(0))
        );
        assert_eq!(s.observed_generation, Some(2));
        let cond = |s: &DeploymentStatus, t: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .clone()
        };
        assert_eq!(
            cond(&s, "Progressing").reason.as_deref(),
            Some("NewReplicaSetCreated")
        );
        assert_eq!(
            cond(&s, "Available").reason.as_deref(),
            Some("MinimumReplicasAvailable")
        );
        let done = rs_with_status("web-new", 2, 2, 2, "v1");
        let mut d2 = d.clone();
        d2.status = Some(s);
        let s = status(
            &d2,
            Some(&done),
            &[&done],
            Event::Found,
            jiff::Timestamp::now(),
        );
        assert_eq!(
            cond(&s, "Progressing").reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(
            cond(&s, "Progressing").message.as_deref(),
            Some("ReplicaSet \"web-new\" has successfully progressed.")
        );
    }

    #[test]
    fn history_beyond_the_limit_is_deleted_oldest_first() {
        let mut d = deployment(1, json!(1), json!(0));
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let mut a = rs_with_status("a", 0, 0, 0, "v0");
        a.metadata.annotations = Some(BTreeMap::from([(REVISION.to_owned(), "1".to_owned())]));
        let mut b = rs_with_status("b", 0, 0, 0, "v0");
        b.metadata.annotations = Some(BTreeMap::from([(REVISION.to_owned(), "2".to_owned())]));
        let busy = rs_with_status("c", 1, 1, 1, "v0");
        assert_eq!(
            history_to_delete(&d, &[&b, &a, &busy]),
            vec!["a".to_owned()]
        );
    }
}
