//! The node agent end to end: the real `cellmesh-local apiserver --node` binary driven with
//! the real kubectl. Pods run as processes in cgroups and mount namespaces, which needs
//! root: without it these tests print why and return (never a fake pass).
//!
//! Tests of the cell image need `cellmesh-cell` in the same target directory;
//! `cargo nextest run --workspace` builds it (for `-p cellmesh-local` alone, build it first:
//! `cargo build -p cellmesh-cell`). Without it those tests fail with a message saying so.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use common::{Server, eventually};
use serde_json::Value;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: the node agent needs root for cgroups and mount namespaces");
            return;
        }
    };
}

/// A node test cluster: its own pod range and cgroup parent so tests run in parallel.
struct Cluster {
    server: Server,
    cgroup_parent: String,
    args: Vec<String>,
}

fn random_octet(lo: u8, hi: u8) -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    lo + ((nanos / 1000 + std::process::id()) % u32::from(hi - lo)) as u8
}

impl Cluster {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let cgroup_parent = format!(
            "cellmesh-test-{}-{}",
            std::process::id(),
            random_octet(0, 250)
        );
        let args: Vec<String> = [
            "--node",
            "--pod-cidr",
            &format!(
                "127.{}.{}.0/24",
                random_octet(100, 200),
                random_octet(1, 250)
            ),
            "--node-metrics-addr",
            "127.0.0.1:0",
            "--cgroup-parent",
            &cgroup_parent,
            "--crash-backoff",
            "1s",
            "--crash-backoff-max",
            "32s",
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_with(&refs);
        let cluster = Self {
            server,
            cgroup_parent,
            args,
        };
        eventually("the node registers", Duration::from_secs(20), || {
            let out = cluster
                .server
                .kubectl_output(&["get", "node", "cellmesh-local", "-o", "json"], None);
            out.status.success().then_some(())
        });
        cluster
    }

    fn restart(&mut self) {
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server.restart(&refs);
    }

    fn apply(&self, yaml: &str) {
        self.server.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.server.kubectl(&["get", "pod", name, "-o", "json"])).unwrap()
    }

    fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        eventually(what, Duration::from_secs(30), || {
            let out = self
                .server
                .kubectl_output(&["get", "pod", name, "-o", "json"], None);
            let pod: Value = serde_json::from_slice(&out.stdout).ok()?;
            check(&pod).then_some(pod)
        })
    }

    fn wait_ready(&self, name: &str) -> Value {
        self.wait_pod(name, &format!("pod {name} Ready"), |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
    }

    fn cgroup_file(&self, controller: &str, pod: &Value, container: &str, file: &str) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(&self.cgroup_parent)
            .join(pod["metadata"]["uid"].as_str().unwrap())
            .join(container)
            .join(file)
    }

    fn metrics_endpoint(&self) -> String {
        let node: Value = serde_json::from_str(&self.server.kubectl(&[
            "get",
            "node",
            "cellmesh-local",
            "-o",
            "json",
        ]))
        .unwrap();
        node["metadata"]["annotations"]["cellmesh.io/metrics-endpoint"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agent is SIGKILLed by the harness: clean its cgroups like a restart would.
        self.server.stop();
        cellmesh_local::node::cgroup::detect("/sys/fs/cgroup".as_ref(), &self.cgroup_parent)
            .sweep(true);
    }
}

fn condition(pod: &Value, type_: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| c["status"].as_str().unwrap_or("").to_owned())
}

fn container_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn pid_of(pod: &Value) -> i32 {
    container_status(pod)["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("cellmesh://"))
        .and_then(|p| p.parse().ok())
        .expect("containerID cellmesh://<pid>")
}

/// Plain HTTP GET, returns (status code, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

fn cell_binary_present() {
    let cell = PathBuf::from(env!("CARGO_BIN_EXE_cellmesh-local")).with_file_name("cellmesh-cell");
    assert!(
        cell.exists(),
        "{} is missing: build it first (cargo build -p cellmesh-cell) or run the whole workspace",
        cell.display()
    );
}

const CELL_POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: wm}
data:
  workmodel.json: '{"s0": {"internal_service": {"compute_pi": {"range_complexity": [1, 1], "mean_response_size": 0.01}}, "external_services": []}}'
---
apiVersion: v1
kind: Pod
metadata: {name: cell, labels: {app: cell}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: cell
    image: ghcr.io/cellmesh/cell:latest
    args: ["--workmodel", "/etc/cell/workmodel.json", "--service", "s0",
           "--listen", "$(POD_IP):8080", "--grpc-listen", "$(POD_IP):51313",
           "--admin-listen", "$(POD_IP):8081", "--runtime-threads", "1"]
    env:
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    readinessProbe:
      httpGet: {path: /ready, port: 8081}
      periodSeconds: 1
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 500m, memory: 256Mi}
    volumeMounts:
    - {name: wm, mountPath: /etc/cell}
  volumes:
  - name: wm
    configMap: {name: wm}
"#;

/// The cell image runs, becomes Ready, answers on its pod IP; a killed process is
/// restarted; in-place resize changes the cgroup without a restart; an infeasible resize
/// is reported; `kubectl top` and `/metrics/cadvisor` show the pod; an agent restart
/// restarts the pod.
#[test]
fn cell_pod_runs_restarts_and_resizes_in_place() {
    require_root!();
    cell_binary_present();
    let mut cluster = Cluster::start();
    cluster.apply(CELL_POD);
    let pod = cluster.wait_ready("cell");
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    assert_eq!(
        pod["spec"]["nodeName"], "cellmesh-local",
        "the agent claimed the pod"
    );
    let (code, _) =
        http_get(&format!("{ip}:8080"), "/api/v1").expect("the cell answers on its pod IP");
    assert_eq!(code, 200);

    // Kill the process: restarted with restartCount 1.
    let pid = pid_of(&pod);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pod = cluster.wait_pod("cell", "restart after kill", |p| {
        container_status(p)["restartCount"] == 1 && condition(p, "Ready").as_deref() == Some("True")
    });
    let last = &container_status(&pod)["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{last}");
    assert_eq!(last["reason"], "Error");
    let pid = pid_of(&pod);

    // In-place resize of the CPU limit: cgroup changes, same pid, same restartCount.
    let quota = cluster.cgroup_file("cpu", &pod, "cell", "cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "50000");
    let generation = pod["metadata"]["generation"].as_i64().unwrap();
    cluster.server.kubectl(&[
        "patch", "pod", "cell", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"cell","resources":{"requests":{"cpu":"200m"},"limits":{"cpu":"800m"}}}]}}"#,
    ]);
    eventually("the cgroup quota changes", Duration::from_secs(10), || {
        (std::fs::read_to_string(&quota).ok()?.trim() == "80000").then_some(())
    });
    let pod = cluster.wait_pod("cell", "resize reported", |p| {
        container_status(p)["resources"]["limits"]["cpu"] == "800m"
            && p["status"]["observedGeneration"].as_i64() > Some(generation)
    });
    let status = container_status(&pod);
    assert_eq!(pid_of(&pod), pid, "resized without a restart");
    assert_eq!(status["restartCount"], 1);
    assert_eq!(status["allocatedResources"]["cpu"], "200m");
    assert_eq!(status["resources"]["requests"]["cpu"], "200m");
    assert_eq!(
        pod["status"]["observedGeneration"],
        pod["metadata"]["generation"]
    );
    assert_eq!(condition(&pod, "PodResizeInProgress"), None);
    assert_eq!(condition(&pod, "PodResizePending"), None);
    let shares = cluster.cgroup_file("cpu", &pod, "cell", "cpu.shares");
    assert_eq!(std::fs::read_to_string(shares).unwrap().trim(), "204");

    // More CPU than the node has: Infeasible, nothing applied.
    cluster.server.kubectl(&[
        "patch", "pod", "cell", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"cell","resources":{"requests":{"cpu":"1000"},"limits":{"cpu":"1000"}}}]}}"#,
    ]);
    let pod = cluster.wait_pod("cell", "PodResizePending", |p| {
        condition(p, "PodResizePending").as_deref() == Some("True")
    });
    let pending = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodResizePending")
        .unwrap();
    assert_eq!(pending["reason"], "Infeasible");
    assert!(
        pending["message"].as_str().unwrap().contains("cpu"),
        "{pending}"
    );
    assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "80000");
    assert_eq!(pid_of(&pod), pid);

    // Metrics: cAdvisor series and kubectl top.
    let endpoint = cluster.metrics_endpoint();
    let (code, text) = http_get(&endpoint, "/metrics/cadvisor").unwrap();
    assert_eq!(code, 200);
    let series = text
        .lines()
        .find(|l| l.starts_with("container_spec_cpu_quota{") && l.contains("pod=\"cell\""))
        .unwrap_or_else(|| panic!("no quota series for the pod in:\n{text}"));
    assert!(series.contains("namespace=\"default\"") && series.contains("container=\"cell\""));
    assert!(series.ends_with(" 80000"), "{series}");
    assert!(text.contains("container_cpu_usage_seconds_total{container=\"cell\""));
    assert!(text.contains("container_memory_working_set_bytes{container=\"cell\""));
    // CFS throttling counters, from the container's real cpu.stat.
    let value = |family: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{family}{{container=\"cell\"")))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no {family} series for the cell in:\n{text}"))
    };
    let periods = value("container_cpu_cfs_periods_total");
    let throttled = value("container_cpu_cfs_throttled_periods_total");
    assert!(value("container_cpu_cfs_throttled_seconds_total") >= 0.0);
    assert!(throttled <= periods, "{throttled} of {periods} periods");
    // The cell has run under its quota since it started, so periods have elapsed.
    assert!(periods > 0.0, "no CFS periods counted for a running cell");
    let stat = std::fs::read_to_string(cluster.cgroup_file("cpu", &pod, "cell", "cpu.stat"))
        .expect("the cell's cgroup has a cpu.stat");
    let now: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_periods "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_periods in {stat}"));
    assert!(
        periods <= now,
        "the reading ({periods}) is a counter of this cgroup: at most today's {now}"
    );
    let top = eventually(
        "kubectl top pod lists the cell",
        Duration::from_secs(20),
        || {
            let out = cluster
                .server
                .kubectl_output(&["top", "pod", "cell", "--no-headers"], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.starts_with("cell").then_some(text)
        },
    );
    assert!(top.contains("Mi"), "{top}");
    let top_node = cluster.server.kubectl(&["top", "node", "--no-headers"]);
    assert!(top_node.starts_with("cellmesh-local"), "{top_node}");

    // The agent restarts: the pod runs again with a new process.
    cluster.restart();
    let pod = cluster.wait_pod("cell", "pod restarted with the agent", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && container_status(p)["containerID"]
                .as_str()
                .is_some_and(|id| id != format!("cellmesh://{pid}"))
    });
    assert_eq!(container_status(&pod)["restartCount"], 2);
    assert_eq!(pod["status"]["podIP"], ip.as_str(), "the pod keeps its IP");
    eventually(
        "the old process died with the old agent",
        Duration::from_secs(10),
        || {
            // Gone, or a zombie waiting for its new parent to reap it.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            matches!(state, None | Some("Z" | "X")).then_some(())
        },
    );
}

/// Volumes at their mountPath, env from the downward API and a Secret, the pod's own
/// resolv.conf and hostname, ConfigMap updates by symlink swap, logs (`-f`, `--previous`),
/// graceful deletion.
#[test]
fn busybox_pod_sees_volumes_env_and_logs() {
    require_root!();
    let cluster = Cluster::start();
    cluster.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: box}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c"]
    args:
    - |
      trap 'echo got TERM; exit 0' TERM
      echo "ip=$POD_IP ns=$NS pw=$PASSWORD host=$(hostname)"
      grep nameserver /etc/resolv.conf
      echo "token=$(test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo yes)"
      echo scratch > /scratch/file && echo "scratch=$(cat /scratch/file)"
      while true; do echo "mode=$(cat /etc/settings/mode)"; sleep 0.3; done
    env:
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: NS
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    volumeMounts:
    - {name: settings, mountPath: /etc/settings}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - name: settings
    configMap: {name: settings}
  - name: scratch
    emptyDir: {}
"#,
    );
    let pod = cluster.wait_ready("box");
    let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    let logs = eventually("the first lines", Duration::from_secs(10), || {
        let text = cluster.server.kubectl(&["logs", "box"]);
        text.contains("mode=fast").then_some(text)
    });
    assert!(
        logs.contains(&format!("ip={ip} ns=default pw=s3cret host=box")),
        "{logs}"
    );
    assert!(logs.contains("nameserver 127.53.0.10"), "{logs}");
    assert!(logs.contains("token=yes"), "{logs}");
    assert!(logs.contains("scratch=scratch"), "{logs}");
    assert!(
        !std::path::Path::new("/scratch/file").exists(),
        "the volume is private to the pod"
    );

    // The ConfigMap changes: the running process sees the new value (symlink swap).
    cluster.server.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"mode":"slow"}}"#,
    ]);
    eventually(
        "the new value is visible in the pod",
        Duration::from_secs(15),
        || {
            cluster
                .server
                .kubectl(&["logs", "box", "--tail=2"])
                .contains("mode=slow")
                .then_some(())
        },
    );
    let timestamps = cluster
        .server
        .kubectl(&["logs", "box", "--tail=1", "--timestamps"]);
    assert_eq!(timestamps.lines().count(), 1);
    assert!(
        timestamps
            .split(' ')
            .next()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{timestamps}"
    );

    // Follow streams new lines.
    let mut follow = cluster
        .server
        .kubectl_command(&["logs", "-f", "box", "--tail=0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let n = out.read(&mut buf).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
    });
    let streamed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("kubectl logs -f streams");
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(streamed.contains("mode=slow"), "{streamed:?}");

    // --previous needs a previous container.
    let err = cluster
        .server
        .kubectl_fails(&["logs", "box", "--previous"], None);
    assert!(err.contains("previous terminated container"), "{err}");

    // Graceful delete: SIGTERM reaches the trap, the pod object goes away.
    cluster
        .server
        .kubectl(&["delete", "pod", "box", "--wait=true", "--timeout=30s"]);
    let out = cluster.server.kubectl_output(&["get", "pod", "box"], None);
    assert!(!out.status.success(), "the pod object is removed");
    let dir = cluster.server.state.path().join("pods");
    let log = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("default_box_"))
        .map(|e| e.path().join("main/0.log"))
        .unwrap();
    assert!(std::fs::read_to_string(log).unwrap().contains("got TERM"));
}

/// A crash loop backs off with growing delays and keeps the previous logs; an OOM is
/// reported as OOMKilled; an unknown image is ErrImagePull naming --image-map.
#[test]
fn crash_loops_back_off_and_oom_kills_are_reported() {
    require_root!();
    let cluster = Cluster::start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: c, image: busybox, command: ["sh", "-c", "echo attempt; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "tail /dev/zero"]
    resources: {limits: {memory: 16Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: unknown}
spec:
  containers:
  - {name: c, image: nginx:1.27}
"#,
    );
    let mut delays = Vec::new();
    eventually("three growing back-offs", Duration::from_secs(40), || {
        let pod = cluster.pod("crash");
        let waiting = &container_status(&pod)["state"]["waiting"];
        if waiting["reason"] == "CrashLoopBackOff" {
            let message = waiting["message"].as_str().unwrap_or("").to_owned();
            let delay = message.split_whitespace().nth(1).unwrap_or("").to_owned();
            if delays.last() != Some(&delay) {
                delays.push(delay);
            }
        }
        (delays.len() >= 3).then_some(())
    });
    // Under load the first (1s) back-off may pass unobserved: check the doubling.
    let seconds: Vec<u64> = delays
        .iter()
        .map(|d| d.trim_end_matches('s').parse().unwrap())
        .collect();
    assert!(seconds[0] <= 4, "{delays:?}");
    for pair in seconds.windows(2) {
        assert_eq!(pair[1], pair[0] * 2, "{delays:?} must double");
    }
    let hog = cluster.wait_pod("hog", "hog OOM-killed", |p| {
        container_status(p)["state"]["terminated"]["reason"] == "OOMKilled"
    });
    assert_eq!(hog["status"]["phase"], "Failed");
    assert_eq!(
        container_status(&hog)["state"]["terminated"]["exitCode"],
        137
    );

    let unknown = cluster.wait_pod("unknown", "ErrImagePull", |p| {
        container_status(p)["state"]["waiting"]["reason"] == "ErrImagePull"
    });
    let message = container_status(&unknown)["state"]["waiting"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("--image-map"), "{message}");
    assert_eq!(unknown["status"]["phase"], "Pending");

    let pod = cluster.pod("crash");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(
        container_status(&pod)["lastState"]["terminated"]["exitCode"],
        3
    );
    assert!(container_status(&pod)["restartCount"].as_i64().unwrap() >= 2);
    assert_eq!(
        cluster.server.kubectl(&["logs", "crash", "--previous"]),
        "attempt\n"
    );
    let events = cluster.server.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crash",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(events.lines().any(|r| r == "Started"), "{events}");
    assert!(events.lines().any(|r| r == "BackOff"), "{events}");
}

/// Without writable cgroups pods still run, and the Node says limits are not enforced.
#[test]
fn without_cgroups_the_node_says_limits_are_not_enforced() {
    require_root!();
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().to_str().unwrap();
    let cluster = Cluster::start_with(&["--cgroup-root", root]);
    let node: Value = serde_json::from_str(&cluster.server.kubectl(&[
        "get",
        "node",
        "cellmesh-local",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["cellmesh.io/cgroups"],
        "none"
    );
    let enforced = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "CgroupLimitsEnforced")
        .unwrap();
    assert_eq!(enforced["status"], "False", "{enforced}");
    assert_eq!(node["status"]["allocatable"]["pods"], "110");
    let lease = cluster.server.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "cellmesh-local",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "cellmesh-local");
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: free}
spec:
  containers:
  - name: c
    image: busybox
    # exec: without cgroups a child left behind would outlive a SIGKILLed agent.
    command: ["sh", "-c", "exec sleep 1000"]
    resources: {limits: {cpu: 100m}}
"#,
    );
    let pod = cluster.wait_ready("free");
    assert_eq!(
        container_status(&pod)["resources"]["limits"]["cpu"],
        "100m",
        "limits are still reported"
    );
    assert!(
        std::fs::read_dir(empty.path()).unwrap().next().is_none(),
        "nothing written under a cgroup root that is not one"
    );
}

/// A failing readiness probe keeps the pod unready while it runs; a failing liveness probe
/// (exec, run inside the container's mount namespace) restarts the container.
#[test]
fn probes_gate_readiness_and_restart_on_liveness_failure() {
    require_root!();
    let cluster = Cluster::start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unready}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "sleep 1000"]
    readinessProbe:
      exec: {command: ["test", "-f", "/state/ready"]}
      periodSeconds: 1
    volumeMounts: [{name: state, mountPath: /state}]
  volumes: [{name: state, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "touch /state/alive; sleep 2; rm /state/alive; sleep 1000"]
    livenessProbe:
      exec: {command: ["test", "-f", "/state/alive"]}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts: [{name: state, mountPath: /state}]
  volumes: [{name: state, emptyDir: {}}]
"#,
    );
    let flaky = cluster.wait_pod("flaky", "liveness restart", |p| {
        container_status(p)["restartCount"].as_i64() >= Some(1)
    });
    let last = &container_status(&flaky)["lastState"]["terminated"];
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Liveness probe failed")),
        "{last}"
    );
    let unready = cluster.pod("unready");
    assert_eq!(unready["status"]["phase"], "Running");
    assert!(container_status(&unready)["state"]["running"].is_object());
    assert_eq!(condition(&unready, "Ready").as_deref(), Some("False"));
    assert_eq!(container_status(&unready)["ready"], false);
    assert_eq!(container_status(&unready)["started"], true);
    // Once the probe passes, the pod becomes Ready.
    let volume = cluster
        .server
        .state
        .path()
        .join("volumes")
        .join(unready["metadata"]["uid"].as_str().unwrap())
        .join("state");
    std::fs::write(volume.join("ready"), "").unwrap();
    cluster.wait_ready("unready");
}

/// `resizePolicy: RestartContainer` for memory: a memory resize restarts the container
/// with the new limit (restartCount + 1), while a CPU resize of the same pod does not.
#[test]
fn resize_with_restart_container_policy_restarts() {
    require_root!();
    let cluster = Cluster::start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: rs}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "sleep 1000"]
    resizePolicy:
    - {resourceName: cpu, restartPolicy: NotRequired}
    - {resourceName: memory, restartPolicy: RestartContainer}
    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: 200m, memory: 64Mi}
"#,
    );
    let pod = cluster.wait_ready("rs");
    let pid = pid_of(&pod);
    let memory = cluster.cgroup_file("memory", &pod, "c", "memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(&memory).unwrap().trim(),
        (64u64 << 20).to_string()
    );
    cluster.server.kubectl(&[
        "patch",
        "pod",
        "rs",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"300m"}}}]}}"#,
    ]);
    let pod = cluster.wait_pod("rs", "cpu resized", |p| {
        container_status(p)["resources"]["limits"]["cpu"] == "300m"
    });
    assert_eq!(pid_of(&pod), pid, "cpu: NotRequired");
    assert_eq!(container_status(&pod)["restartCount"], 0);
    cluster.server.kubectl(&[
        "patch",
        "pod",
        "rs",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"memory":"128Mi"}}}]}}"#,
    ]);
    let pod = cluster.wait_pod("rs", "memory resize restarts", |p| {
        container_status(p)["restartCount"] == 1 && condition(p, "Ready").as_deref() == Some("True")
    });
    assert_ne!(pid_of(&pod), pid);
    assert_eq!(
        std::fs::read_to_string(&memory).unwrap().trim(),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        container_status(&pod)["resources"]["limits"]["memory"],
        (128u64 << 20).to_string()
    );
    assert_eq!(condition(&pod, "PodResizeInProgress"), None);
}

/// A resize that fits the node but not next to the other pods is `Deferred`, and applied
/// once room frees up.
#[test]
fn deferred_resize_is_applied_when_room_frees_up() {
    require_root!();
    let cluster = Cluster::start();
    let pod = |name: &str, cpu: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "sleep 1000"]
    resources: {{requests: {{cpu: {cpu}}}, limits: {{cpu: {cpu}}}}}
"#
        )
    };
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    // `big` takes all but 300m of the node; `small` (100m) then asks for 500m.
    cluster.apply(&pod("big", &format!("{}m", cpus * 1000 - 300)));
    cluster.apply(&pod("small", "100m"));
    cluster.wait_ready("big");
    cluster.wait_ready("small");
    cluster.server.kubectl(&[
        "patch", "pod", "small", "--subresource", "resize", "-p",
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"500m"},"limits":{"cpu":"500m"}}}]}}"#,
    ]);
    let small = cluster.wait_pod("small", "Deferred", |p| {
        condition(p, "PodResizePending").is_some()
    });
    let pending = small["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodResizePending")
        .unwrap();
    assert_eq!(pending["reason"], "Deferred", "{pending}");
    assert_eq!(
        pending["observedGeneration"],
        small["metadata"]["generation"]
    );
    assert_eq!(
        container_status(&small)["allocatedResources"]["cpu"],
        "100m"
    );
    cluster
        .server
        .kubectl(&["delete", "pod", "big", "--wait=true", "--timeout=30s"]);
    let small = cluster.wait_pod("small", "deferred resize applied", |p| {
        container_status(p)["resources"]["limits"]["cpu"] == "500m"
    });
    assert_eq!(condition(&small, "PodResizePending"), None);
    assert_eq!(
        container_status(&small)["allocatedResources"]["cpu"],
        "500m"
    );
    let quota = cluster.cgroup_file("cpu", &small, "c", "cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(quota).unwrap().trim(), "50000");
}

/// Init containers run to completion, in order, before the app containers start.
#[test]
fn init_containers_run_first() {
    require_root!();
    let cluster = Cluster::start();
    cluster.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: staged}
spec:
  initContainers:
  - {name: one, image: busybox, command: ["sh", "-c", "echo one >> /work/order; sleep 1"],
     volumeMounts: [{name: w, mountPath: /work}]}
  - {name: two, image: busybox, command: ["sh", "-c", "echo two >> /work/order"],
     volumeMounts: [{name: w, mountPath: /work}]}
  containers:
  - {name: main, image: busybox, command: ["sh", "-c", "cat /work/order; sleep 1000"],
     volumeMounts: [{name: w, mountPath: /work}]}
  volumes: [{name: w, emptyDir: {}}]
"#,
    );
    let pending = cluster.wait_pod("staged", "first init container running", |p| {
        p["status"]["initContainerStatuses"][0]["state"]["running"].is_object()
    });
    assert_eq!(pending["status"]["phase"], "Pending");
    assert_eq!(condition(&pending, "Initialized").as_deref(), Some("False"));
    assert_eq!(
        container_status(&pending)["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let pod = cluster.wait_ready("staged");
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    for i in 0..2 {
        let state = &pod["status"]["initContainerStatuses"][i]["state"]["terminated"];
        assert_eq!(state["reason"], "Completed", "{state}");
    }
    let logs = eventually("main's output", Duration::from_secs(10), || {
        let text = cluster.server.kubectl(&["logs", "staged", "-c", "main"]);
        (!text.is_empty()).then_some(text)
    });
    assert_eq!(logs, "one\ntwo\n");
}
