//! End to end across components, as a user meets them after `cellmesh-local up`: a
//! Deployment's pods become ready, the Service gets a ClusterIP and EndpointSlices, and
//! another pod reaches it by its DNS name through the ClusterIP proxy; Prometheus scrapes
//! the node's cAdvisor endpoint and answers a query for the pod's CPU series; `down` + `up` restarts the pods and the Service still
//! answers. Needs root (the node agent's cgroups and mounts, DNS on port 53) and the host's
//! python3 (the test pods run it); without them it is skipped, saying why.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cellmesh-local");

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

fn random_net() -> [u8; 3] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ (std::process::id() << 9);
    let [a, b, ..] = seed.wrapping_mul(2_654_435_761).to_le_bytes();
    [127, 16 + (a % 48), b]
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
    up_args: Vec<String>,
    prometheus: SocketAddr,
}

impl Cluster {
    fn new() -> Self {
        let [a, b, c] = random_net();
        let ip = |last: u8| Ipv4Addr::new(a, b, c, last);
        let prometheus = SocketAddr::from((ip(1), free_port(ip(1))));
        let up_args = vec![
            format!("--listen={}:0", ip(1)),
            format!("--dns-addr={}:53", ip(253)),
            format!("--prometheus-sd-addr={}:{}", ip(253), free_port(ip(253))),
            format!("--service-cidr={a}.{b}.{c}.0/26"),
            format!("--prometheus-listen={prometheus}"),
            "--no-example".into(),
            "--".into(),
            format!("--pod-cidr={a}.{b}.{c}.128/26"),
            format!("--node-metrics-addr={}:{}", ip(1), free_port(ip(1))),
            // Its own cgroup parent: a node agent sweeps (SIGKILLs) every container under its
            // parent when it starts and stops, and other tests' clusters run in parallel.
            format!("--cgroup-parent=cellmesh-test-{b}-{c}"),
        ];
        Self {
            state: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            up_args,
            prometheus,
        }
    }

    fn up(&self) {
        let out = Command::new(BIN)
            .arg("up")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(&self.up_args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "up failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("controllers, node, network"), "{stdout}");
    }

    fn down(&self) -> Output {
        Command::new(BIN)
            .arg("down")
            .arg("--state-dir")
            .arg(self.state.path())
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("kubectl")
            .args(args)
            .arg("--request-timeout=30s")
            .env("KUBECONFIG", self.state.path().join("kubeconfig"))
            .env("HOME", self.home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until the client pod's latest log lines show a name lookup and a 200.
    fn client_reaches_web(&self, cluster_ip: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let logs = self.kubectl(&["logs", "client", "--tail=4"], None);
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
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
    let cluster = Cluster::new();
    cluster.up();
    cluster.kubectl(&["apply", "-f", "-"], Some(APP));
    let ip = cluster.kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    cluster.kubectl(
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    cluster.client_reaches_web(&ip, "after the first up");

    // Prometheus scrapes the node's cAdvisor endpoint, found through discovery.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = http_get(cluster.prometheus, "/api/v1/targets");
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
        );
        if answer.contains(r#""pod":"web-"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no container_cpu_usage_seconds_total series of web: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let down = cluster.down();
    assert!(down.status.success());
    cluster.up();
    cluster.client_reaches_web(&ip, "after down and up");
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
