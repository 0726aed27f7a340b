//! Process workers, parent side: the acceptor hands requests to worker processes over a
//! UNIX socket.
//!
//! Contract:
//! - A worker is the cell's own binary (or [`WorkerCommand`]) started with
//!   `CELLMESH_ENGINE_SOCKET` and `CELLMESH_WORKER_ID` set; its `main` must call
//!   [`super::run_worker_if_requested`] first. It connects to the engine's socket, says
//!   `hello`, receives the pipeline (`init`), compiles it and answers `ready` — all within
//!   `startupTimeout`, else it is killed and counted as a failed start.
//! - Frames are length-prefixed JSON (`tokio_util`'s `LengthDelimitedCodec` + serde_json):
//!   parent → worker `init | run | cancel | batch | retire`, worker → parent
//!   `hello | ready | initFailed | output | done | failed | batched`. `run` carries the
//!   time left until the request's deadline; `batch` forwards a hot-reloaded profile's
//!   micro-batching parameters; `batched` reports each micro-batch's size to the parent's
//!   histogram. Requests are multiplexed by job
//!   id, so one worker runs up to `concurrency` requests at once.
//! - When the connection ends the exit status is collected: after `retire` with status 0
//!   it is a normal retirement; otherwise every request the worker held fails with
//!   `WorkerLost { worker: "worker-<id> (pid <pid>)", reason: <exit status> }` and the pool
//!   replaces the worker after its backoff. No other request is affected.
//! - Heartbeat: each worker opens a second connection (`heartbeats` hello) on which a
//!   dedicated thread sends a `beat` every `heartbeat_interval` (sent in `init`), whatever its
//!   requests do. Silence for `heartbeat_timeout` means the process is hung (stopped,
//!   wedged): it is killed, its requests fail with `WorkerLost` saying so, and it is
//!   replaced. (A request stuck in user code while the process lives is the deadline's
//!   business: cancelled, then killed after the grace.)
//! - The worker's stdout and stderr are relayed line by line to the cell's log, tagged with
//!   the worker id. Workers are killed when the engine goes away (kill-on-drop) and exit by
//!   themselves when the socket closes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellmesh_api::pipeline::Stage;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::error::{EngineError, StageError};
use super::pipeline::{BatchParams, Batching};
use super::pool::{Assignment, Backend, Event, JobId, Shared, WorkerHandle, WorkerId};

/// Environment variable carrying the engine's socket path to a worker process.
pub const SOCKET_ENV: &str = "CELLMESH_ENGINE_SOCKET";
/// Environment variable carrying the worker's id.
pub const WORKER_ID_ENV: &str = "CELLMESH_WORKER_ID";

/// Largest frame accepted (a request or one output).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Parent → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum ToWorker {
    Init {
        pipeline: Box<Stage>,
        #[serde(default)]
        heartbeat_ms: u64,
        #[serde(default)]
        batch: BatchParams,
    },
    Run {
        job: JobId,
        input: Value,
        /// Milliseconds left until the request's deadline.
        #[serde(default)]
        remaining_ms: Option<u64>,
    },
    /// The profile's micro-batching parameters changed.
    Batch {
        params: BatchParams,
    },
    Cancel {
        job: JobId,
    },
    Retire,
}

/// Worker → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum FromWorker {
    Hello {
        worker: WorkerId,
    },
    /// First frame of a worker's heartbeat connection.
    Heartbeats {
        worker: WorkerId,
    },
    Beat,
    Ready,
    InitFailed {
        error: String,
    },
    Output {
        job: JobId,
        value: Value,
    },
    Done {
        job: JobId,
    },
    Failed {
        job: JobId,
        error: StageError,
    },
    /// The worker handed a micro-batch of `size` requests to a leaf.
    Batched {
        size: usize,
    },
}

pub(crate) type Connection = Framed<UnixStream, LengthDelimitedCodec>;

pub(crate) fn connection(stream: UnixStream) -> Connection {
    Framed::new(
        stream,
        LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec(),
    )
}

pub(crate) fn encode<T: Serialize>(message: &T) -> Bytes {
    // Serializing these enums (strings, numbers, JSON values) cannot fail.
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(frame).map_err(|e| format!("bad frame from peer: {e}"))
}

/// How to start a worker process.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    /// The program; normally the cell's own binary.
    pub program: PathBuf,
    /// Its arguments (the worker is recognised by its environment, not its arguments).
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// The running binary itself.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: Vec::new(),
        })
    }
}

/// Which of a worker's two connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Channel {
    Work,
    Heartbeat,
}

type Waiting = Arc<Mutex<HashMap<(WorkerId, Channel), oneshot::Sender<Connection>>>>;

/// Starts worker processes and owns the socket they connect to.
pub(crate) struct ProcessBackend {
    command: WorkerCommand,
    spec: Stage,
    socket: SocketDir,
    waiting: Waiting,
    runtime: tokio::runtime::Handle,
    acceptor: AbortHandle,
    /// `cpuPinning`: the CPUs workers are pinned to in turn.
    pinning: Option<Arc<[usize]>>,
    /// Live micro-batching parameters, forwarded to every worker.
    batching: Batching,
}

/// A private directory holding the socket; removed on drop.
struct SocketDir {
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ProcessBackend {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl ProcessBackend {
    /// Bind the engine's socket and start accepting worker connections.
    pub(crate) fn new(
        command: WorkerCommand,
        spec: Stage,
        pinning: Option<Arc<[usize]>>,
        batching: Batching,
    ) -> std::io::Result<Self> {
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cellmesh-engine-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("engine.sock");
        let listener = UnixListener::bind(&path)?;
        let waiting: Waiting = Arc::default();
        let runtime = tokio::runtime::Handle::current();
        let acceptor = runtime
            .spawn(accept_workers(listener, Arc::clone(&waiting)))
            .abort_handle();
        Ok(Self {
            command,
            spec,
            socket: SocketDir { dir, path },
            waiting,
            runtime,
            acceptor,
            pinning,
            batching,
        })
    }
}

/// Accept connections, read each one's `hello` and hand it to the worker that waits for it.
async fn accept_workers(listener: UnixListener, waiting: Waiting) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut conn = connection(stream);
            let hello = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
            let Ok(Some(Ok(frame))) = hello else {
                return;
            };
            let key = match decode(&frame) {
                Ok(FromWorker::Hello { worker }) => (worker, Channel::Work),
                Ok(FromWorker::Heartbeats { worker }) => (worker, Channel::Heartbeat),
                _ => {
                    tracing::warn!(
                        "a process connected to the engine socket without a valid hello"
                    );
                    return;
                }
            };
            let slot = waiting.lock().ok().and_then(|mut w| w.remove(&key));
            if let Some(slot) = slot {
                let _ = slot.send(conn);
            }
        });
    }
}

impl Backend for ProcessBackend {
    fn start(&self, id: WorkerId, shared: Weak<Shared>) {
        let (tx, rx) = oneshot::channel();
        let (beats_tx, beats_rx) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert((id, Channel::Work), tx);
            waiting.insert((id, Channel::Heartbeat), beats_tx);
        }
        let cpu = self
            .pinning
            .as_ref()
            .and_then(|allowed| super::pinning::cpu_for(id, allowed));
        self.runtime.spawn(run_worker(
            id,
            shared,
            (self.command.clone(), cpu),
            (self.spec.clone(), self.batching.subscribe()),
            self.socket.path.clone(),
            (rx, beats_rx),
            Arc::clone(&self.waiting),
        ));
    }
}

struct InFlight {
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    started: Instant,
    watcher: AbortHandle,
}

#[derive(Default)]
struct InFlightTable {
    jobs: HashMap<JobId, InFlight>,
    /// Set once the connection ended: new requests fail at once.
    closed: bool,
}

struct ProcessWorker {
    name: String,
    pid: Option<u32>,
    tx: mpsc::UnboundedSender<ToWorker>,
    inflight: Arc<Mutex<InFlightTable>>,
    retiring: AtomicBool,
    /// How long a cancelled request may keep running before the process is killed.
    cancel_grace: Duration,
    /// Fired (with a reason) to kill a process that ignores cancellation.
    kill: CancellationToken,
    kill_reason: Arc<Mutex<Option<String>>>,
}

impl WorkerHandle for ProcessWorker {
    fn run(&self, assignment: Assignment) {
        let Assignment {
            job,
            input,
            events,
            cancel,
            deadline,
        } = assignment;
        let Ok(mut table) = self.inflight.lock() else {
            return;
        };
        if table.closed {
            let _ = events.send(Event::Failed(EngineError::WorkerLost {
                worker: self.name.clone(),
                reason: "its connection had just closed".to_owned(),
            }));
            return;
        }
        let tx = self.tx.clone();
        let token = cancel.clone();
        let (grace, kill, kill_reason) = (
            self.cancel_grace,
            self.kill.clone(),
            Arc::clone(&self.kill_reason),
        );
        // Aborted when the request finishes; past the grace the worker is stuck (e.g. a
        // blocking handler) and only killing it frees its slots.
        let watcher = tokio::spawn(async move {
            token.cancelled().await;
            let _ = tx.send(ToWorker::Cancel { job });
            tokio::time::sleep(grace).await;
            if let Ok(mut reason) = kill_reason.lock() {
                reason.get_or_insert_with(|| {
                    format!(
                        "killed because a cancelled request kept running for {} ms",
                        grace.as_millis()
                    )
                });
            }
            kill.cancel();
        })
        .abort_handle();
        table.jobs.insert(
            job,
            InFlight {
                events,
                cancel,
                started: Instant::now(),
                watcher,
            },
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        let _ = self.tx.send(ToWorker::Run {
            job,
            input,
            remaining_ms: Some(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX)),
        });
    }

    fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        let _ = self.tx.send(ToWorker::Retire);
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }
}

fn relay(
    stream: Option<impl AsyncRead + Unpin + Send + 'static>,
    worker: WorkerId,
    name: &'static str,
) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "cellmesh::worker", worker, stream = name, "{line}");
        }
    });
}

async fn run_worker(
    id: WorkerId,
    shared: Weak<Shared>,
    (command, cpu): (WorkerCommand, Option<usize>),
    (spec, mut batch_params): (Stage, watch::Receiver<BatchParams>),
    socket: PathBuf,
    (connected, heartbeats): (oneshot::Receiver<Connection>, oneshot::Receiver<Connection>),
    waiting: Waiting,
) {
    let forget = |waiting: &Waiting| {
        if let Ok(mut waiting) = waiting.lock() {
            waiting.remove(&(id, Channel::Work));
            waiting.remove(&(id, Channel::Heartbeat));
        }
    };
    let lost = |reason: String| {
        forget(&waiting);
        if let Some(shared) = shared.upgrade() {
            shared.worker_lost(id, &reason);
        }
    };
    let Some((startup, cancel_grace, heartbeat_interval, heartbeat_timeout)) =
        shared.upgrade().map(|s| {
            let st = s.lock();
            (
                st.profile.startup_timeout.get(),
                st.profile.termination_timeout.get(),
                s.timing.heartbeat_interval,
                s.timing.heartbeat_timeout,
            )
        })
    else {
        return;
    };
    let mut child = match spawn_child(&command, &socket, id, cpu) {
        Ok(child) => child,
        Err(e) => {
            return lost(format!(
                "cannot start worker process {}: {e}",
                command.program.display()
            ));
        }
    };
    let pid = child.id();
    let name = match pid {
        Some(pid) => format!("worker-{id} (pid {pid})"),
        None => format!("worker-{id}"),
    };
    relay(child.stdout.take(), id, "stdout");
    relay(child.stderr.take(), id, "stderr");

    let handshake = async {
        let mut conn = connected
            .await
            .map_err(|_| "the engine stopped".to_owned())?;
        let batch = *batch_params.borrow_and_update();
        conn.send(encode(&ToWorker::Init {
            pipeline: Box::new(spec),
            heartbeat_ms: u64::try_from(heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            batch,
        }))
        .await
        .map_err(|e| format!("cannot send init: {e}"))?;
        match conn.next().await {
            Some(Ok(frame)) => match decode(&frame)? {
                FromWorker::Ready => Ok(conn),
                FromWorker::InitFailed { error } => Err(format!("pipeline did not load: {error}")),
                other => Err(format!("unexpected first message {other:?}")),
            },
            _ => Err("closed the connection during startup".to_owned()),
        }
    };
    let conn = tokio::select! {
        result = tokio::time::timeout(startup, handshake) => match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => {
                let _ = child.start_kill();
                return lost(format!("{name} failed to start: {reason}"));
            }
            Err(_) => {
                let _ = child.start_kill();
                return lost(format!("{name} did not become ready within {} ms", startup.as_millis()));
            }
        },
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            return lost(format!("{name} exited during startup ({status})"));
        }
    };

    let (mut sink, mut frames) = conn.split();
    let (tx, mut outbox) = mpsc::unbounded_channel::<ToWorker>();
    let inflight = Arc::new(Mutex::new(InFlightTable::default()));
    let handle = Arc::new(ProcessWorker {
        name: name.clone(),
        pid,
        tx,
        inflight: Arc::clone(&inflight),
        retiring: AtomicBool::new(false),
        cancel_grace,
        kill: CancellationToken::new(),
        kill_reason: Arc::default(),
    });
    let Some(pool) = shared.upgrade() else { return };
    pool.worker_ready(id, Arc::clone(&handle) as Arc<dyn WorkerHandle>);
    drop(pool);
    let watchdog = tokio::spawn(watch_heartbeats(
        heartbeats,
        heartbeat_timeout,
        handle.kill.clone(),
        Arc::clone(&handle.kill_reason),
    ))
    .abort_handle();

    let writer = tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                // Batch changes first: a request submitted after a reload must find its
                // worker already using the new parameters.
                biased;
                Ok(()) = batch_params.changed() => ToWorker::Batch {
                    params: *batch_params.borrow_and_update(),
                },
                message = outbox.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            if sink.send(encode(&message)).await.is_err() {
                break;
            }
        }
    });
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = handle.kill.cancelled() => {
                let _ = child.start_kill();
                None
            }
        };
        let Some(Ok(frame)) = frame else { break };
        let message: FromWorker = match decode(&frame) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(worker = id, "{e}");
                continue;
            }
        };
        let (job, outcome) = match message {
            FromWorker::Output { job, value } => {
                if let Some(flight) = inflight
                    .lock()
                    .ok()
                    .and_then(|t| t.jobs.get(&job).map(|f| f.events.clone()))
                {
                    let _ = flight.send(Event::Output(value));
                }
                continue;
            }
            FromWorker::Done { job } => (job, Event::Done),
            FromWorker::Failed { job, error } => (job, Event::Failed(EngineError::Stage(error))),
            FromWorker::Batched { size } => {
                if let Some(shared) = shared.upgrade() {
                    shared.batching.record(size);
                }
                continue;
            }
            other => {
                tracing::warn!(worker = id, "unexpected message {other:?}");
                continue;
            }
        };
        let flight = inflight.lock().ok().and_then(|mut t| t.jobs.remove(&job));
        if let Some(flight) = flight {
            flight.watcher.abort();
            if !flight.cancel.is_cancelled() {
                let _ = flight.events.send(outcome);
            }
            if let Some(shared) = shared.upgrade() {
                shared.job_finished(id, job, flight.started.elapsed());
            }
        }
    }
    writer.abort();
    watchdog.abort();
    forget(&waiting);

    // The connection is gone: the process exited or is about to.
    let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = child.kill().await;
            None
        }
    };
    let stranded: Vec<InFlight> = match inflight.lock() {
        Ok(mut table) => {
            table.closed = true;
            table.jobs.drain().map(|(_, f)| f).collect()
        }
        Err(_) => Vec::new(),
    };
    let clean = status.is_some_and(|s| s.success());
    if handle.retiring.load(Ordering::SeqCst) && clean && stranded.is_empty() {
        tracing::info!(worker = id, "worker retired");
        if let Some(shared) = shared.upgrade() {
            shared.worker_retired(id);
        }
        return;
    }
    let mut reason = match status {
        Some(status) => format!("the process exited ({status})"),
        None => "the process closed its connection and did not exit; it was killed".to_owned(),
    };
    if let Some(why) = handle.kill_reason.lock().ok().and_then(|r| r.clone()) {
        reason = format!("{why}; {reason}");
    }
    for flight in stranded {
        flight.watcher.abort();
        let _ = flight.events.send(Event::Failed(EngineError::WorkerLost {
            worker: name.clone(),
            reason: reason.clone(),
        }));
    }
    lost(format!("{name}: {reason}"));
}

/// Kill the worker (with a reason) when its heartbeats stop for `timeout`; return quietly
/// when the heartbeat connection closes (the process is exiting: the work connection's end
/// decides what that means).
async fn watch_heartbeats(
    connected: oneshot::Receiver<Connection>,
    timeout: Duration,
    kill: CancellationToken,
    kill_reason: Arc<Mutex<Option<String>>>,
) {
    let hung = |what: String| {
        if let Ok(mut reason) = kill_reason.lock() {
            reason.get_or_insert(what);
        }
        kill.cancel();
    };
    let mut conn = match tokio::time::timeout(timeout, connected).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(_)) => return,
        Err(_) => {
            return hung(format!(
                "killed because it opened no heartbeat connection within {} ms",
                timeout.as_millis()
            ));
        }
    };
    loop {
        match tokio::time::timeout(timeout, conn.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(_) => return,
            Err(_) => {
                return hung(format!(
                    "killed as hung: no heartbeat for {} ms",
                    timeout.as_millis()
                ));
            }
        }
    }
}

fn spawn_child(
    command: &WorkerCommand,
    socket: &Path,
    id: WorkerId,
    cpu: Option<usize>,
) -> std::io::Result<tokio::process::Child> {
    let mut command_line = Command::new(&command.program);
    if let Some(cpu) = cpu {
        command_line.env(super::pinning::CPU_ENV, cpu.to_string());
    }
    command_line
        .args(&command.args)
        .env(SOCKET_ENV, socket)
        .env(WORKER_ID_ENV, id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}
