//! The ClusterIP proxy (kube-proxy's userspace mode, on loopback addresses).
//!
//! Contract:
//! - For every Service with a loopback ClusterIP (not headless, not ExternalName) and
//!   every TCP port of it, a listener on `clusterIP:port`. Listeners are added and removed as
//!   Services change (and retried every [`RESYNC`] when a bind failed).
//! - Each accepted connection goes to a ready endpoint of the Service port (from its
//!   EndpointSlices, looked up at connect time), round robin across connections; an
//!   endpoint that refuses (or does not answer within [`CONNECT_TIMEOUT`]) is skipped for
//!   the next one. With no endpoint reachable the connection is closed, as kube-proxy's
//!   REJECT rule does.
//! - Removing a listener stops accepting; connections already established carry on.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// How often listeners are reconciled even without a change (retries failed binds).
const RESYNC: Duration = Duration::from_secs(5);

/// How long a connect to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a listener forwards to: one port of one Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub port: ServicePort,
}

/// The listeners the Services call for: `clusterIP:port` → target.
pub fn desired_listeners(services: &[Arc<Service>]) -> HashMap<SocketAddr, Target> {
    let mut listeners = HashMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        // Only loopback ClusterIPs can be listened on without configuring interfaces
        // (Services stored by older versions may hold 10.96.x.y addresses).
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(IpAddr::is_loopback)
        else {
            continue; // headless ("None"), not allocated, or not loopback
        };
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            listeners.insert(
                SocketAddr::new(ip, number),
                Target {
                    namespace: svc.metadata.namespace.clone().unwrap_or_default(),
                    service: svc.metadata.name.clone().unwrap_or_default(),
                    port: port.clone(),
                },
            );
        }
    }
    listeners
}

struct Running {
    target: Target,
    stop: CancellationToken,
}

/// Reconciles listeners whenever `changed` fires (and every [`RESYNC`]) until `shutdown`.
pub async fn run(cluster: Cluster, changed: Arc<Notify>, shutdown: CancellationToken) {
    let mut running: HashMap<SocketAddr, Running> = HashMap::new();
    // Addresses whose bind failed, so the retry every RESYNC warns only once.
    let mut failing: HashSet<SocketAddr> = HashSet::new();
    loop {
        let desired = desired_listeners(&cluster.services());
        running.retain(|addr, listener| {
            let keep = desired.get(addr) == Some(&listener.target);
            if !keep {
                tracing::info!(%addr, service = %listener.target.service, "proxy: stop listening");
                listener.stop.cancel();
            }
            keep
        });
        for (addr, target) in desired {
            if running.contains_key(&addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    failing.remove(&addr);
                    tracing::info!(%addr, namespace = %target.namespace, service = %target.service, "proxy: listening");
                    let stop = shutdown.child_token();
                    tokio::spawn(accept_loop(
                        listener,
                        cluster.clone(),
                        target.clone(),
                        stop.clone(),
                    ));
                    running.insert(addr, Running { target, stop });
                }
                Err(err) => {
                    if failing.insert(addr) {
                        tracing::warn!(%addr, service = %target.service, "proxy: cannot listen (will retry): {err}");
                    }
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    cluster: Cluster,
    target: Target,
    stop: CancellationToken,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(target);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!("proxy: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let backends = cluster.backends(&target.namespace, &target.service, &target.port);
        let start = next.fetch_add(1, Ordering::Relaxed);
        let target = Arc::clone(&target);
        tokio::spawn(async move {
            let Some(upstream) = connect_first(&backends, start).await else {
                tracing::debug!(%peer, service = %target.service, "proxy: no reachable endpoint; closing");
                return;
            };
            forward(client, upstream).await;
        });
    }
}

/// Connects to the first reachable backend, starting at `start` (mod len) and going round.
async fn connect_first(backends: &[SocketAddr], start: usize) -> Option<TcpStream> {
    for backend in rotation(backends, start) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(err)) => tracing::debug!(%backend, "proxy: endpoint refused: {err}"),
            Err(_) => tracing::debug!(%backend, "proxy: endpoint timed out"),
        }
    }
    None
}

/// The backends in round-robin order beginning at `start`.
fn rotation(backends: &[SocketAddr], start: usize) -> impl Iterator<Item = SocketAddr> + '_ {
    let len = backends.len().max(1);
    (0..backends.len()).map(move |i| backends[(start + i) % len])
}

async fn forward(mut client: TcpStream, mut upstream: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Either side closing ends the copy; errors are the peers' business.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn listeners_for_tcp_ports_of_services_with_an_address() {
        let services = [
            service(json!({
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"clusterIP": "127.96.0.5", "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "grpc", "port": 9000},
                ]},
            })),
            service(json!({
                "metadata": {"name": "db", "namespace": "ns"},
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]},
            })),
            service(json!({
                "metadata": {"name": "old", "namespace": "ns"},
                "spec": {"clusterIP": "10.96.1.2", "ports": [{"port": 80}]},
            })),
            service(json!({
                "metadata": {"name": "ext", "namespace": "ns"},
                "spec": {"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 1}]},
            })),
        ];
        let listeners = desired_listeners(&services);
        let mut addrs: Vec<String> = listeners.keys().map(ToString::to_string).collect();
        addrs.sort();
        assert_eq!(addrs, ["127.96.0.5:80", "127.96.0.5:9000"]);
        let http = &listeners[&"127.96.0.5:80".parse().unwrap()];
        assert_eq!(
            (http.namespace.as_str(), http.service.as_str()),
            ("ns", "web")
        );
        assert_eq!(http.port.name.as_deref(), Some("http"));
    }

    #[test]
    fn rotation_starts_at_the_counter_and_wraps() {
        let b: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let order: Vec<u16> = rotation(&b, 4).map(|a| a.port()).collect();
        assert_eq!(order, [2, 3, 1]);
        assert_eq!(rotation(&[], 3).count(), 0);
    }

    #[tokio::test]
    async fn refusing_endpoints_are_skipped() {
        // A port that refuses: bind, note the address, close.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = closed.local_addr().unwrap();
        drop(closed);
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = open.local_addr().unwrap();
        let stream = connect_first(&[refused, live], 0).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live);
        assert!(connect_first(&[refused], 0).await.is_none());
    }
}
