//! The seam between the server and the API machinery it applies: selectors and patches.
//!
//! These semantics belong to the `cellmesh-apimachinery` crate (pure functions, built in
//! parallel). Until it lands, this module offers the subset the server needs to be usable:
//! `metadata.name`/`metadata.namespace` field selectors (what kubectl and kube-rs send to
//! watch one object), JSON patch and JSON merge patch through the `json-patch` crate. Every
//! other selector or patch type is refused with a clear 400/415 instead of being ignored.

use serde_json::Value;

use super::error::ApiError;

/// A compiled label + field selector.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// (field path, wanted value, equal?) terms, all of which must hold.
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    pub fn parse(
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        if let Some(labels) = label_selector.filter(|s| !s.trim().is_empty()) {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: label selectors are not supported by this server yet (labelSelector={labels:?})"
            )));
        }
        let mut fields = Vec::new();
        for term in field_selector
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            let path = path.trim();
            if !matches!(path, "metadata.name" | "metadata.namespace") {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path}"
                )));
            }
            fields.push((path.to_owned(), value.trim().to_owned(), equal));
        }
        Ok(Self { fields })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.fields.iter().all(|(path, wanted, equal)| {
            let field = path.trim_start_matches("metadata.");
            let actual = object
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == wanted) == *equal
        })
    }
}

/// The patch types of `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies a patch document to `current`, returning the patched object.
pub fn apply_patch(kind: PatchType, current: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(doc)
        }
        PatchType::Merge => {
            let doc: Value = serde_json::from_slice(patch)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !doc.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let mut result = current.clone();
            json_patch::merge(&mut result, &doc);
            Ok(result)
        }
        PatchType::StrategicMerge | PatchType::Apply => {
            Err(ApiError::unsupported_media_type(match kind {
                PatchType::StrategicMerge => "application/strategic-merge-patch+json",
                _ => "application/apply-patch+yaml",
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn name_field_selectors_match() {
        let filter = Filter::parse(None, Some("metadata.name=a")).unwrap();
        assert!(filter.matches(&json!({"metadata": {"name": "a"}})));
        assert!(!filter.matches(&json!({"metadata": {"name": "b"}})));
        let not = Filter::parse(None, Some("metadata.namespace!=x")).unwrap();
        assert!(not.matches(&json!({"metadata": {"namespace": "y"}})));
        assert!(Filter::parse(None, None).unwrap().matches(&json!({})));
    }

    #[test]
    fn unsupported_selectors_are_refused_not_ignored() {
        assert_eq!(Filter::parse(Some("app=web"), None).unwrap_err().code, 400);
        assert_eq!(
            Filter::parse(None, Some("spec.bogus=1")).unwrap_err().code,
            400
        );
    }

    #[test]
    fn merge_and_json_patches() {
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let merged = apply_patch(
            PatchType::Merge,
            &current,
            br#"{"metadata":{"labels":{"a":null,"c":"3"}}}"#,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let patched = apply_patch(
            PatchType::Json,
            &current,
            br#"[{"op":"replace","path":"/metadata/labels/a","value":"9"}]"#,
        )
        .unwrap();
        assert_eq!(patched["metadata"]["labels"]["a"], "9");
        let bad = apply_patch(
            PatchType::Json,
            &current,
            br#"[{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap_err();
        assert_eq!(bad.code, 422);
        assert_eq!(
            apply_patch(PatchType::StrategicMerge, &current, b"{}")
                .unwrap_err()
                .code,
            415
        );
    }
}
