//! The `metrics.k8s.io/v1beta1` API (PodMetrics, NodeMetrics) behind `kubectl top`: the
//! server does what metrics-server does — it asks each Node's agent for its readings
//! (`GET <cellmesh.io/metrics-endpoint>/metrics/resource`, see `node::metrics`) and serves
//! them as lists or single objects. Read-only (`get`, `list`).

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::AppState;
use super::error::ApiError;
use super::path::Target;
use super::registry::ResourceInfo;
use super::rest::{Query, json_response};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The resources this API adds to discovery.
pub fn resources() -> Vec<ResourceInfo> {
    [
        ("pods", "PodMetrics", true),
        ("nodes", "NodeMetrics", false),
    ]
    .into_iter()
    .map(|(resource, kind, namespaced)| ResourceInfo {
        group: GROUP.into(),
        version: VERSION.into(),
        resource: resource.into(),
        singular: String::new(),
        kind: kind.into(),
        namespaced,
        verbs: vec!["get".into(), "list".into()],
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        tracks_generation: false,
        custom: false,
        printer_columns: Vec::new(),
        scale: None,
    })
    .collect()
}

/// `GET http://host:port/path` with HTTP/1.0 (the body ends at EOF).
async fn http_get(endpoint: &str, path: &str) -> Result<Value, String> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported metrics endpoint {endpoint:?}"))?
        .trim_end_matches('/');
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot reach {endpoint}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
        if head.split_whitespace().nth(1).is_none_or(|c| c != "200") {
            return Err(format!(
                "{endpoint}{path}: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        serde_json::from_str(body).map_err(|e| format!("{endpoint}{path}: invalid JSON: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{endpoint}: timed out"))?
}

/// Readings of every node that publishes a metrics endpoint.
async fn readings(state: &AppState) -> Vec<Value> {
    let nodes = state.store.list("/nodes", None, None, None, &|_| true);
    let mut out = Vec::new();
    for (_, node) in nodes.items {
        let Some(endpoint) = node
            .pointer("/metadata/annotations/cellmesh.io~1metrics-endpoint")
            .and_then(Value::as_str)
        else {
            continue;
        };
        match http_get(endpoint, "/metrics/resource").await {
            Ok(r) => out.push(r),
            Err(e) => tracing::debug!(error = %e, "node metrics unavailable"),
        }
    }
    out
}

fn with_kind(mut item: Value, kind: &str) -> Value {
    if let Some(map) = item.as_object_mut() {
        map.insert("kind".into(), json!(kind));
        map.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
    }
    item
}

fn matches_labels(
    item: &Value,
    selector: Option<&str>,
    labels_of: &dyn Fn(&Value) -> Value,
) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = labels_of(item);
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => {
            let v = v.trim_start_matches('=');
            let equal = labels.get(k.trim_end_matches('!')).and_then(Value::as_str) == Some(v);
            equal != k.ends_with('!')
        }
        None => labels.get(term).is_some(),
    })
}

pub async fn serve(
    state: &AppState,
    method: &Method,
    target: &Target,
    query: &Query,
) -> Result<Response, ApiError> {
    if method != Method::GET || target.subresource.is_some() {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            target.resource
        )));
    }
    let (kind, list_kind) = match target.resource.as_str() {
        "pods" => ("PodMetrics", "PodMetricsList"),
        "nodes" => ("NodeMetrics", "NodeMetricsList"),
        _ => return Err(ApiError::no_route()),
    };
    let mut items: Vec<Value> = Vec::new();
    for r in readings(state).await {
        if target.resource == "pods" {
            items.extend(
                r.get("pods")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
        } else if let Some(node) = r.get("node") {
            items.push(node.clone());
        }
    }
    // Pod labels come from the stored pods (selectors in `kubectl top pod -l`).
    let labels_of = |item: &Value| -> Value {
        let ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = match ns {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_owned(),
        };
        state
            .store
            .get(&format!("/{}", target.resource), &key)
            .and_then(|o| o.pointer("/metadata/labels").cloned())
            .unwrap_or(json!({}))
    };
    items.retain(|item| {
        target.namespace.as_deref().is_none_or(|ns| {
            item.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        })
    });
    if let Some(name) = &target.name {
        let found = items
            .into_iter()
            .find(|i| i.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()))
            .ok_or_else(|| ApiError::not_found(GROUP, &target.resource, name))?;
        return Ok(json_response(StatusCode::OK, &with_kind(found, kind)));
    }
    let items: Vec<Value> = items
        .into_iter()
        .filter(|i| matches_labels(i, query.label_selector.as_deref(), &labels_of))
        .map(|i| with_kind(i, kind))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": list_kind, "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}),
    ))
}

use axum::response::Response;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let labels = |_: &Value| json!({"app": "a", "tier": "web"});
        let item = json!({});
        assert!(matches_labels(&item, None, &labels));
        assert!(matches_labels(&item, Some("app=a"), &labels));
        assert!(matches_labels(&item, Some("app==a,tier"), &labels));
        assert!(!matches_labels(&item, Some("app=b"), &labels));
        assert!(matches_labels(&item, Some("app!=b"), &labels));
        assert!(!matches_labels(&item, Some("missing"), &labels));
        assert_eq!(resources().len(), 2);
    }
}
