//! Custom resources against their CRD version's schema, as the apiextensions-apiserver
//! admits them, and the `fieldValidation` directive.
//!
//! Contract, per write of a custom resource:
//! 1. [`prune`] the incoming body (or the patched object): unknown fields are dropped;
//!    with `fieldValidation=Strict` they are a 400 (`WorkModel in version "v1alpha1"
//!    cannot be handled as a WorkModel: strict decoding error: unknown field "spec.foo"`),
//!    with `Warn` (the server's default) each becomes a `Warning` header, with `Ignore`
//!    they go silently.
//! 2. [`default`] fills schema defaults (not on an apply configuration, whose applier must
//!    not own defaulted fields; the merged object is defaulted instead).
//! 3. [`validate`] the object about to be stored: OpenAPI schema, then CEL rules (with
//!    `oldSelf` on update). Failures are 422 `Invalid` with Kubernetes' field causes
//!    (`WorkModel.cellmesh.io "x" is invalid: spec.services.s0.seqLen: Invalid value: …`)
//!    and nothing is stored.

use cellmesh_apimachinery::field::FieldError;
use cellmesh_apimachinery::schema::CrdSchema;
use cellmesh_apimachinery::status::{self as am_status, GroupKind};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::objects;
use super::registry::ResourceInfo;

/// What to do with unknown fields (`fieldValidation` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    /// The server's default since Kubernetes 1.27.
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    /// Parses the query value; `options_kind` names the options in the error
    /// (`CreateOptions`, `UpdateOptions`, `PatchOptions`).
    pub fn parse(value: Option<&str>, options_kind: &str) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(Self::Warn),
            "Ignore" => Ok(Self::Ignore),
            "Strict" => Ok(Self::Strict),
            other => Err(am_status::invalid(
                &GroupKind::new("meta.k8s.io", options_kind),
                "",
                &[FieldError::not_supported(
                    "fieldValidation",
                    json!(other),
                    &["".into(), "Ignore".into(), "Strict".into(), "Warn".into()],
                )],
            )
            .into()),
        }
    }
}

/// The schema a custom resource's version is admitted with (`None` for built-ins).
pub fn schema_for(state: &AppState, info: &ResourceInfo) -> Option<CrdSchema> {
    super::crd::schema_of(state, info).map(CrdSchema::new)
}

/// Drops unknown fields; returns the warnings to send (`unknown field "spec.foo"`), or the
/// strict decoding error.
pub fn prune(
    info: &ResourceInfo,
    schema: &CrdSchema,
    object: &mut Value,
    directive: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let pruned = schema.prune(object);
    let unknown: Vec<String> = pruned
        .iter()
        .map(|path| format!("unknown field \"{path}\""))
        .collect();
    match directive {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(unknown),
        FieldValidation::Strict if unknown.is_empty() => Ok(Vec::new()),
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            unknown.join(", "),
            kind = info.kind,
            version = info.version,
        ))),
    }
}

/// Applies the schema's defaults.
pub fn default(schema: &CrdSchema, object: &mut Value) {
    schema.apply_defaults(object);
}

/// Validates the object about to be stored (`old` on update, for transition rules).
pub fn validate(
    info: &ResourceInfo,
    schema: &CrdSchema,
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let mut errors = schema.validate(object);
    if errors.is_empty() {
        errors = schema.validate_cel(object, old);
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(am_status::invalid(
        &GroupKind::new(&info.group, &info.kind),
        objects::name_of(object),
        &errors,
    )
    .into())
}

/// `Warning` header values for `warnings` (`299 - "unknown field \"spec.foo\""`).
pub fn warning_headers(warnings: &[String]) -> Vec<http::HeaderValue> {
    warnings
        .iter()
        .filter_map(|w| {
            let quoted = serde_json::to_string(w).ok()?;
            http::HeaderValue::from_str(&format!("299 - {quoted}")).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ResourceInfo {
        ResourceInfo {
            group: "cellmesh.io".into(),
            version: "v1alpha1".into(),
            resource: "workmodels".into(),
            singular: "workmodel".into(),
            kind: "WorkModel".into(),
            namespaced: true,
            verbs: Vec::new(),
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Vec::new(),
            tracks_generation: true,
            custom: true,
            printer_columns: Vec::new(),
            scale: None,
        }
    }

    fn schema() -> CrdSchema {
        CrdSchema::new(json!({
            "type": "object",
            "properties": {"spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "minimum": 1, "default": 1},
                    "name": {"type": "string"}
                },
                "x-kubernetes-validations": [
                    {"rule": "self.replicas <= 10", "message": "at most ten replicas"},
                    {"rule": "!has(oldSelf.name) || self.name == oldSelf.name", "message": "name is immutable"}
                ]
            }}
        }))
    }

    fn object(spec: Value) -> Value {
        json!({"apiVersion": "cellmesh.io/v1alpha1", "kind": "WorkModel", "metadata": {"name": "x"}, "spec": spec})
    }

    #[test]
    fn unknown_fields_by_directive() {
        let mut o = object(json!({"replicas": 2, "foo": 1}));
        let err = prune(&info(), &schema(), &mut o.clone(), FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "WorkModel in version \"v1alpha1\" cannot be handled as a WorkModel: strict decoding error: unknown field \"spec.foo\""
        );
        let warnings = prune(&info(), &schema(), &mut o.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"spec.foo\""]);
        assert_eq!(
            warning_headers(&warnings)[0],
            "299 - \"unknown field \\\"spec.foo\\\"\""
        );
        assert!(
            prune(&info(), &schema(), &mut o, FieldValidation::Ignore)
                .unwrap()
                .is_empty()
        );
        assert!(o["spec"].get("foo").is_none(), "pruned: {o}");
        assert!(FieldValidation::parse(Some("Loose"), "PatchOptions").is_err());
        assert_eq!(
            FieldValidation::parse(None, "PatchOptions").unwrap(),
            FieldValidation::Warn
        );
    }

    #[test]
    fn schema_and_cel_failures_are_invalid() {
        let mut defaulted = object(json!({}));
        default(&schema(), &mut defaulted);
        assert_eq!(defaulted["spec"]["replicas"], 1);
        assert!(validate(&info(), &schema(), &defaulted, None).is_ok());

        let err = validate(&info(), &schema(), &object(json!({"replicas": 0})), None).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.starts_with(
                "WorkModel.cellmesh.io \"x\" is invalid: spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"
            ),
            "{}",
            err.message
        );
        let cel = validate(&info(), &schema(), &object(json!({"replicas": 11})), None).unwrap_err();
        assert_eq!(
            cel.message,
            "WorkModel.cellmesh.io \"x\" is invalid: spec: Invalid value: \"object\": at most ten replicas"
        );
        let old = object(json!({"replicas": 1, "name": "a"}));
        let renamed = object(json!({"replicas": 1, "name": "b"}));
        assert!(validate(&info(), &schema(), &renamed, None).is_ok());
        let err = validate(&info(), &schema(), &renamed, Some(&old)).unwrap_err();
        assert!(err.message.contains("name is immutable"), "{}", err.message);
    }
}
