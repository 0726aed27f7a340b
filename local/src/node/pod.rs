//! One pod on this node: its sandbox (IP, `/etc` files, volumes), its containers (init
//! containers in order, then the app containers), in-place resize, status reporting and
//! graceful termination followed by the final delete — the kubelet's pod worker.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::Agent;
use super::container::{self, Command, Shared, State, Status};
use super::init::{BindMount, InitSpec};
use super::resources::{self, CgroupLimits, Resources};
use super::volumes;

/// The latest view of a pod from the watch; `deleted` once the object is gone.
#[derive(Clone)]
pub struct Update {
    pub pod: Arc<Pod>,
    pub deleted: bool,
}

/// What a container needs to start, computed from the spec before every start.
pub struct Prepared {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
}

/// A started container process.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub copiers: Vec<tokio::task::JoinHandle<()>>,
}

/// The pod as its containers see it; shared by the worker and the container tasks.
pub struct PodContext {
    pub agent: Arc<Agent>,
    /// `name_namespace(uid)`, how the kubelet names a pod in messages.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod_ip: Ipv4Addr,
    pub pod_dir: PathBuf,
    pub volumes_dir: PathBuf,
    pod: watch::Receiver<Update>,
    /// Admitted resources per container (`allocatedResources`), changed by resize.
    allocated: Mutex<HashMap<String, Resources>>,
    fetched: Mutex<volumes::Fetched>,
    /// Containers and their shared status, for metrics.
    pub containers: Mutex<Vec<Shared>>,
}

/// File in the pod directory holding the admitted resources.
const CHECKPOINT: &str = "allocated.json";

impl PodContext {
    fn save_allocation(&self) {
        let allocated = self.allocated();
        let written = std::fs::create_dir_all(&self.pod_dir).and_then(|()| {
            let text = serde_json::to_vec(&allocated).map_err(std::io::Error::other)?;
            std::fs::write(self.pod_dir.join(CHECKPOINT), text)
        });
        if let Err(e) = written {
            tracing::warn!(pod = %self.key, error = %e, "cannot checkpoint allocated resources");
        }
    }

    /// Records a core/v1 Event about the pod (or one of its containers), as the kubelet
    /// does, so `kubectl describe pod` and `kubectl events` show what happened.
    pub fn event(&self, warning: bool, reason: &str, message: String, container: Option<&str>) {
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.agent.client.clone(), &self.namespace);
        let now = jiff::Timestamp::now();
        let node = &self.agent.config.node_name;
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {
                "name": format!("{}.{:x}", self.name, now.as_nanosecond()),
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": self.namespace,
                "name": self.name, "uid": self.uid,
                "fieldPath": container.map(|c| format!("spec.containers{{{c}}}")),
            },
            "reason": reason,
            "message": message,
            "type": if warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now.to_string(),
            "lastTimestamp": now.to_string(),
            "count": 1,
        });
        let key = self.key.clone();
        tokio::spawn(async move {
            let Ok(event) = serde_json::from_value(event) else {
                return;
            };
            if let Err(e) = api.create(&Default::default(), &event).await {
                tracing::debug!(pod = %key, error = %e, "cannot record event");
            }
        });
    }

    pub fn pod(&self) -> Arc<Pod> {
        Arc::clone(&self.pod.borrow().pod)
    }

    pub fn cgroup_id(&self, container: &str) -> String {
        format!("{}/{container}", self.uid)
    }

    pub fn restart_policy(&self, container: &str) -> String {
        let pod = self.pod();
        let spec = pod.spec.as_ref();
        let is_init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|i| i.iter().any(|c| c.name == container));
        let policy = spec
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        // Init containers run to completion: they are retried only on failure.
        if is_init && policy == "Always" {
            "OnFailure".into()
        } else {
            policy
        }
    }

    pub fn grace_period(&self) -> Duration {
        let pod = self.pod();
        let seconds = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    pub fn allocated(&self) -> HashMap<String, Resources> {
        self.allocated.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn allocated_limits(&self, container: &str) -> CgroupLimits {
        self.allocated()
            .get(container)
            .copied()
            .unwrap_or_default()
            .cgroup_limits()
    }

    /// Resolves image, environment, command and mounts; `Err((reason, message))` is the
    /// waiting state to report.
    pub async fn prepare(&self, container: &Container) -> Result<Prepared, (String, String)> {
        let image = container.image.clone().unwrap_or_default();
        let target = self.agent.images.resolve(&image).ok_or_else(|| {
            (
                "ErrImagePull".to_owned(),
                format!(
                    "image {image:?} is not available to cellmesh-local: it runs containers as \
                     local processes; map the image to a binary with --image-map \
                     '{image}=/path/to/binary' (or '=host' to run the command from the host)"
                ),
            )
        })?;
        let pod = self.pod();
        let fetched = self.fetched.lock().map(|f| f.clone()).unwrap_or_default();
        let pod_ip = self.pod_ip.to_string();
        let host_ip = self.agent.config.host_ip.to_string();
        let downward = super::env::Downward {
            pod: &pod,
            pod_ip: &pod_ip,
            host_ip: &host_ip,
            node_name: &self.agent.config.node_name,
        };
        let resolved = super::env::resolve(container, &downward, &fetched)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        let api = self.agent.config.apiserver;
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), self.name.clone()),
            ("HOME".into(), "/root".into()),
            ("KUBERNETES_SERVICE_HOST".into(), api.ip().to_string()),
            ("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                api.port().to_string(),
            ),
            ("KUBERNETES_PORT".into(), format!("tcp://{api}")),
        ];
        for (k, v) in resolved {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let mut argv = super::env::argv(container, &target.entrypoint(), &env);
        target.rewrite_program(&mut argv);
        if argv.is_empty() {
            return Err((
                "CreateContainerError".into(),
                format!("container {:?} has no command", container.name),
            ));
        }
        let mounts = volumes::mounts(
            &pod,
            container,
            &self.volumes_dir,
            &self.pod_dir.join("etc"),
        )
        .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        Ok(Prepared { argv, env, mounts })
    }

    /// Creates the cgroup, writes the trampoline spec and starts `container-init`.
    pub fn spawn(
        &self,
        container: &Container,
        prepared: &Prepared,
        restart_count: i32,
        limits: &CgroupLimits,
    ) -> Result<Spawned, String> {
        let cgroup_id = self.cgroup_id(&container.name);
        let cgroup_procs = self
            .agent
            .cgroups
            .create(&cgroup_id, limits)
            .map_err(|e| format!("cannot create the container's cgroup: {e}"))?;
        let spec = InitSpec {
            cgroup_procs,
            isolate: self.agent.isolate,
            hostname: self.name.clone(),
            mounts: prepared.mounts.clone(),
            argv: prepared.argv.clone(),
            env: prepared.env.clone(),
            working_dir: container.working_dir.as_ref().map(PathBuf::from),
        };
        let spec_path = self.pod_dir.join(format!("{}.init.json", container.name));
        let text = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        std::fs::write(&spec_path, text)
            .map_err(|e| format!("cannot write {}: {e}", spec_path.display()))?;
        let log = super::logs::log_path(&self.pod_dir, &container.name, restart_count);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let mut child = tokio::process::Command::new(&self.agent.config.self_exe)
            .arg("container-init")
            .arg("--spec")
            .arg(&spec_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start container-init: {e}"))?;
        let pid = child.id().ok_or("the container exited at once")?;
        let mut copiers = Vec::new();
        if let Some(out) = child.stdout.take() {
            copiers.push(tokio::spawn(super::logs::copy(
                out,
                "stdout",
                Arc::clone(&file),
            )));
        }
        if let Some(err) = child.stderr.take() {
            copiers.push(tokio::spawn(super::logs::copy(err, "stderr", file)));
        }
        Ok(Spawned {
            child,
            pid,
            copiers,
        })
    }
}

/// The resize the worker is applying or could not apply.
#[derive(Debug, Clone, Default, PartialEq)]
struct ResizeState {
    /// `(reason, message)` of `PodResizePending`.
    pending: Option<(String, String)>,
    /// `Some(message)` while in progress; message non-empty on error.
    in_progress: Option<String>,
    /// Generation of the spec last considered.
    generation: i64,
}

/// Condition bookkeeping: `lastTransitionTime` changes only when the status does.
#[derive(Default)]
struct Conditions(HashMap<String, (String, Time)>);

impl Conditions {
    fn condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: Option<&str>,
        message: Option<&str>,
        generation: Option<i64>,
    ) -> PodCondition {
        let value = if status { "True" } else { "False" };
        let entry = self
            .0
            .entry(type_.to_owned())
            .or_insert_with(|| (value.to_owned(), Time(jiff::Timestamp::now())));
        if entry.0 != value {
            *entry = (value.to_owned(), Time(jiff::Timestamp::now()));
        }
        PodCondition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            reason: reason.map(str::to_owned),
            message: message.map(str::to_owned),
            last_transition_time: Some(entry.1.clone()),
            observed_generation: generation,
            ..Default::default()
        }
    }
}

fn time(t: jiff::Timestamp) -> Time {
    Time(t)
}

fn api_state(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    }
}

fn terminated(t: &container::Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(time(t.started_at)),
        finished_at: Some(time(t.finished_at)),
        container_id: Some(t.container_id.clone()),
    }
}

fn requests_map(r: &Resources) -> Option<BTreeMap<String, Quantity>> {
    let mut map = BTreeMap::new();
    if let Some(c) = r.requests.cpu_millis {
        map.insert("cpu".to_owned(), Quantity(resources::format_millis(c)));
    }
    if let Some(m) = r.requests.memory_bytes {
        map.insert("memory".to_owned(), Quantity(m.to_string()));
    }
    (!map.is_empty()).then_some(map)
}

/// The pod's phase from its containers (init containers first).
fn phase(init: &[Status], app: &[Status], init_done: bool) -> &'static str {
    let failed_init = init
        .iter()
        .any(|s| s.finished && matches!(&s.state, State::Terminated(t) if t.exit_code != 0));
    if failed_init {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    if !app.is_empty() && app.iter().all(|s| s.finished) {
        let all_ok = app
            .iter()
            .all(|s| matches!(&s.state, State::Terminated(t) if t.exit_code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    let any_ran = app.iter().any(|s| {
        !matches!(s.state, State::Waiting { .. }) || s.restart_count > 0 || s.last.is_some()
    });
    if any_ran { "Running" } else { "Pending" }
}

/// Runs one pod until it is gone.
pub async fn run(agent: Arc<Agent>, updates: watch::Receiver<Update>) {
    let first = updates.borrow().clone();
    let pod = first.pod;
    let meta = &pod.metadata;
    let (namespace, name, uid) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
        meta.uid.clone().unwrap_or_default(),
    );
    let key = format!("{name}_{namespace}({uid})");
    let phase_now = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase_now, Some("Succeeded" | "Failed"));
    let preferred_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let pod_ip = match agent.ips.lock().map(|mut a| a.allocate(preferred_ip)) {
        Ok(Ok(ip)) => ip,
        Ok(Err(e)) => {
            tracing::error!(pod = %key, error = %e, "cannot allocate a pod IP");
            return;
        }
        Err(_) => return,
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let pod_dir = super::logs::pod_dir(&agent.config.state_dir, &namespace, &name, &uid);
    // Admitted resources survive agent restarts (the kubelet's allocation checkpoint), so
    // a pending resize stays pending instead of being applied by the restart.
    let mut allocated: HashMap<String, Resources> = std::fs::read(pod_dir.join(CHECKPOINT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        allocated
            .entry(c.name.clone())
            .or_insert_with(|| Resources::of_container(c).unwrap_or_default());
    }
    let ctx = Arc::new(PodContext {
        agent: Arc::clone(&agent),
        key: key.clone(),
        pod_dir,
        volumes_dir: agent.config.state_dir.join("volumes").join(&uid),
        namespace,
        name,
        uid: uid.clone(),
        pod_ip,
        pod: updates.clone(),
        allocated: Mutex::new(allocated),
        fetched: Mutex::new(volumes::Fetched::default()),
        containers: Mutex::new(Vec::new()),
    });
    ctx.save_allocation();
    if let Ok(mut pods) = agent.pods.lock() {
        pods.insert(uid.clone(), Arc::clone(&ctx));
    }
    let mut worker = Worker {
        ctx: Arc::clone(&ctx),
        updates,
        conditions: Conditions::default(),
        resize: ResizeState {
            generation: pod.metadata.generation.unwrap_or(0),
            ..Default::default()
        },
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(|| Time(jiff::Timestamp::now())),
        last_published: None,
        token: None,
        sandbox_ready: false,
        sandbox_error: None,
        init: Vec::new(),
        app: Vec::new(),
        tasks: Vec::new(),
        terminal,
        init_done_upto: 0,
    };
    worker.run().await;
    if let Ok(mut pods) = agent.pods.lock() {
        pods.remove(&uid);
    }
    if let Ok(mut ips) = agent.ips.lock() {
        ips.release(pod_ip);
    }
    let _ = std::fs::remove_dir_all(&ctx.volumes_dir);
}

struct ContainerHandle {
    shared: Shared,
    commands: mpsc::UnboundedSender<Command>,
}

struct Worker {
    ctx: Arc<PodContext>,
    updates: watch::Receiver<Update>,
    conditions: Conditions,
    resize: ResizeState,
    start_time: Time,
    last_published: Option<serde_json::Value>,
    /// ServiceAccount token and when it was issued.
    token: Option<(String, Instant)>,
    sandbox_ready: bool,
    sandbox_error: Option<String>,
    init: Vec<ContainerHandle>,
    app: Vec<ContainerHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The pod already finished before this agent saw it: run nothing.
    terminal: bool,
    /// How many init containers completed successfully.
    init_done_upto: usize,
}

/// How often volumes are re-synced and deferred resizes retried.
const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Tokens are refreshed well before they expire (the kubelet does at 80 %).
const TOKEN_TTL: Duration = Duration::from_secs(3600);

impl Worker {
    fn pod_api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.agent.client.clone(), &self.ctx.namespace)
    }

    async fn run(&mut self) {
        let (changed_tx, mut changed_rx) = mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(SYNC_PERIOD);
        let shutdown = self.ctx.agent.shutdown.clone();
        let mut started_app = false;
        let mut next_init = 0usize;
        loop {
            let update = self.updates.borrow().clone();
            if update.deleted || update.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(!update.deleted).await;
                return;
            }
            if !self.terminal {
                if !self.sandbox_ready {
                    self.sync_sandbox().await;
                }
                if self.sandbox_ready {
                    self.check_resize(&update.pod).await;
                    // Init containers one by one, then all app containers.
                    let spec = update.pod.spec.clone().unwrap_or_default();
                    let inits = spec.init_containers.clone().unwrap_or_default();
                    if next_init < inits.len() && self.init.len() == next_init {
                        let handle = self.start(&inits[next_init], &changed_tx);
                        self.init.push(handle);
                    }
                    while next_init < inits.len()
                        && self.init.get(next_init).is_some_and(|h| {
                            let s = h.shared.get();
                            matches!(&s.state, State::Terminated(t) if t.exit_code == 0)
                        })
                    {
                        next_init += 1;
                        if let Some(c) = inits.get(next_init) {
                            let handle = self.start(c, &changed_tx);
                            self.init.push(handle);
                        }
                    }
                    if !started_app && next_init >= inits.len() {
                        started_app = true;
                        for c in &spec.containers {
                            let handle = self.start(c, &changed_tx);
                            self.app.push(handle);
                        }
                    }
                }
            }
            self.init_done_upto = next_init;
            self.publish().await;
            tokio::select! {
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        // The agent dropped the pod (shutdown): stop quickly.
                        self.stop_all(Duration::from_secs(2)).await;
                        return;
                    }
                }
                Some(()) = changed_rx.recv() => {
                    while changed_rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {
                    if self.sandbox_ready && !self.terminal {
                        self.sync_volumes().await;
                    }
                }
                () = shutdown.cancelled() => {
                    self.stop_all(Duration::from_secs(2)).await;
                    return;
                }
            }
        }
    }

    fn start(&mut self, c: &Container, changed: &mpsc::UnboundedSender<()>) -> ContainerHandle {
        let previous = self.previous_restart_count(&c.name);
        let shared = Shared {
            status: Arc::new(Mutex::new(Status::new(&c.name, previous))),
            changed: changed.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut list) = self.ctx.containers.lock() {
            list.push(shared.clone());
        }
        self.tasks.push(tokio::spawn(container::run(
            Arc::clone(&self.ctx),
            c.clone(),
            shared.clone(),
            rx,
        )));
        ContainerHandle {
            shared,
            commands: tx,
        }
    }

    /// A container that ran before an agent restart continues its count (+1: it restarts).
    fn previous_restart_count(&self, name: &str) -> i32 {
        let pod = self.ctx.pod();
        pod.status
            .as_ref()
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .find(|s| s.name == name && s.container_id.is_some())
            .map_or(0, |s| s.restart_count + 1)
    }

    async fn token(&mut self) -> Result<String, String> {
        if let Some((token, at)) = &self.token
            && at.elapsed() < TOKEN_TTL * 4 / 5
        {
            return Ok(token.clone());
        }
        let pod = self.ctx.pod();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.ctx.agent.client.clone(), &self.ctx.namespace);
        let request = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_TTL.as_secs() as i64),
                bound_object_ref: Some(
                    k8s_openapi::api::authentication::v1::BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(self.ctx.name.clone()),
                        uid: Some(self.ctx.uid.clone()),
                    },
                ),
            },
            ..Default::default()
        };
        let response = api
            .create_token_request(&sa, &Default::default(), &request)
            .await
            .map_err(|e| format!("cannot get a token for serviceaccount {sa:?}: {e}"))?;
        let token = response.status.map(|s| s.token).unwrap_or_default();
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Writes `/etc` files and volumes; the sandbox is ready once they all exist.
    async fn sync_sandbox(&mut self) {
        let etc = self.ctx.pod_dir.join("etc");
        let result = async {
            std::fs::create_dir_all(&etc)
                .map_err(|e| format!("cannot create {}: {e}", etc.display()))?;
            std::fs::write(
                etc.join("resolv.conf"),
                volumes::resolv_conf(self.ctx.agent.config.cluster_dns, &self.ctx.namespace),
            )
            .map_err(|e| e.to_string())?;
            std::fs::write(
                etc.join("hosts"),
                volumes::hosts_file(&self.ctx.pod_ip.to_string(), &self.ctx.name),
            )
            .map_err(|e| e.to_string())?;
            self.sync_volumes_inner().await
        }
        .await;
        match result {
            Ok(_) => {
                self.sandbox_ready = true;
                self.sandbox_error = None;
            }
            Err(e) => {
                if self.sandbox_error.as_ref() != Some(&e) {
                    tracing::warn!(pod = %self.ctx.key, error = %e, "volumes not ready");
                }
                self.sandbox_error = Some(e);
            }
        }
    }

    async fn sync_volumes_inner(&mut self) -> Result<Vec<String>, String> {
        let pod = self.ctx.pod();
        let fetched = volumes::fetch(&self.ctx.agent.client, &pod).await?;
        if let Ok(mut f) = self.ctx.fetched.lock() {
            *f = fetched.clone();
        }
        let needs_token = volumes::effective_volumes(&pod).iter().any(|v| {
            v.projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .any(|s| s.service_account_token.is_some())
        });
        let token = if needs_token {
            self.token().await?
        } else {
            String::new()
        };
        let source = volumes::TokenSource {
            token: &token,
            ca_pem: &self.ctx.agent.ca_pem,
        };
        volumes::sync(&pod, &self.ctx.volumes_dir, &fetched, &source)
    }

    async fn sync_volumes(&mut self) {
        match self.sync_volumes_inner().await {
            Ok(changed) if !changed.is_empty() => {
                tracing::info!(pod = %self.ctx.key, volumes = ?changed, "volumes updated");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(pod = %self.ctx.key, error = %e, "volume sync failed"),
        }
    }

    /// In-place resize: admit (or not) a changed `spec.containers[].resources`, then apply
    /// the new limits to the cgroups or restart the containers whose policy says so.
    async fn check_resize(&mut self, pod: &Pod) {
        let generation = pod.metadata.generation.unwrap_or(0);
        let spec = pod.spec.clone().unwrap_or_default();
        let allocated = self.ctx.allocated();
        let mut desired = HashMap::new();
        for c in &spec.containers {
            match Resources::of_container(c) {
                Ok(r) => {
                    desired.insert(c.name.clone(), r);
                }
                Err(e) => {
                    self.resize.pending = Some(("Infeasible".into(), e));
                    return;
                }
            }
        }
        let changed: Vec<String> = spec
            .containers
            .iter()
            .filter(|c| allocated.get(&c.name) != desired.get(&c.name))
            .map(|c| c.name.clone())
            .collect();
        if changed.is_empty() {
            self.resize.pending = None;
            self.resize.generation = generation;
            return;
        }
        // Infeasible resizes are not retried until the spec changes again.
        if matches!(&self.resize.pending, Some((r, _)) if r == "Infeasible")
            && self.resize.generation == generation
        {
            return;
        }
        self.resize.generation = generation;
        let qos_now = qos_of(&spec, &allocated);
        let qos_wanted = qos_of(&spec, &desired);
        if qos_now != qos_wanted {
            self.resize.pending = Some((
                "Infeasible".into(),
                format!(
                    "Pod QoS class may not change as a result of resizing (from {qos_now} to {qos_wanted})"
                ),
            ));
            return;
        }
        let others = self.ctx.agent.allocated_requests(&self.ctx.uid);
        let wanted: Vec<Resources> = desired.values().copied().collect();
        let node = self.ctx.agent.allocatable;
        if let Err(message) = resources::fits(node, &[], &wanted) {
            self.resize.pending = Some(("Infeasible".into(), message));
            return;
        }
        if let Err(message) = resources::fits(node, &others, &wanted) {
            self.resize.pending = Some(("Deferred".into(), message));
            return;
        }
        // Admitted: allocate, report in progress, actuate.
        self.resize.pending = None;
        if let Ok(mut a) = self.ctx.allocated.lock() {
            for name in &changed {
                if let Some(r) = desired.get(name) {
                    a.insert(name.clone(), *r);
                }
            }
        }
        self.ctx.save_allocation();
        self.resize.in_progress = Some(String::new());
        self.publish().await;
        let mut errors = Vec::new();
        for c in spec.containers.iter().filter(|c| changed.contains(&c.name)) {
            let before = allocated.get(&c.name).copied().unwrap_or_default();
            let after = desired.get(&c.name).copied().unwrap_or_default();
            let restart = needs_restart(c, &before, &after);
            let handle = self.app.iter().find(|h| h.shared.get().name == c.name);
            if restart {
                if let Some(h) = handle {
                    let _ = h.commands.send(Command::Restart);
                }
                continue;
            }
            if handle.is_some_and(|h| h.shared.get().pid().is_some())
                && let Err(e) = self
                    .ctx
                    .agent
                    .cgroups
                    .apply(&self.ctx.cgroup_id(&c.name), &after.cgroup_limits())
            {
                errors.push(format!("container {:?}: {e}", c.name));
            }
        }
        self.resize.in_progress = if errors.is_empty() {
            None
        } else {
            Some(errors.join("; "))
        };
        tracing::info!(pod = %self.ctx.key, containers = ?changed, generation, "resized");
        self.ctx.event(
            false,
            "ResizeCompleted",
            format!("Pod resize completed: {}", changed.join(", ")),
            None,
        );
    }

    fn build_status(&mut self, init_done_upto: usize) -> PodStatus {
        let pod = self.ctx.pod();
        let spec = pod.spec.clone().unwrap_or_default();
        let generation = pod.metadata.generation;
        let allocated = self.ctx.allocated();
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let init: Vec<Status> = self.init.iter().map(|h| h.shared.get()).collect();
        let app: Vec<Status> = spec
            .containers
            .iter()
            .map(|c| {
                self.app
                    .iter()
                    .map(|h| h.shared.get())
                    .find(|s| s.name == c.name)
                    .unwrap_or_else(|| {
                        let mut s = Status::new(&c.name, 0);
                        if let Some(e) = &self.sandbox_error {
                            s.state = State::Waiting {
                                reason: "ContainerCreating".into(),
                                message: Some(e.clone()),
                            };
                        } else if !init_specs.is_empty() {
                            s.state = State::Waiting {
                                reason: "PodInitializing".into(),
                                message: None,
                            };
                        }
                        s
                    })
            })
            .collect();
        let init_done = init_done_upto >= init_specs.len();
        let phase = if self.terminal {
            pod.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Failed".into())
        } else {
            phase(&init, &app, init_done).to_owned()
        };
        let status_of = |s: &Status, c: &Container| {
            let cgroup = self.ctx.cgroup_id(&c.name);
            let own = allocated.get(&c.name).copied().unwrap_or_default();
            let actual = match s.state {
                State::Running { .. } => self.ctx.agent.cgroups.read_limits(&cgroup).ok(),
                _ => None,
            }
            .unwrap_or_else(|| own.cgroup_limits());
            ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: self
                    .ctx
                    .agent
                    .images
                    .image_id(c.image.as_deref().unwrap_or("")),
                container_id: match &s.state {
                    State::Running { pid, .. } => Some(format!("cellmesh://{pid}")),
                    State::Terminated(t) => Some(t.container_id.clone()),
                    State::Waiting { .. } => s.last.as_ref().map(|t| t.container_id.clone()),
                },
                ready: s.ready,
                started: Some(s.started && matches!(s.state, State::Running { .. })),
                restart_count: s.restart_count,
                state: Some(api_state(&s.state)),
                last_state: Some(s.last.as_ref().map_or_else(Default::default, |t| {
                    ContainerState {
                        terminated: Some(terminated(t)),
                        ..Default::default()
                    }
                })),
                allocated_resources: requests_map(&own),
                resources: Some(actual.reported(own.requests.memory_bytes)),
                ..Default::default()
            }
        };
        let container_statuses: Vec<ContainerStatus> = spec
            .containers
            .iter()
            .zip(&app)
            .map(|(c, s)| status_of(s, c))
            .collect();
        let init_statuses: Vec<ContainerStatus> = init_specs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = init
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| Status::new(&c.name, 0));
                status_of(&s, c)
            })
            .collect();
        let all_ready = !app.is_empty() && app.iter().all(|s| s.ready);
        let mut conditions = vec![
            self.conditions.condition(
                "PodReadyToStartContainers",
                self.sandbox_ready,
                None,
                None,
                generation,
            ),
            self.conditions.condition(
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
                None,
                generation,
            ),
            self.conditions.condition(
                "Ready",
                all_ready,
                (!all_ready).then_some(if phase == "Succeeded" || phase == "Failed" {
                    "PodCompleted"
                } else {
                    "ContainersNotReady"
                }),
                None,
                generation,
            ),
            self.conditions.condition(
                "ContainersReady",
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
                None,
                generation,
            ),
            self.conditions
                .condition("PodScheduled", true, None, None, generation),
        ];
        if let Some((reason, message)) = &self.resize.pending {
            conditions.push(self.conditions.condition(
                "PodResizePending",
                true,
                Some(reason),
                Some(message),
                Some(self.resize.generation),
            ));
        }
        if let Some(error) = &self.resize.in_progress {
            conditions.push(self.conditions.condition(
                "PodResizeInProgress",
                true,
                (!error.is_empty()).then_some("Error"),
                (!error.is_empty()).then_some(error.as_str()),
                Some(self.resize.generation),
            ));
        }
        let ip = self.ctx.pod_ip.to_string();
        let host = self.ctx.agent.config.host_ip.to_string();
        PodStatus {
            phase: Some(phase),
            conditions: Some(conditions),
            container_statuses: Some(container_statuses),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            host_ip: Some(host.clone()),
            host_ips: Some(vec![HostIP { ip: host }]),
            start_time: Some(self.start_time.clone()),
            qos_class: resources::qos_class(&spec).ok().map(str::to_owned),
            observed_generation: generation,
            ..Default::default()
        }
    }

    async fn publish(&mut self) {
        let status = self.build_status(self.init_done_upto);
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if self.last_published.as_ref() == Some(&value) {
            return;
        }
        let patch = json!({"status": value});
        match self
            .pod_api()
            .patch_status(
                &self.ctx.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.last_published = Some(value),
            Err(e) => tracing::debug!(pod = %self.ctx.key, error = %e, "status update failed"),
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        for h in self.app.iter().chain(&self.init) {
            let _ = h.commands.send(Command::Stop(grace));
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Graceful termination: stop every container within the grace period, report them
    /// terminated, then remove the pod object (delete with grace 0, as the kubelet does).
    async fn terminate(&mut self, object_exists: bool) {
        let grace = self.ctx.grace_period();
        tracing::info!(pod = %self.ctx.key, grace_seconds = grace.as_secs(), "stopping pod");
        for h in &self.app {
            let name = h.shared.get().name;
            if h.shared.get().pid().is_some() {
                self.ctx.event(
                    false,
                    "Killing",
                    format!("Stopping container {name}"),
                    Some(&name),
                );
            }
        }
        self.stop_all(grace).await;
        if !object_exists {
            return;
        }
        self.publish().await;
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.ctx.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = self.pod_api().delete(&self.ctx.name, &params).await {
            tracing::debug!(pod = %self.ctx.key, error = %e, "final delete failed");
        }
    }
}

fn qos_of(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    resources: &HashMap<String, Resources>,
) -> &'static str {
    let mut spec = spec.clone();
    for c in &mut spec.containers {
        if let Some(r) = resources.get(&c.name) {
            c.resources = Some(to_requirements(r));
        }
    }
    resources::qos_class(&spec).unwrap_or("BestEffort")
}

fn to_requirements(r: &Resources) -> k8s_openapi::api::core::v1::ResourceRequirements {
    let side = |a: &resources::Amounts| {
        let mut m = BTreeMap::new();
        if let Some(c) = a.cpu_millis {
            m.insert("cpu".to_owned(), Quantity(resources::format_millis(c)));
        }
        if let Some(b) = a.memory_bytes {
            m.insert("memory".to_owned(), Quantity(b.to_string()));
        }
        (!m.is_empty()).then_some(m)
    };
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: side(&r.requests),
        limits: side(&r.limits),
        ..Default::default()
    }
}

/// Whether the container's `resizePolicy` asks for a restart for what changed.
fn needs_restart(c: &Container, before: &Resources, after: &Resources) -> bool {
    let policy = |resource: &str| {
        c.resize_policy
            .iter()
            .flatten()
            .find(|p| p.resource_name == resource)
            .is_some_and(|p| p.restart_policy == "RestartContainer")
    };
    let cpu_changed = before.requests.cpu_millis != after.requests.cpu_millis
        || before.limits.cpu_millis != after.limits.cpu_millis;
    let memory_changed = before.requests.memory_bytes != after.requests.memory_bytes
        || before.limits.memory_bytes != after.limits.memory_bytes;
    (cpu_changed && policy("cpu")) || (memory_changed && policy("memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminated(code: i32) -> State {
        State::Terminated(container::Terminated {
            exit_code: code,
            signal: None,
            reason: String::new(),
            message: None,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            container_id: String::new(),
        })
    }

    #[test]
    fn phases() {
        let mut running = Status::new("a", 0);
        running.state = State::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
            pid: 1,
        };
        let waiting = Status::new("b", 0);
        let mut done = Status::new("c", 0);
        done.state = terminated(0);
        done.finished = true;
        let mut failed = done.clone();
        failed.state = terminated(1);
        assert_eq!(phase(&[], std::slice::from_ref(&waiting), true), "Pending");
        assert_eq!(
            phase(&[], &[running.clone(), waiting.clone()], true),
            "Running"
        );
        assert_eq!(phase(&[], &[done.clone()], true), "Succeeded");
        assert_eq!(phase(&[], &[done.clone(), failed.clone()], true), "Failed");
        assert_eq!(
            phase(
                std::slice::from_ref(&failed),
                std::slice::from_ref(&waiting),
                false
            ),
            "Failed"
        );
        assert_eq!(phase(&[], &[running], false), "Pending");
        let mut backing_off = waiting;
        backing_off.restart_count = 2;
        assert_eq!(phase(&[], &[backing_off], true), "Running");
    }

    #[test]
    fn resize_policy_decides_restarts() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]
        }))
        .unwrap();
        let r = |cpu: u64, mem: u64| Resources {
            requests: resources::Amounts {
                cpu_millis: Some(cpu),
                memory_bytes: Some(mem),
            },
            limits: resources::Amounts {
                cpu_millis: Some(cpu),
                memory_bytes: Some(mem),
            },
        };
        assert!(!needs_restart(&c, &r(100, 10), &r(200, 10)));
        assert!(needs_restart(&c, &r(100, 10), &r(100, 20)));
    }
}
