//! OpenAPI v3 (`/openapi/v3` and `/openapi/v3/<api|apis/group>/<version>`).
//!
//! What clients read from it:
//! - kubectl checks a group-version document for a PATCH operation carrying
//!   `x-kubernetes-group-version-kind` and a `fieldValidation` parameter; finding it, it
//!   leaves validation to the server instead of downloading schemas for client-side checks.
//!   The PATCH operations deliberately declare no request body: kubectl then computes
//!   strategic-merge patches from its compiled-in types (whose patch strategies and merge
//!   keys k8s-openapi's schemas do not carry) rather than from this document;
//! - `kubectl explain` reads `components.schemas` by `x-kubernetes-group-version-kind`:
//!   built-in kinds get k8s-openapi's schemas (generated with schemars' OpenAPI 3 settings,
//!   `$ref`s under `#/components/schemas/` as Kubernetes publishes them), custom resources
//!   their CRD's `openAPIV3Schema`.
//!
//! - `/openapi/v2` is a valid Swagger 2.0 document without paths or definitions (JSON, or
//!   gnostic's protobuf `openapi_v2.Document`, which is all client-go's `OpenAPISchema()`
//!   accepts). kubectl reads it only where v3 gives no answer: for a custom resource whose
//!   CRD is created by the same `kubectl apply -f` (its group-version is in neither
//!   document yet) it falls back to v2 schema validation, finds no schema for the kind and
//!   leaves validation to the server — as against a real cluster, where such a kind is not
//!   in v2 either. Without the document that fallback fails ("the server could not find
//!   the requested resource") and kubectl demands `--validate=false`. With no v2 schemas,
//!   kubectl's client-side apply computes strategic-merge patches from its compiled-in
//!   types, as it does with the v3 documents.
//!
//! Built-in documents never change while the process runs, so each is rendered once, on
//! first request, and kept as text with its hash (`builtin_document`); documents of groups
//! with custom resources are rendered per request from the stored CRDs.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::registry::{Registry, ResourceInfo};

/// A rendered group-version document.
pub struct Document {
    pub text: bytes::Bytes,
    pub hash: String,
}

impl Document {
    fn new(doc: &Value) -> Self {
        let text = doc.to_string();
        Self {
            hash: hash_of(&text),
            text: text.into(),
        }
    }
}

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

/// Adds `T`'s schema (and everything it references) to the generator's definitions.
fn schema<T: schemars::JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

type SchemaFn = fn(&mut SchemaGenerator) -> String;

/// The k8s-openapi type of every built-in kind the registry serves, by (group, kind).
const BUILTIN_SCHEMAS: &[(&str, &str, SchemaFn)] = {
    use k8s_openapi::api::{
        apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        events::v1 as events, rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    &[
        ("", "Namespace", schema::<core::Namespace>),
        ("", "Pod", schema::<core::Pod>),
        ("", "Service", schema::<core::Service>),
        ("", "Endpoints", schema::<core::Endpoints>),
        ("", "ConfigMap", schema::<core::ConfigMap>),
        ("", "Secret", schema::<core::Secret>),
        ("", "ServiceAccount", schema::<core::ServiceAccount>),
        ("", "Event", schema::<core::Event>),
        ("", "Node", schema::<core::Node>),
        (
            "discovery.k8s.io",
            "EndpointSlice",
            schema::<discovery::EndpointSlice>,
        ),
        ("events.k8s.io", "Event", schema::<events::Event>),
        (
            "coordination.k8s.io",
            "Lease",
            schema::<coordination::Lease>,
        ),
        ("apps", "Deployment", schema::<apps::Deployment>),
        ("apps", "ReplicaSet", schema::<apps::ReplicaSet>),
        (
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            schema::<authz::SelfSubjectAccessReview>,
        ),
        (
            "authorization.k8s.io",
            "SelfSubjectRulesReview",
            schema::<authz::SelfSubjectRulesReview>,
        ),
        (
            "authentication.k8s.io",
            "SelfSubjectReview",
            schema::<authn::SelfSubjectReview>,
        ),
        ("rbac.authorization.k8s.io", "Role", schema::<rbac::Role>),
        (
            "rbac.authorization.k8s.io",
            "RoleBinding",
            schema::<rbac::RoleBinding>,
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRole",
            schema::<rbac::ClusterRole>,
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            schema::<rbac::ClusterRoleBinding>,
        ),
        (
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            schema::<apiextensions::CustomResourceDefinition>,
        ),
    ]
};

/// Schemas of one document: each kind's schema name and all definitions they reference.
struct Schemas {
    generator: SchemaGenerator,
    names: HashMap<String, String>,
}

impl Schemas {
    fn new() -> Self {
        Self {
            generator: SchemaSettings::openapi3()
                .with(|s| s.meta_schema = None)
                .into_generator(),
            names: HashMap::new(),
        }
    }

    /// The `components.schemas` name of a kind, adding its schema on first use.
    fn name_of(&mut self, info: &ResourceInfo) -> String {
        if let Some(name) = self.names.get(&info.kind) {
            return name.clone();
        }
        let builtin = (!info.custom && info.version == "v1")
            .then(|| {
                BUILTIN_SCHEMAS
                    .iter()
                    .find(|(group, kind, _)| *group == info.group && *kind == info.kind)
            })
            .flatten();
        let name = match builtin {
            Some((_, _, add)) => add(&mut self.generator),
            None => schema_name(info),
        };
        self.names.insert(info.kind.clone(), name.clone());
        name
    }

    fn into_definitions(mut self) -> Map<String, Value> {
        self.generator.take_definitions(true)
    }
}

/// Rendered built-in documents by group-version path (built on first request).
static BUILTIN_DOCUMENTS: LazyLock<Mutex<HashMap<String, Arc<Document>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The document of one group-version; built-in ones come from the process-wide cache.
pub fn document(
    registry: &Registry,
    group: &str,
    version: &str,
    crd_schemas: &dyn Fn(&ResourceInfo) -> Option<Value>,
) -> Arc<Document> {
    let infos: Vec<Arc<ResourceInfo>> = registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if infos.iter().any(|r| r.custom) {
        return Arc::new(Document::new(&render(&infos, group, version, crd_schemas)));
    }
    let path = gv_path(group, version);
    let mut cache = BUILTIN_DOCUMENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    cache
        .entry(path)
        .or_insert_with(|| Arc::new(Document::new(&render(&infos, group, version, crd_schemas))))
        .clone()
}

pub fn root(registry: &Registry, crd_schemas: &dyn Fn(&ResourceInfo) -> Option<Value>) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let doc = document(registry, &group, &version, crd_schemas);
            let path = gv_path(&group, &version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
            );
        }
    }
    json!({"paths": paths})
}

/// The media type of the protobuf form of the v2 document, as kube-openapi answers it
/// (clients ask for the older `…spec.v2@v1.0+protobuf`, whose `@` Go's `mime` rejects in
/// a Content-Type).
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The `/openapi/v2` document as (content type, body): protobuf when `accept` names
/// gnostic's media type, JSON otherwise.
pub fn v2_document(accept: &str, kubernetes_version: &str) -> (&'static str, bytes::Bytes) {
    const TITLE: &str = "Kubernetes";
    if accept.contains("application/com.github.proto-openapi.spec.v2") {
        // openapi_v2.Document { swagger = 1; info = 2 }, Info { title = 1; version = 2 }.
        let mut info = Vec::new();
        put_string(&mut info, 1, TITLE);
        put_string(&mut info, 2, kubernetes_version);
        let mut doc = Vec::new();
        put_string(&mut doc, 1, "2.0");
        put_bytes(&mut doc, 2, &info);
        return (V2_PROTOBUF, doc.into());
    }
    let doc = json!({
        "swagger": "2.0",
        "info": {"title": TITLE, "version": kubernetes_version},
        "paths": {},
        "definitions": {},
    });
    ("application/json", doc.to_string().into())
}

/// Appends a length-delimited protobuf field (wire type 2).
fn put_bytes(out: &mut Vec<u8>, field: u8, value: &[u8]) {
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn put_string(out: &mut Vec<u8>, field: u8, value: &str) {
    put_bytes(out, field, value.as_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
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

/// Renders the document of one group-version serving `infos`.
fn render(
    infos: &[Arc<ResourceInfo>],
    group: &str,
    version: &str,
    crd_schemas: &dyn Fn(&ResourceInfo) -> Option<Value>,
) -> Value {
    let mut paths = Map::new();
    let mut builtin = Schemas::new();
    let mut custom = Map::new();
    let mut kinds = Vec::new();
    for info in infos {
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
        let name = builtin.name_of(info);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
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
        if !builtin.generator.definitions().contains_key(&name) {
            let schema = crd_schemas(info).unwrap_or_else(
                || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
            custom.insert(name.clone(), schema);
        }
        kinds.push((name, gvk));
    }
    let mut schemas = builtin.into_definitions();
    schemas.extend(custom);
    for (name, gvk) in kinds {
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
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
    fn v2_is_an_empty_swagger_document_in_json_or_protobuf() {
        let (content_type, body) = v2_document("application/json", "v1.33.0");
        assert_eq!(content_type, "application/json");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        assert_eq!(doc["definitions"], json!({}));
        let (content_type, body) = v2_document(
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
            "v1.33.0",
        );
        assert_eq!(content_type, V2_PROTOBUF);
        // swagger = "2.0"; info = { title = "Kubernetes"; version = "v1.33.0" }.
        assert_eq!(
            &body[..],
            b"\x0a\x032.0\x12\x15\x0a\x0aKubernetes\x12\x07v1.33.0"
        );
    }

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

    fn parsed(group: &str, version: &str) -> Value {
        let doc = document(&Registry::new(), group, version, &|_| None);
        serde_json::from_slice(&doc.text).unwrap()
    }

    #[test]
    fn patch_operations_advertise_field_validation_without_a_body() {
        let doc = parsed("apps", "v1");
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
        // A request body would make kubectl build strategic-merge patches from these
        // schemas, which lack patch strategies and merge keys.
        assert!(patch.get("requestBody").is_none());
    }

    #[test]
    fn builtin_kinds_have_their_schemas_with_references_resolvable() {
        let doc = parsed("apps", "v1");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        // A described reference is wrapped in allOf, as Kubernetes publishes it.
        let spec = &deployment["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(spec["description"].as_str().unwrap().contains("desired"));
        // Every reference in the document names a schema of the document.
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling reference {name}");
        }
        assert!(schemas.contains_key("io.k8s.api.core.v1.Container"));
    }

    #[test]
    fn builtin_documents_are_rendered_once() {
        let first = document(&Registry::new(), "", "v1", &|_| None);
        let second = document(&Registry::new(), "", "v1", &|_| None);
        assert!(Arc::ptr_eq(&first, &second));
        let pod: Value = serde_json::from_slice(&first.text).unwrap();
        assert!(
            pod["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
                ["items"]
                .is_object()
        );
    }

    #[test]
    fn custom_resources_use_their_crd_schema() {
        let registry = Registry::new();
        let mut info = (*registry.lookup("apps", "v1", "deployments").unwrap()).clone();
        info.group = "cellmesh.io".into();
        info.version = "v1alpha1".into();
        info.kind = "WorkModel".into();
        info.resource = "workmodels".into();
        info.custom = true;
        registry.set_custom("workmodels.cellmesh.io", vec![info]);
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let doc = document(&registry, "cellmesh.io", "v1alpha1", &|_| {
            Some(schema.clone())
        });
        let doc: Value = serde_json::from_slice(&doc.text).unwrap();
        let workmodel = &doc["components"]["schemas"]["io.cellmesh.v1alpha1.WorkModel"];
        assert_eq!(workmodel["properties"]["spec"]["type"], "object");
        assert_eq!(
            workmodel["x-kubernetes-group-version-kind"][0]["kind"],
            "WorkModel"
        );
    }
}
