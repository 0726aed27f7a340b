//! Helpers shared by the engine's integration tests.
// Test helpers: a failed setup step should panic the test that called it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use cellmesh_api::pipeline::Stage;
use cellmesh_api::profile::ProfileSpec;
use cellmesh_cell::engine::{Engine, EngineConfig, EngineInfo, Timing, WorkerCommand};

/// Housekeeping and backoff shrunk so tests take milliseconds, not seconds.
pub fn fast_timing() -> Timing {
    Timing {
        tick: Duration::from_millis(5),
        cgroup_poll: Duration::from_millis(10),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(20),
        heartbeat_timeout: Duration::from_millis(300),
    }
}

pub fn profile(yaml: &str) -> ProfileSpec {
    ProfileSpec::from_yaml(yaml).unwrap()
}

pub fn pipeline(yaml: &str) -> Stage {
    serde_yaml::from_str(yaml).unwrap()
}

/// An engine with fast timing and a cgroup root that has a 2-CPU limit (deterministic
/// `auto`), unless `cgroup` is given.
pub fn start(profile_yaml: &str, pipeline_yaml: &str, cgroup: Option<&Path>) -> Engine {
    let mut config = EngineConfig::new(profile(profile_yaml), pipeline(pipeline_yaml));
    config.timing = fast_timing();
    config.worker_command = Some(WorkerCommand {
        program: env!("CARGO_BIN_EXE_cellmesh-cell").into(),
        args: Vec::new(),
    });
    config.cgroup_root = Some(match cgroup {
        Some(root) => root.to_path_buf(),
        None => fake_cgroup("200000 100000").keep(),
    });
    Engine::start(config).unwrap()
}

/// A fake cgroup v2 root whose `cpu.max` holds `cpu_max`.
pub fn fake_cgroup(cpu_max: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cpu.max"), cpu_max).unwrap();
    dir
}

/// Poll `engine.info()` until `done` holds; panics (with the last snapshot) after 20 s.
pub async fn wait_for(
    engine: &Engine,
    what: &str,
    done: impl Fn(&EngineInfo) -> bool,
) -> EngineInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = engine.info();
        if done(&info) {
            return info;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last state: {}",
                serde_json::to_string_pretty(&info).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn set_cpu_max(root: &Path, value: &str) {
    // Write then rename, so the engine never reads a half-written file.
    let tmp = root.join("cpu.max.tmp");
    std::fs::write(&tmp, value).unwrap();
    std::fs::rename(tmp, root.join("cpu.max")).unwrap();
}

/// Lay out a directory the way the kubelet mounts a ConfigMap: `profile.yaml` →
/// `..data/profile.yaml`, `..data` → a timestamped directory; an update swaps `..data`.
pub fn configmap_update(dir: &Path, version: u32, content: &str) {
    let versioned = dir.join(format!("..2026_01_01_00_00_0{version}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("profile.yaml"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("profile.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/profile.yaml", &link).unwrap();
    }
}
