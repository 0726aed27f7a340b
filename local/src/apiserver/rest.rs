//! The generic REST handler: get, list, watch, create, update, patch, delete and
//! deletecollection of any served resource (built-in or custom), plus the `status` and
//! `scale` subresources. Semantics come from [`objects`](super::objects); storage from
//! [`Store`](super::store::Store).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admission::{self, FieldValidation};
use super::error::ApiError;
use super::machinery::{Filter, PatchType, apply_patch};
use super::managed::{self, Manager, Verb};
use super::objects::{self, DeleteOptions, Stamp};
use super::path::Target;
use super::registry::ResourceInfo;
use super::service_ip::{self, ClusterIps};
use super::store::{Committed, Mutation, Outcome, Store, object_key};
use super::{AppState, crd, table, watch};

/// Query parameters of resource requests (all as sent; parsed where used so a bad value
/// gets an error naming the parameter).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout_seconds: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub send_initial_events: Option<String>,
    pub dry_run: Option<String>,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<String>,
    pub include_object: Option<String>,
    pub field_manager: Option<String>,
    pub field_validation: Option<String>,
    pub force: Option<String>,
}

pub fn is_true(value: Option<&str>) -> bool {
    matches!(value, Some("true" | "1" | "True"))
}

fn parse_number<T: std::str::FromStr>(
    name: &str,
    value: Option<&str>,
) -> Result<Option<T>, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid value for {name}: {v:?} is not a number"))
        }),
    }
}

impl Query {
    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.dry_run.as_deref() {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}: supported values: \"All\""
            ))),
        }
    }
}

/// Everything a handler needs about one request.
pub struct Request<'a> {
    pub state: &'a AppState,
    pub method: &'a Method,
    pub target: Target,
    pub query: Query,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

impl Request<'_> {
    fn accept(&self) -> &str {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn user_agent(&self) -> &str {
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The field manager, `force` and `fieldValidation` of a write, validated.
    fn write_options(
        &self,
        info: &ResourceInfo,
        verb: Verb,
        subresource: Option<&str>,
    ) -> Result<WriteOptions, ApiError> {
        let (manager, force) = Manager::from_request(
            verb,
            self.query.field_manager.as_deref(),
            self.query.force.as_deref(),
            self.user_agent(),
            info,
            subresource,
            &objects::now_rfc3339(),
        )?;
        let options_kind = match verb {
            Verb::Create => "CreateOptions",
            Verb::Update => "UpdateOptions",
            Verb::Patch | Verb::Apply => "PatchOptions",
        };
        let validation =
            FieldValidation::parse(self.query.field_validation.as_deref(), options_kind)?;
        Ok(WriteOptions {
            info: info.clone(),
            schema: admission::schema_for(self.state, info),
            manager,
            force,
            validation,
            services: (info.group.is_empty() && info.resource == "services").then(|| {
                (
                    Arc::clone(&self.state.cluster_ips),
                    self.state.store.clone(),
                )
            }),
        })
    }
}

/// What every write needs besides the object: who writes, how strictly, and the custom
/// resource schema (if any), fetched before the store's mutation runs.
struct WriteOptions {
    info: ResourceInfo,
    schema: Option<cellmesh_apimachinery::schema::CrdSchema>,
    manager: Manager,
    force: bool,
    validation: FieldValidation,
    /// For Services: the ClusterIP allocator and the store holding the Services.
    services: Option<(Arc<ClusterIps>, Store)>,
}

impl WriteOptions {
    fn schema_value(&self) -> Option<&Value> {
        self.schema.as_ref().map(|s| s.as_value())
    }

    /// Prunes the unknown fields of an incoming custom resource (a body, a patched object
    /// or an apply configuration); returns the unknown-field warnings.
    fn prune(&self, object: &mut Value) -> Result<Vec<String>, ApiError> {
        match &self.schema {
            Some(schema) => admission::prune(&self.info, schema, object, self.validation),
            None => Ok(Vec::new()),
        }
    }

    /// Defaults an object about to replace the stored one, as Kubernetes defaults every
    /// decoded object: fields an applier stops applying come back with their defaults
    /// instead of vanishing. Namespaces are skipped: their creation defaults include the
    /// `Active` phase, which must not undo `Terminating`; and the status a write carries
    /// is kept (creation defaults reset it).
    fn default(&self, object: &mut Value) {
        match &self.schema {
            Some(schema) => admission::default(schema, object),
            None if !(self.info.group.is_empty() && self.info.resource == "namespaces") => {
                let status = object.get("status").cloned();
                super::defaults::apply(&self.info, object, "");
                if let Some(map) = object.as_object_mut() {
                    match status {
                        Some(status) => map.insert("status".into(), status),
                        None => map.remove("status"),
                    };
                }
            }
            None => {}
        }
    }

    /// The last steps of every write that stores an object: the CRD controller's fields,
    /// custom resource validation, and ownership (`managed`: an apply's result, else the
    /// update is recorded from `incoming`, the managedFields the client sent).
    fn finish(
        &self,
        old: Option<&Value>,
        outcome: Outcome,
        incoming: Option<&Value>,
        applied: Option<Option<Value>>,
    ) -> Result<Outcome, ApiError> {
        let outcome = match outcome {
            Outcome::Put(mut object) => {
                if let Some((ips, store)) = &self.services {
                    service_ip::assign(ips, store, old, &mut object)?;
                }
                if let Some(schema) = &self.schema {
                    admission::validate(&self.info, schema, &object, old)?;
                }
                Outcome::Put(crd::prepare(&self.info, object))
            }
            other => other,
        };
        Ok(match applied {
            Some(managed) => managed::with_managed_fields(outcome, managed.as_ref()),
            None => managed::record_update(
                &self.info,
                self.schema_value(),
                &self.manager,
                old,
                incoming,
                outcome,
            ),
        })
    }
}

/// Adds `Warning` headers to a response.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for value in admission::warning_headers(warnings) {
        response.headers_mut().append(header::WARNING, value);
    }
    response
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    json_text_response(code, body.to_string().into())
}

/// A response carrying already serialised JSON.
pub fn json_text_response(code: StatusCode, body: bytes::Bytes) -> Response {
    let mut response = (code, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Decodes a request body as JSON or YAML according to its Content-Type.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the object provided is unrecognized (must be JSON or YAML): {e}"
            ))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?,
        super::protobuf::MEDIA_TYPE => super::protobuf::decode(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the object provided is unrecognized: the body must be a JSON or YAML object",
        ));
    }
    Ok(value)
}

/// Dispatches a resource request.
pub async fn handle(req: Request<'_>) -> Result<Response, ApiError> {
    let t = &req.target;
    let info = req
        .state
        .registry
        .lookup(&t.group, &t.version, &t.resource)
        .ok_or_else(|| {
            tracing::warn!(group = %t.group, version = %t.version, resource = %t.resource, "request for a resource this server does not serve");
            ApiError::no_route()
        })?;
    if t.namespace.is_some() && !info.namespaced {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &t.subresource
        && !info.has_subresource(sub)
    {
        tracing::warn!(resource = %info.resource, subresource = %sub, "request for an unsupported subresource");
        return Err(ApiError::no_route());
    }
    let method = req.method.clone();
    match (&method, t.name.is_some(), t.subresource.as_deref()) {
        (&Method::GET, false, None) => {
            if is_true(req.query.watch.as_deref()) {
                watch::serve(&req, &info)
            } else {
                list(&req, &info)
            }
        }
        (&Method::GET, true, None | Some("status" | "resize")) => get(&req, &info),
        (&Method::GET, true, Some("scale")) => get_scale(&req, &info),
        (&Method::GET, true, Some("log")) => Err(ApiError::bad_request(format!(
            "pod {} does not have a host assigned",
            t.name.as_deref().unwrap_or("")
        ))),
        (&Method::POST, false, None) => create(&req, &info).await,
        (&Method::PUT, true, None | Some("status" | "finalize" | "resize")) => {
            update(&req, &info).await
        }
        (&Method::PUT, true, Some("scale")) => update_scale(&req, &info).await,
        (&Method::PATCH, true, Some("scale")) => patch_scale(&req, &info).await,
        (&Method::PATCH, true, None | Some("status" | "resize")) => patch(&req, &info).await,
        (&Method::DELETE, true, None) => delete(&req, &info).await,
        (&Method::DELETE, false, None) if info.supports("deletecollection") => {
            delete_collection(&req, &info).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            info.resource
        ))),
    }
}

fn key_of(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    if info.namespaced {
        object_key(namespace, name)
    } else {
        object_key(None, name)
    }
}

/// The object as served at the requested version (custom resources may be stored at
/// another version of the same schema).
fn served(info: &ResourceInfo, object: &Value) -> Value {
    let mut object = object.clone();
    if info.custom
        && let Some(map) = object.as_object_mut()
    {
        map.insert("apiVersion".into(), json!(info.api_version()));
    }
    object
}

fn respond_object(
    req: &Request<'_>,
    info: &ResourceInfo,
    code: StatusCode,
    object: &Value,
) -> Response {
    let object = served(info, object);
    if table::wants_table(req.accept()) {
        let columns = &info.printer_columns;
        let rv = objects::meta_str(&object, "resourceVersion")
            .unwrap_or("")
            .to_owned();
        return json_response(
            code,
            &table::render(
                info,
                columns,
                &[&object],
                &rv,
                None,
                req.query.include_object.as_deref(),
            ),
        );
    }
    if table::wants_metadata(req.accept()) {
        return json_response(code, &table::partial_object(&object));
    }
    json_response(code, &object)
}

fn get(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let name = req.target.name.as_deref().unwrap_or("");
    let key = key_of(info, req.target.namespace.as_deref(), name);
    let object = req
        .state
        .store
        .get(&info.storage_key(), &key)
        .ok_or_else(|| ApiError::not_found(&info.group, &info.resource, name))?;
    Ok(respond_object(req, info, StatusCode::OK, &object))
}

/// The continue token: opaque to clients, base64 of the last key served.
fn encode_continue(rv: u64, last_key: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last_key}\u{0}")});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let invalid =
        || ApiError::bad_request("continue key is not valid: the continue token is malformed");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let start = value
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?;
    Ok(start.trim_end_matches('\u{0}').to_owned())
}

fn list_kind(info: &ResourceInfo) -> String {
    format!("{}List", info.kind)
}

fn list(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let filter = Filter::parse(
        info,
        req.query.label_selector.as_deref(),
        req.query.field_selector.as_deref(),
    )?;
    let limit: Option<usize> =
        parse_number("limit", req.query.limit.as_deref())?.filter(|l| *l > 0);
    let after = req
        .query
        .continue_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_continue)
        .transpose()?;
    check_list_version(req, info)?;
    let snapshot = req.state.store.list(
        &info.storage_key(),
        req.target.namespace.as_deref(),
        after.as_deref(),
        limit,
        &|o| filter.matches(o),
    );
    let rv = snapshot.resource_version.to_string();
    let continue_token = if snapshot.more {
        snapshot
            .items
            .last()
            .map(|(key, _)| encode_continue(snapshot.resource_version, key))
    } else {
        None
    };
    let items: Vec<Value> = snapshot
        .items
        .iter()
        .map(|(_, o)| served(info, o))
        .collect();
    let refs: Vec<&Value> = items.iter().collect();
    if table::wants_table(req.accept()) {
        return Ok(json_response(
            StatusCode::OK,
            &table::render(
                info,
                &info.printer_columns,
                &refs,
                &rv,
                continue_token.as_deref(),
                req.query.include_object.as_deref(),
            ),
        ));
    }
    if table::wants_metadata(req.accept()) {
        return Ok(json_response(
            StatusCode::OK,
            &table::metadata_list(&refs, &rv, continue_token.as_deref()),
        ));
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": list_kind(info),
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

/// `resourceVersion` + `resourceVersionMatch` on a list: we serve the latest state, which
/// satisfies "not older than" any version we have reached; an exact older version is gone.
fn check_list_version(req: &Request<'_>, info: &ResourceInfo) -> Result<(), ApiError> {
    let requested: Option<u64> =
        parse_number("resourceVersion", req.query.resource_version.as_deref())?;
    let current = req.state.store.resource_version();
    match (requested, req.query.resource_version_match.as_deref()) {
        (_, Some(m)) if !m.is_empty() && m != "Exact" && m != "NotOlderThan" => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
        (Some(rv), Some("Exact")) if rv != current => Err(ApiError::gone(rv, current)),
        (Some(rv), _) if rv > current => Err(ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {rv}, current: {current}"),
        )
        .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1, "kind": info.resource}))),
        _ => Ok(()),
    }
}

/// Checks that the target namespace exists and is not terminating (Kubernetes'
/// NamespaceLifecycle admission).
fn check_namespace(req: &Request<'_>, info: &ResourceInfo) -> Result<(), ApiError> {
    let Some(ns) = req.target.namespace.as_deref().filter(|_| info.namespaced) else {
        return Ok(());
    };
    let namespace = req
        .state
        .store
        .get("/namespaces", ns)
        .ok_or_else(|| ApiError::not_found("", "namespaces", ns))?;
    if namespace.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                super::error::qualified(&info.group, &info.resource),
                "",
            ),
        ));
    }
    Ok(())
}

async fn commit(
    req: &Request<'_>,
    info: &ResourceInfo,
    key: &str,
    mutation: Mutation,
) -> Result<Committed, ApiError> {
    if req.query.dry_run()? {
        req.state.store.dry_run(&info.storage_key(), key, mutation)
    } else {
        let committed = req
            .state
            .store
            .mutate(&info.storage_key(), key, mutation)
            .await?;
        crd::after_commit(req.state, info, &committed);
        Ok(committed)
    }
}

async fn create(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let mut body = decode_body(req.content_type(), &req.body)?;
    check_namespace(req, info)?;
    let options = req.write_options(info, Verb::Create, None)?;
    let stamp = Stamp::fresh();
    crd::validate(req.state, info, &mut body)?;
    let warnings = options.prune(&mut body)?;
    options.default(&mut body);
    let incoming = managed::managed_fields(&body);
    if is_pod(info) {
        admit_pod(req, &mut body);
    }
    let prepared = objects::prepare_create(info, req.target.namespace.as_deref(), body, &stamp)?;
    let prepared = options.finish(None, Outcome::Put(prepared), incoming.as_ref(), None)?;
    let Outcome::Put(prepared) = prepared else {
        return Err(ApiError::internal("a create must store an object"));
    };
    let name = objects::name_of(&prepared).to_owned();
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    let (group, resource) = (info.group.clone(), info.resource.clone());
    let committed = commit(
        req,
        info,
        &key,
        Box::new(move |current| match current {
            Some(_) => Err(ApiError::already_exists(&group, &resource, &name)),
            None => Ok(Outcome::Put(prepared)),
        }),
    )
    .await?;
    Ok(with_warnings(
        respond_object(req, info, StatusCode::CREATED, &committed.object),
        &warnings,
    ))
}

/// Admission of a pod being created: the ServiceAccount token volume.
fn admit_pod(req: &Request<'_>, pod: &mut Value) {
    let automount = account_automount(req, pod);
    super::serviceaccount::mount_token(pod, automount, &objects::name_suffix());
}

/// `automountServiceAccountToken` of the pod's ServiceAccount, if set.
fn account_automount(req: &Request<'_>, pod: &Value) -> Option<bool> {
    let account = pod
        .pointer("/spec/serviceAccountName")
        .or_else(|| pod.pointer("/spec/serviceAccount"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let ns = req.target.namespace.as_deref()?;
    req.state
        .store
        .get("/serviceaccounts", &object_key(Some(ns), account))?
        .get("automountServiceAccountToken")?
        .as_bool()
}

fn is_pod(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.resource == "pods" && !info.custom
}

fn update_mutation(
    options: WriteOptions,
    name: String,
    mut new: Value,
    subresource: Option<String>,
) -> Mutation {
    Box::new(move |current| {
        options.default(&mut new);
        let info = &options.info;
        let old = current.ok_or_else(|| ApiError::not_found(&info.group, &info.resource, &name))?;
        let incoming = managed::managed_fields(&new);
        let outcome = objects::prepare_update(info, old, new, subresource.as_deref())?;
        options.finish(Some(old), outcome, incoming.as_ref(), None)
    })
}

/// The `status` subresource takes the body's status, `resize` its containers' resources
/// (`pods::apply_resize`), `finalize` a namespace's spec.finalizers.
fn subresource_of_update(sub: Option<&str>) -> Option<String> {
    match sub {
        Some(sub @ ("status" | "resize" | "finalize")) => Some(sub.into()),
        _ => None,
    }
}

async fn update(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let mut body = decode_body(req.content_type(), &req.body)?;
    let name = req.target.name.clone().unwrap_or_default();
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    let subresource = subresource_of_update(req.target.subresource.as_deref());
    let options = req.write_options(info, Verb::Update, subresource.as_deref())?;
    crd::validate(req.state, info, &mut body)?;
    let warnings = options.prune(&mut body)?;
    let committed = commit(
        req,
        info,
        &key,
        update_mutation(options, name, body, subresource),
    )
    .await?;
    Ok(with_warnings(
        respond_object(req, info, StatusCode::OK, &committed.object),
        &warnings,
    ))
}

async fn patch(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let patch_type = PatchType::from_content_type(req.content_type())
        .ok_or_else(|| ApiError::unsupported_media_type(req.content_type()))?;
    if patch_type == PatchType::Apply {
        return apply(req, info).await;
    }
    let name = req.target.name.clone().unwrap_or_default();
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    let subresource = subresource_of_update(req.target.subresource.as_deref());
    let options = req.write_options(info, Verb::Patch, subresource.as_deref())?;
    let body = req.body.clone();
    let state = req.state.clone();
    let warnings = Arc::new(std::sync::Mutex::new(Vec::new()));
    let found = Arc::clone(&warnings);
    let mutation: Mutation = Box::new(move |current| {
        let info = &options.info;
        let old = current.ok_or_else(|| ApiError::not_found(&info.group, &info.resource, &name))?;
        let mut patched = apply_patch(info, patch_type, old, &body)?;
        crd::validate(&state, info, &mut patched)?;
        let unknown = options.prune(&mut patched)?;
        options.default(&mut patched);
        if let Ok(mut list) = found.lock() {
            *list = unknown;
        }
        let incoming = managed::managed_fields(&patched);
        let outcome = objects::prepare_update(info, old, patched, subresource.as_deref())?;
        options.finish(Some(old), outcome, incoming.as_ref(), None)
    });
    let committed = commit(req, info, &key, mutation).await?;
    let warnings = warnings.lock().map(|w| w.clone()).unwrap_or_default();
    Ok(with_warnings(
        respond_object(req, info, StatusCode::OK, &committed.object),
        &warnings,
    ))
}

/// Server-side apply (`application/apply-patch+yaml`): merges the configuration into the
/// live object, or creates it (201) when there is none.
async fn apply(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let subresource = subresource_of_update(req.target.subresource.as_deref());
    let options = req.write_options(info, Verb::Apply, subresource.as_deref())?;
    let mut config: Value = serde_yaml::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    managed::check_apply_config(info, &config)?;
    let name = req.target.name.clone().unwrap_or_default();
    match objects::meta_str(&config, "name") {
        Some(given) if !given.is_empty() && given != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        Some(_) => {}
        None => {
            if let Some(map) = config.as_object_mut() {
                let meta = map.entry("metadata").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert("name".into(), json!(name));
                }
            }
        }
    }
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    if req.state.store.get(&info.storage_key(), &key).is_none() {
        check_namespace(req, info)?;
    }
    // The configuration is pruned but not defaulted: its applier must not own defaults.
    let warnings = options.prune(&mut config)?;
    let namespace = req.target.namespace.clone();
    // A pod created by apply is admitted like any new pod.
    let pod_admission =
        is_pod(info).then(|| (account_automount(req, &config), objects::name_suffix()));
    let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let was_created = Arc::clone(&created);
    let mutation: Mutation = Box::new(move |current| {
        let info = &options.info;
        let Some(old) = current else {
            if options.manager.subresource.is_empty() {
                let merged = managed::apply(
                    info,
                    options.schema_value(),
                    &options.manager,
                    None,
                    &config,
                    options.force,
                )?;
                let applied = managed::managed_fields(&merged);
                let mut merged = merged;
                options.default(&mut merged);
                if let Some((automount, suffix)) = &pod_admission {
                    super::serviceaccount::mount_token(&mut merged, *automount, suffix);
                }
                let prepared =
                    objects::prepare_create(info, namespace.as_deref(), merged, &Stamp::fresh())?;
                was_created.store(true, std::sync::atomic::Ordering::Relaxed);
                return options.finish(None, Outcome::Put(prepared), None, Some(applied));
            }
            return Err(ApiError::not_found(&info.group, &info.resource, &name));
        };
        let merged = managed::apply(
            info,
            options.schema_value(),
            &options.manager,
            Some(old),
            &config,
            options.force,
        )?;
        let applied = managed::managed_fields(&merged);
        let mut merged = merged;
        options.default(&mut merged);
        let outcome = objects::prepare_update(
            info,
            old,
            merged,
            Some(options.manager.subresource.as_str()).filter(|s| !s.is_empty()),
        )?;
        options.finish(Some(old), outcome, None, Some(applied))
    });
    let committed = commit(req, info, &key, mutation).await?;
    let code = if created.load(std::sync::atomic::Ordering::Relaxed) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_warnings(
        respond_object(req, info, code, &committed.object),
        &warnings,
    ))
}

/// Produces the desired Scale from the current one.
type ScaleEdit = Box<dyn FnOnce(&Value) -> Result<Value, ApiError> + Send>;

/// The `autoscaling/v1` Scale of a Deployment/ReplicaSet (or custom resource).
fn scale_of(info: &ResourceInfo, object: &Value) -> Value {
    let Some(paths) = &info.scale else {
        return json!({});
    };
    let (spec_path, status_path) = (&paths.spec_replicas, &paths.status_replicas);
    let selector = paths
        .label_selector
        .as_deref()
        .and_then(|p| object.pointer(p))
        .map(|s| match s {
            Value::String(text) => text.clone(),
            other => {
                let labels = other.get("matchLabels").and_then(Value::as_object);
                let mut parts: Vec<String> = labels
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                parts.sort();
                parts.join(",")
            }
        })
        .unwrap_or_default();
    let meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer(spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer(status_path).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

fn get_scale(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let name = req.target.name.as_deref().unwrap_or("");
    let key = key_of(info, req.target.namespace.as_deref(), name);
    let object = req
        .state
        .store
        .get(&info.storage_key(), &key)
        .ok_or_else(|| ApiError::not_found(&info.group, &info.resource, name))?;
    Ok(json_response(StatusCode::OK, &scale_of(info, &object)))
}

fn set_replicas(info: &ResourceInfo, old: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            objects::name_of(old),
            &[super::error::FieldError::invalid(
                "spec.replicas",
                &json!(replicas),
                "must be greater than or equal to 0",
            )],
        ));
    }
    if let Some(rv) = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && !rv.is_empty()
        && Some(rv) != objects::meta_str(old, "resourceVersion")
    {
        return Err(ApiError::conflict_modified(
            &info.group,
            &info.resource,
            objects::name_of(old),
        ));
    }
    let spec_path = info
        .scale
        .as_ref()
        .map_or("/spec/replicas", |p| p.spec_replicas.as_str());
    let mut new = old.clone();
    let parent = spec_path.rsplit_once('/').map_or("", |(p, _)| p);
    let field = spec_path.rsplit('/').next().unwrap_or("replicas");
    if new.pointer(parent).is_none()
        && let Some(map) = new.as_object_mut()
    {
        map.insert(parent.trim_start_matches('/').to_owned(), json!({}));
    }
    if let Some(target) = new.pointer_mut(parent).and_then(Value::as_object_mut) {
        target.insert(field.to_owned(), json!(replicas));
    }
    // The version check was done against the Scale; the object update is unconditional.
    if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Ok(new)
}

async fn scale_with(
    req: &Request<'_>,
    info: &ResourceInfo,
    verb: Verb,
    make_scale: ScaleEdit,
) -> Result<Response, ApiError> {
    let name = req.target.name.clone().unwrap_or_default();
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    let options = req.write_options(info, verb, Some("scale"))?;
    let mutation: Mutation = Box::new(move |current| {
        let info = &options.info;
        let old = current.ok_or_else(|| ApiError::not_found(&info.group, &info.resource, &name))?;
        let scale = make_scale(&scale_of(info, old))?;
        let new = set_replicas(info, old, &scale)?;
        let outcome = objects::prepare_update(info, old, new, None)?;
        options.finish(Some(old), outcome, None, None)
    });
    let committed = commit(req, info, &key, mutation).await?;
    Ok(json_response(
        StatusCode::OK,
        &scale_of(info, &committed.object),
    ))
}

async fn update_scale(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let body = decode_body(req.content_type(), &req.body)?;
    scale_with(req, info, Verb::Update, Box::new(move |_| Ok(body))).await
}

async fn patch_scale(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let patch_type = PatchType::from_content_type(req.content_type())
        .ok_or_else(|| ApiError::unsupported_media_type(req.content_type()))?;
    // A strategic merge patch of a Scale is a merge patch: Scale has no lists.
    let patch_type = if patch_type == PatchType::StrategicMerge {
        PatchType::Merge
    } else {
        patch_type
    };
    let body = req.body.clone();
    let scale_info = info.clone();
    scale_with(
        req,
        info,
        Verb::Patch,
        Box::new(move |scale| apply_patch(&scale_info, patch_type, scale, &body)),
    )
    .await
}

fn delete_options(req: &Request<'_>) -> Result<DeleteOptions, ApiError> {
    let body = if req.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(decode_body(req.content_type(), &req.body)?)
    };
    let grace = parse_number(
        "gracePeriodSeconds",
        req.query.grace_period_seconds.as_deref(),
    )?;
    DeleteOptions::from_parts(
        body.as_ref(),
        req.query.propagation_policy.as_deref(),
        grace,
    )
}

fn delete_mutation(info: &ResourceInfo, name: String, opts: DeleteOptions) -> Mutation {
    let info = info.clone();
    Box::new(move |current| {
        let old = current.ok_or_else(|| ApiError::not_found(&info.group, &info.resource, &name))?;
        objects::prepare_delete(&info, old, &opts, &objects::now_rfc3339())
    })
}

async fn delete(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let opts = delete_options(req)?;
    let name = req.target.name.clone().unwrap_or_default();
    let key = key_of(info, req.target.namespace.as_deref(), &name);
    let committed = commit(req, info, &key, delete_mutation(info, name, opts)).await?;
    let code = if committed.deleted {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(respond_object(req, info, code, &committed.object))
}

async fn delete_collection(req: &Request<'_>, info: &ResourceInfo) -> Result<Response, ApiError> {
    let opts = delete_options(req)?;
    let filter = Filter::parse(
        info,
        req.query.label_selector.as_deref(),
        req.query.field_selector.as_deref(),
    )?;
    let snapshot = req.state.store.list(
        &info.storage_key(),
        req.target.namespace.as_deref(),
        None,
        None,
        &|o| filter.matches(o),
    );
    let mut items = Vec::new();
    for (key, object) in snapshot.items {
        let name = objects::name_of(&object).to_owned();
        match commit(req, info, &key, delete_mutation(info, name, opts.clone())).await {
            Ok(committed) => items.push(served(info, &committed.object)),
            // Deleted concurrently: nothing left to do for it.
            Err(err) if err.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": list_kind(info),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": req.state.store.resource_version().to_string()},
            "items": items,
        }),
    ))
}

/// Used by watch: the objects a list would return now, with their version.
pub fn initial_state_of(
    store: &super::store::Store,
    info: &ResourceInfo,
    namespace: Option<&str>,
    filter: &Filter,
) -> (u64, Vec<Arc<Value>>) {
    let snapshot = store.list(&info.storage_key(), namespace, None, None, &|o| {
        filter.matches(o)
    });
    (
        snapshot.resource_version,
        snapshot.items.into_iter().map(|(_, o)| o).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, "ns/name-7");
        assert_eq!(decode_continue(&token).unwrap(), "ns/name-7");
        assert_eq!(decode_continue("not base64!").unwrap_err().code, 400);
    }

    #[test]
    fn bodies_decode_from_json_yaml_and_protobuf_only() {
        assert_eq!(
            decode_body("application/json", br#"{"a":1}"#).unwrap()["a"],
            1
        );
        assert_eq!(decode_body("application/yaml", b"a: 1\n").unwrap()["a"], 1);
        assert_eq!(
            decode_body("application/json", b"{nope").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_body("application/json", b"[1]").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_body("application/vnd.kubernetes.protobuf", b"x")
                .unwrap_err()
                .code,
            400,
            "protobuf is decoded (and this is not a k8s protobuf body)"
        );
        assert_eq!(decode_body("application/cbor", b"x").unwrap_err().code, 415);
    }

    #[test]
    fn query_flags() {
        assert!(is_true(Some("1")) && is_true(Some("true")) && !is_true(None));
        let q = Query {
            dry_run: Some("All".into()),
            ..Query::default()
        };
        assert!(q.dry_run().unwrap());
        let bad = Query {
            dry_run: Some("Some".into()),
            ..Query::default()
        };
        assert_eq!(bad.dry_run().unwrap_err().code, 400);
    }
}
