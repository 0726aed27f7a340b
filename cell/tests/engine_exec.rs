//! `exec` pipeline leaves: persistent user workers speaking newline-delimited JSON, and
//! what happens when they misbehave.

mod engine_common;

use std::time::Duration;

use cellmesh_cell::engine::{EngineError, Functions, Pipeline, StageErrorKind};
use engine_common::{pipeline, start, wait_for};
use serde_json::{Value, json};

fn exec_stage(name: &str, script: &str, extra: &str) -> Pipeline {
    let spec = pipeline(&format!(
        "name: {name}\nexec: {{command: [sh, -c, {script:?}]{extra}}}"
    ));
    Pipeline::compile(&spec, &Functions::builtin()).expect("the test pipeline compiles")
}

#[tokio::test]
async fn a_well_behaved_worker_is_persistent_and_sees_the_input() {
    let p = exec_stage(
        "tail",
        r#"while read -r line; do echo "{\"output\": {\"pid\": $$, \"got\": $line}}"; echo '{"end": true}'; done"#,
        "",
    );
    let first = p.run_collect(json!({"n": 1})).await.unwrap();
    let second = p.run_collect(json!({"n": 2})).await.unwrap();
    assert_eq!(first[0]["got"], json!({"input": {"n": 1}}));
    assert_eq!(second[0]["got"], json!({"input": {"n": 2}}));
    assert_eq!(
        first[0]["pid"], second[0]["pid"],
        "one process serves both requests"
    );
}

#[tokio::test]
async fn a_user_error_carries_the_workers_text_and_keeps_the_worker() {
    let p = exec_stage(
        "tail",
        r#"while read -r line; do echo "{\"error\": \"ValueError: no good (pid $$)\"}"; done"#,
        "",
    );
    let first = p.run_collect(json!(1)).await.unwrap_err();
    assert_eq!(first.kind, StageErrorKind::Failed);
    assert_eq!(first.stage, "root");
    assert!(first.message.starts_with("ValueError: no good"), "{first}");
    let second = p.run_collect(json!(2)).await.unwrap_err();
    assert_eq!(
        first.message, second.message,
        "same worker process (same pid) both times"
    );
}

#[tokio::test]
async fn invalid_json_is_a_protocol_error_and_the_worker_is_replaced() {
    let p = exec_stage("tail", r#"while read -r line; do echo "oops $$"; done"#, "");
    let first = p.run_collect(json!(1)).await.unwrap_err();
    assert_eq!(first.kind, StageErrorKind::ExecProtocol);
    assert!(
        first.message.contains("invalid JSON") && first.message.contains("oops"),
        "{first}"
    );
    let second = p.run_collect(json!(1)).await.unwrap_err();
    assert_ne!(
        first.message, second.message,
        "a fresh process (new pid) after the bad one"
    );
}

#[tokio::test]
async fn a_worker_that_exits_gives_its_exit_status() {
    let p = exec_stage("tail", "read -r line; echo 'about to fail' >&2; exit 3", "");
    let error = p.run_collect(json!(1)).await.unwrap_err();
    assert_eq!(error.kind, StageErrorKind::ExecExited);
    assert!(error.message.contains("exit status: 3"), "{error}");
    let engine_error = EngineError::Stage(error);
    assert_eq!(engine_error.http_status(), 502);
}

#[tokio::test]
async fn a_hanging_worker_hits_the_stage_timeout() {
    let p = exec_stage("tail", "read -r line; exec sleep 60", ", timeout: 50ms");
    let error = p.run_collect(json!(1)).await.unwrap_err();
    assert_eq!(error.kind, StageErrorKind::ExecTimedOut);
    assert!(error.message.contains("50ms"), "{error}");
    assert_eq!(EngineError::Stage(error).http_status(), 504);
}

#[tokio::test]
async fn a_missing_program_is_a_clear_error() {
    let spec = pipeline("exec: {command: [/nonexistent/worker]}");
    let p = Pipeline::compile(&spec, &Functions::builtin()).unwrap();
    let error = p.run_collect(json!(1)).await.unwrap_err();
    assert_eq!(error.kind, StageErrorKind::ExecExited);
    assert!(
        error.message.contains("cannot start") && error.message.contains("/nonexistent/worker"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hanging_worker_without_stage_timeout_hits_the_request_deadline() {
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: 1",
        "exec: {command: [sh, -c, 'read -r line; exec sleep 60']}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    let error = engine
        .call(json!(1), Some(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::TimedOut { .. }), "{error:?}");
    wait_for(&engine, "the slot to free", |i| i.in_flight == 0).await;
}

#[tokio::test]
async fn outputs_stream_in_order_through_the_engine() {
    let engine = start(
        "concurrency: 4",
        r#"
sequential:
  - exec: {command: [sh, -c, 'while read -r line; do for i in 1 2 3 4 5; do echo "{\"output\": $i}"; sleep 0.01; done; echo "{\"end\": true}"; done']}
  - name: ab
    ensemble: [{function: echo}, {function: sleep, args: {ms: 1}}]
"#,
        None,
    );
    let mut stream = engine.submit(json!(null), None).unwrap();
    let mut seen: Vec<Value> = Vec::new();
    while let Some(item) = stream.next().await {
        seen.push(item.unwrap());
    }
    let expected: Vec<Value> = (1..=5).map(|i| json!([i, i])).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn the_first_output_arrives_before_the_request_ends() {
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: 1",
        r#"exec: {command: [sh, -c, 'read -r line; echo "{\"output\": \"first\"}"; exec sleep 60']}"#,
        None,
    );
    let mut stream = engine.submit(json!(null), None).unwrap();
    // The worker is still sleeping: only real streaming can deliver this.
    assert_eq!(stream.next().await.unwrap().unwrap(), json!("first"));
    assert_eq!(engine.info().in_flight, 1);
    drop(stream);
    wait_for(&engine, "the dropped request to be cancelled", |i| {
        i.in_flight == 0
    })
    .await;
}
