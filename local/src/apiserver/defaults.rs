//! Defaulting of built-in kinds on every write (create, update, patch, apply), as Kubernetes' defaulters and registry strategies
//! do it, so objects read back look like a real cluster's (kubectl's columns, `-o yaml`
//! diffs and controllers depend on these fields being present).

use cellmesh_apimachinery::quantity::Quantity;
use serde_json::{Map, Value, json};

use super::registry::ResourceInfo;

fn obj(value: &mut Value) -> Option<&mut Map<String, Value>> {
    value.as_object_mut()
}

/// Inserts `default` at `key` when absent (or null).
fn default_field(map: &mut Map<String, Value>, key: &str, default: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), default);
    }
}

fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    default_field(map, key, json!({}));
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// Applies creation defaults for the kind of `info`.
pub fn apply(info: &ResourceInfo, object: &mut Value, _now: &str) {
    if info.custom {
        return;
    }
    match (info.group.as_str(), info.resource.as_str()) {
        ("", "namespaces") => namespace(object),
        ("", "pods") => pod(object),
        ("", "services") => service(object),
        ("", "secrets") => {
            if let Some(map) = obj(object) {
                default_field(map, "type", json!("Opaque"));
                merge_string_data(map);
            }
        }
        ("apps", "deployments") => deployment(object),
        ("apps", "replicasets") => replica_set(object),
        _ => {}
    }
}

fn namespace(object: &mut Value) {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(map) = obj(object) else { return };
    if let Some(meta) = child(map, "metadata")
        && let Some(labels) = child(meta, "labels")
    {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if let Some(spec) = child(map, "spec") {
        default_field(spec, "finalizers", json!(["kubernetes"]));
    }
    map.insert("status".into(), json!({"phase": "Active"}));
}

/// Defaults of a container (`containers`, `initContainers`).
fn container(c: &mut Value) {
    let Some(c) = obj(c) else { return };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let tag = image.rsplit('/').next().unwrap_or("");
    let pinned = image.contains('@') || tag.split_once(':').is_some_and(|(_, t)| t != "latest");
    default_field(
        c,
        "imagePullPolicy",
        json!(if pinned { "IfNotPresent" } else { "Always" }),
    );
    default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_field(c, "terminationMessagePolicy", json!("File"));
    default_field(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            default_field(port, "protocol", json!("TCP"));
        }
    }
}

/// Defaults of a PodSpec (pods and pod templates).
fn pod_spec(spec: &mut Map<String, Value>) {
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "securityContext", json!({}));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(container);
        }
    }
}

/// The QoS class Kubernetes derives from the containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(resource));
            let request = requests.and_then(|r| r.get(resource)).or(limit);
            if limit.is_none() || !same_quantity(request, limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed && !containers.is_empty()) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Whether two quantities are equal by value (`"1"` and `"1000m"` are).
fn same_quantity(a: Option<&Value>, b: Option<&Value>) -> bool {
    let parse = |v: &Value| match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    };
    match (a.and_then(parse), b.and_then(parse)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn pod(object: &mut Value) {
    let Some(map) = obj(object) else { return };
    if let Some(spec) = child(map, "spec") {
        pod_spec(spec);
        let sa = spec
            .get("serviceAccountName")
            .or_else(|| spec.get("serviceAccount"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
        spec.insert("serviceAccountName".into(), json!(sa));
        spec.insert("serviceAccount".into(), json!(sa));
        default_field(spec, "enableServiceLinks", json!(true));
        default_field(spec, "priority", json!(0));
        default_field(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    let qos = qos_class(map.get("spec").unwrap_or(&Value::Null));
    map.insert(
        "status".into(),
        json!({"phase": "Pending", "qosClass": qos}),
    );
}

/// Service defaults; the ClusterIP fields are filled by the allocator
/// ([`service_ip`](super::service_ip)), which needs the stored Services.
fn service(object: &mut Value) {
    let Some(map) = obj(object) else { return };
    if let Some(spec) = child(map, "spec") {
        default_field(spec, "type", json!("ClusterIP"));
        default_field(spec, "sessionAffinity", json!("None"));
        let external_name = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
        if !external_name {
            default_field(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                default_field(port, "protocol", json!("TCP"));
                if let Some(p) = port.get("port").cloned() {
                    default_field(port, "targetPort", p);
                }
            }
        }
    }
    map.insert("status".into(), json!({"loadBalancer": {}}));
}

fn template_defaults(spec: &mut Map<String, Value>) {
    if let Some(template) = spec.get_mut("template").and_then(Value::as_object_mut)
        && let Some(pod) = child(template, "spec")
    {
        pod_spec(pod);
    }
}

fn deployment(object: &mut Value) {
    let Some(map) = obj(object) else { return };
    if let Some(spec) = child(map, "spec") {
        default_field(spec, "replicas", json!(1));
        // Field by field, as Kubernetes' defaulter: an update may carry a partial strategy.
        if let Some(strategy) = child(spec, "strategy") {
            default_field(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate"))
                && let Some(rolling) = child(strategy, "rollingUpdate")
            {
                default_field(rolling, "maxUnavailable", json!("25%"));
                default_field(rolling, "maxSurge", json!("25%"));
            }
        }
        default_field(spec, "revisionHistoryLimit", json!(10));
        default_field(spec, "progressDeadlineSeconds", json!(600));
        template_defaults(spec);
    }
    map.insert("status".into(), json!({}));
}

fn replica_set(object: &mut Value) {
    let Some(map) = obj(object) else { return };
    if let Some(spec) = child(map, "spec") {
        default_field(spec, "replicas", json!(1));
        template_defaults(spec);
    }
    map.insert("status".into(), json!({"replicas": 0}));
}

/// `stringData` is write-only: Kubernetes merges it into `data` (base64, overriding the
/// same keys there) and never stores it.
fn merge_string_data(secret: &mut Map<String, Value>) {
    use base64::Engine;
    let Some(Value::Object(strings)) = secret.remove("stringData") else {
        return;
    };
    if let Some(data) = child(secret, "data") {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    fn defaulted(group: &str, resource: &str, object: Value) -> Value {
        let info = Registry::new().lookup(group, "v1", resource).unwrap();
        let mut object = object;
        apply(&info, &mut object, "t");
        object
    }

    #[test]
    fn pods_get_kubelet_facing_defaults_and_qos() {
        let pod = defaulted(
            "",
            "pods",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
                 "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}),
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "c"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"requests": {"cpu": "1", "memory": "1"}, "limits": {"cpu": "2", "memory": "1"}}}]})
            ),
            "Burstable"
        );
    }

    #[test]
    fn services_get_type_and_ports() {
        let svc = defaulted(
            "",
            "services",
            json!({"metadata": {"name": "s", "uid": "abc"}, "spec": {"ports": [{"port": 80}]}}),
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        assert_eq!(svc["spec"]["internalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn deployments_and_namespaces() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"template": {"spec": {"containers": []}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let partial = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"strategy": {"rollingUpdate": {}}, "template": {"spec": {"containers": []}}}}),
        );
        assert_eq!(
            partial["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let ns = defaulted("", "namespaces", json!({"metadata": {"name": "team"}}));
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team"
        );
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    }
}
