//! cellmesh's custom resources: group `cellmesh.io`, version `v1alpha1`, all namespaced, all
//! in the `cellmesh` category (`kubectl get cellmesh` lists them together).
//!
//! | kind | short name | what it declares |
//! |---|---|---|
//! | [`WorkModel`] | `wm` | a mesh of services (µBench's workmodel) |
//! | [`App`] | — | one application: the cell running a pipeline of stages |
//! | [`Profile`] | — | how a cell executes requests (pool, queue, timeouts) |
//! | [`ScalingPolicy`] | `sp` | in-place vertical scaling of a WorkModel's or App's pods |
//!
//! Contract: these Rust types are the only source of the CRD schemas. `cellmesh-operator crds`
//! prints [`all`], `cargo xtask crdgen` writes them to `crds/`, and CI fails when the committed
//! files differ. Admission rules live in the schemas (bounds, enums) and as CEL
//! `x-kubernetes-validations`; every rule has a test with an accepted and a rejected object.
//! What CEL cannot afford within the API server's cost budget (call cycles, references inside
//! `alternativeBehaviors`, nested pipeline stages) the operator checks and reports as a
//! `Degraded` condition.
//!
//! `///` comments on spec and status fields are the `kubectl explain` text: they are written
//! for users of the resources.

pub mod app;
pub mod conditions;
pub mod profile;
pub mod scaling;
pub mod workmodel;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

pub use app::{App, AppSpec, AppStatus};
pub use profile::{Profile, ProfileResourceSpec, ProfileStatus};
pub use scaling::{ScalingPolicy, ScalingPolicySpec, ScalingPolicyStatus};
pub use workmodel::{WorkModel, WorkModelSpec, WorkModelStatus};

/// API group of every cellmesh resource.
pub const GROUP: &str = "cellmesh.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every cellmesh resource.
pub const API_VERSION: &str = "cellmesh.io/v1alpha1";
/// Category all cellmesh kinds belong to (`kubectl get cellmesh`).
pub const CATEGORY: &str = "cellmesh";

/// Every cellmesh CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        WorkModel::crd(),
        App::crd(),
        Profile::crd(),
        ScalingPolicy::crd(),
    ]
}

/// Schema of an optional Kubernetes quantity field: int-or-string, nullable, and without a
/// description of its own so that the field's doc comment becomes its `kubectl explain` text
/// (the quantity type's generic description would otherwise replace it).
pub(crate) fn optional_quantity(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "nullable": true
    })
}

/// Sets `key: value` on the schema node at the JSON `pointer`, when the node exists.
///
/// Used to add bounds (`maxItems`, `maxProperties`, `maxLength`) to schemas of types this
/// module wraps but does not own: the API server estimates the cost of a CEL rule from these
/// bounds and refuses a CRD whose rules could be too expensive. Tests check that each bound
/// landed, so a change in the wrapped type cannot silently drop one.
pub(crate) fn set_at(schema: &mut schemars::Schema, pointer: &str, key: &str, value: Value) {
    if let Some(Value::Object(node)) = schema.pointer_mut(pointer) {
        node.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the CEL and schema tests of the resource modules.

    use kube::core::cel::ValidationErrors;
    use serde_json::Value;

    /// The messages of a failed CEL validation, or an empty list when it passed.
    pub fn cel_messages(result: Result<(), ValidationErrors>) -> Vec<String> {
        match result {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
        }
    }

    /// The `openAPIV3Schema` of a CRD as JSON.
    pub fn open_api_schema(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("a derived CRD has a schema");
        serde_json::to_value(schema).unwrap()
    }

    /// Every structural-schema violation under `node` (Kubernetes rejects such CRDs):
    /// a node without `type` (unless int-or-string or preserve-unknown-fields), `anyOf` /
    /// `oneOf` / `allOf` / `not` carrying types or defaults, `$ref`, and an array whose
    /// `items` is not a single schema.
    pub fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
        let Value::Object(map) = node else {
            out.push(format!("{path}: not an object"));
            return;
        };
        let flag = |k: &str| map.get(k).and_then(Value::as_bool) == Some(true);
        if map.contains_key("$ref") {
            out.push(format!("{path}: $ref"));
        }
        if !map.contains_key("type")
            && !flag("x-kubernetes-int-or-string")
            && !flag("x-kubernetes-preserve-unknown-fields")
        {
            out.push(format!("{path}: no type"));
        }
        for junction in ["anyOf", "oneOf", "allOf"] {
            for (i, branch) in map
                .get(junction)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                for forbidden in [
                    "type",
                    "default",
                    "nullable",
                    "description",
                    "additionalProperties",
                ] {
                    if branch.get(forbidden).is_some() && !flag("x-kubernetes-int-or-string") {
                        out.push(format!("{path}.{junction}[{i}]: {forbidden}"));
                    }
                }
            }
        }
        if let Some(items) = map.get("items") {
            if items.is_array() {
                out.push(format!("{path}: items is a list"));
            } else {
                structural_violations(items, &format!("{path}[]"), out);
            }
        }
        if map.contains_key("prefixItems") {
            out.push(format!("{path}: prefixItems"));
        }
        if let Some(Value::Object(props)) = map.get("properties") {
            for (name, child) in props {
                structural_violations(child, &format!("{path}.{name}"), out);
            }
        }
        if let Some(child @ Value::Object(_)) = map.get("additionalProperties") {
            structural_violations(child, &format!("{path}.*"), out);
        }
    }

    /// Every node under `node` that is a list or a map without a size bound, or a string
    /// inside a bounded collection without a length bound: the paths where the API server's
    /// CEL cost estimate would assume megabytes.
    pub fn unbounded_collections(node: &Value, path: &str, out: &mut Vec<String>) {
        let Value::Object(map) = node else { return };
        match map.get("type").and_then(Value::as_str) {
            Some("array") if !map.contains_key("maxItems") => out.push(format!("{path}: maxItems")),
            Some("object")
                if map
                    .get("additionalProperties")
                    .is_some_and(Value::is_object)
                    && !map.contains_key("maxProperties") =>
            {
                out.push(format!("{path}: maxProperties"))
            }
            _ => {}
        }
        if let Some(items) = map.get("items") {
            unbounded_collections(items, &format!("{path}[]"), out);
        }
        if let Some(Value::Object(props)) = map.get("properties") {
            for (name, child) in props {
                unbounded_collections(child, &format!("{path}.{name}"), out);
            }
        }
        if let Some(child @ Value::Object(_)) = map.get("additionalProperties") {
            unbounded_collections(child, &format!("{path}.*"), out);
        }
    }

    /// The schema node at a dotted path of property names (`*` = map values, `[]` = items).
    pub fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
        let mut at = schema;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            at = match part {
                "*" => &at["additionalProperties"],
                "[]" => &at["items"],
                name => &at["properties"][name],
            };
            assert!(
                !at.is_null(),
                "no schema node at {path} (stopped at {part})"
            );
        }
        at
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn every_crd_is_namespaced_in_the_cellmesh_group_and_category() {
        let crds = all();
        let names: Vec<String> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "workmodels.cellmesh.io",
                "apps.cellmesh.io",
                "profiles.cellmesh.io",
                "scalingpolicies.cellmesh.io"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&[CATEGORY.to_owned()][..])
            );
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{} has a status subresource",
                crd.spec.names.kind
            );
            assert!(
                version
                    .additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c.name == "Age")),
                "{} prints an Age column",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn every_schema_is_structural() {
        for crd in all() {
            let schema = open_api_schema(&crd);
            let mut violations = Vec::new();
            structural_violations(&schema, &crd.spec.names.kind, &mut violations);
            assert!(violations.is_empty(), "{violations:#?}");
        }
    }

    #[test]
    fn conditions_are_list_maps_keyed_by_type() {
        for crd in all() {
            let schema = open_api_schema(&crd);
            let conditions = node(&schema, "status.conditions");
            assert_eq!(conditions["x-kubernetes-list-type"], "map");
            assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
            assert_eq!(node(conditions, "[].type")["type"], "string");
        }
    }

    #[test]
    fn descriptions_are_written_for_kubectl_explain() {
        // Rust jargon must not leak into `kubectl explain`.
        for crd in all() {
            let text = serde_json::to_string(&open_api_schema(&crd)).unwrap();
            for jargon in [
                "Option<",
                "Vec<",
                "[`",
                "crate::",
                "::",
                "NB:",
                "CustomResource",
            ] {
                assert!(
                    !text.contains(jargon),
                    "{}: {jargon} in descriptions",
                    crd.spec.names.kind
                );
            }
        }
    }
}
