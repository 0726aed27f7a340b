//! End to end, memory in the closed loop with nothing faked: `cellmesh-local up` (node agent
//! with real cell processes in cgroups, cAdvisor, real Prometheus scraping every 5 s, the
//! operator as a pod) and `examples/scaling/memory-grow.yaml`: two loader services with a
//! 128Mi memory limit and a ScalingPolicy on memory with the default window and events.
//!
//! - `grow` keeps ~2 MB per request (`memoryStress.retain`). The test drives its working set
//!   (read from its memory cgroup) to 85 % of the limit, above the 80 % upper band and below
//!   the limit; the Guardian sees it through Prometheus' `container_memory_working_set_bytes`
//!   and raises the limit in place — in the spec, in `containerStatuses[].resources` and in
//!   the cgroup's `memory.limit_in_bytes` — before any OOM kill: same process, no restart.
//! - `burst` allocates 300 MB in one request: the kernel OOM-kills it, the node agent
//!   restarts it with `lastState.terminated.reason: OOMKilled`, and the Guardian bumps the
//!   limit by max(1.2 × 128Mi, 128Mi + 100Mi) = 228Mi in place (the new process keeps
//!   running, the restart count stays at one).
//!
//! Slower than most tests (about 16 s alone, load average 7 on 2 cores) by nature: the cluster starts, Prometheus needs
//! a scrape after the growth, and scaling up takes `upEvents` (2) ticks of 5 s. Deadlines are
//! generous because CI runs it beside other tests on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cellmesh_api::quantity;
use cellmesh_testkit::http_get;
use common::eventually;
use common::up::{UpCluster, UpOptions};

const NS: &str = "default";
const EXAMPLE: &str = "scaling/memory-grow.yaml";
const MI: u64 = 1024 * 1024;
/// The memory limit both services start with.
const START: u64 = 128 * MI;
const WAIT: Duration = Duration::from_secs(150);

/// What the test watches of the one pod of a service of WorkModel `mem`.
#[derive(Debug, PartialEq)]
struct Seen {
    pod: String,
    ip: String,
    pid: u32,
    restarts: u64,
    spec_limit: u64,
    status_limit: Option<u64>,
    last_terminated_reason: Option<String>,
}

fn bytes(quantity: &str) -> u64 {
    quantity::parse(quantity).unwrap() as u64
}

fn seen(cluster: &UpCluster, service: &str) -> Option<Seen> {
    let pods = cluster.get(NS, "pods")?;
    let pod = pods["items"].as_array()?.iter().find(|p| {
        let labels = &p["metadata"]["labels"];
        labels["cellmesh.io/workmodel"] == "mem"
            && labels["cellmesh.io/service"] == service
            && p["metadata"]["deletionTimestamp"].is_null()
    })?;
    let status = &pod["status"]["containerStatuses"][0];
    // Only a running container has a process to look at.
    status["state"]["running"].as_object()?;
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
        spec_limit: bytes(pod["spec"]["containers"][0]["resources"]["limits"]["memory"].as_str()?),
        status_limit: status["resources"]["limits"]["memory"].as_str().map(bytes),
        last_terminated_reason: status["lastState"]["terminated"]["reason"]
            .as_str()
            .map(str::to_owned),
    })
}

/// The directory of the cgroup v1 memory hierarchy `pid` runs in.
fn memory_cgroup(pid: u32) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| format!("/sys/fs/cgroup/memory{path}"))
    })
}

fn read_u64(file: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// What the kernel enforces: the cgroup's `memory.limit_in_bytes`.
fn cgroup_limit(pid: u32) -> Option<u64> {
    read_u64(&format!("{}/memory.limit_in_bytes", memory_cgroup(pid)?))
}

/// cAdvisor's working set: usage minus inactive page cache.
fn working_set(pid: u32) -> Option<u64> {
    let dir = memory_cgroup(pid)?;
    let usage = read_u64(&format!("{dir}/memory.usage_in_bytes"))?;
    let stat = std::fs::read_to_string(format!("{dir}/memory.stat")).ok()?;
    let inactive = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

#[test]
fn memory_grows_and_is_raised_before_an_oom_kill_and_a_burst_is_bumped_after_one() {
    let cluster = UpCluster::start(&UpOptions {
        prometheus: true,
        operator: true,
        examples: Vec::new(),
    });
    cluster.apply_example(EXAMPLE);
    let grow = eventually("the grow pod running", WAIT, || seen(&cluster, "grow"));
    let burst = eventually("the burst pod running", WAIT, || seen(&cluster, "burst"));
    for pod in [&grow, &burst] {
        assert_eq!(pod.spec_limit, START, "{pod:?}");
        assert_eq!(cgroup_limit(pod.pid), Some(START), "{pod:?}");
    }

    // One request more than the limit: the kernel kills `burst`. The answer never comes.
    let burst_target: SocketAddr = format!("{}:8080", burst.ip).parse().unwrap();
    let answered = http_get(burst_target, "/api/v1");
    assert!(
        answered.is_none(),
        "300 MB in a 128Mi cgroup was answered: {answered:?}"
    );

    // `grow`: request by request to 85 % of the limit — above the upper band (80 %), below
    // the limit. Each request keeps ~2 MB, so the last step ends well short of the limit.
    let grow_target: SocketAddr = format!("{}:8080", grow.ip).parse().unwrap();
    let goal = START * 85 / 100;
    let mut requests = 0;
    while working_set(grow.pid).unwrap() < goal {
        assert!(
            requests < 200,
            "{requests} requests and still below {goal} bytes"
        );
        http_get(grow_target, "/api/v1").expect("grow answers while below its limit");
        requests += 1;
    }
    let grown = working_set(grow.pid).unwrap();
    assert!(grown < START, "grown to {grown} bytes, past the limit");

    let raised = eventually(
        "grow's memory limit raised in the spec and the status",
        WAIT,
        || {
            let now = seen(&cluster, "grow")?;
            (now.spec_limit > START && now.status_limit == Some(now.spec_limit)).then_some(now)
        },
    );
    assert_eq!(
        (raised.pod.as_str(), raised.pid, raised.restarts),
        (grow.pod.as_str(), grow.pid, 0),
        "raised in place before any OOM kill: same pod, same process, no restart"
    );
    assert_eq!(raised.last_terminated_reason, None, "{raised:?}");
    // Never below what it holds, and with room: usage is inside the band at the new limit.
    assert!(
        raised.spec_limit as f64 * 0.8 > grown as f64,
        "{grown} bytes still above 80 % of {raised:?}"
    );
    eventually("the cgroup's memory limit raised", WAIT, || {
        (cgroup_limit(raised.pid)? == raised.spec_limit).then_some(())
    });
    // The memory it kept is still there: the process was never restarted.
    assert!(working_set(raised.pid).unwrap() >= goal);

    // `burst` was OOM-killed once, restarted, and bumped to max(1.2 × 128Mi, 128Mi + 100Mi).
    let bumped = eventually(
        "burst's memory limit bumped after its OOM kill",
        WAIT,
        || {
            let now = seen(&cluster, "burst")?;
            (now.spec_limit > START && now.status_limit == Some(now.spec_limit)).then_some(now)
        },
    );
    assert_eq!(bumped.pod, burst.pod, "the same pod: {bumped:?}");
    assert_eq!(bumped.restarts, 1, "one OOM kill, one restart: {bumped:?}");
    assert_eq!(
        bumped.last_terminated_reason.as_deref(),
        Some("OOMKilled"),
        "{bumped:?}"
    );
    assert_ne!(bumped.pid, burst.pid, "a new process after the kill");
    assert_eq!(bumped.spec_limit, 228 * MI, "{bumped:?}");
    eventually(
        "the restarted burst's cgroup at the bumped limit",
        WAIT,
        || (cgroup_limit(bumped.pid)? == bumped.spec_limit).then_some(()),
    );

    let policy = cluster.get(NS, "scalingpolicy/mem").unwrap();
    let containers = policy["status"]["containers"].as_array().unwrap();
    assert!(
        containers.iter().any(|c| c["memory"]["limit"].is_string()),
        "the policy reports memory per container: {}",
        policy["status"]
    );
    // The Events are written after the patches: wait for both. Repeats of an Event on the
    // policy are folded into its `series.count` (the note is the first action's), so count.
    eventually("a Resized Event for each action", WAIT, || {
        let (count, notes) = resized(&cluster);
        let oom = notes
            .iter()
            .any(|n| n.contains(&burst.pod) && n.contains("out-of-memory kill"));
        let grew = notes
            .iter()
            .any(|n| n.contains(&raised.pod) && n.contains("memory") && n.contains("up events"));
        (count >= 2 && (oom || grew)).then_some(())
    });
}

/// How many `Resized` Events the namespace has (repeats included), and their notes.
fn resized(cluster: &UpCluster) -> (u64, Vec<String>) {
    let events = cluster.kubectl(
        &["get", "events.events.k8s.io", "-n", NS, "-o", "json"],
        None,
    );
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let resized: Vec<&serde_json::Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Resized")
        .collect();
    let count = resized
        .iter()
        .map(|e| e["series"]["count"].as_u64().unwrap_or(1))
        .sum();
    let notes = resized
        .iter()
        .filter_map(|e| e["note"].as_str().map(str::to_owned))
        .collect();
    (count, notes)
}
