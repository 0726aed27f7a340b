//! What kube-apiserver (1.33) lets a client change on an existing Pod.
//!
//! - A plain update or patch of the pod (`ValidatePodUpdate`) may change only
//!   `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`
//!   (set, or lowered), `spec.tolerations` (additions), `spec.schedulingGates` (removals) and
//!   a negative `spec.terminationGracePeriodSeconds` to 1; anything else — resources
//!   included — is a 422 `spec: Forbidden: pod updates may not change fields other than …`.
//!   One local addition: `spec.nodeName` may be set once while empty, standing in for the
//!   `pods/binding` subresource this server does not have.
//! - The `pods/resize` subresource (`podResizeStrategy`) takes only
//!   `spec.containers[*].resources` and `resizePolicy` from the request and silently keeps
//!   everything else (metadata, other spec fields, status) as stored — Kubernetes drops
//!   those changes rather than refusing them. `ValidatePodResize` then refuses a change of
//!   the pod's QoS class, removed requests or limits, a lower or newly added memory limit
//!   under the `NotRequired` resize policy, non-CPU/memory resource changes, requests above
//!   limits, and a resize of a running container whose status reports no resources (a node
//!   without in-place resize).
//!
//! The generation bump on a spec change is the caller's (`objects::prepare_update`).

use cellmesh_apimachinery::quantity::Quantity;
use serde_json::{Map, Value, json};

use super::defaults::qos_class;
use super::error::FieldError;

const UPDATABLE_POD_SPEC_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn spec(pod: &Value) -> &Value {
    pod.get("spec").unwrap_or(&Value::Null)
}

fn containers<'a>(spec: &'a Value, list: &str) -> &'a [Value] {
    spec.get(list)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `ValidatePodUpdate`'s spec rules for a plain update of a pod.
pub fn validate_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let (old_spec, new_spec) = (spec(old), spec(new));
    if old_spec == new_spec {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for list in ["containers", "initContainers"] {
        if containers(old_spec, list).len() != containers(new_spec, list).len() {
            errors.push(FieldError::forbidden(
                &format!("spec.{list}"),
                "pod updates may not add or remove containers",
            ));
            return errors;
        }
    }
    match (
        new_spec
            .get("activeDeadlineSeconds")
            .and_then(Value::as_i64),
        old_spec
            .get("activeDeadlineSeconds")
            .and_then(Value::as_i64),
    ) {
        (Some(new), _) if !(0..=i64::from(i32::MAX)).contains(&new) => {
            errors.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &json!(new),
                "must be between 0 and 2147483647, inclusive",
            ));
            return errors;
        }
        (Some(new), Some(old)) if old < new => {
            errors.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                &json!(new),
                "must be less than or equal to previous value",
            ));
            return errors;
        }
        (None, Some(_)) => errors.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            &Value::Null,
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }

    let mut munged = new_spec.clone();
    if let Some(map) = munged.as_object_mut() {
        for list in ["containers", "initContainers"] {
            if let Some(items) = map.get_mut(list).and_then(Value::as_array_mut) {
                for (item, old_item) in items.iter_mut().zip(containers(old_spec, list)) {
                    copy_field(item, old_item, "image");
                }
            }
        }
        for field in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
            copy_field(&mut munged, old_spec, field);
        }
        let old_grace = old_spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        let new_grace = munged
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        if old_grace.is_some_and(|g| g < 0) && new_grace == Some(1) {
            copy_field(&mut munged, old_spec, "terminationGracePeriodSeconds");
        }
        let old_node = old_spec.get("nodeName").and_then(Value::as_str);
        if old_node.is_none_or(str::is_empty) {
            copy_field(&mut munged, old_spec, "nodeName");
        }
    }
    if &munged != old_spec {
        errors.push(FieldError::forbidden(
            "spec",
            &format!(
                "pod updates may not change fields other than {UPDATABLE_POD_SPEC_FIELDS}\n{}",
                diff(old_spec, &munged)
            ),
        ));
    }
    errors
}

/// Sets `target[field]` to `source[field]`, or removes it when the source has none.
fn copy_field(target: &mut Value, source: &Value, field: &str) {
    if let Some(map) = target.as_object_mut() {
        match source.get(field) {
            Some(value) => map.insert(field.to_owned(), value.clone()),
            None => map.remove(field),
        };
    }
}

/// A short description of what differs (Kubernetes prints a Go `cmp.Diff` here).
fn diff(old: &Value, new: &Value) -> String {
    let mut lines = Vec::new();
    diff_into(old, new, "spec", &mut lines);
    lines.join("\n")
}

fn diff_into(old: &Value, new: &Value, path: &str, lines: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                diff_into(x, y, &format!("{path}.{key}"), lines);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_into(x, y, &format!("{path}[{i}]"), lines);
            }
        }
        _ if old != new => {
            lines.push(format!("  - {path}: {old}"));
            lines.push(format!("  + {path}: {new}"));
        }
        _ => {}
    }
}

/// The pod a `pods/resize` request makes of `old`: the request's containers' `resources`
/// and `resizePolicy`, everything else as stored (`dropNonResizeUpdates`). A request that
/// adds, removes, reorders or renames containers is kept as sent, for
/// [`validate_resize`] to refuse.
pub fn apply_resize(old: &Value, new: &Value) -> Value {
    let (old_spec, new_spec) = (spec(old), spec(new));
    let mut result = old.clone();
    for list in ["containers", "initContainers"] {
        let (olds, news) = (containers(old_spec, list), containers(new_spec, list));
        let renamed = olds.len() != news.len()
            || olds
                .iter()
                .zip(news)
                .any(|(a, b)| a.get("name") != b.get("name"));
        let merged: Vec<Value> = if renamed {
            news.to_vec()
        } else {
            olds.iter()
                .zip(news)
                .map(|(old_c, new_c)| {
                    // Init containers' resources change only for sidecars.
                    if list == "initContainers" && !is_sidecar(old_c) {
                        return old_c.clone();
                    }
                    let mut c = old_c.clone();
                    copy_field(&mut c, new_c, "resources");
                    copy_field(&mut c, new_c, "resizePolicy");
                    c
                })
                .collect()
        };
        if let Some(spec) = result.get_mut("spec").and_then(Value::as_object_mut)
            && (!merged.is_empty() || spec.contains_key(list))
        {
            spec.insert(list.to_owned(), Value::Array(merged));
        }
    }
    result
}

fn is_sidecar(container: &Value) -> bool {
    container.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// `ValidatePodResize` on the pod [`apply_resize`] produced.
pub fn validate_resize(old: &Value, new: &Value) -> Vec<FieldError> {
    let (old_spec, new_spec) = (spec(old), spec(new));
    let mut errors = Vec::new();
    for list in ["containers", "initContainers"] {
        let (olds, news) = (containers(old_spec, list), containers(new_spec, list));
        if olds.len() != news.len()
            || olds
                .iter()
                .zip(news)
                .any(|(a, b)| a.get("name") != b.get("name"))
        {
            return vec![FieldError::forbidden(
                "spec",
                "only cpu and memory resources are mutable",
            )];
        }
    }
    let old_qos = old
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| qos_class(old_spec));
    if qos_class(new_spec) != old_qos {
        let shown = new
            .pointer("/status/qosClass")
            .cloned()
            .unwrap_or(json!(""));
        errors.push(FieldError::invalid(
            "spec",
            &shown,
            "Pod QOS Class may not change as a result of resizing",
        ));
    }
    if !resize_supported(old) {
        errors.push(FieldError::forbidden(
            "spec",
            "Pod running on node without support for resize",
        ));
    }
    for list in ["containers", "initContainers"] {
        let pairs = containers(old_spec, list)
            .iter()
            .zip(containers(new_spec, list))
            .enumerate();
        for (i, (old_c, new_c)) in pairs {
            if list == "initContainers" && !is_sidecar(old_c) {
                continue;
            }
            let path = format!("spec.{list}[{i}].resources");
            errors.extend(validate_container_resize(old_c, new_c, &path));
            errors.extend(requests_within_limits(new_c, &path));
            if !only_cpu_memory_changed(old_c, new_c) {
                let detail = if list == "containers" {
                    "only cpu and memory resources are mutable"
                } else {
                    "only cpu and memory resources for sidecar containers are mutable"
                };
                errors.push(FieldError::forbidden("spec", detail));
            }
        }
    }
    errors
}

/// The version-skew guard: a running container must report its resources in its status.
fn resize_supported(pod: &Value) -> bool {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    statuses
        .iter()
        .find(|s| s.pointer("/state/running").is_some())
        .is_none_or(|s| s.get("resources").is_some_and(|r| !r.is_null()))
}

fn resource_list<'a>(container: &'a Value, which: &str) -> Option<&'a Map<String, Value>> {
    container
        .pointer(&format!("/resources/{which}"))
        .and_then(Value::as_object)
}

fn quantity(value: &Value) -> Option<Quantity> {
    match value {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

fn validate_container_resize(old_c: &Value, new_c: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for which in ["requests", "limits"] {
        let (old_list, new_list) = (resource_list(old_c, which), resource_list(new_c, which));
        let removed = old_list.is_some_and(|old| {
            old.keys()
                .any(|name| !new_list.is_some_and(|new| new.contains_key(name)))
        });
        if removed {
            errors.push(FieldError::forbidden(
                &format!("{path}.{which}"),
                &format!("resource {which} cannot be removed"),
            ));
        }
    }
    let memory_policy = new_c
        .get("resizePolicy")
        .and_then(Value::as_array)
        .and_then(|policies| {
            policies
                .iter()
                .find(|p| p.get("resourceName").and_then(Value::as_str) == Some("memory"))
        })
        .and_then(|p| p.get("restartPolicy").and_then(Value::as_str))
        .unwrap_or("NotRequired");
    if memory_policy == "NotRequired" {
        let limit = |c: &Value| {
            resource_list(c, "limits")
                .and_then(|l| l.get("memory"))
                .and_then(quantity)
        };
        let field = format!("{path}.limits[memory]");
        match (limit(old_c), limit(new_c)) {
            (Some(old), Some(new)) if new < old => errors.push(FieldError::forbidden(
                &field,
                "memory limits cannot be decreased unless resizePolicy is RestartContainer",
            )),
            (None, Some(_)) => errors.push(FieldError::forbidden(
                &field,
                "memory limits cannot be added unless resizePolicy is RestartContainer",
            )),
            _ => {}
        }
    }
    errors
}

/// `ValidateContainerResourceRequirements`: a request may not exceed its limit.
fn requests_within_limits(container: &Value, path: &str) -> Vec<FieldError> {
    let (Some(requests), Some(limits)) = (
        resource_list(container, "requests"),
        resource_list(container, "limits"),
    ) else {
        return Vec::new();
    };
    requests
        .iter()
        .filter_map(|(name, request)| {
            let limit = limits.get(name)?;
            (quantity(request)? > quantity(limit)?).then(|| {
                FieldError::invalid(
                    &format!("{path}.requests"),
                    request,
                    &format!(
                        "must be less than or equal to {name} limit of {}",
                        limit
                            .as_str()
                            .map_or_else(|| limit.to_string(), str::to_owned)
                    ),
                )
            })
        })
        .collect()
}

/// Whether the containers differ at most in their CPU and memory requests and limits
/// and their resize policy (`dropCPUMemoryResourcesFromContainer`).
fn only_cpu_memory_changed(old_c: &Value, new_c: &Value) -> bool {
    let without_cpu_memory = |c: &Value| {
        let mut c = c.clone();
        if let Some(map) = c.as_object_mut() {
            map.remove("resizePolicy");
            if let Some(resources) = map.get_mut("resources").and_then(Value::as_object_mut) {
                for which in ["requests", "limits"] {
                    if let Some(list) = resources.get_mut(which).and_then(Value::as_object_mut) {
                        list.remove("cpu");
                        list.remove("memory");
                        if list.is_empty() {
                            resources.remove(which);
                        }
                    }
                }
                if resources.is_empty() {
                    map.remove("resources");
                }
            }
        }
        c
    };
    without_cpu_memory(old_c) == without_cpu_memory(new_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: Value) -> Value {
        let qos =
            qos_class(&json!({"containers": [{"name": "app", "resources": resources.clone()}]}));
        json!({
            "metadata": {"name": "p", "labels": {"app": "a"}, "generation": 1},
            "spec": {"containers": [{"name": "app", "image": "busybox", "resources": resources}],
                     "restartPolicy": "Always"},
            "status": {"phase": "Running", "qosClass": qos},
        })
    }

    fn burstable() -> Value {
        pod(json!({"requests": {"cpu": "250m", "memory": "64Mi"},
                   "limits": {"cpu": "500m", "memory": "128Mi"}}))
    }

    fn with_resources(base: &Value, resources: Value) -> Value {
        let mut p = base.clone();
        p["spec"]["containers"][0]["resources"] = resources;
        p
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn resize_takes_only_resources_and_resize_policy() {
        let old = burstable();
        let mut request = with_resources(
            &old,
            json!({"requests": {"cpu": "300m", "memory": "64Mi"},
                   "limits": {"cpu": "1", "memory": "128Mi"}}),
        );
        request["spec"]["containers"][0]["image"] = json!("nginx");
        request["spec"]["containers"][0]["resizePolicy"] =
            json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]);
        request["metadata"]["labels"] = json!({"app": "changed"});
        request["spec"]["restartPolicy"] = json!("Never");
        request["status"]["phase"] = json!("Failed");
        let resized = apply_resize(&old, &request);
        let c = &resized["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "1");
        assert_eq!(c["resizePolicy"][0]["resourceName"], "cpu");
        assert_eq!(c["image"], "busybox", "other container fields are kept");
        assert_eq!(resized["metadata"]["labels"]["app"], "a");
        assert_eq!(resized["spec"]["restartPolicy"], "Always");
        assert_eq!(resized["status"]["phase"], "Running");
        assert!(validate_resize(&old, &resized).is_empty());
    }

    #[test]
    fn a_qos_change_is_refused_with_kubernetes_words() {
        let old = burstable();
        let guaranteed = with_resources(
            &old,
            json!({"requests": {"cpu": "500m", "memory": "128Mi"},
                   "limits": {"cpu": "500m", "memory": "128Mi"}}),
        );
        let errors = validate_resize(&old, &apply_resize(&old, &guaranteed));
        assert_eq!(
            messages(&errors),
            [
                r#"spec: Invalid value: "Burstable": Pod QOS Class may not change as a result of resizing"#
            ]
        );
        // Equal quantities in other spellings keep the class: "0.5" is "500m".
        let guaranteed_old = pod(json!({"requests": {"cpu": "500m", "memory": "128Mi"},
                                        "limits": {"cpu": "500m", "memory": "128Mi"}}));
        let same = with_resources(
            &guaranteed_old,
            json!({"requests": {"cpu": "1", "memory": "128Mi"},
                   "limits": {"cpu": "1000m", "memory": "128Mi"}}),
        );
        let errors = validate_resize(&guaranteed_old, &apply_resize(&guaranteed_old, &same));
        assert!(errors.is_empty(), "{:?}", messages(&errors));
    }

    #[test]
    fn removals_memory_decreases_and_other_resources_are_refused() {
        let old = burstable();
        let cases = [
            (
                json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "128Mi"}}),
                "spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed",
            ),
            (
                json!({"requests": {"cpu": "250m", "memory": "64Mi"},
                       "limits": {"cpu": "500m", "memory": "100Mi"}}),
                "spec.containers[0].resources.limits[memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is RestartContainer",
            ),
            (
                json!({"requests": {"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
                       "limits": {"cpu": "500m", "memory": "128Mi"}}),
                "spec: Forbidden: only cpu and memory resources are mutable",
            ),
            (
                json!({"requests": {"cpu": "600m", "memory": "64Mi"},
                       "limits": {"cpu": "500m", "memory": "128Mi"}}),
                r#"spec.containers[0].resources.requests: Invalid value: "600m": must be less than or equal to cpu limit of 500m"#,
            ),
        ];
        for (resources, expected) in cases {
            let request = with_resources(&old, resources);
            let errors = validate_resize(&old, &apply_resize(&old, &request));
            assert_eq!(messages(&errors), [expected]);
        }
        // With RestartContainer for memory the decrease is allowed.
        let mut request = with_resources(
            &old,
            json!({"requests": {"cpu": "250m", "memory": "64Mi"},
                   "limits": {"cpu": "500m", "memory": "100Mi"}}),
        );
        request["spec"]["containers"][0]["resizePolicy"] =
            json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
        assert!(validate_resize(&old, &apply_resize(&old, &request)).is_empty());
    }

    #[test]
    fn running_containers_must_report_resources() {
        let mut old = burstable();
        old["status"]["containerStatuses"] =
            json!([{"name": "app", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]);
        let request = with_resources(
            &old,
            json!({"requests": {"cpu": "300m", "memory": "64Mi"},
                   "limits": {"cpu": "600m", "memory": "128Mi"}}),
        );
        let errors = validate_resize(&old, &apply_resize(&old, &request));
        assert_eq!(
            messages(&errors),
            ["spec: Forbidden: Pod running on node without support for resize"]
        );
        old["status"]["containerStatuses"][0]["resources"] = json!({"limits": {"cpu": "500m"}});
        assert!(validate_resize(&old, &apply_resize(&old, &request)).is_empty());
    }

    #[test]
    fn renamed_containers_are_refused() {
        let old = burstable();
        let mut request = old.clone();
        request["spec"]["containers"][0]["name"] = json!("other");
        let errors = validate_resize(&old, &apply_resize(&old, &request));
        assert_eq!(
            messages(&errors),
            ["spec: Forbidden: only cpu and memory resources are mutable"]
        );
    }

    #[test]
    fn plain_updates_may_change_images_but_not_resources() {
        let old = burstable();
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("busybox:1.37");
        image["spec"]["activeDeadlineSeconds"] = json!(60);
        image["spec"]["nodeName"] = json!("cellmesh-local");
        assert!(validate_update(&old, &image).is_empty());

        let resized = with_resources(
            &old,
            json!({"requests": {"cpu": "300m", "memory": "64Mi"},
                   "limits": {"cpu": "500m", "memory": "128Mi"}}),
        );
        let errors = messages(&validate_update(&old, &resized));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(&format!(
                "spec: Forbidden: pod updates may not change fields other than {UPDATABLE_POD_SPEC_FIELDS}\n"
            )),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("spec.containers[0].resources.requests.cpu"),
            "{errors:?}"
        );

        let mut more = old.clone();
        more["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b", "image": "i"}));
        assert_eq!(
            messages(&validate_update(&old, &more)),
            ["spec.containers: Forbidden: pod updates may not add or remove containers"]
        );
        let mut bound = old.clone();
        bound["spec"]["nodeName"] = json!("a");
        let mut moved = bound.clone();
        moved["spec"]["nodeName"] = json!("b");
        assert_eq!(
            validate_update(&bound, &moved).len(),
            1,
            "nodeName is set once"
        );
    }
}
