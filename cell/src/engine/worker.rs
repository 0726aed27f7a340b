//! In-process workers: `inline` (tasks on the cell's runtime) and `thread` (an OS thread
//! with its own single-threaded runtime).
//!
//! Contract: a worker runs each assigned request as its own task, so up to `concurrency`
//! requests interleave on it; outputs and the outcome go to the request's event channel;
//! cancellation (deadline, caller gone, shutdown) drops the request's pipeline future, which
//! also kills an exec process caught mid-request. Every request ends with exactly one
//! `job_finished` report, cancelled or not, so the pool's load accounting stays exact.
//! Inline workers share one pipeline instance; each thread worker compiles its own (exec
//! processes belong to the runtime that started them).

use std::sync::{Arc, Weak};
use std::time::Instant;

use cellmesh_api::pipeline::Stage;
use tokio::sync::mpsc;

use super::error::EngineError;
use super::pipeline::{Batching, Emitter, Functions, Pipeline};
use super::pool::{Assignment, Backend, Event, Shared, WorkerHandle, WorkerId};

/// Run one request on `pipeline` and report it to the pool.
pub(crate) async fn execute(
    pipeline: Arc<Pipeline>,
    assignment: Assignment,
    worker: WorkerId,
    shared: Weak<Shared>,
) {
    let started = Instant::now();
    let Assignment {
        job,
        input,
        events,
        cancel,
        deadline,
    } = assignment;
    let outputs = events.clone();
    let emitter = Emitter::new(move |value| outputs.send(Event::Output(value)).is_ok());
    tokio::select! {
        result = pipeline.run_until(input, &emitter, Some(deadline)) => {
            let _ = events.send(match result {
                Ok(()) => Event::Done,
                Err(stage) => Event::Failed(EngineError::Stage(stage)),
            });
        }
        () = cancel.cancelled() => {}
    }
    if let Some(shared) = shared.upgrade() {
        shared.job_finished(worker, job, started.elapsed());
    }
}

/// Inline workers: logical slots on the cell's own runtime.
pub(crate) struct InlineBackend {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) runtime: tokio::runtime::Handle,
}

struct InlineWorker {
    id: WorkerId,
    pipeline: Arc<Pipeline>,
    runtime: tokio::runtime::Handle,
    shared: Weak<Shared>,
}

impl Backend for InlineBackend {
    fn start(&self, id: WorkerId, shared: Weak<Shared>) {
        let worker = Arc::new(InlineWorker {
            id,
            pipeline: Arc::clone(&self.pipeline),
            runtime: self.runtime.clone(),
            shared: shared.clone(),
        });
        // Report readiness from a task: the pool's lock is held while `start` runs.
        self.runtime.spawn(async move {
            if let Some(shared) = shared.upgrade() {
                shared.worker_ready(id, worker);
            }
        });
    }
}

impl WorkerHandle for InlineWorker {
    fn run(&self, assignment: Assignment) {
        self.runtime.spawn(execute(
            Arc::clone(&self.pipeline),
            assignment,
            self.id,
            self.shared.clone(),
        ));
    }

    fn retire(&self) {
        // Nothing to stop: running tasks finish on their own.
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}

/// Thread workers: one OS thread each, running a single-threaded tokio runtime.
pub(crate) struct ThreadBackend {
    pub(crate) spec: Stage,
    pub(crate) functions: Functions,
    pub(crate) runtime: tokio::runtime::Handle,
    /// `cpuPinning`: the CPUs workers are pinned to in turn.
    pub(crate) pinning: Option<Arc<[usize]>>,
    /// Live micro-batching parameters (each thread's pipeline batches with them).
    pub(crate) batching: Batching,
}

enum ThreadMessage {
    Run(Assignment),
    Retire,
}

struct ThreadWorker {
    tx: mpsc::UnboundedSender<ThreadMessage>,
}

impl Backend for ThreadBackend {
    fn start(&self, id: WorkerId, shared: Weak<Shared>) {
        let spec = self.spec.clone();
        let functions = self.functions.clone();
        let runtime = self.runtime.clone();
        let for_thread = shared.clone();
        let pinning = self.pinning.clone();
        let batching = self.batching.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cell-worker-{id}"))
            .spawn(move || {
                if let Some(allowed) = pinning {
                    super::pinning::pin_worker(id, &allowed);
                }
                thread_main(id, (&spec, &functions, &batching), &for_thread, &runtime);
            });
        if let Err(e) = spawned {
            let reason = format!("cannot start a worker thread: {e}");
            // The pool's lock is held while `start` runs: report from a task.
            self.runtime.spawn(async move {
                if let Some(shared) = shared.upgrade() {
                    shared.worker_lost(id, &reason);
                }
            });
        }
    }
}

fn thread_main(
    id: WorkerId,
    (spec, functions, batching): (&Stage, &Functions, &Batching),
    shared: &Weak<Shared>,
    main_runtime: &tokio::runtime::Handle,
) {
    let report_lost = |reason: String| {
        let shared = shared.clone();
        main_runtime.spawn(async move {
            if let Some(shared) = shared.upgrade() {
                shared.worker_lost(id, &reason);
            }
        });
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report_lost(format!("cannot build the worker's runtime: {e}")),
    };
    let pipeline = match Pipeline::compile_batched(spec, functions, batching) {
        Ok(pipeline) => Arc::new(pipeline),
        Err(errors) => return report_lost(format!("pipeline does not compile: {errors:?}")),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    runtime.block_on(async {
        if let Some(shared) = shared.upgrade() {
            shared.worker_ready(id, Arc::new(ThreadWorker { tx }));
        } else {
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(message) = rx.recv().await {
            match message {
                ThreadMessage::Run(assignment) => {
                    tasks.spawn(execute(
                        Arc::clone(&pipeline),
                        assignment,
                        id,
                        shared.clone(),
                    ));
                }
                ThreadMessage::Retire => break,
            }
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
    if let Some(shared) = shared.upgrade() {
        shared.worker_retired(id);
    }
}

impl WorkerHandle for ThreadWorker {
    fn run(&self, assignment: Assignment) {
        if let Err(mpsc::error::SendError(ThreadMessage::Run(assignment))) =
            self.tx.send(ThreadMessage::Run(assignment))
        {
            // The thread is gone; it can no longer report, so answer here.
            let _ = assignment
                .events
                .send(Event::Failed(EngineError::WorkerLost {
                    worker: "thread worker".to_owned(),
                    reason: "the worker thread has stopped".to_owned(),
                }));
        }
    }

    fn retire(&self) {
        let _ = self.tx.send(ThreadMessage::Retire);
    }

    fn pid(&self) -> Option<u32> {
        None
    }
}
