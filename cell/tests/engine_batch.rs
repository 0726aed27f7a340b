//! Micro-batching (profile `batch`) through the whole engine — inline and process workers,
//! hot reload, `/info` and the Prometheus histogram — and the `exec` batch protocol.
// Test helpers: a failed step should panic the test that called it.
#![allow(clippy::unwrap_used)]

mod engine_common;

use std::sync::Arc;
use std::time::Duration;

use cellmesh_cell::engine::{
    BatchParams, BatchSummary, Batching, Engine, Functions, Pipeline, StageErrorKind,
};
use engine_common::{pipeline, profile, start};
use futures::future::join_all;
use serde_json::{Value, json};

/// A long wait: batches in these tests close because they are full, never by the clock.
const PROFILE: &str = "isolate: inline\npoolMin: 1\npoolLimit: 1\nconcurrency: 16\nqueueLimit: 64\nbatch: {size: 4, wait: 60s}\n";

async fn call_all(engine: &Engine, inputs: impl IntoIterator<Item = i64>) {
    let inputs: Vec<i64> = inputs.into_iter().collect();
    let results = join_all(inputs.iter().map(|n| engine.call(json!(n), None))).await;
    for (n, result) in inputs.iter().zip(results) {
        assert_eq!(
            result.unwrap(),
            [json!(n)],
            "request {n} got its own answer"
        );
    }
}

fn metrics(engine: &Engine) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    engine.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// Batches form per worker (each worker has its own pipeline), so one worker here.
async fn batches_follow_the_profile(isolate: &str) {
    let profile_yaml = PROFILE.replace("inline", isolate);
    let engine = start(&profile_yaml, "function: echo", None);
    call_all(&engine, 0..8).await;
    assert_eq!(
        engine.info().batches,
        BatchSummary {
            batches: 2,
            items: 8,
            mean_size: 4.0,
            largest: 4
        },
        "8 requests in 2 full batches of 4"
    );

    let smaller = profile_yaml.replace("size: 4", "size: 2");
    engine.apply_profile(profile(&smaller)).unwrap();
    call_all(&engine, 10..18).await;
    let info = engine.info();
    assert_eq!(
        (
            info.batches.batches,
            info.batches.items,
            info.profile.batch.size
        ),
        (6, 16, 2),
        "after the reload: 4 more batches of 2"
    );
    let text = metrics(&engine);
    assert!(
        text.contains("cellmesh_engine_batch_size_count 6")
            && text.contains("cellmesh_engine_batch_size_sum 16"),
        "{text}"
    );
}

#[tokio::test]
async fn inline_workers_batch_and_a_reloaded_size_applies() {
    batches_follow_the_profile("inline").await;
}

#[tokio::test]
async fn process_workers_batch_report_sizes_and_follow_a_reloaded_size() {
    batches_follow_the_profile("process").await;
}

#[tokio::test]
async fn without_batch_no_batches_are_formed() {
    let engine = start(
        &PROFILE.replace("batch: {size: 4, wait: 60s}\n", ""),
        "function: echo",
        None,
    );
    call_all(&engine, 0..4).await;
    assert_eq!(engine.info().batches, BatchSummary::default());
}

#[tokio::test]
async fn an_item_that_expires_while_its_batch_waits_gets_504_and_the_others_run() {
    // A batch of 4 never fills: the lone request waits for company until its own deadline.
    let engine = start(PROFILE, "function: echo", None);
    let error = engine
        .call(json!(1), Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(error.http_status(), 504, "{error}");
    call_all(&engine, 0..4).await;
    let batches = engine.info().batches;
    assert_eq!(
        (batches.batches, batches.items),
        (1, 4),
        "the expired request neither ran nor took a place in the batch"
    );
}

/// An exec stage compiled with batching `size` (a long wait: batches close when full).
fn batched_exec(script: &str, protocol: &str, size: usize) -> Pipeline {
    let spec = pipeline(&format!(
        "name: model\nexec: {{command: [sh, -c, {script:?}], protocol: {protocol}}}"
    ));
    let batching = Batching::new(
        BatchParams {
            size,
            wait: Duration::from_secs(60),
        },
        Arc::new(|_| {}),
    );
    Pipeline::compile_batched(&spec, &Functions::builtin(), &batching).unwrap()
}

/// A `jsonl-batch` worker for integer inputs: answers each with `[n, "pid <pid>"]`, and
/// negative ones with an error.
const BATCH_WORKER: &str = r#"while read -r line; do
  case "$line" in
    *'"batch"'*)
      items=${line#*[}; items=${items%]*}; out=''
      IFS=','
      for n in $items; do
        if [ "$n" -lt 0 ]; then a="{\"error\": \"negative $n\"}"; else a="{\"outputs\": [$n, \"pid $$\"]}"; fi
        out="$out${out:+,}$a"
      done
      unset IFS
      echo "{\"batch\": [$out]}";;
    *) echo '{"error": "expected a batch"}';;
  esac
done"#;

async fn run_all(p: &Pipeline, inputs: &[i64]) -> Vec<Result<Vec<Value>, String>> {
    join_all(inputs.iter().map(|n| p.run_collect(json!(n))))
        .await
        .into_iter()
        .map(|r| r.map_err(|e| format!("{:?} {} {}", e.kind, e.stage, e.message)))
        .collect()
}

#[tokio::test]
async fn a_jsonl_batch_worker_gets_one_line_per_batch_and_errors_stay_per_item() {
    let p = batched_exec(BATCH_WORKER, "jsonl-batch", 3);
    let results = run_all(&p, &[1, -2, 3]).await;
    let first = results[0].as_ref().unwrap();
    assert_eq!(first[0], 1);
    assert_eq!(results[2].as_ref().unwrap()[0], 3);
    assert_eq!(
        first[1],
        results[2].as_ref().unwrap()[1],
        "one worker process answered the batch"
    );
    assert_eq!(results[1].as_ref().unwrap_err(), "Failed root negative -2");
    // The worker stays: the next batch is served by the same process.
    let again = run_all(&p, &[4, 5, 6]).await;
    assert_eq!(again[0].as_ref().unwrap()[1], first[1]);
}

#[tokio::test]
async fn a_jsonl_worker_gets_a_batch_one_request_line_at_a_time() {
    let p = batched_exec(
        r#"while read -r line; do echo "{\"output\": {\"pid\": $$, \"got\": $line}}"; echo '{"end": true}'; done"#,
        "jsonl",
        3,
    );
    let results = run_all(&p, &[7, 8, 9]).await;
    for (n, result) in [7, 8, 9].iter().zip(&results) {
        assert_eq!(result.as_ref().unwrap()[0]["got"], json!({"input": n}));
    }
    assert_eq!(
        results[0].as_ref().unwrap()[0]["pid"],
        results[2].as_ref().unwrap()[0]["pid"]
    );
}

#[tokio::test]
async fn a_batch_answer_of_the_wrong_length_fails_the_batch_and_replaces_the_worker() {
    let p = batched_exec(
        r#"while read -r line; do echo "{\"batch\": [{\"outputs\": [\"pid $$\"]}]}"; done"#,
        "jsonl-batch",
        2,
    );
    let errors = both_fail(&p).await;
    for error in &errors {
        assert_eq!(error.kind, StageErrorKind::ExecProtocol);
        assert!(
            error.message.contains("answered 1 results to a batch of 2"),
            "{error}"
        );
    }
    // A fresh worker serves the next batch (and misbehaves the same way).
    assert_eq!(both_fail(&p).await.len(), 2);
}

async fn both_fail(p: &Pipeline) -> Vec<cellmesh_cell::engine::StageError> {
    let results = join_all([p.run_collect(json!(1)), p.run_collect(json!(2))]).await;
    results.into_iter().map(|r| r.unwrap_err()).collect()
}
