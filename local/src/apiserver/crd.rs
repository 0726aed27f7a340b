//! CustomResourceDefinitions: registering one makes its resources served (discovery, REST,
//! status/scale subresources, printer columns); its status reports the accepted names and
//! the `NamesAccepted`/`Established` conditions at once, as an uncontended
//! apiextensions-apiserver does.
//!
//! Custom resource schema validation, defaulting, pruning and CEL come from
//! `cellmesh-apimachinery`'s `schema` module and are wired in [`validate`].

use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, FieldError};
use super::objects::now_rfc3339;
use super::registry::{ALL_VERBS, ResourceInfo, ScalePaths};
use super::store::Committed;

pub const CRD_STORAGE_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";

fn is_crd(info: &ResourceInfo) -> bool {
    !info.custom
        && info.group == "apiextensions.k8s.io"
        && info.resource == "customresourcedefinitions"
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `.spec.replicas` → `/spec/replicas`.
fn pointer_of(json_path: &str) -> String {
    format!("/{}", json_path.trim_start_matches('.').replace('.', "/"))
}

/// The resources (one per served version) a CRD object defines.
pub fn resources_of(crd: &Value) -> Vec<ResourceInfo> {
    let spec = crd.get("spec").cloned().unwrap_or_default();
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let names = spec.get("names").cloned().unwrap_or_default();
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map_or_else(|| kind.to_ascii_lowercase(), str::to_owned);
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    spec.get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .map(|v| {
            let sub = v.get("subresources");
            let mut subresources = Vec::new();
            if sub.and_then(|s| s.get("status")).is_some() {
                subresources.push("status".to_owned());
            }
            let scale = sub.and_then(|s| s.get("scale")).map(|scale| ScalePaths {
                spec_replicas: pointer_of(
                    scale
                        .get("specReplicasPath")
                        .and_then(Value::as_str)
                        .unwrap_or(".spec.replicas"),
                ),
                status_replicas: pointer_of(
                    scale
                        .get("statusReplicasPath")
                        .and_then(Value::as_str)
                        .unwrap_or(".status.replicas"),
                ),
                label_selector: scale
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(pointer_of),
            });
            if scale.is_some() {
                subresources.push("scale".to_owned());
            }
            ResourceInfo {
                group: group.clone(),
                version: v
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                resource: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced,
                verbs: ALL_VERBS.iter().map(|v| (*v).to_owned()).collect(),
                short_names: strings(names.get("shortNames")),
                categories: strings(names.get("categories")),
                subresources,
                tracks_generation: true,
                custom: true,
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                scale,
            }
        })
        .collect()
}

/// Structural checks of a CRD (the rest of apiextensions validation comes with the schema
/// module); errors are Kubernetes field errors.
fn validate_definition(crd: &Value) -> Result<(), ApiError> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = crd.get("spec").cloned().unwrap_or_default();
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut errors = Vec::new();
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural", ""));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind", ""));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => errors.push(FieldError {
            field: "spec.scope".into(),
            reason: "FieldValueNotSupported",
            kind: "Unsupported value",
            detail: format!("\"{other}\": supported values: \"Cluster\", \"Namespaced\""),
        }),
        None => errors.push(FieldError::required("spec.scope", "")),
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::invalid(
            "spec.versions",
            &json!([]),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            errors.push(FieldError::invalid(
                "spec.versions",
                &json!(
                    versions
                        .iter()
                        .map(|v| v.get("name").cloned().unwrap_or_default())
                        .collect::<Vec<_>>()
                ),
                "must have exactly one version marked as storage version",
            ));
        }
    }
    for (i, version) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
        match version.pointer("/schema/openAPIV3Schema") {
            Some(schema) => structural_errors(schema, &path, true, &mut errors),
            None => errors.push(FieldError::required(&path, "schemas are required")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            name,
            &errors,
        ))
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

/// The structural-schema rules of apiextensions (`ValidateStructural`) that matter for
/// serving: every node has a type (unless it is int-or-string or preserves unknown
/// fields), the root is an object, arrays have items, and `properties` and
/// `additionalProperties` are exclusive. Paths and wording are Kubernetes'.
fn structural_errors(schema: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if root && ty != "object" {
        errors.push(FieldError::invalid(
            &format!("{path}.type"),
            &json!(ty),
            "must be object at the root",
        ));
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        if schema
            .get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
        {
            errors.push(FieldError {
                field: format!("{path}.additionalProperties"),
                reason: "FieldValueForbidden",
                kind: "Forbidden",
                detail: "additionalProperties and properties are mutual exclusive".into(),
            });
        }
        for (name, child) in properties {
            let child_path = format!("{path}.properties[{name}]");
            check_typed(
                child,
                &child_path,
                "must not be empty for specified object fields",
                errors,
            );
            structural_errors(child, &child_path, false, errors);
        }
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        let child_path = format!("{path}.additionalProperties");
        check_typed(
            additional,
            &child_path,
            "must not be empty for specified object fields",
            errors,
        );
        structural_errors(additional, &child_path, false, errors);
    }
    if ty == "array" {
        match schema.get("items") {
            Some(items) => {
                let child_path = format!("{path}.items");
                check_typed(
                    items,
                    &child_path,
                    "must not be empty for specified array items",
                    errors,
                );
                structural_errors(items, &child_path, false, errors);
            }
            None => errors.push(FieldError::required(
                &format!("{path}.items"),
                "must be specified",
            )),
        }
    }
}

fn check_typed(schema: &Value, path: &str, detail: &str, errors: &mut Vec<FieldError>) {
    let typed = schema
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !typed
        && !flag(schema, "x-kubernetes-int-or-string")
        && !flag(schema, "x-kubernetes-preserve-unknown-fields")
    {
        errors.push(FieldError::required(&format!("{path}.type"), detail));
    }
}

/// Validation of a body written to `info` (before it is stored).
pub fn validate(_state: &AppState, info: &ResourceInfo, body: &mut Value) -> Result<(), ApiError> {
    if is_crd(info) {
        return validate_definition(body);
    }
    Ok(())
}

/// Fills in what the apiextensions controllers would: a CRD's status with accepted names,
/// conditions and stored versions.
pub fn prepare(info: &ResourceInfo, mut object: Value) -> Value {
    if !is_crd(info) {
        return object;
    }
    let mut names = object
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if names.get("singular").is_none() {
        names["singular"] = json!(kind.to_ascii_lowercase());
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    if let Some(spec_names) = object.pointer_mut("/spec/names") {
        *spec_names = names.clone();
    }
    let storage: Vec<Value> = object
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let previous: Vec<Value> = object
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut stored = previous;
    for v in storage {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    let now = now_rfc3339();
    let transition = |ty: &str| {
        object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
            })
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let conditions = json!([
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found", "lastTransitionTime": transition("NamesAccepted")},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": transition("Established")},
    ]);
    if let Some(map) = object.as_object_mut() {
        map.insert(
            "status".into(),
            json!({"acceptedNames": names, "conditions": conditions, "storedVersions": stored}),
        );
    }
    object
}

/// Keeps the registry in step with committed CRD changes; deleting a CRD deletes its
/// custom resources.
pub fn after_commit(state: &AppState, info: &ResourceInfo, committed: &Committed) {
    if !is_crd(info) || !committed.changed {
        return;
    }
    let name = committed
        .object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if committed.deleted {
        let gone = resources_of(&committed.object);
        state.registry.remove_custom(&name);
        if let Some(first) = gone.first() {
            let storage_key = first.storage_key();
            let store = state.store.clone();
            tokio::spawn(async move {
                let snapshot = store.list(&storage_key, None, None, None, &|_| true);
                for (key, _) in snapshot.items {
                    let result = store
                        .mutate(
                            &storage_key,
                            &key,
                            Box::new(|cur| match cur {
                                Some(object) => Ok(super::store::Outcome::Delete(object.clone())),
                                None => Err(ApiError::not_found("", "", "")),
                            }),
                        )
                        .await;
                    if let Err(err) = result
                        && err.code != 404
                    {
                        tracing::warn!(%err, key, "could not delete a custom resource of a deleted CRD");
                    }
                }
            });
        }
    } else {
        state
            .registry
            .set_custom(&name, resources_of(&committed.object));
    }
}

/// The `openAPIV3Schema` of a custom resource's version, from its CRD.
pub fn schema_of(state: &AppState, info: &ResourceInfo) -> Option<Value> {
    if !info.custom {
        return None;
    }
    let crd = state.store.get(
        CRD_STORAGE_KEY,
        &format!("{}.{}", info.resource, info.group),
    )?;
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(info.version.as_str()))?
        .pointer("/schema/openAPIV3Schema")
        .cloned()
}

/// Registers every stored CRD (at start).
pub fn load_all(state: &AppState) {
    let snapshot = state
        .store
        .list(CRD_STORAGE_KEY, None, None, None, &|_| true);
    for (_, crd) in snapshot.items {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        state.registry.set_custom(name, resources_of(&crd));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]
                }, {"name": "v0", "served": false, "storage": false,
                   "schema": {"openAPIV3Schema": {"type": "object"}}}]
            }
        })
    }

    #[test]
    fn served_versions_become_resources() {
        let resources = resources_of(&crd());
        assert_eq!(resources.len(), 1);
        let r = &resources[0];
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.resource.as_str()),
            ("example.com", "v1", "widgets")
        );
        assert_eq!(r.singular, "widget");
        assert!(r.namespaced && r.custom);
        assert_eq!(r.subresources, ["status", "scale"]);
        assert_eq!(r.scale.as_ref().unwrap().spec_replicas, "/spec/size");
        assert_eq!(r.printer_columns.len(), 1);
        assert_eq!(r.short_names, ["wd"]);
    }

    #[test]
    fn status_reports_names_and_established() {
        let info = super::super::registry::Registry::new()
            .lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let prepared = prepare(&info, crd());
        assert_eq!(prepared["status"]["acceptedNames"]["kind"], "Widget");
        assert_eq!(
            prepared["status"]["acceptedNames"]["listKind"],
            "WidgetList"
        );
        assert_eq!(prepared["status"]["conditions"][1]["type"], "Established");
        assert_eq!(prepared["status"]["storedVersions"], json!(["v1"]));
    }

    #[test]
    fn definitions_are_checked() {
        assert!(validate_definition(&crd()).is_ok());
        let mut wrong_name = crd();
        wrong_name["metadata"]["name"] = json!("gadgets.example.com");
        let err = validate_definition(&wrong_name).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("metadata.name"), "{}", err.message);
        let mut untyped = crd();
        untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({
            "type": "object",
            "properties": {"spec": {"properties": {"size": {"type": "integer"}}},
                           "tags": {"type": "array"},
                           "any": {"x-kubernetes-preserve-unknown-fields": true}}
        });
        let err = validate_definition(&untyped).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("spec.versions[0].schema.openAPIV3Schema.properties[tags].items: Required value: must be specified"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("properties[any]"), "{}", err.message);
        let mut no_schema = crd();
        no_schema["spec"]["versions"][0]
            .as_object_mut()
            .unwrap()
            .remove("schema");
        assert!(
            validate_definition(&no_schema)
                .unwrap_err()
                .message
                .contains(
                    "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"
                )
        );
        let mut no_storage = crd();
        no_storage["spec"]["versions"][0]["storage"] = json!(false);
        assert!(
            validate_definition(&no_storage)
                .unwrap_err()
                .message
                .contains("storage version")
        );
    }
}
