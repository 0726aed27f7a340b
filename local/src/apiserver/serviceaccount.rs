//! Kubernetes' ServiceAccount admission plugin, for pods being created: unless the pod or
//! its ServiceAccount sets `automountServiceAccountToken: false`, the pod gets the
//! projected volume `kube-api-access-<random>` (a bound ServiceAccount token, the cluster
//! CA from the `kube-root-ca.crt` ConfigMap and the namespace from the downward API), and
//! every container and init container that does not already mount something at
//! `/var/run/secrets/kubernetes.io/serviceaccount` mounts it there read-only. The node
//! agent materializes the volume; in-cluster clients (kube-rs, client-go) find their
//! credentials where they expect them.

use serde_json::{Value, json};

/// Where in-cluster clients look for the token, CA and namespace.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Prefix of the projected volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";

/// The projected volume Kubernetes adds (token valid for 3607 s, rotated by the node).
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Mutates a pod being created. `account_automount` is the ServiceAccount's
/// `automountServiceAccountToken` (None when unset or the account does not exist yet);
/// `suffix` names a new volume.
pub fn mount_token(pod: &mut Value, account_automount: Option<bool>, suffix: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or(account_automount)
        .unwrap_or(true);
    if !automount {
        return;
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_owned);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH));
            if !taken {
                mounts.push(mount.clone());
                needed = true;
            }
        }
    }
    if needed && existing.is_none() {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(token_volume(&volume_name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}],
        }})
    }

    #[test]
    fn every_container_mounts_the_projected_token() {
        let mut p = pod();
        mount_token(&mut p, None, "x7k2p");
        let volumes = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0]["name"], "kube-api-access-x7k2p");
        let sources = &volumes[0]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        for c in ["initContainers", "containers"] {
            let mount = &p["spec"][c][0]["volumeMounts"][0];
            assert_eq!(mount["mountPath"], TOKEN_MOUNT_PATH);
            assert_eq!(mount["readOnly"], true);
        }
        let b = p["spec"]["containers"][1]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(b.len(), 1, "a container with its own mount there keeps it");
    }

    #[test]
    fn automount_can_be_switched_off_by_pod_or_account() {
        let mut p = pod();
        mount_token(&mut p, Some(false), "x");
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        mount_token(&mut p, Some(true), "x");
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(true);
        mount_token(&mut p, Some(false), "x");
        assert!(p["spec"]["volumes"].is_array(), "the pod's choice wins");
    }
}
