//! End to end, the whole closed loop with nothing faked: `cellmesh-local up` runs the
//! cluster (node agent with real cell processes in cgroups, cAdvisor, real Prometheus
//! scraping it every 5 s, the operator as a pod). `examples/scaling/pi-loop.yaml` starts a
//! CPU-bound WorkModel service with a 200m limit and a ScalingPolicy over it.
//!
//! Under a load step the container's CPU limit is raised in place — in the pod's spec, in
//! its reported `containerStatuses[].resources` and in the cgroup's `cpu.cfs_quota_us` —
//! with the same process id and no restart; when the load stops, the limit comes back down
//! after `downEvents` quiet windows. When Prometheus stops answering, the policy holds every
//! size with `MetricsAvailable=False` and the reason, and resumes by itself once it answers.
//!
//! Slower than most tests (about 55 s alone; longer beside other tests) by nature: the
//! cluster starts, Prometheus needs a few 5 s scrapes before `rate()` has data, scaling up
//! takes `upEvents` windows, scaling down `downEvents` windows and a hung Prometheus one
//! query timeout. Deadlines are generous because CI runs it beside other tests on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cellmesh_testkit::http_get;
use common::up::{UpCluster, UpOptions};
use common::{condition, eventually};
use serde_json::Value;

const NS: &str = "default";
const EXAMPLE: &str = "scaling/pi-loop.yaml";
/// The limit the example starts with, in millicores.
const START_MILLIS: u64 = 200;
const WAIT: Duration = Duration::from_secs(150);

/// Millicores of a Kubernetes CPU quantity (`200m`, `1`, `1.5`).
fn millicores(quantity: &str) -> u64 {
    match quantity.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (quantity.parse::<f64>().unwrap() * 1000.0).round() as u64,
    }
}

/// What the test watches of the one pod of service `pi`.
#[derive(Debug, PartialEq)]
struct Seen {
    pod: String,
    ip: String,
    pid: u32,
    restarts: u64,
    spec_limit: u64,
    status_limit: Option<u64>,
}

fn seen(cluster: &UpCluster) -> Option<Seen> {
    let pods = cluster.get(NS, "pods")?;
    let pod = pods["items"].as_array()?.iter().find(|p| {
        let labels = &p["metadata"]["labels"];
        labels["cellmesh.io/workmodel"] == "pi"
            && labels["cellmesh.io/service"] == "pi"
            && p["status"]["phase"] == "Running"
            && p["metadata"]["deletionTimestamp"].is_null()
    })?;
    let status = &pod["status"]["containerStatuses"][0];
    let pid = status["containerID"]
        .as_str()?
        .strip_prefix("cellmesh://")?
        .parse()
        .ok()?;
    Some(Seen {
        pod: pod["metadata"]["name"].as_str()?.to_owned(),
        ip: pod["status"]["podIP"].as_str()?.to_owned(),
        pid,
        restarts: status["restartCount"].as_u64()?,
        spec_limit: millicores(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"].as_str()?,
        ),
        status_limit: status["resources"]["limits"]["cpu"]
            .as_str()
            .map(millicores),
    })
}

/// The CFS quota (µs per 100 ms period) of the cgroup `pid` runs in, read from the cgroup
/// v1 cpu hierarchy: what the kernel actually enforces.
fn cfs_quota(pid: u32) -> i64 {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "cpu").then_some(path)
        })
        .unwrap_or_else(|| panic!("process {pid} is in no cpu cgroup: {cgroups}"));
    let file = format!("/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// Closed-loop HTTP load on the cell until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(target: SocketAddr, connections: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if http_get(target, "/api/v1").is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A process stopped with SIGSTOP (a hung server: it accepts nothing, answers nothing) and
/// continued when dropped, so a failing test does not leave it frozen.
struct Frozen(u32);

impl Frozen {
    fn stop(pid: u32) -> Self {
        signal("-STOP", pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// The policy's `MetricsAvailable` condition once its status is `status`.
fn metrics_available(cluster: &UpCluster, status: &str) -> Option<Value> {
    let policy = cluster.get(NS, "scalingpolicy/pi")?;
    condition(&policy, "MetricsAvailable")
        .filter(|c| c["status"] == status)
        .cloned()
}

#[test]
fn a_load_step_raises_the_cpu_limit_in_place_and_quiet_brings_it_back_down() {
    let cluster = UpCluster::start(&UpOptions {
        prometheus: true,
        operator: true,
        examples: Vec::new(),
    });
    // Applied here rather than by `up --example`, which expects an example WorkModel to
    // have a gateway.
    cluster.apply_example(EXAMPLE);
    let before = eventually("the pi pod running", WAIT, || seen(&cluster));
    assert_eq!(before.spec_limit, START_MILLIS, "{before:?}");
    assert_eq!(
        cfs_quota(before.pid),
        i64::try_from(START_MILLIS * 100).unwrap(),
        "200m is 20 ms per 100 ms period"
    );

    // The load step: more concurrent π computations than 200m can serve.
    let target: SocketAddr = format!("{}:8080", before.ip).parse().unwrap();
    let load = Load::start(target, 4);
    let raised = eventually(
        "the CPU limit raised in the spec and the status",
        WAIT,
        || {
            let now = seen(&cluster)?;
            (now.spec_limit > START_MILLIS && now.status_limit == Some(now.spec_limit))
                .then_some(now)
        },
    );
    assert_eq!(
        (raised.pod.as_str(), raised.pid, raised.restarts),
        (before.pod.as_str(), before.pid, before.restarts),
        "resized in place: same pod, same process, no restart"
    );
    let quota = i64::try_from(raised.spec_limit * 100).unwrap();
    eventually("the cgroup's quota at the new limit", WAIT, || {
        (cfs_quota(raised.pid) >= quota).then_some(())
    });
    let policy = cluster.get(NS, "scalingpolicy/pi").unwrap();
    assert!(
        policy["status"]["lastAction"]
            .as_str()
            .is_some_and(|a| a.contains(&raised.pod) && a.contains("cpu")),
        "the action is in the policy's status: {}",
        policy["status"]
    );

    // The default throttling query works against the real Prometheus and the node agent's
    // CFS counters: the status carries the share of throttled periods.
    let throttled = eventually("the throttled share in the status", WAIT, || {
        let policy = cluster.get(NS, "scalingpolicy/pi")?;
        policy["status"]["containers"][0]["cpu"]["throttledPercent"].as_u64()
    });
    assert!(throttled <= 100, "a percentage: {throttled}");

    // The pod is replaced (deleted; its ReplicaSet creates another at the template's
    // 200m): the new pod gets its workload's size at once, in place, its process never
    // restarted. Then it is quiet: it is idle from its first second.
    drop(load);
    let given = cluster.get(NS, "scalingpolicy/pi").unwrap()["status"]["sizes"][0]["cpu"]["limit"]
        .as_str()
        .map(millicores);
    assert!(given > Some(START_MILLIS), "the workload's size: {given:?}");
    cluster.kubectl(
        &["delete", "pod", &before.pod, "-n", NS, "--wait=false"],
        None,
    );
    let replacement = eventually("the replacement pod running", WAIT, || {
        seen(&cluster).filter(|now| now.pod != before.pod)
    });
    let resized = eventually("the replacement at its workload's size", WAIT, || {
        let now = seen(&cluster).filter(|now| now.pod == replacement.pod)?;
        (Some(now.spec_limit) == given && now.status_limit == given).then_some(now)
    });
    assert_eq!(
        (resized.pid, resized.restarts),
        (replacement.pid, 0),
        "the new pod was resized in place, not restarted"
    );
    let quota = i64::try_from(resized.spec_limit * 100).unwrap();
    eventually("the replacement's cgroup quota at its size", WAIT, || {
        (cfs_quota(resized.pid) == quota).then_some(())
    });

    // Quiet: after downEvents windows below the lower band the limit comes back down
    // (fit to usage, clamped at the policy's 200m minimum).
    let peak = resized.spec_limit;
    let lowered = eventually("the CPU limit lowered after the load", WAIT, || {
        let now = seen(&cluster).filter(|now| now.pod == resized.pod)?;
        (now.spec_limit < peak && now.status_limit == Some(now.spec_limit)).then_some(now)
    });
    assert_eq!(
        (lowered.pid, lowered.restarts),
        (resized.pid, resized.restarts),
        "scaled down in place too"
    );
    let quota = i64::try_from(lowered.spec_limit * 100).unwrap();
    eventually("the cgroup's quota lowered", WAIT, || {
        (cfs_quota(lowered.pid) == quota).then_some(())
    });
    let events = cluster.kubectl(
        &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
        None,
    );
    let events: Value = serde_json::from_str(&events).unwrap();
    // Repeats of an Event are folded into its `series.count`.
    let resize_events: u64 = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Resized")
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(resize_events >= 3, "one Resized event per action: {events}");
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Resized"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains(&lowered.pod) && n.contains("new pod"))),
        "the new pod's resize says why: {events}"
    );

    // The real Prometheus hangs: queries time out, the policy says so and holds.
    eventually("MetricsAvailable=True", WAIT, || {
        metrics_available(&cluster, "True")
    });
    let frozen = Frozen::stop(cluster.prometheus_pid().expect("up started Prometheus"));
    let unavailable = eventually("MetricsAvailable=False", WAIT, || {
        metrics_available(&cluster, "False")
    });
    assert_eq!(
        unavailable["reason"], "PrometheusUnavailable",
        "{unavailable}"
    );
    assert!(
        unavailable["message"]
            .as_str()
            .is_some_and(|m| m.contains("no answer within")),
        "the message says what failed: {unavailable}"
    );
    let held = seen(&cluster).unwrap();
    assert_eq!(
        (held.spec_limit, held.pid, held.restarts),
        (lowered.spec_limit, lowered.pid, lowered.restarts),
        "sizes held while usage is unknown"
    );
    // It answers again: the policy resumes by itself.
    drop(frozen);
    eventually("MetricsAvailable=True again", WAIT, || {
        metrics_available(&cluster, "True")
    });
}
