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

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellmesh_api::pipeline::ExecStage;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::Emitter;
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

    pub(crate) async fn call(&self, input: Value, out: &Emitter) -> Result<(), StageError> {
        let _slot =
            self.slots.acquire().await.map_err(|_| {
                self.error(StageErrorKind::ExecExited, "the stage is shutting down")
            })?;
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut process = match reused {
            Some(process) => process,
            None => self.spawn()?,
        };
        let exchange = process.exchange(&self.path, input, out);
        let result = match self.spec.timeout {
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
        };
        match result {
            Ok(()) => {
                self.keep(process);
                Ok(())
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
                let text = error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_owned);
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
