//! How the fields of an object merge: the type information strategic merge patch and
//! server-side apply need, for built-in kinds and for custom resources.
//!
//! A [`TypeRef`] describes one position in an object (the root, a field, a list item, a
//! map value). It answers which list type a list has (`atomic`, `set`, or `map` keyed by
//! `x-kubernetes-list-map-keys`), whether an object is atomic (`x-kubernetes-map-type`),
//! and for strategic merge patch the `x-kubernetes-patch-merge-key` and
//! `x-kubernetes-patch-strategy`. Positions nothing is known about are "deduced": objects
//! merge key by key, lists are atomic, as structured-merge-diff's deduced type.
//!
//! Built-in kinds come from `data/builtin-types.json`, generated from Kubernetes'
//! OpenAPI document by `data/gen_builtin_types.py` (see that script for how). Custom
//! resources use the structural `openAPIV3Schema` of their CRD version; their
//! `metadata` always has `ObjectMeta`'s semantics, as the apiserver gives it.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
struct Table {
    kinds: HashMap<String, Option<String>>,
    types: HashMap<String, TypeEntry>,
}

#[derive(Debug, Deserialize)]
struct TypeEntry {
    fields: HashMap<String, FieldEntry>,
    #[serde(rename = "mapType")]
    map_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldEntry {
    #[serde(rename = "ref")]
    reference: Option<String>,
    items: Option<String>,
    values: Option<String>,
    list_type: Option<String>,
    keys: Option<Vec<String>>,
    merge_key: Option<String>,
    strategy: Option<String>,
    map_type: Option<String>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../data/builtin-types.json"))
        .expect("embedded builtin-types.json is valid")
});

const OBJECT_META: &str = "meta.v1.ObjectMeta";

/// The list type of a list position (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// The whole list is one value (the default).
    Atomic,
    /// A set of scalars; each element is owned separately.
    Set,
    /// A list of objects identified by the values of these keys.
    Map(Vec<String>),
}

/// Strategic-merge-patch behaviour of a position (`x-kubernetes-patch-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PatchStrategy {
    /// `merge`: lists merge by the merge key (or as a set of scalars without one).
    pub merge: bool,
    /// `retainKeys`: fields missing from the patch are cleared (unions such as volume sources).
    pub retain_keys: bool,
    /// `replace`: the patch value replaces the whole field.
    pub replace: bool,
}

#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Deduced,
    Builtin {
        field: Option<&'a FieldEntry>,
        ty: Option<&'a TypeEntry>,
    },
    Schema(&'a Value),
    /// The root of a custom resource: `metadata` is ObjectMeta, the rest follows the schema.
    CustomRoot(&'a Value),
}

/// One position in an object's type; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct TypeRef<'a>(Node<'a>);

fn lookup(name: Option<&String>) -> Option<&'static TypeEntry> {
    name.and_then(|n| TABLE.types.get(n))
}

impl TypeRef<'static> {
    /// A position nothing is known about.
    pub fn deduced() -> Self {
        Self(Node::Deduced)
    }

    /// The root type of a built-in kind, e.g. (`apps/v1`, `Deployment`); `None` when the
    /// kind is not a built-in Kubernetes kind (then strategic merge patch is not supported).
    pub fn builtin(api_version: &str, kind: &str) -> Option<Self> {
        let entry = TABLE.kinds.get(&format!("{api_version}/{kind}"))?;
        Some(Self(Node::Builtin {
            field: None,
            ty: lookup(entry.as_ref()),
        }))
    }

    fn builtin_type(name: &str) -> Self {
        Self(Node::Builtin {
            field: None,
            ty: TABLE.types.get(name),
        })
    }
}

impl<'a> TypeRef<'a> {
    /// The root type of a custom resource whose CRD version has this structural
    /// `openAPIV3Schema` (as JSON).
    pub fn custom_resource(schema: &'a Value) -> Self {
        Self(Node::CustomRoot(schema))
    }

    /// A position described by a structural schema node.
    pub fn schema(schema: &'a Value) -> Self {
        Self(Node::Schema(schema))
    }

    /// The type of a field of this object position (or of any value, for maps).
    pub fn field(&self, name: &str) -> TypeRef<'a> {
        match self.0 {
            Node::Deduced => TypeRef(Node::Deduced),
            Node::CustomRoot(_) if name == "metadata" => TypeRef::builtin_type(OBJECT_META),
            Node::CustomRoot(s) | Node::Schema(s) => schema_field(s, name),
            Node::Builtin { field, ty } => {
                if let Some(values) = field.and_then(|f| f.values.as_ref()) {
                    return TypeRef(Node::Builtin {
                        field: None,
                        ty: lookup(Some(values)),
                    });
                }
                match ty.and_then(|t| t.fields.get(name)) {
                    Some(f) => TypeRef(Node::Builtin {
                        field: Some(f),
                        ty: lookup(f.reference.as_ref()),
                    }),
                    None => TypeRef(Node::Deduced),
                }
            }
        }
    }

    /// The type of the items of this list position.
    pub fn items(&self) -> TypeRef<'a> {
        match self.0 {
            Node::Deduced | Node::CustomRoot(_) => TypeRef(Node::Deduced),
            Node::Schema(s) => s
                .get("items")
                .map_or(TypeRef(Node::Deduced), |i| TypeRef(Node::Schema(i))),
            Node::Builtin { field, .. } => match field.and_then(|f| f.items.as_ref()) {
                Some(items) => TypeRef(Node::Builtin {
                    field: None,
                    ty: lookup(Some(items)),
                }),
                None => TypeRef(Node::Deduced),
            },
        }
    }

    /// The list type of this list position.
    pub fn list_type(&self) -> ListType {
        let (list_type, keys): (Option<&str>, Vec<String>) = match self.0 {
            Node::Deduced | Node::CustomRoot(_) => (None, Vec::new()),
            Node::Schema(s) => (
                s.get("x-kubernetes-list-type").and_then(Value::as_str),
                s.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Node::Builtin { field, .. } => (
                field.and_then(|f| f.list_type.as_deref()),
                field.and_then(|f| f.keys.clone()).unwrap_or_default(),
            ),
        };
        match list_type {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(keys),
            _ => ListType::Atomic,
        }
    }

    /// Whether this object position is atomic (`x-kubernetes-map-type: atomic`).
    pub fn is_atomic_object(&self) -> bool {
        match self.0 {
            Node::Deduced | Node::CustomRoot(_) => false,
            Node::Schema(s) => {
                s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
            }
            Node::Builtin { field, ty } => {
                field.and_then(|f| f.map_type.as_deref()) == Some("atomic")
                    || ty.and_then(|t| t.map_type.as_deref()) == Some("atomic")
            }
        }
    }

    /// The strategic-merge-patch merge key of this list position.
    /// Whether `name` is an entry of a map (`additionalProperties`, a built-in map of
    /// structs, an object of unknown type) rather than a declared field of a struct.
    /// structured-merge-diff owns a map entry as a field of its own (`f:db: {.: {}, …}`),
    /// so an applier that stops sending the entry removes all of it.
    pub fn is_map_entry(&self, name: &str) -> bool {
        match self.0 {
            Node::Deduced => true,
            Node::CustomRoot(_) => false,
            Node::Schema(s) => s.get("properties").and_then(|p| p.get(name)).is_none(),
            Node::Builtin { field, .. } => field.is_some_and(|f| f.values.is_some()),
        }
    }

    pub fn patch_merge_key(&self) -> Option<&'a str> {
        match self.0 {
            Node::Builtin { field: Some(f), .. } => f.merge_key.as_deref(),
            _ => None,
        }
    }

    /// The strategic-merge-patch strategy of this position.
    pub fn patch_strategy(&self) -> PatchStrategy {
        let Node::Builtin { field: Some(f), .. } = self.0 else {
            return PatchStrategy::default();
        };
        let mut s = PatchStrategy::default();
        for part in f.strategy.as_deref().unwrap_or("").split(',') {
            match part.trim() {
                "merge" => s.merge = true,
                "retainKeys" => s.retain_keys = true,
                "replace" => s.replace = true,
                _ => {}
            }
        }
        s
    }
}

fn schema_field<'a>(s: &'a Value, name: &str) -> TypeRef<'a> {
    if let Some(p) = s.get("properties").and_then(|p| p.get(name)) {
        return TypeRef(Node::Schema(p));
    }
    match s.get("additionalProperties") {
        Some(ap @ Value::Object(_)) => TypeRef(Node::Schema(ap)),
        _ => TypeRef(Node::Deduced),
    }
}

/// Whether a built-in kind is known, i.e. strategic merge patch applies to it. Custom
/// resources (and unknown kinds) get 415 for `application/strategic-merge-patch+json`.
pub fn supports_strategic_merge(api_version: &str, kind: &str) -> bool {
    TABLE.kinds.contains_key(&format!("{api_version}/{kind}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pod_spec_semantics_come_from_openapi() {
        let pod = TypeRef::builtin("v1", "Pod").expect("Pod is built in");
        let containers = pod.field("spec").field("containers");
        assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
        assert_eq!(containers.patch_merge_key(), Some("name"));
        assert!(containers.patch_strategy().merge);
        let ports = containers.items().field("ports");
        assert_eq!(
            ports.list_type(),
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(ports.patch_merge_key(), Some("containerPort"));
        assert_eq!(
            containers.items().field("env").patch_merge_key(),
            Some("name")
        );
        assert_eq!(
            containers.items().field("volumeMounts").patch_merge_key(),
            Some("mountPath")
        );
        assert_eq!(
            containers.items().field("args").list_type(),
            ListType::Atomic
        );
        let volumes = pod.field("spec").field("volumes");
        assert!(volumes.patch_strategy().retain_keys && volumes.patch_strategy().merge);
        // Tolerations have no merge key in Kubernetes: SMP replaces them, SSA treats them atomically.
        assert_eq!(
            pod.field("spec").field("tolerations").patch_merge_key(),
            None
        );
        assert!(pod.field("spec").field("nodeSelector").is_atomic_object());
        assert_eq!(
            pod.field("status").field("conditions").patch_merge_key(),
            Some("type")
        );
    }

    #[test]
    fn metadata_semantics() {
        let svc = TypeRef::builtin("v1", "Service").expect("built in");
        let meta = svc.field("metadata");
        assert_eq!(meta.field("finalizers").list_type(), ListType::Set);
        assert!(meta.field("finalizers").patch_strategy().merge);
        assert_eq!(meta.field("ownerReferences").patch_merge_key(), Some("uid"));
        assert_eq!(
            svc.field("spec").field("ports").patch_merge_key(),
            Some("port")
        );
        assert_eq!(
            meta.field("labels").field("app").list_type(),
            ListType::Atomic
        );
    }

    #[test]
    fn map_values_are_typed() {
        // ConfigMap data is a map of strings; Secret too; deployments' template labels.
        let d = TypeRef::builtin("apps/v1", "Deployment").expect("built in");
        let c = d
            .field("spec")
            .field("template")
            .field("spec")
            .field("containers");
        assert_eq!(c.patch_merge_key(), Some("name"));
        assert!(
            d.field("spec")
                .field("strategy")
                .patch_strategy()
                .retain_keys
        );
    }

    #[test]
    fn custom_resources_use_schema_and_object_meta() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                              "items": {"type": "object", "properties": {"id": {"type": "string"}}}},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                    "selector": {"type": "object", "x-kubernetes-map-type": "atomic"},
                    "services": {"type": "object", "additionalProperties": {"type": "object", "properties": {"x": {"type": "array"}}}}
                }}
            }
        });
        let t = TypeRef::custom_resource(&schema);
        assert_eq!(
            t.field("spec").field("items").list_type(),
            ListType::Map(vec!["id".into()])
        );
        assert_eq!(t.field("spec").field("tags").list_type(), ListType::Set);
        assert!(t.field("spec").field("selector").is_atomic_object());
        assert_eq!(
            t.field("spec")
                .field("services")
                .field("s0")
                .field("x")
                .list_type(),
            ListType::Atomic
        );
        assert_eq!(
            t.field("metadata").field("finalizers").list_type(),
            ListType::Set
        );
        assert_eq!(
            t.field("spec").field("unknown").list_type(),
            ListType::Atomic
        );
    }

    #[test]
    fn smp_support() {
        assert!(supports_strategic_merge("v1", "Pod"));
        assert!(supports_strategic_merge("apps/v1", "Deployment"));
        assert!(supports_strategic_merge("v1", "ConfigMap"));
        assert!(supports_strategic_merge("coordination.k8s.io/v1", "Lease"));
        assert!(!supports_strategic_merge(
            "cellmesh.io/v1alpha1",
            "WorkModel"
        ));
    }
}
