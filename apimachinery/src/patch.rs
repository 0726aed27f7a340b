//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes'
//! strategic merge patch.
//!
//! JSON patch and merge patch are the `json-patch` crate's. Strategic merge patch follows
//! `k8s.io/apimachinery/pkg/util/strategicpatch`: objects merge key by key (`null`
//! deletes), lists whose field has `x-kubernetes-patch-strategy: merge` merge by their
//! `x-kubernetes-patch-merge-key` (containers by `name`, ports by `containerPort`, …) or,
//! for lists of scalars, as a union (`finalizers`); other lists are replaced. Directives:
//! `$patch: replace|delete|merge` (on maps and list items), `$deleteFromPrimitiveList/<f>`,
//! `$setElementOrder/<f>`, `$retainKeys`. The type information comes from
//! [`crate::types::TypeRef`]; custom resources do not support strategic merge patch
//! ([`crate::types::supports_strategic_merge`], answer with
//! [`crate::status::unsupported_patch_type`]).

use serde_json::{Map, Value};

use crate::status::{self, ApiError};
use crate::types::TypeRef;

/// The patch formats, by request `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply; also accepts `+cbor`)
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(match media.as_str() {
            "application/json-patch+json" => Self::Json,
            "application/merge-patch+json" => Self::Merge,
            "application/strategic-merge-patch+json" => Self::StrategicMerge,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Self::Apply,
            _ => return None,
        })
    }

    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::StrategicMerge => "application/strategic-merge-patch+json",
            Self::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400 BadRequest).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well formed but cannot be applied to this object (422).
    #[error("{0}")]
    CannotApply(String),
}

impl PatchError {
    /// The Status Kubernetes answers with.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Malformed(m) => status::bad_request(m),
            Self::CannotApply(m) => status::unprocessable_patch(m),
        }
    }
}

/// Applies an RFC 6902 JSON patch (a JSON array of operations). As in Kubernetes
/// (`evanphx/json-patch`), a `test` for `null` passes when the path is absent — kube-rs's
/// finalizer helper relies on that to add the first finalizer.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    let mut out = doc.clone();
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(test) = &op
            && test.value.is_null()
            && out.pointer(test.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(&mut out, &[op]).map_err(|e| PatchError::CannotApply(e.to_string()))?;
    }
    Ok(out)
}

/// Applies an RFC 7386 JSON merge patch. Kubernetes requires the patch to be an object.
pub fn merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Malformed(
            "json: cannot unmarshal non-object into Go value of type map[string]interface {}"
                .into(),
        ));
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a strategic merge patch to `doc`, whose root type is `ty`
/// (e.g. `TypeRef::builtin("apps/v1", "Deployment")`).
pub fn strategic_merge_patch(
    doc: &Value,
    patch: &Value,
    ty: TypeRef<'_>,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed("invalid JSON document".into()));
    };
    let original = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    Ok(Value::Object(merge_map(original, patch, ty)?))
}

fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    ty: TypeRef<'_>,
) -> Result<Map<String, Value>, PatchError> {
    match patch.get(DIRECTIVE).map(|d| d.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => return Ok(strip_directives_map(patch)),
        Some(Some("delete")) => return Ok(Map::new()),
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "Unknown patch type: {}, expected one of merge, replace, delete",
                other.map_or_else(|| patch[DIRECTIVE].to_string(), str::to_owned)
            )));
        }
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let Some(keys) = retain.as_array() else {
            return Err(PatchError::Malformed(
                "invalid patch: $retainKeys must be a list".into(),
            ));
        };
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        original.retain(|k, _| keep.contains(&k.as_str()));
    }

    // Deletions from primitive lists happen before merging the additions of the same patch.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Some(remove) = v.as_array() else {
                return Err(PatchError::Malformed(
                    "invalid patch: $deleteFromPrimitiveList values must be a list of primitives"
                        .into(),
                ));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
        }
    }

    for (k, patch_v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let field_ty = ty.field(k);
        if patch_v.is_null() {
            original.remove(k);
            continue;
        }
        let merged = match original.remove(k) {
            None => new_value(patch_v),
            Some(orig_v) => merge_value(orig_v, patch_v, field_ty)?,
        };
        // `None`: a `$patch: delete` on the whole value leaves nothing behind.
        if let Some(v) = merged {
            original.insert(k.clone(), v);
        }
    }

    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) {
            let Some(order) = order.as_array() else {
                return Err(PatchError::Malformed(
                    "invalid patch: $setElementOrder must be a list".into(),
                ));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                let key = ty.field(field).patch_merge_key().map(str::to_owned);
                reorder(list, order, key.as_deref());
            }
        }
    }
    Ok(original)
}

/// Merges one field's patch value into its original value. `None` removes the field.
fn merge_value(orig: Value, patch: &Value, ty: TypeRef<'_>) -> Result<Option<Value>, PatchError> {
    let strategy = ty.patch_strategy();
    match (orig, patch) {
        (Value::Object(o), Value::Object(p)) => {
            if strategy.replace {
                return Ok(Some(Value::Object(strip_directives_map(p))));
            }
            Ok(Some(Value::Object(merge_map(o, p, ty)?)))
        }
        (Value::Array(o), Value::Array(p)) => {
            if strategy.merge {
                merge_list(o, p, ty).map(|l| l.map(Value::Array))
            } else {
                Ok(replace_list(p))
            }
        }
        // Different kinds of value, or scalars: the patch wins.
        (_, p) => Ok(new_value(p)),
    }
}

fn replace_list(patch: &[Value]) -> Option<Value> {
    match list_directive(patch) {
        Some("delete") => None,
        _ => Some(Value::Array(
            patch
                .iter()
                .filter(|i| !is_directive_item(i))
                .map(strip_dollar_keys)
                .collect(),
        )),
    }
}

fn merge_list(
    orig: Vec<Value>,
    patch: &[Value],
    ty: TypeRef<'_>,
) -> Result<Option<Vec<Value>>, PatchError> {
    match list_directive(patch) {
        Some("replace") => {
            return Ok(Some(
                patch
                    .iter()
                    .filter(|i| !is_directive_item(i))
                    .map(strip_directives)
                    .collect(),
            ));
        }
        Some("delete") => return Ok(None),
        _ => {}
    }
    let merge_key = ty.patch_merge_key();
    let is_primitive = patch
        .iter()
        .chain(orig.iter())
        .all(|v| !v.is_object() && !v.is_array());
    if is_primitive || merge_key.is_none() {
        if patch.iter().any(Value::is_array) || orig.iter().any(Value::is_array) {
            return Err(PatchError::CannotApply(
                "lists of lists are not supported".into(),
            ));
        }
        // A set of primitives: union keeping the original order, new items appended.
        let mut out = orig;
        for item in patch {
            if !out.contains(item) {
                out.push(strip_directives(item));
            }
        }
        return Ok(Some(out));
    }
    let key = merge_key.unwrap_or_default();
    let item_ty = ty.items();
    let mut out = orig;
    for item in patch {
        let Value::Object(p) = item else {
            return Err(PatchError::Malformed(format!(
                "invalid patch: list item {item} is not an object"
            )));
        };
        if is_directive_item(item) {
            continue;
        }
        let Some(key_value) = p.get(key) else {
            return Err(PatchError::Malformed(format!(
                "map: {} does not contain declared merge key: {key}",
                go_map_text(p)
            )));
        };
        let pos = out.iter().position(|o| o.get(key) == Some(key_value));
        match (p.get(DIRECTIVE).and_then(Value::as_str), pos) {
            (Some("delete"), _) => out.retain(|o| o.get(key) != Some(key_value)),
            (Some("replace"), Some(i)) => out[i] = Value::Object(strip_directives_map(p)),
            (_, Some(i)) => {
                let o = match std::mem::take(&mut out[i]) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                out[i] = Value::Object(merge_map(o, p, item_ty)?);
            }
            (_, None) => out.push(Value::Object(strip_directives_map(p))),
        }
    }
    Ok(Some(out))
}

/// `{"$patch": "replace"}` as a list element applies to the whole list.
fn list_directive(list: &[Value]) -> Option<&str> {
    list.iter()
        .find(|i| is_directive_item(i))
        .and_then(|i| i.get(DIRECTIVE))
        .and_then(Value::as_str)
}

fn is_directive_item(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.contains_key(DIRECTIVE))
}

/// A value that is new to the object: directives and nulls dropped.
fn new_value(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) if m.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") => None,
        Value::Array(items) if list_directive(items) == Some("delete") => None,
        other => Some(strip_directives(other)),
    }
}

/// A patch value as stored: directive keys and `$patch: delete` items dropped, and, as in
/// a merge patch, `null` members of objects dropped (list items are kept as given).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives_map(m)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| !is_directive_item(i))
                .filter(|i| i.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"))
                .map(strip_dollar_keys)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn strip_directives_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
        .map(|(k, v)| (k.clone(), strip_directives(v)))
        .collect()
}

fn strip_dollar_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_dollar_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_dollar_keys).collect()),
        other => other.clone(),
    }
}

/// Orders `list` as `order` says (`$setElementOrder`); items not named keep their
/// relative order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], merge_key: Option<&str>) {
    let ident = |v: &Value| -> Value {
        match merge_key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&ident).collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest: Vec<Value> = Vec::new();
    for item in list.drain(..) {
        match wanted.iter().position(|w| *w == ident(&item)) {
            Some(i) => named.push((i, item)),
            None => rest.push(item),
        }
    }
    named.sort_by_key(|(i, _)| *i);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

/// Go's `%v` of a `map[string]interface{}` (`map[image:nginx]`), for error messages.
fn go_map_text(m: &Map<String, Value>) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            let v = &m[k.as_str()];
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Object(inner) => go_map_text(inner),
                other => other.to_string(),
            };
            format!("{k}:{text}")
        })
        .collect();
    format!("map[{}]", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn pod() -> TypeRef<'static> {
        TypeRef::builtin("v1", "Pod").expect("built in")
    }

    fn deploy() -> TypeRef<'static> {
        TypeRef::builtin("apps/v1", "Deployment").expect("built in")
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        assert_eq!(
            PatchType::StrategicMerge.content_type(),
            "application/strategic-merge-patch+json"
        );
    }

    #[test]
    fn json_patch_applies_and_reports() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "test", "path": "/metadata/labels/a", "value": "1"}
            ]),
        )
        .expect("applies");
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3}})
        );
        let err = json_patch(
            &doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 2}]),
        )
        .expect_err("test fails");
        assert!(matches!(err, PatchError::CannotApply(_)));
        assert_eq!(err.to_api_error().code(), 422);
        let err = json_patch(&doc, &json!({"op": "add"})).expect_err("not an array");
        assert_eq!(err.to_api_error().code(), 400);
        // A test for null passes on an absent path (kube-rs adds first finalizers so).
        let out = json_patch(
            &doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
            ]),
        )
        .expect("test for null on an absent path passes");
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        let err = json_patch(
            &out,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]),
        )
        .expect_err("a present value is not null");
        assert!(matches!(err, PatchError::CannotApply(_)));
    }

    #[test]
    fn merge_patch_rfc7386() {
        // RFC 7386 appendix A examples.
        for (doc, patch, want) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            assert_eq!(merge_patch(&doc, &patch).expect("merges"), want);
        }
        assert!(merge_patch(&json!({}), &json!([1])).is_err());
    }

    #[test]
    fn smp_merges_containers_by_name() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {"containers": [
            {"name": "b", "image": "b:2"},
            {"name": "a", "env": [{"name": "Y", "value": "2"}]},
            {"name": "c", "image": "c:1"}
        ]}});
        let out = strategic_merge_patch(&doc, &patch, pod()).expect("merges");
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                {"name": "b", "image": "b:2"},
                {"name": "c", "image": "c:1"}
            ]}})
        );
    }

    #[test]
    fn smp_replaces_lists_without_strategy_and_merges_maps() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"tolerations": [{"key": "x"}], "containers": [{"name": "a", "args": ["1", "2"]}]}});
        let patch = json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"tolerations": [{"key": "y"}], "containers": [{"name": "a", "args": ["3"]}]}});
        let out = strategic_merge_patch(&doc, &patch, pod()).expect("merges");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "y"}]),
            "tolerations have no merge key: replaced"
        );
        assert_eq!(
            out["spec"]["containers"][0]["args"],
            json!(["3"]),
            "args are atomic"
        );
    }

    #[test]
    fn smp_directives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "nodeSelector": {"k": "v"}}});
        // $patch: delete on a list item, union for finalizers, $deleteFromPrimitiveList.
        let patch = json!({
            "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}], "nodeSelector": {"$patch": "replace", "z": "1"}}
        });
        let out = strategic_merge_patch(&doc, &patch, pod()).expect("merges");
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "y"}])
        );
        assert_eq!(out["spec"]["nodeSelector"], json!({"z": "1"}));
        // $patch: replace on a list.
        let patch =
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "z"}]}});
        let out = strategic_merge_patch(&doc, &patch, pod()).expect("merges");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "z", "image": "z"}])
        );
        // $setElementOrder.
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "x2"}]}});
        let out = strategic_merge_patch(&doc, &patch, pod()).expect("merges");
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "y"}, {"name": "a", "image": "x2"}])
        );
        // Unknown directive.
        let err = strategic_merge_patch(&doc, &json!({"spec": {"$patch": "frob"}}), pod())
            .expect_err("bad directive");
        assert_eq!(err.to_api_error().code(), 400);
    }

    #[test]
    fn smp_retain_keys_for_unions() {
        // Deployment strategy: switching from RollingUpdate to Recreate clears rollingUpdate.
        let doc = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = strategic_merge_patch(&doc, &patch, deploy()).expect("merges");
        assert_eq!(out, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    }

    #[test]
    fn smp_missing_merge_key_is_bad_request() {
        let doc = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = strategic_merge_patch(
            &doc,
            &json!({"spec": {"containers": [{"image": "nginx"}]}}),
            pod(),
        )
        .expect_err("no key");
        assert_eq!(
            err.to_string(),
            "map: map[image:nginx] does not contain declared merge key: name"
        );
        assert_eq!(err.to_api_error().code(), 400);
    }

    #[test]
    fn smp_service_ports_by_port_and_owner_refs_by_uid() {
        let svc = TypeRef::builtin("v1", "Service").expect("built in");
        let doc = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]}, "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = strategic_merge_patch(&doc, &patch, svc).expect("merges");
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443, "name": "https"}])
        );
        assert_eq!(
            out["metadata"]["ownerReferences"].as_array().map(Vec::len),
            Some(2)
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn without_nulls(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    proptest! {
        /// Merging a null-free object into anything gives that object back where it set
        /// keys; applying the same patch twice changes nothing more (idempotence).
        #[test]
        fn merge_patch_is_idempotent(doc in arb_json(), patch in prop::collection::btree_map("[a-d]", arb_json(), 0..4)) {
            let patch = Value::Object(patch.into_iter().collect());
            let once = merge_patch(&doc, &patch).expect("object patch");
            let twice = merge_patch(&once, &patch).expect("object patch");
            prop_assert_eq!(&once, &twice);
            // A null-free patch applied to an empty doc yields the patch itself.
            let clean = without_nulls(&patch);
            prop_assert_eq!(merge_patch(&json!({}), &clean).expect("object"), clean.clone());
        }

        /// For types without merge keys strategic merge patch equals merge patch.
        #[test]
        fn smp_equals_merge_patch_on_deduced_types(doc in prop::collection::btree_map("[a-d]", arb_json(), 0..4), patch in prop::collection::btree_map("[a-d]", arb_json(), 0..4)) {
            let doc = Value::Object(doc.into_iter().collect());
            let patch = Value::Object(patch.into_iter().collect());
            let smp = strategic_merge_patch(&doc, &patch, TypeRef::deduced()).expect("applies");
            prop_assert_eq!(smp, merge_patch(&doc, &patch).expect("applies"));
        }
    }
}
