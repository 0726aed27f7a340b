//! `cellmesh-local apiserver`: a Kubernetes-compatible API server.
//!
//! Serves HTTPS (rustls, HTTP/1.1 and HTTP/2) with a CA and admin bearer token kept under
//! the state directory and a kubeconfig written next to them; every request except the
//! health and version endpoints must carry a known bearer token (else 401). Objects live
//! in [`store`] (durable before acknowledged); [`rest`] implements the generic resource
//! verbs; [`discovery`] the discovery documents; [`watch`] the watch streams.

mod admission;
mod auth;
mod authz;
mod crd;
mod defaults;
mod discovery;
pub mod error;
mod machinery;
mod managed;
mod metrics_api;
mod objects;
mod openapi;
mod path;
pub mod pki;
mod podlog;
mod pods;
mod protobuf;
mod registry;
mod rest;
pub mod service_ip;
mod serviceaccount;
pub mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use cellmesh_apimachinery::rbac::UserInfo;
use error::ApiError;
use registry::Registry;
use store::{Outcome, Store};

/// Bodies above this size are refused with 413 (Kubernetes' limit for JSON bodies).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The Kubernetes version this server reports.
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How many recent events watches can resume from.
    pub event_window: usize,
    /// The range Service ClusterIPs are allocated from.
    pub service_cidr: ipnet::Ipv4Net,
}

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Registry,
    pub config: Arc<RuntimeConfig>,
    /// Hands out Service ClusterIPs.
    pub cluster_ips: Arc<service_ip::ClusterIps>,
}

/// What handlers need of the configuration once the server is up.
#[derive(Debug)]
pub struct RuntimeConfig {
    pub bookmark_interval: Duration,
    pub server_address: String,
    /// Bearer tokens accepted as the cluster admin.
    pub admin_tokens: Vec<String>,
    /// Signs and verifies ServiceAccount tokens.
    pub token_keys: auth::TokenKeys,
    /// The state directory (the node agent's pod logs live under it).
    pub state_dir: PathBuf,
}

impl AppState {
    /// Opens the store under `config.state_dir`, registers stored CRDs and creates the
    /// namespaces every cluster has.
    pub async fn open(
        config: &Config,
        server_address: String,
        admin_token: String,
    ) -> anyhow::Result<Self> {
        let store = Store::open(&config.state_dir.join("state.db"), config.event_window)?;
        let state = Self {
            store,
            registry: Registry::new(),
            cluster_ips: Arc::new(service_ip::ClusterIps::new(config.service_cidr)),
            config: Arc::new(RuntimeConfig {
                bookmark_interval: config.bookmark_interval,
                server_address,
                admin_tokens: vec![admin_token],
                token_keys: auth::TokenKeys::load_or_create(&config.state_dir)?,
                state_dir: config.state_dir.clone(),
            }),
        };
        state
            .registry
            .set_custom(metrics_api::GROUP, metrics_api::resources());
        crd::load_all(&state);
        state.bootstrap().await?;
        authz::bootstrap(&state).await?;
        authz::ensure_default_service_accounts(&state).await;
        tokio::spawn(authz::run_service_account_controller(state.clone()));
        Ok(state)
    }

    async fn bootstrap(&self) -> anyhow::Result<()> {
        let info = self
            .registry
            .lookup("", "v1", "namespaces")
            .ok_or_else(|| anyhow::anyhow!("namespaces are not registered"))?;
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.store.get("/namespaces", name).is_some() {
                continue;
            }
            let object = objects::prepare_create(
                &info,
                None,
                json!({"metadata": {"name": name}}),
                &objects::Stamp::fresh(),
            )
            .map_err(|e| anyhow::anyhow!("bootstrap namespace {name}: {e}"))?;
            let result = self
                .store
                .mutate(
                    "/namespaces",
                    name,
                    Box::new(move |current| match current {
                        Some(existing) => Ok(Outcome::Unchanged(existing.clone())),
                        None => Ok(Outcome::Put(object)),
                    }),
                )
                .await;
            result.map_err(|e| anyhow::anyhow!("bootstrap namespace {name}: {e}"))?;
        }
        Ok(())
    }
}

/// The HTTP router: everything goes through [`dispatch`], which routes by path the way
/// the Kubernetes API is laid out (too dynamic for static routes: CRDs add paths).
pub fn router(state: AppState) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

fn text(code: StatusCode, body: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn version_body() -> serde_json::Value {
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": format!("v{major}.{minor}.0-cellmesh.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "cellmesh-local",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// The requester: authenticated by bearer token, then impersonation applied.
fn identify(state: &AppState, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let user = auth::authenticate(
        headers,
        &state.config.admin_tokens,
        &state.config.token_keys,
        &state.store,
    )
    .ok_or_else(ApiError::unauthorized)?;
    auth::impersonate(user, headers, || authz::policy_of(&state.store))
}

fn accept_of(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether a response in JSON is acceptable to the client. Clients built on client-go may
/// prefer protobuf but list JSON as well; we always answer JSON.
fn accepts_json(accept: &str) -> bool {
    accept.is_empty()
        || accept.split(',').any(|m| {
            let media = m.split(';').next().unwrap_or("").trim();
            matches!(
                media,
                "application/json" | "*/*" | "application/*" | "application/yaml"
            )
        })
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = route(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let status = response.status();
    if status.is_server_error() {
        tracing::error!(%method, %uri, %status, "request failed");
    } else {
        tracing::debug!(%method, %uri, %status, elapsed_ms = started.elapsed().as_millis(), "request");
    }
    response
}

async fn route(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return Ok(text(StatusCode::OK, "ok")),
        "/version" => return Ok(rest::json_response(StatusCode::OK, &version_body())),
        _ => {}
    }
    let user = identify(state, &parts.headers)?;
    let accept = accept_of(&parts.headers).to_owned();
    if !accepts_json(&accept) {
        tracing::warn!(%path, %accept, "client does not accept JSON; answering JSON anyway");
    }
    let Some(target) = path::parse(&path) else {
        authz::check_path(&state.store, &user, &parts.method, &path)?;
        if parts.method == Method::GET
            && let Some(response) = discovery_response(state, &path, &accept)
        {
            return response;
        }
        tracing::warn!(method = %parts.method, %path, %accept, "unhandled request: no such path");
        return Err(ApiError::no_route());
    };
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES + 1)
        .await
        .map_err(|_| ApiError::too_large())?;
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large());
    }
    let query = axum::extract::Query::<rest::Query>::try_from_uri(&parts.uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query parameters: {e}")))?
        .0;
    authz::check_resource(&state.store, &user, &parts.method, &target, &query)?;
    // Served by the node agent's data rather than the store.
    if target.group.is_empty()
        && target.resource == "pods"
        && target.subresource.as_deref() == Some("log")
        && parts.method == Method::GET
    {
        return podlog::serve(state, &target, &parts.uri).await;
    }
    if target.group == metrics_api::GROUP {
        return metrics_api::serve(state, &parts.method, &target, &query).await;
    }
    if authz::is_virtual(&target) {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return authz::serve(state, &user, &parts.method, &target, content_type, &body).await;
    }
    rest::handle(rest::Request {
        state,
        method: &parts.method,
        target,
        query,
        headers: &parts.headers,
        body,
    })
    .await
}

fn discovery_json(body: &serde_json::Value, content_type: &'static str) -> Response {
    let mut response = rest::json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Discovery documents, or `None` when `path` is not a discovery path.
fn discovery_response(
    state: &AppState,
    path: &str,
    accept: &str,
) -> Option<Result<Response, ApiError>> {
    let aggregated = discovery::wants_aggregated(accept);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match parts.as_slice() {
        ["api"] if aggregated => discovery_json(
            &discovery::aggregated(&state.registry, true),
            discovery::AGGREGATED_V2,
        ),
        ["api"] => rest::json_response(
            StatusCode::OK,
            &discovery::api_versions(&state.config.server_address),
        ),
        ["apis"] if aggregated => discovery_json(
            &discovery::aggregated(&state.registry, false),
            discovery::AGGREGATED_V2,
        ),
        ["apis"] => {
            rest::json_response(StatusCode::OK, &discovery::api_group_list(&state.registry))
        }
        ["api", "v1"] => rest::json_response(
            StatusCode::OK,
            &discovery::api_resource_list(&state.registry, "", "v1"),
        ),
        ["apis", group] => match discovery::api_group(&state.registry, group) {
            Some(body) => rest::json_response(StatusCode::OK, &body),
            None => return Some(Err(ApiError::no_route())),
        },
        ["openapi", "v2"] => {
            let version = format!("v{}.{}.0", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1);
            let (content_type, body) = openapi::v2_document(accept, &version);
            let mut response = rest::json_text_response(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response
        }
        ["openapi", "v3"] => rest::json_response(
            StatusCode::OK,
            &openapi::root(&state.registry, &|info| crd::schema_of(state, info)),
        ),
        ["openapi", "v3", "api", version] | ["openapi", "v3", "apis", _, version] => {
            let group = parts
                .get(3)
                .filter(|_| parts[2] == "apis")
                .copied()
                .unwrap_or("");
            if !state.registry.serves_group_version(group, version) {
                return Some(Err(ApiError::no_route()));
            }
            let doc = openapi::document(&state.registry, group, version, &|info| {
                crd::schema_of(state, info)
            });
            rest::json_text_response(StatusCode::OK, doc.text.clone())
        }
        ["apis", group, version] => {
            if !state.registry.serves_group_version(group, version) {
                return Some(Err(ApiError::no_route()));
            }
            rest::json_response(
                StatusCode::OK,
                &discovery::api_resource_list(&state.registry, group, version),
            )
        }
        _ => return None,
    };
    Some(Ok(response))
}

/// A listener yielding TLS connections: handshakes run in their own tasks so one slow
/// client cannot stall accepting others.
struct TlsListener {
    connections: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor stopped (listener error): serve what is open, accept no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn spawn_acceptor(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> mpsc::Receiver<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    SocketAddr,
)> {
    let (tx, rx) = mpsc::channel(128);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Runs the API server until `shutdown` resolves. `ready` receives the bound address once
/// the kubeconfig is written and requests are being served.
pub async fn run(
    config: Config,
    ready: impl FnOnce(SocketAddr, &std::path::Path),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;
    let url = format!("https://{local}");
    let credentials = pki::prepare(&config.state_dir, local, &url)?;
    let state = AppState::open(&config, local.to_string(), credentials.admin_token.clone()).await?;
    let connections = spawn_acceptor(listener, Arc::clone(&credentials.tls));
    let app = router(state);
    ready(local, &pki::kubeconfig_path(&config.state_dir));
    // Writes are durable when acknowledged, so shutting down needs no flush: open watches
    // are simply cut and clients reconnect from their last version.
    tokio::select! {
        result = axum::serve(TlsListener { connections, local }, app) => result?,
        () = shutdown => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn test_state() -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: dir.path().to_owned(),
            bookmark_interval: Duration::from_secs(60),
            event_window: 1000,
            service_cidr: service_ip::DEFAULT_SERVICE_CIDR.parse().unwrap(),
        };
        let state = AppState::open(&config, "127.0.0.1:1".into(), "secret".into())
            .await
            .unwrap();
        (state, dir)
    }

    async fn call(
        state: &AppState,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let response = router(state.clone())
            .oneshot(builder.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, value)
    }

    #[tokio::test]
    async fn unauthenticated_requests_get_401_but_health_is_public() {
        let (state, _dir) = test_state().await;
        let (code, body) = call(&state, Method::GET, "/api/v1/namespaces", None, "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(body["reason"], "Unauthorized");
        let (code, _) = call(&state, Method::GET, "/api/v1/namespaces", Some("wrong"), "").await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let (code, version) = call(&state, Method::GET, "/version", None, "").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(version["minor"], "33");
        let (code, _) = call(&state, Method::GET, "/readyz", None, "").await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn crud_round_trip_with_conflict_and_dry_run() {
        let (state, _dir) = test_state().await;
        let t = Some("secret");
        let (code, ns) = call(&state, Method::GET, "/api/v1/namespaces/default", t, "").await;
        assert_eq!(code, StatusCode::OK, "default namespace bootstrapped: {ns}");
        let cm =
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}"#;
        let (code, dry) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            t,
            cm,
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
        assert_eq!(dry["metadata"]["name"], "c");
        let (code, _) = call(
            &state,
            Method::GET,
            "/api/v1/namespaces/default/configmaps/c",
            t,
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "dry run stored nothing");
        let (code, created) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            t,
            cm,
        )
        .await;
        assert_eq!(code, StatusCode::CREATED);
        let (code, again) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            t,
            cm,
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(again["reason"], "AlreadyExists");
        assert_eq!(again["message"], "configmaps \"c\" already exists");
        let mut stale = created.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        stale["data"]["a"] = json!("2");
        let (code, conflict) = call(
            &state,
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/c",
            t,
            &stale.to_string(),
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(conflict["reason"], "Conflict");
        let mut fresh = created.clone();
        fresh["data"]["a"] = json!("2");
        let (code, updated) = call(
            &state,
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/c",
            t,
            &fresh.to_string(),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(updated["data"]["a"], "2");
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        let (code, list) = call(&state, Method::GET, "/api/v1/configmaps", t, "").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(list["kind"], "ConfigMapList");
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (code, _) = call(
            &state,
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/c",
            t,
            "",
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let (code, gone) = call(
            &state,
            Method::GET,
            "/api/v1/namespaces/default/configmaps/c",
            t,
            "",
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(gone["message"], "configmaps \"c\" not found");
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_stores_nothing() {
        let (state, _dir) = test_state().await;
        let t = Some("secret");
        let before = state.store.resource_version();
        let (code, status) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            t,
            "{not json",
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(status["kind"], "Status");
        let (code, _) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            t,
            r#"{"kind":"Secret","metadata":{"name":"x"}}"#,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, _) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/nope/configmaps",
            t,
            r#"{"metadata":{"name":"x"}}"#,
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let huge = format!(
            r#"{{"metadata":{{"name":"x"}},"data":{{"a":"{}"}}}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let (code, status) = call(
            &state,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            t,
            &huge,
        )
        .await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(status["reason"], "RequestEntityTooLarge");
        let (code, _) = call(&state, Method::GET, "/api/v1/nonsense", t, "").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(state.store.resource_version(), before);
    }

    #[tokio::test]
    async fn crds_become_served_resources() {
        let (state, _dir) = test_state().await;
        let t = Some("secret");
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                                   "subresources": {"status": {}}}]}});
        let (code, created) = call(
            &state,
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            t,
            &crd.to_string(),
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{created}");
        let (code, list) = call(&state, Method::GET, "/apis/example.com/v1", t, "").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(list["resources"][0]["name"], "widgets");
        let widget = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w"},"spec":{"size":1},"status":{"x":1}}"#;
        let (code, w) = call(
            &state,
            Method::POST,
            "/apis/example.com/v1/namespaces/default/widgets",
            t,
            widget,
        )
        .await;
        assert_eq!(code, StatusCode::CREATED, "{w}");
        assert_eq!(w["metadata"]["generation"], 1);
        assert!(w.get("status").is_none(), "status is a subresource");
        let (code, _) = call(
            &state,
            Method::DELETE,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com",
            t,
            "",
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let (code, _) = call(&state, Method::GET, "/apis/example.com/v1", t, "").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }
}
