//! API errors and their `metav1.Status` bodies.
//!
//! Every failure a client can see leaves the server as a `Status` object with the HTTP code,
//! `reason` and message wording Kubernetes uses, because clients (kubectl, client-go,
//! kube-rs) print those messages and branch on the reasons.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// A failed API request: rendered as a `metav1.Status` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: Cow<'static, str>,
    pub message: String,
    pub details: Option<Value>,
}

/// The group-qualified resource an error is about (`pods`, `deployments.apps`).
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut details = json!({ "name": name, "kind": resource });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    details
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
            message: message.into(),
            details: None,
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(details(group, resource, name))
    }

    /// A path that names no resource we serve.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(details(group, resource, name))
    }

    /// Optimistic-concurrency failure: the client's resourceVersion is stale.
    pub fn conflict_modified(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        )
        .with_details(details(group, resource, name))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 Invalid with field causes: `Kind.group "name" is invalid: field: Type: detail`
    /// (kubectl prints it as `The Kind "name" is invalid: …`).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: &[FieldError]) -> Self {
        let summary = causes.iter().map(FieldError::to_string).collect::<Vec<_>>();
        let summary = if summary.len() == 1 {
            summary.concat()
        } else {
            format!("[{}]", summary.join(", "))
        };
        let mut details = json!({
            "name": name,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason,
                "message": format!("{}: {}", c.kind, c.detail),
                "field": c.field,
            })).collect::<Vec<_>>(),
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {summary}",
                qualified(group, kind)
            ),
        )
        .with_details(details)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// A watch or list from a resourceVersion the event window no longer holds.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl From<cellmesh_apimachinery::status::ApiError> for ApiError {
    fn from(err: cellmesh_apimachinery::status::ApiError) -> Self {
        let body = err.to_json();
        Self {
            code: err.code(),
            reason: Cow::Owned(err.reason().to_owned()),
            message: err.message().to_owned(),
            details: body.get("details").cloned(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, axum::Json(self.status())).into_response();
        if self.code == 401 {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"cellmesh-local\""),
            );
        }
        response
    }
}

/// One field error of an `Invalid` Status (`metadata.name: Required value: …`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    /// Kubernetes' cause type: `FieldValueRequired`, `FieldValueInvalid`, …
    pub reason: &'static str,
    /// The human form of the type: `Required value`, `Invalid value`, …
    pub kind: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueRequired",
            kind: "Required value",
            detail: detail.to_owned(),
        }
    }

    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueInvalid",
            kind: "Invalid value",
            detail: format!("{value}: {detail}"),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            field: field.to_owned(),
            reason: "FieldValueForbidden",
            kind: "Forbidden",
            detail: detail.to_owned(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.field, self.kind, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_group_qualified_resource() {
        let err = ApiError::not_found("apps", "deployments", "web");
        assert_eq!(err.message, "deployments.apps \"web\" not found");
        let body = err.status();
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(body["code"], 404);
        assert_eq!(body["details"]["group"], "apps");
        let core = ApiError::not_found("", "pods", "p");
        assert_eq!(core.message, "pods \"p\" not found");
        assert!(core.status()["details"].get("group").is_none());
    }

    #[test]
    fn conflict_uses_kubernetes_wording() {
        let err = ApiError::conflict_modified("", "configmaps", "c");
        assert_eq!(
            err.message,
            "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }

    #[test]
    fn invalid_lists_causes() {
        let one = ApiError::invalid(
            "",
            "ConfigMap",
            "x",
            &[FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        );
        assert_eq!(
            one.message,
            "ConfigMap \"x\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(
            one.status()["details"]["causes"][0]["field"],
            "metadata.name"
        );
        let two = ApiError::invalid(
            "",
            "Pod",
            "p",
            &[
                FieldError::required("a", "x"),
                FieldError::invalid("b", &json!(1), "y"),
            ],
        );
        assert_eq!(
            two.message,
            "Pod \"p\" is invalid: [a: Required value: x, b: Invalid value: 1: y]"
        );
        let grouped =
            ApiError::invalid("apps", "Deployment", "d", &[FieldError::required("a", "x")]);
        assert_eq!(
            grouped.message,
            "Deployment.apps \"d\" is invalid: a: Required value: x"
        );
    }
}
