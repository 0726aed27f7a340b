//! Server-side apply and field ownership (`metadata.managedFields`), following
//! `sigs.k8s.io/structured-merge-diff` as the apiserver uses it.
//!
//! * [`apply`] merges an applied configuration into the live object: objects merge key by
//!   key, associative lists (`x-kubernetes-list-type: map`) merge items by their keys,
//!   sets union, atomic lists and atomic maps are replaced. Fields the same manager
//!   applied before and omits now are removed unless another manager also owns them.
//!   Changing a field another manager owns is a conflict — 409 with Kubernetes' message
//!   (`Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.replicas`)
//!   — unless `force`, which moves ownership to the applier. Setting a field to the value
//!   it already has shares ownership instead of conflicting.
//! * [`update`] records ownership for PUT/PATCH: the updater gains the fields it changed
//!   or added, other managers lose them, and fields that no longer exist lose all owners.
//!
//! Field sets are encoded as `FieldsV1` (`f:<name>`, `k:{"name":"c"}`, `v:"x"`, `.`).
//! Identity fields (`apiVersion`, `kind`, `metadata.name`, `namespace`, `uid`,
//! `resourceVersion`, `generation`, `creationTimestamp`, `managedFields`, …) are never
//! tracked, as the apiserver strips them; `ignored` top-level fields (e.g. `status` on the
//! main resource of a kind with a status subresource) are neither tracked nor applied.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::status::{self, ApiError};
use crate::types::{ListType, TypeRef};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// An object field: `f:name`.
    Field(String),
    /// An associative-list item identified by its key fields (canonical JSON object): `k:{…}`.
    Key(String),
    /// A set item (canonical JSON): `v:…`.
    Value(String),
    /// A list index (only for lists of unknown type): `i:3`.
    Index(usize),
}

/// A path from the root of an object.
pub type Path = Vec<PathElement>;

/// A set of field paths; a path and its descendants may both be members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSet(BTreeSet<Path>);

impl FieldSet {
    /// The paths.
    pub fn paths(&self) -> &BTreeSet<Path> {
        &self.0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn union(&self, o: &Self) -> Self {
        Self(self.0.union(&o.0).cloned().collect())
    }

    fn difference(&self, o: &Self) -> Self {
        Self(self.0.difference(&o.0).cloned().collect())
    }

    fn intersection(&self, o: &Self) -> Self {
        Self(self.0.intersection(&o.0).cloned().collect())
    }

    /// Encodes as `FieldsV1`.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for el in path {
                let key = encode_element(el);
                node = node
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("inserted an object");
            }
            if !path.is_empty() && has_member_below(&self.0, path) {
                node.insert(".".to_owned(), Value::Object(Map::new()));
            }
        }
        // Nodes that are members and have children carry ".", leaves are plain `{}`.
        Value::Object(root)
    }

    /// Decodes `FieldsV1`.
    pub fn from_fields_v1(v: &Value) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        decode_node(v, &mut Vec::new(), &mut set)?;
        Ok(Self(set))
    }
}

fn has_member_below(set: &BTreeSet<Path>, path: &Path) -> bool {
    set.range(path.clone()..)
        .nth(1)
        .is_some_and(|next| next.len() > path.len() && next.starts_with(path))
}

fn encode_element(el: &PathElement) -> String {
    match el {
        PathElement::Field(f) => format!("f:{f}"),
        PathElement::Key(k) => format!("k:{k}"),
        PathElement::Value(v) => format!("v:{v}"),
        PathElement::Index(i) => format!("i:{i}"),
    }
}

fn decode_node(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) -> Result<(), String> {
    let Value::Object(m) = v else {
        return Err("fieldsV1 nodes must be objects".into());
    };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
    for (k, child) in m {
        if k == "." {
            out.insert(prefix.clone());
            continue;
        }
        let el = match k.split_once(':') {
            Some(("f", f)) => PathElement::Field(f.to_owned()),
            Some(("k", key)) => PathElement::Key(canonical(
                &serde_json::from_str(key).map_err(|e| format!("bad key {key}: {e}"))?,
            )),
            Some(("v", val)) => PathElement::Value(canonical(
                &serde_json::from_str(val).map_err(|e| format!("bad value {val}: {e}"))?,
            )),
            Some(("i", i)) => {
                PathElement::Index(i.parse().map_err(|e| format!("bad index {i}: {e}"))?)
            }
            _ => return Err(format!("unknown fieldsV1 key {k:?}")),
        };
        prefix.push(el);
        decode_node(child, prefix, out)?;
        prefix.pop();
    }
    Ok(())
}

/// JSON with object keys sorted (serde_json's map is sorted without `preserve_order`).
fn canonical(v: &Value) -> String {
    v.to_string()
}

/// Prints a path as structured-merge-diff does: `.spec.containers[name="a"].image`.
pub fn path_string(path: &Path) -> String {
    let mut s = String::new();
    for el in path {
        match el {
            PathElement::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            PathElement::Key(k) => {
                let parts: Vec<String> = match serde_json::from_str::<Value>(k) {
                    Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    _ => vec![k.clone()],
                };
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            PathElement::Value(v) => s.push_str(&format!("[={v}]")),
            PathElement::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

// ---------------------------------------------------------------- field sets of values

/// The identity of a list-map item. A missing `protocol` key counts as `"TCP"`: that is
/// its OpenAPI default in every built-in list keyed by it (container, service and endpoint
/// ports), and structured-merge-diff fills defaulted keys so that an applied
/// `{containerPort: 80}` is the same item as the stored, defaulted `{containerPort: 80,
/// protocol: TCP}`.
fn key_of(item: &Value, keys: &[String]) -> Option<String> {
    let mut m: Map<String, Value> = keys
        .iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    if !m.is_empty() && keys.iter().any(|k| k == "protocol") && !m.contains_key("protocol") {
        m.insert("protocol".into(), Value::from("TCP"));
    }
    (!m.is_empty()).then(|| canonical(&Value::Object(m)))
}

/// The paths a value sets, relative to it.
fn fields_of(v: &Value, ty: TypeRef<'_>, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !ty.is_atomic_object() && !m.is_empty() => {
            for (k, child) in m {
                prefix.push(PathElement::Field(k.clone()));
                fields_of(child, ty.field(k), prefix, out);
                // A map entry is owned itself, not only through its leaves (as in
                // structured-merge-diff's `visitMapItems`), so dropping it removes it.
                if ty.is_map_entry(k) {
                    out.insert(prefix.clone());
                }
                prefix.pop();
            }
        }
        Value::Array(items) => match ty.list_type() {
            ListType::Set => {
                for item in items {
                    prefix.push(PathElement::Value(canonical(item)));
                    out.insert(prefix.clone());
                    prefix.pop();
                }
                if items.is_empty() {
                    out.insert(prefix.clone());
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    let Some(k) = key_of(item, &keys) else {
                        continue;
                    };
                    prefix.push(PathElement::Key(k));
                    out.insert(prefix.clone());
                    fields_of(item, ty.items(), prefix, out);
                    prefix.pop();
                }
                if items.is_empty() {
                    out.insert(prefix.clone());
                }
            }
            ListType::Atomic => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
}

const IDENTITY_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn is_tracked(path: &Path, ignored: &[&str]) -> bool {
    match path.as_slice() {
        [PathElement::Field(f), ..]
            if f == "apiVersion" || f == "kind" || ignored.contains(&f.as_str()) =>
        {
            false
        }
        [PathElement::Field(m), PathElement::Field(f), ..]
            if m == "metadata" && IDENTITY_META.contains(&f.as_str()) =>
        {
            false
        }
        [PathElement::Field(m)] if m == "metadata" => false,
        [] => false,
        _ => true,
    }
}

/// The tracked field set of a whole object.
pub fn field_set(obj: &Value, ty: TypeRef<'_>, ignored: &[&str]) -> FieldSet {
    let mut out = BTreeSet::new();
    fields_of(obj, ty, &mut Vec::new(), &mut out);
    FieldSet(out.into_iter().filter(|p| is_tracked(p, ignored)).collect())
}

/// The value at `path` in `v` (list-map items found by their keys), if present.
pub fn value_at<'v>(v: &'v Value, path: &[PathElement], ty: TypeRef<'_>) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    match first {
        PathElement::Field(f) => value_at(v.get(f)?, rest, ty.field(f)),
        PathElement::Key(k) => {
            let ListType::Map(keys) = ty.list_type() else {
                return None;
            };
            let item = v
                .as_array()?
                .iter()
                .find(|i| key_of(i, &keys).as_deref() == Some(k.as_str()))?;
            value_at(item, rest, ty.items())
        }
        PathElement::Value(val) => v.as_array()?.iter().find(|i| canonical(i) == *val),
        PathElement::Index(i) => value_at(v.as_array()?.get(*i)?, rest, ty.items()),
    }
}

fn remove_at(v: &mut Value, path: &[PathElement], ty: TypeRef<'_>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (first, v) {
        (PathElement::Field(f), Value::Object(m)) => {
            if rest.is_empty() {
                m.remove(f);
            } else if let Some(child) = m.get_mut(f) {
                remove_at(child, rest, ty.field(f));
            }
        }
        (PathElement::Key(k), Value::Array(items)) => {
            let ListType::Map(keys) = ty.list_type() else {
                return;
            };
            if rest.is_empty() {
                items.retain(|i| key_of(i, &keys).as_deref() != Some(k.as_str()));
            } else if let Some(item) = items
                .iter_mut()
                .find(|i| key_of(i, &keys).as_deref() == Some(k.as_str()))
            {
                remove_at(item, rest, ty.items());
            }
        }
        (PathElement::Value(val), Value::Array(items)) if rest.is_empty() => {
            items.retain(|i| canonical(i) != *val)
        }
        _ => {}
    }
}

/// Merges an applied configuration into a live value.
fn merge_applied(live: Option<&Value>, cfg: &Value, ty: TypeRef<'_>) -> Value {
    match (live, cfg) {
        (Some(Value::Object(l)), Value::Object(c)) if !ty.is_atomic_object() => {
            let mut out = l.clone();
            for (k, v) in c {
                if v.is_null() {
                    continue;
                }
                let merged = merge_applied(l.get(k), v, ty.field(k));
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Some(Value::Array(l)), Value::Array(c)) => match ty.list_type() {
            ListType::Set => {
                let mut out = l.clone();
                for item in c {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => {
                let mut out = l.clone();
                for item in c {
                    let k = key_of(item, &keys);
                    match out
                        .iter()
                        .position(|o| k.is_some() && key_of(o, &keys) == k)
                    {
                        Some(i) => out[i] = merge_applied(Some(&l[i]), item, ty.items()),
                        None => out.push(item.clone()),
                    }
                }
                Value::Array(out)
            }
            ListType::Atomic => cfg.clone(),
        },
        (_, Value::Object(c)) => Value::Object(
            c.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        (_, c) => c.clone(),
    }
}

// ---------------------------------------------------------------- managedFields

/// The operation a managedFields entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or non-apply patch.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: Operation,
    api_version: String,
    time: Option<String>,
    subresource: String,
    fields: FieldSet,
}

impl Entry {
    fn printed(&self) -> String {
        let m = crate::field::go_quote(&self.manager);
        match self.operation {
            Operation::Apply => m,
            Operation::Update => format!("{m} using {}", self.api_version),
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::from(self.manager.as_str()));
        m.insert("operation".into(), Value::from(self.operation.as_str()));
        m.insert("apiVersion".into(), Value::from(self.api_version.as_str()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::from(t.as_str()));
        }
        m.insert("fieldsType".into(), Value::from("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::from(self.subresource.as_str()));
        }
        Value::Object(m)
    }
}

fn read_entries(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let operation = match e.get("operation")?.as_str()? {
                "Apply" => Operation::Apply,
                _ => Operation::Update,
            };
            Some(Entry {
                manager: e
                    .get("manager")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                operation,
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                time: e.get("time").and_then(Value::as_str).map(str::to_owned),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                fields: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null))
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    } else if !list.is_empty()
        && let Some(root) = obj.as_object_mut()
    {
        root.insert(
            "metadata".into(),
            serde_json::json!({"managedFields": list}),
        );
    }
}

/// Who is writing, and where.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// Field manager name (`fieldManager` query parameter, or derived from the user agent).
    pub manager: &'a str,
    /// API version of the request (`apps/v1`).
    pub api_version: &'a str,
    /// RFC 3339 timestamp to record.
    pub time: &'a str,
    /// Subresource written (`status`, `scale`), empty for the main resource.
    pub subresource: &'a str,
}

/// One field another manager owns that the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager as Kubernetes prints it (`"kubectl" using apps/v1`, or `"m"` for appliers).
    pub manager: String,
    /// The path as structured-merge-diff prints it (`.spec.replicas`).
    pub path: String,
}

/// A failed apply: every conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ApplyConflicts {
    /// The conflicts, sorted by manager then path.
    pub conflicts: Vec<Conflict>,
}

impl ApplyConflicts {
    /// Kubernetes' message: `Apply failed with 1 conflict: conflict with "m" using v1: .spec.x`,
    /// or for several `Apply failed with 2 conflicts: conflicts with "m" using v1:\n- .a\n- .b`.
    pub fn message(&self) -> String {
        let n = self.conflicts.len();
        if n == 1 {
            let c = &self.conflicts[0];
            return format!(
                "Apply failed with 1 conflict: conflict with {}: {}",
                c.manager, c.path
            );
        }
        let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in &self.conflicts {
            by_manager.entry(&c.manager).or_default().push(&c.path);
        }
        let mut s = String::from("conflicts with");
        if by_manager.len() == 1 {
            for (m, paths) in &by_manager {
                s.push_str(&format!(" {m}:"));
                for p in paths {
                    s.push_str(&format!("\n- {p}"));
                }
            }
        } else {
            for (m, paths) in &by_manager {
                s.push_str(&format!("\n{m}:"));
                for p in paths {
                    s.push_str(&format!("\n- {p}"));
                }
            }
        }
        format!("Apply failed with {n} conflicts: {s}")
    }

    /// The 409 Status with one `FieldManagerConflict` cause per conflict.
    pub fn to_api_error(&self) -> ApiError {
        let causes = self
            .conflicts
            .iter()
            .map(
                |c| k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause {
                    reason: Some("FieldManagerConflict".into()),
                    message: Some(format!("conflict with {}", c.manager)),
                    field: Some(c.path.clone()),
                },
            )
            .collect();
        status::apply_conflict(causes, self.message())
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Server-side apply of `config` onto `live` (`None` creates). Returns the new object
/// with `metadata.managedFields` updated; identity fields come from `live` when present.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    writer: Writer<'_>,
    force: bool,
    ty: TypeRef<'_>,
    ignored: &[&str],
) -> Result<Value, ApplyConflicts> {
    let mut entries = read_entries(live);
    let live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let mut cfg = config.clone();
    if let Some(m) = cfg.as_object_mut() {
        for f in ignored {
            m.remove(*f);
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    let applied = field_set(&cfg, ty, ignored);
    let mut merged = merge_applied(Some(&live_obj), &cfg, ty);

    // Conflicts: fields the config sets to a value different from the live one that
    // another manager owns.
    let changed: FieldSet = FieldSet(
        applied
            .0
            .iter()
            .filter(|p| {
                let before = value_at(&live_obj, p, ty);
                let after = value_at(&merged, p, ty);
                before.is_none() || (before != after && !is_interior(p, &applied))
            })
            .cloned()
            .collect(),
    );
    let is_self = |e: &Entry| {
        e.manager == writer.manager
            && e.operation == Operation::Apply
            && e.subresource == writer.subresource
    };
    let mut conflicts: Vec<Conflict> = Vec::new();
    for e in entries.iter().filter(|e| !is_self(e)) {
        for p in e.fields.intersection(&changed).0 {
            if value_at(&live_obj, &p, ty).is_some() {
                conflicts.push(Conflict {
                    manager: e.printed(),
                    path: path_string(&p),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.manager, &a.path).cmp(&(&b.manager, &b.path)));
        return Err(ApplyConflicts { conflicts });
    }
    if force {
        for e in entries.iter_mut().filter(|e| !is_self(e)) {
            e.fields = e.fields.difference(&changed);
        }
    }

    // Removal: what this manager applied before and no longer applies, unless others own it.
    let previous = entries
        .iter()
        .find(|e| is_self(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !is_self(e))
        .fold(FieldSet::default(), |acc, e| acc.union(&e.fields));
    let dropped = previous.difference(&applied);
    // A path goes when nobody else owns it or anything below it; of nested removals only
    // the outermost is applied (removing an item's key field first would lose the item).
    let to_remove: Vec<&Path> = dropped
        .0
        .iter()
        .filter(|p| !others.0.iter().any(|o| o.starts_with(p)))
        .collect();
    for p in &to_remove {
        let has_removed_ancestor = to_remove
            .iter()
            .any(|q| q.len() < p.len() && p.starts_with(q));
        if !has_removed_ancestor {
            remove_at(&mut merged, p, ty);
        }
    }

    entries.retain(|e| !is_self(e));
    entries.push(Entry {
        manager: writer.manager.to_owned(),
        operation: Operation::Apply,
        api_version: writer.api_version.to_owned(),
        time: Some(writer.time.to_owned()),
        subresource: writer.subresource.to_owned(),
        fields: applied,
    });
    write_entries(&mut merged, &entries);
    Ok(merged)
}

/// An interior node of a set (a list-map item that also has members below it) is not a
/// value of its own; only its children are compared.
fn is_interior(p: &Path, set: &FieldSet) -> bool {
    has_member_below(&set.0, p)
}

/// Records ownership for a non-apply write (create, update, patch) by `writer`: returns
/// `new` with `metadata.managedFields` recomputed from `old`'s.
pub fn update(
    old: Option<&Value>,
    new: &Value,
    writer: Writer<'_>,
    ty: TypeRef<'_>,
    ignored: &[&str],
) -> Value {
    let mut entries = read_entries(old);
    let old_obj = old.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let before = field_set(&old_obj, ty, ignored);
    let after = field_set(new, ty, ignored);
    let added = after.difference(&before);
    let removed = before.difference(&after);
    let modified = FieldSet(
        after
            .0
            .intersection(&before.0)
            .filter(|p| {
                !is_interior(p, &after) && value_at(&old_obj, p, ty) != value_at(new, p, ty)
            })
            .cloned()
            .collect(),
    );
    let taken = added.union(&modified);
    let is_self = |e: &Entry| {
        e.manager == writer.manager
            && e.operation == Operation::Update
            && e.subresource == writer.subresource
    };
    let previous = entries
        .iter()
        .find(|e| is_self(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for e in entries.iter_mut() {
        e.fields = e.fields.difference(&taken).difference(&removed);
    }
    let mine = previous.union(&taken).difference(&removed);
    entries.retain(|e| !is_self(e));
    entries.push(Entry {
        manager: writer.manager.to_owned(),
        operation: Operation::Update,
        api_version: writer.api_version.to_owned(),
        time: Some(writer.time.to_owned()),
        subresource: writer.subresource.to_owned(),
        fields: mine,
    });
    let mut out = new.clone();
    write_entries(&mut out, &entries);
    out
}

/// The default field manager for a request without `fieldManager`: the user agent up to
/// its first `/` (`kubectl/v1.32.0 (linux/amd64)` → `kubectl`), at most 128 bytes.
pub fn default_manager(user_agent: &str) -> String {
    let name = user_agent.split('/').next().unwrap_or("");
    let mut end = name.len().min(128);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deploy() -> TypeRef<'static> {
        TypeRef::builtin("apps/v1", "Deployment").expect("built in")
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            time: "2025-01-01T00:00:00Z",
            subresource: "",
        }
    }

    fn cfg(replicas: Option<i64>, image: &str, extra_container: bool) -> Value {
        let mut containers = vec![json!({"name": "web", "image": image})];
        if extra_container {
            containers.push(json!({"name": "side", "image": "side:1"}));
        }
        let mut spec = json!({"template": {"spec": {"containers": containers}}});
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "web"}}, "spec": spec})
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap_or("").to_owned(),
                            e["operation"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn fields_v1_encoding_round_trips() {
        let obj = cfg(Some(2), "web:1", true);
        let set = field_set(&obj, deploy(), &[]);
        let enc = set.to_fields_v1();
        assert_eq!(
            enc,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"side\"}": {".": {}, "f:image": {}, "f:name": {}},
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}}
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&enc).expect("decodes"), set);
        let p = set
            .paths()
            .iter()
            .find(|p| p.len() == 6)
            .expect("an item field");
        assert_eq!(
            path_string(p),
            ".spec.template.spec.containers[name=\"side\"].image"
        );
        let fin = field_set(&json!({"metadata": {"finalizers": ["a/b"]}}), deploy(), &[]);
        assert_eq!(
            fin.to_fields_v1(),
            json!({"f:metadata": {"f:finalizers": {"v:\"a/b\"": {}}}})
        );
    }

    #[test]
    fn defaulted_protocol_keys_match_applied_ports() {
        let ports = |p: Value| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                   "spec": {"template": {"spec": {"containers": [{"name": "c", "ports": p}]}}}})
        };
        let live = ports(json!([{"containerPort": 80, "protocol": "TCP"}]));
        let config = ports(json!([{"containerPort": 80, "name": "http"}]));
        let w = Writer {
            manager: "m",
            api_version: "apps/v1",
            time: "t",
            subresource: "",
        };
        let out = apply(Some(&live), &config, w, false, deploy(), &[]).expect("applies");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}])
        );
        let fields = &out["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
            ["f:containers"]["k:{\"name\":\"c\"}"]["f:ports"];
        assert!(
            fields["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
            "{fields}"
        );
    }

    #[test]
    fn apply_creates_and_records_manager() {
        let out = apply(
            None,
            &cfg(Some(2), "web:1", false),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        assert_eq!(out["spec"]["replicas"], 2);
        assert_eq!(managers(&out), vec![("kubectl".into(), "Apply".into())]);
        let entry = &out["metadata"]["managedFields"][0];
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(entry["apiVersion"], "apps/v1");
        assert_eq!(entry["time"], "2025-01-01T00:00:00Z");
        assert!(
            entry["fieldsV1"].get("f:apiVersion").is_none(),
            "identity fields are not tracked"
        );
    }

    #[test]
    fn conflict_with_another_manager_unless_forced() {
        let live = apply(
            None,
            &cfg(Some(2), "web:1", false),
            writer("ops"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        let err = apply(
            Some(&live),
            &cfg(Some(5), "web:1", false),
            writer("ci"),
            false,
            deploy(),
            &[],
        )
        .expect_err("conflict");
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"ops\": .spec.replicas"
        );
        let status = err.to_api_error();
        assert_eq!((status.code(), status.reason()), (409, "Conflict"));
        assert_eq!(
            status.to_json()["details"]["causes"][0],
            json!({"reason": "FieldManagerConflict", "message": "conflict with \"ops\"", "field": ".spec.replicas"})
        );

        // Same value: shared ownership, no conflict.
        let shared = apply(
            Some(&live),
            &cfg(Some(2), "web:1", false),
            writer("ci"),
            false,
            deploy(),
            &[],
        )
        .expect("no conflict");
        assert_eq!(managers(&shared).len(), 2);

        // Force: ownership of replicas moves to ci.
        let forced = apply(
            Some(&live),
            &cfg(Some(5), "web:1", false),
            writer("ci"),
            true,
            deploy(),
            &[],
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 5);
        let ops = forced["metadata"]["managedFields"]
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["manager"] == "ops")
            .expect("ops keeps the rest");
        assert!(ops["fieldsV1"]["f:spec"].get("f:replicas").is_none());
    }

    #[test]
    fn multiple_conflicts_message_and_update_managers() {
        let created = update(
            None,
            &cfg(Some(2), "web:1", false),
            writer("kubectl-client-side-apply"),
            deploy(),
            &[],
        );
        assert_eq!(
            managers(&created),
            vec![("kubectl-client-side-apply".into(), "Update".into())]
        );
        let err = apply(
            Some(&created),
            &cfg(Some(3), "web:2", false),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect_err("conflicts");
        assert_eq!(
            err.message(),
            "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"web\"].image"
        );
    }

    #[test]
    fn omitted_fields_are_removed_unless_owned_by_others() {
        let v1 = apply(
            None,
            &cfg(Some(2), "web:1", true),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        // Drop replicas and the side container.
        let v2 = apply(
            Some(&v1),
            &cfg(None, "web:1", false),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        assert!(v2["spec"].get("replicas").is_none(), "replicas removed");
        assert_eq!(
            v2["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        // If another manager also owns replicas, it stays.
        let mut touched = v1.clone();
        touched["spec"]["replicas"] = json!(4);
        let v1b = update(Some(&v1), &touched, writer("hpa"), deploy(), &[]);
        let v2b = apply(
            Some(&v1b),
            &cfg(None, "web:1", true),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        assert_eq!(v2b["spec"]["replicas"], 4, "owned by hpa now");
    }

    #[test]
    fn update_moves_ownership_and_drops_removed_fields() {
        let v1 = apply(
            None,
            &cfg(Some(2), "web:1", false),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect("applies");
        let mut v2 = v1.clone();
        v2["spec"]["replicas"] = json!(7);
        v2["metadata"]["labels"] = json!({});
        let out = update(Some(&v1), &v2, writer("scaler"), deploy(), &[]);
        let entries = out["metadata"]["managedFields"]
            .as_array()
            .expect("list")
            .clone();
        let scaler = entries
            .iter()
            .find(|e| e["manager"] == "scaler")
            .expect("scaler entry");
        assert_eq!(scaler["operation"], "Update");
        assert!(scaler["fieldsV1"]["f:spec"].get("f:replicas").is_some());
        let kubectl = entries
            .iter()
            .find(|e| e["manager"] == "kubectl")
            .expect("kubectl entry");
        assert!(
            kubectl["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
            "lost replicas to the scaler"
        );
        assert!(
            kubectl["fieldsV1"]["f:metadata"]["f:labels"]
                .get("f:app")
                .is_none(),
            "removed label has no owner"
        );
        // Applying again with the old replicas now conflicts with the scaler.
        let err = apply(
            Some(&out),
            &cfg(Some(2), "web:1", false),
            writer("kubectl"),
            false,
            deploy(),
            &[],
        )
        .expect_err("conflict");
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"scaler\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn custom_resource_lists_and_ignored_status() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}}
        }}}});
        let ty = TypeRef::custom_resource(&schema);
        let w = |m| Writer {
            manager: m,
            api_version: "cellmesh.io/v1alpha1",
            time: "t",
            subresource: "",
        };
        let a = json!({"spec": {"items": [{"id": "a", "v": 1}], "tags": ["x"], "args": ["1"]}, "status": {"ready": true}});
        let live = apply(None, &a, w("one"), false, ty, &["status"]).expect("applies");
        assert!(
            live.get("status").is_none(),
            "status is ignored on the main resource"
        );
        let b = json!({"spec": {"items": [{"id": "b", "v": 2}], "tags": ["y"]}});
        let both =
            apply(Some(&live), &b, w("two"), false, ty, &["status"]).expect("disjoint fields");
        assert_eq!(
            both["spec"]["items"].as_array().map(Vec::len),
            Some(2),
            "associative list items merge by key"
        );
        assert_eq!(both["spec"]["tags"], json!(["x", "y"]), "sets union");
        let c = json!({"spec": {"args": ["2"]}});
        let err =
            apply(Some(&both), &c, w("two"), false, ty, &[]).expect_err("atomic list owned by one");
        assert!(
            err.message().ends_with("conflict with \"one\": .spec.args"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn dropped_map_entries_and_labels_are_removed_unless_co_owned() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "services": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "replicas": {"type": "integer"}, "image": {"type": "string"}}}}
        }}}});
        let ty = TypeRef::custom_resource(&schema);
        let w = |m| Writer {
            manager: m,
            api_version: "cellmesh.io/v1alpha1",
            time: "t",
            subresource: "",
        };
        let config = |services: Value, labels: Value| json!({"metadata": {"name": "m", "labels": labels}, "spec": {"services": services}});
        let v1 = apply(
            None,
            &config(
                json!({"web": {"replicas": 1, "image": "w"}, "db": {"replicas": 2, "image": "d"}}),
                json!({"app": "m", "tier": "x"}),
            ),
            w("kubectl"),
            false,
            ty,
            &[],
        )
        .expect("applies");
        let owned = &v1["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(
            owned["f:spec"]["f:services"]["f:db"]["."].is_object(),
            "a map entry is owned itself: {owned}"
        );
        assert!(
            owned["f:spec"].get(".").is_none(),
            "declared fields are not: {owned}"
        );

        // Stop sending db and the tier label: both go.
        let smaller = config(
            json!({"web": {"replicas": 1, "image": "w"}}),
            json!({"app": "m"}),
        );
        let v2 = apply(Some(&v1), &smaller, w("kubectl"), false, ty, &[]).expect("applies");
        assert_eq!(
            v2["spec"]["services"],
            json!({"web": {"replicas": 1, "image": "w"}}),
            "{v2}"
        );
        assert_eq!(v2["metadata"]["labels"], json!({"app": "m"}), "{v2}");

        // Fields another manager also set stay: db's replicas and the tier label.
        let mut touched = v1.clone();
        touched["spec"]["services"]["db"]["replicas"] = json!(5);
        touched["metadata"]["labels"]["tier"] = json!("y");
        let shared = update(Some(&v1), &touched, w("scaler"), ty, &[]);
        let v3 = apply(Some(&shared), &smaller, w("kubectl"), false, ty, &[]).expect("applies");
        assert_eq!(
            v3["spec"]["services"]["db"],
            json!({"replicas": 5}),
            "only the applier's own field of db goes: {v3}"
        );
        assert_eq!(v3["metadata"]["labels"], json!({"app": "m", "tier": "y"}));
    }

    #[test]
    fn dropped_list_map_items_are_removed_by_key() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}
        }}}});
        let ty = TypeRef::custom_resource(&schema);
        let w = Writer {
            manager: "kubectl",
            api_version: "v1",
            time: "t",
            subresource: "",
        };
        let v1 = apply(
            None,
            &json!({"spec": {"ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}}),
            w,
            false,
            ty,
            &[],
        )
        .expect("applies");
        let v2 = apply(
            Some(&v1),
            &json!({"spec": {"ports": [{"name": "b", "port": 2}]}}),
            w,
            false,
            ty,
            &[],
        )
        .expect("applies");
        assert_eq!(v2["spec"]["ports"], json!([{"name": "b", "port": 2}]));
    }

    #[test]
    fn default_manager_from_user_agent() {
        assert_eq!(
            default_manager("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(default_manager("helm"), "helm");
    }
}
