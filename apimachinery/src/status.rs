//! `metav1.Status` error bodies with Kubernetes' reasons, codes and messages
//! (`k8s.io/apimachinery/pkg/api/errors`).
//!
//! Every constructor returns an [`ApiError`]: an `std::error::Error` whose
//! [`ApiError::code`] is the HTTP status to answer with and whose
//! [`ApiError::to_json`] is the exact body (`{"kind":"Status","apiVersion":"v1",
//! "metadata":{},"status":"Failure","message":…,"reason":…,"details":…,"code":…}`).
//! Messages are worded as Kubernetes words them because clients print them verbatim
//! (`Error from server (NotFound): pods "x" not found`).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ListMeta, Status, StatusCause, StatusDetails,
};
use serde_json::Value;

use crate::field::{FieldError, aggregate_message};

/// A resource in an API group, e.g. `pods` (core) or `deployments.apps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupResource {
    /// API group, empty for the core group.
    pub group: String,
    /// Plural resource name, possibly with a subresource stripped (`pods`).
    pub resource: String,
}

impl GroupResource {
    /// Builds a group/resource pair.
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

impl fmt::Display for GroupResource {
    /// `pods` for the core group, `deployments.apps` otherwise (Go's `GroupResource.String`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// A kind in an API group, e.g. `Pod` or `WorkModel.cellmesh.io`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupKind {
    /// API group, empty for the core group.
    pub group: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
}

impl GroupKind {
    /// Builds a group/kind pair.
    pub fn new(group: &str, kind: &str) -> Self {
        Self {
            group: group.to_owned(),
            kind: kind.to_owned(),
        }
    }
}

impl fmt::Display for GroupKind {
    /// `Pod` for the core group, `Deployment.apps` otherwise (Go's `GroupKind.String`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// The `reason` values of `metav1.Status` (`metav1.StatusReason*`).
pub mod reason {
    /// 401.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// 403.
    pub const FORBIDDEN: &str = "Forbidden";
    /// 404.
    pub const NOT_FOUND: &str = "NotFound";
    /// 409 on create.
    pub const ALREADY_EXISTS: &str = "AlreadyExists";
    /// 409 on update / apply conflicts.
    pub const CONFLICT: &str = "Conflict";
    /// 410.
    pub const GONE: &str = "Gone";
    /// 410 for a too old resourceVersion.
    pub const EXPIRED: &str = "Expired";
    /// 422.
    pub const INVALID: &str = "Invalid";
    /// 400.
    pub const BAD_REQUEST: &str = "BadRequest";
    /// 405.
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    /// 406.
    pub const NOT_ACCEPTABLE: &str = "NotAcceptable";
    /// 413.
    pub const REQUEST_ENTITY_TOO_LARGE: &str = "RequestEntityTooLarge";
    /// 415.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UnsupportedMediaType";
    /// 429.
    pub const TOO_MANY_REQUESTS: &str = "TooManyRequests";
    /// 500.
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// 500 (server-side timeout of one operation).
    pub const SERVER_TIMEOUT: &str = "ServerTimeout";
    /// 503.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    /// 504.
    pub const TIMEOUT: &str = "Timeout";
}

/// A failed API request, carrying the `metav1.Status` to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Status);

impl ApiError {
    fn build(code: u16, reason: &str, message: String, details: Option<StatusDetails>) -> Self {
        Self(Status {
            code: Some(i32::from(code)),
            details,
            message: Some(message),
            metadata: ListMeta::default(),
            reason: Some(reason.to_owned()),
            status: Some("Failure".to_owned()),
        })
    }

    /// The HTTP status code to answer with.
    pub fn code(&self) -> u16 {
        self.0
            .code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500)
    }

    /// The `reason` (`NotFound`, `Invalid`, …).
    pub fn reason(&self) -> &str {
        self.0.reason.as_deref().unwrap_or("")
    }

    /// The human message.
    pub fn message(&self) -> &str {
        self.0.message.as_deref().unwrap_or("")
    }

    /// The typed Status.
    pub fn status(&self) -> &Status {
        &self.0
    }

    /// Consumes the error, giving the typed Status.
    pub fn into_status(self) -> Status {
        self.0
    }

    /// The JSON body (`kind: Status`, `apiVersion: v1`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ApiError {}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        Self(s)
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn resource_details(gr: &GroupResource, name: &str) -> Option<StatusDetails> {
    Some(StatusDetails {
        group: non_empty(&gr.group),
        kind: non_empty(&gr.resource),
        name: non_empty(name),
        ..StatusDetails::default()
    })
}

/// The success body Kubernetes returns for some deletes (`{"status":"Success"}`).
pub fn success(gr: &GroupResource, name: &str, uid: Option<&str>) -> Status {
    let mut details = resource_details(gr, name).unwrap_or_default();
    details.uid = uid.map(str::to_owned);
    Status {
        status: Some("Success".to_owned()),
        details: Some(details),
        ..Status::default()
    }
}

/// 404 `pods "x" not found`.
pub fn not_found(gr: &GroupResource, name: &str) -> ApiError {
    ApiError::build(
        404,
        reason::NOT_FOUND,
        format!("{gr} {} not found", quote(name)),
        resource_details(gr, name),
    )
}

/// 404 for a path that names no resource: `the server could not find the requested resource`.
pub fn not_found_path() -> ApiError {
    ApiError::build(
        404,
        reason::NOT_FOUND,
        "the server could not find the requested resource".to_owned(),
        Some(StatusDetails::default()),
    )
}

/// 409 `pods "x" already exists`.
pub fn already_exists(gr: &GroupResource, name: &str) -> ApiError {
    ApiError::build(
        409,
        reason::ALREADY_EXISTS,
        format!("{gr} {} already exists", quote(name)),
        resource_details(gr, name),
    )
}

/// 409 `Operation cannot be fulfilled on pods "x": <cause>`.
pub fn conflict(gr: &GroupResource, name: &str, cause: &str) -> ApiError {
    ApiError::build(
        409,
        reason::CONFLICT,
        format!(
            "Operation cannot be fulfilled on {gr} {}: {cause}",
            quote(name)
        ),
        resource_details(gr, name),
    )
}

/// The cause text of an optimistic-concurrency conflict (stale `resourceVersion`).
pub const OBJECT_MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// 409 for a stale `resourceVersion` on update.
pub fn conflict_modified(gr: &GroupResource, name: &str) -> ApiError {
    conflict(gr, name, OBJECT_MODIFIED)
}

/// 409 for a server-side apply conflict (see [`crate::ssa::ApplyConflicts`]).
pub fn apply_conflict(causes: Vec<StatusCause>, message: String) -> ApiError {
    ApiError::build(
        409,
        reason::CONFLICT,
        message,
        Some(StatusDetails {
            causes: Some(causes),
            ..StatusDetails::default()
        }),
    )
}

/// 422 `WorkModel.cellmesh.io "x" is invalid: <errors>` with one cause per field error.
pub fn invalid(gk: &GroupKind, name: &str, errors: &[FieldError]) -> ApiError {
    let causes = errors
        .iter()
        .map(|e| StatusCause {
            field: Some(e.field.clone()),
            message: Some(e.body()),
            reason: Some(e.kind.cause_type().to_owned()),
        })
        .collect();
    let message = if errors.is_empty() {
        format!("{gk} {} is invalid", quote(name))
    } else {
        format!(
            "{gk} {} is invalid: {}",
            quote(name),
            aggregate_message(errors)
        )
    };
    ApiError::build(
        422,
        reason::INVALID,
        message,
        Some(StatusDetails {
            group: non_empty(&gk.group),
            kind: non_empty(&gk.kind),
            name: non_empty(name),
            causes: Some(causes),
            ..StatusDetails::default()
        }),
    )
}

/// 400 with the given message (malformed body, bad query parameter, bad selector …).
pub fn bad_request(message: &str) -> ApiError {
    ApiError::build(400, reason::BAD_REQUEST, message.to_owned(), None)
}

/// 401 `Unauthorized` (the message Kubernetes sends for a missing or bad token).
pub fn unauthorized() -> ApiError {
    ApiError::build(401, reason::UNAUTHORIZED, "Unauthorized".to_owned(), None)
}

/// 403 `pods "x" is forbidden: <reason>` (`pods is forbidden: …` without a name,
/// `forbidden: …` without a resource, e.g. for non-resource URLs).
pub fn forbidden(gr: &GroupResource, name: &str, why: &str) -> ApiError {
    let message = if gr.group.is_empty() && gr.resource.is_empty() {
        format!("forbidden: {why}")
    } else if name.is_empty() {
        format!("{gr} is forbidden: {why}")
    } else {
        format!("{gr} {} is forbidden: {why}", quote(name))
    };
    ApiError::build(403, reason::FORBIDDEN, message, resource_details(gr, name))
}

/// 405 `<action> is not supported on resources of kind "pods"`.
pub fn method_not_supported(gr: &GroupResource, action: &str) -> ApiError {
    ApiError::build(
        405,
        reason::METHOD_NOT_ALLOWED,
        format!(
            "{action} is not supported on resources of kind {}",
            quote(&gr.to_string())
        ),
        Some(StatusDetails {
            group: non_empty(&gr.group),
            kind: non_empty(&gr.resource),
            ..StatusDetails::default()
        }),
    )
}

/// 405 for a verb the endpoint never serves:
/// `the server does not allow this method on the requested resource`.
pub fn method_not_allowed() -> ApiError {
    ApiError::build(
        405,
        reason::METHOD_NOT_ALLOWED,
        "the server does not allow this method on the requested resource".to_owned(),
        Some(StatusDetails::default()),
    )
}

/// 410 `Gone` with the given message.
pub fn gone(message: &str) -> ApiError {
    ApiError::build(410, reason::GONE, message.to_owned(), None)
}

/// 410 `Expired` with the given message (Go's `NewResourceExpired`).
pub fn resource_expired(message: &str) -> ApiError {
    ApiError::build(410, reason::EXPIRED, message.to_owned(), None)
}

/// 410 `Expired` for a list/watch from a compacted resourceVersion:
/// `too old resource version: <requested> (<oldest available>)`.
pub fn too_old_resource_version(requested: u64, oldest: u64) -> ApiError {
    resource_expired(&format!("too old resource version: {requested} ({oldest})"))
}

/// 415 for an unknown request body type:
/// `the body of the request was in an unknown format - accepted media types include: a, b`.
pub fn unsupported_media_type(accepted: &[&str]) -> ApiError {
    ApiError::build(
        415,
        reason::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
        None,
    )
}

/// 415 for a patch type the resource does not support (strategic merge on a custom
/// resource): `the body of the request was in an unknown format - accepted media types
/// include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml`.
pub fn unsupported_patch_type() -> ApiError {
    unsupported_media_type(&[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ])
}

/// 406 `the server was unable to respond with a content type that the client supports`
/// style message, naming the types the server can produce.
pub fn not_acceptable(produced: &[&str]) -> ApiError {
    ApiError::build(
        406,
        reason::NOT_ACCEPTABLE,
        format!(
            "only the following media types are accepted: {}",
            produced.join(", ")
        ),
        None,
    )
}

/// 413 `Request entity too large: limit is 3145728`.
pub fn request_entity_too_large(limit_bytes: usize) -> ApiError {
    ApiError::build(
        413,
        reason::REQUEST_ENTITY_TOO_LARGE,
        format!("Request entity too large: limit is {limit_bytes}"),
        None,
    )
}

/// 429 `Too many requests: <message>` with `details.retryAfterSeconds`.
pub fn too_many_requests(message: &str, retry_after_seconds: i32) -> ApiError {
    ApiError::build(
        429,
        reason::TOO_MANY_REQUESTS,
        format!("Too many requests: {message}"),
        Some(StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..StatusDetails::default()
        }),
    )
}

/// 500 `Internal error occurred: <err>`.
pub fn internal_error(err: &str) -> ApiError {
    ApiError::build(
        500,
        reason::INTERNAL_ERROR,
        format!("Internal error occurred: {err}"),
        Some(StatusDetails {
            causes: Some(vec![StatusCause {
                message: Some(err.to_owned()),
                ..StatusCause::default()
            }]),
            ..StatusDetails::default()
        }),
    )
}

/// 503 with the given message.
pub fn service_unavailable(message: &str) -> ApiError {
    ApiError::build(503, reason::SERVICE_UNAVAILABLE, message.to_owned(), None)
}

/// 504 `Timeout: <message>`.
pub fn timeout(message: &str, retry_after_seconds: i32) -> ApiError {
    ApiError::build(
        504,
        reason::TIMEOUT,
        format!("Timeout: {message}"),
        Some(StatusDetails {
            retry_after_seconds: Some(retry_after_seconds),
            ..StatusDetails::default()
        }),
    )
}

/// 422 for a JSON patch that cannot be applied (Go answers with a generic 422 whose
/// message is fixed and whose cause carries the patch library's error).
pub fn unprocessable_patch(err: &str) -> ApiError {
    ApiError::build(
        422,
        reason::INVALID,
        "the server rejected our request due to an error in our request".to_owned(),
        Some(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("UnexpectedServerResponse".to_owned()),
                message: Some(err.to_owned()),
                ..StatusCause::default()
            }]),
            ..StatusDetails::default()
        }),
    )
}

fn quote(s: &str) -> String {
    crate::field::go_quote(s)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pods() -> GroupResource {
        GroupResource::new("", "pods")
    }

    #[test]
    fn not_found_body_matches_kubernetes() {
        let e = not_found(&GroupResource::new("apps", "deployments"), "web");
        assert_eq!(e.code(), 404);
        assert_eq!(
            e.to_json(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "deployments.apps \"web\" not found", "reason": "NotFound",
                "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404
            })
        );
        let core = not_found(&pods(), "x").to_json();
        assert_eq!(
            core["details"],
            json!({"name": "x", "kind": "pods"}),
            "empty group is omitted"
        );
    }

    #[test]
    fn already_exists_and_conflict() {
        let e = already_exists(&pods(), "x");
        assert_eq!(
            (e.code(), e.reason(), e.message()),
            (409, "AlreadyExists", "pods \"x\" already exists")
        );
        let e = conflict_modified(&pods(), "x");
        assert_eq!(e.reason(), "Conflict");
        assert_eq!(
            e.message(),
            "Operation cannot be fulfilled on pods \"x\": the object has been modified; please apply your changes to the latest version and try again"
        );
    }

    #[test]
    fn invalid_has_causes_and_aggregated_message() {
        let errs = vec![
            FieldError::invalid(
                "spec.services.s0.seqLen",
                json!(0),
                "spec.services.s0.seqLen in body should be greater than or equal to 1",
            ),
            FieldError::required("spec.services", ""),
        ];
        let e = invalid(&GroupKind::new("cellmesh.io", "WorkModel"), "x", &errs);
        assert_eq!(e.code(), 422);
        assert_eq!(
            e.message(),
            "WorkModel.cellmesh.io \"x\" is invalid: [spec.services.s0.seqLen: Invalid value: 0: spec.services.s0.seqLen in body should be greater than or equal to 1, spec.services: Required value]"
        );
        let body = e.to_json();
        assert_eq!(body["details"]["kind"], "WorkModel");
        assert_eq!(body["details"]["group"], "cellmesh.io");
        assert_eq!(
            body["details"]["causes"][1],
            json!({"reason": "FieldValueRequired", "message": "Required value", "field": "spec.services"})
        );
        let one = invalid(&GroupKind::new("", "Pod"), "p", &errs[1..]);
        assert_eq!(
            one.message(),
            "Pod \"p\" is invalid: spec.services: Required value"
        );
        assert_eq!(
            invalid(&GroupKind::new("", "Pod"), "p", &[]).message(),
            "Pod \"p\" is invalid"
        );
    }

    #[test]
    fn forbidden_variants() {
        let why =
            "User \"bob\" cannot get resource \"pods\" in API group \"\" in the namespace \"ns\"";
        let e = forbidden(&pods(), "x", why);
        assert_eq!((e.code(), e.reason()), (403, "Forbidden"));
        assert_eq!(e.message(), format!("pods \"x\" is forbidden: {why}"));
        assert_eq!(
            forbidden(&pods(), "", "no").message(),
            "pods is forbidden: no"
        );
        assert_eq!(
            forbidden(&GroupResource::default(), "", "no").message(),
            "forbidden: no"
        );
    }

    #[test]
    fn other_codes() {
        assert_eq!(
            (unauthorized().code(), unauthorized().message()),
            (401, "Unauthorized")
        );
        assert_eq!(bad_request("bad").code(), 400);
        let e = method_not_supported(&pods(), "deletecollection");
        assert_eq!(
            (e.code(), e.message()),
            (
                405,
                "deletecollection is not supported on resources of kind \"pods\""
            )
        );
        let e = too_old_resource_version(5, 10);
        assert_eq!(
            (e.code(), e.reason(), e.message()),
            (410, "Expired", "too old resource version: 5 (10)")
        );
        assert_eq!(gone("x").reason(), "Gone");
        let e = unsupported_patch_type();
        assert_eq!(e.code(), 415);
        assert!(e.message().starts_with("the body of the request was in an unknown format - accepted media types include: application/json-patch+json"));
        let e = request_entity_too_large(3 * 1024 * 1024);
        assert_eq!(
            (e.code(), e.message()),
            (413, "Request entity too large: limit is 3145728")
        );
        let e = internal_error("boom");
        assert_eq!(
            (e.code(), e.message()),
            (500, "Internal error occurred: boom")
        );
        assert_eq!(
            too_many_requests("slow down", 1).to_json()["details"]["retryAfterSeconds"],
            1
        );
        assert_eq!(timeout("x", 2).code(), 504);
        assert_eq!(service_unavailable("x").code(), 503);
        assert_eq!(unprocessable_patch("test failed").code(), 422);
    }

    #[test]
    fn success_status() {
        let s = serde_json::to_value(success(&pods(), "x", Some("u1"))).expect("serializes");
        assert_eq!(s["status"], "Success");
        assert_eq!(s["details"]["uid"], "u1");
        assert!(s.get("code").is_none());
    }
}
