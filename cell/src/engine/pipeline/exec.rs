//! `exec` leaves: persistent user worker processes speaking newline-delimited JSON.
//!
//! Contract (the protocol is documented on `cellmesh_api::pipeline::ExecStage`): for each
//! request the stage writes `{"input": v}` and reads `{"output": v}` lines until
//! `{"end": true}` or `{"error": "…"}`. Up to `workers` processes run, each serving one
//! request at a time; they are started on first use and kept. A worker that misbehaves —
//! invalid JSON, an unknown line, exiting, or exceeding the stage's `timeout` — is killed
//! and the request fails with a [`StageError`] naming the stage and saying what happened
//! (with the tail of the worker's stderr); the next request starts a fresh worker. An
//! `{"error": …}` answer is the user's own failure: the worker is kept. If the request is
//! cancelled mid-way the worker's state is unknown, so it is killed (kill-on-drop). Only the
//! direct child is killed: a worker script should `exec` its long-running program.
//!
//! Micro-batches ([`ExecPool::call_batch`]): with `protocol: jsonl-batch` the worker gets
//! one line `{"batch": [<input>, …]}` and answers one line `{"batch": [<answer>, …]}`, an
//! answer per input in order, each `{"outputs": [<value>, …]}` or `{"error": "…"}` (that
//! item fails alone); a whole-line `{"error": "…"}` fails every item. Ordinary
//! `{"input": …}` lines still work on such a worker (a profile without batching sends them).
//! With `protocol: jsonl` a batch is sent as ordinary lines, one item after another.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellmesh_api::pipeline::{ExecProtocol, ExecStage};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{BatchItem, Emitter};
use crate::engine::error::{StageError, StageErrorKind};

/// Lines of a worker's stderr kept for error messages.
const STDERR_TAIL: usize = 20;

/// The processes of one `exec` stage.
pub(crate) struct ExecPool {
    path: String,
    spec: ExecStage,
    idle: Mutex<Vec<ExecProcess>>,
    slots: Semaphore,
}

struct ExecProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// How a request on one worker ended badly.
struct Failure {
    error: StageError,
    /// The worker is no longer trustworthy and must go.
    kill: bool,
}

impl ExecPool {
    pub(crate) fn new(path: String, spec: ExecStage) -> Self {
        let workers = spec.workers.unwrap_or(1).max(1) as usize;
        Self {
            path,
            spec,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(workers),
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    pub(crate) async fn call(&self, input: Value, out: &Emitter) -> Result<(), StageError> {
        let _slot = self.slot().await?;
        let mut process = self.checkout()?;
        let result = self.timed(process.exchange(&self.path, input, out)).await;
        self.settle(process, result)
    }

    /// Run a micro-batch on one worker. With `protocol: jsonl-batch` it is one
    /// `{"batch": […]}` exchange; a broken worker (bad JSON, exit, timeout, wrong count)
    /// fails the whole batch, since its state is unknown. With `jsonl` the items go one
    /// after another as ordinary requests, so a broken worker fails only its item and the
    /// next item gets a fresh worker.
    pub(crate) async fn call_batch(&self, items: Vec<BatchItem>) -> Vec<Result<(), StageError>> {
        let count = items.len();
        let _slot = match self.slot().await {
            Ok(slot) => slot,
            Err(error) => return vec![Err(error); count],
        };
        if self.spec.protocol != ExecProtocol::JsonlBatch {
            let mut results = Vec::with_capacity(count);
            for item in items {
                results.push(match self.checkout() {
                    Ok(mut process) => {
                        let result = self
                            .timed(process.exchange(&self.path, item.input, &item.out))
                            .await;
                        self.settle(process, result)
                    }
                    Err(error) => Err(error),
                });
            }
            return results;
        }
        let mut process = match self.checkout() {
            Ok(process) => process,
            Err(error) => return vec![Err(error); count],
        };
        let inputs: Vec<&Value> = items.iter().map(|item| &item.input).collect();
        let result = self
            .timed(process.exchange_batch(&self.path, &inputs))
            .await;
        match self.settle(process, result) {
            Ok(answers) => items
                .iter()
                .zip(answers)
                .map(|(item, answer)| match answer {
                    Ok(outputs) => {
                        for output in outputs {
                            // A cancelled item has nobody listening; the others still do.
                            if item.out.emit(output).is_err() {
                                break;
                            }
                        }
                        Ok(())
                    }
                    Err(text) => Err(self.error(StageErrorKind::Failed, text)),
                })
                .collect(),
            Err(error) => vec![Err(error); count],
        }
    }

    async fn slot(&self) -> Result<SemaphorePermit<'_>, StageError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| self.error(StageErrorKind::ExecExited, "the stage is shutting down"))
    }

    /// An idle worker, or a new one.
    fn checkout(&self) -> Result<ExecProcess, StageError> {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match reused {
            Some(process) => Ok(process),
            None => self.spawn(),
        }
    }

    /// `exchange` bounded by the stage's `timeout`.
    async fn timed<T>(
        &self,
        exchange: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match self.spec.timeout {
            Some(limit) => tokio::time::timeout(limit.get(), exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        error: self.error(
                            StageErrorKind::ExecTimedOut,
                            format!("exec worker did not answer within {limit}; it was killed"),
                        ),
                        kill: true,
                    })
                }),
            None => exchange.await,
        }
    }

    /// Keep or kill the worker after an exchange, and give its result.
    fn settle<T>(
        &self,
        mut process: ExecProcess,
        result: Result<T, Failure>,
    ) -> Result<T, StageError> {
        match result {
            Ok(value) => {
                self.keep(process);
                Ok(value)
            }
            Err(Failure { error, kill: false }) => {
                self.keep(process);
                Err(error)
            }
            Err(Failure {
                mut error,
                kill: true,
            }) => {
                let _ = process.child.start_kill();
                let tail = process.stderr_tail();
                if !tail.is_empty() {
                    error.message.push_str("; stderr: ");
                    error.message.push_str(&tail);
                }
                Err(error)
            }
        }
    }

    fn keep(&self, process: ExecProcess) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(process);
        }
    }

    fn error(&self, kind: StageErrorKind, message: impl Into<String>) -> StageError {
        StageError::new(self.path.clone(), kind, message)
    }

    fn spawn(&self) -> Result<ExecProcess, StageError> {
        let Some((program, args)) = self.spec.command.split_first() else {
            return Err(self.error(StageErrorKind::ExecExited, "exec.command is empty"));
        };
        let mut child = Command::new(program)
            .args(args)
            .envs(&self.spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                self.error(
                    StageErrorKind::ExecExited,
                    format!("cannot start exec worker {program:?}: {e}"),
                )
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(self.error(StageErrorKind::ExecExited, "exec worker has no pipes"));
        };
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr_tail);
        let stage = self.path.clone();
        let pid = child.id().unwrap_or_default();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(stage = %stage, pid, "exec worker: {line}");
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
        Ok(ExecProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr_tail,
        })
    }
}

impl ExecProcess {
    async fn exchange(&mut self, path: &str, input: Value, out: &Emitter) -> Result<(), Failure> {
        let broken = |kind, message: String| Failure {
            error: StageError::new(path, kind, message),
            kill: true,
        };
        let mut line = json!({ "input": input }).to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(broken(
                StageErrorKind::ExecExited,
                format!(
                    "cannot write to exec worker ({e}); {}",
                    self.exit_status().await
                ),
            ));
        }
        let _ = self.stdin.flush().await;
        loop {
            let line = match self.stdout.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => {
                    return Err(broken(
                        StageErrorKind::ExecExited,
                        format!(
                            "exec worker closed its output; {}",
                            self.exit_status().await
                        ),
                    ));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&line).map_err(|e| {
                broken(
                    StageErrorKind::ExecProtocol,
                    format!("exec worker printed invalid JSON ({e}): {}", clip(&line)),
                )
            })?;
            if let Some(value) = message.get("output") {
                out.emit(value.clone()).map_err(|cause| Failure {
                    error: StageError::new(path, StageErrorKind::Failed, cause),
                    kill: true,
                })?;
            } else if message.get("end").and_then(Value::as_bool) == Some(true) {
                return Ok(());
            } else if let Some(error) = message.get("error") {
                let text = error_text(error);
                return Err(Failure {
                    error: StageError::new(path, StageErrorKind::Failed, text),
                    kill: false,
                });
            } else {
                return Err(broken(
                    StageErrorKind::ExecProtocol,
                    format!(
                        "exec worker printed a line that is not output, end or error: {}",
                        clip(&line)
                    ),
                ));
            }
        }
    }

    /// One `{"batch": [...]}` line out, one `{"batch": [...]}` line back with an answer per
    /// input: its outputs, or its error text.
    async fn exchange_batch(
        &mut self,
        path: &str,
        inputs: &[&Value],
    ) -> Result<Vec<Result<Vec<Value>, String>>, Failure> {
        let broken = |kind, message: String| Failure {
            error: StageError::new(path, kind, message),
            kill: true,
        };
        let mut line = json!({ "batch": inputs }).to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            return Err(broken(
                StageErrorKind::ExecExited,
                format!(
                    "cannot write to exec worker ({e}); {}",
                    self.exit_status().await
                ),
            ));
        }
        let _ = self.stdin.flush().await;
        let line = loop {
            match self.stdout.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => break line,
                Ok(None) | Err(_) => {
                    return Err(broken(
                        StageErrorKind::ExecExited,
                        format!(
                            "exec worker closed its output; {}",
                            self.exit_status().await
                        ),
                    ));
                }
            }
        };
        let message: Value = serde_json::from_str(&line).map_err(|e| {
            broken(
                StageErrorKind::ExecProtocol,
                format!("exec worker printed invalid JSON ({e}): {}", clip(&line)),
            )
        })?;
        if let Some(error) = message.get("error") {
            // The user's code refused the whole batch: every item fails with its text.
            let text = error_text(error);
            return Ok(vec![Err(text); inputs.len()]);
        }
        let answers = match message.get("batch").and_then(Value::as_array) {
            Some(answers) if answers.len() == inputs.len() => answers,
            Some(answers) => {
                return Err(broken(
                    StageErrorKind::ExecProtocol,
                    format!(
                        "exec worker answered {} results to a batch of {}",
                        answers.len(),
                        inputs.len()
                    ),
                ));
            }
            None => {
                return Err(broken(
                    StageErrorKind::ExecProtocol,
                    format!(
                        "exec worker answered a batch with a line that is not a batch or an error: {}",
                        clip(&line)
                    ),
                ));
            }
        };
        answers
            .iter()
            .enumerate()
            .map(|(i, answer)| {
                if let Some(outputs) = answer.get("outputs").and_then(Value::as_array) {
                    Ok(Ok(outputs.clone()))
                } else if let Some(error) = answer.get("error") {
                    Ok(Err(error_text(error)))
                } else {
                    Err(broken(
                        StageErrorKind::ExecProtocol,
                        format!(
                            "exec worker's batch answer {i} has neither outputs nor error: {}",
                            clip(&answer.to_string())
                        ),
                    ))
                }
            })
            .collect()
    }

    /// The worker's exit status, waiting briefly for it to be reaped.
    async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => format!("it exited with {status}"),
            Ok(Err(e)) => format!("its status is unknown ({e})"),
            Err(_) => "it is still running".to_owned(),
        }
    }

    fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default()
    }
}

/// A worker's error value as text (strings as they are, anything else as JSON).
fn error_text(error: &Value) -> String {
    error
        .as_str()
        .map_or_else(|| error.to_string(), str::to_owned)
}

fn clip(line: &str) -> String {
    const MAX: usize = 200;
    if line.len() <= MAX {
        return line.to_owned();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}
