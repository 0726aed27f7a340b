//! The node agent of cellmesh-local (the kubelet's job), started by
//! `cellmesh-local apiserver --node`.
//!
//! Contract:
//! - Registers the Node `cellmesh-local` with the machine's CPU and memory as capacity and
//!   allocatable, a Ready condition kept fresh, its address, and the annotation
//!   `cellmesh.io/cgroups` (`v1`, `v2` or `none`) plus the condition
//!   `CgroupLimitsEnforced` saying whether limits are really enforced.
//! - Runs every pod whose `spec.nodeName` is this node. There is no scheduler: pods with
//!   an empty `nodeName` are claimed by setting it (a patch of the pod, which — unlike
//!   Kubernetes' binding subresource — also bumps `metadata.generation`).
//! - Each pod gets a loopback IP from `--pod-cidr`; containers run as processes through
//!   `container-init` ([`init`]) in their own cgroups ([`cgroup`]) and mount namespace with
//!   their volumes ([`volumes`]); processes binding `0.0.0.0` share the host's ports, so
//!   pods should bind their pod IP (the downward API gives it as `status.podIP`).
//! - Pod status, restarts with CrashLoopBackOff, probes, in-place resize and graceful
//!   termination: [`pod`], [`container`], [`probes`].
//! - Logs in `<state>/pods/…` ([`logs`]); cAdvisor-style metrics and the readings behind
//!   `metrics.k8s.io` on `--node-metrics-addr` ([`metrics`]).
//! - Processes do not survive the agent (they get SIGKILL when it exits); after a restart
//!   the agent starts the pods it finds in the API again.

pub mod atomic;
pub mod cgroup;
pub mod container;
pub mod env;
pub mod images;
pub mod init;
pub mod ipam;
pub mod logs;
pub mod metrics;
pub mod pod;
pub mod probes;
pub mod resources;
pub mod volumes;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const NODE_NAME: &str = "cellmesh-local";

/// How the node agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub state_dir: PathBuf,
    pub pod_cidr: ipam::Cidr,
    /// The node's address (`status.hostIP`).
    pub host_ip: IpAddr,
    /// The cluster DNS server pods' resolv.conf points at.
    pub cluster_dns: IpAddr,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub apiserver: SocketAddr,
    /// `pattern=path` image mappings (see [`images`]).
    pub image_map: Vec<String>,
    /// Root of the cgroup hierarchies (`/sys/fs/cgroup`; a fake tree in tests).
    pub cgroup_root: PathBuf,
    /// Directory under each hierarchy that holds the containers' cgroups.
    pub cgroup_parent: String,
    /// Where `/metrics/cadvisor` and the metrics API readings are served (HTTP).
    pub metrics_addr: SocketAddr,
    /// CrashLoopBackOff: first delay and cap.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The `cellmesh-local` executable (for `container-init`).
    pub self_exe: PathBuf,
}

/// State shared by the agent's tasks.
pub struct Agent {
    pub config: Config,
    pub client: kube::Client,
    pub cgroups: Box<dyn cgroup::Cgroups>,
    pub images: images::ImageMap,
    pub ips: Mutex<ipam::Allocator>,
    pub pods: Mutex<HashMap<String, Arc<pod::PodContext>>>,
    pub allocatable: resources::Allocatable,
    /// Whether containers get private mount namespaces (needs root).
    pub isolate: bool,
    pub ca_pem: String,
    pub shutdown: CancellationToken,
    pub metrics: metrics::Sampler,
    /// When the agent started (the Node conditions' transition time).
    pub started: jiff::Timestamp,
}

impl Agent {
    /// Requests admitted for every pod but `except_uid`.
    pub fn allocated_requests(&self, except_uid: &str) -> Vec<resources::Resources> {
        self.pods
            .lock()
            .map(|pods| {
                pods.iter()
                    .filter(|(uid, _)| uid.as_str() != except_uid)
                    .flat_map(|(_, p)| p.allocated().into_values())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn machine_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the node agent until `shutdown` is cancelled.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cgroups = cgroup::detect(&config.cgroup_root, &config.cgroup_parent);
    let root = nix::unistd::geteuid().is_root();
    if cgroups.version() == "none" {
        tracing::warn!(
            root = %config.cgroup_root.display(),
            "no writable cgroup v1 or v2 hierarchy: CPU and memory limits are NOT enforced (the Node says so)"
        );
    }
    if !root {
        tracing::warn!(
            "not running as root: containers share the host's mount namespace, so volumes are not visible at their mountPath"
        );
    }
    // Containers of an agent that died are gone (PR_SET_PDEATHSIG); their cgroups are not.
    cgroups.sweep(false);
    let ca_pem = std::fs::read_to_string(config.state_dir.join("ca.crt")).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let agent = Arc::new(Agent {
        images: images::ImageMap::new(&config.image_map).map_err(anyhow::Error::msg)?,
        ips: Mutex::new(ipam::Allocator::new(config.pod_cidr)),
        pods: Mutex::new(HashMap::new()),
        allocatable: resources::Allocatable {
            cpu_millis: cpus * 1000,
            memory_bytes: machine_memory_bytes(),
        },
        isolate: root,
        ca_pem,
        cgroups,
        client: client.clone(),
        shutdown: shutdown.clone(),
        metrics: metrics::Sampler::default(),
        started: jiff::Timestamp::now(),
        config,
    });
    let listener = tokio::net::TcpListener::bind(agent.config.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for node metrics",
                agent.config.metrics_addr
            )
        })?;
    let metrics_addr = listener.local_addr()?;
    tokio::spawn(metrics::serve(listener, Arc::clone(&agent)));
    tokio::spawn(metrics::sample_loop(Arc::clone(&agent)));
    register_node(&agent, metrics_addr).await?;
    if let Err(e) = renew_lease(&agent).await {
        tracing::debug!(error = %e, "node lease creation failed");
    }
    tokio::spawn(heartbeat(Arc::clone(&agent), metrics_addr));
    tracing::info!(node = %agent.config.node_name, cgroups = agent.cgroups.version(), metrics = %metrics_addr, "node agent running");
    let result = watch_pods(Arc::clone(&agent), shutdown).await;
    agent.cgroups.sweep(true);
    result
}

fn node_status(agent: &Agent, port: u16) -> serde_json::Value {
    let a = agent.allocatable;
    let enforced = agent.cgroups.version() != "none";
    let now = jiff::Timestamp::now().to_string();
    // Conditions do not change while the agent runs: they transitioned when it started.
    let started = agent.started.to_string();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": started})
    };
    let resources = json!({
        "cpu": resources::format_millis(a.cpu_millis),
        "memory": format!("{}Ki", a.memory_bytes / 1024),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "cellmesh-local node agent is posting ready status"),
            if enforced {
                condition("CgroupLimitsEnforced", "True", "CgroupsWritable", &format!("CPU and memory limits are enforced with cgroup {}", agent.cgroups.version()))
            } else {
                condition("CgroupLimitsEnforced", "False", "NoWritableCgroups", "no writable cgroup v1 or v2 hierarchy: limits are not enforced")
            },
        ],
        "addresses": [
            {"type": "InternalIP", "address": agent.config.host_ip.to_string()},
            {"type": "Hostname", "address": agent.config.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "machineID": "cellmesh-local", "systemUUID": "cellmesh-local", "bootID": "cellmesh-local",
            "kernelVersion": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "osImage": "cellmesh-local", "containerRuntimeVersion": concat!("cellmesh://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.33.0-cellmesh", "kubeProxyVersion": "v1.33.0-cellmesh",
            "operatingSystem": "linux", "architecture": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
        },
    })
}

async fn register_node(agent: &Agent, metrics: SocketAddr) -> anyhow::Result<()> {
    let port = metrics.port();
    let api: Api<Node> = Api::all(agent.client.clone());
    let name = &agent.config.node_name;
    let metadata = json!({
        "name": name,
        "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/control-plane": "",
        },
        "annotations": {
            "cellmesh.io/cgroups": agent.cgroups.version(),
            "cellmesh.io/metrics-endpoint": format!("http://{metrics}"),
        },
    });
    if api.get_opt(name).await?.is_none() {
        let node: Node = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": metadata}),
        )?;
        if let Err(e) = api.create(&PostParams::default(), &node).await {
            tracing::debug!(error = %e, "node create raced");
        }
    } else {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": metadata})),
        )
        .await
        .context("cannot update the Node")?;
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": node_status(agent, port)})),
    )
    .await
    .context("cannot publish the Node status")?;
    Ok(())
}

/// Keeps the Node's Ready condition fresh (and recreates the Node if it was deleted).
async fn heartbeat(agent: Arc<Agent>, metrics: SocketAddr) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = agent.shutdown.cancelled() => return,
        }
        if let Err(e) = register_node(&agent, metrics).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
        if let Err(e) = renew_lease(&agent).await {
            tracing::debug!(error = %e, "node lease renewal failed");
        }
    }
}

/// The node's Lease in `kube-node-lease`, renewed with every heartbeat as the kubelet does.
async fn renew_lease(agent: &Agent) -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: Api<Lease> = Api::namespaced(agent.client.clone(), "kube-node-lease");
    let name = &agent.config.node_name;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    });
    if api.get_opt(name).await?.is_none() {
        api.create(&PostParams::default(), &serde_json::from_value(lease)?)
            .await?;
    } else {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&lease))
            .await?;
    }
    Ok(())
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Claims unassigned pods (we have no scheduler) by setting `spec.nodeName`.
async fn claim(agent: &Agent, pod: &Pod) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(name) = pod.metadata.name.as_deref() else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), ns);
    let patch = json!({"spec": {"nodeName": agent.config.node_name}});
    if let Err(e) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(pod = %name, namespace = %ns, error = %e, "cannot claim pod");
    }
}

struct Worker {
    updates: watch::Sender<pod::Update>,
    task: tokio::task::JoinHandle<()>,
}

async fn watch_pods(agent: Arc<Agent>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let stream = watcher(api, watcher::Config::default().any_semantic());
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen_in_init: Vec<String> = Vec::new();
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            () = shutdown.cancelled() => break,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        workers.retain(|_, w| !w.task.is_finished());
        match event {
            watcher::Event::Init => seen_in_init.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let Some(uid) = pod.metadata.uid.clone() {
                    seen_in_init.push(uid);
                }
                handle(&agent, &mut workers, pod, false).await;
            }
            watcher::Event::Delete(pod) => handle(&agent, &mut workers, pod, true).await,
            watcher::Event::InitDone => {
                // Pods deleted while the watch was down.
                for (uid, w) in &workers {
                    if !seen_in_init.contains(uid) {
                        let mut update = w.updates.borrow().clone();
                        update.deleted = true;
                        let _ = w.updates.send(update);
                    }
                }
            }
        }
    }
    // Stop every pod's containers before returning (their processes die with us anyway).
    let tasks: Vec<_> = workers.into_values().map(|w| w.task).collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks)).await;
    Ok(())
}

async fn handle(
    agent: &Arc<Agent>,
    workers: &mut HashMap<String, Worker>,
    pod: Pod,
    deleted: bool,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let node = node_of(&pod);
    if node.is_empty() && !deleted {
        claim(agent, &pod).await;
        return;
    }
    if node != agent.config.node_name {
        return;
    }
    let update = pod::Update {
        pod: Arc::new(pod),
        deleted,
    };
    match workers.get(&uid) {
        Some(w) => {
            let _ = w.updates.send(update);
        }
        None if !deleted => {
            let (tx, rx) = watch::channel(update);
            let task = tokio::spawn(pod::run(Arc::clone(agent), rx));
            workers.insert(uid, Worker { updates: tx, task });
        }
        None => {}
    }
}
