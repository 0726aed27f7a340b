//! State shared by the REST, gRPC and admin servers of one cell process: what it runs (a
//! workmodel service or an App pipeline), its engine and its lifecycle.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, ResponseStream};
use crate::metrics::CellMetrics;
use crate::service::{CellError, ServiceCell};

/// Where the servers listen, known once they are bound.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Addresses {
    /// REST (and `/metrics`).
    pub rest: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// Admin: `/metrics`, `/live`, `/ready`, `/info`.
    pub admin: SocketAddr,
}

/// What a cell runs.
// One per process behind an `Arc`: boxing would only add a pointer chase per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Workload {
    /// A service of a µBench workmodel (µBench's REST and gRPC semantics).
    Service(ServiceCell),
    /// An App's pipeline: JSON in, a stream of JSON outputs back.
    Pipeline(PipelineCell),
}

/// An App's pipeline running on the engine.
#[derive(Debug)]
pub struct PipelineCell {
    name: String,
    engine: Engine,
    metrics: CellMetrics,
}

impl PipelineCell {
    /// The App `name` running on `engine` (started with its pipeline).
    pub fn new(name: &str, engine: Engine, identity: &crate::metrics::Identity) -> Self {
        let info = engine.info();
        let capacity = info
            .effective_pool_limit
            .saturating_mul(info.profile.concurrency);
        let mut metrics = CellMetrics::new(identity, capacity);
        metrics.register_engine(&engine);
        Self {
            name: name.to_owned(),
            engine,
            metrics,
        }
    }

    /// Admit one request: its outputs in order, then its outcome.
    pub fn submit(
        &self,
        input: Value,
        timeout: Option<Duration>,
    ) -> Result<ResponseStream, CellError> {
        Ok(self.engine.submit(input, timeout)?)
    }

    /// The metrics.
    pub fn metrics(&self) -> &CellMetrics {
        &self.metrics
    }
}

/// One cell process: its workload and lifecycle.
#[derive(Debug)]
pub struct App {
    /// What it runs.
    pub workload: Workload,
    ready: AtomicBool,
    started: Instant,
    addresses: OnceLock<Addresses>,
}

impl App {
    /// A cell running a workmodel service, not ready yet.
    pub fn new(cell: ServiceCell) -> Self {
        Self::with(Workload::Service(cell))
    }

    /// A cell running `workload`, not ready yet.
    pub fn with(workload: Workload) -> Self {
        Self {
            workload,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            addresses: OnceLock::new(),
        }
    }

    /// The workmodel service, when the cell runs one.
    pub fn service(&self) -> Option<&ServiceCell> {
        match &self.workload {
            Workload::Service(cell) => Some(cell),
            Workload::Pipeline(_) => None,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        match &self.workload {
            Workload::Service(cell) => cell.engine(),
            Workload::Pipeline(pipeline) => &pipeline.engine,
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &CellMetrics {
        match &self.workload {
            Workload::Service(cell) => cell.metrics(),
            Workload::Pipeline(pipeline) => &pipeline.metrics,
        }
    }

    /// The service or App name.
    pub fn name(&self) -> &str {
        match &self.workload {
            Workload::Service(cell) => cell.name(),
            Workload::Pipeline(pipeline) => &pipeline.name,
        }
    }

    /// The REST path requests go to.
    pub fn path(&self) -> &str {
        match &self.workload {
            Workload::Service(cell) => cell.spec().path(),
            Workload::Pipeline(_) => crate::http::PIPELINE_PATH,
        }
    }

    /// Marks the servers as bound and the cell ready.
    pub fn set_ready(&self, addresses: Addresses) {
        let _ = self.addresses.set(addresses);
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the cell as not ready (first step of a drain); requests are still admitted.
    pub fn set_unready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Marks the cell as draining: not ready, no new admissions (503); accepted requests
    /// continue ([`Engine::drain`] waits for them).
    pub fn drain(&self) {
        self.set_unready();
        self.engine().stop_admitting();
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The `/info` document: identity, the engine's state (pool, queue, counters, profile),
    /// downstreams, addresses.
    pub fn info(&self) -> Value {
        let engine = self.engine().info();
        let mut info = serde_json::json!({
            "service": self.name(),
            "mode": match self.workload { Workload::Service(_) => "service", Workload::Pipeline(_) => "app" },
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.is_ready(),
            "uptimeSeconds": self.started.elapsed().as_secs_f64(),
            "path": self.path(),
            "capacity": engine.effective_pool_limit.saturating_mul(engine.profile.concurrency),
            "inFlight": engine.in_flight,
            "listen": self.addresses.get(),
            "engine": engine,
        });
        if let Some(cell) = self.service() {
            let spec = cell.spec();
            let downstreams: serde_json::Map<String, Value> = cell
                .downstreams()
                .map(|(name, target)| (name.to_owned(), target.into()))
                .collect();
            info["requestMethod"] = spec.request_method.to_string().into();
            info["workers"] = spec.workers().into();
            info["threads"] = spec.threads().into();
            info["downstreams"] = downstreams.into();
        }
        info
    }
}
