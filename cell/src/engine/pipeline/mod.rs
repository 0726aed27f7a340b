//! Runs an App pipeline (`cellmesh_api::pipeline::Stage`) on one request.
//!
//! Contract:
//! - [`Pipeline::compile`] checks the spec (`Stage::validate`), builds every function from
//!   its `args` and prepares the exec pools; errors name the stage path.
//! - [`Pipeline::run`] feeds the request to the root stage and emits the outputs, in order:
//!   - `sequential`: every output of a stage is fed to the next stage as soon as it is
//!     emitted (streaming), and the next stage's outputs keep the order of the inputs;
//!   - `ensemble`: members run concurrently on the same input; one output, the list of
//!     the members' results in member order (a member's result is its single output, the
//!     list of its outputs, or `null` for none). With `failFast` the first member error
//!     fails the request and the other members are cancelled (dropped); without it a
//!     failed member's entry is `{"error": {code, stage, message}}` and the request fails
//!     only when every member failed;
//!   - `switch`: the value at the JSON pointer `on` selects the case (strings by value,
//!     numbers and booleans by their JSON text), else `default`, else a `NO_ROUTE` error;
//!   - the first error ends the request: later stages do not run.
//! - Leaves (`function`, `exec`) are micro-batched when the [`Batching`] given to
//!   [`Pipeline::compile_batched`] says so (see [`batch`]); a request's deadline, given to
//!   [`Pipeline::run_until`], keeps an expired request out of its batch.
//! - One `Pipeline` is one instance: exec worker processes belong to it, so each engine
//!   worker (thread or process) compiles its own.

pub mod batch;
mod exec;
pub mod functions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cellmesh_api::pipeline::{PipelineError, Stage, StageKind, StagePath};
use futures::future::{BoxFuture, join_all, try_join_all};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use self::batch::Batcher;
pub use self::batch::{BatchItem, BatchParams, BatchStats, BatchSummary, Batching};
use self::exec::ExecPool;
pub use self::functions::{Function, FunctionFactory, Functions};
use crate::engine::error::{StageError, StageErrorKind};

/// Where a stage sends its outputs.
#[derive(Clone)]
pub struct Emitter(Arc<dyn Fn(Value) -> bool + Send + Sync>);

impl Emitter {
    /// An emitter calling `sink` per output; `sink` returns false once nobody listens.
    pub fn new(sink: impl Fn(Value) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// An emitter feeding a channel, and the channel's receiving end.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self::new(move |value| tx.send(value).is_ok()), rx)
    }

    /// Emit one output. Fails when the request was cancelled (nobody listens any more).
    pub fn emit(&self, value: Value) -> Result<(), String> {
        if (self.0)(value) {
            Ok(())
        } else {
            Err("the request was cancelled".to_owned())
        }
    }
}

/// A compiled pipeline instance.
pub struct Pipeline {
    root: Node,
}

/// A leaf stage: what a batch is handed to.
pub(crate) enum Leaf {
    Function {
        path: String,
        function: Arc<dyn Function>,
    },
    Exec(ExecPool),
}

impl Leaf {
    fn path(&self) -> &str {
        match self {
            Self::Function { path, .. } => path,
            Self::Exec(pool) => pool.path(),
        }
    }

    pub(crate) fn error(&self, kind: StageErrorKind, message: impl Into<String>) -> StageError {
        StageError::new(self.path(), kind, message)
    }

    async fn call(&self, input: Value, out: &Emitter) -> Result<(), StageError> {
        match self {
            Self::Function { path, function } => function
                .call(input, out)
                .await
                .map_err(|cause| StageError::new(path.clone(), StageErrorKind::Failed, cause)),
            Self::Exec(pool) => pool.call(input, out).await,
        }
    }

    /// Run a batch; one result per item, in order.
    pub(crate) async fn call_batch(&self, items: Vec<BatchItem>) -> Vec<Result<(), StageError>> {
        match self {
            Self::Function { path, function } => function
                .call_batch(items)
                .await
                .into_iter()
                .map(|result| {
                    result.map_err(|cause| {
                        StageError::new(path.clone(), StageErrorKind::Failed, cause)
                    })
                })
                .collect(),
            Self::Exec(pool) => pool.call_batch(items).await,
        }
    }
}

enum Node {
    Leaf {
        leaf: Arc<Leaf>,
        batcher: Batcher,
        batching: Batching,
    },
    Sequential(Vec<Node>),
    Ensemble {
        path: String,
        members: Vec<Node>,
        fail_fast: bool,
    },
    Switch {
        path: String,
        on: String,
        cases: BTreeMap<String, Node>,
        default: Option<String>,
    },
}

impl Pipeline {
    /// Validate `spec` and build it with `functions`, without batching.
    pub fn compile(spec: &Stage, functions: &Functions) -> Result<Self, Vec<PipelineError>> {
        Self::compile_batched(spec, functions, &Batching::off())
    }

    /// Validate `spec` and build it with `functions`; leaves batch as `batching` says
    /// (live: a change applies from the next batch on).
    pub fn compile_batched(
        spec: &Stage,
        functions: &Functions,
        batching: &Batching,
    ) -> Result<Self, Vec<PipelineError>> {
        spec.validate()?;
        let mut errors = Vec::new();
        let build = Build {
            functions,
            batching,
        };
        let root = compile(spec, &StagePath::root(), &build, &mut errors);
        match root {
            Some(root) if errors.is_empty() => Ok(Self { root }),
            _ => Err(errors),
        }
    }

    /// Run the pipeline on `input`, emitting its outputs to `out` in order.
    pub async fn run(&self, input: Value, out: &Emitter) -> Result<(), StageError> {
        self.root.run(input, out, None).await
    }

    /// [`Pipeline::run`] for a request that must not start batched work after `deadline`.
    pub async fn run_until(
        &self,
        input: Value,
        out: &Emitter,
        deadline: Option<Instant>,
    ) -> Result<(), StageError> {
        self.root.run(input, out, deadline).await
    }

    /// Run and collect every output (tests, unary callers).
    pub async fn run_collect(&self, input: Value) -> Result<Vec<Value>, StageError> {
        self.run_collect_until(input, None).await
    }

    /// [`Pipeline::run_collect`] with a deadline, as [`Pipeline::run_until`].
    pub async fn run_collect_until(
        &self,
        input: Value,
        deadline: Option<Instant>,
    ) -> Result<Vec<Value>, StageError> {
        let (emitter, mut rx) = Emitter::channel();
        self.run_until(input, &emitter, deadline).await?;
        drop(emitter);
        let mut outputs = Vec::new();
        while let Some(value) = rx.recv().await {
            outputs.push(value);
        }
        Ok(outputs)
    }
}

/// What every stage is built with.
struct Build<'a> {
    functions: &'a Functions,
    batching: &'a Batching,
}

impl Build<'_> {
    fn leaf(&self, leaf: Leaf) -> Node {
        Node::Leaf {
            leaf: Arc::new(leaf),
            batcher: Batcher::default(),
            batching: self.batching.clone(),
        }
    }
}

fn compile(
    stage: &Stage,
    path: &StagePath,
    build: &Build<'_>,
    errors: &mut Vec<PipelineError>,
) -> Option<Node> {
    let functions = build.functions;
    // `validate` has run: `kind` cannot fail here, but stay total.
    let kind = stage.kind().ok()?;
    let children = |stages: &[Stage], errors: &mut Vec<PipelineError>| -> Option<Vec<Node>> {
        let nodes: Vec<Option<Node>> = stages
            .iter()
            .enumerate()
            .map(|(i, child)| compile(child, &path.child(&i.to_string(), child), build, errors))
            .collect();
        nodes.into_iter().collect()
    };
    Some(match kind {
        StageKind::Function { name, args } => match functions.build(name, args) {
            Ok(function) => build.leaf(Leaf::Function {
                path: path.to_string(),
                function,
            }),
            Err(reason) => {
                errors.push(PipelineError {
                    path: path.to_string(),
                    reason,
                });
                return None;
            }
        },
        StageKind::Exec(spec) => {
            build.leaf(Leaf::Exec(ExecPool::new(path.to_string(), spec.clone())))
        }
        StageKind::Sequential(stages) => Node::Sequential(children(stages, errors)?),
        StageKind::Ensemble { members, fail_fast } => Node::Ensemble {
            path: path.to_string(),
            members: children(members, errors)?,
            fail_fast,
        },
        StageKind::Switch(switch) => {
            let mut cases = BTreeMap::new();
            for (value, child) in &switch.cases {
                let node = compile(child, &path.child(value, child), build, errors)?;
                cases.insert(value.clone(), node);
            }
            Node::Switch {
                path: path.to_string(),
                on: switch.on.clone(),
                cases,
                default: switch.default.clone(),
            }
        }
    })
}

impl Node {
    fn run<'a>(
        &'a self,
        input: Value,
        out: &'a Emitter,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            match self {
                Self::Leaf {
                    leaf,
                    batcher,
                    batching,
                } => {
                    if batching.params().enabled() {
                        batcher.call(leaf, batching, input, out, deadline).await
                    } else {
                        leaf.call(input, out).await
                    }
                }
                Self::Sequential(stages) => run_sequence(stages, input, out, deadline).await,
                Self::Ensemble {
                    path,
                    members,
                    fail_fast,
                } => {
                    let value = run_ensemble(path, members, *fail_fast, input, deadline).await?;
                    out.emit(value).map_err(|cause| {
                        StageError::new(path.clone(), StageErrorKind::Failed, cause)
                    })
                }
                Self::Switch {
                    path,
                    on,
                    cases,
                    default,
                } => {
                    let key = input.pointer(on).map(|value| match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    });
                    let case = key
                        .as_ref()
                        .and_then(|key| cases.get(key))
                        .or_else(|| default.as_ref().and_then(|d| cases.get(d)));
                    match case {
                        Some(node) => node.run(input, out, deadline).await,
                        None => Err(StageError::new(
                            path.clone(),
                            StageErrorKind::NoRoute,
                            match key {
                                Some(key) => format!("no case for {key:?} (the value at {on})"),
                                None => format!("the request has no value at {on}"),
                            },
                        )),
                    }
                }
            }
        })
    }
}

/// Run `stages` in order, streaming each output of a stage into the rest.
fn run_sequence<'a>(
    stages: &'a [Node],
    input: Value,
    out: &'a Emitter,
    deadline: Option<Instant>,
) -> BoxFuture<'a, Result<(), StageError>> {
    Box::pin(async move {
        match stages {
            [] => out
                .emit(input)
                .map_err(|cause| StageError::new("root", StageErrorKind::Failed, cause)),
            [only] => only.run(input, out, deadline).await,
            [first, rest @ ..] => {
                let (emitter, mut rx) = Emitter::channel();
                let producer = async move {
                    let emitter = emitter;
                    first.run(input, &emitter, deadline).await
                };
                let consumer = async {
                    while let Some(value) = rx.recv().await {
                        run_sequence(rest, value, out, deadline).await?;
                    }
                    Ok(())
                };
                // Either side's error ends both; the first error wins.
                futures::try_join!(producer, consumer).map(|_| ())
            }
        }
    })
}

async fn run_ensemble(
    path: &str,
    members: &[Node],
    fail_fast: bool,
    input: Value,
    deadline: Option<Instant>,
) -> Result<Value, StageError> {
    let runs = members.iter().map(|member| {
        let input = input.clone();
        async move {
            let (emitter, mut rx) = Emitter::channel();
            member.run(input, &emitter, deadline).await?;
            drop(emitter);
            let mut outputs = Vec::new();
            while let Some(value) = rx.recv().await {
                outputs.push(value);
            }
            Ok::<Value, StageError>(match outputs.len() {
                0 => Value::Null,
                1 => outputs.swap_remove(0),
                _ => Value::Array(outputs),
            })
        }
    });
    if fail_fast {
        // `try_join_all` drops (cancels) the other members at the first error.
        return try_join_all(runs).await.map(Value::Array);
    }
    let results = join_all(runs).await;
    let failed: Vec<&StageError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if failed.len() == results.len() {
        let first = failed.first().map_or_else(String::new, |e| e.to_string());
        return Err(StageError::new(
            path,
            StageErrorKind::EnsembleFailed,
            format!(
                "0/{n} ensemble members succeeded, with {n} error(s); first error: {first}",
                n = results.len()
            ),
        ));
    }
    Ok(Value::Array(
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|error| json!({ "error": error.to_json() })))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(yaml: &str, functions: &Functions) -> Pipeline {
        let spec: Stage = serde_yaml::from_str(yaml).unwrap();
        Pipeline::compile(&spec, functions).unwrap()
    }

    /// `fail` errors with its args' message; `twice` emits its input then input+1.
    fn test_functions() -> Functions {
        struct Fail(String);
        impl Function for Fail {
            fn call<'a>(&'a self, _: Value, _: &'a Emitter) -> BoxFuture<'a, Result<(), String>> {
                Box::pin(async move { Err(self.0.clone()) })
            }
        }
        struct Twice;
        impl Function for Twice {
            fn call<'a>(
                &'a self,
                input: Value,
                out: &'a Emitter,
            ) -> BoxFuture<'a, Result<(), String>> {
                Box::pin(async move {
                    let n = input.as_i64().ok_or("twice needs a number")?;
                    out.emit(json!(n))?;
                    tokio::task::yield_now().await;
                    out.emit(json!(n + 1))
                })
            }
        }
        let mut functions = Functions::builtin();
        functions.register("fail", |args| {
            let message = args.and_then(Value::as_str).unwrap_or("failed").to_owned();
            Ok(Arc::new(Fail(message)))
        });
        functions.register("twice", |_| Ok(Arc::new(Twice)));
        functions
    }

    #[tokio::test]
    async fn sequential_streams_every_output_through_later_stages_in_order() {
        let p = pipeline(
            "sequential: [{function: twice}, {function: echo}, {function: twice}]",
            &test_functions(),
        );
        // 10 → (10, 11) → each twice: 10, 11, 11, 12 in order.
        assert_eq!(
            p.run_collect(json!(10)).await.unwrap(),
            [json!(10), json!(11), json!(11), json!(12)]
        );
    }

    #[tokio::test]
    async fn ensemble_lists_member_results_in_order() {
        let p = pipeline(
            "ensemble: [{function: twice}, {function: echo}, {function: sleep, args: {ms: 5}}]",
            &test_functions(),
        );
        assert_eq!(
            p.run_collect(json!(1)).await.unwrap(),
            [json!([[1, 2], 1, 1])]
        );
    }

    #[tokio::test]
    async fn ensemble_without_fail_fast_keeps_partial_results() {
        let p = pipeline(
            "name: score\nensemble: [{function: echo}, {name: bad, function: fail, args: boom}]",
            &test_functions(),
        );
        let out = p.run_collect(json!("x")).await.unwrap();
        assert_eq!(out[0][0], "x");
        assert_eq!(out[0][1]["error"]["stage"], "root[1]:bad");
        assert_eq!(out[0][1]["error"]["message"], "boom");
    }

    #[tokio::test]
    async fn ensemble_fails_when_every_member_fails() {
        let p = pipeline(
            "ensemble: [{function: fail, args: one}, {function: fail, args: two}]",
            &test_functions(),
        );
        let err = p.run_collect(json!(0)).await.unwrap_err();
        assert_eq!(err.kind, StageErrorKind::EnsembleFailed);
        assert_eq!(err.stage, "root");
        assert!(
            err.message.contains("0/2") && err.message.contains("one"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fail_fast_ends_at_the_first_error_without_waiting_for_slow_members() {
        let p = pipeline(
            "sequential:\n  - name: score\n    failFast: true\n    ensemble: [{function: sleep, args: {ms: 60000}}, {name: bad, function: fail, args: nope}]\n",
            &test_functions(),
        );
        // A paused clock would auto-advance through the 60 s sleep; a real one must not
        // be needed: the error comes first and the sleeper is dropped.
        let err = tokio::time::timeout(std::time::Duration::from_secs(30), p.run_collect(json!(0)))
            .await
            .expect("fail-fast must not wait for the sleeping member")
            .unwrap_err();
        assert_eq!(err.stage, "root[0]/score[1]:bad");
        assert_eq!(err.message, "nope");
    }

    #[tokio::test]
    async fn errors_stop_later_stages_and_name_the_stage() {
        let p = pipeline(
            "sequential: [{function: echo}, {name: check, function: fail, args: invalid}, {function: twice}]",
            &test_functions(),
        );
        let err = p.run_collect(json!(1)).await.unwrap_err();
        assert_eq!(err.stage, "root[1]:check");
        assert_eq!(err.kind, StageErrorKind::Failed);
    }

    #[tokio::test]
    async fn switch_routes_by_request_field() {
        let p = pipeline(
            "name: route\nswitch:\n  on: /kind\n  default: a\n  cases:\n    a: {function: echo}\n    \"2\": {function: fail, args: two}\n",
            &test_functions(),
        );
        assert_eq!(
            p.run_collect(json!({"kind": "a"})).await.unwrap(),
            [json!({"kind": "a"})]
        );
        assert_eq!(
            p.run_collect(json!({"kind": "zzz"})).await.unwrap(),
            [json!({"kind": "zzz"})]
        );
        let err = p.run_collect(json!({"kind": 2})).await.unwrap_err();
        assert_eq!(
            (err.stage.as_str(), err.message.as_str()),
            ("root[2]:fail", "two")
        );

        let strict = pipeline(
            "switch: {on: /kind, cases: {a: {function: echo}}}",
            &test_functions(),
        );
        let err = strict.run_collect(json!({"kind": "b"})).await.unwrap_err();
        assert_eq!(err.kind, StageErrorKind::NoRoute);
        assert!(err.message.contains("\"b\""), "{err}");
        let err = strict.run_collect(json!({})).await.unwrap_err();
        assert!(err.message.contains("no value at /kind"), "{err}");
    }

    #[test]
    fn compile_errors_name_the_stage() {
        let spec: Stage = serde_yaml::from_str(
            "sequential: [{function: echo}, {name: nap, function: sleep, args: {ms: soon}}, {function: nosuch}]",
        )
        .unwrap();
        let errors = Pipeline::compile(&spec, &Functions::builtin())
            .err()
            .unwrap();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].path, "root[1]:nap");
        assert!(errors[0].reason.contains("ms"));
        assert_eq!(errors[1].path, "root[2]:nosuch");
        assert!(errors[1].reason.contains("unknown function"));
    }
}
