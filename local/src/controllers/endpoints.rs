//! Service → Endpoints and EndpointSlices, from the pods the Service's selector picks
//! (Kubernetes' endpoints and endpointslice controllers).
//!
//! - Only Services with a selector are managed (others keep hand-written Endpoints).
//! - A pod contributes once it has an IP (`status.podIP`) and is not finished; it is a
//!   ready address when its Ready condition is True (or the Service publishes not-ready
//!   addresses), else a `notReadyAddresses` entry; terminating pods are left out of
//!   Endpoints and appear in slices with `terminating: true`.
//! - Ports: each Service port's `targetPort` — a number, or a name resolved against the
//!   pod's container ports (pods without that port name are left out for that port).
//!   Pods with the same resolved ports share a subset / a slice.
//! - EndpointSlices (`discovery.k8s.io/v1`, `addressType: IPv4`) are labelled
//!   `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//!   endpointslice-controller.k8s.io`, named `<service>-<random>`, owned by the Service
//!   (the garbage collector removes them with it); the Endpoints object (same name as the
//!   Service) is deleted when the Service is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use cellmesh_apimachinery::selector::LabelSelector;

use super::{replicaset, util};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One pod's contribution: its address, readiness and resolved ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub ip: String,
    pub ready: bool,
    pub terminating: bool,
    pub node: Option<String>,
    pub target: ObjectReference,
    /// (port name, port number, protocol), in Service port order.
    pub ports: Vec<(String, i32, String)>,
}

/// The container port a Service port's targetPort designates in `pod`.
fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The pods of a Service, as endpoint members (pure: `pods` are that namespace's pods).
pub fn members(service: &Service, pods: &[Pod]) -> Vec<Member> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let selector = LabelSelector::from_set(selector);
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut out = Vec::new();
    for pod in pods {
        if !selector.matches(&util::labels_of(&pod.metadata)) {
            continue;
        }
        let status = pod.status.as_ref();
        let Some(ip) = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let number = resolve_port(pod, p.target_port.as_ref(), p.port)?;
                Some((
                    p.name.clone().unwrap_or_default(),
                    number,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        out.push(Member {
            ip,
            ready: publish_not_ready || replicaset::ready_since(pod).is_some(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target: ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..ObjectReference::default()
            },
            ports,
        });
    }
    out.sort_by(|a, b| {
        a.ip.cmp(&b.ip)
            .then_with(|| a.target.name.cmp(&b.target.name))
    });
    out
}

/// Members grouped by their port set (each group is a subset / a slice).
fn by_ports(members: &[Member]) -> BTreeMap<Vec<(String, i32, String)>, Vec<&Member>> {
    let mut groups: BTreeMap<_, Vec<&Member>> = BTreeMap::new();
    for m in members {
        groups.entry(m.ports.clone()).or_default().push(m);
    }
    groups
}

fn address(m: &Member) -> EndpointAddress {
    EndpointAddress {
        ip: m.ip.clone(),
        node_name: m.node.clone(),
        target_ref: Some(m.target.clone()),
        hostname: None,
    }
}

/// The Endpoints subsets of a Service's members (terminating pods left out).
pub fn subsets(members: &[Member]) -> Vec<EndpointSubset> {
    let live: Vec<Member> = members.iter().filter(|m| !m.terminating).cloned().collect();
    by_ports(&live)
        .into_iter()
        .filter(|(ports, _)| !ports.is_empty())
        .map(|(ports, group)| {
            let ready: Vec<EndpointAddress> = group
                .iter()
                .filter(|m| m.ready)
                .map(|m| address(m))
                .collect();
            let not_ready: Vec<EndpointAddress> = group
                .iter()
                .filter(|m| !m.ready)
                .map(|m| address(m))
                .collect();
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect()
}

/// The slices' content: one (ports, endpoints) per port set.
pub fn slices(members: &[Member]) -> Vec<(Vec<SlicePort>, Vec<Endpoint>)> {
    let groups = by_ports(members);
    if groups.is_empty() {
        // Kubernetes keeps one empty slice for a Service that selects nothing.
        return vec![(Vec::new(), Vec::new())];
    }
    groups
        .into_iter()
        .map(|(ports, group)| {
            let ports = ports
                .into_iter()
                .map(|(name, port, protocol)| SlicePort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol: None,
                })
                .collect();
            let endpoints = group
                .iter()
                .map(|m| Endpoint {
                    addresses: vec![m.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(m.ready && !m.terminating),
                        serving: Some(m.ready),
                        terminating: Some(m.terminating),
                    }),
                    node_name: m.node.clone(),
                    target_ref: Some(m.target.clone()),
                    ..Endpoint::default()
                })
                .collect();
            (ports, endpoints)
        })
        .collect()
}

fn service_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = util::labels_of(&service.metadata);
    if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    labels
}

struct Context {
    client: kube::Client,
}

async fn sync_endpoints(
    api: &Api<Endpoints>,
    service: &Service,
    members: &[Member],
) -> Result<(), kube::Error> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let subsets = subsets(members);
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let labels = service_labels(service);
    match api.get_opt(&name).await? {
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                subsets,
            };
            api.create(&PostParams::default(), &endpoints).await?;
        }
        Some(current)
            if current.subsets == subsets && current.metadata.labels.as_ref() == Some(&labels) => {}
        Some(mut current) => {
            current.subsets = subsets;
            current.metadata.labels = Some(labels);
            api.replace(&name, &PostParams::default(), &current).await?;
        }
    }
    Ok(())
}

async fn sync_slices(
    api: &Api<EndpointSlice>,
    service: &Service,
    members: &[Member],
) -> Result<(), kube::Error> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let selector = format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut existing = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut labels = service_labels(service);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = util::controller_ref("v1", "Service", &service.metadata);
    let wanted = slices(members);
    let mut spare = existing.into_iter();
    for (ports, endpoints) in wanted {
        let ports = Some(ports);
        match spare.next() {
            Some(current)
                if current.ports == ports
                    && current.endpoints == endpoints
                    && current.metadata.labels.as_ref() == Some(&labels) => {}
            Some(mut current) => {
                current.ports = ports;
                current.endpoints = endpoints;
                current.address_type = "IPv4".into();
                current.metadata.labels = Some(labels.clone());
                let slice_name = current.metadata.name.clone().unwrap_or_default();
                api.replace(&slice_name, &PostParams::default(), &current)
                    .await?;
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..ObjectMeta::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints,
                    ports,
                };
                api.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    for extra in spare {
        let slice_name = extra.metadata.name.unwrap_or_default();
        match api.delete(&slice_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(err) if util::is_not_found(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let has_selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    if !has_selector || service.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = service.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|s| {
            s.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let members = members(&service, &listed);
    sync_endpoints(
        &Api::namespaced(ctx.client.clone(), &ns),
        &service,
        &members,
    )
    .await?;
    sync_slices(
        &Api::namespaced(ctx.client.clone(), &ns),
        &service,
        &members,
    )
    .await?;
    Ok(Action::await_change())
}

fn error_policy(service: Arc<Service>, err: &kube::Error, _ctx: Arc<Context>) -> Action {
    if !util::is_stale(err) {
        tracing::warn!(service = %util::key_of(&service.metadata), %err, "endpoints sync failed; retrying");
    }
    Action::requeue(Duration::from_millis(500))
}

/// Deletes the Endpoints of deleted Services (slices go with their owner).
async fn remove_endpoints_of_deleted_services(client: kube::Client) {
    use kube::runtime::WatchStreamExt as _;
    let services: Api<Service> = Api::all(client.clone());
    let mut events = watcher::watcher(services, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Delete(service)) = event else {
            continue;
        };
        let (Some(ns), Some(name)) = (service.metadata.namespace, service.metadata.name) else {
            continue;
        };
        let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
        if let Err(err) = api.delete(&name, &DeleteParams::default()).await
            && !util::is_not_found(&err)
        {
            tracing::warn!(service = %format!("{ns}/{name}"), %err, "cannot delete the Endpoints of a deleted Service");
        }
    }
}

/// Runs the endpoints and endpointslice controller until `shutdown`.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let services: Api<Service> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let cleanup = tokio::spawn(remove_endpoints_of_deleted_services(client.clone()));
    let ctx = Arc::new(Context { client });
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    controller
        // A pod change concerns every Service of its namespace that selects it now or did.
        .watches(pods, watcher::Config::default(), move |pod| {
            let ns = pod.metadata.namespace.clone();
            store
                .state()
                .into_iter()
                .filter(|s| s.metadata.namespace == ns)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
    cleanup.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, port_name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "cellmesh-local", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn ready_and_not_ready_addresses_with_named_ports() {
        let pods = vec![
            pod("a", Some("127.64.0.2"), true, "web"),
            pod("b", Some("127.64.0.3"), false, "web"),
            pod("c", None, true, "web"),
            pod("d", Some("127.64.0.4"), true, "other"),
        ];
        let m = members(&service(json!("web")), &pods);
        let subsets = subsets(&m);
        // d lacks the named port: it forms no subset with a port.
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let s = &subsets[0];
        assert_eq!(s.addresses.as_ref().unwrap()[0].ip, "127.64.0.2");
        assert_eq!(
            s.addresses.as_ref().unwrap()[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
        assert_eq!(s.not_ready_addresses.as_ref().unwrap()[0].ip, "127.64.0.3");
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8080));

        let numeric = members(&service(json!(9090)), &pods);
        assert_eq!(
            super::subsets(&numeric)[0].ports.as_ref().unwrap()[0].port,
            9090
        );
    }

    #[test]
    fn slices_mark_readiness_and_termination() {
        let mut leaving = pod("a", Some("127.64.0.2"), true, "web");
        leaving.metadata.deletion_timestamp = Some(util::now());
        let m = members(
            &service(json!("web")),
            &[leaving, pod("b", Some("127.64.0.3"), false, "web")],
        );
        assert!(
            subsets(&m)[0].addresses.is_none(),
            "terminating pods leave Endpoints"
        );
        let slices = slices(&m);
        assert_eq!(slices.len(), 1);
        let (ports, endpoints) = &slices[0];
        assert_eq!(ports[0].port, Some(8080));
        let a = endpoints[0].conditions.as_ref().unwrap();
        assert_eq!(
            (a.ready, a.serving, a.terminating),
            (Some(false), Some(true), Some(true))
        );
        let b = endpoints[1].conditions.as_ref().unwrap();
        assert_eq!((b.ready, b.terminating), (Some(false), Some(false)));
        assert_eq!(
            super::slices(&[]).len(),
            1,
            "an empty slice for a service selecting nothing"
        );
    }

    #[test]
    fn services_without_selectors_are_not_managed() {
        let mut s = service(json!(80));
        s.spec.as_mut().unwrap().selector = None;
        assert!(members(&s, &[pod("a", Some("127.64.0.2"), true, "web")]).is_empty());
    }
}
