//! What `up` installs into the cluster: the cellmesh CRDs (embedded from `crds/`, so the
//! binary works outside the repository), the operator (its least-privilege RBAC from
//! `operator/rbac/operator.yaml` and a Deployment of the operator image, which the node
//! agent runs as the `cellmesh-operator` binary) and example manifests, all by server-side
//! apply with one field manager, so a second `up` is a no-op and kubectl edits are not
//! fought.

use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client};
use serde_json::Value;

/// The field manager of everything `up` applies.
pub const FIELD_MANAGER: &str = "cellmesh-local-up";

/// The generated CRDs (`cargo xtask crdgen` writes `crds/`; a test checks this list
/// matches the directory).
pub const CRDS: &[(&str, &str)] = &[
    (
        "apps.cellmesh.io.yaml",
        include_str!("../../../crds/apps.cellmesh.io.yaml"),
    ),
    (
        "profiles.cellmesh.io.yaml",
        include_str!("../../../crds/profiles.cellmesh.io.yaml"),
    ),
    (
        "scalingpolicies.cellmesh.io.yaml",
        include_str!("../../../crds/scalingpolicies.cellmesh.io.yaml"),
    ),
    (
        "workmodels.cellmesh.io.yaml",
        include_str!("../../../crds/workmodels.cellmesh.io.yaml"),
    ),
];

/// Applies every CRD and waits until each is Established; returns their names.
pub async fn crds(client: &Client) -> anyhow::Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (file, text) in CRDS {
        let crd: Value =
            serde_yaml::from_str(text).with_context(|| format!("embedded {file} is not YAML"))?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .with_context(|| format!("embedded {file} has no metadata.name"))?
            .to_owned();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("cannot apply CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), established)
            .await
            .with_context(|| format!("CRD {name} did not become Established"))??;
    }
    Ok(names)
}

/// The YAML documents of a manifest file (empty documents skipped).
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .map(|doc| doc.map_err(anyhow::Error::from))
        .collect()
}

/// Applies every object of the manifest at `path` (namespace `default` unless set);
/// returns `kind/name` of each.
pub async fn manifest(client: &Client, path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let docs = documents(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    apply_all(client, docs, &path.display().to_string()).await
}

/// Namespace the operator runs in.
pub const OPERATOR_NAMESPACE: &str = "cellmesh-system";
/// Name of the operator's Deployment, ServiceAccount and RBAC objects.
pub const OPERATOR_NAME: &str = "cellmesh-operator";
/// The operator's least-privilege RBAC, as the end-to-end tests run it.
const OPERATOR_RBAC: &str = include_str!("../../../operator/rbac/operator.yaml");

/// Everything that runs the operator in the cluster: its namespace, ServiceAccount, the
/// RBAC of `operator/rbac/operator.yaml` bound to it, and a Deployment of
/// `ghcr.io/cellmesh/operator:<version>` (the node agent maps that image to the
/// `cellmesh-operator` binary next to `cellmesh-local`).
pub fn operator_objects(prometheus_url: Option<&str>) -> anyhow::Result<Vec<Value>> {
    use serde_json::json;
    let ns = OPERATOR_NAMESPACE;
    let name = OPERATOR_NAME;
    let version = env!("CARGO_PKG_VERSION");
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cellmesh"});
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": ns, "labels": labels}}),
    ];
    for mut doc in documents(OPERATOR_RBAC).context("operator/rbac/operator.yaml")? {
        if doc["kind"] == "Role" {
            doc["metadata"]["namespace"] = json!(ns);
        }
        objects.push(doc);
    }
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]);
    objects.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": subject}),
    );
    objects.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": format!("{name}-leader-election"), "namespace": ns, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": format!("{name}-leader-election")},
        "subjects": subject}),
    );
    let mut args = vec![
        "run".to_owned(),
        // The pod's own address: pods share the host's network on cellmesh-local.
        "--metrics-addr=$(POD_IP):8080".to_owned(),
        "--leader-election".to_owned(),
        format!("--lease-namespace={ns}"),
    ];
    if let Some(url) = prometheus_url {
        args.push(format!("--prometheus-url={url}"));
    }
    objects.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                    "prometheus.io/path": "/metrics"}},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "operator",
                        "image": format!("ghcr.io/cellmesh/operator:{version}"),
                        "args": args,
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                        ],
                        "ports": [{"name": "metrics", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 2},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10},
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}
                    }]
                }
            }
        }}));
    Ok(objects)
}

/// Applies the operator's objects; returns `kind/name` of each.
pub async fn operator(
    client: &Client,
    prometheus_url: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    apply_all(
        client,
        operator_objects(prometheus_url)?,
        "the operator manifest",
    )
    .await
}

/// Applies objects by server-side apply (namespace `default` unless set).
async fn apply_all(client: &Client, docs: Vec<Value>, origin: &str) -> anyhow::Result<Vec<String>> {
    let path = origin;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for doc in docs {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .with_context(|| format!("{path}: an object without metadata.name"))?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("the cluster does not serve {api_version} {kind}"))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = doc
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(name, &params, &Patch::Apply(&doc))
            .await
            .with_context(|| format!("cannot apply {kind} {name}"))?;
        applied.push(format!("{}/{name}", kind.to_ascii_lowercase()));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_crds_are_exactly_the_generated_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = CRDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, embedded, "update up::install::CRDS after crdgen");
        for (file, text) in CRDS {
            let docs = documents(text).unwrap();
            assert_eq!(docs.len(), 1, "{file}");
            assert_eq!(docs[0]["kind"], "CustomResourceDefinition", "{file}");
        }
    }

    #[test]
    fn the_operator_runs_with_the_tested_rbac_and_the_prometheus_of_up() {
        let objects = operator_objects(Some("http://127.0.0.1:9090")).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
        }
        let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
        assert_eq!(role["metadata"]["namespace"], OPERATOR_NAMESPACE);
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"],
            format!("ghcr.io/cellmesh/operator:{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(
            container["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == "--prometheus-url=http://127.0.0.1:9090")
        );
        let without = operator_objects(None).unwrap();
        let deployment = without.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        assert!(
            args.iter()
                .all(|a| !a.as_str().unwrap().starts_with("--prometheus-url"))
        );
    }

    #[test]
    fn manifests_split_into_documents() {
        let docs = documents("---\na: 1\n---\n# nothing\n---\nb: 2\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
        assert!(documents("a: [").is_err());
    }
}
