//! The Scaler: turns the Guardian's decisions into `pods/resize` patches and reads back, from
//! the pod, whether the kubelet applied them. Pure functions over `Pod` objects; the
//! controller does the I/O.
//!
//! Kubernetes ≥ 1.33 semantics (KEP-1287): one patch per pod carries every container that
//! changes (the kubelet applies a pod's resize atomically); requests and limits are patched
//! together so the QoS class is kept; `status.observedGeneration` tells whether the kubelet has
//! seen the patched generation; `PodResizePending` (`Deferred` / `Infeasible`) and
//! `PodResizeInProgress` say where it stands; `status.containerStatuses[].resources` is the
//! size really in force.
//!
//! Besides the Guardian's decisions it sizes *new* pods: a pod of a workload that appears
//! after the policy gave the workload's containers a size ([`adopt`]) gets that size at
//! once. A patch the API server refuses is sent again only after [`refusal_backoff`].

use std::collections::BTreeMap;
use std::time::Duration;

use cellmesh_api::crd::scaling::{ContainerSize, Resource, ScalingPolicySpec, WorkloadSize};
use cellmesh_api::quantity;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use serde_json::{Value, json};

use crate::build::{APP_LABEL, SERVICE_LABEL};
use crate::guardian::{self, rescale};
use crate::guardian::{Change, ContainerKey, Decision, Observation, Observed, Reason, Size};
use crate::usage::Usage;

/// A refused patch is sent again after at most this many intervals.
pub const MAX_BACKOFF_INTERVALS: u32 = 10;

/// How long to wait before sending again a patch the API server refused `failures` times in
/// a row: one interval, then 2, 4, 8, … intervals, at most [`MAX_BACKOFF_INTERVALS`].
pub fn refusal_backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(MAX_BACKOFF_INTERVALS);
    interval.saturating_mul(factor)
}

/// The workload a pod belongs to, whose pods share a size: its WorkModel service, its App,
/// or the Deployment (the ReplicaSet owner's name less the pod-template hash) or other
/// controller that owns it. A bare pod has none.
pub fn workload_of(pod: &Pod) -> Option<String> {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).cloned();
    if let Some(workload) = label(SERVICE_LABEL).or_else(|| label(APP_LABEL)) {
        return Some(workload);
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let deployment = label("pod-template-hash")
        .filter(|_| owner.kind == "ReplicaSet")
        .and_then(|hash| owner.name.strip_suffix(&format!("-{hash}")));
    Some(deployment.unwrap_or(&owner.name).to_owned())
}

/// Records `size` as the size of `resource` of `container` in `workload`, keeping `sizes`
/// sorted; whether anything changed.
pub fn record_size(
    sizes: &mut Vec<WorkloadSize>,
    workload: &str,
    container: &str,
    resource: Resource,
    size: ContainerSize,
) -> bool {
    let at = sizes.binary_search_by(|s| {
        (s.workload.as_str(), s.container.as_str()).cmp(&(workload, container))
    });
    let entry = match at {
        Ok(i) => &mut sizes[i],
        Err(i) => {
            sizes.insert(
                i,
                WorkloadSize {
                    workload: workload.to_owned(),
                    container: container.to_owned(),
                    ..WorkloadSize::default()
                },
            );
            &mut sizes[i]
        }
    };
    let slot = entry.resource_mut(resource);
    if slot.as_ref() == Some(&size) {
        return false;
    }
    *slot = Some(size);
    true
}

/// A [`Change`]'s target as a status size.
pub fn container_size(size: &Size) -> ContainerSize {
    ContainerSize {
        request: size.request.clone(),
        limit: size.limit.clone(),
    }
}

/// The resizes that give a new `pod` the sizes its workload's containers were given
/// (`sizes`, the policy's `status.sizes`): one decision per container that differs. Only
/// resources `policy` still guards, clamped to its current `min`/`max` (the policy may have
/// changed since the size was given). The request keeps the pod's own request:limit ratio,
/// so its QoS class is kept.
pub fn adopt(pod: &Pod, sizes: &[WorkloadSize], policy: &ScalingPolicySpec) -> Vec<Decision> {
    let (Some(name), Some(workload)) = (pod.metadata.name.as_deref(), workload_of(pod)) else {
        return Vec::new();
    };
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .filter_map(|container| {
            let given = sizes
                .iter()
                .find(|s| s.workload == workload && s.container == container.name)?;
            let changes: Vec<Change> = [Resource::Cpu, Resource::Memory]
                .into_iter()
                .filter_map(|resource| {
                    let bounds = rescale::Bounds::from_policy(policy.resource(resource)?).ok()?;
                    let given = quantity::parse(&given.resource(resource)?.limit.0).ok()?;
                    let target = bounds.clamp(resource, given);
                    let current = observed(container, resource, None);
                    let limit = current.limit.filter(|l| *l > 0.0)?;
                    if (target - limit).abs() < rescale::grid(resource) / 2.0 {
                        return None;
                    }
                    let format = |value: f64| guardian::format(resource, value);
                    Some(Change {
                        resource,
                        from: Size {
                            request: current.request.map(format),
                            limit: format(limit),
                        },
                        to: Size {
                            request: current.request.map(|request| {
                                format(rescale::scaled_request(resource, request, limit, target))
                            }),
                            limit: format(target),
                        },
                        reason: Reason::NewPod,
                    })
                })
                .collect();
            (!changes.is_empty()).then(|| Decision {
                key: ContainerKey::new(name, &container.name),
                changes,
            })
        })
        .collect()
}

/// Keeps `sizes` (the policy's `status.templateRecommendations`) inside the policy as it is
/// now: a resource the policy no longer guards is dropped, a limit outside a changed
/// `min`/`max` is clamped (its request scaled at the recorded request:limit ratio), and a
/// container left with nothing is removed. Without this a lowered `max` would leave the pod
/// template above it until the next fallback. Whether anything changed.
pub fn clamp_sizes(sizes: &mut Vec<WorkloadSize>, policy: &ScalingPolicySpec) -> bool {
    let mut changed = false;
    for size in sizes.iter_mut() {
        for resource in [Resource::Cpu, Resource::Memory] {
            let slot = size.resource_mut(resource);
            let Some(given) = slot.as_mut() else {
                continue;
            };
            let Some(bounds) = policy
                .resource(resource)
                .and_then(|p| rescale::Bounds::from_policy(p).ok())
            else {
                *slot = None;
                changed = true;
                continue;
            };
            // A limit this operator wrote always parses; one that does not is left alone.
            let Ok(limit) = quantity::parse(&given.limit.0) else {
                continue;
            };
            let target = bounds.clamp(resource, limit);
            if (target - limit).abs() < rescale::grid(resource) / 2.0 {
                continue;
            }
            let format = |value: f64| guardian::format(resource, value);
            if let Some(request) = &given.request
                && let Ok(request) = quantity::parse(&request.0)
            {
                given.request = Some(format(rescale::scaled_request(
                    resource, request, limit, target,
                )));
            }
            given.limit = format(target);
            changed = true;
        }
    }
    let before = sizes.len();
    sizes.retain(|s| s.cpu.is_some() || s.memory.is_some());
    changed || sizes.len() != before
}

/// The sizes a pod's spec asks for but the kubelet does not apply (the resize it called
/// `Infeasible`): per container and resource whose limit in the spec differs from the one
/// in force.
pub fn unapplied_sizes(pod: &Pod) -> Vec<(String, Resource, ContainerSize)> {
    let actual = in_force(pod);
    let (Some(spec), Some(actual)) = (pod.spec.as_ref(), actual.spec.as_ref()) else {
        return Vec::new();
    };
    let mut unapplied = Vec::new();
    for (wanted, in_force) in spec.containers.iter().zip(&actual.containers) {
        for resource in [Resource::Cpu, Resource::Memory] {
            let wanted_size = observed(wanted, resource, None);
            let actual_size = observed(in_force, resource, None);
            let (Some(limit), Some(actual_limit)) = (wanted_size.limit, actual_size.limit) else {
                continue;
            };
            if (limit - actual_limit).abs() < rescale::grid(resource) / 2.0 {
                continue;
            }
            let format = |value: f64| guardian::format(resource, value);
            unapplied.push((
                wanted.name.clone(),
                resource,
                ContainerSize {
                    request: wanted_size.request.map(format),
                    limit: format(limit),
                },
            ));
        }
    }
    unapplied
}

/// Pod condition: a resize the kubelet has not admitted (reason `Deferred` or `Infeasible`).
pub const POD_RESIZE_PENDING: &str = "PodResizePending";
/// Pod condition: an admitted resize not yet in force (reason `Error` on failure).
pub const POD_RESIZE_IN_PROGRESS: &str = "PodResizeInProgress";

/// A container's `requests` or `limits` in a patch.
type JsonMap = serde_json::Map<String, Value>;

/// The strategic-merge patch for `pods/resize` that carries out a decision: the changed
/// resources of every container, requests and limits together.
pub fn resize_patch(decisions: &[&Decision]) -> Value {
    let mut containers: BTreeMap<&str, (JsonMap, JsonMap)> = BTreeMap::new();
    for decision in decisions {
        let (requests, limits) = containers.entry(&decision.key.container).or_default();
        for change in &decision.changes {
            let name = change.resource.field().to_owned();
            if let Some(request) = &change.to.request {
                requests.insert(name.clone(), json!(request.0));
            }
            limits.insert(name, json!(change.to.limit.0));
        }
    }
    let containers: Vec<Value> = containers
        .into_iter()
        .map(|(name, (requests, limits))| {
            let mut resources = serde_json::Map::new();
            if !requests.is_empty() {
                resources.insert("requests".into(), Value::Object(requests));
            }
            resources.insert("limits".into(), Value::Object(limits));
            json!({"name": name, "resources": resources})
        })
        .collect();
    json!({"spec": {"containers": containers}})
}

/// Where a pod's last resize stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResizeState {
    /// The kubelet has not yet observed the generation the resize created.
    NotObserved,
    /// Admitted, not yet in force.
    InProgress,
    /// Fits the node in principle, not now: the kubelet retries by itself.
    Deferred(String),
    /// Can never fit this node: do not retry until the target changes.
    Infeasible(String),
    /// The kubelet failed to apply it.
    Failed(String),
    /// In force: `containerStatuses[].resources` match the spec.
    Done,
}

/// Reads the resize state of `pod` for a resize that produced `generation`.
pub fn resize_state(pod: &Pod, generation: i64) -> ResizeState {
    let Some(status) = &pod.status else {
        return ResizeState::NotObserved;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
    if let Some(pending) = condition(POD_RESIZE_PENDING) {
        let message = pending.message.clone().unwrap_or_default();
        return match pending.reason.as_deref() {
            Some("Infeasible") => ResizeState::Infeasible(message),
            _ => ResizeState::Deferred(message),
        };
    }
    if let Some(progress) = condition(POD_RESIZE_IN_PROGRESS) {
        if progress.reason.as_deref() == Some("Error") {
            return ResizeState::Failed(progress.message.clone().unwrap_or_default());
        }
        return ResizeState::InProgress;
    }
    if status.observed_generation.unwrap_or(0) < generation {
        return ResizeState::NotObserved;
    }
    let spec_containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let in_force = spec_containers.iter().all(|container| {
        let actual = status
            .container_statuses
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|s| s.name == container.name)
            .and_then(|s| s.resources.as_ref());
        let wanted = container.resources.as_ref();
        match (wanted, actual) {
            (Some(wanted), Some(actual)) => {
                same(wanted.limits.as_ref(), actual.limits.as_ref())
                    && same(wanted.requests.as_ref(), actual.requests.as_ref())
            }
            (None, _) => true,
            (Some(_), None) => false,
        }
    });
    if in_force {
        ResizeState::Done
    } else {
        ResizeState::InProgress
    }
}

/// Equal CPU and memory values (compared as numbers: `1` equals `1000m`).
fn same(
    wanted: Option<&BTreeMap<String, KubeQuantity>>,
    actual: Option<&BTreeMap<String, KubeQuantity>>,
) -> bool {
    ["cpu", "memory"].iter().all(|name| {
        let value = |list: Option<&BTreeMap<String, KubeQuantity>>| {
            list.and_then(|l| l.get(*name))
                .and_then(|q| cellmesh_api::quantity::parse(&q.0).ok())
        };
        match (value(wanted), value(actual)) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            (None, None) => true,
            // The kubelet reports what it enforces; a missing entry is not yet applied.
            _ => false,
        }
    })
}

/// Whether the API server lets `change` be applied to `container` in place: Kubernetes 1.33
/// (and cellmesh-local) refuse to lower a memory limit unless the container's memory
/// `resizePolicy` is `RestartContainer` — which would restart it, so the Guardian's memory
/// decreases stay recommendations for such containers.
pub fn resizable_in_place(pod: &Pod, container: &str, change: &Change) -> bool {
    if change.resource != Resource::Memory || change.is_up() {
        return true;
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.resize_policy.as_ref())
        .is_some_and(|policies| {
            policies
                .iter()
                .any(|p| p.resource_name == "memory" && p.restart_policy == "RestartContainer")
        })
}

/// The CPU (cores) and memory (bytes) `pod` requests: the sum over its containers, with the
/// sizes `decisions` set where they change a request (a missing request defaults to the
/// limit, as Kubernetes does).
pub fn pod_requests(pod: &Pod, decisions: &[&Decision]) -> [f64; 2] {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut total = [0.0; 2];
    for container in containers {
        for (slot, resource) in [Resource::Cpu, Resource::Memory].into_iter().enumerate() {
            let decided = decisions
                .iter()
                .filter(|d| d.key.container == container.name)
                .flat_map(|d| d.changes.iter())
                .find(|c| c.resource == resource)
                .map(|c| c.to.request.as_ref().unwrap_or(&c.to.limit))
                .and_then(|q| cellmesh_api::quantity::parse(&q.0).ok());
            let current = observed(container, resource, None).request;
            total[slot] += decided.or(current).unwrap_or(0.0);
        }
    }
    total
}

/// Checks that `pod`, resized by `decisions`, still fits its node: `allocatable` (CPU cores,
/// memory bytes) minus the requests of `others` (the node's other pods). `Err` says which
/// resource lacks how much. Only increases are checked: a shrinking pod always fits.
pub fn fits_node(
    allocatable: [f64; 2],
    others: &[Pod],
    pod: &Pod,
    decisions: &[&Decision],
) -> Result<(), String> {
    let wanted = pod_requests(pod, decisions);
    let current = pod_requests(pod, &[]);
    let used = others
        .iter()
        .filter(|other| other.metadata.name != pod.metadata.name)
        .filter(|other| {
            // Finished pods hold nothing (what the scheduler counts).
            !matches!(
                other.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|other| pod_requests(other, &[]))
        .fold([0.0; 2], |acc, r| [acc[0] + r[0], acc[1] + r[1]]);
    let mut short = Vec::new();
    for (slot, (name, format)) in [
        (
            "cpu",
            cellmesh_api::quantity::cpu as fn(f64) -> cellmesh_api::service::Quantity,
        ),
        ("memory", cellmesh_api::quantity::memory),
    ]
    .into_iter()
    .enumerate()
    {
        let free = allocatable[slot] - used[slot];
        if wanted[slot] > current[slot] && wanted[slot] > free + 1e-9 {
            short.push(format!(
                "{name}: requests {} but the node has {} free of {} allocatable",
                format(wanted[slot]),
                format(free.max(0.0)),
                format(allocatable[slot])
            ));
        }
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(short.join("; "))
    }
}

/// `pod` with every container's spec resources replaced by the ones in force
/// (`status.containerStatuses[].resources`) where the kubelet reports them: the size to
/// decide from when the spec holds a resize the kubelet refused.
pub fn in_force(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        for container in &mut spec.containers {
            let actual = statuses
                .iter()
                .find(|s| s.name == container.name)
                .and_then(|s| s.resources.clone());
            if let Some(actual) = actual {
                container.resources = Some(actual);
            }
        }
    }
    pod
}

/// The Guardian's view of a pod's containers: requests and limits from the spec, usage from
/// the metric samples, the last out-of-memory kill from the container statuses.
pub fn observe(pod: &Pod, usage: &Usage) -> BTreeMap<ContainerKey, Observation> {
    let Some(name) = pod.metadata.name.as_deref() else {
        return BTreeMap::new();
    };
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .map(|container| {
            let key = ContainerKey::new(name, &container.name);
            let last_oom = statuses
                .iter()
                .find(|s| s.name == container.name)
                .and_then(|s| s.last_state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .filter(|t| t.reason.as_deref() == Some("OOMKilled"))
                .map(|t| {
                    t.finished_at
                        .as_ref()
                        .map_or_else(|| format!("exit {}", t.exit_code), |at| at.0.to_string())
                });
            let observation = Observation {
                cpu: observed(container, Resource::Cpu, usage.cpu.get(&key).copied()),
                memory: observed(container, Resource::Memory, usage.memory.get(&key).copied()),
                cpu_throttling: usage.cpu_throttling.get(&key).copied(),
                last_oom,
                // Put on the Guardian's clock by the controller, which knows it.
                last_oom_at: None,
                workload: workload_of(pod),
            };
            (key, observation)
        })
        .collect()
}

fn observed(container: &Container, resource: Resource, usage: Option<f64>) -> Observed {
    let value = |list: Option<&BTreeMap<String, KubeQuantity>>| {
        list.and_then(|l| l.get(resource.field()))
            .and_then(|q| cellmesh_api::quantity::parse(&q.0).ok())
    };
    let resources = container.resources.as_ref();
    let limit = value(resources.and_then(|r| r.limits.as_ref()));
    Observed {
        usage,
        // Kubernetes defaults a missing request to the limit.
        request: value(resources.and_then(|r| r.requests.as_ref())).or(limit),
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellmesh_api::service::Quantity;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn running_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "s0-abc", "generation": 2},
            "spec": {"containers": [{"name": "cell", "resources": {
                "requests": {"cpu": "250m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "128Mi"}}}]},
            "status": {"observedGeneration": 2, "containerStatuses": [{
                "name": "cell", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                              "limits": {"cpu": "0.5", "memory": "128Mi"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                             "finishedAt": "2026-11-23T10:00:00Z"}}
            }]}
        }))
    }

    #[test]
    fn patch_carries_requests_and_limits_of_every_changed_container() {
        let decision = Decision {
            key: ContainerKey::new("s0-abc", "cell"),
            changes: vec![Change {
                resource: Resource::Cpu,
                from: Size {
                    request: Some(Quantity("250m".into())),
                    limit: Quantity("500m".into()),
                },
                to: Size {
                    request: Some(Quantity("625m".into())),
                    limit: Quantity("1250m".into()),
                },
                reason: Reason::UpEvents(2),
            }],
        };
        assert_eq!(
            resize_patch(&[&decision]),
            json!({"spec": {"containers": [{"name": "cell", "resources": {
                "requests": {"cpu": "625m"}, "limits": {"cpu": "1250m"}}}]}})
        );
    }

    #[test]
    fn a_pod_whose_status_matches_its_spec_is_done() {
        assert_eq!(resize_state(&running_pod(), 2), ResizeState::Done);
        assert_eq!(resize_state(&running_pod(), 3), ResizeState::NotObserved);
    }

    #[test]
    fn a_pod_still_at_its_old_size_is_in_progress() {
        let mut pod = running_pod();
        pod.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .insert("cpu".into(), KubeQuantity("1".into()));
        assert_eq!(resize_state(&pod, 2), ResizeState::InProgress);
    }

    #[test]
    fn resize_conditions_are_read_as_kubernetes_sets_them() {
        let with = |type_: &str, reason: &str| {
            let mut pod = running_pod();
            pod.status.as_mut().unwrap().conditions = Some(vec![serde_json::from_value(json!({
                "type": type_, "status": "True", "reason": reason,
                "message": "Node didn't have enough capacity: cpu, requested: 64000, capacity: 2000"
            })).unwrap()]);
            resize_state(&pod, 2)
        };
        assert!(
            matches!(with(POD_RESIZE_PENDING, "Infeasible"), ResizeState::Infeasible(m) if m.contains("capacity"))
        );
        assert!(matches!(
            with(POD_RESIZE_PENDING, "Deferred"),
            ResizeState::Deferred(_)
        ));
        assert_eq!(with(POD_RESIZE_IN_PROGRESS, ""), ResizeState::InProgress);
        assert!(matches!(
            with(POD_RESIZE_IN_PROGRESS, "Error"),
            ResizeState::Failed(_)
        ));
    }

    #[test]
    fn memory_limits_only_come_down_in_place_with_restart_container() {
        let change = |from: &str, to: &str| Change {
            resource: Resource::Memory,
            from: Size {
                request: None,
                limit: Quantity(from.into()),
            },
            to: Size {
                request: None,
                limit: Quantity(to.into()),
            },
            reason: Reason::DownEvents(8),
        };
        let mut pod = running_pod();
        assert!(!resizable_in_place(&pod, "cell", &change("228Mi", "90Mi")));
        assert!(resizable_in_place(&pod, "cell", &change("90Mi", "228Mi")));
        pod.spec.as_mut().unwrap().containers[0].resize_policy = Some(vec![
            serde_json::from_value(
                json!({"resourceName": "memory", "restartPolicy": "RestartContainer"}),
            )
            .unwrap(),
        ]);
        assert!(resizable_in_place(&pod, "cell", &change("228Mi", "90Mi")));
    }

    #[test]
    fn an_increase_must_fit_the_node_s_free_requests() {
        let decision = Decision {
            key: ContainerKey::new("s0-abc", "cell"),
            changes: vec![Change {
                resource: Resource::Cpu,
                from: Size {
                    request: Some(Quantity("250m".into())),
                    limit: Quantity("500m".into()),
                },
                to: Size {
                    request: Some(Quantity("625m".into())),
                    limit: Quantity("1250m".into()),
                },
                reason: Reason::UpEvents(2),
            }],
        };
        let pod = running_pod();
        assert_eq!(pod_requests(&pod, &[]), [0.25, 64.0 * 1024.0 * 1024.0]);
        assert_eq!(pod_requests(&pod, &[&decision])[0], 0.625);
        let mut other = running_pod();
        other.metadata.name = Some("other".into());
        let gib = 1024.0 * 1024.0 * 1024.0;
        // 1 core: 250m taken by the other pod, 625m wanted → fits.
        assert_eq!(
            fits_node(
                [1.0, gib],
                &[other.clone(), pod.clone()],
                &pod,
                &[&decision]
            ),
            Ok(())
        );
        // 800m: 550m free, 625m wanted → refused, naming the resource.
        let err = fits_node([0.8, gib], &[other.clone()], &pod, &[&decision]).unwrap_err();
        assert!(err.starts_with("cpu: requests 625m"), "{err}");
        assert!(err.contains("550m free of 800m"), "{err}");
        // A finished pod holds nothing.
        other.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(fits_node([0.8, gib], &[other], &pod, &[&decision]), Ok(()));
        // Nothing grows: always fits.
        assert_eq!(fits_node([0.1, 1.0], &[], &pod, &[]), Ok(()));
    }

    #[test]
    fn in_force_sizes_come_from_the_container_statuses() {
        let mut pod = running_pod();
        pod.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .limits
            .as_mut()
            .unwrap()
            .insert("cpu".into(), KubeQuantity("64".into()));
        let key = ContainerKey::new("s0-abc", "cell");
        let wanted = observe(&pod, &Usage::default());
        assert_eq!(wanted[&key].cpu.limit, Some(64.0));
        let actual = observe(&in_force(&pod), &Usage::default());
        assert_eq!(actual[&key].cpu.limit, Some(0.5));
    }

    #[test]
    fn observation_takes_sizes_from_the_spec_and_the_oom_from_the_last_state() {
        let key = ContainerKey::new("s0-abc", "cell");
        let usage = Usage {
            cpu: BTreeMap::from([(key.clone(), 0.4)]),
            cpu_throttling: BTreeMap::from([(key.clone(), 0.3)]),
            ..Usage::default()
        };
        let observations = observe(&running_pod(), &usage);
        let observation = &observations[&key];
        assert_eq!(observation.cpu.usage, Some(0.4));
        assert_eq!(observation.cpu_throttling, Some(0.3));
        assert_eq!(observation.cpu.limit, Some(0.5));
        assert_eq!(observation.cpu.request, Some(0.25));
        assert_eq!(observation.memory.usage, None);
        assert_eq!(observation.memory.limit, Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(
            observation.last_oom.as_deref(),
            Some("2026-11-23T10:00:00Z")
        );
        // OOM kills are remembered per workload: the observation names it.
        assert_eq!(
            observation.workload, None,
            "an unlabelled pod without owner"
        );
        let mut labelled = running_pod();
        labelled.metadata.labels = Some(BTreeMap::from([(SERVICE_LABEL.into(), "s0".into())]));
        assert_eq!(
            observe(&labelled, &usage)[&key].workload.as_deref(),
            Some("s0")
        );
    }

    #[test]
    fn refused_patches_back_off_exponentially_up_to_ten_intervals() {
        let interval = Duration::from_secs(5);
        let schedule: Vec<u64> = (1..=7)
            .map(|failures| refusal_backoff(interval, failures).as_secs())
            .collect();
        assert_eq!(schedule, [5, 10, 20, 40, 50, 50, 50]);
        assert_eq!(refusal_backoff(interval, 0), interval);
        assert_eq!(refusal_backoff(interval, u32::MAX), interval * 10);
        assert_eq!(
            refusal_backoff(Duration::from_millis(500), 3),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_pod_s_workload_is_its_service_app_or_deployment() {
        let with = |meta: Value| pod(json!({"metadata": meta}));
        assert_eq!(
            workload_of(&with(
                json!({"labels": {SERVICE_LABEL: "s0", APP_LABEL: "x"}})
            )),
            Some("s0".into())
        );
        assert_eq!(
            workload_of(&with(json!({"labels": {APP_LABEL: "scorer"}}))),
            Some("scorer".into())
        );
        let owned = |kind: &str, name: &str| {
            with(json!({"labels": {"pod-template-hash": "7d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                                     "uid": "u", "controller": true}]}))
        };
        assert_eq!(
            workload_of(&owned("ReplicaSet", "web-7d9f")),
            Some("web".into())
        );
        assert_eq!(workload_of(&owned("StatefulSet", "db")), Some("db".into()));
        assert_eq!(workload_of(&with(json!({"name": "bare"}))), None);
    }

    fn sizes(workload: &str, cpu_limit: &str) -> Vec<WorkloadSize> {
        vec![WorkloadSize {
            workload: workload.into(),
            container: "cell".into(),
            cpu: Some(ContainerSize {
                request: Some(Quantity("1".into())),
                limit: Quantity(cpu_limit.into()),
            }),
            memory: None,
        }]
    }

    #[test]
    fn a_new_pod_gets_its_workload_s_size_at_its_own_request_ratio() {
        let mut pod = running_pod();
        pod.metadata.labels = Some([(SERVICE_LABEL.to_owned(), "s0".to_owned())].into());
        let policy: ScalingPolicySpec = serde_json::from_value(json!({
            "targetRef": {"kind": "WorkModel", "name": "shop"},
            "cpu": {"min": "100m", "max": "2"}}))
        .unwrap();
        let decisions = adopt(&pod, &sizes("s0", "1250m"), &policy);
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].key, ContainerKey::new("s0-abc", "cell"));
        let [change] = decisions[0].changes.as_slice() else {
            panic!("one change: {decisions:?}")
        };
        assert_eq!(
            change.resource,
            Resource::Cpu,
            "memory has no size: untouched"
        );
        assert_eq!(change.reason, Reason::NewPod);
        assert_eq!(change.from.limit.0, "500m");
        assert_eq!(change.to.limit.0, "1250m");
        // 250m:500m, not the sibling's recorded request: the QoS class is the pod's own.
        assert_eq!(change.to.request.as_ref().unwrap().0, "625m");
        assert!(
            change.describe().contains("new pod"),
            "{}",
            change.describe()
        );
        // Already at the size, or of another workload: nothing to do.
        assert!(adopt(&pod, &sizes("s0", "0.5"), &policy).is_empty());
        assert!(adopt(&pod, &sizes("s1", "1250m"), &policy).is_empty());
        // A size above today's max is clamped to it; a resource no longer guarded is left.
        let capped = adopt(&pod, &sizes("s0", "8"), &policy);
        assert_eq!(capped[0].changes[0].to.limit.0, "2");
        let memory_only: ScalingPolicySpec = serde_json::from_value(json!({
            "targetRef": {"kind": "WorkModel", "name": "shop"},
            "memory": {"min": "64Mi", "max": "1Gi"}}))
        .unwrap();
        assert!(adopt(&pod, &sizes("s0", "1250m"), &memory_only).is_empty());
    }

    #[test]
    fn template_sizes_follow_a_changed_min_max_and_unguarded_resources_go() {
        let policy: ScalingPolicySpec = serde_json::from_value(json!({
            "targetRef": {"kind": "WorkModel", "name": "shop"},
            "cpu": {"min": "100m", "max": "1"}}))
        .unwrap();
        // Recorded at 2 cores, request 1 (1:2): the max is now 1, so 1 core, request 500m.
        let mut list = sizes("s0", "2");
        assert!(clamp_sizes(&mut list, &policy));
        let cpu = list[0].cpu.as_ref().unwrap();
        assert_eq!(cpu.limit.0, "1");
        assert_eq!(cpu.request.as_ref().unwrap().0, "500m");
        // Inside the bounds: untouched, and says so.
        assert!(!clamp_sizes(&mut list, &policy));
        assert_eq!(list, {
            let mut expected = sizes("s0", "1");
            expected[0].cpu.as_mut().unwrap().request = Some(Quantity("500m".into()));
            expected
        });
        // Below a raised min: lifted to it.
        let mut low = sizes("s0", "50m");
        low[0].cpu.as_mut().unwrap().request = None;
        assert!(clamp_sizes(&mut low, &policy));
        assert_eq!(low[0].cpu.as_ref().unwrap().limit.0, "100m");
        // CPU no longer guarded: its size goes, and with nothing left, the entry.
        let memory_only: ScalingPolicySpec = serde_json::from_value(json!({
            "targetRef": {"kind": "WorkModel", "name": "shop"},
            "memory": {"min": "64Mi", "max": "1Gi"}}))
        .unwrap();
        assert!(clamp_sizes(&mut list, &memory_only));
        assert!(list.is_empty(), "{list:?}");
    }

    #[test]
    fn sizes_are_recorded_once_per_workload_container_and_resource() {
        let mut list = Vec::new();
        let size = |limit: &str| ContainerSize {
            request: None,
            limit: Quantity(limit.into()),
        };
        assert!(record_size(
            &mut list,
            "b",
            "cell",
            Resource::Cpu,
            size("1")
        ));
        assert!(record_size(
            &mut list,
            "a",
            "cell",
            Resource::Cpu,
            size("2")
        ));
        assert!(record_size(
            &mut list,
            "a",
            "cell",
            Resource::Memory,
            size("1Gi")
        ));
        assert!(!record_size(
            &mut list,
            "a",
            "cell",
            Resource::Memory,
            size("1Gi")
        ));
        assert!(record_size(
            &mut list,
            "a",
            "cell",
            Resource::Cpu,
            size("3")
        ));
        let workloads: Vec<&str> = list.iter().map(|s| s.workload.as_str()).collect();
        assert_eq!(workloads, ["a", "b"], "sorted, one entry each");
        assert_eq!(list[0].cpu.as_ref().unwrap().limit.0, "3");
        assert_eq!(list[0].memory.as_ref().unwrap().limit.0, "1Gi");
    }

    #[test]
    fn the_unapplied_sizes_of_an_infeasible_resize_come_from_the_spec() {
        assert!(unapplied_sizes(&running_pod()).is_empty());
        let mut pod = running_pod();
        let resources = pod.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap();
        resources
            .limits
            .as_mut()
            .unwrap()
            .insert("cpu".into(), KubeQuantity("64".into()));
        resources
            .requests
            .as_mut()
            .unwrap()
            .insert("cpu".into(), KubeQuantity("32".into()));
        let unapplied = unapplied_sizes(&pod);
        assert_eq!(unapplied.len(), 1, "{unapplied:?}");
        let (container, resource, size) = &unapplied[0];
        assert_eq!((container.as_str(), *resource), ("cell", Resource::Cpu));
        assert_eq!(size.limit.0, "64");
        assert_eq!(size.request.as_ref().unwrap().0, "32");
    }
}
