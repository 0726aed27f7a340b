//! Authorization of every request with RBAC, and the APIs built on identities.
//!
//! - [`check_resource`] / [`check_path`] decide a request with
//!   [`cellmesh_apimachinery::rbac`] from the stored Role, ClusterRole, RoleBinding and
//!   ClusterRoleBinding objects (the bootstrap roles and bindings are stored at first start,
//!   as kube-apiserver reconciles them, so `kubectl get clusterroles` shows them); a denial
//!   is the 403 Status Kubernetes words (`pods "x" is forbidden: User "…" cannot get …`).
//! - [`serve`] answers the virtual resources that take identities as input:
//!   `SelfSubjectAccessReview` and `SelfSubjectRulesReview` (`kubectl auth can-i`,
//!   `--list`), `SelfSubjectReview` (`kubectl auth whoami`) and the
//!   `serviceaccounts/<name>/token` subresource (TokenRequest: `kubectl create token`,
//!   projected ServiceAccount-token volumes).
//! - [`run_service_account_controller`] keeps a `default` ServiceAccount in every active
//!   namespace, as kube-controller-manager's serviceaccounts controller does.

use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use cellmesh_apimachinery::rbac::{self, Attributes, Decision, Policy, UserInfo};
use http::{Method, StatusCode};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectRulesReview};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{self, Claims, KubernetesClaim, ObjectRef};
use super::error::ApiError;
use super::objects::{self, Stamp};
use super::path::Target;
use super::rest::{self, Query};
use super::store::{Outcome, Store, object_key};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn typed_all<T: DeserializeOwned>(store: &Store, resource: &str) -> Vec<T> {
    store
        .list(&format!("{RBAC_GROUP}/{resource}"), None, None, None, &|_| true)
        .items
        .into_iter()
        .filter_map(|(key, object)| match serde_json::from_value(Value::clone(&object)) {
            Ok(typed) => Some(typed),
            Err(err) => {
                tracing::warn!(%resource, %key, %err, "stored RBAC object ignored: it does not parse");
                None
            }
        })
        .collect()
}

/// The RBAC policy as stored now.
pub fn policy_of(store: &Store) -> Policy {
    Policy {
        roles: typed_all(store, "roles"),
        cluster_roles: typed_all(store, "clusterroles"),
        role_bindings: typed_all(store, "rolebindings"),
        cluster_role_bindings: typed_all(store, "clusterrolebindings"),
    }
}

fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == "system:masters")
}

fn decide(store: &Store, attrs: &Attributes) -> Result<(), ApiError> {
    if is_master(&attrs.user) {
        return Ok(());
    }
    match rbac::authorize(attrs, &policy_of(store)) {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(reason) => {
            tracing::debug!(user = %attrs.user.name, verb = %attrs.verb, resource = %attrs.resource, "forbidden");
            Err(rbac::forbidden(attrs, &reason).into())
        }
    }
}

/// The Kubernetes verb of a resource request (request-info's rules).
pub fn verb_of(method: &Method, target: &Target, query: &Query) -> &'static str {
    let named = target.name.is_some();
    match *method {
        Method::GET | Method::HEAD if rest::is_true(query.watch.as_deref()) => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// Authorizes a resource request.
pub fn check_resource(
    store: &Store,
    user: &UserInfo,
    method: &Method,
    target: &Target,
    query: &Query,
) -> Result<(), ApiError> {
    // `namespaces/<ns>` is the namespace object itself, which RBAC sees in its own namespace.
    let namespace = match (&target.namespace, target.resource.as_str(), &target.name) {
        (Some(ns), _, _) => ns.clone(),
        (None, "namespaces", Some(name)) => name.clone(),
        _ => String::new(),
    };
    let mut attrs = Attributes::resource(
        user.clone(),
        verb_of(method, target, query),
        &namespace,
        &target.group,
        &target.resource,
        target.subresource.as_deref().unwrap_or(""),
        target.name.as_deref().unwrap_or(""),
    );
    attrs.api_version = target.version.clone();
    decide(store, &attrs)
}

/// Authorizes a non-resource request (discovery, OpenAPI).
pub fn check_path(
    store: &Store,
    user: &UserInfo,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    let verb = method.as_str().to_ascii_lowercase();
    let verb = if verb == "head" { "get" } else { verb.as_str() };
    decide(store, &Attributes::non_resource(user.clone(), verb, path))
}

/// Stores the bootstrap ClusterRoles and ClusterRoleBindings that are missing.
pub async fn bootstrap(state: &AppState) -> anyhow::Result<()> {
    let roles = rbac::bootstrap_cluster_roles()
        .into_iter()
        .map(|r| ("clusterroles", serde_json::to_value(r)));
    let bindings = rbac::bootstrap_cluster_role_bindings()
        .into_iter()
        .map(|b| ("clusterrolebindings", serde_json::to_value(b)));
    for (resource, object) in roles.chain(bindings) {
        let object = object?;
        create_if_missing(state, RBAC_GROUP, resource, None, object).await?;
    }
    Ok(())
}

async fn create_if_missing(
    state: &AppState,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    object: Value,
) -> anyhow::Result<()> {
    let info = state
        .registry
        .lookup(group, "v1", resource)
        .ok_or_else(|| anyhow::anyhow!("{resource} are not registered"))?;
    let name = objects::name_of(&object).to_owned();
    let key = object_key(namespace, &name);
    if state.store.get(&info.storage_key(), &key).is_some() {
        return Ok(());
    }
    let object = objects::prepare_create(&info, namespace, object, &Stamp::fresh())
        .map_err(|e| anyhow::anyhow!("{resource} {name}: {}", e.message))?;
    state
        .store
        .mutate(
            &info.storage_key(),
            &key,
            Box::new(move |current| match current {
                Some(existing) => Ok(Outcome::Unchanged(existing.clone())),
                None => Ok(Outcome::Put(object)),
            }),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{resource} {name}: {}", e.message))?;
    Ok(())
}

/// Adds the virtual resources of this module to the served table.
pub fn is_virtual(target: &Target) -> bool {
    matches!(
        (
            target.group.as_str(),
            target.resource.as_str(),
            target.subresource.as_deref()
        ),
        (
            "authorization.k8s.io",
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews",
            None
        ) | ("authentication.k8s.io", "selfsubjectreviews", None)
            | ("", "serviceaccounts", Some("token"))
    )
}

fn parse_body<T: DeserializeOwned>(content_type: &str, body: &[u8]) -> Result<T, ApiError> {
    let value = rest::decode_body(content_type, body)?;
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// Answers a request for one of the virtual resources ([`is_virtual`]); the request is
/// already authorized (`create` on the resource).
pub async fn serve(
    state: &AppState,
    user: &UserInfo,
    method: &Method,
    target: &Target,
    content_type: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    if *method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            target.resource
        )));
    }
    let answer = match target.resource.as_str() {
        "selfsubjectaccessreviews" => {
            let review: SelfSubjectAccessReview = parse_body(content_type, body)?;
            let policy = policy_for(state, user);
            let mut answered = rbac::self_subject_access_review(review, user, &policy);
            if is_master(user)
                && let Some(status) = answered.status.as_mut()
            {
                status.allowed = true;
            }
            json!(answered)
        }
        "selfsubjectrulesreviews" => {
            let review: SelfSubjectRulesReview = parse_body(content_type, body)?;
            json!(rbac::self_subject_rules_review(
                review,
                user,
                &policy_for(state, user)
            ))
        }
        "selfsubjectreviews" => json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": objects::now_rfc3339()},
            "status": {"userInfo": {"username": user.name, "groups": user.groups}},
        }),
        _ => token_request(state, target, content_type, body)?,
    };
    let mut answer = answer;
    set_type_meta(&mut answer, target);
    Ok(rest::json_response(StatusCode::CREATED, &answer))
}

fn set_type_meta(object: &mut Value, target: &Target) {
    let (api_version, kind) = match target.resource.as_str() {
        "selfsubjectaccessreviews" => ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
        "selfsubjectrulesreviews" => ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
        "selfsubjectreviews" => ("authentication.k8s.io/v1", "SelfSubjectReview"),
        _ => ("authentication.k8s.io/v1", "TokenRequest"),
    };
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
}

fn policy_for(state: &AppState, user: &UserInfo) -> Policy {
    if is_master(user) {
        Policy::default()
    } else {
        policy_of(&state.store)
    }
}

/// `POST serviceaccounts/<name>/token`: a signed token for the ServiceAccount.
fn token_request(
    state: &AppState,
    target: &Target,
    content_type: &str,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let namespace = target.namespace.as_deref().unwrap_or("");
    let name = target.name.as_deref().unwrap_or("");
    let request = if body.is_empty() {
        json!({})
    } else {
        rest::decode_body(content_type, body)?
    };
    let account = state
        .store
        .get("/serviceaccounts", &object_key(Some(namespace), name))
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", name))?;
    let uid = account
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => auth::DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request("spec.expirationSeconds: Invalid value: must be an integer")
        })?,
    };
    if expiration < auth::MIN_EXPIRATION_SECONDS {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![auth::ISSUER.to_owned()],
    };
    let pod = spec
        .get("boundObjectRef")
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Pod"))
        .map(|r| ObjectRef {
            name: r["name"].as_str().unwrap_or("").to_owned(),
            uid: r["uid"].as_str().unwrap_or("").to_owned(),
        });
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: auth::ISSUER.into(),
        sub: format!("system:serviceaccount:{namespace}:{name}"),
        aud: audiences.clone(),
        exp: now + expiration,
        iat: now,
        nbf: now,
        kubernetes: KubernetesClaim {
            namespace: namespace.to_owned(),
            serviceaccount: ObjectRef {
                name: name.to_owned(),
                uid,
            },
            pod,
        },
    };
    let token = state.config.token_keys.sign(&claims)?;
    let expires = jiff::Timestamp::from_second(now + expiration)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    Ok(json!({
        "metadata": {"name": name, "namespace": namespace,
                     "creationTimestamp": objects::now_rfc3339()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// Keeps a `default` ServiceAccount in every namespace that is not terminating.
pub async fn run_service_account_controller(state: AppState) {
    let mut changes = state.store.subscribe();
    loop {
        ensure_default_service_accounts(&state).await;
        // Any commit wakes us; reconciling is a cheap scan of namespaces.
        if changes.changed().await.is_err() {
            return;
        }
        // Coalesce bursts of writes into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
        changes.borrow_and_update();
    }
}

pub async fn ensure_default_service_accounts(state: &AppState) {
    let namespaces = state
        .store
        .list("/namespaces", None, None, None, &|ns| {
            ns.pointer("/metadata/deletionTimestamp").is_none()
        })
        .items;
    for (name, _) in namespaces {
        if state
            .store
            .get("/serviceaccounts", &object_key(Some(&name), "default"))
            .is_some()
        {
            continue;
        }
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": "default", "namespace": name}});
        if let Err(err) =
            create_if_missing(state, "", "serviceaccounts", Some(&name), account).await
        {
            tracing::warn!(namespace = %name, %err, "cannot create the default ServiceAccount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: Option<&str>) -> Target {
        Target {
            group: String::new(),
            version: "v1".into(),
            namespace: Some("ns".into()),
            resource: "pods".into(),
            name: name.map(Into::into),
            subresource: None,
        }
    }

    #[test]
    fn verbs_follow_request_info() {
        let q = Query::default();
        let watch = Query {
            watch: Some("true".into()),
            ..Query::default()
        };
        assert_eq!(verb_of(&Method::GET, &target(None), &q), "list");
        assert_eq!(verb_of(&Method::GET, &target(Some("p")), &q), "get");
        assert_eq!(verb_of(&Method::GET, &target(None), &watch), "watch");
        assert_eq!(verb_of(&Method::POST, &target(None), &q), "create");
        assert_eq!(verb_of(&Method::PUT, &target(Some("p")), &q), "update");
        assert_eq!(verb_of(&Method::PATCH, &target(Some("p")), &q), "patch");
        assert_eq!(verb_of(&Method::DELETE, &target(Some("p")), &q), "delete");
        assert_eq!(
            verb_of(&Method::DELETE, &target(None), &q),
            "deletecollection"
        );
    }

    #[test]
    fn token_requests_and_reviews_are_the_virtual_resources() {
        let mut t = target(Some("sa"));
        t.resource = "serviceaccounts".into();
        assert!(!is_virtual(&t));
        t.subresource = Some("token".into());
        assert!(is_virtual(&t));
        let review = Target {
            group: "authorization.k8s.io".into(),
            namespace: None,
            resource: "selfsubjectaccessreviews".into(),
            name: None,
            subresource: None,
            version: "v1".into(),
        };
        assert!(is_virtual(&review));
    }
}
