//! `up`'s last step: wait until the example WorkModels are Ready (the operator reconciled
//! them and their pods run) and send one request through each one's gateway Service (or its
//! entry service's when it has no gateway), so the
//! user sees the whole path work — operator, node agent, ClusterIP proxy and the cells.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt as _};

/// Waits until WorkModel `namespace/name` reports `Ready=True`, up to `timeout`.
pub async fn workmodel_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let resource = ApiResource {
        group: "cellmesh.io".into(),
        version: "v1alpha1".into(),
        api_version: "cellmesh.io/v1alpha1".into(),
        kind: "WorkModel".into(),
        plural: "workmodels".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no status yet");
    while Instant::now() < deadline {
        if let Some(object) = api.get_opt(name).await? {
            let conditions = object.data["status"]["conditions"].as_array().cloned();
            let ready = conditions.iter().flatten().find(|c| c["type"] == "Ready");
            if let Some(ready) = ready {
                if ready["status"] == "True" {
                    return Ok(());
                }
                last = format!(
                    "Ready={} ({})",
                    ready["status"].as_str().unwrap_or("?"),
                    ready["message"].as_str().unwrap_or("")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("WorkModel {namespace}/{name} not Ready within {timeout:?}: {last}")
}

/// Sends `GET /api/v1` to WorkModel `name`: through its gateway Service
/// (`spec.gateway.enabled`), else through the Service of its first entry service (one no
/// other service calls: its pods carry `cellmesh.io/entry=true`). Returns the status line and
/// the size of the answer.
pub async fn through_gateway(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let gateway = format!("{name}-gateway");
    let service = match services.get_opt(&gateway).await? {
        Some(service) => service,
        None => {
            let entry = entry_service(client, namespace, name).await?;
            services.get(&entry).await.with_context(|| {
                format!("no Service {namespace}/{entry} for entry service {entry}")
            })?
        }
    };
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let spec = service.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .filter(|ip| ip != "None")
        .with_context(|| format!("{service_name} has no ClusterIP"))?;
    let port = spec
        .ports
        .unwrap_or_default()
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .map_or(80, |p| p.port);
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    tokio::task::spawn_blocking(move || http_get(addr, "/api/v1")).await?
}

/// The first (by name) entry service of WorkModel `name`, read from its pods' labels as the
/// operator sets them.
async fn entry_service(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("cellmesh.io/workmodel={name},cellmesh.io/entry=true");
    let entries: BTreeSet<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(|pod| pod.labels().get("cellmesh.io/service").cloned())
        .collect();
    entries.into_iter().next().with_context(|| {
        format!("WorkModel {namespace}/{name} has no gateway Service and no pod labelled as an entry service")
    })
}

/// A minimal HTTP/1.1 GET with a deadline: the answer's status line and body size.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_owned();
    let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    anyhow::ensure!(
        status.contains(" 200"),
        "GET http://{addr}{path} answered {status:?}"
    );
    Ok(format!("GET http://{addr}{path} → {status} ({body} bytes)"))
}
