//! Process workers, worker side: what the cell binary does when started as a worker.
//!
//! Contract: [`run_worker_if_requested`] returns `None` at once in a normal cell. In a
//! worker (`CELLMESH_ENGINE_SOCKET` is set) it connects to the engine, receives and
//! compiles the pipeline with the given functions, runs requests concurrently as they
//! arrive (each cancellable by the parent), and exits 0 after `retire` once its requests
//! are done, or as soon as the parent's connection closes (an orphaned worker never
//! lingers). Its logs go to stderr, which the parent relays tagged with the worker id.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::error::{StageError, StageErrorKind};
use super::pipeline::{Batching, Emitter, Functions, Pipeline};
use super::pool::{JobId, WorkerId};
use super::process::{FromWorker, SOCKET_ENV, ToWorker, WORKER_ID_ENV, connection, decode, encode};

/// If this process was started as an engine worker, serve as one and return its exit code;
/// otherwise return `None` immediately. Use as
/// `if let Some(code) = run_worker_if_requested(Functions::builtin) { std::process::exit(code) }`. Call first thing in `main`, with the same
/// functions the cell registers (a worker must be able to run the same pipeline).
pub fn run_worker_if_requested(functions: impl FnOnce() -> Functions) -> Option<i32> {
    let socket = PathBuf::from(std::env::var_os(SOCKET_ENV)?);
    let Some(id) = std::env::var(WORKER_ID_ENV)
        .ok()
        .and_then(|v| v.parse::<WorkerId>().ok())
    else {
        eprintln!("{SOCKET_ENV} is set but {WORKER_ID_ENV} is missing or not a number");
        return Some(2);
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    // Before any other thread exists, so every thread of the worker inherits the CPU.
    if let Some(cpu) = std::env::var(super::pinning::CPU_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        && let Err(e) = super::pinning::pin_current_thread(cpu)
    {
        eprintln!("worker {id}: cpuPinning: {e}; running unpinned");
    }
    // One thread per worker process: the pool scales by processes, one per CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("worker {id}: cannot build a runtime: {e}");
            return Some(1);
        }
    };
    Some(match runtime.block_on(serve(socket, id, functions())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("worker {id}: {e}");
            1
        }
    })
}

async fn serve(socket: PathBuf, id: WorkerId, functions: Functions) -> Result<(), String> {
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let mut conn = connection(stream);
    let send_err = |e: std::io::Error| format!("cannot write to the engine: {e}");
    conn.send(encode(&FromWorker::Hello { worker: id }))
        .await
        .map_err(send_err)?;
    let (spec, heartbeat_ms, batch) = match conn.next().await {
        Some(Ok(frame)) => match decode(&frame)? {
            ToWorker::Init {
                pipeline,
                heartbeat_ms,
                batch,
            } => (pipeline, heartbeat_ms, batch),
            other => return Err(format!("expected init, got {other:?}")),
        },
        _ => return Err("the engine closed the connection before init".to_owned()),
    };
    if heartbeat_ms > 0 {
        start_heartbeats(&socket, id, Duration::from_millis(heartbeat_ms))?;
    }
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<FromWorker>();
    let batching = {
        let outbox = outbox.clone();
        Batching::new(
            batch,
            Arc::new(move |size| {
                let _ = outbox.send(FromWorker::Batched { size });
            }),
        )
    };
    let pipeline = match Pipeline::compile_batched(&spec, &functions, &batching) {
        Ok(pipeline) => Arc::new(pipeline),
        Err(errors) => {
            let error = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let _ = conn
                .send(encode(&FromWorker::InitFailed {
                    error: error.clone(),
                }))
                .await;
            return Err(error);
        }
    };
    conn.send(encode(&FromWorker::Ready))
        .await
        .map_err(send_err)?;

    let (mut sink, mut frames) = conn.split();
    let mut tasks: JoinSet<JobId> = JoinSet::new();
    let mut running: HashMap<JobId, AbortHandle> = HashMap::new();
    let mut retiring = false;
    loop {
        if retiring && tasks.is_empty() && outgoing.is_empty() {
            let _ = sink.flush().await;
            return Ok(());
        }
        tokio::select! {
            frame = frames.next() => {
                let Some(Ok(frame)) = frame else {
                    // The engine is gone: nothing left to serve.
                    return Ok(());
                };
                match decode(&frame)? {
                    ToWorker::Run { job, input, remaining_ms } => {
                        let deadline = remaining_ms
                            .map(|ms| Instant::now() + Duration::from_millis(ms));
                        let pipeline = Arc::clone(&pipeline);
                        let outbox = outbox.clone();
                        let handle = tasks.spawn(async move {
                            let outputs = outbox.clone();
                            let emitter = Emitter::new(move |value| {
                                outputs.send(FromWorker::Output { job, value }).is_ok()
                            });
                            let _ = outbox.send(match pipeline.run_until(input, &emitter, deadline).await {
                                Ok(()) => FromWorker::Done { job },
                                Err(error) => FromWorker::Failed { job, error },
                            });
                            job
                        });
                        running.insert(job, handle);
                    }
                    ToWorker::Cancel { job } => {
                        if let Some(handle) = running.remove(&job) {
                            handle.abort();
                            let _ = outbox.send(FromWorker::Failed {
                                job,
                                error: StageError::new("root", StageErrorKind::Failed, "cancelled"),
                            });
                        }
                    }
                    ToWorker::Batch { params } => batching.set(params),
                    ToWorker::Retire => retiring = true,
                    ToWorker::Init { .. } => {}
                }
            }
            Some(message) = outgoing.recv() => {
                sink.send(encode(&message)).await.map_err(send_err)?;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(job) = done {
                    running.remove(&job);
                }
            }
        }
    }
}

/// Open the heartbeat connection and beat from a dedicated thread, so a worker busy in
/// blocking work still proves it is alive; only a stopped or wedged process falls silent.
/// The thread ends when the parent closes the connection.
fn start_heartbeats(socket: &Path, id: WorkerId, interval: Duration) -> Result<(), String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot open the heartbeat connection: {e}"))?;
    // The same framing as the work connection: a 4-byte big-endian length, then JSON.
    let frame = |message: &FromWorker| {
        let body = encode(message);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    };
    stream
        .write_all(&frame(&FromWorker::Heartbeats { worker: id }))
        .map_err(|e| format!("cannot open the heartbeat connection: {e}"))?;
    let beat = frame(&FromWorker::Beat);
    std::thread::Builder::new()
        .name("heartbeat".to_owned())
        .spawn(move || {
            while stream.write_all(&beat).is_ok() {
                std::thread::sleep(interval);
            }
        })
        .map_err(|e| format!("cannot start the heartbeat thread: {e}"))?;
    Ok(())
}
