//! OpenAPI v3 (`/openapi/v3` and `/openapi/v3/<api|apis/group>/<version>`).
//!
//! What clients read from it today:
//! - kubectl checks a group-version document for a PATCH operation carrying
//!   `x-kubernetes-group-version-kind` and a `fieldValidation` parameter; finding it, it
//!   leaves validation to the server instead of downloading schemas for client-side checks;
//! - `kubectl explain` reads `components.schemas` by `x-kubernetes-group-version-kind`: the
//!   schemas of custom resources come from their CRD's `openAPIV3Schema`.
//!
//! Built-in kinds are published without schemas for now.

use serde_json::{Map, Value, json};

use super::registry::{Registry, ResourceInfo};

/// The path segment of a group-version: `api/v1` or `apis/apps/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A cheap content hash so clients' caches refresh when the document changes.
fn hash_of(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016X}")
}

pub fn root(registry: &Registry, crd_schemas: &dyn Fn(&ResourceInfo) -> Option<Value>) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let doc = group_version(registry, &group, &version, crd_schemas);
            let path = gv_path(&group, &version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash_of(&doc.to_string()))}),
            );
        }
    }
    json!({"paths": paths})
}

/// The schema name Kubernetes uses: reversed group + version + kind
/// (`io.cellmesh.v1alpha1.WorkModel`).
fn schema_name(info: &ResourceInfo) -> String {
    let group = if info.custom {
        let mut parts: Vec<&str> = info.group.split('.').collect();
        parts.reverse();
        parts.join(".")
    } else if info.group.is_empty() {
        "io.k8s.api.core".to_owned()
    } else {
        format!("io.k8s.api.{}", info.group.split('.').next().unwrap_or(""))
    };
    format!("{group}.{}.{}", info.version, info.kind)
}

fn parameters() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
    ])
}

/// The document of one group-version, or `None` when it is not served.
pub fn group_version(
    registry: &Registry,
    group: &str,
    version: &str,
    crd_schemas: &dyn Fn(&ResourceInfo) -> Option<Value>,
) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for info in registry
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        let scope = if info.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let item = format!(
            "/{}{scope}/{}/{{name}}",
            gv_path(group, version),
            info.resource
        );
        let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(info))});
        paths.insert(
            item,
            json!({
                "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get",
                        "responses": {"200": {"content": {"application/json": {"schema": reference}}}}},
                "patch": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch",
                          "parameters": parameters(),
                          "responses": {"200": {"content": {"application/json": {"schema": reference}}}}},
            }),
        );
        let mut schema = crd_schemas(info).unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        if let Some(map) = schema.as_object_mut() {
            map.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
        schemas.insert(schema_name(info), schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::KUBERNETES_VERSION.0, super::KUBERNETES_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_every_group_version() {
        let root = root(&Registry::new(), &|_| None);
        let paths = root["paths"].as_object().unwrap();
        assert!(paths.contains_key("api/v1"));
        assert!(paths.contains_key("apis/apps/v1"));
        assert!(
            paths["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }

    #[test]
    fn patch_operations_advertise_field_validation() {
        let doc = group_version(&Registry::new(), "apps", "v1", &|_| None);
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
    }
}
