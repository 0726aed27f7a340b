//! Admission, deadlines, drain and metrics of the engine (inline workers).

mod engine_common;

use std::time::Duration;

use cellmesh_cell::engine::EngineError;
use engine_common::{start, wait_for};
use serde_json::json;

#[tokio::test]
async fn overload_rejects_at_once_and_answers_every_request() {
    let engine = start(
        "concurrency: 1\npoolMin: 2\npoolLimit: 2\nqueueLimit: 4",
        "function: sleep\nargs: {ms: 40}",
        None,
    );
    wait_for(&engine, "two idle workers", |i| i.idle_workers == 2).await;

    let mut calls = Vec::new();
    for i in 0..30 {
        let engine = engine.clone();
        calls.push(tokio::spawn(async move {
            (i, engine.call(json!(i), None).await)
        }));
    }
    let (mut ok, mut rejected) = (0, 0);
    for call in calls {
        let (i, result) = call.await.unwrap();
        match result {
            Ok(outputs) => {
                assert_eq!(
                    outputs,
                    [json!(i)],
                    "an accepted request returns its own result"
                );
                ok += 1;
            }
            Err(error @ EngineError::QueueFull { .. }) => {
                assert_eq!(error.http_status(), 503);
                assert!(error.retry_after_secs().is_some_and(|s| s >= 1));
                rejected += 1;
            }
            Err(other) => panic!("request {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(ok + rejected, 30);
    // 2 running + 4 queued fit; the burst is submitted long before 40 ms pass.
    assert!(ok >= 6, "at least the pool and the queue are served ({ok})");
    assert!(rejected >= 1, "the burst exceeds the queue");

    let info = engine.info();
    assert_eq!(info.counters.accepted, ok);
    assert_eq!(info.counters.rejected, rejected);
    assert_eq!((info.queue_length, info.in_flight), (0, 0));

    let mut registry = prometheus_client::registry::Registry::default();
    engine.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(&format!(
            "cellmesh_engine_requests_rejected_total {rejected}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("cellmesh_engine_requests_accepted_total {ok}\n")),
        "{text}"
    );
    assert!(
        text.contains("cellmesh_engine_workers{state=\"idle\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("cellmesh_engine_pool_limit 2\n"), "{text}");
}

#[tokio::test]
async fn deadline_expires_in_the_queue_and_while_running() {
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: 1\nqueueLimit: 10",
        "function: sleep\nargs: {ms: 60000}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    // The first request occupies the only slot; the second waits behind it.
    let running = engine
        .submit(json!("a"), Some(Duration::from_millis(150)))
        .unwrap();
    let queued = engine
        .submit(json!("b"), Some(Duration::from_millis(30)))
        .unwrap();

    let queued_error = engine_common_collect(queued).await.unwrap_err();
    assert!(
        matches!(queued_error, EngineError::Expired { .. }),
        "{queued_error:?}"
    );
    assert_eq!(queued_error.http_status(), 504);
    assert_eq!(queued_error.grpc_code(), tonic::Code::DeadlineExceeded);

    let running_error = engine_common_collect(running).await.unwrap_err();
    assert!(
        matches!(running_error, EngineError::TimedOut { .. }),
        "{running_error:?}"
    );
    assert_eq!(running_error.http_status(), 504);

    // The 60 s sleep was cancelled: the slot frees long before it would have finished.
    let info = wait_for(&engine, "the cancelled request to free its slot", |i| {
        i.in_flight == 0 && i.idle_workers == 1
    })
    .await;
    assert_eq!(info.counters.expired_in_queue, 1);
    assert_eq!(info.counters.timed_out, 1);
}

async fn engine_common_collect(
    mut stream: cellmesh_cell::engine::ResponseStream,
) -> Result<Vec<serde_json::Value>, EngineError> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item?);
    }
    Ok(out)
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_request() {
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: 1",
        "function: sleep\nargs: {ms: 60000}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    let stream = engine.submit(json!(0), None).unwrap();
    wait_for(&engine, "the request to run", |i| i.in_flight == 1).await;
    drop(stream);
    let info = wait_for(&engine, "the dropped request to be cancelled", |i| {
        i.in_flight == 0
    })
    .await;
    assert_eq!(
        info.counters.timed_out, 0,
        "a caller going away is not a timeout"
    );
}

#[tokio::test]
async fn drain_finishes_accepted_work_and_refuses_new_work() {
    let engine = start(
        "concurrency: 2\npoolMin: 1\npoolLimit: 1\nqueueLimit: 10\nterminationTimeout: 30s",
        "function: sleep\nargs: {ms: 30}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    let accepted: Vec<_> = (0..6)
        .map(|i| engine.submit(json!(i), None).unwrap())
        .collect();
    let drainer = engine.clone();
    let drain = tokio::spawn(async move { drainer.drain().await });
    wait_for(&engine, "draining", |i| i.state == "draining").await;
    let refused = engine.submit(json!("late"), None).err().unwrap();
    assert_eq!(refused, EngineError::Draining);
    assert_eq!(refused.http_status(), 503);

    for (i, stream) in accepted.into_iter().enumerate() {
        assert_eq!(engine_common_collect(stream).await.unwrap(), [json!(i)]);
    }
    let report = drain.await.unwrap();
    assert_eq!(report.abandoned, 0);
    wait_for(&engine, "the workers to stop", |i| i.pool_size == 0).await;
}

#[tokio::test]
async fn drain_gives_up_after_the_termination_timeout() {
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: 1\nterminationTimeout: 50ms",
        "function: sleep\nargs: {ms: 60000}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    let stuck = engine.submit(json!(0), None).unwrap();
    let queued = engine.submit(json!(1), None).unwrap();
    let report = engine.drain().await;
    assert_eq!(report.abandoned, 2);
    assert_eq!(
        engine_common_collect(stuck).await.unwrap_err(),
        EngineError::ShutDown
    );
    assert_eq!(
        engine_common_collect(queued).await.unwrap_err(),
        EngineError::ShutDown
    );
}

#[tokio::test]
async fn queue_limit_zero_admits_up_to_the_pools_capacity() {
    // Automatic admission: poolLimit 1 × concurrency 2 = 2 requests in the cell at once.
    let engine = start(
        "concurrency: 2\npoolMin: 1\npoolLimit: 1\nqueueLimit: 0",
        "function: sleep\nargs: {ms: 60000}",
        None,
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;
    let first = engine.submit(json!(1), None).unwrap();
    let second = engine.submit(json!(2), None).unwrap();
    let third = engine.submit(json!(3), None).err().unwrap();
    assert!(
        matches!(third, EngineError::QueueFull { queue_limit: 0, .. }),
        "{third:?}"
    );
    drop((first, second));
    wait_for(&engine, "the slots to free", |i| i.in_flight == 0).await;
    assert!(
        engine.submit(json!(4), None).is_ok(),
        "room again once requests leave"
    );
}
