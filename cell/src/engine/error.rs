//! The engine's error type and its wire mapping.
//!
//! Contract: every failure a caller can see is one [`EngineError`] variant; the HTTP status,
//! gRPC code, `Retry-After` and the JSON error envelope are derived from it here, so the
//! REST and gRPC layers stay thin and agree with each other.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a request failed inside the engine.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// Admission: the queue is at `queueLimit`; the request was never accepted.
    #[error("the queue is full ({queue_limit} requests waiting); retry after {}s", retry_after.as_secs())]
    QueueFull {
        /// The queue limit in force.
        queue_limit: u32,
        /// Estimated time until the queue has room.
        retry_after: Duration,
    },
    /// The deadline passed while the request was still waiting for a worker.
    #[error("the request expired in the queue after waiting {} ms", waited.as_millis())]
    Expired {
        /// Time spent queued.
        waited: Duration,
    },
    /// The deadline passed while the request was running; its work was cancelled.
    #[error("the request timed out after {} ms", after.as_millis())]
    TimedOut {
        /// Time from arrival to the deadline.
        after: Duration,
    },
    /// The worker running the request died (or could not be reached) before answering.
    #[error("worker {worker} was lost while running the request: {reason}")]
    WorkerLost {
        /// Worker id (and pid for process workers).
        worker: String,
        /// Exit status or other cause.
        reason: String,
    },
    /// The cell is shutting down and admits no new requests.
    #[error("the cell is draining and admits no new requests")]
    Draining,
    /// The cell shut down (termination timeout) before the accepted request finished.
    #[error("the cell shut down before the request finished")]
    ShutDown,
    /// A pipeline stage failed; the error names the stage and carries the cause.
    #[error(transparent)]
    Stage(#[from] StageError),
}

/// A pipeline stage's failure: which stage, what kind, and the cause's text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("stage {stage} failed: {message}")]
pub struct StageError {
    /// Path of the failing stage, e.g. `root[1]/score[0]:tail`.
    pub stage: String,
    /// What kind of failure.
    pub kind: StageErrorKind,
    /// The cause, e.g. the worker's own error text.
    pub message: String,
}

/// Kinds of stage failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StageErrorKind {
    /// The stage's code reported an error (a function's error, an exec worker's `error`).
    Failed,
    /// A switch found no case for the request.
    NoRoute,
    /// Every member of an ensemble failed.
    EnsembleFailed,
    /// An exec worker broke the protocol (invalid JSON, unexpected line).
    ExecProtocol,
    /// An exec worker exited or could not be started.
    ExecExited,
    /// An exec worker did not answer within the stage's timeout.
    ExecTimedOut,
    /// The request's deadline passed while it waited for its micro-batch; it did not run.
    DeadlineExceeded,
}

impl StageError {
    /// A new stage error.
    pub fn new(stage: impl Into<String>, kind: StageErrorKind, message: impl Into<String>) -> Self {
        Self {
            stage: stage.into(),
            kind,
            message: message.into(),
        }
    }

    /// Machine-readable code for the envelope.
    pub fn code(&self) -> &'static str {
        match self.kind {
            StageErrorKind::Failed => "STAGE_FAILED",
            StageErrorKind::NoRoute => "NO_ROUTE",
            StageErrorKind::EnsembleFailed => "ENSEMBLE_FAILED",
            StageErrorKind::ExecProtocol => "EXEC_PROTOCOL",
            StageErrorKind::ExecExited => "EXEC_EXITED",
            StageErrorKind::ExecTimedOut => "EXEC_TIMED_OUT",
            StageErrorKind::DeadlineExceeded => "DEADLINE_EXCEEDED",
        }
    }

    /// `{"code", "stage", "message"}`, as used in envelopes and ensemble entries.
    pub fn to_json(&self) -> Value {
        json!({"code": self.code(), "stage": self.stage, "message": self.message})
    }
}

impl EngineError {
    /// Machine-readable code (`QUEUE_FULL`, `EXPIRED_IN_QUEUE`, `TIMED_OUT`, …).
    pub fn code(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "QUEUE_FULL",
            Self::Expired { .. } => "EXPIRED_IN_QUEUE",
            Self::TimedOut { .. } => "TIMED_OUT",
            Self::WorkerLost { .. } => "WORKER_LOST",
            Self::Draining => "DRAINING",
            Self::ShutDown => "SHUT_DOWN",
            Self::Stage(stage) => stage.code(),
        }
    }

    /// The HTTP status this error maps to.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::QueueFull { .. } | Self::Draining | Self::ShutDown => S::SERVICE_UNAVAILABLE,
            Self::Expired { .. } | Self::TimedOut { .. } => S::GATEWAY_TIMEOUT,
            Self::WorkerLost { .. } => S::BAD_GATEWAY,
            Self::Stage(stage) => match stage.kind {
                StageErrorKind::Failed | StageErrorKind::EnsembleFailed => S::INTERNAL_SERVER_ERROR,
                StageErrorKind::NoRoute => S::BAD_REQUEST,
                StageErrorKind::ExecProtocol | StageErrorKind::ExecExited => S::BAD_GATEWAY,
                StageErrorKind::ExecTimedOut | StageErrorKind::DeadlineExceeded => {
                    S::GATEWAY_TIMEOUT
                }
            },
        }
    }

    /// The gRPC status code this error maps to.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            Self::QueueFull { .. } => C::ResourceExhausted,
            Self::Draining | Self::ShutDown | Self::WorkerLost { .. } => C::Unavailable,
            Self::Expired { .. } | Self::TimedOut { .. } => C::DeadlineExceeded,
            Self::Stage(stage) => match stage.kind {
                StageErrorKind::Failed | StageErrorKind::EnsembleFailed => C::Internal,
                StageErrorKind::NoRoute => C::InvalidArgument,
                StageErrorKind::ExecProtocol | StageErrorKind::ExecExited => C::Unavailable,
                StageErrorKind::ExecTimedOut | StageErrorKind::DeadlineExceeded => {
                    C::DeadlineExceeded
                }
            },
        }
    }

    /// `Retry-After` in whole seconds (at least 1), for rejections that have one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::QueueFull { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }

    /// The JSON error envelope: `{"error": {"code", "message", "stage"?, "worker"?}}`.
    pub fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        match self {
            Self::Stage(stage) => {
                error["stage"] = json!(stage.stage);
                error["message"] = json!(stage.message);
            }
            Self::WorkerLost { worker, .. } => error["worker"] = json!(worker),
            _ => {}
        }
        json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_follows_the_design_table() {
        let full = EngineError::QueueFull {
            queue_limit: 4,
            retry_after: Duration::from_millis(1200),
        };
        assert_eq!(full.http_status(), 503);
        assert_eq!(full.grpc_code(), tonic::Code::ResourceExhausted);
        assert_eq!(full.retry_after_secs(), Some(2));
        let expired = EngineError::Expired {
            waited: Duration::from_millis(5),
        };
        assert_eq!(expired.http_status(), 504);
        assert_eq!(expired.grpc_code(), tonic::Code::DeadlineExceeded);
        assert_eq!(expired.retry_after_secs(), None);
        let lost = EngineError::WorkerLost {
            worker: "worker-3 (pid 42)".into(),
            reason: "killed by signal 9".into(),
        };
        assert_eq!(lost.http_status(), 502);
        assert_eq!(lost.to_json()["error"]["worker"], "worker-3 (pid 42)");
        assert_eq!(EngineError::Draining.http_status(), 503);
        assert_eq!(EngineError::Draining.grpc_code(), tonic::Code::Unavailable);
    }

    #[test]
    fn stage_errors_keep_stage_and_cause_in_the_envelope() {
        let err = EngineError::from(StageError::new(
            "root[1]/score[0]:tail",
            StageErrorKind::Failed,
            "ValueError: bad input",
        ));
        let json = err.to_json();
        assert_eq!(json["error"]["code"], "STAGE_FAILED");
        assert_eq!(json["error"]["stage"], "root[1]/score[0]:tail");
        assert_eq!(json["error"]["message"], "ValueError: bad input");
        assert_eq!(err.http_status(), 500);
        assert!(err.to_string().contains("root[1]/score[0]:tail"));
    }
}
