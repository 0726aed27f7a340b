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
        yaml: format!(
            "{HEADER}{}",
            quote_yaml11_booleans(&serde_yaml::to_string(crd)?)
        ),
    })
}

/// Words that YAML 1.2 reads as strings but YAML 1.1 as booleans.
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes plain scalars such as `Off` that YAML 1.1 parsers read as booleans.
///
/// serde_yaml writes YAML 1.2, where `Off` is a string; kubectl and Helm parse with
/// go-yaml's YAML 1.1 rules, where it is `false` — the ScalingPolicy `mode` enum would
/// arrive as `[false, "InPlace", …]`. Only whole scalars after `- ` or `key: ` are quoted;
/// a test checks that the result still parses to the same object.
pub fn quote_yaml11_booleans(yaml: &str) -> String {
    let quote = |scalar: &str| {
        if YAML11_BOOLEANS.contains(&scalar) {
            format!("'{scalar}'")
        } else {
            scalar.to_owned()
        }
    };
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let (mut head, mut rest) = line.split_at(indent);
        let dash;
        if let Some(after) = rest.strip_prefix("- ") {
            dash = format!("{head}- ");
            head = &dash;
            rest = after;
        }
        out.push_str(head);
        // `key:` or `key: value` (keys here are plain words; block text has no such shape
        // that parses differently, which the round-trip test checks).
        match rest
            .split_once(": ")
            .or_else(|| rest.strip_suffix(':').map(|k| (k, "")))
        {
            Some((key, value)) if !key.contains(' ') && !key.starts_with(['\'', '"']) => {
                out.push_str(&quote(key));
                out.push(':');
                if !value.is_empty() || rest.contains(": ") {
                    out.push(' ');
                    out.push_str(&quote(value));
                }
            }
            _ => out.push_str(&quote(rest)),
        }
        out.push('\n');
    }
    out
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
    fn yaml11_booleans_are_quoted_and_nothing_else_changes() {
        let yaml = "enum:\n- Off\n- InPlace\nmode: on\ntext: Offline\nflag: true\non:\n  y: 1\n";
        let quoted = quote_yaml11_booleans(yaml);
        assert_eq!(
            quoted,
            "enum:\n- 'Off'\n- InPlace\nmode: 'on'\ntext: Offline\nflag: true\n'on':\n  'y': 1\n"
        );
        let before: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let after: serde_json::Value = serde_yaml::from_str(&quoted).unwrap();
        assert_eq!(before, after);
        for file in files().unwrap() {
            let parsed: serde_json::Value = serde_yaml::from_str(&file.yaml).unwrap();
            let crd = cellmesh_api::crd::all()
                .into_iter()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(file.file_name.trim_end_matches(".yaml"))
                })
                .unwrap();
            assert_eq!(
                parsed,
                serde_json::to_value(crd).unwrap(),
                "{}",
                file.file_name
            );
        }
    }

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
