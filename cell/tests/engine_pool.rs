//! The elastic pool: growth with the queue, idle shrink, `poolLimit: auto` following the
//! cgroup CPU limit, and profile hot reload.

mod engine_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cellmesh_api::profile::ProfileSpec;
use cellmesh_cell::engine::reload::{read_profile_file, watch_profile_file};
use engine_common::{configmap_update, fake_cgroup, set_cpu_max, start, wait_for};
use serde_json::json;

#[tokio::test]
async fn pool_grows_with_the_queue_and_shrinks_after_idle() {
    let engine = start(
        "isolate: thread\nconcurrency: 1\npoolMin: 1\npoolLimit: 4\ngrowThreshold: 1\nidleTimeout: 100ms\nqueueLimit: 100",
        "function: sleep\nargs: {ms: 150}",
        None,
    );
    wait_for(&engine, "poolMin workers", |i| {
        i.pool_size == 1 && i.idle_workers == 1
    })
    .await;

    // Sample the pool size while a burst runs.
    let largest = Arc::new(AtomicU32::new(0));
    let sampler = {
        let (engine, largest) = (engine.clone(), Arc::clone(&largest));
        tokio::spawn(async move {
            loop {
                largest.fetch_max(engine.info().pool_size, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(json!(i), None).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), [json!(i)]);
    }
    let grown = engine.info().pool_size;
    sampler.abort();
    let largest = largest.load(Ordering::Relaxed).max(grown);
    assert_eq!(
        largest, 4,
        "10 queued with growThreshold 1 grow the pool to poolLimit, never past it"
    );

    let info = wait_for(&engine, "idle workers to retire down to poolMin", |i| {
        i.pool_size == 1
    })
    .await;
    assert_eq!(info.idle_workers, 1);
    assert_eq!(
        info.counters.worker_restarts, 0,
        "retiring idle workers is not a crash"
    );
}

#[tokio::test]
async fn auto_pool_limit_follows_the_cgroup_cpu_limit() {
    let cgroup = fake_cgroup("100000 100000\n");
    let engine = start(
        "concurrency: 1\npoolMin: 1\npoolLimit: auto\ngrowThreshold: 1\nidleTimeout: 0s",
        "function: sleep\nargs: {ms: 100}",
        Some(cgroup.path()),
    );
    let info = wait_for(&engine, "the initial limit", |i| {
        i.effective_pool_limit == 1
    })
    .await;
    assert!(
        info.cpu_limit_source.ends_with("cpu.max"),
        "{}",
        info.cpu_limit_source
    );

    // An in-place resize to 2.5 CPUs: the pool may now grow to 3.
    set_cpu_max(cgroup.path(), "250000 100000\n");
    wait_for(&engine, "the raised limit", |i| i.effective_pool_limit == 3).await;
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.call(json!(i), None).await })
        })
        .collect();
    wait_for(&engine, "the pool to use the new limit", |i| {
        i.pool_size == 3
    })
    .await;
    for call in calls {
        call.await.unwrap().unwrap();
    }

    // Shrunk back to 1 CPU: the surplus workers retire although idleTimeout is off.
    set_cpu_max(cgroup.path(), "100000 100000\n");
    let info = wait_for(&engine, "the pool to follow the lowered limit", |i| {
        i.effective_pool_limit == 1 && i.pool_size == 1
    })
    .await;
    assert_eq!(info.counters.worker_restarts, 0);
}

#[tokio::test]
async fn hot_reload_applies_changes_and_keeps_the_old_profile_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let first = "concurrency: 1\npoolMin: 1\npoolLimit: 1\nqueueLimit: 1\n";
    configmap_update(dir.path(), 1, first);
    let path = dir.path().join("profile.yaml");
    let (spec, content) = read_profile_file(&path).unwrap();
    assert_eq!(spec.queue_limit, 1);
    let engine = start(first, "function: sleep\nargs: {ms: 200}", None);
    let _watch = watch_profile_file(
        &engine,
        path.clone(),
        Duration::from_millis(5),
        Some(content),
    );
    wait_for(&engine, "an idle worker", |i| i.idle_workers == 1).await;

    // queueLimit 1: one running, one queued, the third is rejected.
    let running = engine.submit(json!("running"), None).unwrap();
    let queued = engine.submit(json!("queued"), None).unwrap();
    assert!(engine.submit(json!(3), None).is_err());

    // Raise the queue limit through a ConfigMap-style symlink swap while requests run.
    configmap_update(
        dir.path(),
        2,
        "concurrency: 1\npoolMin: 1\npoolLimit: 1\nqueueLimit: 5\n",
    );
    let info = wait_for(&engine, "the new profile", |i| i.profile.queue_limit == 5).await;
    assert_eq!(info.counters.profile_reloads, 1);
    let extra = engine
        .submit(json!("extra"), None)
        .expect("the higher limit admits more");

    // An invalid profile is refused and the current one stays.
    configmap_update(dir.path(), 3, "concurrency: 0\nqueueLimit: 1\n");
    let info = wait_for(&engine, "the refusal", |i| i.counters.profile_rejected == 1).await;
    assert_eq!(info.profile.queue_limit, 5);
    assert_eq!(info.profile.concurrency, 1);
    assert_eq!(
        engine.profile(),
        ProfileSpec::from_yaml("concurrency: 1\npoolMin: 1\npoolLimit: 1\nqueueLimit: 5").unwrap()
    );

    // No request was dropped by the reloads.
    for (stream, expected) in [(running, "running"), (queued, "queued"), (extra, "extra")] {
        let outputs: Vec<_> = futures::StreamExt::collect::<Vec<_>>(stream.into_stream()).await;
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].as_ref().unwrap(), &json!(expected));
    }
}
