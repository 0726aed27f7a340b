//! Custom resources against their CRD version's structural `openAPIV3Schema`: pruning of
//! unknown fields, defaulting, OpenAPI validation and CEL `x-kubernetes-validations`, as
//! `k8s.io/apiextensions-apiserver` does them.
//!
//! [`CrdSchema::admit`] is the whole write path: prune → default → validate → CEL, giving
//! Kubernetes field errors ([`FieldError`]) that [`crate::status::invalid`] turns into the
//! 422 Status (`The WorkModel "x" is invalid: spec.foo: Invalid value: …`). Messages follow
//! kube-openapi's validator (`spec.replicas in body should be less than or equal to 10`)
//! as converted by the apiextensions server. CEL rules are evaluated by `kube-cel`;
//! failures read `spec: Invalid value: "object": <message>` (the value is the schema type,
//! as Kubernetes prints it), or `Forbidden`/`Required`/`Duplicate` when the rule's
//! `reason` says so. Transition rules (`oldSelf`) run only on update.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use regex::Regex;
use serde_json::{Map, Value};

use crate::field::{ErrorType, FieldError};

/// A CRD version's structural schema.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdSchema {
    root: Value,
}

impl CrdSchema {
    /// Wraps an `openAPIV3Schema` given as JSON.
    pub fn new(open_api_v3_schema: Value) -> Self {
        Self {
            root: open_api_v3_schema,
        }
    }

    /// Wraps a typed `openAPIV3Schema`.
    pub fn from_props(props: &JSONSchemaProps) -> Result<Self, serde_json::Error> {
        Ok(Self::new(serde_json::to_value(props)?))
    }

    /// The schema as JSON (e.g. for [`crate::types::TypeRef::custom_resource`]).
    pub fn as_value(&self) -> &Value {
        &self.root
    }

    /// The write path for a create (`old = None`) or update: prunes unknown fields,
    /// applies defaults, then validates the result (schema, then CEL rules).
    pub fn admit(&self, obj: &mut Value, old: Option<&Value>) -> Vec<FieldError> {
        self.prune(obj);
        self.apply_defaults(obj);
        let mut errs = self.validate(obj);
        if errs.is_empty() {
            errs.extend(self.validate_cel(obj, old));
        }
        errs
    }

    /// Drops fields the schema does not know, except under
    /// `x-kubernetes-preserve-unknown-fields: true`; `apiVersion`, `kind` and `metadata`
    /// are kept at the root and in embedded resources. Returns the pruned paths.
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut pruned = Vec::new();
        prune_node(&self.root, obj, "", true, &mut pruned);
        pruned
    }

    /// Sets `default`s of missing fields (and of `null`s where the field is not
    /// nullable), recursively, as structural defaulting does.
    pub fn apply_defaults(&self, obj: &mut Value) {
        default_node(&self.root, obj);
    }

    /// OpenAPI validation of the whole object (CEL excluded).
    pub fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let root = strip_metadata_props(&self.root);
        validate_node(&root, obj, "", &mut errs);
        errs
    }

    /// Evaluates the `x-kubernetes-validations` rules; `old` enables transition rules.
    pub fn validate_cel(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        if !has_rules(&self.root) {
            return Vec::new();
        }
        match kube_cel::Validator::new().validate(&self.root, obj, old) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| self.cel_error(e)).collect(),
        }
    }

    fn cel_error(&self, e: &kube_cel::ValidationError) -> FieldError {
        let ty = find_rule_type(&self.root, &e.rule).unwrap_or("object");
        let reason = e.reason.as_deref().and_then(ErrorType::from_cause_type);
        match reason {
            Some(ErrorType::Forbidden) => FieldError::forbidden(&e.field_path, &e.message),
            Some(ErrorType::Required) => FieldError::required(&e.field_path, &e.message),
            Some(ErrorType::Duplicate) => FieldError::duplicate(&e.field_path, Value::from(ty)),
            _ => FieldError::invalid(&e.field_path, Value::from(ty), &e.message),
        }
    }
}

fn has_rules(s: &Value) -> bool {
    match s {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// The schema `type` of the node that declares `rule`.
fn find_rule_type<'a>(s: &'a Value, rule: &str) -> Option<&'a str> {
    let Value::Object(m) = s else { return None };
    let declares = m
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .is_some_and(|rules| {
            rules
                .iter()
                .any(|r| r.get("rule").and_then(Value::as_str) == Some(rule))
        });
    if declares {
        return Some(
            m.get("type")
                .and_then(Value::as_str)
                .unwrap_or(if is_int_or_string(s) {
                    "integer"
                } else {
                    "object"
                }),
        );
    }
    let children = m
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|p| p.values())
        .chain(m.get("items"))
        .chain(m.get("additionalProperties").filter(|a| a.is_object()));
    children.into_iter().find_map(|c| find_rule_type(c, rule))
}

/// The root `metadata` of a custom resource is validated by the apiserver's ObjectMeta
/// rules, not by the schema (which may only restrict name/generateName).
fn strip_metadata_props(root: &Value) -> Value {
    let mut r = root.clone();
    if let Some(props) = r.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove("metadata");
        props.remove("apiVersion");
        props.remove("kind");
    }
    r
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn flag(s: &Value, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn is_int_or_string(s: &Value) -> bool {
    flag(s, "x-kubernetes-int-or-string")
}

// ---------------------------------------------------------------- pruning

fn prune_node(s: &Value, v: &mut Value, path: &str, is_resource: bool, pruned: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let keep_meta = is_resource || flag(s, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = obj.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(match additional {
                    Some(a @ Value::Object(_)) => Some(a),
                    _ => None,
                });
                if keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    if k == "metadata" {
                        continue; // ObjectMeta is pruned by its own type, not by the schema.
                    }
                    continue;
                }
                match sub {
                    Some(sub) => {
                        if let Some(child_v) = obj.get_mut(&k) {
                            prune_node(sub, child_v, &child(path, &k), false, pruned);
                        }
                    }
                    None if preserve || matches!(additional, Some(Value::Bool(true))) => {}
                    None => {
                        obj.remove(&k);
                        pruned.push(child(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_node(item_schema, item, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- defaulting

fn default_node(s: &Value, v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    let Some(default) = sub.get("default") else {
                        continue;
                    };
                    let missing = match obj.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(sub, "nullable"),
                        Some(_) => false,
                    };
                    if missing {
                        obj.insert(k.clone(), default.clone());
                    }
                }
                for (k, sub) in props {
                    if let Some(child_v) = obj.get_mut(k) {
                        default_node(sub, child_v);
                    }
                }
            }
            if let Some(a @ Value::Object(_)) = s.get("additionalProperties") {
                for child_v in obj.values_mut() {
                    default_node(a, child_v);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for item in items.iter_mut() {
                    if item.is_null()
                        && !flag(item_schema, "nullable")
                        && let Some(d) = item_schema.get("default")
                    {
                        *item = d.clone();
                    }
                    default_node(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- validation

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, v: &Value) -> bool {
    match expected {
        "number" => v.is_number(),
        "" => true,
        other => json_type(v) == other,
    }
}

fn num_text(n: &Value) -> String {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Some(f) => f.to_string(),
        None => n.to_string(),
    }
}

fn validate_node(s: &Value, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let p = if path.is_empty() { "." } else { path };
    let err_path = if path.is_empty() { "<nil>" } else { path };
    if v.is_null() {
        if flag(s, "nullable") {
            return;
        }
        let expected = s.get("type").and_then(Value::as_str).unwrap_or("");
        if !expected.is_empty() || is_int_or_string(s) {
            let expected = if is_int_or_string(s) {
                "integer,string"
            } else {
                expected
            };
            errs.push(FieldError::type_invalid(
                err_path,
                Value::from("null"),
                &format!("{p} in body must be of type {expected}: \"null\""),
            ));
        }
        return;
    }

    if is_int_or_string(s) {
        if !matches!(json_type(v), "integer" | "string") {
            let t = json_type(v);
            errs.push(FieldError::type_invalid(
                err_path,
                Value::from(t),
                &format!("{p} in body must be of type integer,string: \"{t}\""),
            ));
            return;
        }
    } else if let Some(expected) = s.get("type").and_then(Value::as_str)
        && !type_matches(expected, v)
    {
        let t = json_type(v);
        errs.push(FieldError::type_invalid(
            err_path,
            Value::from(t),
            &format!("{p} in body must be of type {expected}: \"{t}\""),
        ));
        return;
    }

    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let valid: Vec<String> = options
            .iter()
            .map(|o| o.as_str().map_or_else(|| o.to_string(), str::to_owned))
            .collect();
        errs.push(FieldError::not_supported(err_path, v.clone(), &valid));
    }

    match v {
        Value::Number(_) => validate_number(s, v, p, err_path, errs),
        Value::String(text) => validate_string(s, v, text, p, err_path, errs),
        Value::Array(items) => validate_array(s, items, v, path, errs),
        Value::Object(obj) => validate_object(s, obj, path, errs),
        _ => {}
    }
}

fn validate_number(s: &Value, v: &Value, p: &str, err_path: &str, errs: &mut Vec<FieldError>) {
    let x = v.as_f64().unwrap_or(0.0);
    if let Some(max) = s.get("maximum").filter(|m| m.is_number()) {
        let m = max.as_f64().unwrap_or(f64::MAX);
        if flag(s, "exclusiveMaximum") && x >= m {
            errs.push(FieldError::invalid(
                err_path,
                v.clone(),
                &format!("{p} in body should be less than {}", num_text(max)),
            ));
        } else if x > m {
            errs.push(FieldError::invalid(
                err_path,
                v.clone(),
                &format!(
                    "{p} in body should be less than or equal to {}",
                    num_text(max)
                ),
            ));
        }
    }
    if let Some(min) = s.get("minimum").filter(|m| m.is_number()) {
        let m = min.as_f64().unwrap_or(f64::MIN);
        if flag(s, "exclusiveMinimum") && x <= m {
            errs.push(FieldError::invalid(
                err_path,
                v.clone(),
                &format!("{p} in body should be greater than {}", num_text(min)),
            ));
        } else if x < m {
            errs.push(FieldError::invalid(
                err_path,
                v.clone(),
                &format!(
                    "{p} in body should be greater than or equal to {}",
                    num_text(min)
                ),
            ));
        }
    }
    if let Some(mult) = s.get("multipleOf").and_then(Value::as_f64)
        && mult > 0.0
        && ((x / mult).round() - x / mult).abs() > 1e-9
    {
        errs.push(FieldError::invalid(
            err_path,
            v.clone(),
            &format!(
                "{p} in body should be a multiple of {}",
                num_text(&Value::from(mult))
            ),
        ));
    }
    let format = s.get("format").and_then(Value::as_str).unwrap_or("");
    let out_of_range = match format {
        "int32" => v.as_i64().is_none_or(|i| i32::try_from(i).is_err()),
        "int64" => !(v.is_i64()),
        _ => false,
    };
    if out_of_range && json_type(v) == "integer" {
        errs.push(FieldError::invalid(
            err_path,
            v.clone(),
            &format!("{p} in body must be of type {format}: \"{}\"", num_text(v)),
        ));
    }
}

static UUID_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new("^(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
        .expect("valid regex")
});
static HOSTNAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("valid regex")
});
static DATE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{4}-\d{2}-\d{2}$").expect("valid regex"));
static BYTE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
        .expect("valid regex")
});

/// Whether a string satisfies a format Kubernetes checks; unknown formats pass.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => {
            DATE_RE.is_match(s) && format!("{s}T00:00:00Z").parse::<jiff::Timestamp>().is_ok()
        }
        "uuid" => UUID_RE.is_match(s),
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "hostname" => s.len() <= 253 && HOSTNAME_RE.is_match(s),
        "byte" => BYTE_RE.is_match(s),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            bits.parse::<u8>().is_ok_and(|b| {
                (ip.parse::<Ipv4Addr>().is_ok() && b <= 32)
                    || (ip.parse::<Ipv6Addr>().is_ok() && b <= 128)
            })
        }),
        _ => true,
    }
}

fn validate_string(
    s: &Value,
    v: &Value,
    text: &str,
    p: &str,
    err_path: &str,
    errs: &mut Vec<FieldError>,
) {
    let chars = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        errs.push(FieldError::too_long(
            err_path,
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        errs.push(FieldError::invalid(
            err_path,
            v.clone(),
            &format!("{p} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        match Regex::new(pattern) {
            Ok(re) if !re.is_match(text) => {
                errs.push(FieldError::invalid(
                    err_path,
                    v.clone(),
                    &format!("{p} in body should match '{pattern}'"),
                ));
            }
            Ok(_) => {}
            Err(e) => errs.push(FieldError::invalid(
                err_path,
                v.clone(),
                &format!("invalid pattern '{pattern}': {e}"),
            )),
        }
    }
    if let Some(format) = s.get("format").and_then(Value::as_str)
        && !format_ok(format, text)
    {
        errs.push(FieldError::type_invalid(
            err_path,
            v.clone(),
            &format!(
                "{p} in body must be of type {format}: {}",
                crate::field::go_quote(text)
            ),
        ));
    }
}

fn validate_array(s: &Value, items: &[Value], v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let p = if path.is_empty() { "." } else { path };
    let err_path = if path.is_empty() { "<nil>" } else { path };
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        errs.push(FieldError::invalid(
            err_path,
            v.clone(),
            &format!("{p} in body should have at least {min} items"),
        ));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && (items.len() as u64) > max
    {
        errs.push(FieldError::too_many(
            err_path,
            items.len(),
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    if flag(s, "uniqueItems")
        && items
            .iter()
            .enumerate()
            .any(|(i, a)| items[..i].contains(a))
    {
        errs.push(FieldError::invalid(
            err_path,
            Value::from(""),
            &format!("{p} in body shouldn't contain duplicates"),
        ));
    }
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errs.push(FieldError::duplicate(&format!("{path}[{i}]"), item.clone()));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Map<String, Value> = keys
                    .iter()
                    .filter_map(|k| item.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect();
                if !seen.insert(Value::Object(key.clone()).to_string()) {
                    errs.push(FieldError::duplicate(
                        &format!("{path}[{i}]"),
                        Value::Object(key),
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate_node(item_schema, item, &format!("{path}[{i}]"), errs);
        }
    }
}

fn validate_object(s: &Value, obj: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    let p = if path.is_empty() { "." } else { path };
    let err_path = if path.is_empty() { "<nil>" } else { path };
    if flag(s, "x-kubernetes-embedded-resource") {
        for k in ["apiVersion", "kind"] {
            if obj.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.push(FieldError::required(&child(path, k), "must not be empty"));
            }
        }
    }
    for req in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !obj.contains_key(req) {
            errs.push(FieldError::required(&child(path, req), ""));
        }
    }
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && (obj.len() as u64) < min
    {
        errs.push(FieldError::invalid(
            err_path,
            Value::Object(obj.clone()),
            &format!("{p} in body should have at least {min} properties"),
        ));
    }
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && (obj.len() as u64) > max
    {
        errs.push(FieldError::too_many(
            err_path,
            obj.len(),
            usize::try_from(max).unwrap_or(usize::MAX),
        ));
    }
    let props = s.get("properties").and_then(Value::as_object);
    for (k, child_v) in obj {
        let c = child(path, k);
        match (
            props.and_then(|pr| pr.get(k)),
            s.get("additionalProperties"),
        ) {
            (Some(sub), _) => validate_node(sub, child_v, &c, errs),
            (None, Some(a @ Value::Object(_))) => validate_node(a, child_v, &c, errs),
            (None, Some(Value::Bool(false))) if props.is_some() => {
                errs.push(FieldError::forbidden(
                    &c,
                    &format!("{c} in body is a forbidden property"),
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::status::{self, GroupKind};

    fn workmodel_schema() -> CrdSchema {
        CrdSchema::new(json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["services"],
                    "properties": {
                        "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 10, "default": 1},
                        "mode": {"type": "string", "enum": ["Off", "InPlace"], "default": "Off"},
                        "name": {"type": "string", "maxLength": 5, "minLength": 2, "pattern": "^[a-z]+$"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "when": {"type": "string", "format": "date-time"},
                        "ratio": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 1},
                        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2, "x-kubernetes-list-type": "set"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "optional": {"type": "string", "nullable": true},
                        "services": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {
                                "type": "object",
                                "properties": {"seqLen": {"type": "integer", "minimum": 1, "default": 1}},
                                "x-kubernetes-validations": [
                                    {"rule": "self.seqLen <= 5", "message": "seqLen must be at most 5"}
                                ]
                            }
                        }
                    },
                    "x-kubernetes-validations": [
                        {"rule": "!has(self.name) || self.name != 'bad'", "message": "name must not be bad", "fieldPath": ".name", "reason": "FieldValueForbidden"},
                        {"rule": "self.replicas >= oldSelf.replicas", "message": "replicas may not decrease"}
                    ]
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        }))
    }

    fn wm(spec: Value) -> Value {
        json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": spec})
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn valid_object_is_pruned_and_defaulted() {
        let s = workmodel_schema();
        let mut obj = wm(
            json!({"services": {"s0": {}}, "unknown": 1, "extra": {"anything": {"goes": true}}}),
        );
        obj["junk"] = json!(true);
        let errs = s.admit(&mut obj, None);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["mode"], "Off");
        assert_eq!(
            obj["spec"]["services"]["s0"]["seqLen"], 1,
            "defaults apply inside additionalProperties"
        );
        assert!(obj["spec"].get("unknown").is_none(), "unknown field pruned");
        assert!(obj.get("junk").is_none());
        assert_eq!(
            obj["spec"]["extra"]["anything"]["goes"], true,
            "preserve-unknown-fields keeps it"
        );
        assert_eq!(
            obj["metadata"]["labels"]["a"], "b",
            "metadata is never pruned by the schema"
        );
    }

    #[test]
    fn openapi_errors_are_worded_as_kubernetes() {
        let s = workmodel_schema();
        let obj = wm(json!({
            "replicas": 11, "mode": "Sometimes", "name": "ABCDEFG", "ratio": 0, "tags": ["a", "a", "b"],
            "services": {"s0": {"seqLen": 0}}, "port": 1.5, "when": "yesterday"
        }));
        let got = messages(&s.validate(&obj));
        for want in [
            "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            "spec.mode: Unsupported value: \"Sometimes\": supported values: \"Off\", \"InPlace\"",
            "spec.name: Too long: may not be more than 5 bytes",
            "spec.name: Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'",
            "spec.ratio: Invalid value: 0: spec.ratio in body should be greater than 0",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.tags[1]: Duplicate value: \"a\"",
            "spec.services.s0.seqLen: Invalid value: 0: spec.services.s0.seqLen in body should be greater than or equal to 1",
            "spec.port: Invalid value: \"number\": spec.port in body must be of type integer,string: \"number\"",
            "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
        ] {
            assert!(
                got.contains(&want.to_owned()),
                "missing {want:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), 10, "{got:#?}");
    }

    #[test]
    fn type_required_and_null() {
        let s = workmodel_schema();
        let got = messages(&s.validate(&wm(
            json!({"replicas": "three", "optional": null, "name": null}),
        )));
        assert!(
            got.contains(&"spec.services: Required value".to_owned()),
            "{got:?}"
        );
        assert!(got.contains(&"spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"".to_owned()), "{got:?}");
        assert!(got.contains(&"spec.name: Invalid value: \"null\": spec.name in body must be of type string: \"null\"".to_owned()), "{got:?}");
        assert_eq!(got.len(), 3, "nullable optional is fine: {got:?}");
        let got = messages(&s.validate(&wm(json!({"services": {}, "replicas": 3000000000i64}))));
        assert!(
            got.iter()
                .any(|m| m.contains("should have at least 1 properties")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|m| m.contains("must be of type int32")),
            "{got:?}"
        );
    }

    #[test]
    fn cel_rules_with_messages_reasons_and_field_paths() {
        let s = workmodel_schema();
        let mut obj = wm(json!({"services": {"s0": {"seqLen": 7}}, "name": "bad"}));
        let errs = s.admit(&mut obj, None);
        let got = messages(&errs);
        assert!(
            got.contains(
                &"spec.services.s0: Invalid value: \"object\": seqLen must be at most 5".to_owned()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(&"spec.name: Forbidden: name must not be bad".to_owned()),
            "{got:?}"
        );
        let e = status::invalid(&GroupKind::new("cellmesh.io", "WorkModel"), "x", &errs);
        assert_eq!(e.code(), 422);
        assert!(
            e.message()
                .starts_with("WorkModel.cellmesh.io \"x\" is invalid: ["),
            "{}",
            e.message()
        );
    }

    #[test]
    fn transition_rules_need_old_self() {
        let s = workmodel_schema();
        let old = wm(json!({"services": {"s0": {}}, "replicas": 5}));
        let mut new = wm(json!({"services": {"s0": {}}, "replicas": 3}));
        assert!(
            s.admit(&mut new.clone(), None).is_empty(),
            "no transition rule on create"
        );
        let got = messages(&s.admit(&mut new, Some(&old)));
        assert_eq!(
            got,
            vec!["spec: Invalid value: \"object\": replicas may not decrease".to_owned()]
        );
    }

    #[test]
    fn embedded_resources_keep_their_type_meta() {
        let s = CrdSchema::new(
            json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
                "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}}
            }}}}),
        );
        let mut obj = json!({"spec": {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}, "other": 1}}});
        assert!(s.admit(&mut obj, None).is_empty());
        assert_eq!(obj["spec"]["template"]["kind"], "Pod");
        assert!(obj["spec"]["template"].get("other").is_none());
        let got = messages(&s.validate(&json!({"spec": {"template": {"spec": {}}}})));
        assert!(
            got.contains(&"spec.template.apiVersion: Required value: must not be empty".to_owned()),
            "{got:?}"
        );
    }

    #[test]
    fn formats() {
        assert!(format_ok("date-time", "2024-01-02T03:04:05Z"));
        assert!(!format_ok("date-time", "2024-01-02"));
        assert!(format_ok("date", "2024-01-02"));
        assert!(format_ok("uuid", "550e8400-e29b-41d4-a716-446655440000"));
        assert!(!format_ok("ipv4", "300.1.1.1"));
        assert!(format_ok("cidr", "10.0.0.0/8"));
        assert!(format_ok("byte", "aGVsbG8="));
        assert!(format_ok("made-up", "anything"));
    }
}
