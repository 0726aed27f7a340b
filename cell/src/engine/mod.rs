//! The cell's transport-free engine: admission, deadlines, an elastic worker pool, App
//! pipelines and graceful drain, configured by a [`ProfileSpec`].
//!
//! Contract for the REST/gRPC layers (kept thin on purpose):
//! - [`Engine::submit`] admits a request at once or fails with [`EngineError`]
//!   (`QueueFull` → 503 + `Retry-After` / `RESOURCE_EXHAUSTED`, `Draining` → 503); an
//!   admitted request yields a [`ResponseStream`] of outputs in order, ended by success or
//!   an error (`Expired`/`TimedOut` → 504 / `DEADLINE_EXCEEDED`, `WorkerLost` → 502,
//!   `Stage` → per kind). [`EngineError::http_status`], [`EngineError::grpc_code`],
//!   [`EngineError::retry_after_secs`] and [`EngineError::to_json`] give the mapping.
//! - The deadline is the explicit per-request timeout (e.g. `x-request-timeout` ms or the
//!   gRPC deadline) or the profile's `requestTimeout`, counted from admission; it applies
//!   in the queue and while running (the work is cancelled). Dropping a stream cancels its
//!   request.
//! - [`Engine::apply_profile`] changes limits live; [`reload::watch_profile_file`] does it
//!   when the mounted profile changes. [`Engine::drain`] stops admission and lets accepted
//!   work finish within `terminationTimeout`. [`Engine::info`] and
//!   [`Engine::register_metrics`] expose the state.
//! - The profile's `batch` micro-batches every pipeline leaf among the requests one worker
//!   runs at once (so batches are at most `concurrency` large); the parameters are live, a
//!   reload applies from the next batch on, and process workers are told. Batch sizes are
//!   in [`EngineInfo::batches`] and the `cellmesh_engine_batch_size` histogram.
//! - `isolate: process` re-executes the cell binary as workers: the binary's `main` must
//!   call [`run_worker_if_requested`] first.

mod cgroup;
mod child;
pub mod deadline;
mod error;
mod info;
pub mod pinning;
pub mod pipeline;
mod pool;
mod process;
pub mod reload;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cellmesh_api::pipeline::{PipelineError, Stage};
use cellmesh_api::profile::{Isolate, PoolLimit, ProfileError, ProfileSpec};
use futures::Stream;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::mpsc;

pub use self::cgroup::{CGROUP_ROOT_ENV, CpuLimit, read_cpu_limit, root_from_env};
pub use self::child::run_worker_if_requested;
pub use self::error::{EngineError, StageError, StageErrorKind};
pub use self::info::{Counters, EngineCollector, EngineInfo, WorkerInfo};
pub use self::pipeline::{
    BatchItem, BatchParams, BatchStats, BatchSummary, Batching, Emitter, Function, Functions,
    Pipeline,
};
pub use self::pool::Timing;
use self::pool::{Abandon, Backend, Event, JobId, Shared};
pub use self::process::{SOCKET_ENV, WORKER_ID_ENV, WorkerCommand};

/// Everything the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The profile in force at start.
    pub profile: ProfileSpec,
    /// The pipeline each request runs.
    pub pipeline: Stage,
    /// The functions the pipeline may name (workers processes must use the same set).
    pub functions: Functions,
    /// How to start worker processes (`isolate: process`); default: this binary.
    pub worker_command: Option<WorkerCommand>,
    /// cgroup mount root for `poolLimit: auto`; default from `CELLMESH_CGROUP_ROOT`.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Housekeeping periods and crash backoff.
    pub timing: Timing,
}

impl EngineConfig {
    /// A configuration with default functions, command, cgroup root and timing.
    pub fn new(profile: ProfileSpec, pipeline: Stage) -> Self {
        Self {
            profile,
            pipeline,
            functions: Functions::builtin(),
            worker_command: None,
            cgroup_root: None,
            timing: Timing::default(),
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The profile is invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The pipeline is invalid (each error names its stage).
    #[error("invalid pipeline: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Pipeline(Vec<PipelineError>),
    /// The worker socket or binary could not be set up.
    #[error("cannot set up process workers: {0}")]
    Io(#[from] std::io::Error),
}

/// A running engine; cheap to clone (all clones share one pool).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// A handle that does not keep the engine alive (for background tasks).
#[derive(Clone)]
pub(crate) struct WeakEngine(std::sync::Weak<Shared>);

impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|shared| Engine { shared })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Validate the configuration, start `poolMin` workers and the housekeeping task.
    /// Must be called inside a tokio runtime.
    pub fn start(config: EngineConfig) -> Result<Self, StartError> {
        config.profile.validate()?;
        // Compile once here so a bad pipeline fails the start, not every worker.
        Pipeline::compile(&config.pipeline, &config.functions).map_err(StartError::Pipeline)?;
        let runtime = tokio::runtime::Handle::current();
        warn_if_batches_cannot_fill(&config.profile);
        let batch_stats = Arc::new(BatchStats::default());
        let batching = {
            let stats = Arc::clone(&batch_stats);
            Batching::new(
                BatchParams::from(&config.profile.batch),
                Arc::new(move |size| stats.record(size)),
            )
        };
        // Fixed for the engine's life: `isolate` and `cpuPinning` changes wait for a restart.
        let pinning: Option<Arc<[usize]>> =
            match (config.profile.cpu_pinning, config.profile.isolate) {
                (false, _) => None,
                (true, Isolate::Inline) => {
                    tracing::warn!(
                        "cpuPinning needs isolate: thread or process; inline workers are not pinned"
                    );
                    None
                }
                (true, _) => Some(pinning::allowed_cpus().into()),
            };
        let backend: Box<dyn Backend> = match config.profile.isolate {
            Isolate::Inline => Box::new(worker::InlineBackend {
                // Rebuilt with the live batching parameters (the check above built none).
                pipeline: Arc::new(
                    Pipeline::compile_batched(&config.pipeline, &config.functions, &batching)
                        .map_err(StartError::Pipeline)?,
                ),
                runtime: runtime.clone(),
            }),
            Isolate::Thread => Box::new(worker::ThreadBackend {
                spec: config.pipeline.clone(),
                functions: config.functions.clone(),
                runtime: runtime.clone(),
                pinning,
                batching: batching.clone(),
            }),
            Isolate::Process => {
                let command = match config.worker_command.clone() {
                    Some(command) => command,
                    None => WorkerCommand::current_exe()?,
                };
                Box::new(process::ProcessBackend::new(
                    command,
                    config.pipeline.clone(),
                    pinning,
                    batching.clone(),
                )?)
            }
        };
        let cgroup_root = config.cgroup_root.clone().unwrap_or_else(root_from_env);
        let cpu_limit = read_cpu_limit(&cgroup_root);
        let shared = Shared::new(
            config.profile,
            cpu_limit,
            backend,
            config.timing,
            (batching, batch_stats),
        );
        shared.tick(None);
        runtime.spawn(housekeeping(Arc::downgrade(&shared), cgroup_root));
        Ok(Self { shared })
    }

    /// Admit `input` (deadline: `timeout` from now, else the profile's `requestTimeout`) or
    /// reject it at once.
    pub fn submit(
        &self,
        input: Value,
        timeout: Option<Duration>,
    ) -> Result<ResponseStream, EngineError> {
        let arrived = Instant::now();
        let (job, deadline, events) = self.shared.admit(input, timeout)?;
        Ok(ResponseStream {
            shared: Arc::clone(&self.shared),
            job,
            arrived,
            deadline,
            events,
            finished: false,
        })
    }

    /// Submit and collect every output.
    pub async fn call(
        &self,
        input: Value,
        timeout: Option<Duration>,
    ) -> Result<Vec<Value>, EngineError> {
        let mut stream = self.submit(input, timeout)?;
        let mut outputs = Vec::new();
        while let Some(item) = stream.next().await {
            outputs.push(item?);
        }
        Ok(outputs)
    }

    /// Apply a new profile (validated first; on error the current one stays). Limits take
    /// effect at once without dropping requests; `isolate` and `cpuPinning` changes wait
    /// for a restart (reported in `info().restart_pending`).
    pub fn apply_profile(&self, profile: ProfileSpec) -> Result<(), ProfileError> {
        profile.validate()?;
        warn_if_batches_cannot_fill(&profile);
        self.shared.set_profile(profile);
        Ok(())
    }

    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.shared))
    }

    pub(crate) fn count_rejected_profile(&self) {
        self.shared.lock().counters.profile_rejected += 1;
    }

    /// The profile in force.
    pub fn profile(&self) -> ProfileSpec {
        self.shared.lock().profile.clone()
    }

    /// A snapshot for `/info`.
    pub fn info(&self) -> EngineInfo {
        self.shared.snapshot()
    }

    /// Register the engine's gauges and counters into `registry` (rendered at scrape time).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(EngineCollector {
            shared: Arc::downgrade(&self.shared),
        }));
    }

    /// Stop admitting at once: new requests get `Draining`; accepted ones continue.
    pub fn stop_admitting(&self) {
        self.shared.start_draining();
    }

    /// Stop admitting (new requests get `Draining`), let queued and running requests
    /// finish within the profile's `terminationTimeout`, then fail what is left with
    /// `ShutDown` and stop the workers.
    pub async fn drain(&self) -> DrainReport {
        let started = Instant::now();
        let limit = self.shared.lock().profile.termination_timeout.get();
        self.shared.start_draining();
        let deadline = started + limit;
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.is_idle() {
                break;
            }
            // Also poll: a request may finish between the check and the wait.
            let step =
                (deadline.saturating_duration_since(Instant::now())).min(self.shared.timing.tick);
            if step.is_zero() {
                break;
            }
            let _ = tokio::time::timeout(step, idle).await;
        }
        let abandoned = self.shared.shut_down();
        DrainReport {
            took: started.elapsed(),
            abandoned,
        }
    }
}

/// Batches form among the requests one worker runs at once, so `concurrency` caps them.
fn warn_if_batches_cannot_fill(profile: &ProfileSpec) {
    if profile.batch.size > profile.concurrency {
        tracing::warn!(
            "batch.size {} is greater than concurrency {}: a worker never holds more than {} \
             requests, so its batches stay at most that large",
            profile.batch.size,
            profile.concurrency,
            profile.concurrency
        );
    }
}

/// How a drain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Time from the start of the drain until the workers were told to stop.
    pub took: Duration,
    /// Accepted requests that had not finished by `terminationTimeout` (failed `ShutDown`).
    pub abandoned: usize,
}

/// The outputs of one admitted request, in order, then its outcome.
pub struct ResponseStream {
    shared: Arc<Shared>,
    job: JobId,
    arrived: Instant,
    deadline: Instant,
    events: mpsc::UnboundedReceiver<Event>,
    finished: bool,
}

impl ResponseStream {
    /// When the request's deadline passes (counted from admission).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next output; `None` after success; `Some(Err)` once on failure (then `None`).
    pub async fn next(&mut self) -> Option<Result<Value, EngineError>> {
        if self.finished {
            return None;
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(event) => event,
            Err(_) => {
                self.finished = true;
                return Some(Err(self.on_deadline()));
            }
        };
        match event {
            Some(Event::Output(value)) => Some(Ok(value)),
            Some(Event::Done) => {
                self.finished = true;
                None
            }
            Some(Event::Failed(error)) => {
                self.finished = true;
                Some(Err(error))
            }
            None => {
                self.finished = true;
                Some(Err(EngineError::ShutDown))
            }
        }
    }

    fn on_deadline(&mut self) -> EngineError {
        if let Some(error) = self.shared.abandon(self.job, Abandon::Deadline) {
            return error;
        }
        // It ended just now: report what the worker said.
        match self.events.try_recv() {
            Ok(Event::Failed(error)) => error,
            _ => EngineError::TimedOut {
                after: self.deadline.saturating_duration_since(self.arrived),
            },
        }
    }

    /// As a `futures::Stream` (for streaming HTTP bodies and gRPC server streams).
    pub fn into_stream(self) -> impl Stream<Item = Result<Value, EngineError>> + Send {
        futures::stream::unfold(self, |mut stream| async move {
            let item = stream.next().await?;
            Some((item, stream))
        })
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandon(self.job, Abandon::Dropped);
        }
    }
}

/// Periodic housekeeping until the engine is dropped.
async fn housekeeping(shared: std::sync::Weak<Shared>, cgroup_root: std::path::PathBuf) {
    let (tick, poll) = match shared.upgrade() {
        Some(s) => (s.timing.tick, s.timing.cgroup_poll),
        None => return,
    };
    let mut last_poll = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let auto = shared.lock().profile.pool_limit == PoolLimit::Auto;
        let reading = if auto && last_poll.elapsed() >= poll {
            last_poll = Instant::now();
            let root = cgroup_root.clone();
            tokio::task::spawn_blocking(move || read_cpu_limit(&root))
                .await
                .ok()
        } else {
            None
        };
        shared.tick(reading);
    }
}
