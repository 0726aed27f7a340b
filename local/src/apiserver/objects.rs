//! What happens to an object's metadata and status on create, update and delete — the
//! generic registry strategy of Kubernetes, as pure functions:
//! - create: name or generateName, namespace from the URL, uid, creationTimestamp,
//!   generation 1 for kinds that track it, status reset where status is a subresource;
//! - update: optimistic concurrency on resourceVersion, immutable metadata kept, status
//!   ignored on the main resource (and everything but status ignored on `/status`),
//!   generation bumped only when something other than metadata/status changed, no new
//!   version when nothing changed, deletion completed once the last finalizer is removed;
//! - delete: preconditions, propagation finalizers (`orphan`, `foregroundDeletion`),
//!   deletionTimestamp while finalizers remain, graceful deletion for running pods.

use rand::RngExt;
use serde_json::{Map, Value, json};

use super::defaults;
use super::error::{ApiError, FieldError};
use super::registry::ResourceInfo;
use super::store::Outcome;

/// Time and identity sources for a write, injected so the functions stay pure.
pub struct Stamp {
    /// RFC 3339, seconds precision (`2025-01-02T03:04:05Z`).
    pub now: String,
    pub uid: String,
}

impl Stamp {
    pub fn fresh() -> Self {
        Self {
            now: now_rfc3339(),
            uid: uuid::Uuid::new_v4().to_string(),
        }
    }
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Kubernetes' generateName suffix: 5 characters from a vowel-free alphabet.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Validates an object name: namespaces (and a few kinds) need DNS labels, most kinds DNS
/// subdomains. RBAC kinds allow any path-segment name.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Option<FieldError> {
    if info.group == "rbac.authorization.k8s.io" {
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('%');
        return bad.then(|| {
            FieldError::invalid("metadata.name", &json!(name), "may not contain '/' or '%'")
        });
    }
    let label_only = matches!(info.resource.as_str(), "namespaces" | "services");
    if label_only {
        (!is_label(name)).then(|| FieldError::invalid("metadata.name", &json!(name), LABEL_MSG))
    } else {
        (!is_subdomain(name))
            .then(|| FieldError::invalid("metadata.name", &json!(name), SUBDOMAIN_MSG))
    }
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = object.as_object_mut().ok_or_else(|| {
        ApiError::bad_request("the body of the request must be a JSON or YAML object")
    })?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

pub fn name_of(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or("")
}

/// Checks `apiVersion`/`kind` of a request body against the resource it is sent to, and
/// fills them in when absent.
pub fn check_type(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let expected_av = info.api_version();
    let map = object.as_object_mut().ok_or_else(|| {
        ApiError::bad_request("the body of the request must be a JSON or YAML object")
    })?;
    match map.get("kind").and_then(Value::as_str) {
        Some(kind) if !kind.is_empty() && kind != info.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({kind}) does not match the kind of the resource ({}) at {expected_av}",
                info.kind
            )));
        }
        _ => {}
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(av) if !av.is_empty() && av != expected_av => {
            // Custom resources may be sent with any served version of their group.
            let same_group = av.split_once('/').map(|(g, _)| g) == Some(info.group.as_str());
            if !(info.custom && same_group) {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({expected_av})"
                )));
            }
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(expected_av));
    map.insert("kind".into(), json!(info.kind));
    Ok(())
}

/// Prepares a new object for storage. `namespace` is the URL's namespace.
pub fn prepare_create(
    info: &ResourceInfo,
    namespace: Option<&str>,
    mut object: Value,
    stamp: &Stamp,
) -> Result<Value, ApiError> {
    check_type(info, &mut object)?;
    let meta = metadata_mut(&mut object)?;
    if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
        && !rv.is_empty()
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    match (namespace, meta.get("namespace").and_then(Value::as_str)) {
        (Some(url), Some(body)) if !body.is_empty() && body != url => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        (Some(url), _) => {
            meta.insert("namespace".into(), json!(url));
        }
        (None, _) => {
            meta.remove("namespace");
        }
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let generated = format!("{prefix}{}", name_suffix());
                meta.insert("name".into(), json!(generated));
                generated
            }
            _ => {
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    "",
                    &[FieldError::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        }
    } else {
        name
    };
    if let Some(err) = validate_name(info, &name) {
        return Err(ApiError::invalid(&info.group, &info.kind, &name, &[err]));
    }
    meta.insert("uid".into(), json!(stamp.uid));
    meta.insert("creationTimestamp".into(), json!(stamp.now));
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "resourceVersion",
    ] {
        meta.remove(field);
    }
    if info.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    if info.has_subresource("status")
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
    }
    defaults::apply(info, &mut object, &stamp.now);
    Ok(object)
}

/// The parts of an object that are "spec" for generation purposes: everything except
/// metadata and status (and the type fields).
fn spec_view(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn generation_of(object: &Value) -> i64 {
    object
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Whether two stored objects are the same apart from their resourceVersion.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        v
    };
    strip(a) == strip(b)
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Prepares a replacement of `old` by `new` (PUT or the result of a patch).
/// `subresource` is `None` for the main resource or `Some("status")`.
fn is_pod(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.resource == "pods"
}

pub fn prepare_update(
    info: &ResourceInfo,
    old: &Value,
    mut new: Value,
    subresource: Option<&str>,
) -> Result<Outcome, ApiError> {
    check_type(info, &mut new)?;
    let name = name_of(old).to_owned();
    {
        let meta = metadata_mut(&mut new)?;
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {}
        }
        if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
            && !rv.is_empty()
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::conflict_modified(
                &info.group,
                &info.resource,
                &name,
            ));
        }
        if let (Some(ns), Some(old_ns)) = (
            meta.get("namespace").and_then(Value::as_str),
            meta_str(old, "namespace"),
        ) && !ns.is_empty()
            && ns != old_ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(uid) = meta.get("uid").and_then(Value::as_str)
            && !uid.is_empty()
            && Some(uid) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.resource,
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
    }

    let mut result = match subresource {
        // A namespace's `finalize` changes its spec.finalizers and nothing else.
        Some("finalize") => {
            let mut result = old.clone();
            let wanted = new.pointer("/spec/finalizers").cloned();
            if let Some(map) = result.as_object_mut() {
                let spec = map.entry("spec").or_insert_with(|| json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    match wanted {
                        Some(list) => spec.insert("finalizers".into(), list),
                        None => spec.remove("finalizers"),
                    };
                }
            }
            result
        }
        Some("status") => {
            let mut result = old.clone();
            if let Some(map) = result.as_object_mut() {
                match new.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
            result
        }
        Some("resize") if is_pod(info) => super::pods::apply_resize(old, &new),
        _ => {
            if info.has_subresource("status")
                && let Some(map) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(status) => map.insert("status".into(), status.clone()),
                    None => map.remove("status"),
                };
            }
            if is_namespace(info)
                && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
            {
                // Only `finalize` changes a namespace's spec.finalizers.
                match old.pointer("/spec/finalizers") {
                    Some(list) => spec.insert("finalizers".into(), list.clone()),
                    None => spec.remove("finalizers"),
                };
            }
            new
        }
    };

    // Metadata the client cannot change.
    if let (Some(meta), Some(old_meta)) = (
        result.get_mut("metadata").and_then(Value::as_object_mut),
        old.get("metadata").and_then(Value::as_object),
    ) {
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("selfLink");
    }
    if is_pod(info) {
        let errors = match subresource {
            Some("resize") => super::pods::validate_resize(old, &result),
            None => super::pods::validate_update(old, &result),
            Some(_) => Vec::new(),
        };
        if !errors.is_empty() {
            return Err(ApiError::invalid("", "Pod", &name, &errors));
        }
    }
    if info.tracks_generation && spec_view(&result) != spec_view(old) {
        let next = generation_of(old) + 1;
        if let Some(meta) = result.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(next));
        }
    }
    if meta_str(&result, "deletionTimestamp").is_some()
        && finalizers(&result).is_empty()
        && (!is_namespace(info) || spec_finalizers(&result).is_empty())
    {
        return Ok(Outcome::Delete(result));
    }
    if same_content(&result, old) {
        return Ok(Outcome::Unchanged(old.clone()));
    }
    Ok(Outcome::Put(result))
}

/// Query and body options of a DELETE.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (may be empty) merged with query parameters.
    pub fn from_parts(
        body: Option<&Value>,
        query_policy: Option<&str>,
        query_grace: Option<i64>,
    ) -> Result<Self, ApiError> {
        let mut opts = Self {
            propagation_policy: query_policy.map(str::to_owned),
            grace_period_seconds: query_grace,
            ..Self::default()
        };
        if let Some(body) = body {
            if let Some(policy) = body.get("propagationPolicy").and_then(Value::as_str) {
                opts.propagation_policy = Some(policy.to_owned());
            }
            if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                opts.propagation_policy = Some("Orphan".into());
            }
            if let Some(grace) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
                opts.grace_period_seconds = Some(grace);
            }
            if let Some(pre) = body.get("preconditions") {
                opts.precondition_uid = pre.get("uid").and_then(Value::as_str).map(str::to_owned);
                opts.precondition_rv = pre
                    .get("resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
        }
        match opts.propagation_policy.as_deref() {
            None | Some("Orphan" | "Background" | "Foreground") => Ok(opts),
            Some(other) => Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                &[FieldError {
                    field: "propagationPolicy".into(),
                    reason: "FieldValueNotSupported",
                    kind: "Unsupported value",
                    detail: format!(
                        "\"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                }],
            )),
        }
    }
}

/// The finalizers an object gets on DELETE with `policy`, as Kubernetes'
/// `deletionFinalizersForGarbageCollection`: an explicit policy replaces the propagation
/// finalizers (`orphan`, `foregroundDeletion`); without one, those already present stay and
/// the default is background (no finalizer).
pub fn gc_finalizers(current: &[String], policy: Option<&str>) -> Vec<String> {
    let has = |f: &str| current.iter().any(|c| c == f);
    let (orphan, foreground) = match policy {
        Some("Orphan") => (true, false),
        Some("Foreground") => (false, true),
        Some(_) => (false, false),
        None if has(ORPHAN_FINALIZER) => (true, false),
        None => (false, has(FOREGROUND_FINALIZER)),
    };
    let mut wanted: Vec<String> = current
        .iter()
        .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
        .cloned()
        .collect();
    if orphan {
        wanted.push(ORPHAN_FINALIZER.to_owned());
    }
    if foreground {
        wanted.push(FOREGROUND_FINALIZER.to_owned());
    }
    wanted
}

/// Set by DELETE with `propagationPolicy=Orphan`; removed by the garbage collector.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// Set by DELETE with `propagationPolicy=Foreground`; removed by the garbage collector.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn is_namespace(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.resource == "namespaces" && !info.custom
}

/// `spec.finalizers` of a namespace (the namespace controller's, not metadata's).
fn spec_finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// DELETE of a namespace, as Kubernetes' namespace storage: the first DELETE only marks
/// it (deletionTimestamp, phase `Terminating`, propagation finalizers); the namespace
/// controller empties it and removes `kubernetes` from `spec.finalizers` through the
/// `finalize` subresource, which deletes it once no finalizer of any kind remains.
fn delete_namespace(
    mut object: Value,
    current: &[String],
    opts: &DeleteOptions,
    now: &str,
) -> Result<Outcome, ApiError> {
    let wanted = gc_finalizers(current, opts.propagation_policy.as_deref());
    if meta_str(&object, "deletionTimestamp").is_none() {
        let meta = metadata_mut(&mut object)?;
        meta.insert("deletionTimestamp".into(), json!(now));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if !wanted.is_empty() || meta.contains_key("finalizers") {
            meta.insert("finalizers".into(), json!(wanted));
        }
        if let Some(map) = object.as_object_mut() {
            let status = map.entry("status").or_insert_with(|| json!({}));
            if let Some(status) = status.as_object_mut() {
                status.insert("phase".into(), json!("Terminating"));
            }
        }
        return Ok(Outcome::Put(object));
    }
    if !spec_finalizers(&object).is_empty() {
        return Ok(Outcome::Unchanged(object));
    }
    if wanted.is_empty() {
        return Ok(Outcome::Delete(object));
    }
    if !same_set(current, &wanted) {
        metadata_mut(&mut object)?.insert("finalizers".into(), json!(wanted));
        return Ok(Outcome::Put(object));
    }
    Ok(Outcome::Unchanged(object))
}

/// Decides a DELETE of `old`: remove it now, or mark it and wait for finalizers / the node.
pub fn prepare_delete(
    info: &ResourceInfo,
    old: &Value,
    opts: &DeleteOptions,
    now: &str,
) -> Result<Outcome, ApiError> {
    let name = name_of(old);
    if let Some(uid) = &opts.precondition_uid
        && Some(uid.as_str()) != meta_str(old, "uid")
    {
        return Err(ApiError::conflict(
            &info.group,
            &info.resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(old, "uid").unwrap_or("")
            ),
        ));
    }
    if let Some(rv) = &opts.precondition_rv
        && Some(rv.as_str()) != meta_str(old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            &info.group,
            &info.resource,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(old, "resourceVersion").unwrap_or("")
            ),
        ));
    }
    let mut object = old.clone();
    let current = finalizers(old);
    let already_deleting = meta_str(old, "deletionTimestamp").is_some();
    if is_namespace(info) {
        return delete_namespace(object, &current, opts, now);
    }
    let wanted = gc_finalizers(&current, opts.propagation_policy.as_deref());
    let finalizers_changed = !same_set(&current, &wanted);
    let graceful_pod = info.resource == "pods"
        && !info.custom
        && old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            old.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
    let grace = if graceful_pod {
        opts.grace_period_seconds
            .or_else(|| {
                old.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0)
    } else {
        0
    };
    if wanted.is_empty() && grace == 0 {
        return Ok(Outcome::Delete(object));
    }
    if already_deleting {
        // Deleting again may switch the propagation policy (the garbage collector deletes
        // dependents of a foreground deletion with `Foreground`), but keeps the deadline.
        if finalizers_changed {
            metadata_mut(&mut object)?.insert("finalizers".into(), json!(wanted));
            return Ok(Outcome::Put(object));
        }
        return Ok(Outcome::Unchanged(object));
    }
    let deletion_time = if grace > 0 {
        let at = now
            .parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(grace)).ok())
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        at.unwrap_or_else(|| now.to_owned())
    } else {
        now.to_owned()
    };
    let meta = metadata_mut(&mut object)?;
    meta.insert("deletionTimestamp".into(), json!(deletion_time));
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    if !wanted.is_empty() || finalizers_changed {
        meta.insert("finalizers".into(), json!(wanted));
    }
    Ok(Outcome::Put(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    fn info(group: &str, resource: &str) -> ResourceInfo {
        (*Registry::new().lookup(group, "v1", resource).unwrap()).clone()
    }

    fn stamp() -> Stamp {
        Stamp {
            now: "2025-01-01T00:00:00Z".into(),
            uid: "u-1".into(),
        }
    }

    fn put(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Put(v) => v,
            other => panic!("expected Put, got {other:?}"),
        }
    }

    #[test]
    fn create_fills_identity_and_generation() {
        let deploy = info("apps", "deployments");
        let created = prepare_create(
            &deploy,
            Some("ns"),
            json!({"metadata": {"generateName": "web-"}, "spec": {"replicas": 2}, "status": {"replicas": 9}}),
            &stamp(),
        )
        .unwrap();
        let name = name_of(&created);
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(created["metadata"]["namespace"], "ns");
        assert_eq!(created["metadata"]["uid"], "u-1");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["kind"], "Deployment");
        assert_eq!(created["apiVersion"], "apps/v1");
        assert!(
            created["status"].get("replicas").is_none(),
            "status is reset on create"
        );
    }

    #[test]
    fn create_rejects_bad_input() {
        let cm = info("", "configmaps");
        let no_name = prepare_create(&cm, Some("ns"), json!({"data": {}}), &stamp()).unwrap_err();
        assert_eq!(no_name.code, 422);
        assert!(no_name.message.contains("name or generateName is required"));
        let bad_name = prepare_create(
            &cm,
            Some("ns"),
            json!({"metadata": {"name": "Bad_Name"}}),
            &stamp(),
        )
        .unwrap_err();
        assert_eq!(bad_name.reason, "Invalid");
        let wrong_kind = prepare_create(
            &cm,
            Some("ns"),
            json!({"kind": "Secret", "metadata": {"name": "x"}}),
            &stamp(),
        )
        .unwrap_err();
        assert_eq!(wrong_kind.code, 400);
        let wrong_ns = prepare_create(
            &cm,
            Some("ns"),
            json!({"metadata": {"name": "x", "namespace": "other"}}),
            &stamp(),
        )
        .unwrap_err();
        assert!(wrong_ns.message.contains("does not match the namespace"));
        let with_rv = prepare_create(
            &cm,
            Some("ns"),
            json!({"metadata": {"name": "x", "resourceVersion": "5"}}),
            &stamp(),
        )
        .unwrap_err();
        assert_eq!(with_rv.code, 400);
    }

    fn stored_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                         "generation": 3, "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"replicas": 1},
            "status": {"replicas": 1},
        })
    }

    #[test]
    fn update_bumps_generation_on_spec_changes_only() {
        let deploy = info("apps", "deployments");
        let old = stored_deployment();
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert_eq!(
            put(prepare_update(&deploy, &old, scaled, None).unwrap())["metadata"]["generation"],
            4
        );

        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        let out = put(prepare_update(&deploy, &old, labelled, None).unwrap());
        assert_eq!(out["metadata"]["generation"], 3);
        assert_eq!(out["metadata"]["labels"]["a"], "b");

        let mut status = old.clone();
        status["status"]["replicas"] = json!(5);
        status["spec"]["replicas"] = json!(9);
        let out = put(prepare_update(&deploy, &old, status, Some("status")).unwrap());
        assert_eq!(out["status"]["replicas"], 5);
        assert_eq!(out["spec"]["replicas"], 1, "/status ignores spec");
        assert_eq!(out["metadata"]["generation"], 3);
    }

    #[test]
    fn update_ignores_status_on_main_resource_and_detects_no_ops() {
        let deploy = info("apps", "deployments");
        let old = stored_deployment();
        let mut new = old.clone();
        new["status"]["replicas"] = json!(100);
        assert!(matches!(
            prepare_update(&deploy, &old, new, None).unwrap(),
            Outcome::Unchanged(_)
        ));
    }

    #[test]
    fn update_with_stale_version_conflicts() {
        let deploy = info("apps", "deployments");
        let old = stored_deployment();
        let mut new = old.clone();
        new["metadata"]["resourceVersion"] = json!("6");
        new["spec"]["replicas"] = json!(2);
        let err = prepare_update(&deploy, &old, new, None).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(err.message.contains("the object has been modified"));
        let mut renamed = old.clone();
        renamed["metadata"]["name"] = json!("other");
        assert_eq!(
            prepare_update(&deploy, &old, renamed, None)
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn delete_waits_for_finalizers_and_completes_when_they_go() {
        let cm = info("", "configmaps");
        let old = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                                      "finalizers": ["example.com/keep"]}});
        let marked =
            put(
                prepare_delete(&cm, &old, &DeleteOptions::default(), "2025-01-01T00:00:00Z")
                    .unwrap(),
            );
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2025-01-01T00:00:00Z"
        );
        let mut cleared = marked.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        assert!(matches!(
            prepare_update(&cm, &marked, cleared, None).unwrap(),
            Outcome::Delete(_)
        ));
        let plain = json!({"metadata": {"name": "c", "uid": "u"}});
        assert!(matches!(
            prepare_delete(&cm, &plain, &DeleteOptions::default(), "t").unwrap(),
            Outcome::Delete(_)
        ));
    }

    #[test]
    fn delete_propagation_and_preconditions() {
        let deploy = info("apps", "deployments");
        let old = stored_deployment();
        let opts = DeleteOptions::from_parts(None, Some("Foreground"), None).unwrap();
        let marked = put(prepare_delete(&deploy, &old, &opts, "t").unwrap());
        assert_eq!(
            marked["metadata"]["finalizers"],
            json!(["foregroundDeletion"])
        );
        let body = json!({"preconditions": {"uid": "other"}});
        let opts = DeleteOptions::from_parts(Some(&body), None, None).unwrap();
        assert_eq!(
            prepare_delete(&deploy, &old, &opts, "t").unwrap_err().code,
            409
        );
        assert!(DeleteOptions::from_parts(None, Some("Sideways"), None).is_err());
    }

    #[test]
    fn an_explicit_policy_replaces_the_propagation_finalizers() {
        let keep = || vec!["example.com/keep".to_owned()];
        let with = |f: &str| vec!["example.com/keep".to_owned(), f.to_owned()];
        assert_eq!(
            gc_finalizers(&keep(), Some("Foreground")),
            with("foregroundDeletion")
        );
        assert_eq!(
            gc_finalizers(&with("orphan"), Some("Foreground")),
            with("foregroundDeletion")
        );
        assert_eq!(gc_finalizers(&with("orphan"), Some("Background")), keep());
        assert_eq!(
            gc_finalizers(&with("orphan"), None),
            with("orphan"),
            "no policy keeps it"
        );
        assert_eq!(
            gc_finalizers(&keep(), None),
            keep(),
            "background by default"
        );

        // The garbage collector re-deletes a dependent of a foreground deletion with
        // Foreground while it is already being deleted: the finalizer switches.
        let deploy = info("apps", "deployments");
        let orphaning = put(prepare_delete(
            &deploy,
            &stored_deployment(),
            &DeleteOptions::from_parts(None, Some("Orphan"), None).unwrap(),
            "t",
        )
        .unwrap());
        let switched = put(prepare_delete(
            &deploy,
            &orphaning,
            &DeleteOptions::from_parts(None, Some("Foreground"), None).unwrap(),
            "later",
        )
        .unwrap());
        assert_eq!(
            switched["metadata"]["finalizers"],
            json!(["foregroundDeletion"])
        );
        assert_eq!(
            switched["metadata"]["deletionTimestamp"], "t",
            "the deadline stays"
        );
        let background = DeleteOptions::from_parts(None, Some("Background"), None).unwrap();
        assert!(matches!(
            prepare_delete(&deploy, &switched, &background, "t").unwrap(),
            Outcome::Delete(_)
        ));
    }

    #[test]
    fn namespaces_terminate_until_finalized() {
        let ns_info = info("", "namespaces");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "team", "uid": "u", "resourceVersion": "3"},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let marked = put(prepare_delete(&ns_info, &ns, &DeleteOptions::default(), "t").unwrap());
        assert_eq!(marked["status"]["phase"], "Terminating");
        assert_eq!(marked["metadata"]["deletionTimestamp"], "t");
        assert!(matches!(
            prepare_delete(&ns_info, &marked, &DeleteOptions::default(), "t").unwrap(),
            Outcome::Unchanged(_)
        ));
        // A plain update cannot drop spec.finalizers; `finalize` can, and then it is gone.
        let mut cleared = marked.clone();
        cleared["spec"]["finalizers"] = json!([]);
        let updated = prepare_update(&ns_info, &marked, cleared.clone(), None).unwrap();
        assert!(matches!(updated, Outcome::Unchanged(_)), "{updated:?}");
        assert!(matches!(
            prepare_update(&ns_info, &marked, cleared, Some("finalize")).unwrap(),
            Outcome::Delete(_)
        ));
        let mut held = marked.clone();
        held["metadata"]["finalizers"] = json!(["example.com/x"]);
        let mut cleared = held.clone();
        cleared["spec"]["finalizers"] = json!([]);
        let kept = put(prepare_update(&ns_info, &held, cleared, Some("finalize")).unwrap());
        assert_eq!(
            kept["spec"]["finalizers"],
            json!([]),
            "metadata finalizers still hold it"
        );
    }

    #[test]
    fn running_pods_are_deleted_gracefully() {
        let pods = info("", "pods");
        let pod = json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}, "status": {"phase": "Running"}});
        let marked = put(prepare_delete(
            &pods,
            &pod,
            &DeleteOptions::default(),
            "2025-01-01T00:00:00Z",
        )
        .unwrap());
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 10);
        assert_eq!(
            marked["metadata"]["deletionTimestamp"],
            "2025-01-01T00:00:10Z"
        );
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..DeleteOptions::default()
        };
        assert!(matches!(
            prepare_delete(&pods, &pod, &now, "t").unwrap(),
            Outcome::Delete(_)
        ));
        let unscheduled = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(matches!(
            prepare_delete(&pods, &unscheduled, &DeleteOptions::default(), "t").unwrap(),
            Outcome::Delete(_)
        ));
    }
}
