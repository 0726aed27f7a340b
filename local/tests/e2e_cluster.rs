//! End to end across components, as a user meets them after `cellmesh-local up`: a
//! Deployment's pods become ready, the Service gets a ClusterIP and EndpointSlices, and
//! another pod reaches it by its DNS name through the ClusterIP proxy; Prometheus scrapes
//! the node's cAdvisor endpoint and answers a query for the pod's CPU series; `down` + `up` restarts the pods and the Service still
//! answers. Needs root (the node agent's cgroups and mounts, DNS on port 53) and the host's
//! python3 (the test pods run it); without them it is skipped, saying why.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cellmesh_testkit::{LocalCluster, http_get};

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "exec python3 -m http.server 8080 --bind $POD_IP"]
        env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: client
    image: busybox
    command: ["sh", "-c", "while true; do getent hosts web; python3 -c 'import urllib.request; print(\"GET\", urllib.request.urlopen(\"http://web/\", timeout=3).status)'; sleep 1; done"]
"#;

/// Runs `up` (no example) and checks every part came up.
fn up(cluster: &LocalCluster) {
    let out = cluster.up(&["--no-example"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "up failed: {stdout}");
    assert!(stdout.contains("controllers, node, network"), "{stdout}");
}

/// Waits until the client pod's latest log lines show a name lookup and a 200.
fn client_reaches_web(cluster: &LocalCluster, cluster_ip: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let logs = cluster.kubectl(&["logs", "client", "--tail=4"], None);
        // getent pads the address to a column: compare words, not spacing.
        let resolved = logs.lines().any(|line| {
            line.split_whitespace().collect::<Vec<_>>()
                == [cluster_ip, "web.default.svc.cluster.local"]
        });
        if resolved && logs.contains("GET 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: client logs: {logs}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the node agent needs root".into());
    }
    if !Path::new("/usr/bin/python3").is_file() {
        return Some("the test pods run python3 from the host".into());
    }
    None
}

#[test]
fn a_pod_reaches_a_deployment_by_service_name_and_again_after_down_and_up() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let cluster = LocalCluster::new();
    up(&cluster);
    cluster.kubectl(&["apply", "-f", "-"], Some(APP));
    let ip = cluster.kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    cluster.kubectl(
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    client_reaches_web(&cluster, &ip, "after the first up");

    // Prometheus scrapes the node's cAdvisor endpoint, found through discovery.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = http_get(cluster.prometheus, "/api/v1/targets").unwrap_or_default();
        if targets.contains(r#""job":"kubernetes-cadvisor""#)
            && targets.contains(r#""health":"up""#)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cAdvisor target up: {targets}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A query for cAdvisor's CPU counter returns the web pod's series.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_get(
            cluster.prometheus,
            "/api/v1/query?query=container_cpu_usage_seconds_total%7Bnamespace%3D%22default%22%2Ccontainer%3D%22web%22%7D",
        )
        .unwrap_or_default();
        if answer.contains(r#""pod":"web-"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no container_cpu_usage_seconds_total series of web: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let down = cluster.run("down");
    assert!(down.status.success());
    up(&cluster);
    client_reaches_web(&cluster, &ip, "after down and up");
    let restarts = cluster.kubectl(
        &[
            "get",
            "pod",
            "client",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
        None,
    );
    assert!(
        restarts.trim().parse::<u32>().unwrap() >= 1,
        "restartCount {restarts}"
    );
}
