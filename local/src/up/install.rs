//! What `up` installs into the cluster: the cellmesh CRDs (embedded from `crds/`, so the
//! binary works outside the repository) and example manifests, both by server-side apply
//! with one field manager, so a second `up` is a no-op and kubectl edits are not fought.

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
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for doc in docs {
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .with_context(|| format!("{}: an object without metadata.name", path.display()))?;
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
    fn manifests_split_into_documents() {
        let docs = documents("---\na: 1\n---\n# nothing\n---\nb: 2\n").unwrap();
        assert_eq!(
            docs,
            vec![serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
        );
        assert!(documents("a: [").is_err());
    }
}
