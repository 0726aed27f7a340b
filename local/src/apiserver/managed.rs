//! Field ownership (`metadata.managedFields`) on every write, and server-side apply, as
//! kube-apiserver's field manager does them (the merge and conflict logic itself is
//! `cellmesh_apimachinery::ssa`).
//!
//! Contract:
//! * Every create, update and non-apply patch records an `Update` entry for its field
//!   manager: the `fieldManager` query parameter, else the user agent up to its first `/`
//!   (kubectl itself sends `kubectl-client-side-apply`, `kubectl-edit`, `kubectl-patch` …).
//! * Managed fields sent by the client replace the stored ones when non-empty; empty or
//!   missing ones keep the stored ones (so clients unaware of the field cannot wipe it),
//!   and `[{}]` resets them. Subresource writes always start from the stored ones.
//! * Apply (`application/apply-patch+yaml`) requires `fieldManager`, refuses
//!   `metadata.managedFields` in the configuration, creates the object when it does not
//!   exist, and answers conflicts with 409 unless `force=true`.
//! * A write whose only effect is a newer timestamp in managedFields changes nothing.
//! * The status subresource owns `status` only; the main resource of a kind with a status
//!   subresource never owns `status`.

use std::collections::BTreeSet;

use cellmesh_apimachinery::field::FieldError;
use cellmesh_apimachinery::ssa::{self, Writer};
use cellmesh_apimachinery::status::{self as am_status, GroupKind};
use cellmesh_apimachinery::types::TypeRef;
use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::ResourceInfo;
use super::store::Outcome;

/// `fieldManager` longer than this is refused, as Kubernetes does.
const FIELD_MANAGER_MAX_LENGTH: usize = 128;

/// The kind of options a request carries, for error messages
/// (`PatchOptions.meta.k8s.io "" is invalid: …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Patch,
    Apply,
}

impl Verb {
    fn options_kind(self) -> &'static str {
        match self {
            Self::Create => "CreateOptions",
            Self::Update => "UpdateOptions",
            Self::Patch | Self::Apply => "PatchOptions",
        }
    }
}

/// Who writes: the validated field manager and where it writes.
#[derive(Debug, Clone)]
pub struct Manager {
    pub name: String,
    pub api_version: String,
    /// `status`, `scale`, or empty for the main resource.
    pub subresource: String,
    pub time: String,
}

impl Manager {
    /// Validates `fieldManager` and `force` (Kubernetes' `ValidatePatchOptions` and
    /// friends); without `fieldManager`, non-apply writes use the user agent's prefix.
    pub fn from_request(
        verb: Verb,
        field_manager: Option<&str>,
        force: Option<&str>,
        user_agent: &str,
        info: &ResourceInfo,
        subresource: Option<&str>,
        time: &str,
    ) -> Result<(Self, bool), ApiError> {
        let given = field_manager.unwrap_or("");
        let mut errors = Vec::new();
        if verb == Verb::Apply && given.is_empty() {
            errors.push(FieldError::required(
                "fieldManager",
                "is required for apply patch",
            ));
        }
        if verb != Verb::Apply && force.is_some() {
            errors.push(FieldError::forbidden(
                "force",
                "may not be specified for non-apply patch",
            ));
        }
        if given.len() > FIELD_MANAGER_MAX_LENGTH {
            errors.push(FieldError::too_long(
                "fieldManager",
                FIELD_MANAGER_MAX_LENGTH,
            ));
        }
        for (i, c) in given.char_indices() {
            if c.is_control() {
                errors.push(FieldError::invalid(
                    "fieldManager",
                    json!(given),
                    &format!("invalid character U+{:04X} (at position {i})", c as u32),
                ));
            }
        }
        let force = match force {
            None | Some("" | "false" | "False" | "0") => false,
            Some("true" | "True" | "1") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid value for force: {other:?} is not a boolean"
                )));
            }
        };
        if !errors.is_empty() {
            return Err(am_status::invalid(
                &GroupKind::new("meta.k8s.io", verb.options_kind()),
                "",
                &errors,
            )
            .into());
        }
        let name = if given.is_empty() {
            ssa::default_manager(user_agent)
        } else {
            given.to_owned()
        };
        Ok((
            Self {
                name,
                api_version: info.api_version(),
                subresource: subresource.unwrap_or("").to_owned(),
                time: time.to_owned(),
            },
            force,
        ))
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            manager: &self.name,
            api_version: &self.api_version,
            time: &self.time,
            subresource: &self.subresource,
        }
    }
}

/// The merge semantics of a resource: its CRD schema, a built-in kind's table entry, or
/// deduced from the values.
pub fn type_of<'a>(info: &ResourceInfo, schema: Option<&'a Value>) -> TypeRef<'a> {
    match schema {
        Some(schema) => TypeRef::custom_resource(schema),
        None => TypeRef::builtin(&info.api_version(), &info.kind).unwrap_or_else(TypeRef::deduced),
    }
}

/// Top-level fields a write neither owns nor applies: `status` on the main resource of a
/// kind with a status subresource; everything but `status` on the status subresource.
fn ignored_fields(info: &ResourceInfo, subresource: &str, objects: &[&Value]) -> Vec<String> {
    match subresource {
        "status" => {
            let mut keys: Vec<String> = objects
                .iter()
                .filter_map(|o| o.as_object())
                .flat_map(|m| m.keys().cloned())
                .filter(|k| !matches!(k.as_str(), "status" | "apiVersion" | "kind"))
                .collect();
            keys.sort();
            keys.dedup();
            keys
        }
        _ if info.has_subresource("status") => vec!["status".to_owned()],
        _ => Vec::new(),
    }
}

fn managed_fields_of(object: &Value) -> Option<&Value> {
    object.pointer("/metadata/managedFields")
}

fn set_managed_fields(object: &mut Value, managed: Option<&Value>) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        match managed {
            Some(list) => meta.insert("managedFields".into(), list.clone()),
            None => meta.remove("managedFields"),
        };
    }
}

/// managedFields without timestamps: what must differ for a write to count.
fn ownership(managed: Option<&Value>) -> Vec<Value> {
    managed
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(map) = e.as_object_mut() {
                        map.remove("time");
                    }
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Puts `managed` on the object an outcome stores. An unchanged object whose ownership
/// changed (apart from timestamps) is stored again; a delete is left alone.
pub fn with_managed_fields(outcome: Outcome, managed: Option<&Value>) -> Outcome {
    match outcome {
        Outcome::Put(mut object) => {
            set_managed_fields(&mut object, managed);
            Outcome::Put(object)
        }
        Outcome::Unchanged(mut object) => {
            if ownership(managed_fields_of(&object)) == ownership(managed) {
                Outcome::Unchanged(object)
            } else {
                set_managed_fields(&mut object, managed);
                Outcome::Put(object)
            }
        }
        delete @ Outcome::Delete(_) => delete,
    }
}

/// The managedFields a write starts from: the client's when it sent a non-empty list to
/// the main resource (`[{}]` thereby resets them), else the stored object's.
fn base_of(old: Option<&Value>, incoming: Option<&Value>, subresource: &str) -> Value {
    let mut base = old.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    let client_list = incoming
        .and_then(Value::as_array)
        .filter(|list| !list.is_empty() && subresource.is_empty());
    if let Some(list) = client_list {
        if base.get("metadata").is_none_or(|m| !m.is_object())
            && let Some(map) = base.as_object_mut()
        {
            map.insert("metadata".into(), json!({}));
        }
        set_managed_fields(&mut base, Some(&Value::Array(list.clone())));
    }
    base
}

/// Records ownership for a create (`old = None`), update or non-apply patch whose result
/// is `outcome`. `incoming` is the managedFields of the object the client sent (or the
/// patch produced), before the server prepared it.
pub fn record_update(
    info: &ResourceInfo,
    schema: Option<&Value>,
    manager: &Manager,
    old: Option<&Value>,
    incoming: Option<&Value>,
    outcome: Outcome,
) -> Outcome {
    let candidate = match &outcome {
        Outcome::Put(object) | Outcome::Unchanged(object) => object,
        Outcome::Delete(_) => return outcome,
    };
    let base = base_of(old, incoming, &manager.subresource);
    let ignored = ignored_fields(info, &manager.subresource, &[&base, candidate]);
    let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
    let updated = ssa::update(
        Some(&base),
        candidate,
        manager.writer(),
        type_of(info, schema),
        &ignored,
    );
    let managed = managed_fields_of(&updated).cloned();
    with_managed_fields(outcome, managed.as_ref())
}

/// Checks an apply configuration before it is merged: the version it names must be the
/// request's and it may not carry managedFields (Kubernetes' wording).
pub fn check_apply_config(info: &ResourceInfo, config: &Value) -> Result<(), ApiError> {
    let given = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let expected = info.api_version();
    if given != expected {
        return Err(ApiError::bad_request(format!(
            "Incorrect version specified in apply patch. Specified patch version: {given}, expected: {expected}"
        )));
    }
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(())
}

/// The annotation kubectl's client-side apply keeps its last configuration in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields (as conflict paths) that kubectl's client-side apply set and that still
/// hold the value it set: kubectl's first server-side apply may take them over without a
/// conflict, as Kubernetes' `lastAppliedManager` allows.
fn upgradable_fields(live: &Value, ty: TypeRef<'_>, ignored: &[&str]) -> BTreeSet<String> {
    let Some(last) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return BTreeSet::new();
    };
    ssa::field_set(&last, ty, ignored)
        .paths()
        .iter()
        .filter(|p| ssa::value_at(&last, p, ty) == ssa::value_at(live, p, ty))
        .map(ssa::path_string)
        .collect()
}

/// Server-side apply of `config` onto `live` (`None` creates): the merged object with its
/// managedFields, or the 409 conflict.
pub fn apply(
    info: &ResourceInfo,
    schema: Option<&Value>,
    manager: &Manager,
    live: Option<&Value>,
    config: &Value,
    force: bool,
) -> Result<Value, ApiError> {
    let base = live.cloned();
    let objects: Vec<&Value> = base.iter().chain(std::iter::once(config)).collect();
    let ignored = ignored_fields(info, &manager.subresource, &objects);
    let ignored: Vec<&str> = ignored.iter().map(String::as_str).collect();
    let ty = type_of(info, schema);
    let result = ssa::apply(live, config, manager.writer(), force, ty, &ignored);
    let conflicts = match (result, live) {
        (Ok(merged), _) => return Ok(merged),
        // Only kubectl's own server-side manager upgrades from client-side apply.
        (Err(conflicts), Some(live)) if manager.name == "kubectl" => {
            let allowed = upgradable_fields(live, ty, &ignored);
            let remaining: Vec<ssa::Conflict> = conflicts
                .conflicts
                .into_iter()
                .filter(|c| !allowed.contains(&c.path))
                .collect();
            if remaining.is_empty() {
                return ssa::apply(Some(live), config, manager.writer(), true, ty, &ignored)
                    .map_err(|c| c.to_api_error().into());
            }
            ssa::ApplyConflicts {
                conflicts: remaining,
            }
        }
        (Err(conflicts), _) => conflicts,
    };
    Err(conflicts.to_api_error().into())
}

/// The managedFields of an object (for carrying an apply's result past preparation).
pub fn managed_fields(object: &Value) -> Option<Value> {
    managed_fields_of(object).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    fn info(group: &str, resource: &str) -> ResourceInfo {
        (*Registry::new().lookup(group, "v1", resource).unwrap()).clone()
    }

    fn manager(name: &str, sub: &str) -> Manager {
        Manager {
            name: name.into(),
            api_version: "apps/v1".into(),
            subresource: sub.into(),
            time: "2025-01-01T00:00:00Z".into(),
        }
    }

    fn deploy(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
               "spec": {"replicas": replicas}, "status": {"replicas": 0}})
    }

    fn managers(object: &Value) -> Vec<(String, String)> {
        object["metadata"]["managedFields"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap().to_owned(),
                            e["operation"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stored(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Put(o) => o,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn field_manager_is_validated_like_kubernetes() {
        let d = info("apps", "deployments");
        let err = Manager::from_request(Verb::Apply, None, None, "kubectl/v1.32", &d, None, "t")
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let err = Manager::from_request(Verb::Patch, Some("m"), Some("true"), "", &d, None, "t")
            .unwrap_err();
        assert!(
            err.message
                .contains("force: Forbidden: may not be specified for non-apply patch"),
            "{}",
            err.message
        );
        let long = "m".repeat(129);
        assert_eq!(
            Manager::from_request(Verb::Create, Some(&long), None, "", &d, None, "t")
                .unwrap_err()
                .code,
            422
        );
        let (m, force) = Manager::from_request(
            Verb::Update,
            None,
            None,
            "kubectl/v1.32.0 (linux/amd64)",
            &d,
            Some("status"),
            "t",
        )
        .unwrap();
        assert_eq!(
            (m.name.as_str(), m.subresource.as_str(), force),
            ("kubectl", "status", false)
        );
    }

    #[test]
    fn updates_record_ownership_and_skip_status() {
        let d = info("apps", "deployments");
        let created = stored(record_update(
            &d,
            None,
            &manager("kubectl-create", ""),
            None,
            None,
            Outcome::Put(deploy(1)),
        ));
        assert_eq!(
            managers(&created),
            [("kubectl-create".into(), "Update".into())]
        );
        let fields = &created["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(fields["f:spec"]["f:replicas"].is_object(), "{fields}");
        assert!(
            fields.get("f:status").is_none(),
            "status is not owned: {fields}"
        );

        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(3);
        let updated = stored(record_update(
            &d,
            None,
            &manager("kubectl-edit", ""),
            Some(&created),
            managed_fields_of(&scaled.clone()),
            Outcome::Put(scaled),
        ));
        let entries = updated["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(managers(&updated).len(), 2, "{entries:?}");
        let edit = entries
            .iter()
            .find(|e| e["manager"] == "kubectl-edit")
            .unwrap();
        assert!(edit["fieldsV1"]["f:spec"]["f:replicas"].is_object());
        let create = entries
            .iter()
            .find(|e| e["manager"] == "kubectl-create")
            .unwrap();
        assert!(create["fieldsV1"].get("f:spec").is_none(), "{create}");
        assert!(create["fieldsV1"]["f:metadata"]["f:labels"]["f:app"].is_object());
    }

    #[test]
    fn empty_managed_fields_keep_and_a_blank_entry_resets() {
        let d = info("apps", "deployments");
        let created = stored(record_update(
            &d,
            None,
            &manager("a", ""),
            None,
            None,
            Outcome::Put(deploy(1)),
        ));
        // A client that does not know managedFields sends none: ownership stays.
        let kept = record_update(
            &d,
            None,
            &manager("b", ""),
            Some(&created),
            Some(&json!([])),
            Outcome::Unchanged(created.clone()),
        );
        assert!(matches!(kept, Outcome::Unchanged(_)), "{kept:?}");
        // `[{}]` resets: nothing changed, so no entry survives and the object is stored.
        let reset = stored(record_update(
            &d,
            None,
            &manager("b", ""),
            Some(&created),
            Some(&json!([{}])),
            Outcome::Unchanged(created.clone()),
        ));
        assert!(reset["metadata"].get("managedFields").is_none(), "{reset}");
    }

    #[test]
    fn apply_conflicts_and_status_ownership() {
        let d = info("apps", "deployments");
        let live = stored(record_update(
            &d,
            None,
            &manager("kubectl-create", ""),
            None,
            None,
            Outcome::Put(deploy(1)),
        ));
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = apply(&d, None, &manager("ops", ""), Some(&live), &config, false).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using apps/v1: .spec.replicas"
        );
        assert_eq!(
            err.details.as_ref().unwrap()["causes"][0]["field"],
            ".spec.replicas"
        );
        let forced = apply(&d, None, &manager("ops", ""), Some(&live), &config, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);

        let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                            "spec": {"replicas": 9}, "status": {"replicas": 2}});
        let applied = apply(
            &d,
            None,
            &manager("ctrl", "status"),
            Some(&live),
            &status,
            false,
        )
        .unwrap();
        assert_eq!(
            applied["spec"]["replicas"], 1,
            "status apply leaves spec alone"
        );
        assert_eq!(applied["status"]["replicas"], 2);
        let entry = applied["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "ctrl")
            .unwrap()
            .clone();
        assert_eq!(entry["subresource"], "status");
        assert!(entry["fieldsV1"].get("f:spec").is_none(), "{entry}");
    }

    #[test]
    fn apply_configs_are_checked() {
        let d = info("apps", "deployments");
        let wrong = json!({"apiVersion": "apps/v1beta1", "kind": "Deployment"});
        assert_eq!(
            check_apply_config(&d, &wrong).unwrap_err().message,
            "Incorrect version specified in apply patch. Specified patch version: apps/v1beta1, expected: apps/v1"
        );
        let managed = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"managedFields": []}});
        assert_eq!(
            check_apply_config(&d, &managed).unwrap_err().message,
            "metadata.managedFields must be nil"
        );
    }
}
