//! The seam between the server and `cellmesh-apimachinery`, which holds Kubernetes'
//! semantics as pure functions: label/field selectors and patches are applied here with
//! the resource's group and kind, and their errors become our [`ApiError`]s.

use cellmesh_apimachinery::patch as am_patch;
use cellmesh_apimachinery::selector::{FieldSelector, LabelSelector, object_fields};
use cellmesh_apimachinery::{status, types};
use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::ResourceInfo;

pub use am_patch::PatchType;

/// A compiled label + field selector for one resource.
#[derive(Debug, Clone)]
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
    group: String,
    kind: String,
}

impl Filter {
    /// Parses the `labelSelector` and `fieldSelector` query values; field labels the kind
    /// does not support are refused (400) as Kubernetes does.
    pub fn parse(
        info: &ResourceInfo,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(label_selector.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {}", e.0)))?;
        let fields = FieldSelector::parse(field_selector.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.0))?;
        let group = if info.custom {
            String::new()
        } else {
            info.group.clone()
        };
        let supported = object_fields(&group, &info.kind, &json!({}), &[]);
        fields
            .check_supported(&|label| supported.contains_key(label))
            .map_err(|e| ApiError::bad_request(e.0))?;
        Ok(Self {
            labels,
            fields,
            group,
            kind: info.kind.clone(),
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches_object(object)
            && (self.fields.is_everything()
                || self
                    .fields
                    .matches(&object_fields(&self.group, &self.kind, object, &[])))
    }
}

/// Applies a JSON, merge or strategic merge patch to `current`. Server-side apply goes
/// through [`super::rest`]'s apply path, not here.
pub fn apply_patch(
    info: &ResourceInfo,
    kind: PatchType,
    current: &Value,
    body: &[u8],
) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let result = match kind {
        PatchType::Json => am_patch::json_patch(current, &patch),
        PatchType::Merge => am_patch::merge_patch(current, &patch),
        PatchType::StrategicMerge => {
            let api_version = info.api_version();
            let ty = (!info.custom)
                .then(|| types::TypeRef::builtin(&api_version, &info.kind))
                .flatten();
            match ty {
                Some(ty) => am_patch::strategic_merge_patch(current, &patch, ty),
                None => return Err(status::unsupported_patch_type().into()),
            }
        }
        PatchType::Apply => {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml",
            ));
        }
    };
    result.map_err(|e| e.to_api_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    fn info(group: &str, resource: &str) -> ResourceInfo {
        (*Registry::new().lookup(group, "v1", resource).unwrap()).clone()
    }

    #[test]
    fn label_and_field_selectors_match() {
        let pods = info("", "pods");
        let filter = Filter::parse(
            &pods,
            Some("app in (web),tier!=db"),
            Some("status.phase=Running"),
        )
        .unwrap();
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "status": {"phase": "Running"}});
        assert!(filter.matches(&pod));
        let pending = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "status": {"phase": "Pending"}});
        assert!(!filter.matches(&pending));
        let by_name = Filter::parse(&pods, None, Some("metadata.name=p")).unwrap();
        assert!(by_name.matches(&pod));
    }

    #[test]
    fn bad_selectors_are_400s() {
        let cms = info("", "configmaps");
        assert_eq!(
            Filter::parse(&cms, Some("a in (b"), None).unwrap_err().code,
            400
        );
        let unsupported = Filter::parse(&cms, None, Some("status.phase=x")).unwrap_err();
        assert_eq!(unsupported.code, 400);
        assert!(
            unsupported.message.contains("field label not supported"),
            "{}",
            unsupported.message
        );
    }

    #[test]
    fn patches_by_type() {
        let deploy = info("apps", "deployments");
        let current = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}});
        let smp = br#"{"spec":{"template":{"spec":{"containers":[{"name":"b","image":"z"}]}}}}"#;
        let patched = apply_patch(&deploy, PatchType::StrategicMerge, &current, smp).unwrap();
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers.as_array().unwrap().len(),
            2,
            "containers merge by name"
        );
        assert_eq!(containers[1]["image"], "z");
        let merged = apply_patch(
            &deploy,
            PatchType::Merge,
            &current,
            br#"{"metadata":{"labels":{"a":null}}}"#,
        )
        .unwrap();
        assert!(merged["metadata"]["labels"].get("a").is_none());
        let bad = apply_patch(
            &deploy,
            PatchType::Json,
            &current,
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap_err();
        assert_eq!(bad.code, 422);
        assert_eq!(
            apply_patch(&deploy, PatchType::Json, &current, b"{oops")
                .unwrap_err()
                .code,
            400
        );
        let mut custom = deploy.clone();
        custom.custom = true;
        assert_eq!(
            apply_patch(&custom, PatchType::StrategicMerge, &current, b"{}")
                .unwrap_err()
                .code,
            415
        );
    }
}
