//! The CRD manifests, rendered from the Rust types in `cellmesh_api::crd`.
//!
//! One file per CRD, named `<plural>.<group>.yaml` (the CRD's own name), each starting with a
//! comment that says it is generated. `cargo xtask crdgen` writes them to `crds/`;
//! `cargo xtask crdgen --check` (run by `cargo xtask ci`) fails when the committed files
//! differ from these.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The first line of every generated file.
pub const HEADER: &str =
    "# Generated from the Rust types in api/src/crd by `cargo xtask crdgen`; do not edit.\n";

/// One generated manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdFile {
    /// File name, e.g. `workmodels.cellmesh.io.yaml`.
    pub file_name: String,
    /// The YAML document, with [`HEADER`].
    pub yaml: String,
}

/// Every cellmesh CRD as a file.
pub fn files() -> Result<Vec<CrdFile>, serde_yaml::Error> {
    cellmesh_api::crd::all().iter().map(render).collect()
}

/// One CRD as a file.
pub fn render(crd: &CustomResourceDefinition) -> Result<CrdFile, serde_yaml::Error> {
    let name = crd.metadata.name.as_deref().unwrap_or("unnamed");
    Ok(CrdFile {
        file_name: format!("{name}.yaml"),
        yaml: format!("{HEADER}{}", serde_yaml::to_string(crd)?),
    })
}

/// Every CRD as one multi-document YAML stream (for `kubectl apply -f -`).
pub fn stream() -> Result<String, serde_yaml::Error> {
    Ok(files()?
        .into_iter()
        .map(|f| format!("---\n{}", f.yaml))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_crd_named_after_it() {
        let files = files().unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "workmodels.cellmesh.io.yaml",
                "apps.cellmesh.io.yaml",
                "profiles.cellmesh.io.yaml",
                "scalingpolicies.cellmesh.io.yaml"
            ]
        );
        for file in &files {
            assert!(file.yaml.starts_with(HEADER));
            assert!(file.yaml.contains("kind: CustomResourceDefinition"));
        }
        assert_eq!(stream().unwrap().matches("\n---\n").count() + 1, 4);
    }

    #[test]
    fn committed_manifests_match_the_types() {
        // The same check as `cargo xtask crdgen --check`, so a plain test run notices too.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
        for file in files().unwrap() {
            let committed =
                std::fs::read_to_string(format!("{dir}/{}", file.file_name)).unwrap_or_default();
            assert!(
                committed == file.yaml,
                "crds/{} is out of date: run `cargo xtask crdgen` and commit the result",
                file.file_name
            );
        }
    }
}
