//! The `network` component: what kube-proxy and CoreDNS do in a real cluster.
//!
//! - [`proxy`]: listens on every Service `clusterIP:port` (TCP; ClusterIPs are loopback
//!   addresses from `--service-cidr`) and forwards each connection to a ready endpoint
//!   from the Service's EndpointSlices, round robin, skipping endpoints that refuse.
//! - [`dns`]: answers A records for `<svc>.<ns>.svc.cluster.local` (and `<svc>.<ns>.svc`,
//!   `<svc>.<ns>`) on `--dns-addr`, UDP and TCP.
//!
//! - [`sd`]: Prometheus HTTP service discovery of pods and nodes (for Prometheus builds
//!   without Kubernetes discovery).
//!
//! All read the cluster through kube-rs reflectors of Services and EndpointSlices (the
//! [`Cluster`] view), fed by watches against the API server like any other client.

pub mod dns;
pub mod proxy;
pub mod sd;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Where the DNS server listens by default (the node points pods' resolv.conf at it).
pub const DEFAULT_DNS_ADDR: &str = "127.53.0.10:53";

/// Where Prometheus HTTP service discovery is served by default.
pub const DEFAULT_SD_ADDR: &str = "127.53.0.10:8080";

/// The cluster domain Service names live under.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How the network component runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP and TCP address of the DNS server.
    pub dns_addr: SocketAddr,
    /// HTTP address of the Prometheus service discovery endpoints ([`sd`]).
    pub sd_addr: SocketAddr,
}

/// A read-only view of the Services and EndpointSlices, kept current by watches.
#[derive(Clone)]
pub struct Cluster {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Cluster {
    pub fn new(services: Store<Service>, slices: Store<EndpointSlice>) -> Self {
        Self { services, slices }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        self.services.state()
    }

    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .state()
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == service)
            })
            .collect()
    }

    /// Ready endpoints of a Service's port, as `address:targetPort`.
    pub fn backends(&self, namespace: &str, service: &str, port: &ServicePort) -> Vec<SocketAddr> {
        ready_backends(&self.slices_of(namespace, service), port.name.as_deref())
    }

    /// Addresses of the Service's ready endpoints (a headless Service's DNS answer).
    pub fn ready_addresses(&self, namespace: &str, service: &str) -> Vec<IpAddr> {
        let mut addresses: Vec<IpAddr> = self
            .slices_of(namespace, service)
            .iter()
            .flat_map(|slice| ready_endpoint_addresses(slice))
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }
}

/// An endpoint counts as ready unless its `ready` condition is false (Kubernetes: "nil
/// should be interpreted as ready").
fn ready_endpoint_addresses(slice: &EndpointSlice) -> impl Iterator<Item = IpAddr> + '_ {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
}

/// The ready `address:port` pairs of the EndpointSlice port named like the Service port
/// (`None` and `""` both mean the single unnamed port), in a stable order.
pub fn ready_backends(slices: &[Arc<EndpointSlice>], port_name: Option<&str>) -> Vec<SocketAddr> {
    let wanted = port_name.unwrap_or("");
    let mut backends: Vec<SocketAddr> = slices
        .iter()
        .flat_map(|slice| {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == wanted)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            port.into_iter().flat_map(move |port| {
                ready_endpoint_addresses(slice).map(move |ip| SocketAddr::new(ip, port))
            })
        })
        .collect();
    backends.sort();
    backends.dedup();
    backends
}

/// Keeps a reflector store of `K` current; wakes `changed` after every event.
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(err) = event {
            tracing::warn!("watch failed (retrying): {err}");
        }
        changed.notify_one();
    }
}

/// Runs the proxy and the DNS server until `shutdown`.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dns = dns::Server::bind(config.dns_addr).await?;
    let sd_listener = sd::bind(config.sd_addr).await?;
    let (services, services_writer) = reflector::store();
    let (slices, slices_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (nodes, nodes_writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let ignored = Arc::new(Notify::new());
    let watches = futures::future::join4(
        reflect(
            Api::<Service>::all(client.clone()),
            services_writer,
            Arc::clone(&changed),
        ),
        reflect(
            Api::<EndpointSlice>::all(client.clone()),
            slices_writer,
            Arc::clone(&ignored),
        ),
        reflect(
            Api::<Pod>::all(client.clone()),
            pods_writer,
            Arc::clone(&ignored),
        ),
        reflect(Api::<Node>::all(client), nodes_writer, ignored),
    );
    let cluster = Cluster::new(services, slices);
    tracing::info!(dns = %config.dns_addr, sd = %config.sd_addr, "network: DNS, ClusterIP proxy and Prometheus SD running");
    tokio::select! {
        _ = watches => {}
        () = proxy::run(cluster.clone(), changed, shutdown.clone()) => {}
        result = dns.serve(cluster, shutdown.clone()) => result?,
        result = sd::serve(sd_listener, pods, nodes, shutdown.clone()) => result?,
        () = shutdown.cancelled() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(value: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn backends_are_ready_endpoints_of_the_named_port() {
        let slices = [
            slice(json!({
                "metadata": {"name": "web-abc", "namespace": "ns"},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
                "endpoints": [
                    {"addresses": ["127.64.0.2"], "conditions": {"ready": true}},
                    {"addresses": ["127.64.0.3"], "conditions": {"ready": false}},
                    {"addresses": ["127.64.0.4"]},
                ],
            })),
            slice(json!({
                "metadata": {"name": "web-def", "namespace": "ns"},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8081}],
                "endpoints": [{"addresses": ["127.64.0.5"], "conditions": {"ready": true}}],
            })),
        ];
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            ready_backends(&slices, Some("http")),
            vec![
                addr("127.64.0.2:8080"),
                addr("127.64.0.4:8080"),
                addr("127.64.0.5:8081")
            ]
        );
        assert_eq!(
            ready_backends(&slices, Some("admin")),
            vec![addr("127.64.0.2:9090"), addr("127.64.0.4:9090")]
        );
        assert!(ready_backends(&slices, None).is_empty());
    }

    #[test]
    fn unnamed_ports_match_unnamed_slice_ports() {
        let slices = [slice(json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": 80}],
            "endpoints": [{"addresses": ["127.64.1.1"], "conditions": {"ready": true}}],
        }))];
        assert_eq!(
            ready_backends(&slices, None),
            vec!["127.64.1.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(ready_backends(&slices, Some("")).len(), 1);
    }
}
