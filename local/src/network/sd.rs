//! Prometheus HTTP service discovery (`http_sd_configs`) for Prometheus builds without
//! Kubernetes discovery — Debian's `prometheus` package is built without it
//! (`kubernetes_sd_configs` is an unknown field there).
//!
//! Contract: `GET /sd/pods` and `GET /sd/nodes` answer target groups carrying the same
//! `__address__` and `__meta_kubernetes_*` labels that Prometheus' own Kubernetes discovery
//! (`role: pod`, `role: node`) gives, so one set of relabel rules serves both:
//! - pods with an IP: one target per container port (`podIP:containerPort`), or one
//!   port-less target per container without ports; labels `namespace`, `pod_name`,
//!   `pod_ip`, `pod_phase`, `pod_node_name`, `pod_uid`, `pod_container_name`,
//!   `pod_container_port_name|number|protocol`, `pod_label_<name>`,
//!   `pod_annotation_<name>` (names sanitised as Prometheus does);
//! - nodes: `InternalIP:kubeletPort`, labels `node_name`, `node_label_<name>`,
//!   `node_address_<type>`.
//!
//! Plain HTTP on a loopback address, no authentication: it only lists what any cluster
//! reader sees, and only to local processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One target group of the HTTP SD response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Prometheus' label-name sanitising: anything outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn meta(labels: &mut BTreeMap<String, String>, key: &str, value: impl Into<String>) {
    labels.insert(format!("__meta_kubernetes_{key}"), value.into());
}

/// The targets Kubernetes discovery's `role: pod` gives for `pod`.
pub fn pod_targets(pod: &Pod) -> Vec<TargetGroup> {
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
        return Vec::new();
    };
    let mut common = BTreeMap::new();
    let m = &pod.metadata;
    meta(
        &mut common,
        "namespace",
        m.namespace.clone().unwrap_or_default(),
    );
    meta(&mut common, "pod_name", m.name.clone().unwrap_or_default());
    meta(&mut common, "pod_uid", m.uid.clone().unwrap_or_default());
    meta(&mut common, "pod_ip", ip.clone());
    if let Some(status) = &pod.status {
        meta(
            &mut common,
            "pod_phase",
            status.phase.clone().unwrap_or_default(),
        );
    }
    if let Some(spec) = &pod.spec {
        meta(
            &mut common,
            "pod_node_name",
            spec.node_name.clone().unwrap_or_default(),
        );
    }
    for (k, v) in m.labels.iter().flatten() {
        meta(
            &mut common,
            &format!("pod_label_{}", sanitize(k)),
            v.clone(),
        );
    }
    for (k, v) in m.annotations.iter().flatten() {
        meta(
            &mut common,
            &format!("pod_annotation_{}", sanitize(k)),
            v.clone(),
        );
    }
    let mut groups = Vec::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let mut labels = common.clone();
        meta(&mut labels, "pod_container_name", container.name.clone());
        meta(
            &mut labels,
            "pod_container_image",
            container.image.clone().unwrap_or_default(),
        );
        let ports = container.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            groups.push(TargetGroup {
                targets: vec![ip.clone()],
                labels,
            });
            continue;
        }
        for port in ports {
            let mut labels = labels.clone();
            meta(
                &mut labels,
                "pod_container_port_name",
                port.name.clone().unwrap_or_default(),
            );
            meta(
                &mut labels,
                "pod_container_port_number",
                port.container_port.to_string(),
            );
            meta(
                &mut labels,
                "pod_container_port_protocol",
                port.protocol.clone().unwrap_or_else(|| "TCP".into()),
            );
            groups.push(TargetGroup {
                targets: vec![format!("{ip}:{}", port.container_port)],
                labels,
            });
        }
    }
    groups
}

/// The target Kubernetes discovery's `role: node` gives for `node`.
pub fn node_targets(node: &Node) -> Vec<TargetGroup> {
    let status = node.status.as_ref();
    let addresses = status.and_then(|s| s.addresses.as_ref());
    let Some(ip) = addresses
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
    else {
        return Vec::new();
    };
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map_or(10250, |e| e.port);
    let mut labels = BTreeMap::new();
    meta(
        &mut labels,
        "node_name",
        node.metadata.name.clone().unwrap_or_default(),
    );
    for (k, v) in node.metadata.labels.iter().flatten() {
        meta(
            &mut labels,
            &format!("node_label_{}", sanitize(k)),
            v.clone(),
        );
    }
    for address in addresses.into_iter().flatten() {
        meta(
            &mut labels,
            &format!("node_address_{}", sanitize(&address.type_)),
            address.address.clone(),
        );
    }
    vec![TargetGroup {
        targets: vec![format!("{ip}:{port}")],
        labels,
    }]
}

#[derive(Clone)]
struct Stores {
    pods: Store<Pod>,
    nodes: Store<Node>,
}

async fn pods(State(stores): State<Stores>) -> Json<Vec<TargetGroup>> {
    let mut pods = stores.pods.state();
    pods.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    Json(pods.iter().flat_map(|p| pod_targets(p)).collect())
}

async fn nodes(State(stores): State<Stores>) -> Json<Vec<TargetGroup>> {
    let mut nodes = stores.nodes.state();
    nodes.sort_by_key(|n| n.metadata.name.clone());
    Json(nodes.iter().flat_map(|n| node_targets(n)).collect())
}

/// Serves `/sd/pods` and `/sd/nodes` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pods_store: Store<Pod>,
    nodes_store: Store<Node>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/sd/pods", get(pods))
        .route("/sd/nodes", get(nodes))
        .with_state(Stores {
            pods: pods_store,
            nodes: nodes_store,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Binds the SD listener (fails with the address in the message).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("Prometheus service discovery cannot listen on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_give_one_target_per_container_port_with_kubernetes_sd_labels() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app.kubernetes.io/name": "web"},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}},
            "spec": {"nodeName": "cellmesh-local", "containers": [
                {"name": "app", "image": "img", "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "side"}]},
            "status": {"phase": "Running", "podIP": "127.64.0.9"},
        }))
        .unwrap();
        let groups = pod_targets(&pod);
        let targets: Vec<&str> = groups.iter().map(|g| g.targets[0].as_str()).collect();
        assert_eq!(
            targets,
            ["127.64.0.9:8080", "127.64.0.9:9090", "127.64.0.9"]
        );
        let l = &groups[1].labels;
        assert_eq!(l["__meta_kubernetes_namespace"], "shop");
        assert_eq!(l["__meta_kubernetes_pod_name"], "web-1");
        assert_eq!(l["__meta_kubernetes_pod_container_name"], "app");
        assert_eq!(l["__meta_kubernetes_pod_container_port_name"], "metrics");
        assert_eq!(l["__meta_kubernetes_pod_container_port_number"], "9090");
        assert_eq!(
            l["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "true"
        );
        assert_eq!(
            l["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "web"
        );
        assert_eq!(
            groups[2].labels["__meta_kubernetes_pod_container_name"],
            "sidecar"
        );
        // No IP yet: nothing to scrape.
        let mut pending = pod.clone();
        pending.status = None;
        assert!(pod_targets(&pending).is_empty());
    }

    #[test]
    fn nodes_give_their_kubelet_endpoint() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "cellmesh-local", "labels": {"kubernetes.io/os": "linux"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                     {"type": "Hostname", "address": "cellmesh-local"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}},
        }))
        .unwrap();
        let groups = node_targets(&node);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].targets, ["127.0.0.1:10250"]);
        assert_eq!(
            groups[0].labels["__meta_kubernetes_node_name"],
            "cellmesh-local"
        );
        assert_eq!(
            groups[0].labels["__meta_kubernetes_node_label_kubernetes_io_os"],
            "linux"
        );
        assert_eq!(
            groups[0].labels["__meta_kubernetes_node_address_InternalIP"],
            "127.0.0.1"
        );
    }
}
