//! Process workers: the cell binary re-executed as workers, fed over a UNIX socket.

mod engine_common;

use std::time::Duration;

use cellmesh_cell::engine::EngineError;
use engine_common::{start, wait_for};
use serde_json::json;

#[tokio::test]
async fn requests_run_in_worker_processes_and_stream_in_order() {
    let engine = start(
        "isolate: process\nconcurrency: 4\npoolMin: 2\npoolLimit: 2",
        r#"
sequential:
  - {name: fan, exec: {command: [sh, -c, 'while read -r line; do for i in 1 2 3; do echo "{\"output\": $i}"; done; echo "{\"end\": true}"; done']}}
  - {function: echo}
"#,
        None,
    );
    let info = wait_for(&engine, "two ready worker processes", |i| {
        i.idle_workers == 2
    })
    .await;
    let pids: Vec<u32> = info.workers.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    assert!(
        !pids.contains(&std::process::id()),
        "workers are separate processes"
    );

    let mut stream = engine.submit(json!("x"), None).unwrap();
    let mut outputs = Vec::new();
    while let Some(item) = stream.next().await {
        outputs.push(item.unwrap());
    }
    assert_eq!(outputs, [json!(1), json!(2), json!(3)]);

    let calls: Vec<_> = (0..8)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(json!(0), None).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().len(), 3);
    }
    let report = engine.drain().await;
    assert_eq!(report.abandoned, 0);
    let info = wait_for(&engine, "workers to retire", |i| i.pool_size == 0).await;
    assert_eq!(
        info.counters.worker_restarts, 0,
        "retirement is not a crash"
    );
}

#[tokio::test]
async fn a_killed_worker_fails_only_its_own_requests_and_is_replaced() {
    let engine = start(
        "isolate: process\nconcurrency: 2\npoolMin: 2\npoolLimit: 2\nqueueLimit: 10",
        "function: sleep\nargs: {ms: 3000}",
        None,
    );
    wait_for(&engine, "two ready worker processes", |i| {
        i.idle_workers == 2
    })
    .await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(json!(i), None).await })
        })
        .collect();
    // Least-loaded dispatch puts two requests on each worker.
    let info = wait_for(&engine, "both workers busy", |i| {
        i.in_flight == 4 && i.busy_workers == 2
    })
    .await;
    let victim = info.workers[0].pid.unwrap();
    assert_eq!(info.workers[0].load, 2);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let mut lost = 0;
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(outputs) => {
                assert_eq!(outputs.len(), 1);
                ok += 1;
            }
            Err(error @ EngineError::WorkerLost { .. }) => {
                let EngineError::WorkerLost { worker, reason } = &error else {
                    unreachable!()
                };
                assert!(worker.contains(&format!("pid {victim}")), "{worker}");
                assert!(reason.contains("signal: 9"), "{reason}");
                assert_eq!(error.http_status(), 502);
                lost += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((lost, ok), (2, 2), "only the killed worker's requests fail");

    let info = wait_for(&engine, "a replacement worker", |i| i.idle_workers == 2).await;
    assert_eq!(info.counters.worker_restarts, 1);
    assert!(info.workers.iter().all(|w| w.pid != Some(victim)));
    // The replacement serves requests.
    let quick = engine
        .submit(json!("after"), Some(Duration::from_secs(20)))
        .unwrap();
    drop(quick);
}

#[tokio::test]
async fn a_worker_that_cannot_start_is_retried_with_backoff() {
    let mut config = cellmesh_cell::engine::EngineConfig::new(
        engine_common::profile("isolate: process\npoolMin: 1\npoolLimit: 1\nstartupTimeout: 2s"),
        engine_common::pipeline("function: echo"),
    );
    config.timing = engine_common::fast_timing();
    config.worker_command = Some(cellmesh_cell::engine::WorkerCommand {
        program: "/nonexistent/cellmesh-worker".into(),
        args: Vec::new(),
    });
    config.cgroup_root = Some(engine_common::fake_cgroup("100000 100000").keep());
    let engine = cellmesh_cell::engine::Engine::start(config).unwrap();
    // Backoff 10 ms doubling to 100 ms: several attempts within the wait, never a tight loop.
    let info = wait_for(&engine, "repeated failed starts", |i| {
        i.counters.worker_restarts >= 3
    })
    .await;
    assert!(info.idle_workers == 0);
    // Requests wait for a worker and expire with a clear deadline error.
    let error = engine
        .call(json!(1), Some(Duration::from_millis(30)))
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Expired { .. }), "{error:?}");
}

#[tokio::test]
async fn a_worker_stuck_in_a_cancelled_request_is_killed_and_replaced() {
    // A blocking handler cannot see the cancel frame; after terminationTimeout the
    // worker is killed so its slot is not lost forever.
    let engine = start(
        "isolate: process\nconcurrency: 1\npoolMin: 1\npoolLimit: 1\nterminationTimeout: 100ms",
        "switch: {on: /block, cases: {yes: {function: sleep, args: {ms: 60000, blocking: true}}, no: {function: echo}}}",
        None,
    );
    let info = wait_for(&engine, "a ready worker", |i| i.idle_workers == 1).await;
    let stuck_pid = info.workers[0].pid.unwrap();
    let error = engine
        .call(json!({"block": "yes"}), Some(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::TimedOut { .. }), "{error:?}");
    let info = wait_for(&engine, "a replacement worker", |i| {
        i.idle_workers == 1 && i.workers[0].pid != Some(stuck_pid)
    })
    .await;
    assert_eq!(info.counters.worker_restarts, 1);
    assert_eq!(
        engine.call(json!({"block": "no"}), None).await.unwrap(),
        [json!({"block": "no"})]
    );
}

#[tokio::test]
async fn a_hung_worker_is_detected_by_its_heartbeat_killed_and_replaced() {
    let engine = start(
        "isolate: process\nconcurrency: 2\npoolMin: 1\npoolLimit: 1",
        // A blocking sleep keeps the worker's runtime busy: its heartbeat thread must still
        // prove it alive, so only the stop below counts as hung.
        "function: sleep\nargs: {ms: 600, blocking: true}",
        None,
    );
    let ok = engine.call(json!("busy but alive"), None).await.unwrap();
    assert_eq!(ok, [json!("busy but alive")]);
    assert_eq!(engine.info().counters.worker_restarts, 0);

    let call = tokio::spawn({
        let engine = engine.clone();
        async move { engine.call(json!(1), None).await }
    });
    let info = wait_for(&engine, "the request running", |i| i.in_flight == 1).await;
    let victim = info.workers[0].pid.unwrap();
    let status = std::process::Command::new("kill")
        .args(["-STOP", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let error = call.await.unwrap().unwrap_err();
    let EngineError::WorkerLost { worker, reason } = &error else {
        panic!("unexpected {error:?}")
    };
    assert!(worker.contains(&format!("pid {victim}")), "{worker}");
    assert!(reason.contains("no heartbeat"), "{reason}");
    let info = wait_for(&engine, "a replacement worker", |i| {
        i.idle_workers == 1 && i.counters.worker_restarts == 1
    })
    .await;
    assert!(info.workers.iter().all(|w| w.pid != Some(victim)));
    assert_eq!(engine.call(json!(2), None).await.unwrap(), [json!(2)]);
}

/// `Cpus_allowed_list` of `/proc/<path>/status`, e.g. `"1"` or `"0-1"`.
fn cpus_allowed(path: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{path}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn cpu_pinning_puts_each_worker_process_on_its_own_allowed_cpu() {
    let allowed = cellmesh_cell::engine::pinning::allowed_cpus();
    let engine = start(
        "isolate: process\npoolMin: 2\npoolLimit: 2\ncpuPinning: true",
        "function: echo",
        None,
    );
    let info = wait_for(&engine, "two ready worker processes", |i| {
        i.idle_workers == 2
    })
    .await;
    for worker in &info.workers {
        let expected = cellmesh_cell::engine::pinning::cpu_for(worker.id, &allowed).unwrap();
        let pid = worker.pid.unwrap();
        assert_eq!(
            cpus_allowed(&pid.to_string()),
            expected.to_string(),
            "worker {}",
            worker.id
        );
    }
    assert_eq!(engine.call(json!(1), None).await.unwrap(), [json!(1)]);
}

#[tokio::test]
async fn cpu_pinning_pins_thread_workers_too() {
    let allowed = cellmesh_cell::engine::pinning::allowed_cpus();
    let engine = start(
        "isolate: thread\npoolMin: 1\npoolLimit: 1\ncpuPinning: true",
        "function: echo",
        None,
    );
    let info = wait_for(&engine, "a ready worker thread", |i| i.idle_workers == 1).await;
    let id = info.workers[0].id;
    let expected = cellmesh_cell::engine::pinning::cpu_for(id, &allowed).unwrap();
    let name = format!("cell-worker-{id}");
    let thread = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .expect("the worker thread");
    assert_eq!(
        cpus_allowed(&format!("self/task/{thread}")),
        expected.to_string()
    );
}
